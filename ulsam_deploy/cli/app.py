"""The ``ulsam-deploy`` application: the Typer app, the error policy and the entry point.

Errors a user can fix are one sentence and an exit code (2 bad input, 3 parity, 4 backend unavailable);
anything else is one line naming the exception; ``--debug`` (anywhere on the command line) shows the
traceback. SIGTERM unwinds like Ctrl-C, so temporary files and folders are removed either way.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import signal
import sys

import typer

from ulsam_deploy import __version__
from ulsam_deploy.cli.ui import console, print_error
from ulsam_deploy.errors import UserError

EXIT_BUG = 70  # an unexpected exception: a bug in ulsam-deploy (sysexits' EX_SOFTWARE)


class CommandGroup(typer.core.TyperGroup):
    """The application's group: a usage error (bad flag, bad value) is one sentence and exit 2, like every other
    bad input, rather than Click's boxed usage text."""

    def get_help_option(self, ctx):
        return _without_type(super().get_help_option(ctx))

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except typer.TyperException as exc:  # Click's usage errors (public base class)
            ctx = getattr(exc, "ctx", None)
            if type(exc).__name__ == "NoArgsIsHelpError" and ctx is not None:
                console.print(ctx.get_help())
                sys.exit(2)
            where = f"'{ctx.command_path} --help'" if ctx is not None else "'ulsam-deploy --help'"
            print_error(f"{usage_sentence(exc)}; see {where}.")
            sys.exit(getattr(exc, "exit_code", 2))
        except typer.Abort:
            print_error("Interrupted; nothing was written.")
            sys.exit(130)
        except OSError as exc:  # standard output or error failed outside a command (help, --version)
            sys.exit(report_os_error(exc))
        sys.exit(code if isinstance(code, int) else 0)


def usage_sentence(exc) -> str:
    """Click's message as one sentence; a value outside an option's declared range says the range:
    '--threads must be from 1 to 256'."""
    param = getattr(exc, "param", None)
    low, high = getattr(param, "min", None), getattr(param, "max", None)
    opts = getattr(param, "opts", None) or []
    message = getattr(exc, "message", "") or ""
    if opts and (low is not None or high is not None) and message.startswith("Input should be"):
        def num(x):
            return str(int(x)) if float(x).is_integer() else f"{x:g}"

        bound = (f"from {num(low)} to {num(high)}" if low is not None and high is not None else
                 f"at least {num(low)}" if low is not None else f"at most {num(high)}")
        return f"{max(opts, key=len)} must be {bound}"
    message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
    text = " ".join(message.split()).rstrip(".")
    return text[:1].upper() + text[1:]


