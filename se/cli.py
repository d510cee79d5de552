"""One way for every command-line tool to fail: a one-line message and a non-zero exit.

Each se.bin tool ends with ``sys.exit(cli.run(main))`` and its ``main(argv)`` raises a
:class:`UserError` (or one of the project's error classes, which derive from it) for anything
the user can cause and fix. :func:`run` turns such an error into one line on stderr::

    se.bin.enhance: error: data/test/wav.scp line 12: /x/a.wav: file not found

and exit status 1. Operating-system errors about a named path (permission denied, no space
left, not a directory) are treated the same way. Anything else is an internal error and keeps
its traceback. ``--debug`` anywhere on the command line shows the traceback of user errors too.

Options are checked before any work starts: :func:`check_output_dir` /
:func:`check_output_file` (can the output be created, would it overwrite an input) and the
argparse types :func:`positive_int`, :func:`nonneg_float`, ... .
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import sys
from pathlib import Path


class UserError(Exception):
    """A problem the user must fix; the message names the file (and line) or the option."""


def message(exc: BaseException) -> str:
    msg = str(exc)
    # An error raised in a DataLoader worker comes back with the worker's traceback in its
    # message; the original message is the last line ("AudioError: ...").
    if "Original Traceback (most recent call last)" in msg:
        last = msg.strip().splitlines()[-1]
        msg = last.split(": ", 1)[1] if ": " in last else last
    if isinstance(exc, OSError) and exc.filename is not None:
        msg = f"{exc.filename}: {exc.strerror or msg}"
    elif isinstance(exc, OSError) and exc.strerror:
        msg = f"{exc.strerror} (errno {exc.errno}); free space or choose another location"
    # one line; a message that lists several problems keeps one line per problem
    return "\n".join(" ".join(line.split()) for line in msg.strip().splitlines() if line.strip())


_DISK_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO}


def run(main, argv: list[str] | None = None, prog: str | None = None) -> int:
    """Runs ``main(argv)``; user errors become one line on stderr and exit status 1."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    if prog is None:
        module = getattr(main, "__module__", "") or ""
        prog = module if module and module != "__main__" else Path(sys.argv[0]).stem
    try:
        return main(argv)
    except UserError as exc:
        if debug:
            raise
        print(f"{prog}: error: {message(exc)}", file=sys.stderr)
        return 1
    except OSError as exc:
        # a path the user named, or a full / read-only disk: the user can act on it
        if debug or (exc.filename is None and exc.errno not in _DISK_ERRNOS):
            raise
        print(f"{prog}: error: {message(exc)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130


LOG_FORMAT = "%(asctime)s (%(name)s) %(levelname)s: %(message)s"


class _ToolLogHandler(logging.StreamHandler):
    """The handler :func:`setup_logging` puts on the root logger (so it can find its own)."""


def setup_logging(level: int = logging.INFO, fmt: str = LOG_FORMAT) -> None:
    """Log lines of a tool to the current stderr.  Handlers of earlier calls are replaced, so a
    tool run again in the same process (tests, notebooks) never writes to the stream of a
    previous run, which may be closed by then; handlers that others added stay."""
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _ToolLogHandler)]:
        root.removeHandler(old)
    handler = _ToolLogHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(fmt))
    root.addHandler(handler)
    root.setLevel(level)


# --------------------------------------------------------------------------- options


def _number(kind, test, what):
    def parse(text: str):
        try:
            value = kind(text)
        except (TypeError, ValueError):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if kind is float and value != value:  # NaN
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        if not test(value):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return value

    parse.__name__ = what
    return parse


positive_int = _number(int, lambda v: v >= 1, "an integer >= 1")
nonneg_int = _number(int, lambda v: v >= 0, "an integer >= 0")
positive_float = _number(float, lambda v: 0 < v < float("inf"), "a number > 0")
nonneg_float = _number(float, lambda v: 0 <= v < float("inf"), "a number >= 0")
fraction = _number(float, lambda v: 0 <= v <= 1, "a number in [0, 1]")


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """True when both paths exist and are the same file (resolved paths and inodes, not strings)."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _creatable_dir(path: Path, option: str, shown: Path | None = None) -> None:
    """Raises UserError unless ``path`` is a writable directory or can be made one (messages
    name ``shown``, the path the user gave)."""
    shown = path if shown is None else shown
    probe = path
    while not probe.exists():
        if probe.is_symlink():  # a dangling link
            raise UserError(f"{option} {shown}: {probe} is a broken symbolic link")
        parent = probe.parent
        if parent == probe:
            break
        probe = parent
    if not probe.is_dir():
        raise UserError(f"{option} {shown}: cannot create it, {probe} is a file, not a directory")
    if not os.access(probe, os.W_OK | os.X_OK):
        what = "is not writable" if probe == shown else f"cannot be created ({probe} is not writable)"
        raise UserError(f"{option} {shown}: {what}; choose another location")


def check_output_dir(path: str | os.PathLike, option: str, outputs: list[str] | None = None,
                     inputs: list[str | os.PathLike] | None = None) -> Path:
    """Checks, before any work: ``path`` can be created and written, and none of the
    ``outputs`` (file names inside it) is one of the ``inputs``. Creates nothing."""
    path = Path(path)
    _creatable_dir(path, option)
    for name in outputs or []:
        for src in inputs or []:
            if same_file(path / name, src):
                raise UserError(
                    f"{option} {path}: writing {path / name} would overwrite the input {src}; "
                    "choose another output location"
                )
    return path


def check_output_file(path: str | os.PathLike, option: str, inputs: list[str | os.PathLike] | None = None) -> Path:
    """Checks, before any work: the file ``path`` can be written and is none of ``inputs``."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{option} {path}: is a directory, expected a file name")
    _creatable_dir(path.parent, option, shown=path)
    if path.exists() and not os.access(path, os.W_OK):
        raise UserError(f"{option} {path}: exists and is not writable")
    for src in inputs or []:
        if same_file(path, src):
            raise UserError(f"{option} {path}: would overwrite the input {src}; choose another output file")
    return path


def check_device(name: str, option: str = "--device"):
    """'auto', 'cpu', 'cuda' or 'cuda:N' -> torch.device; asking for a GPU that is not there
    is a user error."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise UserError(f"{option} {name}: not a device; use cpu, cuda, cuda:N or auto") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"{option} {name}: CUDA is not available on this machine (no GPU or no CUDA "
                            "build of torch); use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UserError(f"{option} {name}: only {torch.cuda.device_count()} GPU(s) visible")
    elif device.type != "cpu":
        raise UserError(f"{option} {name}: unsupported device; use cpu, cuda, cuda:N or auto")
    return device
