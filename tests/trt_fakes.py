"""Fakes made from TensorRT's real classes, so our calls are checked against TensorRT's own API.

:func:`strict` is ``unittest.mock.create_autospec(cls, instance=True, spec_set=True)`` plus what
autospec cannot see in a pybind11 class: each method's signatures (from its docstring, all
overloads) are enforced - a wrong keyword, a missing argument or an argument of the wrong
TensorRT type raises ``TypeError`` as pybind11 would - and properties check the type on set,
refuse read-only ones and refuse reads of values nobody set. A misspelled method, property or
enum member fails as ``AttributeError``.

Results come from the test (``return_value`` or :func:`on`); a method returning a TensorRT
interface returns a strict fake of it by default; any other result that was not given fails,
so no fake behaviour is invented here. Only the C++ boundary is replaced: the factories
(``trt.Builder``, ``trt.OnnxParser``, ``trt.Runtime``, ``trt.get_plugin_registry``) through
:func:`install_factories`, and the plugin registry through :class:`Registry`.
"""

from __future__ import annotations

import importlib
import inspect
import numbers
import re
import types
from unittest import mock

_LINE = re.compile(r"^\s*(?:\d+\.\s+)?(?P<name>\w+)\((?P<params>.*)\)\s*->\s*(?P<ret>.+?)\s*$")
_IMPLS = "_ulsam_impls"


def _split(text: str) -> list[str]:
    """Split a parameter list at top-level commas (types and defaults nest [], (), <> and quotes)."""
    parts, depth, quote, start = [], 0, None, 0
    for i, ch in enumerate(text):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "[(<{":
            depth += 1
        elif ch in "])>}":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(text[start:i].strip())
            start = i + 1
    if text[start:].strip():
        parts.append(text[start:].strip())
    return parts


class Param:
    def __init__(self, text: str):
        head, eq, default = text.partition(" = ")
        name, _, annotation = head.partition(":")
        self.name, self.annotation = name.strip(), annotation.strip()
        self.has_default, self.default = bool(eq), default.strip()

    def __repr__(self) -> str:
        return f"{self.name}: {self.annotation}" + (f" = {self.default}" if self.has_default else "")


def signatures(func, name: str) -> list[tuple[list[Param], str]]:
    """(parameters without self, return annotation) for each overload written in a pybind11 docstring."""
    found = []
    for line in (getattr(func, "__doc__", None) or "").splitlines():
        match = _LINE.match(line)
        if not match or match.group("name") != name:
            continue
        params = [Param(p) for p in _split(match.group("params"))]
        if params and params[0].name in ("*args", "**kwargs"):
            continue  # the "Overloaded function." header line
        if params and params[0].name == "self":
            params = params[1:]
        found.append((params, match.group("ret")))
    return found


def _trt_class(trt, annotation: str):
    base = annotation.split("[")[0].strip()
    if "." not in base:
        return None
    module, _, last = base.rpartition(".")
    if not module.split(".")[0].startswith("tensorrt"):
        return None
    return getattr(trt, last, None)


def _is_enum(cls) -> bool:
    return hasattr(cls, "__members__")


def accepts(trt, annotation: str, value) -> bool:
    """Would pybind11 convert ``value`` to a parameter annotated ``annotation``? (lenient where unsure)"""
    if value is None:
        return True  # pointers and optionals take None
    base = annotation.split("[")[0].strip().removeprefix("typing.")
    base = {"SupportsInt": "int", "SupportsIndex": "int", "SupportsFloat": "float"}.get(base, base)
    if base == "int":  # pybind11 converts anything with __index__ (its enums too)
        return isinstance(value, numbers.Integral) or hasattr(value, "__index__")
    if base == "float":
        return isinstance(value, numbers.Real)
    if base == "bool":
        return isinstance(value, (bool, numbers.Integral)) or type(value).__name__ == "bool_"
    if base == "str":
        return isinstance(value, (str, bytes))
    if base in ("buffer", "bytes"):
        try:
            memoryview(value)
        except TypeError:
            return False
        return True
    cls = _trt_class(trt, annotation)
    if cls is None or not isinstance(cls, type):
        return True
    if isinstance(value, cls):
        return True
    if cls.__name__.startswith("Dims") or cls.__name__ == "Permutation":
        return isinstance(value, (tuple, list)) and all(isinstance(v, numbers.Integral) for v in value)
    return False


