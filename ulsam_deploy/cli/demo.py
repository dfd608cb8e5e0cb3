"""``ulsam-deploy demo``."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ulsam_deploy.cli.command import command
from ulsam_deploy.cli.options import MAX_COUNT, ThreadsOpt, csv_list
from ulsam_deploy.cli.ui import DemoProgress, console
from ulsam_deploy.errors import UserError



@command()
def demo(
    model: str = typer.Option("fashion-mnist", "--model", help="Bundled model: fashion-mnist (trained, the default) or imagenet (MV2 + untrained ULSAM 17:1)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Report folder [default: reports/demo-<model>-<time>]."),
    quick: bool = typer.Option(False, "--quick", help="Same pipeline, fewer images, batch 1 only, short timing (CI)."),
    images: Optional[int] = typer.Option(None, "--images", min=1, max=MAX_COUNT, help="Held-out real images to bench on [default: 1000; quick 200]."),
    batch_sizes: Optional[str] = typer.Option(None, "--batch-sizes", help="Batch sizes to time, e.g. 1,32 [default: 1,32; quick 1]."),
    threads: Optional[int] = ThreadsOpt,
    force: bool = typer.Option(False, "--force", help="Replace an existing --out folder."),
) -> None:
    """Run the whole pipeline on a bundled model and real images: export, simplify, fuse, fp16, int8, TensorRT, bench."""
    from ulsam_deploy.extras import require

    require("demo", "torch", "onnxsim")
    from ulsam_deploy.demo import DemoOptions, run_demo

    options = DemoOptions(model=model, out=out, quick=quick, images=images, threads=threads, force=force,
                          batches=csv_list(batch_sizes, "--batch-sizes", int) or None)
    with DemoProgress() as progress:
        result = run_demo(options, events=progress)
    verdict = "[green]PASSED[/]" if result.passed else "[red]FAILED[/]"
    console.print(f"{verdict} in {result.seconds:.0f}s. Report: [bold]{result.out / 'README.md'}[/] "
                  f"(demo.json, bench.md/json/csv/png beside it)")
    if not result.passed:
        failed = [s.name for s in result.failed] + (["bench parity"] if result.bench is not None and not result.bench.passed else [])
        raise UserError(f"The demo finished with failures ({', '.join(failed)}); see {result.out / 'README.md'}.",
                        exit_code=3)
