"""Load the paper's pretrained diffusion models from local files as dode denoisers.

dode never downloads weights. Each model has a config ``conf/checkpoint/<name>.yaml`` stating the
file, its checksum (where known), the architecture, schedule and prediction type, and where to get
it. :func:`load_checkpoint` reads that mapping and returns a denoiser ``D(x, σ) → x̂0`` (see
:mod:`dode.core.denoisers`) with the extra attributes ``num_classes`` (0: unconditional), ``resolution``,
``channels``, ``name``, ``class_label`` (a fixed class, or None to draw one per seed) and ``path``.

Where the file is looked for: ``path`` when set (``checkpoint.path=/data/model-790000.ckpt`` on
the command line), otherwise ``$DODE_CHECKPOINT_DIR/<file>``, otherwise ``./checkpoints/<file>``.

Loaders (the ``loader`` key) live in :data:`LOADERS`, a plain dict name → ``fn(cfg) -> denoiser``;
another module adds its own with :func:`register_loader` (or a ``"package.module:function"``
string, imported on first use).

Class-conditional models take integer labels in ``denoiser.model_kwargs["class_labels"]`` (a
LongTensor of shape ``(batch,)``), whatever the network wants internally (EDM one-hot vectors, ADM
``y``, diffusers ``class_labels``); :func:`draw_labels` draws them from the samples' seeds.

.. warning:: The EDM loader unpickles ``.pkl`` files, and unpickling runs code (EDM's pickles carry
   and execute their network source). Give it only files from a source you trust.
"""
from __future__ import annotations

import hashlib
import importlib
import json
import os
from pathlib import Path
from typing import Callable, Mapping

import torch
from torch import Tensor, nn

from dode.core.denoisers import EDMDenoiser, VPDenoiser
from dode.errors import UserError
from dode.core.schedules import DiscreteVPSchedule

__all__ = ["CheckpointError", "LOADERS", "register_loader", "load_checkpoint", "resolve_file",
           "verify_checksum", "DiscreteNet", "ClassifierGuidance", "EDMNet", "schedule_from_config"]

DEFAULT_DIR = "checkpoints"
DIR_ENV = "DODE_CHECKPOINT_DIR"


class CheckpointError(UserError):
    """A checkpoint file is missing, corrupt, or not the model its config describes."""


# --------------------------------------------------------------------------------------------------
# config access and files

def _plain(cfg) -> dict:
    """The checkpoint config as a plain dict (OmegaConf DictConfig or any mapping)."""
    if cfg is None:
        raise CheckpointError("no checkpoint configured; choose one with checkpoint=NAME (see conf/checkpoint/)")
    try:
        from omegaconf import DictConfig, OmegaConf
        if isinstance(cfg, DictConfig):
            return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
    except ImportError:  # pragma: no cover - omegaconf is a dependency
        pass
    if not isinstance(cfg, Mapping):
        raise TypeError(f"a checkpoint config must be a mapping, got {type(cfg).__name__}")
    return dict(cfg)


def _label(cfg: Mapping) -> str:
    return f"checkpoint {cfg.get('name', '?')!r}"


