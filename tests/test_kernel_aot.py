"""Shipped kernel images (ulsam_deploy/kernels/images): manifest, PTX ISA and ptxas, cubin ELF
headers, deduplication, image choice, byte-for-byte regeneration."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ulsam_deploy.kernels import aot
from ulsam_deploy.kernels import plan as P

MANIFEST = aot.load_manifest()
PTXAS = aot.find_ptxas()
HAVE_TRITON = importlib.util.find_spec("triton") is not None
KERNELS = MANIFEST["kernels"]
PTX_FILES = MANIFEST["ptx_files"]


def _cuobjdump() -> str | None:
    if HAVE_TRITON:
        try:
            from triton import knobs

            return knobs.nvidia.cuobjdump.path
        except Exception:  # noqa: BLE001 - any Triton without the bundled tools
            pass
    return shutil.which("cuobjdump")


def test_manifest_covers_every_arch_dtype_variant():
    assert MANIFEST["format"] == aot.MANIFEST_FORMAT
    assert MANIFEST["archs"] == list(aot.DEFAULT_ARCHS)
    assert 87 in MANIFEST["archs"]
    seen = [(k["arch"], k["dtype"], k["variant"]) for k in KERNELS]
    want = {(a, d, v) for a in aot.DEFAULT_ARCHS for d in P.DTYPES for v in range(len(P.VARIANTS))}
    assert set(seen) == want and len(seen) == len(want)
    assert all(k["cubin"] for k in KERNELS), "every shipped architecture has a cubin"
    assert [dict(v) for v in MANIFEST["variants"]] == [
        dict(id=i, name=v.name, num_warps=v.num_warps, **v.constexprs) for i, v in enumerate(P.VARIANTS)]


def test_manifest_param_order_includes_hidden_scratch_pointers():
    from ulsam_deploy.kernels.triton_kernel import KERNEL_NAME, PARAM_ORDER

    names = [p["name"] for p in MANIFEST["params"]]
    assert names == [n for n, _ in PARAM_ORDER] + list(aot.HIDDEN_PARAMS)
    assert [p.get("hidden", False) for p in MANIFEST["params"]][-2:] == [True, True]
    assert MANIFEST["entry"] == KERNEL_NAME


def test_images_need_no_newer_driver_than_tensorrt_10():
    """TensorRT 10.x cu12 runs on CUDA 12.0 (R525) drivers: PTX ISA <= 8.0, cubins in ELF ABI 7."""
    assert MANIFEST["ptx_version"] == "8.0" and MANIFEST["ptx_min_driver"] == "12.0"
    assert MANIFEST["cubin_elf_abi"] == 7 and MANIFEST["cubin_min_driver"] == "12.0"
    assert MANIFEST["cubin_ptxas"].startswith("12.")


def test_folder_holds_exactly_the_manifest_files():
    """No stray or duplicated images: every file on disk is listed, every listed file exists."""
    on_disk = {str(p.relative_to(aot.IMAGE_DIR)) for p in aot.IMAGE_DIR.rglob("*") if p.is_file()}
    listed = {"manifest.json"} | {f["file"] for f in PTX_FILES} | {k["cubin"] for k in KERNELS}
    assert on_disk == listed


def test_identical_ptx_is_stored_once():
    bodies = {}
    for f in PTX_FILES:
        body = aot.ptx_body((aot.IMAGE_DIR / f["file"]).read_text())
        key = (f["dtype"], f["variant"], body)
        assert key not in bodies, f"{f['file']} repeats {bodies.get(key)}"
        bodies[key] = f["file"]
        assert f["target"] == min(f["archs"]), "a shared PTX carries its lowest architecture's target"
    assert len(PTX_FILES) < len(KERNELS)
    for k in KERNELS:
        f = next(f for f in PTX_FILES if f["file"] == k["file"])
        assert k["arch"] in f["archs"] and k["ptx_target"] == f["target"] <= k["arch"]
        assert (f["dtype"], f["variant"]) == (k["dtype"], k["variant"])


@pytest.mark.parametrize("f", PTX_FILES, ids=lambda f: f["file"])
def test_shipped_ptx_headers_and_metadata(f):
    text = (aot.IMAGE_DIR / f["file"]).read_text()
    assert hashlib.sha256(text.encode()).hexdigest() == f["sha256"], "PTX edited after generation"
    version, target = aot.ptx_header(text)
    assert tuple(int(x) for x in version.split(".")) <= (8, 0), "CUDA 12.0 drivers JIT PTX ISA <= 8.0"
    assert version == MANIFEST["ptx_version"] and target == f"sm_{f['target']}"
    entry, params = aot.parse_ptx_entry(text)
    assert entry == MANIFEST["entry"]
    assert params == aot.expected_ptx_params()
    var = P.VARIANTS[f["variant"]]
    assert f".reqntid {32 * var.num_warps}" in text
    for k in KERNELS:
        if k["file"] == f["file"]:
            assert k["ptx_params"] == params and k["sha256"] == f["sha256"]
            assert k["num_warps"] == var.num_warps and k["threads"] == 32 * var.num_warps
            assert k["global_scratch_bytes"] == 0 and k["profile_scratch_bytes"] == 0
            assert k["constexprs"] == var.constexprs
            assert 0 <= k["shared_bytes"] <= 48 * 1024


@pytest.mark.slow
@pytest.mark.skipif(PTXAS is None, reason="ptxas (CUDA toolkit) not found")
@pytest.mark.parametrize("f", PTX_FILES, ids=lambda f: f["file"])
def test_ptxas_assembles_shipped_ptx_for_every_arch_it_serves(f):
    """The toolkit's ptxas accepts each PTX for its own target and for every architecture that
    shares it (proves the sm_90a -> sm_90 rewrite and the shared bodies are valid)."""
    for arch in sorted({f["target"], *f["archs"]}):
        info = aot.ptxas_check(aot.IMAGE_DIR / f["file"], arch, PTXAS)
        assert "Used" in info and "registers" in info, info


@pytest.mark.skipif(PTXAS is None, reason="ptxas (CUDA toolkit) not found")
def test_ptxas_rejects_broken_ptx(tmp_path):
    f = PTX_FILES[0]
    bad = tmp_path / "bad.ptx"
    bad.write_text((aot.IMAGE_DIR / f["file"]).read_text().replace("ld.global", "ld.glowbal", 1))
    with pytest.raises(RuntimeError):
        aot.ptxas_check(bad, f["target"], PTXAS)


@pytest.mark.parametrize("k", KERNELS, ids=lambda k: k["cubin"])
def test_shipped_cubin_is_an_elf_for_its_arch(k):
    data = (aot.IMAGE_DIR / k["cubin"]).read_bytes()
    assert hashlib.sha256(data).hexdigest() == k["cubin_sha256"] and len(data) == k["cubin_bytes"]
    info = aot.cubin_elf_info(data)
    assert info["machine"] == aot.EM_CUDA
    assert info["abi"] == aot.CUBIN_ELF_ABI, "ELF ABI 8 (CUDA 13 ptxas) does not load on CUDA 12 drivers"
    assert info["sm"] == k["arch"]
    assert f".text.{MANIFEST['entry']}".encode() in data
    # ptxas picks its own register cap; a few small-tile kernels spill a handful of bytes on
    # some targets (outside the hot loop). Catch real register blow-ups.
    assert k["registers"] is not None and k["registers"] <= 255
    assert k["spill_bytes"] is not None and k["spill_bytes"] <= 32, k


@pytest.mark.skipif(_cuobjdump() is None, reason="cuobjdump not found")
def test_cuobjdump_lists_one_elf_per_cubin_for_its_arch():
    exe = _cuobjdump()
    for k in KERNELS[:: len(P.VARIANTS)]:  # one per (arch, dtype): cuobjdump is slowish
        out = subprocess.run([exe, "--list-elf", str(aot.IMAGE_DIR / k["cubin"])], capture_output=True,
                             text=True)
        assert out.returncode == 0, out.stderr
        assert out.stdout.count("ELF file") == 1 and f".sm_{k['arch']}." in out.stdout, out.stdout


def test_cubin_elf_info_reads_both_abi_versions():
    hdr = bytearray(64)
    hdr[:4] = b"\x7fELF"
    hdr[4], hdr[5] = 2, 1
    hdr[18:20] = aot.EM_CUDA.to_bytes(2, "little")
    hdr[8] = 7
    hdr[48:52] = (0x4B054B).to_bytes(4, "little")  # what CUDA 12.9 ptxas writes for sm_75
    assert aot.cubin_elf_info(bytes(hdr))["sm"] == 75
    hdr[8] = 8
    hdr[48:52] = (0x6005A04).to_bytes(4, "little")  # what CUDA 13.0 ptxas writes for sm_90
    assert aot.cubin_elf_info(bytes(hdr))["sm"] == 90
    with pytest.raises(ValueError):
        aot.cubin_elf_info(b"\x7fELF" + bytes(10))


@pytest.mark.skipif(PTXAS is None or not aot.ptxas_version(PTXAS).startswith("13."),
                    reason="needs a CUDA 13 toolkit ptxas")
def test_cuda13_ptxas_writes_abi_8_and_is_refused_for_cubins(tmp_path):
    """Why the cubins come from a CUDA 12 ptxas: CUDA 13's writes ELF ABI 8."""
    f = PTX_FILES[0]
    data, _ = aot.assemble_cubin(aot.IMAGE_DIR / f["file"], 86, aot.Ptxas(PTXAS, aot.ptxas_version(PTXAS)))
    info = aot.cubin_elf_info(data)
    assert info["abi"] == 8 and info["sm"] == 86
    with pytest.raises(RuntimeError, match="CUDA 12.x ptxas"):
        aot.find_cubin_ptxas(PTXAS)


