"""Shipped AOT PTX (ulsam_deploy/kernels/ptx): manifest, headers, ptxas, regeneration."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from ulsam_deploy.kernels import aot
from ulsam_deploy.kernels import plan as P

MANIFEST = aot.load_manifest()
PTXAS = aot.find_ptxas()


def _ptx(k) -> str:
    return (aot.PTX_DIR / k["file"]).read_text()


def test_manifest_covers_every_arch_dtype_variant():
    assert MANIFEST["archs"] == list(aot.DEFAULT_ARCHS)
    assert 87 in MANIFEST["archs"]
    seen = {(k["arch"], k["dtype"], k["variant"]) for k in MANIFEST["kernels"]}
    want = {(a, d, v) for a in aot.DEFAULT_ARCHS for d in P.DTYPES for v in range(len(P.VARIANTS))}
    assert seen == want
    assert [dict(v) for v in MANIFEST["variants"]] == [
        dict(id=i, name=v.name, num_warps=v.num_warps, **v.constexprs) for i, v in enumerate(P.VARIANTS)]


def test_manifest_param_order_includes_hidden_scratch_pointers():
    from ulsam_deploy.kernels.triton_kernel import KERNEL_NAME, PARAM_ORDER

    names = [p["name"] for p in MANIFEST["params"]]
    assert names == [n for n, _ in PARAM_ORDER] + list(aot.HIDDEN_PARAMS)
    assert [p.get("hidden", False) for p in MANIFEST["params"]][-2:] == [True, True]
    assert MANIFEST["entry"] == KERNEL_NAME
    assert MANIFEST["ptx_version"] == "8.5"


@pytest.mark.parametrize("k", MANIFEST["kernels"], ids=lambda k: k["file"])
def test_shipped_ptx_headers_and_metadata(k):
    text = _ptx(k)
    assert hashlib.sha256(text.encode()).hexdigest() == k["sha256"], "PTX edited after generation"
    version, target = aot.ptx_header(text)
    major, minor = (int(x) for x in version.split("."))
    assert (major, minor) <= (8, 5), "JetPack 6 drivers JIT PTX ISA <= 8.5"
    assert target == f"sm_{k['arch']}"
    entry, params = aot.parse_ptx_entry(text)
    assert entry == MANIFEST["entry"] == k["entry"]
    assert params == aot.expected_ptx_params() == k["ptx_params"]
    assert len(params) == len(MANIFEST["params"])
    var = P.VARIANTS[k["variant"]]
    assert k["num_warps"] == var.num_warps and k["threads"] == 32 * var.num_warps
    assert f".reqntid {k['threads']}" in text
    assert k["global_scratch_bytes"] == 0 and k["profile_scratch_bytes"] == 0
    assert k["constexprs"] == var.constexprs
    assert 0 <= k["shared_bytes"] <= 48 * 1024


@pytest.mark.skipif(PTXAS is None, reason="ptxas (CUDA toolkit) not found")
@pytest.mark.parametrize("arch", aot.DEFAULT_ARCHS)
def test_ptxas_assembles_shipped_ptx(arch):
    """The toolkit's ptxas accepts every shipped module for its own target (proves the PTX,
    including the sm_90a -> sm_90 target rewrite, is valid)."""
    for k in MANIFEST["kernels"]:
        if k["arch"] == arch:
            info = aot.ptxas_check(aot.PTX_DIR / k["file"], arch, PTXAS)
            assert "Used" in info and "registers" in info
            spill = int(re.search(r"(\d+) bytes spill stores", info).group(1))
            # ptxas picks its own register cap; a few small-tile kernels spill a handful of
            # bytes on some targets (outside the hot loop). Catch real register blow-ups.
            assert spill <= 32, f"{k['file']} spills {spill} bytes:\n{info}"


@pytest.mark.skipif(PTXAS is None, reason="ptxas (CUDA toolkit) not found")
def test_ptxas_rejects_broken_ptx(tmp_path):
    k = MANIFEST["kernels"][0]
    bad = tmp_path / "bad.ptx"
    bad.write_text(_ptx(k).replace("ld.global", "ld.glowbal", 1))
    with pytest.raises(RuntimeError):
        aot.ptxas_check(bad, k["arch"], PTXAS)


def test_find_kernel_falls_back_to_nearest_lower_arch():
    assert aot.find_kernel(MANIFEST, 87, "fp32", 0)["arch"] == 87
    assert aot.find_kernel(MANIFEST, 88, "fp16", 1)["arch"] == 87
    assert aot.find_kernel(MANIFEST, 120, "fp32", 2)["arch"] == 90
    assert aot.find_kernel(MANIFEST, 100, "fp16", 3)["arch"] == 90
    assert aot.find_kernel(MANIFEST, 72, "fp32", 0) is None


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton not installed")
@pytest.mark.parametrize("dtype,variant", [("fp32", 2), ("fp16", 1)])
def test_regenerating_sm87_matches_shipped(dtype, variant):
    """GPU-free compile of one target reproduces the shipped metadata (and the PTX byte for
    byte when the Triton version is the one that generated it)."""
    # in a fresh interpreter: this test session may have switched Triton to interpreter mode
    code = ("import json,sys; from ulsam_deploy.kernels import aot; "
            f"k=aot.compile_kernel({dtype!r},{variant},87); r=k.record(); r['header']=aot.ptx_header(k.ptx); "
            "import triton; r['triton']=triton.__version__; print(json.dumps(r))")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         cwd=Path(aot.__file__).parents[2], timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    rec = json.loads(res.stdout.strip().splitlines()[-1])
    shipped = aot.find_kernel(MANIFEST, 87, dtype, variant)
    for key in ("arch", "entry", "num_warps", "threads", "shared_bytes", "ptx_params",
                "constexprs", "global_scratch_bytes", "profile_scratch_bytes", "file"):
        assert rec[key] == shipped[key], key
    assert tuple(rec["header"]) == ("8.5", "sm_87")
    if rec["triton"] != MANIFEST["triton_version"]:
        pytest.skip(f"PTX text compare needs triton {MANIFEST['triton_version']}")
    assert rec["sha256"] == shipped["sha256"], "shipped PTX is stale: run python -m ulsam_deploy.kernels.aot"


def test_generate_writes_manifest_and_files(tmp_path, monkeypatch):
    """generate() with a stubbed compiler: file layout + manifest, and a PTX whose parameter
    list differs from the launcher's assumption is refused."""
    good = aot.expected_ptx_params()

    def fake_compile(dtype, variant, arch, *, ptx_version):
        return aot.CompiledKernel(arch, dtype, variant, f".version 8.5\n.target sm_{arch}\n", "e",
                                  P.VARIANTS[variant].num_warps, 0, 0, 0, list(good))

    monkeypatch.setattr(aot, "compile_kernel", fake_compile)
    man = aot.generate(tmp_path, archs=(87,), dtypes=("fp32",), variants=[0, 3])
    assert sorted(p.name for p in (tmp_path / "sm_87").iterdir()) == [
        "fp32_w16_r16_c1.ptx", "fp32_w8_r8_c16.ptx"]
    assert aot.load_manifest(tmp_path)["kernels"] == man["kernels"]

    def bad_compile(dtype, variant, arch, *, ptx_version):
        k = fake_compile(dtype, variant, arch, ptx_version=ptx_version)
        k.ptx_params = good[:-1]
        return k

    monkeypatch.setattr(aot, "compile_kernel", bad_compile)
    with pytest.raises(RuntimeError):
        aot.generate(tmp_path / "x", archs=(87,), dtypes=("fp32",), variants=[0])


def test_ptx_dir_is_package_data():
    assert aot.PTX_DIR == Path(aot.__file__).parent / "ptx"
