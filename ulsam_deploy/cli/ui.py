"""Rich rendering for the CLI (the only place Rich is used): stages with timings, progress bars, errors as
one sentence, and the renderers of the library's events (steps, bench, training)."""

from __future__ import annotations

import contextlib
import os
import sys
import time

from rich.console import Console
from rich.markup import escape

from ulsam_deploy.events import Events

# logs and pipes get wide lines (bench's table has 15 columns): $COLUMNS, else 180
def _pipe_width() -> int | None:
    """$COLUMNS when it is a sensible number, else 180 (bench's table has 15 columns); None on a terminal."""
    if sys.stdout is None or sys.stdout.isatty():
        return None
    text = os.environ.get("COLUMNS", "")
    return int(text) if text.isdigit() and 20 <= int(text) <= 10_000 else 180


console = Console(stderr=False, highlight=False, width=_pipe_width())
err_console = Console(stderr=True, highlight=False)


@contextlib.contextmanager
def reports_on_stdout(paths):
    """While a report goes to standard output ('-'), everything else the command shows goes to standard error,
    so that the report can be parsed."""
    from ulsam_deploy.artifacts import is_stdout

    if not any(is_stdout(p) for p in paths):
        yield
        return
    console.file = sys.stderr
    try:
        yield
    finally:
        console.file = None


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


def print_error(message: str) -> None:
    """The one sentence, escaped: ``pip install 'ulsam-deploy[export]'`` must not be read as Rich markup."""
    err_console.print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True)


def print_warning(message: str) -> None:
    err_console.print(f"[yellow]warning:[/] {escape(message)}", soft_wrap=True)


def fmt_count(value: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.2f} {unit}"
    return f"{value:.0f}"


class RichEvents(Events):
    """The library's events on the terminal: spinners with durations, warnings, a progress bar with counts."""

    def __init__(self):
        self._bar = None
        self._task = None

    def stage(self, name: str):
        return stage(name)

    def warn(self, message: str) -> None:
        print_warning(message)

    def detail(self, text: str) -> None:
        err_console.print(text, markup=False, highlight=False, soft_wrap=True)

    def progress(self, task: str, done: int, total: int) -> None:
        if not err_console.is_terminal:
            return
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                   TimeRemainingColumn)

        if self._bar is None:
            self._bar = Progress(TextColumn("  {task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(), console=err_console,
                                 transient=True)
            self._bar.start()
            self._task = self._bar.add_task(task, total=total)
        self._bar.update(self._task, completed=done, total=total, description=task)
        if done >= total:
            self._bar.stop()
            self._bar = None


class BenchProgress(Events):
    """Rich progress on stderr for the events :func:`ulsam_deploy.bench.run.run_bench` emits (use as ``events=``)."""

    def __init__(self, console=None):
        from rich.progress import (BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn,
                                   TimeRemainingColumn)

        self.console = console or err_console
        self.progress = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(),
                                 TextColumn("eta"), TimeRemainingColumn(), console=self.console, transient=True,
                                 disable=not self.console.is_terminal)
        self.task = None
        self.latency_started = 0.0
        self.latency_total = 1.0
        self.shown: list[str] = []  # warnings already printed (the caller prints the report's others)

    def __enter__(self):
        self.progress.start()
        self.task = self.progress.add_task("bench", total=None)
        return self

    def __exit__(self, *exc):
        self.progress.stop()

    def emit(self, kind: str, **data) -> None:
        import time

        if kind == "load":
            self.progress.update(self.task, description=f"loading {data['backend']} for {data['model']}", total=None)
        elif kind == "export":
            self.progress.update(self.task, description=f"exporting {data['model']} to ONNX in memory", total=None)
        elif kind == "inputs":
            inputs = data["inputs"]
            self.console.print(f"inputs: {inputs.source} ({len(inputs)} x {list(inputs.images.shape[1:])}"
                               + (f", {int((inputs.labels >= 0).sum())} labelled" if inputs.labels is not None else "")
                               + (f", {len(inputs.skipped)} skipped" if inputs.skipped else "") + ")")
            for warning in inputs.warnings:
                self.console.print(f"[yellow]warning:[/] {escape(warning)}", soft_wrap=True)
                self.shown.append(warning)
        elif kind == "parity":
            from pathlib import Path

            what = Path(str(data.get("artifact") or data["model"])).name
            self.progress.update(self.task, description=f"parity: {what} on {data['backend']}", total=None)
        elif kind == "latency_start":
            timing = data["timing"]
            self.latency_started = time.perf_counter()
            self.latency_total = data["targets"] * (timing.warmup_s + max(timing.min_seconds, 0.1))
            size = f" at {data['size'][0]}x{data['size'][1]}" if data.get("size") else ""
            self.progress.update(self.task, description=f"latency: batch {data['batch']}{size}, {data['targets']} "
                                 "runner(s) interleaved", total=self.latency_total, completed=0)
        elif kind == "latency_round":
            elapsed = time.perf_counter() - self.latency_started
            self.progress.update(self.task, completed=min(elapsed, self.latency_total * 0.99))
        elif kind == "latency_done":
            self.progress.update(self.task, completed=self.latency_total)


