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

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
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


class _HashSink:
    """A write-only file that feeds what is written to sha256 (nothing is kept)."""

    def __init__(self):
        self.hash = hashlib.sha256()
        self.closed = False

    def write(self, data) -> int:
        self.hash.update(data)
        return len(data)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True


FINGERPRINT_BATCH = 1 << 16  # rows per hashed record batch


def content_fingerprint(df: pd.DataFrame | pa.Table) -> str:
    """sha256 of the contract columns, independent of row order.

    The rows are sorted, then hashed as an Arrow IPC stream of FINGERPRINT_BATCH-row record
    batches: ~100x faster than hashing each row's JSON, and as stable, since ``to_arrow`` fixes
    every column's type and the ratings' field order. Streaming: only the sort order and one batch
    at a time are held (the stream is fed to the hash as it is written, never kept whole).
    """
    table = normalize_table(df if isinstance(df, pa.Table) else to_arrow(df))
    table = table.select([c for c in COLUMNS if c in table.column_names])
    sink = _HashSink()
    with pa.ipc.new_stream(pa.PythonFile(sink, mode="w"), table.schema) as writer:
        if table.num_rows:
            keys = [c for c in ("pair_id", "source", "batch_id", "source_line", "prompt", "chosen",
                                "rejected") if c in table.column_names]
            order = pc.sort_indices(table.select(keys), sort_keys=[(k, "ascending") for k in keys])
            for start in range(0, table.num_rows, FINGERPRINT_BATCH):
                part = table.take(order.slice(start, FINGERPRINT_BATCH))
                for batch in part.combine_chunks().to_batches():
                    writer.write_batch(batch)
    return sink.hash.hexdigest()


def data_fingerprint(directory: str | Path, table: pd.DataFrame | pa.Table | None = None) -> str:
    """The content fingerprint of a pair directory: the one its manifest records (computed once,
    when the table was written), else computed from ``table`` (or the stored pairs)."""
    path = Path(directory) / MANIFEST_FILE
    if path.is_file():
        fp = json.loads(path.read_text()).get("fingerprint")
        if fp:
            return fp
    return content_fingerprint(table if table is not None else read_pair_table(directory))


def counts(df: pd.DataFrame | pa.Table) -> dict[str, Any]:
    """Row counts for a manifest: total and per aspect."""
    if isinstance(df, pa.Table):
        vc = pc.value_counts(df.column("aspect")).to_pylist() if df.num_rows else []
        per = sorted((str(d["values"]), int(d["counts"])) for d in vc)
        return {"total": int(df.num_rows), "per_aspect": dict(per)}
    per_aspect = df["aspect"].value_counts().sort_index() if len(df) else pd.Series(dtype=int)
    return {"total": int(len(df)), "per_aspect": {str(k): int(v) for k, v in per_aspect.items()}}


def table_rating_aspects(table: pa.Table) -> list[str]:
    """Sorted names of the ratings' aspects that hold at least one rating in ``table``."""
    names: set[str] = set()
    for col in ("ratings_chosen", "ratings_rejected"):
        if col not in table.column_names or not pa.types.is_struct(table.schema.field(col).type):
            continue
        column = table.column(col)
        for i, f in enumerate(column.type):
            if f.name not in names and any(chunk.field(i).null_count < len(chunk)
                                           for chunk in column.chunks if len(chunk)):
                names.add(f.name)
    return sorted(names)


def _ratings_struct(column: pa.ChunkedArray, aspects: list[str]) -> pa.Array:
    """The ratings column with fields ``aspects`` (float64, sorted), null where none is rated."""
    column = column.combine_chunks()
    if not aspects:
        return pa.nulls(len(column))
    names = {f.name for f in column.type} if pa.types.is_struct(column.type) else set()
    parent = pc.is_valid(column)
    children = []
    for a in aspects:
        child = (pc.struct_field(column, a).cast(pa.float64()) if a in names
                 else pa.nulls(len(column), pa.float64()))
        children.append(pc.if_else(parent, child, pa.scalar(None, pa.float64())))
    rated = pc.is_valid(children[0])
    for child in children[1:]:
        rated = pc.or_(rated, pc.is_valid(child))
    return pa.StructArray.from_arrays(children, names=aspects, mask=pc.invert(rated))


def normalize_table(table: pa.Table) -> pa.Table:
    """``table`` with its ratings columns as ``to_arrow`` writes them: one float field per aspect
    rated anywhere in the table (sorted), the struct null where a response has no rating; the
    messages with the contract's list type. So an Arrow table and the same rows read back as a
    frame have one fingerprint."""
    aspects = table_rating_aspects(table)
    if "prompt_messages" in table.column_names:
        typ = table.schema.field("prompt_messages").type
        if not pa.types.is_list(typ) or typ.value_field.name != "item" or typ != MESSAGE_TYPE:
            i = table.column_names.index("prompt_messages")  # Parquet names the list item 'element'
            table = table.set_column(i, pa.field("prompt_messages", MESSAGE_TYPE),
                                     table.column(i).cast(MESSAGE_TYPE))
    for col in ("ratings_chosen", "ratings_rejected"):
        if col in table.column_names:
            i = table.column_names.index(col)
            arr = _ratings_struct(table.column(col), aspects)
            table = table.set_column(i, pa.field(col, arr.type), arr)
    return table


