"""C++ side: build the launcher + self-test with CMake here (no GPU, no TensorRT needed) and check
it against the Python side (variant table, planner, embedded images, CPU reference), drive it
through the stub driver (prepare/launch logic, argument packing, no device work after prepare);
build the TensorRT plugin and run its host-side self-tests when TENSORRT_INCLUDE_DIR is set."""

from __future__ import annotations

import ctypes
import json
import math
import os
import shutil
import subprocess

import numpy as np
import pytest

from ulsam_deploy.backends.trt import plugin_build as PB
from ulsam_deploy.errors import BackendUnavailable, UserError
from ulsam_deploy.kernels import aot
from ulsam_deploy.kernels import plan as P
from ulsam_deploy.kernels.reference import subspace_attention_numpy


def _toolchain_missing() -> str | None:
    if shutil.which("cmake") is None:
        return "cmake not installed"
    if shutil.which("c++") is None and shutil.which("g++") is None:
        return "no C++ compiler"
    try:
        PB.find_cuda_include()
    except UserError:
        return "CUDA headers (cuda.h) not installed"
    return None


MISSING = _toolchain_missing()
needs_toolchain = pytest.mark.skipif(MISSING is not None, reason=MISSING or "")


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    if MISSING:
        pytest.skip(MISSING)
    return PB.build_plugin(tmp_path_factory.mktemp("sa_build"), use_tensorrt=False, jobs=2)


def _run(exe, *args, stdin=None):
    return subprocess.run([str(exe), *args], input=stdin, capture_output=True, text=True, timeout=120)


@pytest.mark.slow  # builds the launcher with CMake (~15 s, once per module)
@needs_toolchain
def test_build_produces_launcher_and_selftest(built):
    assert built.launcher_library.is_file()
    assert built.selftest is not None and built.plugin_library is None
    assert (built.build_dir / "image_table.cpp").is_file()
    assert built.cuda_stub is not None and built.cuda_stub_no_ctx_id is not None


@pytest.mark.slow  # builds the launcher with CMake (~15 s, once per module)
@needs_toolchain
def test_selftest_gpu_mode_skips_cleanly_or_passes(built):
    res = _run(built.selftest)
    if res.returncode == 77:
        assert res.stdout.startswith("SKIP:") and "CUDA driver" in res.stdout
    else:  # a machine with a GPU: the numeric kernel-vs-CPU check must pass
        assert res.returncode == 0, res.stdout + res.stderr
        assert "FAIL" not in res.stdout


@pytest.mark.slow  # builds the launcher with CMake (~15 s, once per module)
@needs_toolchain
def test_launch_without_driver_returns_status(built):
    res = _run(built.selftest, "--launch-no-gpu")
    assert res.returncode == 0
    status = int(res.stdout.split()[0])
    if status == 2:
        assert "libcuda" in res.stdout
    else:  # driver present: fake pointers must still not crash (context error or launch error)
        assert status in (3, 6, 8)


@pytest.mark.slow  # builds the launcher with CMake (~15 s, once per module)
@needs_toolchain
def test_variant_table_matches_python(built):
    rows = [tuple(map(int, line.split())) for line in _run(built.selftest, "--variants").stdout.splitlines()]
    assert rows == [(i, v.block_w, v.rows, v.block_c, v.out_c, v.num_warps) for i, v in enumerate(P.VARIANTS)]


@pytest.mark.slow  # builds the launcher with CMake (~15 s, once per module)
@needs_toolchain
def test_embedded_image_table_matches_manifest(built):
    man = aot.load_manifest()
    rows = [tuple(map(int, line.split())) for line in _run(built.selftest, "--kernels").stdout.splitlines()]
    want = [(k["arch"], P.DTYPE_CODES[k["dtype"]], k["variant"], k["num_warps"], k["shared_bytes"],
             k["ptx_target"], k["ptx_bytes"], k["cubin_bytes"]) for k in man["kernels"]]
    assert rows == want
    lib = ctypes.CDLL(str(built.launcher_library))
    assert lib.ulsam_sa_num_ptx_images() == len(man["ptx_files"]) < len(man["kernels"])  # PTX stored once


