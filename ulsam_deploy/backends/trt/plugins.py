"""Making the fused SubspaceAttention op known to TensorRT: the C++ plugin library or the Python plugin.

Routes (``build-trt --plugin``):

- ``lib``: our IPluginV3 library (built by ``ulsam-deploy build-plugin``, see
  :mod:`ulsam_deploy.backends.trt.plugin_build`), loaded with ``IPluginRegistry.load_library(path)`` (10.x
  and 11.x; the library exports ``getCreators``/``setLoggerFinder``) by :func:`ensure_plugin_library`:
  looked up first, loaded once, checked after. The engine needs the same library at run time
  (``trtexec --dynamicPlugins=PATH`` or ``load_library`` before deserializing); embedding it with
  ``--setPluginsToSerialize`` works for version-compatible engines only, which build-trt does not build.
- ``python``: ``ulsam_deploy.kernels.qdp_plugin.register_qdp_plugin()`` registers
  ``ulsam::SubspaceAttentionAOT`` with ``tensorrt.plugin`` (QDP; ``aot_impl`` since TensorRT 10.9),
  and the pass :func:`ulsam_deploy.passes.qdp.to_qdp_model` rewrites each fused node into that plugin's signature (constants as
  initializer inputs, an extra workspace output); engines embed the AOT kernel and run without
  Python. The network gets ``PREFER_AOT_PYTHON_PLUGINS``.
- ``auto``: the library when one is found, else the Python plugin.

Both are optional: a missing piece is one sentence on how to get it.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from pathlib import Path

from ulsam_deploy.artifacts import check_input_file
from ulsam_deploy.errors import BackendUnavailable, UserError
from ulsam_deploy.op_spec import OP_TYPE, PLUGIN_NAMESPACE, PLUGIN_VERSION
from ulsam_deploy.backends.trt.runtime import parse_version

BUILD_PLUGIN = "build it with 'ulsam-deploy build-plugin' and pass the path it prints"

PLUGIN_LIBRARY_ENV = "ULSAM_PLUGIN_LIBRARY"
PYTHON_PLUGIN_MODULE = "ulsam_deploy.kernels.qdp_plugin"
QDP_AOT_MIN = (10, 9)


def plugin_library_candidates() -> list[Path]:
    """Where a built library is looked for: $ULSAM_PLUGIN_LIBRARY, then build-plugin's default build folder."""
    from ulsam_deploy.backends.trt.plugin_build import DEFAULT_BUILD_DIR, PLUGIN_LIBRARY

    candidates = [Path(os.environ[PLUGIN_LIBRARY_ENV])] if os.environ.get(PLUGIN_LIBRARY_ENV) else []
    return candidates + [Path.cwd() / DEFAULT_BUILD_DIR / PLUGIN_LIBRARY]


def find_plugin_library(explicit: str | os.PathLike | None = None) -> Path | None:
    if explicit is not None:
        return check_input_file(explicit, "plugin library", BUILD_PLUGIN)
    return next((p for p in plugin_library_candidates() if p.is_file()), None)


def python_plugin_available() -> bool:
    try:
        return importlib.util.find_spec(PYTHON_PLUGIN_MODULE) is not None
    except (ImportError, ValueError):
        return False


@dataclass
class PluginRoute:
    route: str  # "lib" or "python"
    library: Path | None = None
    module: str | None = None


def resolve_route(route: str, trt_version: str, explicit_lib=None) -> PluginRoute:
    """Decide lib/python for ``--plugin ROUTE`` (no TensorRT call; files and imports only)."""
    version = parse_version(trt_version)
    if route in ("lib", "auto"):
        library = find_plugin_library(explicit_lib)
        if library is not None:
            return PluginRoute("lib", library)
        if route == "lib":
            raise UserError(f"No SubspaceAttention plugin library found (looked in: "
                            f"{', '.join(str(p) for p in plugin_library_candidates())}); build it with 'ulsam-deploy "
                            f"build-plugin', then pass --plugin-lib PATH or set {PLUGIN_LIBRARY_ENV}.")
    if version < QDP_AOT_MIN:
        raise BackendUnavailable(f"The Python plugin route needs TensorRT 10.9 or newer (tensorrt.plugin with aot_impl), "
                                 f"this is {trt_version}; build the C++ plugin with 'ulsam-deploy build-plugin' and "
                                 "pass --plugin lib.")
    if not python_plugin_available():
        raise BackendUnavailable(f"The Python plugin ({PYTHON_PLUGIN_MODULE}) is not in this install; use the C++ "
                                 "plugin: 'ulsam-deploy build-plugin', then --plugin lib.")
    return PluginRoute("python", module=PYTHON_PLUGIN_MODULE)