def concat_pair_tables(tables: list[pa.Table]) -> pa.Table:
    """Contract tables one after the other, their ratings widened to every aspect of any."""
    tables = [conform_table(t).select(COLUMNS) for t in tables]
    if not tables:
        return to_arrow(frame([]))
    aspects = sorted({a for t in tables for a in table_rating_aspects(t)})
    out = []
    for t in tables:
        t = normalize_table(t)
        for col in ("ratings_chosen", "ratings_rejected"):
            i = t.column_names.index(col)
            arr = _ratings_struct(t.column(col), aspects)
            t = t.set_column(i, pa.field(col, arr.type), arr)
        out.append(t)
    return pa.concat_tables(out)


def conform_table(table: pa.Table) -> pa.Table:
    """``table`` with every contract column (missing ones as nulls of their type), in contract
    order, then any extra columns."""
    types = {"prompt_messages": MESSAGE_TYPE, "source_line": pa.int64(),
             "ratings_chosen": pa.null(), "ratings_rejected": pa.null()}
    for col in COLUMNS:
        if col not in table.column_names:
            table = table.append_column(col, pa.nulls(table.num_rows, types.get(col, pa.string())))
    extra = [c for c in table.column_names if c not in COLUMNS]
    return table.select(COLUMNS + extra)


def build_manifest(df: pd.DataFrame | pa.Table, *, stage: str, config: dict | None, created_at: str,
                   inputs: list | None = None, extra: dict | None = None,
                   table: pa.Table | None = None) -> dict[str, Any]:
    """The self-description written beside every pair table (``table``: its Arrow form, if built;
    ``df`` may be that Arrow table itself)."""
    if isinstance(df, pa.Table):
        table = conform_table(df)
        aspects, columns = table_rating_aspects(table), table.column_names
    else:
        aspects, columns = rating_aspects(df), list(frame(df).columns)
    return {
        "kind": "fgpo.pairs",
        "stage": stage,
        "created_at": created_at,
        "code_version": code_version(),
        "fingerprint": content_fingerprint(table if table is not None else df),
        "row_counts": counts(df),
        "rating_aspects": aspects,
        "columns": columns,
        "config": config or {},
        "inputs": inputs or [],
        **(extra or {}),
    }


def write_manifest(out_dir: Path, manifest: dict) -> None:
    (Path(out_dir) / MANIFEST_FILE).write_text(jsonio.dumps(manifest, indent=2, sort_keys=False, default=str) + "\n")


def write_pair_table(df: pd.DataFrame | pa.Table, directory: Path, name: str = PAIRS_FILE) -> None:
    table = conform_table(df) if isinstance(df, pa.Table) else to_arrow(df)
    pq.write_table(table, Path(directory) / name, compression="zstd")


def write_pairs(df: pd.DataFrame | pa.Table, out_dir: str | Path, *, stage: str, config: dict | None,
                created_at: str, inputs: list | None = None, extra: dict | None = None,
                extra_files: dict[str, pd.DataFrame] | None = None) -> dict[str, Any]:
    """Write a pair directory atomically (a reader never sees half of it); return its manifest.
    ``df``: rows as a DataFrame, or the contract's Arrow table (written as it is, no Python rows)."""
    if isinstance(df, pa.Table):
        table = conform_table(df)
        manifest = build_manifest(table, stage=stage, config=config, created_at=created_at,
                                  inputs=inputs, extra=extra)
    else:
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


def read_pair_table(directory: str | Path, columns: list[str] | None = None) -> pa.Table:
    """The pair table of a directory as Arrow (no Python objects per row); ``columns``: only those."""
    path = Path(directory) / PAIRS_FILE
    if not path.is_file():
        raise FgpoError(f"{directory}: not an fgpo data directory (no {PAIRS_FILE})")
    return pq.read_table(path, columns=columns)


def take_rows(directory: str | Path, positions, columns, batch_rows: int = 65536) -> pd.DataFrame:
    """Rows at ``positions`` (file order, in the order given) of a directory's pair table, only
    ``columns``, streamed batch by batch: memory holds those rows, never the whole pool's texts."""
    path = Path(directory) / PAIRS_FILE
    if not path.is_file():
        raise FgpoError(f"{directory}: not an fgpo data directory (no {PAIRS_FILE})")
    want = np.asarray(positions, dtype=np.int64)
    order = np.argsort(want, kind="stable")
    parts, at = [], 0
    for batch in pq.ParquetFile(path).iter_batches(batch_size=batch_rows, columns=list(columns)):
        lo, hi = np.searchsorted(want[order], [at, at + batch.num_rows])
        if hi > lo:
            parts.append(batch.take(pa.array(want[order][lo:hi] - at)))
        at += batch.num_rows
    got = pa.Table.from_batches(parts, schema=parts[0].schema) if parts else None
    out = pd.DataFrame({c: (got.column(c).to_pylist() if got is not None else []) for c in columns})
    back = np.empty_like(order)
    back[order] = np.arange(len(order))
    return out.iloc[back].reset_index(drop=True)


def read_pairs(directory: str | Path) -> pd.DataFrame:
    """Read the pair table of a directory written by ``write_pairs``."""
    path = Path(directory) / PAIRS_FILE
    if not path.is_file():
        raise FgpoError(f"{directory}: not an fgpo data directory (no {PAIRS_FILE})")
    return frame(from_arrow(pq.read_table(path)))