@pytest.mark.slow  # builds the launcher with CMake (~15 s, once per module)
@needs_toolchain
@pytest.mark.parametrize("stub", ["cuda_stub", "cuda_stub_no_ctx_id"])
def test_launcher_logic_through_the_stub_driver(built, stub):
    """Host-only: which image loads per GPU/driver, argument packing, no driver work but
    cuLaunchKernel after prepare, context re-creation (with and without cuCtxGetId)."""
    path = getattr(built, stub)
    assert path is not None and path.is_file()
    res = _run(built.selftest, "--stub", str(path))
    assert res.returncode == 0, res.stdout + res.stderr
    lines = res.stdout.splitlines()
    assert lines[-1] == "PASS: 0 failure(s)" and not any(line.startswith("FAIL") for line in lines)
    assert sum(line.startswith("PASS launch N=") for line in lines) == 5
    assert any("no driver call but cuCtxGetCurrent" in line for line in lines)
    if stub == "cuda_stub":
        assert any("unique ID differs" in line for line in lines)
    else:
        assert any("falls back to the context pointer" in line for line in lines)


def _configure(tmp_path, *extra):
    cuda = PB.find_cuda_include()
    return subprocess.run(["cmake", "-S", str(PB.plugin_source_dir()), "-B", str(tmp_path / "b"),
                           "-DULSAM_WITH_TENSORRT=OFF", f"-DULSAM_CUDA_INCLUDE_DIR={cuda}", *extra],
                          capture_output=True, text=True, timeout=120)


@needs_toolchain
def test_cmake_needs_the_image_dir(tmp_path):
    res = _configure(tmp_path)
    assert res.returncode != 0 and "ULSAM_KERNEL_IMAGE_DIR" in res.stderr


@needs_toolchain
def test_cmake_refuses_an_edited_image(tmp_path):
    images = tmp_path / "images"
    shutil.copytree(aot.IMAGE_DIR, images)
    cub = images / aot.load_manifest()["kernels"][0]["cubin"]
    data = bytearray(cub.read_bytes())
    data[-1] ^= 0xFF
    cub.write_bytes(bytes(data))
    res = _configure(tmp_path, f"-DULSAM_KERNEL_IMAGE_DIR={images}")
    assert res.returncode != 0 and "does not match its manifest SHA-256" in res.stderr


@pytest.mark.slow  # builds the launcher with CMake (~15 s, once per module)
@needs_toolchain
def test_the_build_leaves_no_temp_file(built):
    """The embedded image table is written through a temp file, removed once copied (issue 15)."""
    assert list(built.build_dir.rglob("image_table.cpp"))
    assert not list(built.build_dir.rglob("*.tmp"))


def _plan_cases():
    cases = []
    for n in (1, 2, 5, 64):
        for c, g in ((96, 4), (160, 1), (512, 1), (512, 16), (16, 16), (24, 8), (1024, 2), (6, 3)):
            for h, w in ((1, 1), (7, 7), (14, 14), (5, 33), (112, 112), (9, 1), (8, 9)):
                for dtype in P.DTYPES:
                    for sm, l2 in ((16, 4 << 20), (132, 50 << 20), (0, 0)):
                        cases.append((dtype, n, c, h, w, g, sm, l2, 0))
    cases += [("fp32", 64, 96, 14, 14, 4, 132, 50 << 20, 3 * 196 * 4 + 7),
              ("fp16", 1, 96, 14, 14, 4, 132, 0, 100)]
    return cases


