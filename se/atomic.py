"""THE atomic file writer of the code base (no torch: the tools that only write text, audio or
tables start without importing it). ``se.checkpoint`` re-exports these and adds
``atomic_torch_save``."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _atomic(path: str | Path, write) -> None:
    """THE atomic writer of the code base: ``write(f)`` fills a temporary sibling file, which is
    synced and renamed over ``path``; on any error the temporary file is removed and ``path``
    is as it was. The file gets the usual permissions (0666 minus the umask, as open() gives),
    not mkstemp's 0600."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


atomic_write = _atomic


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    _atomic(path, lambda f: f.write(data))


def atomic_write_text(path: str | Path, text: str) -> None:
    _atomic(path, lambda f: f.write(text.encode("utf-8")))
