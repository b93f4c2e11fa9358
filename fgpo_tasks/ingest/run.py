"""run_ingest: sources in several formats -> one aggregated pair directory + quarantine."""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

import pandas as pd
import pyarrow.compute as pc
from tqdm.auto import tqdm

from fgpo_tasks import contract
from fgpo_tasks.config import from_dict, to_dict
from fgpo_tasks import jsonio
from fgpo_tasks.errors import ConfigError, FgpoError, format_location
from fgpo_tasks.ingest.adapters import (GROUPED_FORMATS, Context, RatedResponse, RowError,
                                        pair_rated_table, parse_row)
from fgpo_tasks.ingest.config import FORMATS, IngestConfig
from fgpo_tasks.ingest.readers import Rejected, Source, read_rows, resolve_source, row_raw
from fgpo_tasks.provenance import file_fingerprint
from fgpo_tasks.storage import atomic_dir

log = logging.getLogger(__name__)

QUARANTINE_FILE = "quarantine.parquet"
REPORT_FILE = "ingest_report.json"  # written instead of pairs.parquet + manifest.json on failure
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


class IngestFailed(FgpoError):
    """No pair accepted, or too many rows quarantined: the report is written, no pairs.parquet."""

    def __init__(self, message: str, summary: dict):
        super().__init__(message)
        self.summary = summary


def _check_format_config(fmt: str, config: IngestConfig) -> None:
    if fmt == "trl" and not (config.aspect or config.aspect_column):
        raise ConfigError(f"format {fmt!r} needs the pair's aspect: pass --aspect A (one for all "
                          "rows) or set aspect_column in the config")
    if fmt == "generic" and not (config.aspect or config.aspect_column or config.aspect_from_file_name):
        raise ConfigError(f"format {fmt!r} needs the pair's aspect: pass --aspect A (one for all "
                          "rows), or set aspect_column or aspect_from_file_name: true")


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

    pairs: list[dict] = []  # rows of the formats that give pairs, since the last table part
    parts: list = []        # the pair table in order: Arrow parts
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
                if out and isinstance(out[0], RatedResponse):
                    rated += out
                else:
                    pairs += out
                    stats["pairs"] += len(out)
            files.append(stats)
            inputs.append(_input_record(src, fmt, sf, hub))
        if fmt in GROUPED_FORMATS and rated:
            got, pairing[src.arg] = pair_rated_table(
                rated, batch_id=batch_id, min_margin=config.min_margin,
                max_pairs_per_prompt=config.max_pairs_per_prompt, lower_is_better=config.lower_is_better)
            del rated
            if pairs:
                parts.append(contract.to_arrow(contract.frame(pairs)))
                pairs = []
            parts.append(got)
            per_source = {d["values"]: d["counts"] for d in pc.value_counts(got.column("source")).to_pylist()}
            for stats, sf in zip(files[-len(src.files):], src.files):
                stats["pairs"] += per_source.get(f"{fmt}:{sf.rel}", 0)

    if len(rejected) > MAX_LOGGED:
        log.warning("%d more quarantined rows not logged one by one (see %s)",
                    len(rejected) - MAX_LOGGED, QUARANTINE_FILE)
    if pairs or not parts:
        parts.append(contract.to_arrow(contract.frame(pairs)))
    df = contract.concat_pair_tables(parts)  # the pool as Arrow: no Python row per pair
    del parts, pairs
    quarantine = quarantine_frame(rejected)
    totals = {k: sum(f[k] for f in files) for k in ("rows_in", "rows_accepted", "rows_quarantined")}
    assert totals["rows_in"] == totals["rows_accepted"] + totals["rows_quarantined"], totals
    reasons = dict(sorted(Counter(r.kind for r in rejected).items()))
    duplicates = int(len(df) - pc.count_distinct(df.column("pair_id")).as_py()) if len(df) else 0
    if duplicates:
        log.warning("%d pairs repeat an earlier pair_id (same prompt, responses and aspect)", duplicates)
    fraction = totals["rows_quarantined"] / totals["rows_in"] if totals["rows_in"] else 0.0
    summary = {**totals, "pairs": int(len(df)), "quarantine_fraction": fraction,
               "max_quarantine_fraction": config.max_quarantine_fraction,
               "quarantine_reasons": reasons, "top_reasons": top_reasons(rejected),
               "duplicate_pair_ids": duplicates, "files": files, "pairing": pairing}
    if not len(df) or fraction > config.max_quarantine_fraction:
        summary["status"] = "failed"
        message = failure_line(list(sources), formats, summary, config, Path(out_dir))
        with atomic_dir(out_dir) as tmp:
            contract.write_pair_table(quarantine, tmp, QUARANTINE_FILE)
            jsonio.write_json(tmp / REPORT_FILE, {"status": "failed", "error": message,
                                                  "created_at": created_at, "inputs": inputs,
                                                  "config": to_dict(config), "ingest": summary})
        raise IngestFailed(message, summary)
    manifest = contract.write_pairs(df, out_dir, stage="ingest", config=to_dict(config),
                                    created_at=created_at, inputs=inputs, extra={"ingest": summary},
                                    extra_files={QUARANTINE_FILE: quarantine})
    log.info("ingest: %d pairs from %d rows (%d quarantined) -> %s", len(df), totals["rows_in"],
             totals["rows_quarantined"], out_dir)
    return {"out_dir": str(out_dir), "pairs": int(len(df)),
            "per_aspect": manifest["row_counts"]["per_aspect"], **totals,
            "quarantine_reasons": reasons, "duplicate_pair_ids": duplicates}