@pytest.mark.slow  # builds the launcher with CMake (~15 s, once per module)
@needs_toolchain
def test_cpp_planner_matches_python(built):
    cases = _plan_cases()
    stdin = "\n".join(f"{P.DTYPE_CODES[d]} {n} {c} {h} {w} {g} {sm} {l2} {lim}"
                      for d, n, c, h, w, g, sm, l2, lim in cases) + "\n"
    out = _run(built.selftest, "--plan", stdin=stdin).stdout.splitlines()
    assert len(out) == len(cases)
    for (d, n, c, h, w, g, sm, l2, lim), line in zip(cases, out):
        try:
            pl = P.make_plan(n, c, h, w, g, d, sm_count=sm or None, l2_bytes=l2 or None,
                             workspace_limit=lim or None)
        except ValueError:
            assert line.startswith("error"), (d, n, c, h, w, g, line)
            continue
        want = [pl.variant, pl.split, pl.chunk, pl.items, pl.grid, pl.num_warps, pl.workspace_bytes,
                P.workspace_bytes(n, c, h, w, g, d)]
        assert list(map(int, line.split())) == want, (d, n, c, h, w, g, sm, l2, lim)


@pytest.mark.slow  # builds the launcher with CMake (~15 s, once per module)
@needs_toolchain
def test_shared_launcher_c_api_via_ctypes(built):
    lib = ctypes.CDLL(str(built.launcher_library))  # loads without libcuda (dlopen is lazy)
    lib.ulsam_sa_workspace_size.restype = ctypes.c_size_t
    for args in ((0, 1, 96, 14, 14, 4), (1, 64, 512, 7, 7, 16), (0, 3, 10, 4, 4, 3)):
        want = P.workspace_bytes(*args[1:], P.DTYPES[args[0]]) if args[2] % args[5] == 0 else 0
        assert lib.ulsam_sa_workspace_size(*args) == want
    lib.ulsam_sa_status_string.restype = ctypes.c_char_p
    assert lib.ulsam_sa_status_string(2) == b"CUDA driver unavailable"
    lib.ulsam_sa_prepare.restype = ctypes.c_int
    st = lib.ulsam_sa_prepare(0)
    lib.ulsam_sa_last_error.restype = ctypes.c_char_p
    if st == 2:
        assert b"libcuda" in lib.ulsam_sa_last_error()


def lcg_problem(n, c, h, w, g, seed):
    """Python twin of makeProblem() in launcher_selftest.cpp."""
    mask = (1 << 64) - 1
    state = (seed * 2654435761 + 12345) & mask

    def nxt():
        nonlocal state
        state = (state * 6364136223846793005 + 1442695040888963407) & mask
        return (state >> 40) / 8388608.0 - 1.0

    x = np.array([2.0 * nxt() for _ in range(n * c * h * w)], dtype=np.float32).reshape(n, c, h, w)
    gsz = c // g
    scale, shift, weight = [], [], []
    for _ in range(c):
        scale.append(1.2 * nxt())
        shift.append(0.3 * nxt())
        weight.append(3.0 * nxt() / math.sqrt(gsz))
    bias = [1.0 + 0.5 * nxt() for _ in range(g)]
    f = lambda v: np.array(v, dtype=np.float32)  # noqa: E731
    return x, f(scale), f(shift), f(weight), f(bias)


@needs_toolchain
@pytest.mark.parametrize("shape", [(1, 8, 5, 7, 2, 1, 1, 3), (2, 6, 4, 4, 3, 0, 0, 9),
                                   (1, 4, 1, 1, 1, 1, 0, 1), (1, 12, 9, 3, 4, 0, 1, 5)])
@pytest.mark.slow  # builds the launcher with CMake (~15 s, once per module)
def test_cpp_cpu_reference_matches_numpy_oracle(built, shape):
    """The CPU reference the GPU self-test trusts is the same math as the NumPy oracle."""
    n, c, h, w, g, rd, rp, seed = shape
    out = _run(built.selftest, "--cpu-ref", *map(str, shape)).stdout.split()
    y_cpp = np.array([float(v) for v in out]).reshape(n, c, h, w)
    x, s, t, wt, b = lcg_problem(n, c, h, w, g, seed)
    ref = subspace_attention_numpy(x, g, s, t, wt, b, bool(rd), bool(rp), out_dtype=np.float64)
    np.testing.assert_allclose(y_cpp, ref, rtol=1e-12, atol=1e-12)
    assert np.abs(ref - x).max() > 1e-3  # the attention term is not negligible