class DemoProgress(RichEvents):
    """The demo on the terminal: its stages and warnings as :class:`RichEvents`, each finished step as a coloured
    line on standard output, bench's runner events through a :class:`BenchProgress` (use as a context manager)."""

    COLOURS = {"ok": "green", "skipped": "yellow", "failed": "red"}

    def __init__(self):
        super().__init__()
        self.bench = BenchProgress()

    def __enter__(self) -> "DemoProgress":
        self.bench.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.bench.__exit__(*exc)

    def emit(self, kind: str, **data) -> None:
        if kind == "demo_step":
            colour = self.COLOURS.get(data["status"], "white")
            console.print(f"[{colour}]{data['status']:>7}[/] {escape(data['name'])}: {escape(data['detail'])}",
                          soft_wrap=True)
        else:
            self.bench.emit(kind, **data)


class TrainProgress(Events):
    """Training's events: messages on stdout, a live bar per phase (loss / accuracy, count, ETA), one summary line
    per epoch; without a terminal, a line at each quarter of a training epoch instead of the bar. Use as a context
    manager so a bar never outlives an error."""

    def __init__(self, console=None):
        self.console = console or globals()["console"]
        self.bar = None
        self.task = None
        self.phase = None
        self.marks: set[int] = set()

    def __enter__(self) -> "TrainProgress":
        return self

    def __exit__(self, *exc) -> None:
        self._stop()

    def detail(self, text: str) -> None:
        self.console.print(text)

    def warn(self, message: str) -> None:
        print_warning(message)

    def _stop(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar, self.phase = None, None

    def progress(self, task: str, done: int, total: int, **stats) -> None:
        if task != self.phase:
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                       TimeRemainingColumn)

            self._stop()
            self.bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                TextColumn("{task.fields[stats]}"), TimeElapsedColumn(), TextColumn("<"),
                                TimeRemainingColumn(), console=self.console, transient=True,
                                disable=not self.console.is_terminal)
            self.bar.start()
            self.task = self.bar.add_task(task, total=total, stats="")
            self.phase = task
            self.marks = {total * q // 4 for q in (1, 2, 3)} if not self.console.is_terminal and total >= 8 else set()
        text = f"loss {stats['loss']:.4f}  acc {stats['acc']:.2%}" if "loss" in stats else ""
        self.bar.update(self.task, completed=done, stats=text)
        if done in self.marks and text:
            self.console.print(f"  {task}: {done}/{total} steps, {text}")
        if done >= total:
            self._stop()

    def emit(self, kind: str, **data) -> None:
        if kind == "epoch":
            r, epochs = data["record"], data["epochs"]
            self.console.print(f"epoch {r.epoch}/{epochs}  lr {r.lr:.4g}  train loss {r.train_loss:.4f} "
                               f"acc {r.train_acc:.2%}  test loss {r.test_loss:.4f} acc [bold]{r.test_acc:.2%}[/]  "
                               f"({r.seconds:.0f}s, {r.images_per_s:.0f} img/s)")


class BuildProgress(RichEvents):
    """``build-trt``'s events: RichEvents' stages and warnings, plus TensorRT's build phases (called from TensorRT's
    threads) as nested bars on a terminal, one line per top phase otherwise. A context manager."""

    def __init__(self, console=None, live: bool | None = None):
        import threading

        super().__init__()
        self.console = console or err_console
        self.live = self.console.is_terminal if live is None else live
        self.lock = threading.Lock()
        self.tasks: dict[str, int] = {}
        self.parents: dict[str, str | None] = {}
        self._progress = None

    def __enter__(self) -> "BuildProgress":
        if self.live:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self._progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                      TimeElapsedColumn(), console=self.console, transient=True)
            self._progress.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    def emit(self, kind: str, **data) -> None:
        with self.lock:
            if kind == "build_phase":
                name, parent = data["phase"], data["parent"]
                self.parents[name] = parent
                depth, p = 0, parent
                while p is not None and depth < 8:
                    depth += 1
                    p = self.parents.get(p)
                if self._progress is not None:
                    self.tasks[name] = self._progress.add_task("  " * depth + name, total=max(data["steps"], 1))
                elif parent is None:
                    self.console.print(f"  TensorRT: {name} ({data['steps']} steps)")
            elif kind == "build_phase_done" and self._progress is not None and data["phase"] in self.tasks:
                self._progress.remove_task(self.tasks.pop(data["phase"]))

    def progress(self, task: str, done: int, total: int, **stats) -> None:
        with self.lock:
            if self._progress is not None and task in self.tasks:
                self._progress.update(self.tasks[task], completed=done)
