"""Finding TensorRT's Python package (an optional dependency) and saying how to get it when absent."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from types import ModuleType

from ulsam_deploy.errors import BackendUnavailable
from ulsam_deploy.backends.trt.cuda import is_jetson

INSTALL_X86 = "pip install tensorrt (x86_64 / SBSA; the wheel brings its own TensorRT libraries)"
INSTALL_JETSON = ("sudo apt-get install python3-libnvinfer (JetPack's TensorRT bindings), then recreate the venv with "
                  "'python3 -m venv --system-site-packages .venv' so it sees them")


class TensorRTUnavailable(BackendUnavailable):
    """TensorRT's Python package cannot be imported here."""


def install_hint(jetson: bool | None = None) -> str:
    return INSTALL_JETSON if (is_jetson() if jetson is None else jetson) else INSTALL_X86


def sees_system_site_packages(prefix: str | None = None, base_prefix: str | None = None) -> bool:
    """True outside a venv, or in one made with ``--system-site-packages`` (its pyvenv.cfg says so)."""
    prefix = sys.prefix if prefix is None else prefix
    base_prefix = sys.base_prefix if base_prefix is None else base_prefix
    cfg = Path(prefix) / "pyvenv.cfg"
    if prefix == base_prefix or not cfg.is_file():
        return True
    for line in cfg.read_text(errors="replace").splitlines():
        key, _, value = line.partition("=")
        if key.strip().lower() == "include-system-site-packages":
            return value.strip().lower() == "true"
    return False


def system_tensorrt_dirs(root: str | os.PathLike = "/") -> list[Path]:
    """``dist-packages`` folders holding JetPack's ``python3-libnvinfer`` bindings (``.../tensorrt/__init__.py``).

    This Python's own version first (``/usr/lib/python3.10/dist-packages`` on JetPack 6), then Debian's
    version-less folder, then any other ``python3.*`` (reported, since its ``tensorrt.so`` will not load here).
    """
    lib = Path(root) / "usr" / "lib"
    own = lib / f"python{sys.version_info.major}.{sys.version_info.minor}" / "dist-packages"
    ordered = [own, lib / "python3" / "dist-packages"]
    ordered += [p for p in sorted(lib.glob("python3*/dist-packages")) if p not in ordered]
    return [p for p in ordered if (p / "tensorrt" / "__init__.py").is_file()]


def _import():
    import tensorrt as trt  # noqa: PLC0415 - optional dependency

    return trt


def import_tensorrt(system_root: str | os.PathLike = "/", system_site: bool | None = None) -> ModuleType:
    """``import tensorrt`` or raise :class:`TensorRTUnavailable` with one sentence on how to get it.

    When it is not importable but JetPack's bindings exist under ``system_root`` (``/usr/lib/python3*/
    dist-packages/tensorrt``) and this venv sees system site-packages (``system_site``, read from
    ``pyvenv.cfg`` by default), that folder is added to ``sys.path``: a venv whose Python does not
    add Debian's ``dist-packages`` itself (pyenv, uv) then still finds them.
    """
    try:
        trt = _import()
    except ImportError as exc:
        found = system_tensorrt_dirs(system_root)
        if not found:
            raise TensorRTUnavailable(f"TensorRT's Python package is not installed; install it: {install_hint()}.") \
                from exc
        here = f"python{sys.version_info.major}.{sys.version_info.minor}"
        usable = [p for p in found if p.parent.name in (here, "python3")]
        if not usable:
            raise TensorRTUnavailable(f"JetPack's TensorRT bindings in {found[0]} are for {found[0].parent.name} and "
                                      f"this is {here}; make the venv with that Python: '{found[0].parent.name} -m venv "
                                      "--system-site-packages .venv'.") from exc
        if not (sees_system_site_packages() if system_site is None else system_site):
            raise TensorRTUnavailable(f"JetPack's TensorRT bindings are in {usable[0]} but this venv does not see "
                                      "system site-packages; recreate it with 'python3 -m venv --system-site-packages "
                                      ".venv'.") from exc
        if str(usable[0]) not in sys.path:
            sys.path.append(str(usable[0]))
        try:
            trt = _import()
        except Exception as again:  # noqa: BLE001 - a broken system install raises anything
            first = (str(again).strip().splitlines() or [type(again).__name__])[0][:200]
            raise TensorRTUnavailable(f"JetPack's TensorRT bindings in {usable[0]} do not load ({first}); reinstall "
                                      f"them: {INSTALL_JETSON}.") from again
    except Exception as exc:  # noqa: BLE001 - a broken install (missing libnvinfer, stub package) raises anything
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise TensorRTUnavailable(f"TensorRT's Python package is installed but does not load ({first}); "
                                  f"reinstall it: {install_hint()}.") from exc
    if not hasattr(trt, "Builder"):
        raise TensorRTUnavailable(f"The installed 'tensorrt' package has no Builder (a stub or a lean/dispatch-only "
                                  f"runtime); install the full package: {install_hint()}.")
    return trt


def tensorrt_origin(trt: ModuleType) -> dict:
    """Where this ``tensorrt`` comes from: its module path, the distribution that installed it, and in words."""
    import importlib.metadata

    module = Path(getattr(trt, "__file__", "") or "")
    package_dir = module.parent
    distribution = None
    try:
        names = importlib.metadata.packages_distributions().get(package_dir.name, [])
    except Exception:  # noqa: BLE001 - a broken metadata entry elsewhere must not hide TensorRT
        names = []
    for name in names:
        try:
            dist = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            continue
        if Path(str(dist.locate_file(""))).resolve() == package_dir.parent.resolve():
            distribution = {"name": dist.metadata["Name"], "version": dist.version}
            break
    up = package_dir.parents
    system = (len(up) > 3 and up[0].name == "dist-packages" and up[1].name.startswith("python3")
              and up[2].name == "lib" and up[3].name == "usr")  # /usr/lib/python3*/dist-packages: apt, not pip
    in_prefix = str(package_dir.resolve()).startswith(str(Path(sys.prefix).resolve()) + os.sep)
    if system:
        where = ("the system's python3-libnvinfer package (JetPack / NVIDIA's apt repository), seen through "
                 "system site-packages")
    elif in_prefix:
        where = f"a pip wheel in this environment ({sys.prefix})"
    else:
        where = f"outside this environment ({package_dir.parent})"
    return {"module": str(module), "distribution": distribution, "where": where, "system": system}


def tensorrt_available() -> bool:
    try:
        import_tensorrt()
    except TensorRTUnavailable:
        return False
    return True


def parse_version(text: str) -> tuple[int, ...]:
    """'10.3.0.30' -> (10, 3, 0, 30); suffixes such as 'post1' or 'rc1' are ignored."""
    return tuple(int(part) for part in re.findall(r"\d+", str(text).split("+")[0])[:4])


def version_of(trt: ModuleType) -> str:
    return str(getattr(trt, "__version__", "0"))
