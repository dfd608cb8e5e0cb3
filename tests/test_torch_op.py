"""The fused kernel as a PyTorch op (kernels/torch_op.py) and the whole-network benchmark built on it: on the CPU
through Triton's interpreter (tests/conftest.py sets TRITON_INTERPRET=1 where there is no GPU), against the module
and the decomposed export form."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("triton")

from helpers import randomize_bn  # noqa: E402
from ulsam_deploy.models import ULSAM, build_model  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return randomize_bn(build_model("mv2", 0.35, "14,17:1", groups=4, num_classes=10, input_size=64)).eval()


def test_a_network_with_fused_blocks_computes_what_the_module_and_the_export_form_compute(model):
    from ulsam_deploy.kernels.torch_op import FusedULSAM, with_fused_ulsam
    from ulsam_deploy.models.ulsam import to_export_form

    fused = with_fused_ulsam(model).to(DEVICE)
    assert sum(isinstance(m, FusedULSAM) for m in fused.modules()) == 2
    assert not any(isinstance(m, ULSAM) for m in fused.modules())
    assert sum(isinstance(m, ULSAM) for m in model.modules()) == 2  # the original is untouched
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        want = model(x)
        decomposed = to_export_form(model)(x)
        got = fused(x.to(DEVICE)).cpu()
    assert want.abs().max() > 1e-2  # outputs that mean something
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(got, decomposed, atol=1e-5, rtol=1e-4)


def test_half_precision_keeps_the_constants_in_fp32_and_the_output_close(model):
    from ulsam_deploy.kernels.reference import subspace_attention_numpy
    from ulsam_deploy.kernels.torch_op import FusedULSAM, with_fused_ulsam
    from ulsam_deploy.models.ulsam import fold_ulsam

    block = model.ulsam_after["17"]
    fused = FusedULSAM(fold_ulsam(block)).to(DEVICE).half()
    assert {fused.dw_scale.dtype, fused.pw_bias.dtype} == {torch.float32}
    x = torch.randn(2, fused.dw_scale.numel(), 5, 7)
    y = fused(x.half().to(DEVICE)).cpu()
    assert y.dtype == torch.float16
    p = fold_ulsam(block)
    ref = subspace_attention_numpy(x.half().double().numpy(), p.groups, p.dw_scale, p.dw_shift, p.pw_weight,
                                   p.pw_bias, p.relu_dw, p.relu_pw, out_dtype=np.float64)
    np.testing.assert_allclose(y.double().numpy(), ref, rtol=2e-3, atol=2e-3)
    assert with_fused_ulsam(model).half().features[13].dw_scale.dtype == torch.float32


def test_the_op_is_registered_with_a_shape_function():
    from ulsam_deploy.kernels import torch_op  # noqa: F401 - registers the op

    op = torch.ops.ulsam.subspace_attention
    c, g = 8, 2
    args = (torch.randn(1, c, 3, 3), torch.ones(c), torch.zeros(c), torch.ones(c), torch.zeros(g), g, True, True)
    torch.library.opcheck(op, args, test_utils=("test_schema", "test_faketensor"))
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        fake = op(torch.empty(4, c, 9, 5, dtype=torch.float16), *[torch.empty(c)] * 3, torch.empty(g), g, True, False)
    assert fake.shape == (4, c, 9, 5) and fake.dtype == torch.float16


@pytest.mark.slow
def test_the_network_benchmark_smoke_run_times_and_judges_every_network(tmp_path):
    """scripts/gpu_network_bench.py --smoke: the GPU benchmark's own code, small, on the CPU."""
    out = tmp_path / "net.json"
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "gpu_network_bench.py"), "--smoke", "--json",
                           str(out), "--out", str(tmp_path / "net.md")], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "TRITON_INTERPRET": "1"})
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["smoke"] and result["failures"] == 0
    ulsam_nets = {"mv2+17:1", "mv2+13,14,16,17", "mv1+8:1,9:1,11"}
    assert {(r["network"], r["form"]) for r in result["timings"]} == \
        {("mv2", "vanilla"), ("mv1", "vanilla")} | {(n, f) for n in ulsam_nets for f in ("decomposed", "fused")}
    for row in result["timings"]:
        assert row["median_ms"] > 0 and row["samples"] >= 1
        if row["form"] == "fused":
            assert row["fused_over_decomposed"] == pytest.approx(row["median_ms"] / row["decomposed_ms"])
            assert row["over_vanilla"] == pytest.approx(row["median_ms"] / row["vanilla_ms"])
    parity = {(r["network"], r["form"], r["dtype"]): r for r in result["parity"]}
    assert set(parity) == {(n, f, d) for n in ulsam_nets for f in ("decomposed", "fused") for d in ("fp32", "fp16")}
    for (net, form, dtype), row in parity.items():
        if dtype == "fp32":
            assert row["passed"] and row["cosine"] > 0.99999 and row["max_abs"] < 1e-5, row
        else:  # fp16 is judged by the fp16 gate; the fused network is no further from fp32 than the decomposed one
            assert row["cosine"] > 0.998 and not row.get("counts_as_failure"), row
            assert parity[(net, "fused", "fp16")]["max_abs"] < 2 * parity[(net, "decomposed", "fp16")]["max_abs"]
    assert result["macs"]["mv2+13,14,16,17"] < result["macs"]["mv2"] < result["macs"]["mv2+17:1"]
    table = (tmp_path / "net.md").read_text()
    assert "SMOKE RUN" in table and table.count("\n| mv") == 6  # one row per ULSAM network and dtype
