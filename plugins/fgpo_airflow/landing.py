"""Annotation batches in the landing folder -> ANNOTATION_BATCHES asset events.

A batch is a data file the ingest stage can read (same rules: known extension, no dot-file or
dot-folder), anywhere under the landing folder. Writers must make a batch appear atomically
(write ``.name.jsonl`` or ``name.jsonl.tmp``, then rename): a file is taken as soon as it is seen.
Landed files are raw data and are never modified or deleted here.
"""

from __future__ import annotations

from typing import Any


def landed_batches(landing_dir: str, fmt: str) -> list[str]:
    """Every batch file under ``landing_dir`` (sorted absolute paths; empty if none or absent)."""
    from pathlib import Path

    from fgpo_tasks.errors import InputError
    from fgpo_tasks.ingest.readers import resolve_source

    if not Path(landing_dir).is_dir():
        return []
    try:
        source = resolve_source(landing_dir, fmt)
    except InputError:  # a folder with no data file yet
        return []
    return sorted(str(Path(f.path).resolve()) for f in source.files)


def batches_event(landing_dir: str, fmt: str, landed: list[str], previous: dict | None) -> dict | None:
    """The extra of the next asset event, or None when nothing new landed since ``previous``."""
    seen = set((previous or {}).get("batches", []))
    new = [p for p in landed if p not in seen]
    if not new:
        return None
    return {"landing_dir": landing_dir, "format": fmt, "batches": landed, "new": new}


def previous_event(inlet_events: Any, asset: Any) -> dict | None:
    """The extra of the asset's latest event (any producer), None if it has none."""
    try:
        event = inlet_events[asset][-1]
    except (IndexError, KeyError):
        return None
    return dict(event.extra or {})


def skip_reason(landing_dir: str, fmt: str, landed: list[str], previous: dict | None) -> str:
    """Why no event is emitted: the folder is missing, holds no batch of the format, or every
    batch was reported already."""
    from pathlib import Path

    if not Path(landing_dir).is_dir():
        return f"landing folder {landing_dir} does not exist (Variable fgpo_landing_dir)"
    if not landed:
        return (f"no batch file in {landing_dir} that format {fmt!r} reads (dot-files and *.tmp are "
                "ignored until renamed)")
    return (f"no new batch in {landing_dir}: all {len(landed)} landed batch(es) were reported by the "
            f"previous event ({len((previous or {}).get('batches', []))} batches)")