def resolve_file(cfg: Mapping, key: str = "checkpoint") -> Path:
    """The local file (or folder) of ``cfg``: its ``path``, else ``$DODE_CHECKPOINT_DIR/<file>``, else
    ``./checkpoints/<file>``. Raises :class:`CheckpointError` saying where to get it when absent.
    ``key`` is the config key users set (``checkpoint`` or ``checkpoint.classifier``)."""
    path = cfg.get("path")
    fname = cfg.get("file")
    if path:
        p = Path(os.path.expanduser(str(path)))
    elif fname:
        p = Path(os.environ.get(DIR_ENV) or DEFAULT_DIR) / fname
    else:
        raise CheckpointError(f"{_label(cfg)}: the config names no file; set {key}.path=/path/to/the/file")
    if p.exists():
        return p
    what = "folder" if cfg.get("is_dir") else "file"
    name = Path(fname or p.name).name
    if path:
        lines = [f"{_label(cfg)}: {key}.path={path} does not exist ({p.absolute()})"]
    else:
        lines = [f"{_label(cfg)}: {what} not found: {p.absolute()}"]
    lines += [f"  {cfg.get('description') or 'pretrained model'}",
              "  dode never downloads weights; get it yourself from:"]
    lines += [f"    {s}" for s in _as_list(cfg.get("source"))] or ["    (no source recorded in the config)"]
    if cfg.get("md5"):
        lines.append(f"  (md5 {cfg['md5']})")
    if fname:
        default = (Path(os.environ.get(DIR_ENV) or DEFAULT_DIR) / fname).absolute()
        lines.append(f"  then put it at {default}")
        lines.append(f"  (i.e. <dir>/{fname} with <dir> = ${DIR_ENV}, else ./{DEFAULT_DIR}),")
        lines.append(f"  or set {key}.path=/where/you/saved/{name}")
    else:
        lines.append(f"  then set {key}.path=/where/you/saved/{name}")
    raise CheckpointError("\n".join(lines))


def _as_list(v) -> list:
    if v is None:
        return []
    return [str(s) for s in v] if isinstance(v, (list, tuple)) else [str(v)]


def file_digest(path: Path, algo: str = "md5", chunk: int = 1 << 22) -> str:
    h = hashlib.new(algo)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def verify_checksum(path: Path, cfg: Mapping, key: str = "checkpoint") -> None:
    """Check ``path`` against the config's ``md5`` / ``sha256`` (each skipped when null)."""
    if path.is_dir():
        return
    for algo in ("md5", "sha256"):
        want = cfg.get(algo)
        if not want:
            continue
        got = file_digest(path, algo)
        if got.lower() != str(want).lower():
            src = "; ".join(_as_list(cfg.get("source"))) or "its publisher"
            raise CheckpointError(
                f"{_label(cfg)}: {algo} checksum mismatch for {path}\n"
                f"  expected {want}, the file has {got}.\n"
                f"  The file is incomplete, corrupt, or a different model. Download it again from {src}, "
                f"or (if you are sure it is right) skip the check with {key}.{algo}=null")


# --------------------------------------------------------------------------------------------------
# state dicts

def _torch_load(path: Path, cfg: Mapping):
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any failure here means "not a readable checkpoint"
        raise CheckpointError(f"{_label(cfg)}: cannot read {path} as a PyTorch state dict "
                              f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}). "
                              f"Is it the right file, and completely downloaded?") from e


def _is_state_dict(obj) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and all(isinstance(v, Tensor) for v in obj.values())


def extract_state_dict(obj, cfg: Mapping, path: Path) -> dict:
    """The EMA state dict in a loaded checkpoint object: a plain state dict; a list/tuple whose last
    element is the EMA state dict (the DDIM repository's ``ckpt.pth``); or a dict with an ``ema``
    entry. A ``module.`` prefix (DataParallel) is removed."""
    if isinstance(obj, (list, tuple)):
        if not obj or not _is_state_dict(obj[-1]):
            raise CheckpointError(f"{_label(cfg)}: {path} holds a list whose last element is not a state dict "
                                  f"(expected the DDIM repository's [model, optimizer, epoch, step, ema] list)")
        obj = obj[-1]
    elif isinstance(obj, Mapping) and not _is_state_dict(obj):
        for k in ("ema", "ema_model", "state_dict", "model"):
            if _is_state_dict(obj.get(k)):
                obj = obj[k]
                break
        else:
            raise CheckpointError(f"{_label(cfg)}: {path} is not a state dict (top-level keys: "
                                  f"{', '.join(map(str, list(obj)[:8]))})")
    elif not _is_state_dict(obj):
        raise CheckpointError(f"{_label(cfg)}: {path} holds a {type(obj).__name__}, not a state dict")
    state = dict(obj)
    if all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def load_state_into(module: nn.Module, state: Mapping[str, Tensor], cfg: Mapping, path: Path, what: str) -> None:
    """``module.load_state_dict(state)`` with a specific message when the state does not fit."""
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (e.g. {', '.join(unexpected[:3])})")
        if shapes:
            parts.append(f"{len(shapes)} shape mismatches (e.g. {'; '.join(shapes[:2])})")
        raise CheckpointError(f"{_label(cfg)}: the state dict in {path} does not fit the {what} configured "
                              f"for it: {'; '.join(parts)}. Is it the right file for this config?")
    with torch.no_grad():
        module.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()})


