"""Progress while TensorRT builds: an ``IProgressMonitor`` (TensorRT 10.0+ and 11.x) feeding a rich display.

TensorRT calls ``phase_start(phase_name, parent_phase, num_steps)``, ``step_complete(phase_name, step)``
(return False to cancel the build) and ``phase_finish(phase_name)`` from its own threads (see
NVIDIA/TensorRT samples/python/simple_progress_monitor). Without IProgressMonitor the caller shows a
spinner instead.
"""

from __future__ import annotations

import threading


class BuildProgress:
    """Thread-safe sink for phases; renders with rich.progress on a terminal, one line per top phase otherwise."""

    def __init__(self, console=None, live: bool | None = None):
        from ulsam_deploy.cli.ui import err_console

        self.console = console or err_console
        self.live = self.console.is_terminal if live is None else live
        self.lock = threading.Lock()
        self.cancelled = False
        self.tasks: dict[str, int] = {}
        self.phases: list[tuple[str, str | None, int]] = []  # (name, parent, steps) for the record
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

    def start(self, name: str, parent: str | None, steps: int) -> None:
        with self.lock:
            self.phases.append((name, parent, int(steps)))
            depth = 0
            p = parent
            while p is not None and depth < 8:
                depth += 1
                p = next((q for n, q, _ in reversed(self.phases) if n == p), None)
            if self._progress is not None:
                self.tasks[name] = self._progress.add_task("  " * depth + name, total=max(int(steps), 1))
            elif parent is None:
                self.console.print(f"  TensorRT: {name} ({steps} steps)")

    def step(self, name: str, step: int) -> bool:
        with self.lock:
            if self._progress is not None and name in self.tasks:
                self._progress.update(self.tasks[name], completed=int(step) + 1)
            return not self.cancelled

    def finish(self, name: str) -> None:
        with self.lock:
            if self._progress is not None and name in self.tasks:
                self._progress.remove_task(self.tasks.pop(name))


def make_progress_monitor(trt, sink: BuildProgress):
    """An IProgressMonitor forwarding to ``sink``, or None when this TensorRT has no IProgressMonitor."""
    base = getattr(trt, "IProgressMonitor", None)
    if base is None:
        return None

    class _Monitor(base):  # type: ignore[misc, valid-type]
        def __init__(self):
            base.__init__(self)

        def phase_start(self, phase_name, parent_phase, num_steps):
            try:
                sink.start(phase_name, parent_phase, num_steps)
            except Exception:  # noqa: BLE001 - never let display trouble reach TensorRT's thread
                pass

        def step_complete(self, phase_name, step):
            try:
                return sink.step(phase_name, step)
            except KeyboardInterrupt:
                sink.cancelled = True
                return False
            except Exception:  # noqa: BLE001
                return True

        def phase_finish(self, phase_name):
            try:
                sink.finish(phase_name)
            except Exception:  # noqa: BLE001
                pass

    return _Monitor()
