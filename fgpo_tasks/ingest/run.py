"""run_ingest: sources in several formats -> one aggregated pair directory + quarantine."""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

import pandas as pd
from tqdm.auto import tqdm

from fgpo_tasks import contract
from fgpo_tasks.config import from_dict, to_dict
from fgpo_tasks.errors import ConfigError, format_location
from fgpo_tasks.ingest.adapters import (GROUPED_FORMATS, Context, RowError, pair_rated_responses,
                                        parse_row)
from fgpo_tasks.ingest.config import FORMATS, IngestConfig
from fgpo_tasks.ingest.readers import Rejected, Source, read_rows, resolve_source, row_raw
from fgpo_tasks.provenance import file_fingerprint

log = logging.getLogger(__name__)

QUARANTINE_FILE = "quarantine.parquet"
QUARANTINE_COLUMNS = {"file": "string", "line": "Int64", "field": "string", "reason": "string",
                      "raw": "string", "kind": "string"}
MAX_LOGGED = 20  # quarantined rows logged one by one; the rest are counted


def source_formats(sources: list[str], formats: list[str]) -> list[str]:
    """One format per source: a single format applies to every source."""
    if not sources:
        raise ConfigError("no --source given")
    if len(formats) == 1:
        formats = formats * len(sources)
    if len(formats) != len(sources):
        raise ConfigError(f"give one --format for all sources or one per source; got "
                          f"{len(formats)} formats for {len(sources)} sources")
    for fmt in formats:
        if fmt not in FORMATS:
            raise ConfigError(f"Unknown format {fmt!r}; known formats: {', '.join(FORMATS)}")
    return formats


def _check_format_config(fmt: str, config: IngestConfig) -> None:
    if fmt in ("trl", "generic") and not (config.aspect or config.aspect_column):
        raise ConfigError(f"format {fmt!r} needs the pair's aspect: set aspect (one for all rows) "
                          "or aspect_column in the config")