def _bind(params: list[Param], args, kwargs):
    bound, names = {}, [p.name for p in params]
    if len(args) > len(params):
        return None
    for param, value in zip(params, args):  # noqa: B905 - len(args) <= len(params) checked above
        bound[param.name] = value
    for key, value in kwargs.items():
        if key not in names or key in bound:
            return None
        bound[key] = value
    if any(p.name not in bound and not p.has_default for p in params):
        return None
    return bound


def check_call(trt, owner: str, name: str, overloads, args, kwargs) -> str:
    """The return annotation of the overload this call matches; TypeError (as pybind11) when none does."""
    for params, ret in overloads:
        bound = _bind(params, args, kwargs)
        if bound is None:
            continue
        by_name = {p.name: p for p in params}
        if all(accepts(trt, by_name[k].annotation, v) for k, v in bound.items()):
            return ret
    shown = "; ".join(f"({', '.join(map(repr, params))})" for params, _ in overloads)
    got = ", ".join([type(a).__name__ for a in args] + [f"{k}={type(v).__name__}" for k, v in kwargs.items()])
    raise TypeError(f"{owner}.{name}(): incompatible function arguments ({got}); TensorRT accepts {shown}")


def on(fake, method: str, impl) -> None:
    """Behaviour for ``fake.method`` (after the signature check): ``impl(*args, **kwargs)`` gives the result."""
    getattr(type(fake), _IMPLS)[method] = impl


def strict(cls, trt=None, **values):
    """A strict fake instance of the TensorRT class ``cls``; ``values`` preset properties (read-only ones too)."""
    if trt is None:
        import tensorrt as trt
    fake = mock.create_autospec(cls, instance=True, spec_set=True)
    kind = type(fake)  # unique per mock instance
    impls: dict = {}
    store: dict = {}
    cache: dict = {}
    setattr(kind, _IMPLS, impls)
    owner = cls.__name__
    for name in dir(cls):
        if name.startswith("_"):
            continue
        attr = inspect.getattr_static(cls, name)
        if isinstance(attr, property):
            setattr(kind, name, _property(trt, owner, name, attr, store))
            continue
        if isinstance(attr, (staticmethod, classmethod)) or not callable(attr):
            continue
        overloads = signatures(attr, name)
        if not overloads:
            continue
        child = getattr(fake, name)
        child.side_effect = _method(trt, owner, name, overloads, child, impls, cache)
    for key, value in values.items():
        if key not in store and not isinstance(inspect.getattr_static(cls, key, None), property):
            raise AttributeError(f"{owner} has no property {key!r}")
        store[key] = value
    return fake


def _method(trt, owner, name, overloads, child, impls, cache):
    def call(*args, **kwargs):
        ret = check_call(trt, owner, name, overloads, args, kwargs)
        if name in impls:
            return impls[name](*args, **kwargs)
        if child._mock_return_value is not mock.DEFAULT:
            return mock.DEFAULT
        if ret == "None":
            return None
        cls = _trt_class(trt, ret)
        if isinstance(cls, type) and not _is_enum(cls) and ret.split("[")[0] == ret:
            if name not in cache:
                cache[name] = strict(cls, trt)
            return cache[name]
        raise AssertionError(f"the fake {owner}.{name}() returns {ret}: give it a result (return_value or "
                             "trt_fakes.on) in the test")

    return call


def _property(trt, owner, name, prop, store):
    setter = _accessor_signatures(prop.fset) if prop.fset else []

    def get(self):
        if name in store:
            return store[name]
        ret = (_accessor_signatures(prop.fget) or [([], "object")])[0][1] if prop.fget else "object"
        cls = _trt_class(trt, ret)
        if isinstance(cls, type) and not _is_enum(cls):
            store[name] = strict(cls, trt)
            return store[name]
        raise AssertionError(f"the fake {owner}.{name} was read but never set: set it in the test")

    def put(self, value):
        if prop.fset is None:
            raise AttributeError(f"{owner}.{name} is read-only in TensorRT")
        if setter:
            check_call(trt, owner, name, setter, (value,), {})
        store[name] = value

    return property(get, put)


def _accessor_signatures(func) -> list[tuple[list[Param], str]]:
    """pybind11 property accessors document themselves as ``(self: X, arg0: T) -> R``."""
    found = []
    for line in (getattr(func, "__doc__", None) or "").splitlines():
        match = re.match(r"^\s*\((?P<params>.*)\)\s*->\s*(?P<ret>.+?)\s*$", line)
        if match:
            params = [Param(p) for p in _split(match.group("params"))]
            found.append((params[1:], match.group("ret")))  # the first is the object itself (self / arg0)
    return found