# --------------------------------------------------------------------------------------------------
# model adapters: one call convention per denoiser family

def _check_labels(labels: Tensor | None, x: Tensor, num_classes: int, name: str) -> Tensor | None:
    if not num_classes:
        return None
    if labels is None:
        raise ValueError(f"{name} is class-conditional ({num_classes} classes): set "
                         f"denoiser.model_kwargs['class_labels'] (see dode.models.checkpoints.draw_labels)")
    labels = torch.as_tensor(labels, device=x.device)
    if labels.ndim == 2:  # one-hot rows
        labels = labels.argmax(dim=1)
    labels = labels.long().reshape(-1)
    if labels.shape[0] != x.shape[0]:
        raise ValueError(f"{name}: {labels.shape[0]} class labels for a batch of {x.shape[0]}")
    return labels


class DiscreteNet(nn.Module):
    """A discrete-time ε-network behind one signature ``(x, t, class_labels=None) → ε̂``.

    ``kind`` is the network's own call convention: ``"ddpm"`` ``net(x, t)``, ``"adm"``
    ``net(x, t, y=labels)``, ``"diffusers"`` ``net(x, t, class_labels=labels).sample``. The timestep
    is multiplied by ``time_scale`` (improved-diffusion's ``rescale_timesteps``: 1000/T), only the
    first ``eps_channels`` output channels are kept (learned-variance networks output [ε, v]), and
    the network runs in float32 whatever the caller's dtype.
    """

    def __init__(self, net: nn.Module, kind: str, eps_channels: int, time_scale: float = 1.0,
                 num_classes: int = 0, name: str = "model"):
        super().__init__()
        if kind not in ("ddpm", "adm", "diffusers"):
            raise ValueError(f"unknown network kind {kind!r}")
        self.net, self.kind, self.eps_channels = net, kind, int(eps_channels)
        self.time_scale, self.num_classes, self.name = float(time_scale), int(num_classes or 0), name

    def forward(self, x: Tensor, t: Tensor, class_labels: Tensor | None = None) -> Tensor:
        labels = _check_labels(class_labels, x, self.num_classes, self.name)
        t = torch.as_tensor(t, device=x.device).float().expand(x.shape[0]) * self.time_scale
        xin = x.float()
        if self.kind == "ddpm":
            out = self.net(xin, t)
        elif self.kind == "adm":
            out = self.net(xin, t, y=labels) if labels is not None else self.net(xin, t)
        else:
            out = self.net(xin, t, class_labels=labels).sample
        return out[:, : self.eps_channels].to(x.dtype)


class ClassifierGuidance(nn.Module):
    """Classifier guidance on ε (Dhariwal & Nichol 2021, guided-diffusion's ``cond_fn`` with DDIM):
    ``ε̂ = ε − s·sqrt(1 − ᾱ_t)·∇_x log p(y | x_t, t)``, the gradient of the classifier's log-softmax
    at the labels ``class_labels``. Works under ``torch.no_grad`` and ``torch.inference_mode``."""

    def __init__(self, eps_model: nn.Module, classifier: nn.Module, schedule: DiscreteVPSchedule, scale: float,
                 time_scale: float = 1.0):
        super().__init__()
        self.eps_model, self.classifier, self.schedule = eps_model, classifier, schedule
        self.scale, self.time_scale = float(scale), float(time_scale)

    @property
    def num_classes(self) -> int:
        return getattr(self.eps_model, "num_classes", 0)

    def log_prob_grad(self, x: Tensor, t: Tensor, labels: Tensor) -> Tensor:
        """∇_x log p(y | x, t) in float32."""
        with torch.inference_mode(False), torch.enable_grad():
            x_in = x.detach().float().clone().requires_grad_(True)
            tc = t.detach().float().clone() * self.time_scale
            logits = self.classifier(x_in, tc)
            logp = torch.log_softmax(logits.float(), dim=-1)
            picked = logp[torch.arange(len(labels), device=x.device), labels.clone()]
            (grad,) = torch.autograd.grad(picked.sum(), x_in)
        return grad

    def forward(self, x: Tensor, t: Tensor, class_labels: Tensor | None = None) -> Tensor:
        eps = self.eps_model(x, t, class_labels=class_labels)
        if self.scale == 0:
            return eps
        labels = _check_labels(class_labels, x, self.num_classes or 1, "classifier guidance")
        t = torch.as_tensor(t, device=x.device).expand(x.shape[0])
        abar = self.schedule.log_alpha_bar(t.detach().cpu().double() + 1).exp().to(x.device)
        coef = (self.scale * torch.sqrt(1 - abar)).to(torch.float32).reshape(-1, 1, 1, 1)
        return (eps.float() - coef * self.log_prob_grad(x, t, labels)).to(eps.dtype)


