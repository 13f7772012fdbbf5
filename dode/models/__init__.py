"""Models: pretrained checkpoints as dode denoisers, the embedded digits models, and the network
architectures of the paper's checkpoints.

* :mod:`dode.models.checkpoints` — the loader registry and the one entry point ``load_checkpoint(cfg)``;
* :mod:`dode.models.files` — finding a checkpoint file, checksums, reading and fitting state dicts;
* :mod:`dode.models.loaders` — the loaders of the ddpm, adm, diffusers and edm formats;
* :mod:`dode.models.adapters` — network call conventions wrapped as denoisers, schedules from configs;
* :mod:`dode.models.digits` — the embedded 8×8 digits models and their classifier (loader ``digits``);
* :mod:`dode.models.arch` — network definitions with the official parameter names.
"""