def library_built_against(library: str | os.PathLike) -> str | None:
    """The TensorRT version whose headers built ``library`` (``build-plugin``'s record beside it), or None."""
    from ulsam_deploy.backends.trt.plugin_build import read_build_record

    record = read_build_record(library) or {}
    return record.get("tensorrt") or None


def _built_words(library) -> str:
    built = library_built_against(library)
    return f"TensorRT {built} headers" if built else "an unrecorded TensorRT version (no build record beside it)"


def ensure_plugin_library(registry, library: str | os.PathLike, trt_version: str):
    """Make ``SubspaceAttention``/1/ulsam known to ``registry`` from ``library``; returns the load handle or None.

    The creator is looked up first and the library loaded only when it is absent, because
    ``IPluginRegistry::loadLibrary`` refuses (returns null) a library any of whose plugins is
    already registered - a second build in one process would otherwise fail. After loading, the
    creator must be there: a library that loads but registers nothing is refused. There is no
    fallback to a plain ``dlopen``, which would register nothing and fail later, vaguely.
    """
    path = check_input_file(library, "plugin library", BUILD_PLUGIN)
    if registry is None:
        raise BackendUnavailable(f"TensorRT {trt_version} has no plugin registry here (its libnvinfer is not a "
                                 f"working TensorRT library), so '{path}' cannot be loaded; reinstall TensorRT.")
    if registry.get_creator(OP_TYPE, PLUGIN_VERSION, PLUGIN_NAMESPACE) is not None:
        return None
    handle = registry.load_library(str(path.resolve()))
    if handle is None:
        raise UserError(f"TensorRT {trt_version} could not load the plugin library '{path}' (built against "
                        f"{_built_words(path)}; a library for another TensorRT major version, or one without "
                        "getCreators, is refused); rebuild it on this machine with 'ulsam-deploy build-plugin'.")
    if registry.get_creator(OP_TYPE, PLUGIN_VERSION, PLUGIN_NAMESPACE) is None:
        raise UserError(f"The plugin library '{path}' loaded into TensorRT {trt_version} but registered no "
                        f"'{OP_TYPE}' version {PLUGIN_VERSION} in namespace '{PLUGIN_NAMESPACE}' (it was built against "
                        f"{_built_words(path)}); rebuild it on this machine with 'ulsam-deploy build-plugin'.")
    return handle


def activate(trt, registry, route: PluginRoute) -> dict:
    """Load the library into ``registry`` or register the Python plugin; returns what the sidecar records."""
    from ulsam_deploy.backends.trt.runtime import version_of

    info: dict = {"route": route.route, "op": OP_TYPE, "plugin_version": PLUGIN_VERSION,
                  "plugin_namespace": PLUGIN_NAMESPACE}
    if route.route == "lib":
        from ulsam_deploy.artifacts import sha256_file

        ensure_plugin_library(registry, route.library, version_of(trt))
        info.update(library=str(Path(route.library).resolve()), library_sha256=sha256_file(route.library),
                    library_built_against=library_built_against(route.library))
        return info
    try:
        module = importlib.import_module(route.module)
    except ImportError as exc:
        raise BackendUnavailable(f"The Python plugin module {route.module} does not import ({exc}); reinstall "
                                 "ulsam-deploy or use --plugin lib.") from exc
    register = getattr(module, "register_qdp_plugin", None)
    if not callable(register):
        raise BackendUnavailable(f"{route.module} has no register_qdp_plugin(); reinstall ulsam-deploy.")
    plugin_id = register()
    # tensorrt.plugin keeps its own registry; the parser finds the op by name + plugin_namespace
    info.update(python_module=route.module, plugin_id=plugin_id, op=getattr(module, "QDP_NAME", OP_TYPE),
                library=None, library_sha256=None)
    return info