class EDMNet(nn.Module):
    """An EDM ``EDMPrecond`` behind ``(x, sigma, class_labels=None) → D``: integer labels become the
    one-hot vectors EDM expects; ``force_fp32`` is passed when set (None: the network's own choice)."""

    def __init__(self, net: nn.Module, num_classes: int = 0, force_fp32: bool | None = None, name: str = "model"):
        super().__init__()
        self.net, self.num_classes, self.force_fp32, self.name = net, int(num_classes or 0), force_fp32, name

    def forward(self, x: Tensor, sigma: Tensor, class_labels: Tensor | None = None) -> Tensor:
        labels = _check_labels(class_labels, x, self.num_classes, self.name)
        onehot = None
        if labels is not None:
            onehot = torch.nn.functional.one_hot(labels, self.num_classes).to(torch.float32)
        kwargs = {} if self.force_fp32 is None else {"force_fp32": bool(self.force_fp32)}
        return self.net(x.float(), sigma.float(), onehot, **kwargs).to(x.dtype)


# --------------------------------------------------------------------------------------------------
# schedules

def schedule_from_config(s: Mapping | None, cfg: Mapping | None = None) -> DiscreteVPSchedule:
    """A :class:`DiscreteVPSchedule` from ``{kind: linear|cosine|scaled_linear, T, beta_start, beta_end}``."""
    s = dict(s or {"kind": "linear", "T": 1000})
    kind, T = s.get("kind", "linear"), int(s.get("T", 1000))
    if kind == "linear":
        return DiscreteVPSchedule.linear(T, float(s.get("beta_start", 1e-4)), float(s.get("beta_end", 0.02)))
    if kind == "cosine":
        return DiscreteVPSchedule.cosine(T)
    if kind == "scaled_linear":  # β = linspace(√β0, √β1, T)²  (latent diffusion / diffusers)
        b = torch.linspace(float(s.get("beta_start", 1e-4)) ** 0.5, float(s.get("beta_end", 0.02)) ** 0.5, T,
                           dtype=torch.float64) ** 2
        return DiscreteVPSchedule(torch.cumprod(1 - b, 0), name=f"scaled_linear(T={T})")
    raise CheckpointError(f"{_label(cfg or {})}: unknown schedule kind {kind!r}; valid: linear, cosine, scaled_linear")


def _finish(den: nn.Module, cfg: Mapping, path: Path, num_classes: int, resolution: int, channels: int,
            device=None) -> nn.Module:
    den.num_classes, den.resolution, den.channels = int(num_classes or 0), int(resolution), int(channels)
    den.name, den.path = cfg.get("name"), str(path)
    den.class_label = cfg.get("class_label")
    if cfg.get("default_grid"):
        den.default_grid = cfg["default_grid"]
    den.eval().requires_grad_(False)
    return den.to(device) if device is not None else den


# --------------------------------------------------------------------------------------------------
# loaders

