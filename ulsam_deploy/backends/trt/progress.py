"""Progress while TensorRT builds: an ``IProgressMonitor`` (TensorRT 10.0+ and 11.x) feeding a sink of phases.

TensorRT calls ``phase_start(phase_name, parent_phase, num_steps)``, ``step_complete(phase_name, step)``
(return False to cancel the build) and ``phase_finish(phase_name)`` from its own threads (see
NVIDIA/TensorRT samples/python/simple_progress_monitor). Without IProgressMonitor the caller shows a
spinner instead.
"""

from __future__ import annotations

import threading

from ulsam_deploy.events import SILENT, Events


class BuildPhases:
    """Thread-safe sink of TensorRT's build phases: records them (``phases``) and passes them on as the library's
    one event protocol - ``emit("build_phase", phase=, parent=, steps=)``, ``progress(phase, done, steps)`` and
    ``emit("build_phase_done", phase=)`` - from TensorRT's threads. ``cancelled`` set to True (Ctrl-C) asks
    TensorRT to stop at its next step."""

    def __init__(self, events: Events = SILENT):
        self.events = events
        self.lock = threading.Lock()
        self.cancelled = False
        self.phases: list[tuple[str, str | None, int]] = []  # (name, parent, steps) for the record
        self._steps: dict[str, int] = {}

    def __enter__(self) -> "BuildPhases":
        return self

    def __exit__(self, *exc) -> None:
        pass

    def start(self, name: str, parent: str | None, steps: int) -> None:
        with self.lock:
            self.phases.append((name, parent, int(steps)))
            self._steps[name] = max(int(steps), 1)
        self.events.emit("build_phase", phase=name, parent=parent, steps=int(steps))

    def step(self, name: str, step: int) -> bool:
        total = self._steps.get(name, int(step) + 1)
        self.events.progress(name, min(int(step) + 1, total), total)
        return not self.cancelled

    def finish(self, name: str) -> None:
        self.events.emit("build_phase_done", phase=name)


def make_progress_monitor(trt, sink: BuildPhases):
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
