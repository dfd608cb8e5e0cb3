"""The console script: signals are handled before the application (Typer, Rich) is imported.

SIGTERM or Ctrl-C while the CLI loads ends with 143 / 130 and no traceback (nothing has been written yet);
:func:`ulsam_deploy.cli.app.run` takes over the handlers once it runs.
"""

from __future__ import annotations

import signal
import sys


def _exit_on(code: int):
    def handler(_signum, _frame):
        raise SystemExit(code)

    return handler


def main() -> None:
    signal.signal(signal.SIGTERM, _exit_on(143))
    signal.signal(signal.SIGINT, _exit_on(130))
    from ulsam_deploy.cli.app import run

    run()


if __name__ == "__main__":  # pragma: no cover
    main()
