"""The config tree of ``dode-run``: where it is, and single options of its groups.

The tree is the repository's ``conf/`` (one tree for everyone). ``dode/conf`` is a symbolic link to
it, so a source checkout, ``pip install -e .`` and a wheel (setuptools copies the linked files as
package data) all see the same files. It is found, in order, at ``$DODE_CONF``, at ``dode/conf``,
or at ``conf/`` next to the package.
"""
from __future__ import annotations

import os
from pathlib import Path

from dode.errors import UserError

CONF_ENV = "DODE_CONF"


class ConfigNotFound(UserError):
    """No ``config.yaml`` where the config tree should be."""


def config_dir() -> Path:
    """The directory of ``config.yaml`` (see the module docstring)."""
    env = os.environ.get(CONF_ENV)
    package = Path(__file__).resolve().parent.parent  # dode/
    candidates = [Path(env)] if env else [package / "conf", package.parent / "conf"]
    for c in candidates:
        if (c / "config.yaml").is_file():
            return c.resolve()
    where = ", ".join(str(c) for c in candidates)
    raise ConfigNotFound(f"no config tree found (looked for config.yaml in {where}); "
                         f"set {CONF_ENV} to the repository's conf/ folder")


def group_option(group: str, name: str) -> dict:
    """``conf/<group>/<name>.yaml`` as a plain dict, unresolved ({} when there is no such option)."""
    from omegaconf import OmegaConf

    path = config_dir() / group / f"{name}.yaml"
    return OmegaConf.to_container(OmegaConf.load(path), resolve=False) if path.is_file() else {}


def without_group(overrides: list[str], group: str) -> list[str]:
    """``overrides`` without those of ``group`` (``group=…``, ``group.key=…``, ``+group…``, ``~group…``)."""
    return [o for o in overrides if not o.split("=")[0].lstrip("+~").startswith(group)]


def display_label(template: str, solver_label: str) -> str:
    """A distill option's display name: its ``label:`` with ``{solver}`` replaced by the solver's
    label (``D-{solver}`` on DDIM → ``D-DDIM``; ``S4S ({solver})`` → ``S4S (DDIM)``)."""
    return str(template).replace("{solver}", solver_label)
