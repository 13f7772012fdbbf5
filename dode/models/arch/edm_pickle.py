"""Read EDM network pickles without running any of their code.

An EDM pickle (``dict(ema=EDMPrecond, loss_fn=..., augment_pipe=..., dataset_kwargs=...)``) stores each
network object as a call ``torch_utils.persistence._reconstruct_persistent_obj(meta)``, ``meta`` =
``dict(type='class', version=6, module_src=<Python source>, class_name=..., state=<the object's
__dict__>)``. EDM's own loader executes ``module_src``. :func:`load_edm_pickle` instead unpickles with
an allow-list: every global the stream names must be one of :data:`ALLOWED_GLOBALS`, each mapped to a
function or class of this module that only builds data —

* a persistent object becomes a :class:`Record` (class name and state); its source is never read;
* tensors are rebuilt from their storages (read by ``torch.load(..., weights_only=True)``);
* ``collections.OrderedDict``, ``set``, ``dnnlib.util.EasyDict`` (a dict), numeric numpy scalars and
  ``torch.nn.ModuleDict`` (a :class:`Record`) are the only other objects allowed.

Anything else — ``os.system``, ``builtins.eval``, an unknown module or class — is refused with
:class:`EDMPickleError` naming it when the stream first names it, before it can be called. Persistent
classes must be EDM's: the networks of ``training/networks.py`` (rebuilt as dode's own code,
:mod:`dode.models.arch.edm_networks`) or the training-only loss and augmentation objects (kept as
inert records); EDM2's classes raise :class:`EDM2LayoutError`.

The ``ema`` network is then rebuilt from its recorded constructor arguments (``_init_args``,
``_init_kwargs``) as dode's class of the same name, and the pickle's module tree is checked against
it: the same class at every path, the same children in the same order, the same parameter and buffer
names and shapes, and equal scalar settings (``num_heads``, ``eps``, ``sigma_min``, …). Only then are
the tensors copied in.
"""
from __future__ import annotations

import io
import math
import pickle
import warnings
from collections import OrderedDict
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch
from torch import nn

from dode.models.arch.edm_layers import LAYERS
from dode.models.arch.edm_networks import PRECONDS, UNETS

__all__ = ["EDMPickleError", "EDM2LayoutError", "Record", "ALLOWED_GLOBALS", "NETWORK_CLASSES", "AUX_CLASSES",
           "EDM2_CLASSES", "load_edm_pickle", "build_network", "check_not_edm2"]

PERSISTENCE_VERSION = 6
NETWORK_CLASSES = frozenset({*PRECONDS, *UNETS, *LAYERS})
AUX_CLASSES = frozenset({"VPLoss", "VELoss", "EDMLoss", "AugmentPipe"})  # training only: kept as records
EDM2_CLASSES = frozenset({"Precond", "UNet", "Block", "MPConv", "MPFourier", "Encoder", "StandardRGBEncoder",
                          "StabilityVAEEncoder"})
_TRUST_HINT = ("checkpoint.trust_pickle=true loads it by running the code it carries; set it only for a file "
               "from a source you trust")
_EDM2_MESSAGE = ("EDM2 layout not supported; this pickle holds EDM2's networks (training/networks_edm2.py: "
                 "{}), which dode does not implement. dode reads EDM (NVlabs/edm) network pickles")


class EDMPickleError(RuntimeError):
    """An EDM pickle names something dode does not read, or does not fit dode's EDM networks."""


class EDM2LayoutError(EDMPickleError):
    """The pickle holds EDM2's networks (``training.networks_edm2``)."""


class Record:
    """An object of the pickle kept as data: its class name and its state; nothing of it runs."""

    class_name = "object"

    def __init__(self, class_name: str, state: dict):
        self.class_name, self.state = class_name, state

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __repr__(self) -> str:
        return f"Record({self.class_name})"


class ModuleDictRecord(Record):
    """A pickled ``torch.nn.ModuleDict`` (restored by ``NEWOBJ`` and ``BUILD``)."""

    class_name = "ModuleDict"


class EasyDict(dict):
    """``dnnlib.util.EasyDict`` read as a plain dict."""


def _persistent(meta: Any) -> Record:
    """``_reconstruct_persistent_obj(meta)``: a :class:`Record`, for EDM's classes only."""
    if not isinstance(meta, dict) or not isinstance(meta.get("class_name"), str):
        raise EDMPickleError("a persistent object without a class name; not an EDM network pickle")
    name = meta["class_name"]
    if name in EDM2_CLASSES:
        raise EDM2LayoutError(_EDM2_MESSAGE.format(name))
    if meta.get("type") != "class" or meta.get("version") != PERSISTENCE_VERSION:
        raise EDMPickleError(f"persistent object {name!r} of type {meta.get('type')!r}, version "
                             f"{meta.get('version')!r}; dode reads version {PERSISTENCE_VERSION} ('class')")
    if name not in NETWORK_CLASSES | AUX_CLASSES:
        raise EDMPickleError(f"the pickle holds a persistent class {name!r}, which is not one of EDM's "
                             f"(known: {', '.join(sorted(NETWORK_CLASSES | AUX_CLASSES))}); nothing was run. "
                             f"{_TRUST_HINT}")
    state = meta.get("state") or {}
    if not isinstance(state, dict):
        raise EDMPickleError(f"persistent object {name!r} has a state of type {type(state).__name__}, not a dict")
    return Record(name, state)


