"""The top-level keys of ``dode-run``: their types and valid values, checked before any work.

Hydra accepts any value for a key of ``conf/config.yaml`` (``world_size=abc``, ``progress=maybe``)
and any new key added with ``+`` (``+nfes=5``); each of these is refused here with one message that
names the key, what it should be and, for an unknown key, the valid keys and the likely intended one.
The keys of the points themselves (``nfe``, ``seeds``, sizes) are checked by :mod:`dode.runner.points`.
"""
from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Any, Iterable

from dode.errors import UserError

DEVICES = "auto, cpu, cuda, cuda:<index>, mps"
_DEVICE = re.compile(r"^(auto|cpu|cuda|cuda:\d+|mps)$")
BOOL_KEYS = ("compare_base", "progress")
DTYPES = ("float32", "float64")


class UnknownKey(UserError):
    """A top-level key that ``conf/config.yaml`` does not define (a typo added with ``+``)."""


def config_keys(conf: Path) -> list[str]:
    """The keys ``config.yaml`` sets itself (not its groups): every ``dode-run`` config has them."""
    from omegaconf import OmegaConf

    return [k for k in OmegaConf.load(conf / "config.yaml") if k not in ("defaults", "hydra")]


def top_level_keys(conf: Path) -> list[str]:
    """The keys a ``dode-run`` config may have at the top: those of ``config.yaml`` and its groups."""
    from omegaconf import OmegaConf

    root = OmegaConf.to_container(OmegaConf.load(conf / "config.yaml"), resolve=False)
    keys = config_keys(conf)
    for entry in root.get("defaults", []):
        name = next(iter(entry)) if isinstance(entry, dict) else str(entry)
        name = name.replace("optional ", "").replace("override ", "")
        if not name.startswith(("hydra", "_self_")):
            keys.append(name)
    return keys


def unknown_key_message(key: str, valid: Iterable[str], how: str) -> str:
    """``unknown key …; valid top-level keys: …; did you mean …?`` for ``key`` given as ``how``."""
    valid = sorted(set(valid))
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.6)
    hint = f" Did you mean `{close[0]}`?" if close else ""
    return (f"unknown key {key!r} in `{how}`: dode-run has no such setting, so it would be ignored.{hint} "
            f"Valid top-level keys: {', '.join(valid)} (`dode-run --help` lists them with their values).")


def check_argv_keys(argv: list[str], conf: Path) -> str | None:
    """A message for a ``key=value`` / ``+key=value`` argument whose top-level key dode-run does not
    know (Hydra would refuse the first with a hint to add ``+``, and silently add the second), or None."""
    if any(a.startswith("hydra.searchpath") for a in argv):
        return None  # other config folders may add groups: the composed config is checked instead
    valid = top_level_keys(conf)
    groups = {p.name for p in conf.iterdir() if p.is_dir()}
    for arg in argv:
        if arg.startswith("-") or "=" not in arg:
            continue
        key = arg.split("=", 1)[0].lstrip("+~").split(".")[0]
        if key and not key.startswith("hydra") and key not in valid and key not in groups:
            return unknown_key_message(key, valid, arg)
    return None


def check_composed_keys(cfg: dict, valid: Iterable[str], overrides: list[str], required: Iterable[str] = ()) -> None:
    """Refuse top-level keys of the composed config that dode-run does not know (``+nfes=5``) and
    missing ``required`` ones (deleted with ``~key``)."""
    missing = [k for k in required if k not in cfg]
    if missing:
        raise UserError(f"the key(s) {', '.join(missing)} were removed (`~{missing[0]}`), but dode-run needs every "
                        "key of config.yaml: give a value instead (`dode-run --help` lists them)")
    valid = set(valid)
    for key in cfg:
        if key != "hydra" and key not in valid:
            how = next((o for o in overrides if o.lstrip("+~").split("=")[0].split(".")[0] == key), key)
            raise UnknownKey(unknown_key_message(key, valid, how))


def _bool(key: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise UserError(f"{key} must be true or false, got {value!r}")


def check_options(cfg: dict) -> None:
    """The keys that are no part of a point: ``world_size`` (an integer ≥ 1), ``device``
    (:data:`DEVICES`), ``results_dir`` (a folder name), ``progress`` and ``compare_base`` (true or
    false) and ``dtype`` (:data:`DTYPES`)."""
    ws = cfg.get("world_size")
    if isinstance(ws, bool) or not isinstance(ws, int) or ws < 1:
        raise UserError(f"world_size must be an integer ≥ 1 (the number of processes), got {ws!r}")
    device = cfg.get("device")
    if not isinstance(device, str) or not _DEVICE.match(device):
        raise UserError(f"unknown device {device!r}; valid devices: {DEVICES}")
    rd = cfg.get("results_dir")
    if not isinstance(rd, str) or not rd.strip():
        raise UserError(f"results_dir must name a folder (default: results), got {rd!r}")
    for key in BOOL_KEYS:
        _bool(key, cfg.get(key))
    if cfg.get("dtype") not in DTYPES:
        raise UserError(f"unknown dtype {cfg.get('dtype')!r}; valid dtypes: {', '.join(DTYPES)}")
