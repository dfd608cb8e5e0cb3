"""Rich rendering shared by the CLI commands: stages with timings, errors as one sentence."""

from __future__ import annotations

import contextlib
import sys
import time

from rich.console import Console

console = Console(stderr=False, highlight=False, width=None if sys.stdout.isatty() else 120)
err_console = Console(stderr=True, highlight=False)


@contextlib.contextmanager
def stage(name: str):
    """Show a spinner while a stage runs, then a check mark and its duration (or a cross on failure)."""
    start = time.perf_counter()
    status = err_console.status(f"[bold]{name}[/]...", spinner="dots") if err_console.is_terminal else None
    try:
        if status is not None:
            status.start()
        yield
    except BaseException:
        if status is not None:
            status.stop()
        err_console.print(f"[red]✗[/] {name}")
        raise
    if status is not None:
        status.stop()
    err_console.print(f"[green]✓[/] {name} [dim]({time.perf_counter() - start:.1f}s)[/]")


def quiet_stage(_name: str):
    return contextlib.nullcontext()


def print_error(message: str) -> None:
    err_console.print(f"[bold red]error:[/] {message}", soft_wrap=True)


def print_warning(message: str) -> None:
    err_console.print(f"[yellow]warning:[/] {message}", soft_wrap=True)


def fmt_count(value: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.2f} {unit}"
    return f"{value:.0f}"


def is_interactive() -> bool:
    return sys.stdout.isatty()