def _load_storage(data: Any) -> Any:
    """``torch.storage._load_from_bytes``: a storage serialised by ``torch.save``, read weights-only."""
    if not isinstance(data, bytes):
        raise EDMPickleError("a tensor storage that is not bytes")
    try:
        storage = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch's message advises weights_only=False: not shown
        raise EDMPickleError(f"a tensor storage that is not plain tensor data ({type(e).__name__})") from None
    if not isinstance(storage, (torch.TypedStorage, torch.UntypedStorage)):
        raise EDMPickleError(f"a tensor storage that holds a {type(storage).__name__}")
    return storage


def _tensor(storage: Any, offset: int, size: tuple, stride: tuple, requires_grad: bool = False,
            hooks: Any = None, metadata: Any = None) -> torch.Tensor:
    """``torch._utils._rebuild_tensor_v2``: a view ``(offset, size, stride)`` of a storage (no hooks)."""
    if not isinstance(storage, torch.TypedStorage) or hooks:
        raise EDMPickleError("a tensor that is not a plain CPU tensor (or has hooks)")
    return torch.empty(0, dtype=storage.dtype).set_(storage.untyped(), int(offset), tuple(size), tuple(stride))


def _parameter(data: Any, requires_grad: bool = False, hooks: Any = None) -> torch.Tensor:
    """``torch._utils._rebuild_parameter``: the parameter's tensor."""
    if not isinstance(data, torch.Tensor) or hooks:
        raise EDMPickleError("a parameter that is not a plain tensor (or has hooks)")
    return data


def _np_dtype(name: Any, align: bool = False, copy: bool = False) -> np.dtype:
    """``numpy.dtype``: numeric dtypes only (always a copy, as pickled dtypes are)."""
    try:
        dt = np.dtype(name) if isinstance(name, str) else None
    except TypeError:
        dt = None
    if dt is None or dt.kind not in "biuf":
        raise EDMPickleError(f"a numpy dtype {name!r}; only numeric scalars are read")
    return np.dtype(name, bool(align), True)


def _np_scalar(dtype: Any, data: Any = None) -> Any:
    """``numpy.core.multiarray.scalar``: a numeric scalar from its bytes."""
    if not isinstance(dtype, np.dtype) or dtype.kind not in "biuf" or not isinstance(data, bytes):
        raise EDMPickleError("a numpy scalar that is not numeric")
    return np.frombuffer(data, dtype=dtype, count=1)[0]


ALLOWED_GLOBALS = {
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): _persistent,
    ("dnnlib.util", "EasyDict"): EasyDict,
    ("dnnlib", "EasyDict"): EasyDict,
    ("collections", "OrderedDict"): OrderedDict,
    ("builtins", "set"): set,
    ("torch._utils", "_rebuild_tensor_v2"): _tensor,
    ("torch._utils", "_rebuild_parameter"): _parameter,
    ("torch.storage", "_load_from_bytes"): _load_storage,
    ("torch.nn.modules.container", "ModuleDict"): ModuleDictRecord,
    ("numpy", "dtype"): _np_dtype,
    ("numpy.core.multiarray", "scalar"): _np_scalar,
    ("numpy._core.multiarray", "scalar"): _np_scalar,
}


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        found = ALLOWED_GLOBALS.get((module, name))
        if found is not None:
            return found
        if module.startswith("training.networks_edm2"):
            raise EDM2LayoutError(_EDM2_MESSAGE.format(f"{module}.{name}"))
        raise EDMPickleError(f"refused: the pickle names {module}.{name}, which is not among what an EDM "
                             f"network pickle holds; nothing was run. {_TRUST_HINT}")

    def persistent_load(self, pid: Any) -> Any:
        raise EDMPickleError("the pickle uses persistent ids (a torch.save file?), not an EDM network pickle")


