"""What a new user trips over (issue 24): the field's conventions (trtexec's units, the unstable rule stated
truthfully), one naming rule for artifacts, bundled names where checkpoints go, tidy files and honest sidecars."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import onnx
import pytest
from onnx import TensorProto, helper

from ulsam_deploy.declared import Flag, check_flags

from helpers import clean_error, tiny_onnx
from ulsam_deploy.cli import app
from ulsam_deploy.steps.convert import ConvertOptions, artifact_tag, default_output

ROOT = Path(__file__).resolve().parents[1]


def test_one_naming_rule_and_no_collisions():
    source = Path("m.onnx")
    names = {(p, t, f): default_output(source, ConvertOptions(precision=p, target=t, fuse=f)).name
             for p in ("fp16", "int8") for t in ("tensorrt", "ort") for f in (False, True)}
    assert names[("fp16", "tensorrt", False)] == "m.fp16.onnx" and names[("fp16", "tensorrt", True)] == "m.fp16.fused.onnx"
    assert names[("int8", "tensorrt", False)] == "m.int8-tensorrt.onnx"
    assert names[("int8", "ort", True)] == "m.int8-ort.fused.onnx"
    assert len({v for (p, _, _), v in names.items() if p == "int8"}) == 4  # every int8 variant has its own name
    assert default_output(Path("m.fused.onnx"), ConvertOptions(precision="fp16")).name == "m.fp16.fused.onnx"
    assert artifact_tag("fp32", fused=True) == "fused" and artifact_tag("fp32") == ""


def test_warmup_is_milliseconds_and_unstable_rows_are_in_the_json(cli_runner, tmp_path, monkeypatch):
    import ulsam_deploy.bench.latency as latency

    monkeypatch.setattr(latency, "UNSTABLE_CV", -1.0)  # every row unstable
    model = tiny_onnx(tmp_path / "t.onnx")
    out = tmp_path / "r.json"
    result = cli_runner.invoke(app, ["bench", str(model), "--backends", "ort", "--warmup", "20", "--duration", "0",
                                     "--iterations", "2", "--json", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert report["settings"]["timing"]["warmup_s"] == pytest.approx(0.02)
    assert any("host latency varies by more than 2.5 %" in w for w in report["warnings"])
    assert "as trtexec" not in result.output


def test_a_bundled_name_stands_for_its_checkpoint(cli_runner, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = cli_runner.invoke(app, ["inspect", "fashion-mnist", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["config"]["arch"] == "mv2"


def test_written_files_carry_no_tool_leftovers():
    from ulsam_deploy.onnx_graph import tidy

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT16, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT16, [1, 4])
    nodes = [helper.make_node("Cast", ["x"], ["a"], to=TensorProto.FLOAT),  # widen
             helper.make_node("Relu", ["a"], ["r"]),
             helper.make_node("Cast", ["a"], ["b"], to=TensorProto.FLOAT16),  # undoes the widening: exact
             helper.make_node("Cast", ["a"], ["b2"], to=TensorProto.FLOAT16),  # the same cast again
             helper.make_node("Cast", ["r"], ["c"], to=TensorProto.FLOAT16),
             helper.make_node("Add", ["b", "b2"], ["s"]), helper.make_node("Add", ["s", "c"], ["y"])]
    model = helper.make_model(helper.make_graph(nodes, "g", [x], [y]), opset_imports=[
        helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft.nchwc", 1),
        helper.make_opsetid("org.pytorch.aten", 1)])
    for key in ("onnxsim.removed_nodes", "onnx.infer", "ulsam_deploy.int8_target"):
        model.metadata_props.add(key=key, value="x")
    removed = tidy(model)
    assert [p.key for p in model.metadata_props] == ["ulsam_deploy.int8_target"]
    assert [o.domain for o in model.opset_import] == [""] and removed["opset_imports"] == ["com.microsoft.nchwc",
                                                                                           "org.pytorch.aten"]
    casts = [n for n in model.graph.node if n.op_type == "Cast"]
    assert len(casts) == 2 and removed["casts"] == 2  # the widening and r's narrowing (which rounds) stay
    onnx.checker.check_model(model, full_check=True)


def test_a_sidecar_with_the_wrong_number_of_class_names_is_refused(cli_runner, tmp_path):
    model = tiny_onnx(tmp_path / "t.onnx")
    side = Path(f"{model}.json")
    data = json.loads(side.read_text())
    data["model"]["class_names"] = ["a", "b", "c"]
    side.write_text(json.dumps(data))
    clean_error(cli_runner.invoke(app, ["bench", str(model), "--backends", "ort"]), 2,
                "class_names has 3 names for the model's 10 classes")


@pytest.mark.slow  # fresh Python processes
def test_the_fused_op_loads_without_importing_torch():
    probe = ("import sys; from ulsam_deploy.backends.onnxrt.custom_ops import register_custom_ops\n"
             "import onnxruntime as ort; register_custom_ops(ort.SessionOptions())\n"
             "print('torch' in sys.modules); import torch; print(bool(torch.__version__))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True,
                         env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert out.stdout.split() == ["False", "True"], out.stderr  # torch stays importable afterwards


@pytest.mark.parametrize("width", [80, 130, 200])
def test_the_bench_table_fits_the_terminal(tmp_path, width):
    from rich.console import Console

    from ulsam_deploy.bench.options import BenchOptions
    from ulsam_deploy.bench.run import run_bench
    from ulsam_deploy.bench.latency import TimingConfig
    from ulsam_deploy.cli.bench import bench_tables

    model = tiny_onnx(tmp_path / "a-rather-long-model-name.fp16.fused.onnx")
    report = run_bench([model], BenchOptions(backends=("ort",), timing=TimingConfig(warmup_s=0, min_iters=2,
                                                                                   min_seconds=0)))
    console = Console(width=width, record=True, file=open("/dev/null", "w"))
    for table in bench_tables(report, width=width):
        console.print(table)
    text = console.export_text()
    assert max(len(line) for line in text.splitlines()) <= width
    assert "…" not in text and "ort:cpu" in text and "reference" in text


def test_declared_flags_give_one_sentence_per_broken_rule():
    """Options declare their flag, range and choices on the field; one checker says what is wrong and with what."""
    from ulsam_deploy.bench.options import BenchOptions
    from ulsam_deploy.errors import UserError

    @dataclass
    class Options:
        size: Annotated[int | None, Flag("--size", ge=8, le=4096)] = None
        sizes: Annotated[tuple[int, ...], Flag("--sizes", ge=1)] = (1,)
        mode: Annotated[str, Flag("--mode", choices=("a", "b"))] = "a"
        scale: Annotated[float, Flag("--scale", ge=0.5)] = 1.0

        def __post_init__(self):
            check_flags(self)

    Options(size=8, sizes=(1, 2), mode="b", scale=0.5)  # the edges are allowed
    for kwargs, sentence in (({"size": 4097}, "--size must be from 8 to 4096, not 4097."),
                             ({"sizes": (3, 0)}, "--sizes must be at least 1, not 0."),
                             ({"mode": "c"}, "--mode must be one of a, b, not 'c'."),
                             ({"scale": float("nan")}, "--scale must be at least 0.5, not nan."),
                             ({"size": True}, "--size must be from 8 to 4096, not True.")):
        with pytest.raises(UserError) as err:
            Options(**kwargs)
        assert str(err.value) == sentence
    with pytest.raises(UserError, match=r"^--batch-sizes must be from 1 to 4096, not 0\.$"):
        BenchOptions(batches=(1, 0))