LOADERS: dict[str, Callable[..., nn.Module] | str] = {
    # other modules' loaders, imported on first use ("module:function")
    "digits": "dode.models.digits:load_digits_checkpoint",
}


def register_loader(name: str) -> Callable:
    """Decorator: ``@register_loader("mine") def load(cfg) -> denoiser`` (or assign ``LOADERS[name]``)."""
    def deco(fn: Callable) -> Callable:
        LOADERS[name] = fn
        return fn
    return deco


def _resolve_loader(name: str) -> Callable:
    fn = LOADERS.get(name, name if isinstance(name, str) and ":" in name else None)
    if fn is None:
        raise CheckpointError(f"unknown checkpoint loader {name!r}; known: {', '.join(sorted(LOADERS))} "
                              f"(or 'package.module:function')")
    if isinstance(fn, str):
        mod, _, attr = fn.partition(":")
        try:
            fn = getattr(importlib.import_module(mod), attr)
        except (ImportError, AttributeError) as e:
            raise CheckpointError(f"checkpoint loader {name!r} ({fn}) cannot be imported: {e}") from e
        if name in LOADERS:
            LOADERS[name] = fn
    return fn


def load_checkpoint(cfg, device=None) -> nn.Module:
    """The denoiser described by a ``conf/checkpoint/<name>.yaml`` mapping (DictConfig or dict)."""
    c = _plain(cfg)
    loader = c.get("loader")
    if not loader:
        raise CheckpointError(f"{_label(c)}: the config has no 'loader' key")
    fn = _resolve_loader(loader)
    return fn(c, device=device) if _takes_device(fn) else _to(fn(c), device)


def _takes_device(fn) -> bool:
    import inspect
    try:
        return "device" in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


def _to(den, device):
    return den.to(device) if device is not None and hasattr(den, "to") else den


@register_loader("ddpm")
def load_ddpm(cfg: Mapping, device=None) -> nn.Module:
    """DDPM U-Net state dicts of the DDIM repository's ``Model`` (pytorch_diffusion CIFAR-10 ckpt, DDIM
    ``ckpt.pth`` lists)."""
    from dode.models.arch.ddpm_unet import DDPMUNet
    path = resolve_file(cfg)
    verify_checksum(path, cfg)
    arch = dict(cfg.get("architecture") or {})
    res, channels = int(cfg.get("resolution", 32)), int(cfg.get("channels", 3))
    net = DDPMUNet(in_channels=channels, out_ch=arch.pop("out_ch", channels), resolution=res, **arch)
    state = extract_state_dict(_torch_load(path, cfg), cfg, path)
    load_state_into(net, state, cfg, path, "DDPM U-Net (DDIM repository Model)")
    schedule = schedule_from_config(cfg.get("schedule"), cfg)
    model = DiscreteNet(net, "ddpm", channels, name=str(cfg.get("name")))
    den = VPDenoiser(model, schedule, prediction=cfg.get("prediction", "eps"))
    return _finish(den, cfg, path, 0, res, channels, device)


def _adm_kwargs(arch: Mapping, res: int, channels: int) -> dict:
    kw = dict(arch)
    kw.setdefault("image_size", res)
    kw.setdefault("in_channels", channels)
    kw["attention_resolutions"] = tuple(int(r) for r in kw.get("attention_resolutions", (16, 8)))
    if kw.get("channel_mult") is not None:
        kw["channel_mult"] = tuple(kw["channel_mult"])
    return kw