# ------------------------------------------------------------------------------------------- rebuild
def _plain(value: Any, where: str) -> Any:
    """A constructor argument as plain Python (numpy scalars → numbers); other objects are refused."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(v, where) for v in value)
    if isinstance(value, dict):
        return {k: _plain(v, where) for k, v in value.items()}
    raise EDMPickleError(f"{where}: a constructor argument of type {type(value).__name__}")


def _scalar_equal(a: Any, b: Any) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_scalar_equal(x, y) for x, y in zip(a, b))
    if isinstance(a, bool) or isinstance(b, bool) or isinstance(a, str) or isinstance(b, str) or a is None or b is None:
        return a == b
    try:
        fa, fb = float(a), float(b)
    except (TypeError, ValueError):
        return False
    return fa == fb or math.isclose(fa, fb, rel_tol=1e-6)


def _is_setting(value: Any) -> bool:
    if isinstance(value, (list, tuple)):
        return all(_is_setting(v) for v in value)
    return value is None or isinstance(value, (bool, int, float, str, np.generic))


def _entries(state: dict, key: str, where: str) -> dict:
    entries = state.get(key) or {}
    if not isinstance(entries, dict):
        raise EDMPickleError(f"{where}: {key} is a {type(entries).__name__}, not a dict")
    return {k: v for k, v in entries.items() if v is not None}


def _restore(rec: Any, module: nn.Module, where: str) -> None:
    """Check ``rec`` against dode's ``module`` (class, children, tensors, settings) and copy its tensors in."""
    kind = type(module).__name__
    if not isinstance(rec, Record) or rec.class_name != kind:
        got = rec.class_name if isinstance(rec, Record) else type(rec).__name__
        raise EDMPickleError(f"{where}: the pickle has a {got} where dode's network has a {kind}")
    state = rec.state if isinstance(rec.state, dict) else {}
    children = _entries(state, "_modules", where)
    own_children = dict(module.named_children())
    if list(children) != list(own_children):
        raise EDMPickleError(f"{where} ({kind}): submodules {list(children)} in the pickle, {list(own_children)} "
                             f"in dode's network built from the same arguments")
    own = {**dict(module.named_parameters(recurse=False)), **dict(module.named_buffers(recurse=False))}
    tensors = {**_entries(state, "_parameters", where), **_entries(state, "_buffers", where)}
    if sorted(tensors) != sorted(own):
        raise EDMPickleError(f"{where} ({kind}): tensors {sorted(tensors)} in the pickle, {sorted(own)} in dode's")
    for key, value in state.items():
        if key.startswith("_") or key == "training" or not _is_setting(value):
            continue
        if not hasattr(module, key) or not _scalar_equal(_plain(value, where), getattr(module, key)):
            mine = getattr(module, key, "nothing")
            raise EDMPickleError(f"{where} ({kind}): {key}={value!r} in the pickle, {mine!r} in dode's network")
    with torch.no_grad():
        for name, t in tensors.items():
            if not isinstance(t, torch.Tensor) or t.shape != own[name].shape:
                shape = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
                raise EDMPickleError(f"{where}.{name}: {shape} in the pickle, {tuple(own[name].shape)} in dode's")
            own[name].copy_(t)
    for name, child in own_children.items():
        _restore(children[name], child, f"{where}.{name}")


def build_network(rec: Any, where: str = "ema") -> nn.Module:
    """dode's network for the pickled preconditioned network ``rec`` (a :class:`Record`), in eval mode."""
    name = rec.class_name if isinstance(rec, Record) else type(rec).__name__
    if name not in PRECONDS:
        raise EDMPickleError(f"{where} is a {name}, not one of EDM's networks ({', '.join(PRECONDS)})")
    args = _plain(rec.state.get("_init_args") or (), where)
    kwargs = _plain(rec.state.get("_init_kwargs") or {}, where)
    try:
        net = PRECONDS[name](*args, **kwargs)
    except (TypeError, ValueError) as e:
        raise EDMPickleError(f"{where}: cannot build {name} from the arguments the pickle records: {e}") from None
    _restore(rec, net, where)
    return net.eval().requires_grad_(False)


def load_edm_pickle(file: str | Path | BinaryIO) -> Any:
    """Unpickle an EDM network pickle (path or binary file) without running its code; its ``ema`` entry
    becomes dode's network (:func:`build_network`), other persistent objects stay :class:`Record`s."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="TypedStorage is deprecated")
        if hasattr(file, "read"):
            data = _RestrictedUnpickler(file).load()
        else:
            with open(file, "rb") as f:
                data = _RestrictedUnpickler(f).load()
    if isinstance(data, dict) and isinstance(data.get("ema"), Record):
        data = {**data, "ema": build_network(data["ema"])}
    return data


def check_not_edm2(net: Any) -> None:
    """Raise :class:`EDM2LayoutError` when ``net`` (loaded by running the pickle's code) is an EDM2 network."""
    if isinstance(net, nn.Module):
        names = {type(m).__name__ for m in net.modules()} & EDM2_CLASSES
        if names:
            raise EDM2LayoutError(_EDM2_MESSAGE.format(", ".join(sorted(names))))
