"""Versions, git sha and command line, written into experiment dirs and RESULTS.md."""

from __future__ import annotations

import datetime
import platform
import subprocess
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def git_sha(repo: Path = REPO) -> str:
    """``git describe --always --dirty --abbrev=12``, or 'unknown' outside a git checkout."""
    try:
        out = subprocess.run(
            ["git", "-C", str(repo), "describe", "--always", "--dirty", "--abbrev=12"],
            capture_output=True, text=True, timeout=10,
        )
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def versions(packages=("torch", "torchaudio", "numpy", "pesq", "pystoi", "soundfile")) -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in packages:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def write_provenance(path: str | Path, argv: list[str]) -> None:
    import shlex

    import yaml

    from se.atomic import atomic_write_text

    info = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": " ".join(shlex.quote(a) for a in argv),
        "git": git_sha(),
        "host": platform.node(),
        "versions": versions(),
    }
    atomic_write_text(path, yaml.safe_dump(info, sort_keys=False))
