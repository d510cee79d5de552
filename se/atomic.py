"""THE atomic file writer of the code base.

    atomic_write(path, write)        write(f) fills a binary file object
    atomic_write_bytes(path, data)
    atomic_write_text(path, text)    UTF-8
    publish(src, dst)                rename a finished file or folder into place

A file is written to a hidden temporary sibling (``.NAME.XXXXXXXX.tmp``), flushed and fsynced,
renamed over ``path``, and the directory is fsynced, so after a crash ``path`` holds either the
old or the new content, never a part. On any error the temporary file is removed and ``path``
is as it was. The new file has the permissions ``open()`` gives (0666 less the umask: 0644 under
umask 022), not the 0600 of ``tempfile.mkstemp``.

No torch here: the tools that only write text, audio or tables start without importing it
(``se.checkpoint.atomic_torch_save`` builds on ``atomic_write``). Shell steps use the CLI:

    some_command | python -m se.atomic OUT     # stdin -> OUT, atomically
"""

from __future__ import annotations

import os
import secrets
import sys
from pathlib import Path
from typing import BinaryIO, Callable


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _create_temp(path: Path) -> Path:
    """A new hidden sibling of ``path``; mode 0666 is reduced by the umask as for open()."""
    while True:
        tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp"
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return tmp
        except FileExistsError:
            continue


def publish(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Rename a finished ``src`` (file or folder, same file system) to ``dst``, replacing a file
    there, and fsync ``dst``'s directory so the rename survives a crash."""
    dst = Path(dst)
    os.replace(src, dst)
    _fsync_dir(dst.parent)


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], object]) -> None:
    """``write(f)`` fills a temporary sibling of ``path`` that then replaces ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _create_temp(path)
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        publish(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def main(argv: list[str] | None = None) -> int:
    """``python -m se.atomic OUT``: standard input -> OUT, atomically (nothing written on error)."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1 or argv[0].startswith("-"):
        print("usage: some_command | python -m se.atomic OUT\n"
              "  writes standard input to OUT atomically (temp file, fsync, rename)\n"
              "e.g.: echo \"$cmdline\" | python -m se.atomic exp/x/scores/cmd", file=sys.stderr)
        return 1
    data = sys.stdin.buffer.read()
    try:
        atomic_write_bytes(argv[0], data)
    except OSError as exc:
        print(f"se.atomic: {argv[0]}: cannot write ({exc.strerror or exc})", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