def top_reasons(rejected: list[Rejected], n: int = 3) -> list[dict]:
    """The most frequent (kind, field) of the quarantined rows, with the first example."""
    counts = Counter((r.kind, r.field) for r in rejected)
    first = {}
    for r in rejected:
        first.setdefault((r.kind, r.field), r)
    return [{"kind": k, "field": f, "rows": c, "reason": first[(k, f)].reason,
             "example": format_location(first[(k, f)].file.display, first[(k, f)].line, f).rstrip(": ")}
            for (k, f), c in counts.most_common(n)]


def _hint(summary: dict, formats: list[str], config: IngestConfig) -> str:
    """What to try, from the most frequent reason (or from the pairing when nothing was quarantined)."""
    top = summary["top_reasons"][0] if summary["top_reasons"] else None
    fmts = sorted(set(formats))
    if top is None:
        if summary["pairs"] == 0 and set(fmts) & set(GROUPED_FORMATS):
            return (f"no two responses to one prompt differ by min_margin={config.min_margin} on a "
                    "rated aspect: lower min_margin (--set min_margin=0.5) or check 'aspects'")
        return "check --format and the column mapping (fgpo ingest --help)"
    kind, fld = top["kind"], top["field"] or ""
    if summary["pairs"] and summary["quarantine_fraction"] > config.max_quarantine_fraction:
        tail = (f"; or, if that is expected, --set max_quarantine_fraction="
                f"{min(1.0, round(summary['quarantine_fraction'] + 0.05, 2))}")
    else:
        tail = ""
    if kind == "missing_field" and ("score" in fld or "rating" in fld):
        return (f"the rows have no {fld!r}: map the rating columns, e.g. --set "
                "chosen_rating_columns='{overall: metadata.rating_chosen}' --set "
                "rejected_rating_columns='{overall: metadata.rating_rejected}' (dotted paths reach "
                "nested fields), or drop the rating mapping" + tail)
    if kind == "missing_field":
        return (f"the rows have no {fld!r}: check --format ({', '.join(fmts)}), or map the column "
                "with --set columns='{...}' (dotted paths such as metadata.prompt reach nested "
                "fields)" + tail)
    if kind in ("unknown_aspect", "aspect_mismatch", "ambiguous_aspect"):
        return ("name the files '<aspect>_*.jsonl', or pass --aspect A, or --set "
                "aspect_map='{FILE_STEM: ASPECT}'" + tail)
    if kind in ("malformed_json", "invalid_utf8", "not_an_object", "malformed_csv"):
        return "check the file is UTF-8 JSON Lines (one object a line), CSV with a header, or Parquet" + tail
    if kind == "row_too_large":
        return f"raise max_row_bytes (now {config.max_row_bytes})" + tail
    return f"check --format ({', '.join(fmts)}) against the row shapes in docs/formats.md" + tail


def failure_line(sources: list[str], formats: list[str], summary: dict, config: IngestConfig,
                 out_dir: Path) -> str:
    """One line: the source, rows read, the top quarantine reasons and what to try."""
    what = sources[0] if len(sources) == 1 else f"{len(sources)} sources ({', '.join(sources[:3])}" \
        + (", ..." if len(sources) > 3 else "") + ")"
    if summary["pairs"] == 0:
        why = "no pair accepted"
    else:
        why = (f"{summary['quarantine_fraction']:.0%} of rows quarantined, over "
               f"max_quarantine_fraction={config.max_quarantine_fraction}")
    reasons = "; ".join(f"{t['kind']}" + (f" {t['field']!r}" if t["field"] else "") + f" x{t['rows']}"
                        for t in summary["top_reasons"]) or "none quarantined"
    return (f"ingest failed: {what}: {why}: read {summary['rows_in']} rows, "
            f"{summary['rows_accepted']} accepted, {summary['rows_quarantined']} quarantined "
            f"({reasons}), {summary['pairs']} pairs; try: {_hint(summary, formats, config)}; "
            f"details: {out_dir / QUARANTINE_FILE}")


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