@register_loader("adm")
def load_adm(cfg: Mapping, device=None) -> nn.Module:
    """guided-diffusion / improved-diffusion state dicts; optional classifier guidance (``classifier``)."""
    from dode.models.arch.adm import ADMEncoderUNet, ADMUNet
    path = resolve_file(cfg)
    verify_checksum(path, cfg)
    res, channels = int(cfg.get("resolution")), int(cfg.get("channels", 3))
    num_classes = int(cfg.get("num_classes") or 0)
    arch = dict(cfg.get("architecture") or {})
    learn_sigma = bool(arch.pop("learn_sigma", False))
    arch.setdefault("out_channels", 2 * channels if learn_sigma else channels)
    arch["num_classes"] = num_classes or None
    arch["use_fp16"] = bool(cfg.get("fp16") or False)
    net = ADMUNet(**_adm_kwargs(arch, res, channels))
    load_state_into(net, extract_state_dict(_torch_load(path, cfg), cfg, path), cfg, path, "ADM U-Net")
    schedule = schedule_from_config(cfg.get("schedule"), cfg)
    time_scale = 1000.0 / schedule.T if cfg.get("rescale_timesteps") else 1.0
    model: nn.Module = DiscreteNet(net, "adm", channels, time_scale, num_classes, name=str(cfg.get("name")))
    ccfg = cfg.get("classifier")
    if ccfg and (ccfg.get("file") or ccfg.get("path")):
        ccfg = dict(ccfg)
        ccfg.setdefault("name", f"{cfg.get('name')} classifier")
        cpath = resolve_file(ccfg, key="checkpoint.classifier")
        verify_checksum(cpath, ccfg, key="checkpoint.classifier")
        carch = dict(ccfg.get("architecture") or {})
        carch["use_fp16"] = bool(cfg.get("fp16") or False)
        clf = ADMEncoderUNet(**_adm_kwargs(carch, res, channels))
        load_state_into(clf, extract_state_dict(_torch_load(cpath, ccfg), ccfg, cpath), ccfg, cpath,
                        "ADM classifier (EncoderUNet)")
        clf.eval().requires_grad_(False)
        model = ClassifierGuidance(model, clf, schedule, float(ccfg.get("scale", 1.0)), time_scale)
    den = VPDenoiser(model, schedule, prediction=cfg.get("prediction", "eps"))
    return _finish(den, cfg, path, num_classes, res, channels, device)


_DIFFUSERS_PRED = {"epsilon": "eps", "sample": "x0", "v_prediction": "v"}


def _diffusers_schedule(folder: Path, cfg: Mapping) -> tuple[DiscreteVPSchedule, str]:
    sc_path = next((p for p in (folder / "scheduler_config.json", folder.parent / "scheduler" /
                                "scheduler_config.json", folder / "scheduler" / "scheduler_config.json")
                    if p.is_file()), None)
    prediction = cfg.get("prediction", "eps")
    if sc_path is None:
        return schedule_from_config(cfg.get("schedule"), cfg), prediction
    sc = json.loads(sc_path.read_text())
    T = int(sc.get("num_train_timesteps", 1000))
    if sc.get("trained_betas"):
        b = torch.tensor(sc["trained_betas"], dtype=torch.float64)
        sched = DiscreteVPSchedule(torch.cumprod(1 - b, 0), name="trained_betas")
    else:
        kind = {"linear": "linear", "scaled_linear": "scaled_linear", "squaredcos_cap_v2": "cosine"}.get(
            sc.get("beta_schedule", "linear"))
        if kind is None:
            raise CheckpointError(f"{_label(cfg)}: {sc_path} uses beta_schedule {sc.get('beta_schedule')!r}, "
                                  f"which dode does not know (linear, scaled_linear, squaredcos_cap_v2)")
        sched = schedule_from_config(dict(kind=kind, T=T, beta_start=sc.get("beta_start", 1e-4),
                                          beta_end=sc.get("beta_end", 0.02)), cfg)
    pred = _DIFFUSERS_PRED.get(sc.get("prediction_type", "epsilon"))
    if pred is None:
        raise CheckpointError(f"{_label(cfg)}: unknown prediction_type {sc.get('prediction_type')!r} in {sc_path}")
    return sched, pred