def test_find_kernel_and_find_cubin():
    assert aot.find_kernel(MANIFEST, 87, "fp32", 0)["arch"] == 87
    assert aot.find_kernel(MANIFEST, 88, "fp16", 1)["arch"] == 87
    assert aot.find_kernel(MANIFEST, 120, "fp32", 2)["arch"] == 90
    assert aot.find_kernel(MANIFEST, 72, "fp32", 0) is None
    assert aot.find_cubin(MANIFEST, 86, "fp16", 3)["arch"] == 86
    assert aot.find_cubin(MANIFEST, 88, "fp32", 0)["arch"] == 87  # same major, lower minor
    assert aot.find_cubin(MANIFEST, 100, "fp32", 0) is None  # Blackwell: PTX JIT
    assert aot.find_cubin(MANIFEST, 120, "fp32", 0) is None


@pytest.mark.parametrize("cc,driver,kind,words", [
    (87, "12.6", "cubin", "native"), (86, "12.0", "cubin", "no JIT"), (89, "13.0", "cubin", "native"),
    (100, "12.8", "ptx", "sm_75 PTX"), (120, "12.0", "ptx", "JIT"), (90, "11.8", "none", "R525"),
    (72, "12.6", "none", "older than"), (None, None, "unknown", "no GPU")])