app = typer.Typer(
    name="ulsam-deploy",
    cls=CommandGroup,
    context_settings={"help_option_names": ["-h", "--help"]},
    help="Export, fuse, build and benchmark MobileNet + ULSAM models for ONNX Runtime and TensorRT.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)

STATE = {"debug": False}


class Terminated(BaseException):
    """SIGTERM, raised where the program is so that every cleanup handler runs."""


def _version(value: bool) -> None:
    if value:
        console.print(f"ulsam-deploy {__version__}")
        raise typer.Exit()


def _without_type(option):
    """The help flag takes no value: no '<bool>' type in its help line (Click's public ``metavar``)."""
    if option is not None:
        option.metavar = ""
    return option


class PlainUsageCommand(typer.core.TyperCommand):
    """Usage lines name arguments as users type them (``CHECKPOINT``, ``[CHECKPOINT]``, ``MODEL...``), through Click's
    public ``collect_usage_pieces`` (Typer 0.29 prints ``{CHECKPOINT}`` for a required argument)."""

    def get_help_option(self, ctx):
        return _without_type(super().get_help_option(ctx))

    def collect_usage_pieces(self, ctx):
        pieces = [self.options_metavar] if self.options_metavar else []
        for param in self.get_params(ctx):
            if param.param_type_name != "argument":
                continue
            name = param.metavar or param.name.upper()
            if param.nargs != 1 and not name.endswith("..."):
                name += "..."
            pieces.append(name if param.required or name.startswith("[") else f"[{name}]")
        return pieces
_DOCUMENTED: set[int] = set()


def document_defaults(fn):
    """Every option of ``fn`` states its default: Typer shows set values; an off flag says ``off``, an unset option
    ``none`` unless its help text already names the default. Help texts are shown literally (``[default: ...]``
    is text, not Rich markup)."""
    import inspect as pyinspect  # not the 'inspect' command module

    from rich.markup import escape
    from typer.models import OptionInfo, ParameterInfo

    for param in pyinspect.signature(fn).parameters.values():
        info = param.default
        if not isinstance(info, ParameterInfo) or id(info) in _DOCUMENTED:
            continue
        _DOCUMENTED.add(id(info))  # options shared by several commands are one object
        text = info.help or ""
        option = isinstance(info, OptionInfo)
        two_way = option and any("/" in decl for decl in info.param_decls or ())
        if option and (isinstance(info.default, bool) or two_way) and info.metavar is None:
            info.metavar = ""  # a flag takes no value: no '<bool>' type column in the help
        if option and "default:" not in text and info.default is not ...:
            if info.default is None or (info.default is False and not two_way):
                text = f"{text} [default: {'off' if info.default is False else 'none'}]".strip()
        info.help = escape(text)
    return fn


@app.callback()
def main(
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors (also accepted after the command)."),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    STATE["debug"] = debug or STATE.pop("debug_anywhere", False)


document_defaults(main)


def handle_errors(fn):
    """UserError -> one sentence and its exit code; Ctrl-C / SIGTERM -> a clean exit; anything else -> one line."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (typer.Exit, typer.Abort):
            raise
        except UserError as exc:
            if STATE["debug"]:
                raise
            print_error(str(exc))
            raise typer.Exit(exc.exit_code)
        except KeyboardInterrupt:
            print_error("Interrupted; nothing was written.")
            raise typer.Exit(130)
        except Terminated:
            print_error("Terminated; nothing was written.")
            raise typer.Exit(143)
        except MemoryError:
            if STATE["debug"]:
                raise
            print_error("Ran out of memory; use smaller batches, fewer images or a smaller input size.")
            raise typer.Exit(2)
        except OSError as exc:
            if STATE["debug"]:
                raise
            raise typer.Exit(report_os_error(exc))
        except Exception as exc:  # noqa: BLE001 - last line of defence for users
            if STATE["debug"]:
                raise
            first = (str(exc).strip().splitlines() or [""])[0][:300]
            print_error(f"Unexpected {type(exc).__name__} (a bug in ulsam-deploy): {first}. Re-run with --debug for "
                        "the traceback and report it.")
            raise typer.Exit(EXIT_BUG)

    return wrapper


def report_os_error(exc: OSError) -> int:
    """Say which file the system refused and why (on standard error, if that still works); the exit code."""
    from ulsam_deploy.errors import IOFailure, os_error_sentence

    with contextlib.suppress(OSError, ValueError):
        print_error(os_error_sentence(exc))
    return IOFailure.exit_code


def checked_inputs(fn):
    """Values are checked where they enter: every float option of ``fn`` must be finite (NaN and infinity are
    refused naming the flag; Typer's ranges bound the rest), and every path goes through ``artifacts.user_path``."""
    import inspect as pyinspect

    from typer.models import ParameterInfo

    labels, floats = {}, set()  # how the user spells each parameter: its long flag, or an argument's metavar
    for param in pyinspect.signature(fn).parameters.values():
        info = param.default
        if not isinstance(info, ParameterInfo):
            continue
        decls = [d for d in getattr(info, "param_decls", None) or () if d.startswith("--")]
        labels[param.name] = decls[0] if decls else (getattr(info, "metavar", None) or param.name.upper())
        if "float" in str(param.annotation):
            floats.add(param.name)

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from pathlib import PurePath

        from ulsam_deploy.artifacts import user_path

        for key in floats:
            value = kwargs.get(key)
            if isinstance(value, float) and not math.isfinite(value):
                raise UserError(f"{labels[key]} must be a finite number, not {value}.")
        for key, value in kwargs.items():  # every path, once: '~' expanded, names that are not text refused
            what = f"path given to {labels.get(key, key)}"
            if isinstance(value, PurePath):
                kwargs[key] = user_path(value, what)
            elif isinstance(value, (list, tuple)) and value and all(isinstance(v, PurePath) for v in value):
                kwargs[key] = type(value)(user_path(v, what) for v in value)
        return fn(*args, **kwargs)

    return wrapper


def register(fn) -> None:
    """Add a function marked with ``@command`` to the app, behind the error policy and the input checks."""
    name, kwargs = fn.__cli_command__
    app.command(name, cls=PlainUsageCommand, **kwargs)(handle_errors(checked_inputs(document_defaults(fn))))


def _on_sigterm(_signum, _frame):
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # unwind once: a second SIGTERM must not interrupt the cleanup
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise Terminated()


def _on_sigint(_signum, _frame):
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # unwind once: a second Ctrl-C must not interrupt the cleanup
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise KeyboardInterrupt()


def reopen_closed_streams() -> None:
    """A standard stream closed by the caller (``cmd >&-``) is reopened on /dev/null before anything is opened, so
    that no file the command opens later takes its number and receives its output; a report asked for on that
    standard output is then refused (``artifacts.STDOUT_CLOSED``)."""
    from ulsam_deploy import artifacts

    for fd, name in ((0, "stdin"), (1, "stdout"), (2, "stderr")):
        try:
            os.fstat(fd)
            continue
        except OSError:
            pass
        null = os.open(os.devnull, os.O_RDWR)
        if null != fd:
            os.dup2(null, fd)
            os.close(null)
        setattr(sys, name, open(fd, "r" if fd == 0 else "w", closefd=False))
        if fd == 1:
            artifacts.STDOUT_CLOSED = True


def run(argv: list[str] | None = None) -> None:
    """Console-script entry point: ``--debug`` is honoured wherever it appears (before ``--``)."""
    reopen_closed_streams()
    args = list(sys.argv[1:] if argv is None else argv)
    cut = args.index("--") if "--" in args else len(args)
    if "--debug" in args[:cut]:
        STATE["debug_anywhere"] = True
        args = [a for i, a in enumerate(args) if not (a == "--debug" and i < cut)]
    previous = signal.signal(signal.SIGTERM, _on_sigterm), signal.signal(signal.SIGINT, _on_sigint)
    try:
        app(args=args, prog_name="ulsam-deploy")
    except Terminated:  # outside a command (while parsing the command line): nothing to clean up
        sys.exit(143)
    except KeyboardInterrupt:
        sys.exit(130)
    finally:
        if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:  # after a signal both stay ignored until exit:
            signal.signal(signal.SIGTERM, previous[0])  # a second one during the interpreter's shutdown must not
            signal.signal(signal.SIGINT, previous[1])  # kill it with -2 instead of 130


def _register_commands() -> None:
    """Every command, in the order --help lists them; none of these modules imports torch, onnx or a runtime."""
    from ulsam_deploy.cli import (bench, build_plugin, build_trt, convert, demo, deploy, doctor, export, fleet, fuse,
                                  inspect, train)

    for fn in (export.export, inspect.inspect, fuse.fuse, convert.convert, build_plugin.build_plugin_cmd,
               build_trt.build_trt, deploy.deploy, bench.bench, fleet.fleet, train.train, demo.demo, doctor.doctor):
        register(fn)


_register_commands()