@register_loader("diffusers")
def load_diffusers(cfg: Mapping, device=None) -> nn.Module:
    """A diffusers ``UNet2DModel`` folder (config.json + diffusion_pytorch_model.safetensors/.bin)."""
    cfg = {**cfg, "is_dir": True}
    folder = resolve_file(cfg)
    if folder.is_file() or not (folder / "config.json").is_file():
        sub = folder / "unet"
        if sub.is_dir() and (sub / "config.json").is_file():
            folder = sub
        else:
            raise CheckpointError(f"{_label(cfg)}: {folder} is not a diffusers model folder (no config.json); "
                                  f"give the folder holding config.json and diffusion_pytorch_model.safetensors")
    weights = [folder / n for n in ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")]
    weight = next((w for w in weights if w.is_file()), None)
    if weight is None:
        raise CheckpointError(f"{_label(cfg)}: {folder} has config.json but no diffusion_pytorch_model.safetensors "
                              f"or .bin; the download is incomplete")
    verify_checksum(weight, cfg)
    try:
        from diffusers import UNet2DModel
    except ImportError as e:
        raise CheckpointError(f"{_label(cfg)}: loading a diffusers folder needs the 'diffusers' package "
                              f"(pip install diffusers)") from e
    try:
        net = UNet2DModel.from_pretrained(str(folder), local_files_only=True,
                                          use_safetensors=weight.suffix == ".safetensors")
    except Exception as e:  # noqa: BLE001
        raise CheckpointError(f"{_label(cfg)}: diffusers could not load {folder} as a UNet2DModel "
                              f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from e
    conf = net.config
    channels = int(conf.in_channels)
    res = conf.sample_size if isinstance(conf.sample_size, int) else conf.sample_size[0]
    num_classes = int(conf.num_class_embeds or 0)
    for key, have in (("resolution", res), ("channels", channels)):
        if cfg.get(key) not in (None, have):
            raise CheckpointError(f"{_label(cfg)}: {folder} is a {key}={have} model but the config says "
                                  f"{key}={cfg.get(key)}; is it the right folder?")
    schedule, prediction = _diffusers_schedule(folder, cfg)
    model = DiscreteNet(net, "diffusers", channels, 1.0, num_classes, name=str(cfg.get("name")))
    den = VPDenoiser(model, schedule, prediction=prediction)
    return _finish(den, cfg, folder, num_classes, res, channels, device)


@register_loader("edm")
def load_edm(cfg: Mapping, device=None) -> nn.Module:
    """An EDM network pickle (``dict(ema=EDMPrecond, ...)``). Unpickling RUNS CODE: trusted files only."""
    from dode.models.arch.edm_compat import CompatError, load_persistent_pickle
    path = resolve_file(cfg)
    verify_checksum(path, cfg)
    try:
        data = load_persistent_pickle(path)
    except CompatError as e:
        raise CheckpointError(f"{_label(cfg)}: cannot unpickle {path}: {e}") from e
    except Exception as e:  # noqa: BLE001
        raise CheckpointError(f"{_label(cfg)}: cannot unpickle {path} as an EDM network pickle "
                              f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}). "
                              f"Is it the right file, and completely downloaded?") from e
    net = data.get("ema") if isinstance(data, Mapping) else None
    if not isinstance(net, nn.Module):
        raise CheckpointError(f"{_label(cfg)}: {path} is not an EDM network pickle (expected a dict with an "
                              f"'ema' network, got {type(data).__name__})")
    net.eval().requires_grad_(False)
    have = dict(resolution=getattr(net, "img_resolution", None), channels=getattr(net, "img_channels", None),
                num_classes=getattr(net, "label_dim", None))
    for key, val in have.items():
        if val is not None and cfg.get(key) is not None and int(cfg[key]) != int(val):
            raise CheckpointError(f"{_label(cfg)}: {path} holds a network with {key}={val} but the config says "
                                  f"{key}={cfg[key]}; is it the right file for this config?")
    num_classes = int(have["num_classes"] if have["num_classes"] is not None else cfg.get("num_classes") or 0)
    res = int(have["resolution"] or cfg.get("resolution"))
    channels = int(have["channels"] or cfg.get("channels", 3))
    fp16 = cfg.get("fp16")
    model = EDMNet(net, num_classes, force_fp32=None if fp16 is None else not fp16, name=str(cfg.get("name")))
    den = EDMDenoiser(model, float(cfg.get("sigma_min", 0.002)), float(cfg.get("sigma_max", 80.0)))
    return _finish(den, cfg, path, num_classes, res, channels, device)
