"""What goes on disk: safe output paths, atomic writes, sha256, bounded reads of untrusted files.

Every file ulsam-deploy writes appears whole or not at all (temp file beside it, then rename), gets the
umask's mode, and never replaces a symlink, device, FIFO or directory. An existing regular file is
replaced only when the caller says ``force``.

The sidecars written beside artifacts (their schemas, typed reads and checks) are :mod:`ulsam_deploy.sidecars`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import stat
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

from ulsam_deploy.errors import IOFailure, UserError, os_error_sentence

STDOUT_NAMES = ("-", "/dev/stdout")
STDOUT_CLOSED = False  # set by the CLI when the caller closed standard output


# ----------------------------------------------------------------------------------------- paths

def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def user_path(path: str | os.PathLike, what: str = "path") -> Path:
    """A path as the user typed it, made usable once for every command: ``~`` and ``~user`` expanded (an unknown
    user is one sentence), and a name that is not valid text in this locale refused before any work."""
    text = os.fspath(path)
    if isinstance(text, bytes):
        text = os.fsdecode(text)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        shown = os.fsencode(text).decode("utf-8", "backslashreplace")
        raise UserError(f"The {what} '{shown}' is not valid UTF-8; rename it, or give a path in plain text.") from None
    if text.startswith("~"):
        expanded = os.path.expanduser(text)
        if expanded.startswith("~"):
            user = text[1:].split(os.sep, 1)[0]
            raise UserError(f"The {what} '{text}' starts with '~{user}', but there is no user '{user}' here; give the "
                            "folder's full path.")
        text = expanded
    return Path(text)


def is_stdout(path: str | os.PathLike | None) -> bool:
    return path is not None and str(path) in STDOUT_NAMES


def is_stream(path: str | os.PathLike | None) -> bool:
    """A report path that names a stream rather than a file: standard output, or ``/dev/null`` (discarded)."""
    return is_stdout(path) or (path is not None and str(path) == os.devnull)


def path_kind(path: str | os.PathLike, what: str, fix: str) -> str:
    """What is at ``path``, without following a link: ``missing``, ``link``, ``dir``, ``file`` or ``special``
    (a device, FIFO or socket); a path that cannot be looked at is one sentence naming ``what`` and ``fix``."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return "missing"
    except OSError as exc:
        raise UserError(f"Cannot use '{path}' as the {what} ({exc.strerror}); {fix}.") from None
    if stat.S_ISLNK(mode):
        return "link"
    if stat.S_ISDIR(mode):
        return "dir"
    return "file" if stat.S_ISREG(mode) else "special"


def nearest_existing(path: Path) -> Path:
    """``path`` itself or its closest ancestor that exists: where a folder about to be created would go."""
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_output(path: str | os.PathLike, *, force: bool, what: str = "output",
                 inputs: tuple[str | os.PathLike, ...] = ()) -> Path:
    """Refuse, in one sentence, an output path that cannot or must not be written; return it as a Path.

    Refused: a directory, a symlink, a FIFO/device/socket, an existing regular file without ``force``,
    one of the ``inputs`` themselves, and a parent that is not a writable directory.
    """
    if is_stdout(path):
        raise UserError(f"The {what} cannot go to standard output ('{path}'); give a file path ('-' is for the "
                        "JSON, CSV and Markdown reports).")
    path = Path(path)
    if str(path) in ("", "."):
        raise UserError(f"The {what} path '{path}' is a directory; give a file name such as 'model.onnx'.")
    kind = path_kind(path, what, "choose another path")
    if kind != "missing":
        if kind == "link":
            raise UserError(f"The {what} '{path}' is a symbolic link; ulsam-deploy never replaces links, so give the "
                            "real file's path or another one.")
        if kind == "dir":
            raise UserError(f"The {what} '{path}' is a directory; give a file path inside it, such as "
                            f"'{path / 'model.onnx'}'.")
        if kind == "special":
            raise UserError(f"The {what} '{path}' is not a regular file (a device, FIFO or socket); choose a file path.")
        for source in inputs:
            with contextlib.suppress(OSError):
                if os.path.samefile(source, path):
                    raise UserError(f"The {what} '{path}' is the input itself; choose another path.")
        if not force:
            raise UserError(f"'{path}' already exists; pass --force to replace it or choose another path.")
    probe = nearest_existing(path.parent)
    if not probe.is_dir():
        raise UserError(f"Cannot write '{path}': '{probe}' is a file, not a directory.")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise UserError(f"Cannot write '{path}': the directory '{probe}' is not writable; choose another location.")
    return path


