"""CompVis LDM checkpoints (loader ldm_compvis): a tiny Lightning-format .ckpt and config.yaml, written from an
independent openaimodel-style U-Net and VQ autoencoder, load into a denoiser whose ε and decode equal theirs."""
import pickle
import sys
import types

import pytest
import torch

pytest.importorskip("diffusers")

from dode.models.checkpoints import load_checkpoint  # noqa: E402
from dode.models.files import CheckpointError  # noqa: E402
from tiny_checkpoints import sigma_at, vp_reference  # noqa: E402
from tiny_ldm import DD, UNET, ldm_betas, tiny_ldm, write_ldm  # noqa: E402


def cfg(folder, **over):
    return {"name": "tiny-ldm", "loader": "ldm_compvis", "path": str(folder / "model.ckpt"),
            "ldm_config": {"path": str(folder / "config.yaml")}, **over}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    unet, vq = tiny_ldm()
    folder = write_ldm(tmp_path_factory.mktemp("ldm") / "tiny", unet, vq, scale_factor=0.5)
    return folder, unet, vq


def test_loaded_ldm_equals_the_openaimodel_unet_and_the_vq_decoder(tiny):
    folder, unet, vq = tiny
    den = load_checkpoint(cfg(folder, resolution=16))
    assert den.latent_shape == (3, 8, 8) and den.resolution == 16 and den.channels == 3
    assert torch.allclose(den.schedule.alphas_cumprod, torch.cumprod(1 - ldm_betas(), 0), rtol=0, atol=1e-15)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 3, 8, 8, generator=g)
    sigma = sigma_at(den.schedule, [0, 420, 999])
    x = x * (1 + sigma.float().reshape(-1, 1, 1, 1) ** 2).sqrt()
    with torch.no_grad():
        got = den(x, sigma.float())
        want = vp_reference(unet, x, sigma, den.schedule)
    assert torch.allclose(got, want, rtol=1e-4, atol=1e-4), (got - want).abs().max()
    z = torch.randn(2, 3, 8, 8, generator=g)
    with torch.no_grad():
        img, ref = den.decode(z), vq.decode(z / 0.5).clamp(-1, 1)
    assert img.shape == (2, 3, 16, 16) and torch.allclose(img, ref, atol=1e-4), (img - ref).abs().max()


def test_lightning_extras_are_read_inert_and_other_pickles_refused(tmp_path):
    unet, vq = tiny_ldm(seed=2)
    for name, lightning in (("pytorch_lightning", True), ("evilpkg", False)):
        mod, before = types.ModuleType(name), sys.modules.get(name)

        class Obj:  # pickled by reference to mod.Obj
            def __reduce__(self):
                return (Obj, ())

        Obj.__module__, Obj.__qualname__ = name, "Obj"
        mod.Obj = Obj
        sys.modules[name] = mod
        try:
            write_ldm(tmp_path / name, unet, vq, extras={"callbacks": {"cb": Obj()}})
        finally:
            sys.modules.pop(name)
            if before is not None:
                sys.modules[name] = before
        with pytest.raises(pickle.UnpicklingError):
            torch.load(tmp_path / name / "model.ckpt", weights_only=True)
        if lightning:
            den = load_checkpoint(cfg(tmp_path / name))
            assert den.latent_shape == (3, 8, 8)
        else:
            with pytest.raises(CheckpointError, match=r"evilpkg.Obj.*refuses it"):
                load_checkpoint(cfg(tmp_path / name))


def test_missing_or_mismatched_ldm_files_are_named(tiny, tmp_path):
    folder, _, _ = tiny
    with pytest.raises(CheckpointError, match=r"checkpoint.ldm_config.path=.*nowhere.yaml does not exist"):
        load_checkpoint(cfg(folder, ldm_config={"path": str(tmp_path / "nowhere.yaml")}))
    bad = (folder / "config.yaml").read_text().replace(f"model_channels: {UNET['model_channels']}", "model_channels: 64")
    (tmp_path / "config.yaml").write_text(bad)
    with pytest.raises(CheckpointError, match=r"U-Net \(model.diffusion_model.\*\) does not fit its config.yaml"):
        load_checkpoint(cfg(folder, ldm_config={"path": str(tmp_path / "config.yaml")}))
    (tmp_path / "config.yaml").write_text((folder / "config.yaml").read_text().replace("0.0195", "0.012"))
    with pytest.raises(CheckpointError, match="alphas_cumprod differ"):
        load_checkpoint(cfg(folder, ldm_config={"path": str(tmp_path / "config.yaml")}))
    with pytest.raises(CheckpointError, match=f"makes {DD['resolution']}×{DD['resolution']} images"):
        load_checkpoint(cfg(folder, resolution=256))


def test_lightning_extras_of_a_dict_shape_are_refused_with_the_reason(tmp_path):
    """A Lightning extra that is a dict subclass (e.g. AttributeDict in hyper_parameters) cannot be an inert
    placeholder: refused with its name and the advice to re-save the state_dict, never torch's advice to
    load with weights_only=False."""
    unet, vq = tiny_ldm(seed=2)
    mod, before = types.ModuleType("pytorch_lightning"), sys.modules.get("pytorch_lightning")

    class AttributeDict(dict):
        pass

    AttributeDict.__module__, AttributeDict.__qualname__ = "pytorch_lightning", "AttributeDict"
    mod.AttributeDict = AttributeDict
    sys.modules["pytorch_lightning"] = mod
    try:
        write_ldm(tmp_path, unet, vq, extras={"hyper_parameters": AttributeDict(lr=1.0)})
    finally:
        sys.modules.pop("pytorch_lightning")
        if before is not None:
            sys.modules["pytorch_lightning"] = before
    with pytest.raises(CheckpointError, match=r"pytorch_lightning.AttributeDict.*Re-save its state_dict") as e:
        load_checkpoint(cfg(tmp_path))
    assert "weights_only set to False" not in str(e.value)


def test_the_weights_digest_follows_the_config_scale_factor(tmp_path):
    """config.yaml's scale_factor is not in the .ckpt: it is in the denoiser's state dict, so the weights digest
    (run.json's, a fitted correction's `model`) changes when only the config changes."""
    from dode.core.denoisers import weights_digest

    unet, vq = tiny_ldm(seed=3)
    digests = {s: weights_digest(load_checkpoint(cfg(write_ldm(tmp_path / str(s), unet, vq, scale_factor=s))))
               for s in (0.5, 0.25)}
    assert digests[0.5] != digests[0.25] and None not in digests.values()