def test_image_plan(cc, driver, kind, words):
    got, sentence = aot.image_plan(MANIFEST, cc, driver)
    assert got == kind and words in sentence, sentence


@pytest.mark.slow
@pytest.mark.skipif(not HAVE_TRITON, reason="triton not installed")
def test_regenerating_matches_shipped_byte_for_byte(tmp_path):
    """A clean process regenerates sm_75 + sm_87 (the shared PTX needs its lowest target) and
    writes the same files and manifest records as shipped."""
    code = ("import json,sys; from ulsam_deploy.kernels import aot; "
            f"m=aot.generate({str(tmp_path)!r}, archs=(75, 87)); print(json.dumps(m))")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         cwd=Path(aot.__file__).parents[2], timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    regen = json.loads(res.stdout.strip().splitlines()[-1])
    shipped = [k for k in KERNELS if k["arch"] in (75, 87)]
    for key in ("entry", "params", "variants", "ptx_version", "cubin_elf_abi"):
        assert regen[key] == MANIFEST[key], key
    if (regen["triton_version"], regen["cubin_ptxas"]) != (MANIFEST["triton_version"], MANIFEST["cubin_ptxas"]):
        pytest.skip(f"byte compare needs triton {MANIFEST['triton_version']} + ptxas {MANIFEST['cubin_ptxas']}")
    assert regen["kernels"] == shipped
    for rel in sorted({k["file"] for k in shipped} | {k["cubin"] for k in shipped}):
        assert (tmp_path / rel).read_bytes() == (aot.IMAGE_DIR / rel).read_bytes(), (
            f"{rel} is stale: run python -m ulsam_deploy.kernels.aot")