def _umask_mode() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


@contextlib.contextmanager
def atomic_target(path: str | os.PathLike) -> Iterator[str]:
    """Yield a temp path beside ``path``; on success give it the umask's mode and rename it onto ``path``.

    The temp file is removed on any failure (including KeyboardInterrupt and SIGTERM, which the CLI turns
    into an exception). A symlink, directory or special file that appeared at ``path`` meanwhile is never
    replaced.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise UserError(f"Cannot write '{path}' ({exc.strerror}); choose a writable location.") from None
    os.close(fd)
    try:
        try:
            yield tmp
        except OSError as exc:
            if exc.errno is None or exc.filename not in (None, tmp):
                raise
            raise IOFailure(f"{os_error_sentence(exc, str(path)).rstrip('.')}; nothing was written there.") from None
        os.chmod(tmp, _umask_mode())
        with contextlib.suppress(FileNotFoundError):
            if not stat.S_ISREG(os.lstat(path).st_mode):
                raise UserError(f"'{path}' became a link, directory or special file while writing; nothing was "
                                "written there.")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_bytes(data: bytes, path: str | os.PathLike) -> Path:
    with atomic_target(path) as tmp:
        Path(tmp).write_bytes(data)
    return Path(path)


def write_text_output(text: str, path: str | os.PathLike, *, force: bool, what: str = "report") -> Path | None:
    """A report to a file (atomic, same rules as every output), to standard output for ``-``/``/dev/stdout``, or
    nowhere for ``/dev/null``."""
    if is_stream(path):
        if is_stdout(path):
            if STDOUT_CLOSED:
                raise IOFailure(f"The {what} was asked for on standard output ('{path}'), which is closed; keep it "
                                "open or give a file path.")
            try:
                sys.stdout.write(text)
                sys.stdout.flush()
            except OSError as exc:
                raise IOFailure(f"Cannot write the {what} to standard output ({exc.strerror or exc}); give a file "
                                "path instead.") from None
        return None
    check_output(path, force=force, what=what)
    return write_bytes(text.encode(), path)


def json_default(obj: Any):
    try:
        import numpy as np

        if isinstance(obj, (np.floating, np.integer)):
            return obj.item()
        if isinstance(obj, np.ndarray):
            return obj.tolist()
    except ImportError:  # pragma: no cover - numpy is a dependency
        pass
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "model_dump"):  # a pydantic model (a sidecar section)
        return obj.model_dump(mode="json")
    raise TypeError(f"not JSON serializable: {type(obj).__name__}")


def _finite(data: Any) -> Any:
    """JSON has no NaN or Infinity: non-finite numbers become null."""
    if isinstance(data, float):
        return data if math.isfinite(data) else None
    if isinstance(data, dict):
        return {k: _finite(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [_finite(v) for v in data]
    return data


def json_text(data: Any) -> str:
    """Strict JSON (non-finite numbers as null), indented, numpy values and paths included."""
    plain = json.loads(json.dumps(data, default=json_default))
    return json.dumps(_finite(plain), indent=2, allow_nan=False) + "\n"


def write_json(data: Any, path: str | os.PathLike) -> Path:
    return write_bytes(json_text(data).encode(), path)


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


MAX_ONNX_BYTES = 2 << 30  # protobuf's limit; weights beyond it live in external data files


def check_input_file(path: str | os.PathLike, what: str, fix: str, *, remake: str | None = None,
                     error: type[UserError] = UserError) -> Path:
    """The checks every file argument passes before it is opened: it exists, is a regular file and is not empty.

    ``what`` names the file ("ONNX file", "engine"), ``fix`` says what to do when it is missing and ``remake``
    (default ``fix``) when it is empty. A FIFO is refused here because reading one would hang."""
    path = Path(path)
    article = "an" if what[:1].lower() in "aeiou" else "a"
    if not path.exists():
        raise error(f"{what[:1].upper() + what[1:]} '{path}' does not exist; {fix}.")
    if path.is_dir():
        raise error(f"'{path}' is a directory, not {article} {what}; give the path of the file itself.")
    if not path.is_file():
        raise error(f"'{path}' is not a regular file (a device, FIFO or socket), so not {article} {what}; give the "
                    "path of the file itself.")
    if path.stat().st_size == 0:
        raise error(f"{what[:1].upper() + what[1:]} '{path}' is empty; {remake or fix}.")
    return path


def load_onnx(path: str | os.PathLike, what: str = "ONNX file"):
    """A readable, non-empty ONNX model, or one sentence saying why not (external data is checked too)."""
    import onnx

    path = check_input_file(path, what, "check the path or run 'ulsam-deploy export' first", remake="re-export it")
    size = path.stat().st_size
    if size > MAX_ONNX_BYTES:
        raise UserError(f"'{path}' is {size / 2**30:.1f} GiB, larger than an ONNX file can be (2 GiB, external data "
                        "aside); it is not an ONNX model: check the path.")
    from ulsam_deploy.limits import require_memory

    require_memory(size * 3, f"Reading '{path}' ({size / 2**20:.0f} MiB)", "it is not a MobileNet model: check the "
                   "path, or read it on a larger machine")  # the bytes, the parsed proto and a copy
    try:
        model = onnx.load(str(path))
    except Exception as exc:  # noqa: BLE001 - protobuf DecodeError, external-data errors and friends
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise UserError(f"'{path}' is not a readable ONNX model ({reason}); re-export it.") from None
    if not model.HasField("graph") or not model.graph.node or not model.graph.output:
        raise UserError(f"'{path}' holds no ONNX graph (no nodes or no outputs); it is not a model: re-export it.")
    unsorted = first_unsorted_node(model.graph)
    if unsorted is not None:
        raise UserError(f"'{path}' is not a valid ONNX graph: node '{unsorted}' reads a tensor that no earlier node, "
                        "input or initializer gives (a cycle, or nodes out of order); re-export the model.")
    return model


def first_unsorted_node(graph) -> str | None:
    """The first node (name or op type) of the main graph that reads a tensor not produced before it, or None.
    ONNX requires topological order, and a cycle can never have one."""
    known = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    known |= {t.values.name for t in getattr(graph, "sparse_initializer", [])}
    for node in graph.node:
        if any(name not in known for name in node.input):
            return node.name or node.op_type
        known.update(node.output)
    return None


def tool_versions(*modules: str) -> dict[str, str | None]:
    """Versions of ulsam-deploy, Python and the named packages, without importing them (an already imported
    module reports its own ``__version__``; else the installed distribution's metadata; else None)."""
    import importlib.metadata
    import platform

    from ulsam_deploy import __version__

    out: dict[str, str | None] = {"ulsam_deploy": __version__, "python": platform.python_version()}
    for name in modules:
        module = sys.modules.get(name)
        version = getattr(module, "__version__", None) if module is not None else None
        if version is None:
            for dist in (name, name.replace("_", "-")):
                try:
                    version = importlib.metadata.version(dist)
                    break
                except importlib.metadata.PackageNotFoundError:
                    continue
        out[name] = str(version) if version is not None else None
    return out


__all__ = ["atomic_target", "check_input_file", "check_output", "is_stdout", "is_stream", "json_text", "load_onnx",
           "now", "sha256_file", "tool_versions", "user_path", "write_bytes", "write_json", "write_text_output"]
