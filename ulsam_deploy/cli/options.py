"""Options shared by several commands, defined once (so ``export``, ``inspect``, ``bench`` and ``train`` agree)."""

from __future__ import annotations

from typing import Optional

import typer

from ulsam_deploy.errors import UserError

# bounds every numeric flag is held to (Typer ranges: the value is refused naming the flag)
MAX_THREADS = 256  # more threads than any board or server has cores; 100000 made ONNX Runtime crash
MAX_SECONDS = 3600.0  # one warm-up or timing phase
MAX_COUNT = 10_000_000  # images, iterations, batch sizes
MAX_SEED = 2**32 - 1  # NumPy's and PyTorch's common seed range
MAX_PIXELS = 16_384  # one side of an image

ArchOpt = typer.Option(None, "--arch", help="mv1 or mv2, for checkpoints that do not describe themselves [default: the checkpoint's; train: mv2].")
WidthOpt = typer.Option(None, "--width", help="Width multiplier (1.0, 0.75, 0.5, ...) [default: the checkpoint's, else 1.0].")
UlsamOpt = typer.Option(None, "--ulsam", help="ULSAM positions in the paper's notation, e.g. '8:1,9:1,11' or '14,17' [default: the checkpoint's, else none].")
GroupsOpt = typer.Option(None, "--groups", help="ULSAM groups g (1, 2, 4, 8, 16) [default: the checkpoint's, else 4].")
ClassesOpt = typer.Option(None, "--num-classes", help="Number of classes [default: the checkpoint's, else 1000].")
SizeOpt = typer.Option(None, "--input-size", help="Input resolution (square) [default: the checkpoint's, else 224].")
ForceOpt = typer.Option(False, "--force", help="Replace existing output files (never links, devices or folders).")
ThreadsOpt = typer.Option(None, "--threads", min=1, max=MAX_THREADS, help="CPU threads for ONNX Runtime and PyTorch [default: theirs].")


def model_overrides(arch, width, ulsam, groups, num_classes, input_size) -> dict:
    return {"arch": arch, "width": width, "ulsam": ulsam, "groups": groups, "num_classes": num_classes,
            "input_size": input_size}


def csv_list(text: Optional[str], what: str, cast=str) -> tuple:
    """``"1,8,32"`` -> ``(1, 8, 32)``; one sentence when an item does not parse."""
    if text is None:
        return ()
    items = [t.strip() for t in str(text).split(",") if t.strip()]
    try:
        return tuple(cast(t) for t in items)
    except ValueError:
        raise UserError(f"{what} '{text}' is not a comma-separated list of {cast.__name__} values.") from None
