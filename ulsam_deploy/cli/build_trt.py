"""``ulsam-deploy build-trt``."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from ulsam_deploy.cli.command import command
from ulsam_deploy.cli.ui import BuildProgress, console



@command("build-trt")
def build_trt(
    model: Path = typer.Argument(..., metavar="MODEL", help="ONNX to build (fp32, or fp16/int8 from 'ulsam-deploy convert')."),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="Engine file to write (default: MODEL.engine); MODEL.engine.json goes beside it."),
    batch_profile: Optional[str] = typer.Option(None, "--batch-profile", help="Batch optimization profile MIN:OPT:MAX (e.g. 1:8:32) or N [default: the batch range in the ONNX sidecar; required without one]."),
    size_profile: Optional[str] = typer.Option(None, "--size-profile", help="Height/width optimization profile MIN:OPT:MAX, each S or HxW (e.g. 256:320:640) [default: the ONNX sidecar's ranges, for a dynamic H/W export]."),
    workspace: Optional[int] = typer.Option(None, "--workspace", min=1, max=1 << 24, help="Workspace memory pool limit in MiB [default: TensorRT's]."),
    opt_level: Optional[int] = typer.Option(None, "--opt-level", min=0, max=5, help="Builder optimization level 0-5 [TensorRT's default: 3]."),
    timing_cache: Optional[Path] = typer.Option(None, "--timing-cache", help="Timing cache file: loaded if present, saved after the build."),
    dla_core: Optional[int] = typer.Option(None, "--dla-core", min=0, max=15, help="Run on this DLA core (Jetson Orin, TensorRT 10)."),
    gpu_fallback: bool = typer.Option(False, "--gpu-fallback", help="With --dla-core: layers DLA cannot run go to the GPU."),
    plugin: Optional[str] = typer.Option(None, "--plugin", help="Fuse ULSAM and use our plugin: lib (C++ library), python (TensorRT >= 10.9) or auto."),
    plugin_lib: Optional[Path] = typer.Option(None, "--plugin-lib", help="Path of libulsam_subspace_attention_plugin.so (implies --plugin lib)."),
    weakly_typed: bool = typer.Option(False, "--weakly-typed", help="TensorRT 10 only: let the builder pick precisions (with --fp16/--int8)."),
    fp16: bool = typer.Option(False, "--fp16", help="With --weakly-typed: allow fp16 kernels (BuilderFlag.FP16)."),
    int8: bool = typer.Option(False, "--int8", help="With --weakly-typed: allow int8 kernels for a Q/DQ ONNX (BuilderFlag.INT8)."),
    tf32: bool = typer.Option(False, "--tf32", help="Let fp32 layers use TF32 math (TensorRT's default; off here so fp32 means fp32)."),
    verbose: bool = typer.Option(False, "--verbose", help="Show all of TensorRT's log."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing engine."),
) -> None:
    """Build a TensorRT engine (strongly typed by default) and its sidecar; raw engine file, trtexec-readable."""
    from ulsam_deploy.backends.trt.settings import BuildOptions
    from ulsam_deploy.steps.build_trt import build_engine

    options = BuildOptions(batch=batch_profile, sizes=size_profile, workspace_mib=workspace, opt_level=opt_level,
                           timing_cache=timing_cache, dla_core=dla_core, gpu_fallback=gpu_fallback, plugin=plugin, plugin_lib=plugin_lib,
                           weakly_typed=weakly_typed, fp16=fp16, int8=int8, tf32=tf32, force=force, verbose=verbose)
    with BuildProgress() as events:
        result = build_engine(model, output, options, events=events)
    data = result.sidecar
    table = Table(title=f"TensorRT engine {result.path}", title_justify="left", show_header=False)
    table.add_column("what")
    table.add_column("value")
    gpu = data.gpu
    table.add_row("TensorRT", f"{data.tensorrt.version if data.tensorrt else '?'} "
                              f"(CUDA driver {(data.cuda or {}).get('driver_version')})")
    table.add_row("GPU", f"{gpu.name if gpu else '?'} ({gpu.sm if gpu else '?'})")
    details = data.precision_details or {}
    table.add_row("precision", str(details.get("mode", data.precision))
                  + (", strongly typed" if details.get("strongly_typed") else ""))
    table.add_row("profile", "; ".join(f"{p['input']} {p['min']} / {p['opt']} / {p['max']}"
                                       + (f" (from the {', '.join(sorted(set(p['source'].values())))})"
                                          if p.get("source") else "") for p in data.profiles or []))
    plugin = data.plugin
    if plugin is not None:
        table.add_row("plugin", f"{plugin.route}: {plugin.library or plugin.python_module} "
                                f"({plugin.fused_blocks} block(s))")
    table.add_row("size / time", f"{(data.engine_bytes or 0) / 2**20:.1f} MiB, built in "
                                 f"{result.seconds.get('build', 0.0):.1f}s")
    console.print(table)
    library = plugin.library if plugin is not None else None
    console.print(f"[green]Wrote[/] {result.path} and {result.sidecar_path} "
                  f"(run it: trtexec --loadEngine={result.path}"
                  f"{' --dynamicPlugins=' + library if library else ''})")
