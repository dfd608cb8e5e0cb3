"""Build the TensorRT plugin library (logic behind ``ulsam-deploy build-plugin``).

Runs CMake on ``plugins/subspace_attention`` (configure + build in a build folder) and returns
the path of ``libulsam_subspace_attention_plugin.so`` - load it with
``trtexec --dynamicPlugins=<path>`` or ``trt.get_plugin_registry().load_library(<path>)``.

What the build needs: cmake >= 3.19, a C++17 compiler, the CUDA headers (``cuda.h``; nothing
from CUDA is linked and nvcc is *not* needed - the kernel images shipped in
``ulsam_deploy/kernels/images`` (cubins + PTX) are embedded into the library, their folder passed
as ``-DULSAM_KERNEL_IMAGE_DIR``) and the TensorRT headers (``NvInfer.h``, TensorRT >= 10; libnvinfer is not
linked either). Every missing piece is reported as one :class:`UserError` sentence.

TensorRT headers are looked up in: ``tensorrt_root`` (argument), ``$TensorRT_ROOT``,
``$TENSORRT_ROOT``, ``$TENSORRT_INCLUDE_DIR``, then /usr/include/aarch64-linux-gnu (Jetson),
/usr/include/x86_64-linux-gnu (Debian packages), /usr/local/TensorRT, /opt/tensorrt, /usr/include.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ulsam_deploy.errors import BackendUnavailable, UserError

PLUGIN_LIBRARY = "libulsam_subspace_attention_plugin.so"
DEFAULT_BUILD_DIR = Path("build") / "subspace_attention_plugin"  # below the working directory
LAUNCHER_LIBRARY = "libulsam_sa_launcher.so"
PLUGIN_NAME = "SubspaceAttention"
PLUGIN_VERSION = "1"
PLUGIN_NAMESPACE = "ulsam"

_PKG_DIR = Path(__file__).resolve().parents[2]  # the ulsam_deploy package folder
TRT_INCLUDE_CANDIDATES = (
    "/usr/include/aarch64-linux-gnu",
    "/usr/include/x86_64-linux-gnu",
    "/usr/local/TensorRT/include",
    "/opt/tensorrt/include",
    "/usr/include",
)
CUDA_HOME_CANDIDATES = ("/usr/local/cuda",)


@dataclass
class TensorRTHeaders:
    include_dir: Path
    version: str  # "10.3" / "11.1"; "" when NvInferVersion.h could not be parsed

    @property
    def major(self) -> int | None:
        return int(self.version.split(".")[0]) if self.version else None


@dataclass
class PluginBuildResult:
    build_dir: Path
    plugin_library: Path | None  # None when built without TensorRT (launcher only)
    launcher_library: Path
    selftest: Path | None
    plugin_selftest: Path | None
    tensorrt: TensorRTHeaders | None
    cuda_include: Path
    log: list[str] = field(default_factory=list)
    cuda_stub: Path | None = None  # stand-in libcuda for the host-only self-tests (never installed)
    cuda_stub_no_ctx_id: Path | None = None  # the same without cuCtxGetId (pre-CUDA-12.0 drivers)

    @property
    def library(self) -> Path | None:
        """The file to hand to TensorRT (``--dynamicPlugins`` / ``load_library``)."""
        return self.plugin_library


def plugin_source_dir() -> Path:
    """Folder with CMakeLists.txt of the plugin: the repository's ``plugins/subspace_attention``
    or a copy bundled into the package (``ulsam_deploy/bundled/plugin_src``)."""
    for cand in (_PKG_DIR.parent / "plugins" / "subspace_attention",
                 _PKG_DIR / "bundled" / "plugin_src" / "subspace_attention"):
        if (cand / "CMakeLists.txt").is_file():
            return cand
    raise UserError("The plugin sources (plugins/subspace_attention) are not in this installation (a wheel or a "
                    "non-editable install); install ulsam-deploy from a checkout with 'pip install -e "
                    "./ulsam-deploy' and run build-plugin there.")


def image_dir() -> Path:
    """The shipped kernel images (``ulsam_deploy/kernels/images``: manifest, PTX, cubins), passed to
    CMake as ``ULSAM_KERNEL_IMAGE_DIR``."""
    from ulsam_deploy.kernels.aot import IMAGE_DIR

    if not (IMAGE_DIR / "manifest.json").is_file():
        raise UserError(f"The kernel images ({IMAGE_DIR}/manifest.json) are missing; generate them with "
                        "`python -m ulsam_deploy.kernels.aot` (no GPU needed).")
    return IMAGE_DIR


def find_cmake() -> str:
    exe = shutil.which("cmake")
    if not exe:
        raise UserError("cmake was not found on PATH; install it (`apt install cmake` or "
                        "`pip install cmake`, version 3.19 or newer) and retry.")
    out = subprocess.run([exe, "--version"], capture_output=True, text=True).stdout
    m = re.search(r"version (\d+)\.(\d+)", out)
    if m and (int(m.group(1)), int(m.group(2))) < (3, 19):
        raise UserError(f"cmake {m.group(1)}.{m.group(2)} is too old; the plugin build needs "
                        "3.19 or newer (`pip install cmake`).")
    return exe


def find_cuda_include(cuda_home: str | os.PathLike | None = None) -> Path:
    """Folder holding cuda.h (headers only are needed)."""
    if cuda_home:  # explicit: only there
        roots = [cuda_home]
    else:
        roots = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), *CUDA_HOME_CANDIDATES]
        nvcc = shutil.which("nvcc")
        if nvcc:
            roots.append(str(Path(os.path.realpath(nvcc)).parent.parent))
    for root in roots:
        if not root:
            continue
        for inc in (Path(root) / "include", Path(root) / "targets" / "aarch64-linux" / "include",
                    Path(root) / "targets" / "x86_64-linux" / "include"):
            if (inc / "cuda.h").is_file():
                return inc
    if cuda_home:
        raise UserError(f"No cuda.h under {cuda_home}; point --cuda-home at the CUDA toolkit "
                        "(the folder that contains include/cuda.h).")
    raise UserError("The CUDA toolkit headers (cuda.h) were not found; install the CUDA toolkit "
                    "(JetPack includes it) or set CUDA_HOME.")


def _parse_trt_version(include_dir: Path) -> str:
    f = include_dir / "NvInferVersion.h"
    if not f.is_file():
        return ""
    text = f.read_text(errors="replace")
    vals = {}
    for key in ("NV_TENSORRT_MAJOR", "NV_TENSORRT_MINOR", "TRT_MAJOR_ENTERPRISE",
                "TRT_MINOR_ENTERPRISE"):
        m = re.search(rf"#define\s+{key}\s+(\d+)", text)
        if m:
            vals[key] = m.group(1)
    major = vals.get("NV_TENSORRT_MAJOR") or vals.get("TRT_MAJOR_ENTERPRISE")
    minor = vals.get("NV_TENSORRT_MINOR") or vals.get("TRT_MINOR_ENTERPRISE")
    return f"{major}.{minor}" if major and minor else ""


def find_tensorrt(tensorrt_root: str | os.PathLike | None = None) -> TensorRTHeaders | None:
    """TensorRT headers, or None. An explicit ``tensorrt_root`` that lacks them is an error."""
    if tensorrt_root:
        root = Path(tensorrt_root)
        for inc in (root / "include", root):
            if (inc / "NvInfer.h").is_file():
                return TensorRTHeaders(inc, _parse_trt_version(inc))
        raise UserError(f"No NvInfer.h in {root} or {root / 'include'}; pass the TensorRT "
                        "installation folder (the one containing include/NvInfer.h).")
    cands = []
    for var in ("TensorRT_ROOT", "TENSORRT_ROOT"):
        if os.environ.get(var):
            cands += [Path(os.environ[var]) / "include", Path(os.environ[var])]
    if os.environ.get("TENSORRT_INCLUDE_DIR"):
        cands.append(Path(os.environ["TENSORRT_INCLUDE_DIR"]))
    cands += [Path(p) for p in TRT_INCLUDE_CANDIDATES]
    for inc in cands:
        if (inc / "NvInfer.h").is_file():
            return TensorRTHeaders(inc, _parse_trt_version(inc))
    return None


def _run(cmd: list[str], log: list[str], echo: Callable[[str], None] | None, timeout: float) -> str:
    if echo:
        echo("$ " + " ".join(cmd))
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        raise UserError(f"`{' '.join(cmd[:3])} ...` did not finish within {timeout:.0f} s.") from exc
    out = (res.stdout or "") + (res.stderr or "")
    log.append(out)
    if res.returncode != 0:
        tail = "\n".join(out.strip().splitlines()[-15:])
        if "CMAKE_CXX_COMPILER" in out and "could be found" in out:
            raise UserError("No C++ compiler was found; install one (`apt install g++` / "
                            "build-essential) and retry.")
        raise UserError(f"`{' '.join(cmd[:2])}` failed (exit {res.returncode}); last output:\n{tail}")
    return out


def build_plugin(build_dir: str | os.PathLike | None = None, *,
                 tensorrt_root: str | os.PathLike | None = None,
                 cuda_home: str | os.PathLike | None = None,
                 require_tensorrt: bool = True, use_tensorrt: bool = True,
                 jobs: int | None = None, clean: bool = False,
                 build_type: str = "Release", selftests: bool = True,
                 log: Callable[[str], None] | None = None, timeout: float = 1200.0) -> PluginBuildResult:
    """Configure + build the plugin; return the library paths.

    ``require_tensorrt=False`` builds only the launcher and its self-test when no TensorRT
    headers are found (what CI does); ``use_tensorrt=False`` never builds the plugin. Raises :class:`UserError` (tools/headers missing, build
    failure) or :class:`BackendUnavailable` (no TensorRT headers while required).
    """
    cmake = find_cmake()
    src = plugin_source_dir()
    images = image_dir()
    cuda_inc = find_cuda_include(cuda_home)
    trt = find_tensorrt(tensorrt_root) if use_tensorrt else None
    if trt is None and require_tensorrt and use_tensorrt:
        raise BackendUnavailable("TensorRT headers (NvInfer.h) were not found; install TensorRT "
                                 "(JetPack ships it; x86: the TensorRT tar/deb from NVIDIA) or pass "
                                 "--tensorrt-root DIR.")
    if trt is not None and trt.major is not None and trt.major < 10:
        raise BackendUnavailable(f"TensorRT {trt.version} found in {trt.include_dir}; the plugin "
                                 "uses IPluginV3 and needs TensorRT 10 or newer.")
    bdir = prepare_build_dir(Path(build_dir) if build_dir else Path.cwd() / DEFAULT_BUILD_DIR, clean=clean)
    cuda_root = cuda_inc.parent if cuda_inc.name == "include" else cuda_inc
    args = [cmake, "-S", str(src), "-B", str(bdir), f"-DCMAKE_BUILD_TYPE={build_type}",
            f"-DULSAM_KERNEL_IMAGE_DIR={images}", f"-DCUDAToolkit_ROOT={cuda_root}",
            f"-DULSAM_CUDA_INCLUDE_DIR={cuda_inc}",
            f"-DULSAM_BUILD_SELFTEST={'ON' if selftests else 'OFF'}"]
    if trt is not None:
        args += ["-DULSAM_WITH_TENSORRT=ON", f"-DTensorRT_INCLUDE_DIR={trt.include_dir}"]
    else:
        args += ["-DULSAM_WITH_TENSORRT=OFF"]
    logs: list[str] = []
    _run(args, logs, log, timeout)
    _run([cmake, "--build", str(bdir), "-j", str(jobs or max(1, os.cpu_count() or 1))], logs, log,
         timeout)
    plugin = bdir / PLUGIN_LIBRARY
    launcher = bdir / LAUNCHER_LIBRARY
    if trt is not None and not plugin.is_file():
        raise UserError(f"The build finished but {plugin} is missing; rerun with --clean.")
    if trt is not None:
        write_build_record(plugin, trt)
    selftest = bdir / "ulsam_sa_selftest"
    psel = bdir / "ulsam_sa_plugin_selftest"
    stub, stub_noid = bdir / "libulsam_cuda_stub.so", bdir / "libulsam_cuda_stub_noctxid.so"
    return PluginBuildResult(bdir, plugin if plugin.is_file() else None, launcher,
                             selftest if selftest.is_file() else None,
                             psel if psel.is_file() else None, trt, cuda_inc, logs,
                             stub if stub.is_file() else None, stub_noid if stub_noid.is_file() else None)


BUILD_MARKER = ".ulsam-deploy-plugin-build"  # written into every build folder this tool configures


def is_plugin_build_dir(folder: Path) -> bool:
    """A folder this tool configured: it holds our marker, or a CMake cache of our plugin project."""
    if (folder / BUILD_MARKER).is_file():
        return True
    cache = folder / "CMakeCache.txt"
    try:
        text = cache.read_text(errors="replace") if cache.is_file() and cache.stat().st_size < (8 << 20) else ""
    except OSError:
        return False
    return re.search(r"^CMAKE_PROJECT_NAME:\w+=ulsam_subspace_attention$", text, re.M) is not None


def prepare_build_dir(bdir: Path, *, clean: bool) -> Path:
    """Check the build folder before any work and return it, created and marked as ours.

    A link, a file or a special file is refused. A folder that holds files is used (or, with ``clean``,
    deleted) only when it is recognisably a plugin build folder of ours; a user's own folder is never
    written into or removed.
    """
    from ulsam_deploy.artifacts import nearest_existing, path_kind

    kind = path_kind(bdir, "build folder", "give another --build-dir")
    if kind != "missing":
        if kind == "link":
            raise UserError(f"The build folder '{bdir}' is a symbolic link; give the real folder's path or a new "
                            "one with --build-dir.")
        if kind != "dir":
            raise UserError(f"The build folder '{bdir}' is not a folder (a file or special file); give a new "
                            "folder with --build-dir.")
        if any(bdir.iterdir()) and not is_plugin_build_dir(bdir):
            raise UserError(f"The build folder '{bdir}' holds files that are not a plugin build of ulsam-deploy; "
                            "it is left alone (nothing is written or deleted there): give an empty or new folder "
                            "with --build-dir.")
        if clean:
            shutil.rmtree(bdir)
    probe = nearest_existing(bdir.parent)
    if not probe.is_dir():
        raise UserError(f"Cannot create the build folder '{bdir}': '{probe}' is a file, not a folder; give another "
                        "--build-dir.")
    try:
        bdir.mkdir(parents=True, exist_ok=True)
        (bdir / BUILD_MARKER).write_text("a CMake build folder of ulsam-deploy build-plugin; "
                                         "build-plugin --clean may delete this folder\n")
    except OSError as exc:
        raise UserError(f"Cannot create the build folder '{bdir}' ({exc.strerror}); give a writable --build-dir.") from None
    return bdir


def build_record_path(library: str | os.PathLike) -> Path:
    return Path(str(library) + ".json")


def write_build_record(library: Path, headers: TensorRTHeaders) -> Path:
    """``<library>.json``: which TensorRT headers built the library (read when TensorRT refuses it)."""
    import json

    path = build_record_path(library)
    path.write_text(json.dumps({"library": library.name, "tensorrt": headers.version,
                                "tensorrt_include_dir": str(headers.include_dir)}, indent=2) + "\n")
    return path


def read_build_record(library: str | os.PathLike) -> dict | None:
    """The build record beside ``library``, else the TensorRT headers named in the CMake cache beside it."""
    import json

    path = build_record_path(library)
    try:
        data = json.loads(path.read_text())
        if isinstance(data, dict):
            return data
    except (OSError, ValueError):
        pass
    cache = Path(library).parent / "CMakeCache.txt"
    try:
        text = cache.read_text(errors="replace")
    except OSError:
        return None
    m = re.search(r"^TensorRT_INCLUDE_DIR:\w+=(.+)$", text, re.M)
    if not m:
        return None
    include = Path(m.group(1).strip())
    return {"library": Path(library).name, "tensorrt": _parse_trt_version(include) or None,
            "tensorrt_include_dir": str(include)}


def run_selftest(result: PluginBuildResult, *, bench: bool = False, images: str = "auto",
                 timeout: float = 600.0) -> subprocess.CompletedProcess:
    """Run the launcher self-test (GPU numeric check; exit 77 = skipped, no GPU). ``images``:
    ``auto`` (cubin for this GPU, else PTX), ``cubin`` or ``ptx`` (forces the JIT path)."""
    if result.selftest is None:
        raise UserError("The self-test was not built; rebuild with selftests enabled.")
    if images not in ("auto", "cubin", "ptx"):
        raise UserError(f"images must be auto, cubin or ptx, not {images!r}")
    cmd = [str(result.selftest), f"--images={images}"] + (["--bench"] if bench else [])
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
