"""Points: what one configuration of ``dode-run`` runs, and the model it runs on."""
from __future__ import annotations

import torch

from dode.errors import UserError
from dode.runner.config import config_dir

# config keys that describe a `_target_` model or metric rather than being its arguments
META_KEYS = {"label", "description", "doc", "_doc", "source", "name", "loader", "channels", "resolution",
         "num_classes", "class_label"}


def load_denoiser(point: dict, device: str):
    """The checkpoint as a denoiser: ``dode.models.checkpoints.load_checkpoint(cfg)``, or a factory given by
    ``_target_`` in the checkpoint config (analytic and test models)."""
    ck = point["checkpoint"]
    if "_target_" in ck:
        from hydra.utils import instantiate

        den = instantiate({k: v for k, v in ck.items() if k not in META_KEYS})
    else:
        from omegaconf import OmegaConf

        from dode.models.checkpoints import load_checkpoint

        den = load_checkpoint(OmegaConf.create(ck), device=device)
    if isinstance(den, torch.nn.Module):
        den = den.to(device).eval().requires_grad_(False)
    return den


def image_shape(point: dict, denoiser) -> tuple[int, int, int]:
    """(C, H, W) of the model's images: from the checkpoint config, else the dataset config."""
    for node in (point["checkpoint"], point["dataset"]):
        c, r = node.get("channels"), node.get("resolution")
        if c and r:
            return int(c), int(r), int(r)
    shape = getattr(denoiser, "shape", None)
    if shape is not None and len(shape) == 3:
        return tuple(int(v) for v in shape)
    raise UserError("the image shape is unknown: give the checkpoint (or dataset) config `channels` and `resolution`")


def load_model(dataset: str, checkpoint: str, device: str = "cpu"):
    """(denoiser, point) of ``checkpoint`` composed from the repository's conf/ like dode-run does."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf


    if GlobalHydra.instance().is_initialized():
        GlobalHydra.instance().clear()
    with initialize_config_dir(str(config_dir()), version_base="1.3"):
        cfg = compose("config", overrides=[f"dataset={dataset}", f"checkpoint={checkpoint}"])
    c = OmegaConf.to_container(cfg, resolve=True)
    point = {"checkpoint": c["checkpoint"], "dataset": c["dataset"], "choices": {"checkpoint": checkpoint}}
    den = load_denoiser(point, device)
    return den, point


def points_from_overrides(overrides: list[str], with_files: bool = True) -> list:
    """The points ``dode-run <overrides>`` runs (one job of a sweep), composed from the config tree by
    the runner's own code; ``with_files=False`` skips the checks that need the checkpoint and the
    reference statistics on this machine."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    from dode.runner.experiment import build_points

    GlobalHydra.instance().clear()
    with initialize_config_dir(str(config_dir()), version_base="1.3"):
        cfg = compose("config", overrides=list(overrides), return_hydra_config=True)
        none = compose("config", overrides=[o for o in overrides if not o.split("=")[0].lstrip("+~").startswith("distill")]
                       + ["distill=none"]).distill
    choices = {k: v for k, v in cfg.hydra.runtime.choices.items() if not k.startswith("hydra/")}
    plain = OmegaConf.to_container(cfg, resolve=True)
    plain.pop("hydra")
    return build_points(plain, choices, OmegaConf.to_container(none, resolve=True), with_files)
