"""What every artifact records about itself: code version, content fingerprints, run time."""

from __future__ import annotations

import functools
import hashlib
import json
import subprocess
from datetime import datetime, timezone
from pathlib import Path

from fgpo_tasks import __version__


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """'<package version>+g<git sha>[.dirty]' inside a git checkout, else the package version."""
    repo = Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(["git", "-C", str(repo), "rev-parse", "--short=12", "HEAD"],
                             capture_output=True, text=True, timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return __version__
    return f"{__version__}+g{sha}" + (".dirty" if dirty else "")


def run_timestamp(value: str | None = None) -> str:
    """The run's timestamp, ISO-8601 UTC. Taken once at the edge (CLI, DAG run) and passed in:
    stage logic never calls now() itself, so re-running a stage for a run reproduces its output."""
    if value:
        return datetime.fromisoformat(value).astimezone(timezone.utc).isoformat(timespec="seconds")
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def stable_json(obj) -> str:
    """Canonical JSON (sorted keys, no whitespace) for hashing."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def sha256_hex(*parts: str) -> str:
    # each part followed by the unit separator: ("ab","c") and ("a","bc") hash differently
    return hashlib.sha256("".join([p + "\x1f" for p in parts]).encode("utf-8")).hexdigest()


def file_fingerprint(path: str | Path, chunk: int = 1 << 20) -> str:
    """sha256 of a file's bytes, or of every file's relative path and bytes under a folder."""
    path = Path(path)
    h = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for f in files:
        h.update(str(f.relative_to(path) if f != path else f.name).encode())
        with open(f, "rb") as fh:
            while block := fh.read(chunk):
                h.update(block)
    return h.hexdigest()
