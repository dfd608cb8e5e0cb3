"""``ulsam-deploy build-plugin``."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ulsam_deploy.cli.command import command
from ulsam_deploy.cli.options import MAX_THREADS
from ulsam_deploy.cli.ui import console, print_warning, stage
from ulsam_deploy.errors import UserError



@command("build-plugin")
def build_plugin_cmd(
    build_dir: Optional[Path] = typer.Option(None, "--build-dir", help="CMake build folder (default: ./build/subspace_attention_plugin)."),
    tensorrt_root: Optional[Path] = typer.Option(None, "--tensorrt-root", help="TensorRT install root (default: TensorRT_ROOT or the usual Jetson/x86 places)."),
    cuda_home: Optional[Path] = typer.Option(None, "--cuda-home", help="CUDA toolkit root (default: CUDA_HOME, /usr/local/cuda, nvcc's)."),
    launcher_only: bool = typer.Option(False, "--launcher-only", help="Build only the PTX launcher and its self-test (no TensorRT needed)."),
    selftest: bool = typer.Option(False, "--selftest", help="Run the GPU self-test after building (kernel vs CPU reference)."),
    clean: bool = typer.Option(False, "--clean", help="Delete the build folder first (only a folder build-plugin made)."),
    jobs: Optional[int] = typer.Option(None, "--jobs", "-j", min=1, max=MAX_THREADS, help="Parallel build jobs."),
) -> None:
    """Build the TensorRT plugin library (C++ IPluginV3 + the AOT Triton kernel) with CMake."""
    from ulsam_deploy.backends.trt.plugin_build import build_plugin, run_selftest

    with stage("Building plugins/subspace_attention with CMake"):
        result = build_plugin(build_dir, tensorrt_root=tensorrt_root, cuda_home=cuda_home,
                              require_tensorrt=not launcher_only, use_tensorrt=not launcher_only,
                              jobs=jobs, clean=clean)
    if result.plugin_library is not None:
        console.print(f"[green]Plugin library:[/] {result.plugin_library} "
                      f"(TensorRT {result.tensorrt.version or '?'} headers from {result.tensorrt.include_dir})")
        console.print(f"  trtexec --onnx=model.fused.onnx --dynamicPlugins={result.plugin_library} "
                      f"--setPluginsToSerialize={result.plugin_library}")
        console.print(f"  ulsam-deploy build-trt model.onnx --plugin lib --plugin-lib {result.plugin_library}")
    console.print(f"[green]Launcher library:[/] {result.launcher_library}")
    if selftest:
        proc = run_selftest(result)
        if proc.returncode == 77:
            print_warning("Self-test skipped: no CUDA driver or GPU on this machine.")
        elif proc.returncode != 0:
            raise UserError(f"The plugin self-test failed (exit {proc.returncode}): "
                            f"{(proc.stdout + proc.stderr).strip().splitlines()[-1:] or ['no output']}")
        else:
            console.print("[green]Self-test passed[/] (fused kernel == CPU reference on this GPU).")