def test_missing_cmake_is_a_user_error(monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(UserError, match="cmake was not found"):
        PB.find_cmake()


def test_missing_tensorrt_is_reported(monkeypatch, tmp_path):
    with pytest.raises(UserError, match="No NvInfer.h"):
        PB.find_tensorrt(tmp_path)
    monkeypatch.setattr(PB, "find_tensorrt", lambda root=None: None)
    monkeypatch.setattr(PB, "find_cmake", lambda: "cmake")
    monkeypatch.setattr(PB, "find_cuda_include", lambda home=None: tmp_path)
    with pytest.raises(BackendUnavailable, match="TensorRT headers"):
        PB.build_plugin(tmp_path / "b")


def test_old_tensorrt_is_rejected(monkeypatch, tmp_path):
    inc = tmp_path / "include"
    inc.mkdir()
    (inc / "NvInfer.h").write_text("")
    (inc / "NvInferVersion.h").write_text("#define NV_TENSORRT_MAJOR 8\n#define NV_TENSORRT_MINOR 6\n")
    trt = PB.find_tensorrt(tmp_path)
    assert trt.version == "8.6" and trt.major == 8
    monkeypatch.setattr(PB, "find_cmake", lambda: "cmake")
    monkeypatch.setattr(PB, "find_cuda_include", lambda home=None: tmp_path)
    with pytest.raises(BackendUnavailable, match="TensorRT 10 or newer"):
        PB.build_plugin(tmp_path / "b", tensorrt_root=tmp_path)


def test_trt11_version_macros_are_parsed(tmp_path):
    (tmp_path / "NvInfer.h").write_text("")
    (tmp_path / "NvInferVersion.h").write_text(
        "#define TRT_MAJOR_ENTERPRISE 11\n#define TRT_MINOR_ENTERPRISE 1\n"
        "#define NV_TENSORRT_MAJOR TRT_MAJOR_ENTERPRISE\n")
    assert PB.find_tensorrt(tmp_path).version == "11.1"


def test_missing_cuda_headers_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="cuda.h"):
        PB.find_cuda_include(tmp_path)


TRT_INC = os.environ.get("TENSORRT_INCLUDE_DIR")


@needs_toolchain
@pytest.mark.skipif(not TRT_INC, reason="set TENSORRT_INCLUDE_DIR to TensorRT 10/11 headers to build the plugin")
def test_plugin_builds_and_passes_host_selftest(tmp_path):
    res = PB.build_plugin(tmp_path / "plugin", tensorrt_root=TRT_INC, jobs=2)
    assert res.plugin_library is not None and res.plugin_library.name == PB.PLUGIN_LIBRARY
    nm = shutil.which("nm")
    if nm:
        syms = subprocess.run([nm, "-D", "--defined-only", str(res.plugin_library)], capture_output=True,
                              text=True).stdout
        assert " getCreators" in syms and " setLoggerFinder" in syms
        assert "ulsam_sa_launch" not in syms
    out = _run(res.plugin_selftest, str(res.plugin_library))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "FAIL" not in out.stdout
    # the runtime lifecycle against the stub driver: attachToContext uploads, onShapeChange loads,
    # enqueue only launches, failures are logged sentences
    out = _run(res.plugin_selftest, str(res.plugin_library), "--stub", str(res.cuda_stub))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "FAIL" not in out.stdout and "enqueue (fp16) x3: three launches, no allocation" in out.stdout
    info = json.dumps({"tensorrt": res.tensorrt.version})
    assert res.tensorrt.major in (10, 11), info
