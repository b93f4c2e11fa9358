"""The data contract: one table of labelled preference pairs, stored as Parquet + manifest.json.

A pair directory holds ``pairs.parquet`` and ``manifest.json``. Columns (docs/data-contract.md):

=================== ============================ ===============================================
column              type                          meaning
=================== ============================ ===============================================
pair_id             string                        sha256 of (prompt, chosen, rejected, aspect)
prompt              string                        the prompt as text (a conversation rendered)
prompt_messages     list<{role, content}> | null  the conversation, when the prompt is one
chosen              string                        the response preferred on ``aspect``
rejected            string                        the other response
aspect              string                        the ONE aspect this pair is labelled on
source              string                        where the pair came from (adapter:path)
batch_id            string                        the annotation batch it arrived in
ratings_chosen      struct<aspect: float> | null  every aspect's rating of ``chosen``, if known
ratings_rejected    struct<aspect: float> | null  the same for ``rejected``
source_line         int64 | null                  1-based line/row in the source file, if any
=================== ============================ ===============================================
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any, Iterable

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from fgpo_tasks import jsonio
from fgpo_tasks.errors import FgpoError
from fgpo_tasks.provenance import code_version, sha256_hex, stable_json
from fgpo_tasks.storage import atomic_dir

PAIRS_FILE = "pairs.parquet"
MANIFEST_FILE = "manifest.json"

REQUIRED_COLUMNS = ["pair_id", "prompt", "chosen", "rejected", "aspect", "source", "batch_id"]
OPTIONAL_COLUMNS = ["prompt_messages", "ratings_chosen", "ratings_rejected", "source_line"]
COLUMNS = REQUIRED_COLUMNS[:5] + ["prompt_messages"] + REQUIRED_COLUMNS[5:] + OPTIONAL_COLUMNS[1:]

MESSAGE_TYPE = pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))


def prompt_key(prompt: str, prompt_messages: list[dict] | None = None) -> str:
    """The identity of a prompt: its conversation when it has one, else its text."""
    if prompt_messages:
        return stable_json([{"role": m["role"], "content": m["content"]} for m in prompt_messages])
    return prompt


def pair_id(prompt: str, chosen: str, rejected: str, aspect: str,
            prompt_messages: list[dict] | None = None) -> str:
    """Stable id of a labelled pair: the same texts and aspect always give the same id."""
    return sha256_hex(prompt_key(prompt, prompt_messages), chosen, rejected, aspect)[:32]


def render_messages(messages: list[dict]) -> str:
    """A conversation as readable text; a lone user turn renders as its content alone."""
    if len(messages) == 1 and messages[0]["role"] == "user":
        return messages[0]["content"]
    return "\n\n".join(f"{m['role']}: {m['content']}" for m in messages)


def make_pair(*, prompt: str | list[dict], chosen: str, rejected: str, aspect: str, source: str,
              batch_id: str, ratings_chosen: dict[str, float] | None = None,
              ratings_rejected: dict[str, float] | None = None,
              source_line: int | None = None) -> dict[str, Any]:
    """One contract row. ``prompt`` is text, or a conversation as a list of {role, content}."""
    messages = None
    if isinstance(prompt, list):
        messages = [{"role": str(m["role"]), "content": str(m["content"])} for m in prompt]
        prompt = render_messages(messages)
    return {
        "pair_id": pair_id(prompt, chosen, rejected, aspect, messages),
        "prompt": prompt,
        "prompt_messages": messages,
        "chosen": chosen,
        "rejected": rejected,
        "aspect": aspect,
        "source": source,
        "batch_id": batch_id,
        "ratings_chosen": ratings_chosen,
        "ratings_rejected": ratings_rejected,
        "source_line": source_line,
    }


def frame(rows: Iterable[dict] | pd.DataFrame) -> pd.DataFrame:
    """Rows (or a frame) as a DataFrame with every contract column, in contract order."""
    df = rows.copy() if isinstance(rows, pd.DataFrame) else pd.DataFrame(list(rows))
    for col in COLUMNS:
        if col not in df.columns:
            df[col] = None
    extra = [c for c in df.columns if c not in COLUMNS]
    return df[COLUMNS + extra].reset_index(drop=True)


def rating_aspects(df: pd.DataFrame) -> list[str]:
    """Sorted names of every aspect that appears in the ratings columns."""
    names: set[str] = set()
    for col in ("ratings_chosen", "ratings_rejected"):
        if col in df.columns:
            for r in df[col]:
                if isinstance(r, dict):
                    names.update(k for k, v in r.items() if v is not None)
    return sorted(names)


def _clean_ratings(value, aspects: list[str]):
    if not isinstance(value, dict):
        return None
    out = {a: (None if value.get(a) is None or (isinstance(value.get(a), float) and math.isnan(value[a]))
               else float(value[a])) for a in aspects}
    return out if any(v is not None for v in out.values()) else None


def to_arrow(df: pd.DataFrame) -> pa.Table:
    """The contract's Arrow table: ratings become a struct with one float field per aspect."""
    df = frame(df)
    aspects = rating_aspects(df)
    ratings_type = pa.struct([(a, pa.float64()) for a in aspects]) if aspects else pa.null()  # Parquet cannot store an empty struct
    fields, arrays = [], []
    for col in df.columns:
        values = df[col].tolist()
        if col in ("ratings_chosen", "ratings_rejected"):
            typ = ratings_type
            values = [_clean_ratings(v, aspects) for v in values] if aspects else [None] * len(values)
        elif col == "prompt_messages":
            typ = MESSAGE_TYPE
            values = [list(v) if isinstance(v, (list, tuple)) or hasattr(v, "tolist") else None
                      for v in values]
            values = [v.tolist() if hasattr(v, "tolist") else v for v in values]
        elif col == "source_line":
            typ = pa.int64()
            values = [None if v is None or (isinstance(v, float) and math.isnan(v)) else int(v) for v in values]
        elif col in COLUMNS:
            typ = pa.string()
        else:
            arrays.append(pa.array(values, from_pandas=True))
            fields.append(pa.field(col, arrays[-1].type))
            continue
        arrays.append(pa.array(values, type=typ, from_pandas=True))
        fields.append(pa.field(col, typ))
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields))