# --------------------------------------------------------------------------- the C++ boundary


def factory(cls, instance, trt=None):
    """Stands in for constructing ``cls`` (checked against its ``__init__`` signatures); returns ``instance``."""
    if trt is None:
        import tensorrt as trt
    overloads = signatures(cls.__init__, "__init__")
    made = []

    def construct(*args, **kwargs):
        if overloads:
            check_call(trt, cls.__name__, "__init__", overloads, args, kwargs)
        made.append((args, kwargs))
        return instance

    construct.made = made
    construct.cls = cls
    return construct


def real(trt, name: str):
    """TensorRT's own class ``name``, also after :func:`install_factories` replaced it on the module."""
    attr = getattr(trt, name)
    return getattr(attr, "cls", attr)


class Registry:
    """TensorRT's plugin registry as a recorder: a strict ``IPluginRegistry`` with TensorRT's rules.

    ``libraries`` maps a library path to the creators it registers, as ``(name, version,
    namespace)``. ``load_library`` returns None when a plugin of that library is already
    registered (``IPluginRegistry::loadLibrary``, NvInferRuntimeCommon.h) or the path is
    unknown; ``register_creator`` records creators (``tensorrt.plugin`` registers that way).
    """

    def __init__(self, trt, libraries: dict | None = None):
        self.trt = trt
        self.libraries = {str(k): list(v) for k, v in (libraries or {}).items()}
        self.creators: dict[tuple[str, str, str], object] = {}
        self.loads: list[str] = []
        self.fake = strict(trt.IPluginRegistry, trt)
        on(self.fake, "load_library", self.load_library)
        on(self.fake, "get_creator", self.get_creator)
        on(self.fake, "register_creator", self.register_creator)

    def load_library(self, plugin_path):
        self.loads.append(plugin_path)
        keys = self.libraries.get(str(plugin_path))
        if keys is None or any(tuple(k) in self.creators for k in keys):
            return None
        for key in keys:
            self.creators[tuple(key)] = types.SimpleNamespace(name=key[0], plugin_version=key[1],
                                                              plugin_namespace=key[2], library=plugin_path)
        return types.SimpleNamespace(handle=plugin_path)

    def get_creator(self, type, version, plugin_namespace=""):  # noqa: A002 - TensorRT's keyword
        return self.creators.get((type, version, plugin_namespace))

    def register_creator(self, creator, plugin_namespace=""):
        key = (creator.name, creator.plugin_version, plugin_namespace)
        if key in self.creators:
            return False
        self.creators[key] = creator
        return True


def install_factories(monkeypatch, trt, *, builder=None, parser=None, runtime=None, registry=None) -> dict:
    """Replace TensorRT's factories (the C++ boundary) with ones returning the given strict fakes."""
    made = {}
    for attr, cls, instance in (("Builder", real(trt, "Builder"), builder), ("OnnxParser", real(trt, "OnnxParser"), parser),
                                ("Runtime", real(trt, "Runtime"), runtime)):
        if instance is not None:
            made[attr] = factory(cls, instance, trt)
            monkeypatch.setattr(trt, attr, made[attr])
    if registry is not None:
        monkeypatch.setattr(trt, "get_plugin_registry", lambda: registry)
    return made


def fresh_tensorrt_plugin(trt, monkeypatch):
    """(generator for a fixture) ``tensorrt.plugin`` without our plugin's definition, registering into a
    recorder (``.recorder``).

    ``tensorrt.plugin`` keeps definitions for the life of the process and has no public way to drop
    one; tests that watch a registration start from a clean state (and leave one).
    """
    from ulsam_deploy.kernels import qdp_plugin as qdp

    module = importlib.import_module("tensorrt.plugin")
    lib = importlib.import_module("tensorrt.plugin._lib")

    def forget():
        lib.QDP_REGISTRY.pop(qdp.QDP_PLUGIN_ID, None)
        lib.QDP_CREATORS.pop(qdp.QDP_PLUGIN_ID, None)
        if qdp.QDP_NAMESPACE in vars(module.op):
            delattr(module.op, qdp.QDP_NAMESPACE)
        qdp._registered.clear()

    forget()
    recorder = Registry(trt)
    monkeypatch.setattr(trt, "get_plugin_registry", lambda: recorder.fake)
    module.recorder = recorder
    yield module
    forget()
