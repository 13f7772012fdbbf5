"""Unpickle EDM network pickles (``edm-*.pkl``) without the EDM repository, RUNNING the code they carry:
the path of ``checkpoint.trust_pickle=true`` only (the default reader, which runs nothing, is
:mod:`dode.models.arch.edm_pickle`).

EDM's pickles are "persistent": every network class is pickled as a call to
``torch_utils.persistence._reconstruct_persistent_obj(meta)``, where ``meta`` holds the full source
code of the module that defined the class, the class name and the object's state. Unpickling
executes that source in a fresh module (which itself runs ``from torch_utils import persistence``
and, for the augmentation pipe, ``from torch_utils import misc``) and rebuilds the object from its
state. The pickles also hold ``dnnlib.EasyDict`` objects.

This module provides dode's own minimal versions of those names — ``torch_utils.persistence``
(``persistent_class``, ``is_persistent``, ``import_hook``, ``_reconstruct_persistent_obj``),
``torch_utils.misc`` (``constant`` and a few no-op helpers) and ``dnnlib``/``dnnlib.util``
(``EasyDict``) — and registers them in ``sys.modules`` **only while** :func:`load_persistent_pickle`
runs (or inside :func:`compat_modules`); any real ``torch_utils``/``dnnlib`` in ``sys.modules`` is
put back afterwards. dode ships no top-level ``torch_utils`` or ``dnnlib`` package.

.. warning:: Unpickling runs code. A pickle can execute anything, and a persistent pickle executes
   the Python source it carries by design. Only load pickles from a source you trust (e.g. the files
   NVIDIA publishes, checked against a checksum you recorded), and only when dode's own reader cannot
   (a network class dode does not implement).
"""
from __future__ import annotations

import contextlib
import copy
import inspect
import pickle
import sys
import threading
import types
import uuid
from typing import Any, Callable, Iterator

import numpy as np
import torch

PERSISTENCE_VERSION = 6  # the format version EDM (and StyleGAN2-ADA/3) write
_MODULE_NAMES = ("dnnlib", "dnnlib.util", "torch_utils", "torch_utils.persistence", "torch_utils.misc")
_LOCK = threading.RLock()
_MISSING = object()


class CompatError(RuntimeError):
    """A persistent pickle needs something dode's compatibility layer does not provide."""