def from_arrow(table: pa.Table) -> pd.DataFrame:
    """Back to a DataFrame with plain Python values (dicts, lists, None) in nested columns."""
    data = {name: table.column(name).to_pylist() for name in table.column_names}
    df = pd.DataFrame(data)
    for col in ("ratings_chosen", "ratings_rejected"):
        if col in df.columns:
            df[col] = [({k: v for k, v in r.items() if v is not None} or None) if isinstance(r, dict) else None
                       for r in df[col]]
    return df


def content_fingerprint(df: pd.DataFrame | pa.Table) -> str:
    """sha256 of the contract columns, independent of row order.

    The rows are sorted, then hashed as an Arrow IPC stream: ~100x faster than hashing each row's
    JSON, and as stable, since ``to_arrow`` fixes every column's type and the ratings' field order.
    """
    table = df if isinstance(df, pa.Table) else to_arrow(df)
    table = table.select([c for c in COLUMNS if c in table.column_names])
    if table.num_rows:
        keys = [c for c in ("pair_id", "source", "batch_id", "source_line", "prompt", "chosen", "rejected")
                if c in table.column_names]
        table = table.sort_by([(k, "ascending") for k in keys])
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table, max_chunksize=1 << 16)
    return hashlib.sha256(sink.getvalue().to_pybytes()).hexdigest()


def counts(df: pd.DataFrame) -> dict[str, Any]:
    """Row counts for a manifest: total and per aspect."""
    per_aspect = df["aspect"].value_counts().sort_index() if len(df) else pd.Series(dtype=int)
    return {"total": int(len(df)), "per_aspect": {str(k): int(v) for k, v in per_aspect.items()}}


def build_manifest(df: pd.DataFrame, *, stage: str, config: dict | None, created_at: str,
                   inputs: list | None = None, extra: dict | None = None,
                   table: pa.Table | None = None) -> dict[str, Any]:
    """The self-description written beside every pair table (``table``: its Arrow form, if built)."""
    return {
        "kind": "fgpo.pairs",
        "stage": stage,
        "created_at": created_at,
        "code_version": code_version(),
        "fingerprint": content_fingerprint(table if table is not None else df),
        "row_counts": counts(df),
        "rating_aspects": rating_aspects(df),
        "columns": list(frame(df).columns),
        "config": config or {},
        "inputs": inputs or [],
        **(extra or {}),
    }


def write_manifest(out_dir: Path, manifest: dict) -> None:
    (Path(out_dir) / MANIFEST_FILE).write_text(jsonio.dumps(manifest, indent=2, sort_keys=False, default=str) + "\n")


def write_pair_table(df: pd.DataFrame, directory: Path, name: str = PAIRS_FILE) -> None:
    pq.write_table(to_arrow(df), Path(directory) / name, compression="zstd")


def write_pairs(df: pd.DataFrame, out_dir: str | Path, *, stage: str, config: dict | None,
                created_at: str, inputs: list | None = None, extra: dict | None = None,
                extra_files: dict[str, pd.DataFrame] | None = None) -> dict[str, Any]:
    """Write a pair directory atomically (a reader never sees half of it); return its manifest."""
    df = frame(df)
    table = to_arrow(df)
    manifest = build_manifest(df, stage=stage, config=config, created_at=created_at,
                              inputs=inputs, extra=extra, table=table)
    with atomic_dir(out_dir) as tmp:
        pq.write_table(table, tmp / PAIRS_FILE, compression="zstd")
        for fname, extra_df in (extra_files or {}).items():
            pq.write_table(pa.Table.from_pandas(extra_df, preserve_index=False), tmp / fname)
        write_manifest(tmp, manifest)
    return manifest


def read_manifest(directory: str | Path) -> dict[str, Any]:
    path = Path(directory) / MANIFEST_FILE
    if not path.is_file():
        raise FgpoError(f"{directory}: not an fgpo data directory (no {MANIFEST_FILE})")
    return json.loads(path.read_text())


def read_pairs(directory: str | Path) -> pd.DataFrame:
    """Read the pair table of a directory written by ``write_pairs``."""
    path = Path(directory) / PAIRS_FILE
    if not path.is_file():
        raise FgpoError(f"{directory}: not an fgpo data directory (no {PAIRS_FILE})")
    return frame(from_arrow(pq.read_table(path)))