def test_generate_dedupes_and_writes_manifest(tmp_path, monkeypatch):
    """generate() with a stubbed compiler and assembler: equal bodies share the lowest target's
    file, a different body gets its own, and a PTX whose parameters differ is refused."""
    pytest.importorskip("triton")  # build_manifest records the Triton version
    good = aot.expected_ptx_params()

    def fake_compile(dtype, variant, arch, *, ptx_version):
        body = "// sm80 body\n" if arch == 80 else "// common body\n"
        return aot.CompiledKernel(arch, dtype, variant, f".version 8.0\n.target sm_{arch}\n{body}", "e",
                                  P.VARIANTS[variant].num_warps, 0, 0, 0, list(good))

    def fake_assemble(ptx_path, arch, ptxas):
        elf = bytearray(64)
        elf[:4], elf[4], elf[5], elf[8] = b"\x7fELF", 2, 1, 7
        elf[18:20] = aot.EM_CUDA.to_bytes(2, "little")
        elf[48:52] = arch.to_bytes(4, "little")
        return bytes(elf) + Path(ptx_path).read_bytes(), {"registers": 40, "spill_bytes": 0}

    monkeypatch.setattr(aot, "compile_kernel", fake_compile)
    monkeypatch.setattr(aot, "assemble_cubin", fake_assemble)
    monkeypatch.setattr(aot, "find_cubin_ptxas", lambda explicit=None: aot.Ptxas("ptxas", "12.9"))
    man = aot.generate(tmp_path, archs=(87, 75, 80), dtypes=("fp32",), variants=[0])
    assert sorted(p.name for p in (tmp_path / "ptx").iterdir()) == ["fp32_w8_r8_c16.sm_75.ptx",
                                                                   "fp32_w8_r8_c16.sm_80.ptx"]
    assert sorted(p.name for p in (tmp_path / "cubin").iterdir()) == [
        f"fp32_w8_r8_c16.sm_{a}.cubin" for a in (75, 80, 87)]
    by_arch = {k["arch"]: k for k in man["kernels"]}
    assert by_arch[87]["file"] == by_arch[75]["file"] == "ptx/fp32_w8_r8_c16.sm_75.ptx"
    assert by_arch[87]["ptx_target"] == 75 and by_arch[80]["ptx_target"] == 80
    assert aot.load_manifest(tmp_path) == man

    def bad_compile(dtype, variant, arch, *, ptx_version):
        k = fake_compile(dtype, variant, arch, ptx_version=ptx_version)
        k.ptx_params = good[:-1]
        return k

    monkeypatch.setattr(aot, "compile_kernel", bad_compile)
    with pytest.raises(RuntimeError):
        aot.generate(tmp_path / "x", archs=(87,), dtypes=("fp32",), variants=[0])


def test_cubin_ptxas_must_be_cuda_12(tmp_path):
    fake = tmp_path / "ptxas"
    fake.write_text("#!/bin/sh\necho 'Cuda compilation tools, release 13.0, V13.0.88'\n")
    fake.chmod(0o755)
    with pytest.raises(RuntimeError, match="CUDA 13 ptxas writes cubins"):
        aot.find_cubin_ptxas(str(fake))
    fake.write_text("#!/bin/sh\necho 'Cuda compilation tools, release 12.4, V12.4.99'\n")
    assert aot.find_cubin_ptxas(str(fake)).version == "12.4"


def test_image_dir_is_package_data():
    assert aot.IMAGE_DIR == Path(aot.__file__).parent / "images"
    tomllib = pytest.importorskip("tomllib")

    globs = tomllib.loads((Path(aot.__file__).parents[2] / "pyproject.toml").read_text())[
        "tool"]["setuptools"]["package-data"]["ulsam_deploy"]
    pkg = Path(aot.__file__).parents[1]
    matched = {str(p.relative_to(aot.IMAGE_DIR)) for g in globs for p in pkg.glob(g)
               if p.is_relative_to(aot.IMAGE_DIR)}
    on_disk = {str(p.relative_to(aot.IMAGE_DIR)) for p in aot.IMAGE_DIR.rglob("*") if p.is_file()}
    assert matched == on_disk, "pyproject package-data globs miss kernel images"
