"""Atomic output directories: a stage writes into a temporary sibling and renames it into place,
so a retried or cleared task never sees half a result."""

from __future__ import annotations

import shutil
import uuid
from contextlib import contextmanager
from pathlib import Path
from fgpo_tasks import jsonio
from typing import Iterator


@contextmanager
def atomic_dir(out_dir: str | Path) -> Iterator[Path]:
    """Yield a fresh temporary folder; on success it replaces ``out_dir``, on error it vanishes."""
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out.exists():
        old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
        out.rename(old)
        tmp.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(out)


# A step of a run is done when its step.json exists: written last, by rename, so a retried or
# cleared task finds either the whole result or nothing.
STEP_FILE = "step.json"


def step_result(step_dir: str | Path) -> dict | None:
    """The committed result of a step, or None when the step has not finished."""
    import json

    marker = Path(step_dir) / STEP_FILE
    return json.loads(marker.read_text()) if marker.is_file() else None


def commit_step(step_dir: str | Path, result: dict) -> dict:
    """Record a finished step's result atomically; return it."""
    import json

    step_dir = Path(step_dir)
    step_dir.mkdir(parents=True, exist_ok=True)
    tmp = step_dir / (STEP_FILE + ".tmp")
    tmp.write_text(jsonio.dumps(result, indent=2, default=str))
    tmp.rename(step_dir / STEP_FILE)
    return result


def safe_name(key: str) -> str:
    """A run key as a folder name (Airflow run ids carry ':' and '+')."""
    return "".join(c if c.isalnum() or c in "-_.+" else "_" for c in key)