def run_ingest(sources: list[str], formats: list[str], out_dir: str | Path, config: IngestConfig,
               created_at: str) -> dict:
    """Read every source with its format, write one pair directory (pairs.parquet, manifest.json,
    quarantine.parquet) to ``out_dir``; return counts. Rows in = accepted + quarantined."""
    formats = source_formats(list(sources), list(formats))
    for fmt in sorted(set(formats)):
        _check_format_config(fmt, config)
    # Resolve every source first: a missing path fails before any work is done.
    resolved = [resolve_source(s, f, config.hub_split) for s, f in zip(sources, formats)]
    hub = {"split": config.hub_split, "name": config.hub_name, "revision": config.hub_revision}

    pairs: list[dict] = []
    rejected: list[Rejected] = []
    files, inputs, pairing = [], [], {}
    for src, fmt in zip(resolved, formats):
        batch_id = config.batch_id or src.basename
        if fmt == "synthetic":
            got = _synthetic(src, config, batch_id)
            pairs += got
            files.append({"file": src.arg, "format": fmt, "source": src.arg, "batch_id": got[0]["batch_id"],
                          "rows_in": len(got), "rows_accepted": len(got), "rows_quarantined": 0,
                          "pairs": len(got)})
            inputs.append({"source": src.arg, "format": fmt, "synthetic": dict(config.synthetic)})
            continue
        ctx = Context(fmt, batch_id, config)
        rated = []
        for sf in src.files:
            stats = {"file": sf.display, "format": fmt, "source": src.arg, "batch_id": batch_id,
                     "rows_in": 0, "rows_accepted": 0, "rows_quarantined": 0, "pairs": 0}
            rows = read_rows(sf, config.max_row_bytes, hub)
            for item in tqdm(rows, desc=sf.rel or sf.display, unit=" rows", disable=None, leave=False):
                stats["rows_in"] += 1
                if not isinstance(item, Rejected):
                    try:
                        out = parse_row(item, ctx)
                    except RowError as e:
                        item = Rejected(sf, item.line, e.field, e.kind, e.reason, row_raw(item))
                if isinstance(item, Rejected):
                    stats["rows_quarantined"] += 1
                    _log_rejected(item, len(rejected))
                    rejected.append(item)
                    continue
                stats["rows_accepted"] += 1
                if fmt in GROUPED_FORMATS:
                    rated += out
                else:
                    pairs += out
                    stats["pairs"] += len(out)
            files.append(stats)
            inputs.append(_input_record(src, fmt, sf, hub))
        if fmt in GROUPED_FORMATS:
            got, pairing[src.arg] = pair_rated_responses(
                rated, batch_id=batch_id, min_margin=config.min_margin,
                max_pairs_per_prompt=config.max_pairs_per_prompt, lower_is_better=config.lower_is_better)
            pairs += got
            per_source = Counter(p["source"] for p in got)
            for stats, sf in zip(files[-len(src.files):], src.files):
                stats["pairs"] = per_source[f"{fmt}:{sf.rel}"]

    if len(rejected) > MAX_LOGGED:
        log.warning("%d more quarantined rows not logged one by one (see %s)",
                    len(rejected) - MAX_LOGGED, QUARANTINE_FILE)
    df = contract.frame(pairs)
    quarantine = quarantine_frame(rejected)
    totals = {k: sum(f[k] for f in files) for k in ("rows_in", "rows_accepted", "rows_quarantined")}
    assert totals["rows_in"] == totals["rows_accepted"] + totals["rows_quarantined"], totals
    reasons = dict(sorted(Counter(r.kind for r in rejected).items()))
    duplicates = int(df["pair_id"].duplicated().sum()) if len(df) else 0
    if duplicates:
        log.warning("%d pairs repeat an earlier pair_id (same prompt, responses and aspect)", duplicates)
    if not len(df):
        log.warning("no pairs were produced; see %s and the manifest's per-file counts", QUARANTINE_FILE)
    summary = {**totals, "pairs": int(len(df)), "quarantine_reasons": reasons,
               "duplicate_pair_ids": duplicates, "files": files, "pairing": pairing}
    manifest = contract.write_pairs(df, out_dir, stage="ingest", config=to_dict(config),
                                    created_at=created_at, inputs=inputs, extra={"ingest": summary},
                                    extra_files={QUARANTINE_FILE: quarantine})
    log.info("ingest: %d pairs from %d rows (%d quarantined) -> %s", len(df), totals["rows_in"],
             totals["rows_quarantined"], out_dir)
    return {"out_dir": str(out_dir), "pairs": int(len(df)),
            "per_aspect": manifest["row_counts"]["per_aspect"], **totals,
            "quarantine_reasons": reasons, "duplicate_pair_ids": duplicates}


def quarantine_frame(rejected: list[Rejected]) -> pd.DataFrame:
    """The rows that could not be used: file, line, field, reason, raw (first 2 KB), kind."""
    data = {"file": [r.file.display for r in rejected], "line": [r.line for r in rejected],
            "field": [r.field for r in rejected], "reason": [r.reason for r in rejected],
            "raw": [r.raw for r in rejected], "kind": [r.kind for r in rejected]}
    return pd.DataFrame({k: pd.Series(v, dtype=QUARANTINE_COLUMNS[k]) for k, v in data.items()})


def _log_rejected(r: Rejected, n_before: int) -> None:
    if n_before < MAX_LOGGED:
        log.warning("quarantined %s%s", format_location(r.file.display, r.line, r.field), r.reason)


def _input_record(src: Source, fmt: str, sf, hub: dict) -> dict:
    if sf.path is None:
        return {"source": src.arg, "format": fmt, "hub_dataset": sf.hub_id, **hub}
    return {"source": src.arg, "format": fmt, "file": sf.display, "sha256": file_fingerprint(sf.path)}


def _synthetic(src: Source, config: IngestConfig, batch_id: str) -> list[dict]:
    """The toy world's rows (fgpo_tasks.synthetic); the source argument only names the batch."""
    from fgpo_tasks import synthetic

    scfg = from_dict(synthetic.SyntheticConfig, config.synthetic, where="synthetic")
    if not config.batch_id and "batch_id" in config.synthetic:
        batch_id = scfg.batch_id
    rows = synthetic.generate(scfg)
    for r in rows:
        r["batch_id"], r["source"] = batch_id, f"synthetic:{src.arg}"
    return rows
