"""Atomic files and folders, and file locks: what every stage and cache writes with.

- ``atomic_dir``: a stage writes into a temporary sibling that replaces the output in one
  ``renameat2(RENAME_EXCHANGE)`` swap, so a reader sees the old folder or the new one, never a
  gap, and a crash leaves the output in place (a stale temporary sibling at most, removed by the
  next writer). Where the kernel cannot exchange, the old folder is moved aside first and a
  writer that finds only that ``.old-*`` sibling puts it back before anything else.
- ``atomic_write``: a file written to a unique temporary name, then ``os.replace``d.
- ``file_lock``: an ``fcntl`` lock on a small side file, exclusive for writers, shared for
  readers; the lock is released when the holder dies, so a crash never leaves it held.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import fcntl
import json
import os
import shutil
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from fgpo_tasks import jsonio
from fgpo_tasks.errors import FgpoError

_RENAME_EXCHANGE = 2
_AT_FDCWD = -100
_libc = None


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux renameat2); False where the call is unavailable."""
    global _libc
    try:
        if _libc is None:
            _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        fn = _libc.renameat2
    except (OSError, AttributeError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    rc = fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    return rc == 0


def _recover(out: Path) -> None:
    """A crash between the two renames of the fallback path left only ``.old-*``: restore it."""
    if out.exists():
        return
    olds = sorted(out.parent.glob(f".{out.name}.old-*"), key=lambda p: p.stat().st_mtime_ns)
    if olds:
        olds[-1].rename(out)


@contextmanager
def atomic_dir(out_dir: str | Path) -> Iterator[Path]:
    """Yield a fresh temporary folder; on success it replaces ``out_dir``, on error it vanishes."""
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    _recover(out)
    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if not out.exists():
        tmp.rename(out)
        return
    if _exchange(tmp, out):  # out is the new folder now; tmp holds the old one
        shutil.rmtree(tmp, ignore_errors=True)
        return
    old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
    out.rename(old)
    tmp.rename(out)
    shutil.rmtree(old, ignore_errors=True)


def atomic_write(path: str | Path, data: str | bytes) -> Path:
    """Write a file under a unique temporary name, then rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    with open(tmp, "wb") as fh:
        fh.write(data.encode("utf-8") if isinstance(data, str) else data)
    os.replace(tmp, path)
    return path


@contextmanager
def file_lock(path: str | Path, shared: bool = False, timeout: float | None = None) -> Iterator[Path]:
    """Hold an flock on ``path`` (created if missing): exclusive, or ``shared`` among readers.
    ``timeout`` seconds (None: wait as long as it takes) before an FgpoError names the file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
    with open(path, "a+") as fh:
        if timeout is None:
            fcntl.flock(fh, mode)
        else:
            deadline = time.monotonic() + timeout
            while True:
                try:
                    fcntl.flock(fh, mode | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise FgpoError(f"{path}: still locked by another process after {timeout}s") from None
                    time.sleep(0.05)
        try:
            yield path
        finally:
            with contextlib.suppress(OSError):
                fcntl.flock(fh, fcntl.LOCK_UN)


# A run's record of one step (which stage output it used) is a JSON file written last, by rename,
# so a retried or cleared task finds either the whole record or nothing.
STEP_FILE = "step.json"


def step_result(step_dir: str | Path) -> dict | None:
    """The committed result of a step, or None when the step has not finished."""
    marker = Path(step_dir) / STEP_FILE
    return json.loads(marker.read_text()) if marker.is_file() else None


def commit_step(step_dir: str | Path, result: dict) -> dict:
    """Record a finished step's result atomically; return it."""
    atomic_write(Path(step_dir) / STEP_FILE, jsonio.dumps(result, indent=2, default=str))
    return result


def safe_name(key: str) -> str:
    """A run key as a folder name (Airflow run ids carry ':' and '+')."""
    return "".join(c if c.isalnum() or c in "-_.+" else "_" for c in key)
