"""Architectures of the paper's pretrained models, with the official parameter names.

* :class:`DDPMUNet` — the DDIM repository's ``Model`` (DDPM CIFAR-10, CelebA 64).
* :class:`ADMUNet`, :class:`ADMEncoderUNet` — guided-/improved-diffusion's ``UNetModel`` and
  ``EncoderUNetModel`` (ImageNet 64/128, LSUN 256, the ImageNet 128 classifier).
* :mod:`dode.models.arch.edm_layers`, :mod:`dode.models.arch.edm_networks` — EDM's networks (``SongUNet``,
  ``DhariwalUNet`` and the VP/VE/iDDPM/EDM preconditionings), with the names of EDM's pickles.
* :mod:`dode.models.arch.edm_pickle` — reading EDM's network pickles without running their code
  (the default); :mod:`dode.models.arch.edm_compat` — unpickling them as EDM does, running the code
  they carry (only with ``checkpoint.trust_pickle=true``).

Finding and checking files: :mod:`dode.models.files`; wrapping networks as denoisers:
:mod:`dode.models.adapters`; the loaders: :mod:`dode.models.loaders`.
"""
from dode.models.arch.adm import ADMEncoderUNet, ADMUNet, adm_channel_mult
from dode.models.arch.ddpm_unet import DDPMUNet

__all__ = ["DDPMUNet", "ADMUNet", "ADMEncoderUNet", "adm_channel_mult"]
