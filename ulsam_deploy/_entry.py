"""The console script: signals are handled before the application (Typer, Rich) is imported.

SIGTERM or Ctrl-C while the CLI loads ends with 143 / 130 and no traceback (nothing has been written yet);
:func:`ulsam_deploy.cli.app.run` takes over the handlers once it runs.
"""

from __future__ import annotations

import os
import signal
import sys

PARENT_DEATH_ENV = "ULSAM_DIE_WITH_PARENT"  # set by the fleet's worker for the steps it starts


def _exit_on(code: int):
    def handler(_signum, _frame):
        raise SystemExit(code)

    return handler


def _die_with_parent() -> None:
    """A step started by a fleet worker ends (SIGTERM) when that worker dies, so a killed worker leaves no orphan
    running on the board (Linux's PR_SET_PDEATHSIG; elsewhere nothing is done)."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM), 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() == 1:  # the worker died before the call
        raise SystemExit(143)


def _exit_interrupted(code: int) -> None:
    """Leave with ``code`` now that the interrupt was handled. CPython remembers a KeyboardInterrupt that crossed C
    code running Python (an import, for one) even when it was caught later, and at the end of ``Py_RunMain`` kills
    the process with SIGINT (status -2) instead of exiting with the code asked for; so the exit handlers run here
    (atexit, weakref finalizers: temporary folders) and the process ends without that last step."""
    import atexit

    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


def main() -> None:
    signal.signal(signal.SIGTERM, _exit_on(143))
    signal.signal(signal.SIGINT, _exit_on(130))
    if os.environ.get(PARENT_DEATH_ENV):
        _die_with_parent()
    try:
        from ulsam_deploy.cli.app import run

        run()
    except SystemExit as exc:
        if exc.code in (130, 143):
            _exit_interrupted(exc.code)
        raise


if __name__ == "__main__":  # pragma: no cover
    main()