# --------------------------------------------------------------------------- dnnlib.util
class EasyDict(dict):
    """A dict whose keys are also attributes (``d.key``); pickled as ``dnnlib.util.EasyDict``."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setattr__(self, name: str, value: Any) -> None:
        self[name] = value

    def __delattr__(self, name: str) -> None:
        del self[name]


# --------------------------------------------------------------------------- torch_utils.persistence
_decorators: set = set()
_import_hooks: list = []
_module_to_src: dict = {}
_src_to_module: dict = {}


def _source_of(module: types.ModuleType) -> str:
    src = _module_to_src.get(module)
    if src is None:
        src = inspect.getsource(module)
        _module_to_src[module] = src
        _src_to_module[src] = module
    return src


def module_from_source(src: str) -> types.ModuleType:
    """Execute pickled module source once per distinct source text (THIS RUNS THE PICKLE'S CODE)."""
    module = _src_to_module.get(src)
    if module is None:
        name = "_imported_module_" + uuid.uuid4().hex
        module = types.ModuleType(name)
        sys.modules[name] = module
        _module_to_src[module] = src
        _src_to_module[src] = module
        exec(compile(src, f"<persistent module {name}>", "exec"), module.__dict__)  # noqa: S102
    return module


def is_persistent(obj: Any) -> bool:
    """True for a persistent class or an instance of one."""
    try:
        if obj in _decorators:
            return True
    except TypeError:
        pass
    return type(obj) in _decorators


def import_hook(hook: Callable) -> Callable:
    """Register ``hook(meta) -> meta``, called on every persistent object being unpickled."""
    _import_hooks.append(hook)
    return hook


def persistent_class(orig_class: type) -> type:
    """Class decorator: instances pickle the source of the class's module along with their state,
    and remember their constructor arguments (``init_args``/``init_kwargs``)."""
    if not isinstance(orig_class, type):
        raise TypeError("persistent_class decorates classes")
    if is_persistent(orig_class):
        return orig_class
    module = sys.modules[orig_class.__module__]
    module_src = _source_of(module)

    class Persistent(orig_class):  # type: ignore[misc, valid-type]
        _orig_module_src = module_src
        _orig_class_name = orig_class.__name__

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            record = getattr(self, "_record_init_args", True)
            self._init_args = copy.deepcopy(args) if record else None
            self._init_kwargs = copy.deepcopy(kwargs) if record else None

        @property
        def init_args(self):
            return copy.deepcopy(self._init_args)

        @property
        def init_kwargs(self):
            return EasyDict(copy.deepcopy(self._init_kwargs))

        def __reduce__(self):
            fields = list(super().__reduce__())
            fields += [None] * max(3 - len(fields), 0)
            if fields[0] is not _reconstruct_persistent_obj:
                meta = dict(type="class", version=PERSISTENCE_VERSION, module_src=self._orig_module_src,
                            class_name=self._orig_class_name, state=fields[2])
                fields[0], fields[1], fields[2] = _reconstruct_persistent_obj, (meta,), None
            return tuple(fields)

    Persistent.__name__ = Persistent.__qualname__ = orig_class.__name__
    Persistent.__module__ = orig_class.__module__
    _decorators.add(Persistent)
    return Persistent


def _reconstruct_persistent_obj(meta: dict) -> Any:
    """Called by the unpickler for every persistent object: run its module source, rebuild it."""
    meta = EasyDict(meta)
    meta.state = EasyDict(meta.state or {})
    for hook in _import_hooks:
        meta = hook(meta)
    if meta.get("version") != PERSISTENCE_VERSION or meta.get("type") != "class":
        raise CompatError(f"unsupported persistent object (type {meta.get('type')!r}, "
                          f"version {meta.get('version')!r}; dode reads version {PERSISTENCE_VERSION})")
    module = module_from_source(meta.module_src)
    try:
        cls = persistent_class(module.__dict__[meta.class_name])
    except KeyError:
        raise CompatError(f"the pickled source defines no class {meta.class_name!r}") from None
    obj = cls.__new__(cls)
    setstate = getattr(obj, "__setstate__", None)
    if callable(setstate):
        setstate(meta.state)
    else:
        obj.__dict__.update(meta.state)
    return obj


# --------------------------------------------------------------------------- torch_utils.misc
def constant(value, shape=None, dtype=None, device=None, memory_format=None):
    """A tensor of ``value`` (broadcast to ``shape``); EDM's augmentation pipe builds its matrices
    with it. Not cached, unlike the original."""
    value = np.asarray(value)
    if shape is not None:
        shape = tuple(shape)
    dtype = dtype or torch.get_default_dtype()
    tensor = torch.as_tensor(value.copy(), dtype=dtype, device=device or torch.device("cpu"))
    if shape is not None:
        tensor, _ = torch.broadcast_tensors(tensor, torch.empty(shape))
    if memory_format is not None:
        tensor = tensor.contiguous(memory_format=memory_format)
    return tensor.contiguous()


def _identity_decorator(fn):
    return fn


@contextlib.contextmanager
def _suppress_tracer_warnings():
    yield


def assert_shape(tensor, ref_shape):
    if tensor.ndim != len(ref_shape):
        raise AssertionError(f"wrong number of dimensions: got {tensor.ndim}, expected {len(ref_shape)}")
    for i, (size, ref) in enumerate(zip(tensor.shape, ref_shape)):
        if ref is not None and not isinstance(ref, torch.Tensor) and size != ref:
            raise AssertionError(f"wrong size for dimension {i}: got {size}, expected {ref}")


def _misc_getattr(name: str):
    raise AttributeError(f"torch_utils.misc.{name} is not provided by dode's EDM compatibility layer "
                         f"(dode.models.arch.edm_compat); it covers what EDM's networks need for inference")


# --------------------------------------------------------------------------- module registration
_modules_cache: dict[str, types.ModuleType] = {}


def _build_modules() -> dict[str, types.ModuleType]:
    if _modules_cache:
        return _modules_cache
    util = types.ModuleType("dnnlib.util", "dode's stand-in for dnnlib.util (EasyDict only)")
    util.EasyDict = EasyDict
    dnnlib = types.ModuleType("dnnlib", "dode's stand-in for dnnlib")
    dnnlib.__path__ = []  # a package, so `import dnnlib.util` resolves through sys.modules
    dnnlib.util, dnnlib.EasyDict = util, EasyDict

    persistence = types.ModuleType("torch_utils.persistence", "dode's stand-in for torch_utils.persistence")
    for name, obj in dict(persistent_class=persistent_class, is_persistent=is_persistent, import_hook=import_hook,
                          _reconstruct_persistent_obj=_reconstruct_persistent_obj, _version=PERSISTENCE_VERSION,
                          _decorators=_decorators, _import_hooks=_import_hooks,
                          _module_to_src=_source_of, _src_to_module=module_from_source).items():
        setattr(persistence, name, obj)
    misc = types.ModuleType("torch_utils.misc", "dode's stand-in for torch_utils.misc (inference subset)")
    for name, obj in dict(constant=constant, profiled_function=_identity_decorator, assert_shape=assert_shape,
                          suppress_tracer_warnings=_suppress_tracer_warnings, __getattr__=_misc_getattr).items():
        setattr(misc, name, obj)
    torch_utils = types.ModuleType("torch_utils", "dode's stand-in for EDM's torch_utils")
    torch_utils.__path__ = []
    torch_utils.persistence, torch_utils.misc = persistence, misc
    _modules_cache.update({"dnnlib": dnnlib, "dnnlib.util": util, "torch_utils": torch_utils,
                           "torch_utils.persistence": persistence, "torch_utils.misc": misc})
    return _modules_cache


# Pickling a reconstructed object (or an EasyDict) must name EDM's modules, as EDM does.
EasyDict.__module__ = "dnnlib.util"
_reconstruct_persistent_obj.__module__ = "torch_utils.persistence"


@contextlib.contextmanager
def compat_modules() -> Iterator[dict[str, types.ModuleType]]:
    """Register dode's ``torch_utils``/``dnnlib`` stand-ins in ``sys.modules`` for the duration of the
    block, then restore whatever was there before (also any real EDM modules)."""
    with _LOCK:
        saved = {name: sys.modules.get(name, _MISSING) for name in _MODULE_NAMES}
        mods = _build_modules()
        sys.modules.update(mods)
        try:
            yield mods
        finally:
            for name, old in saved.items():
                if old is _MISSING:
                    sys.modules.pop(name, None)
                else:
                    sys.modules[name] = old


class _Unpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if module.split(".")[0] in ("torch_utils", "dnnlib"):
            mod = sys.modules.get(module)
            if mod is None or name.startswith("__") or not hasattr(mod, name):
                raise CompatError(f"the pickle needs {module}.{name}, which dode's EDM compatibility layer "
                                  f"does not provide")
        return super().find_class(module, name)


def load_persistent_pickle(file) -> Any:
    """Unpickle an EDM-style persistent pickle from a path or binary file object.

    **Runs the code inside the pickle** — give only files from a trusted source.
    """
    with compat_modules():
        if hasattr(file, "read"):
            return _Unpickler(file).load()
        with open(file, "rb") as f:
            return _Unpickler(f).load()
