"""The validation stage: check a pair table with a Great Expectations suite, quarantine bad rows.

Every row-level expectation runs once, on one pandas frame, through an ephemeral GX context:
required fields present and non-empty, chosen != rejected, aspect in the configured set, ratings
in range, no repeated pair_id (the first occurrence is kept), text length bounds. A row failing
any of them goes to ``quarantine.parquet`` with every reason it failed, and where it came from
(``source``, ``source_line``). The rest is written as a contract pair directory.

Table-level expectations (required columns exist; every aspect keeps at least
``min_pairs_per_aspect`` accepted pairs) and the quarantined fraction decide whether the step
passes. On failure the report files are still written to the output folder, but no
``pairs.parquet`` and no ``manifest.json``: the folder is not a pair directory, so no later stage
can read it as if it had passed.

Output folder: ``pairs.parquet`` + ``manifest.json`` (on success only), ``quarantine.parquet``,
``validation_result.json`` (every expectation's success and counts), ``validation_summary.json``,
``data_docs/index.html`` (GX's HTML data docs, unless ``data_docs: false``).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from fgpo_tasks import jsonio
from fgpo_tasks import contract
from fgpo_tasks.config import check, to_dict
from fgpo_tasks.errors import FgpoError
from fgpo_tasks.provenance import file_fingerprint
from fgpo_tasks.storage import atomic_dir

log = logging.getLogger(__name__)

ROW_SUITE = "fgpo_pairs_rows"
TABLE_SUITE = "fgpo_pairs_aspects"
TEXT_FIELDS = ("prompt", "chosen", "rejected")
QUARANTINE_FILE = "quarantine.parquet"
RESULT_FILE = "validation_result.json"
SUMMARY_FILE = "validation_summary.json"
DOCS_DIR = "data_docs"
REPORT_COLUMNS = ["input_row", "checks", "reason", "expectation"]  # added to the contract columns in quarantine

_ROW = "_row"  # position of a row in the input table: how GX results point back at rows
_SAME = "_chosen_equals_rejected"
_REPEAT = "_pair_id_repeats_earlier_row"
_CONTRA = "_contradictory_label"
_MAX_SHOWN_CHARS = 200  # long texts in the JSON report and data docs are cut to this


class ValidationFailed(FgpoError):
    """The table did not pass: too many rows quarantined or a table-level expectation failed.

    ``summary`` holds the same counts as ``validation_summary.json``.
    """

    def __init__(self, message: str, summary: dict[str, Any]):
        super().__init__(message)
        self.summary = summary


@dataclass
class ValidateConfig:
    aspects: list[str] = field(default_factory=list, metadata={
        "help": "the aspects a pair may be labelled on; empty: accept every aspect present"})
    rating_min: float | None = field(default=0.0, metadata={
        "help": "lowest allowed rating in ratings_chosen/ratings_rejected (null: no bound). "
                "0..5 covers HelpSteer (0-4) and UltraFeedback (1-5)"})
    rating_max: float | None = field(default=5.0, metadata={
        "help": "highest allowed rating (null: no bound)"})
    min_chars: int = field(default=1, metadata={
        "help": "shortest allowed prompt / chosen / rejected, in characters"})
    max_chars: int = field(default=50_000, metadata={
        "help": "longest allowed prompt / chosen / rejected, in characters (HelpSteer2's longest "
                "field is ~7k)"})
    min_pairs_per_aspect: int = field(default=10, metadata={
        "help": "table check: every aspect (configured or present) keeps at least this many "
                "accepted pairs, else the step fails"})
    max_quarantine_fraction: float = field(default=0.2, metadata={
        "help": "the step fails when more than this fraction of the input rows is quarantined"})
    data_docs: bool = field(default=True, metadata={
        "help": "build GX's HTML data docs into <out>/data_docs (~1 s, ~5 MB)"})

    def __post_init__(self):
        check(all(isinstance(a, str) and a.strip() for a in self.aspects),
              f"aspects must be non-empty names, got {self.aspects}")
        check(len(set(self.aspects)) == len(self.aspects),
              f"aspects must not repeat, got {self.aspects}")
        for name in ("rating_min", "rating_max"):
            value = getattr(self, name)
            check(value is None or math.isfinite(value), f"{name} must be finite or null, got {value}")
        if self.rating_min is not None and self.rating_max is not None:
            check(self.rating_min <= self.rating_max,
                  f"rating_min ({self.rating_min}) must be <= rating_max ({self.rating_max})")
        check(self.min_chars >= 0, f"min_chars must be >= 0, got {self.min_chars}")
        check(self.max_chars >= max(self.min_chars, 1),
              f"max_chars ({self.max_chars}) must be >= max(min_chars, 1) (min_chars={self.min_chars})")
        check(self.min_pairs_per_aspect >= 0,
              f"min_pairs_per_aspect must be >= 0, got {self.min_pairs_per_aspect}")
        check(0.0 <= self.max_quarantine_fraction <= 1.0,
              f"max_quarantine_fraction must be in [0, 1], got {self.max_quarantine_fraction}")


# ---------------------------------------------------------------------------------------------
# The frame GX sees: contract string columns plus vectorised helper columns.

def rating_column(which: str, aspect: str) -> str:
    """Name of the helper column holding ``ratings_<which>[aspect]`` (which: chosen/rejected)."""
    return f"ratings_{which}[{aspect}]"


def _rating_keys(df: pd.DataFrame) -> list[str]:
    keys: set[str] = set()
    for col in ("ratings_chosen", "ratings_rejected"):
        if col in df.columns:
            for r in df[col]:
                if isinstance(r, dict):
                    keys.update(r)
    return sorted(keys)


def _prompt_keys(raw: pd.DataFrame) -> pd.Series:
    """``contract.prompt_key`` of every row: the prompt text, or the conversation's canonical JSON
    (computed in Python only for the rows that have one)."""
    keys = raw["prompt"]
    if "prompt_messages" not in raw.columns:
        return keys
    msgs = raw["prompt_messages"]
    rows = [pos for pos, m in enumerate(msgs) if m is not None and not isinstance(m, float) and len(m)]
    if not rows:
        return keys
    keys = keys.copy()
    keys.iloc[rows] = [contract.prompt_key(raw["prompt"].iloc[pos], list(msgs.iloc[pos])) for pos in rows]
    return keys


def contradictory_labels(raw: pd.DataFrame) -> np.ndarray:
    """Rows whose label another row of the same aspect contradicts, as a boolean mask.

    Rows are compared on (aspect, prompt, unordered pair of responses); each row is one vote
    for its direction (which response is chosen). When both directions occur, the strict
    majority direction is kept and the minority rows are flagged; a tie flags every row of the
    group (no direction can be trusted). Rows of different aspects never contradict: a pair
    preferred one way on helpfulness and the other on verbosity is the fine-grained conflict the
    method is about, not a labelling error. Vectorised: one group-by over the key columns.
    """
    need = ("aspect", "prompt", "chosen", "rejected")
    if len(raw) == 0 or any(c not in raw.columns for c in need):
        return np.zeros(len(raw), dtype=bool)
    text = {c: raw[c].where(raw[c].map(lambda v: isinstance(v, str), na_action="ignore").fillna(False)
                            .astype(bool)) if raw[c].dtype == object else raw[c] for c in need}
    ok = np.ones(len(raw), dtype=bool)
    for c in need:
        ok &= text[c].notna().to_numpy()
    ok &= ~(text["chosen"] == text["rejected"]).fillna(True).to_numpy(dtype=bool)
    if not ok.any():
        return np.zeros(len(raw), dtype=bool)
    sub = raw[ok]
    chosen, rejected = text["chosen"][ok], text["rejected"][ok]
    # Integer codes stand for the texts (one code per distinct text): the group-by is over ints.
    texts = pd.concat([pd.Series(chosen.array), pd.Series(rejected.array)], ignore_index=True)
    codes = pd.factorize(texts)[0].astype(np.int64)
    del texts
    c_code, r_code = codes[:len(chosen)], codes[len(chosen):]
    first_wins = (chosen < rejected).to_numpy(dtype=bool)
    frame = pd.DataFrame({"aspect": pd.factorize(text["aspect"][ok])[0],
                          "prompt": pd.factorize(_prompt_keys(sub))[0],
                          "first": np.where(first_wins, c_code, r_code),
                          "second": np.where(first_wins, r_code, c_code),
                          "first_wins": first_wins})
    del codes, c_code, r_code, sub
    group = frame.groupby(["aspect", "prompt", "first", "second"], sort=False)["first_wins"]
    votes = group.transform("sum").to_numpy()
    total = group.transform("count").to_numpy()
    mine = np.where(first_wins, votes, total - votes)
    both = (votes > 0) & (votes < total)  # both directions occur
    flagged = np.zeros(len(raw), dtype=bool)
    flagged[np.flatnonzero(ok)] = both & (mine * 2 <= total)  # minority, or a tie
    return flagged


def check_frame(raw: pd.DataFrame, ratings: tuple | None = None) -> pd.DataFrame:
    """The table GX validates: present string columns, ``_row`` and the helper columns.
    ``ratings``: (aspects, {"chosen"/"rejected": (N, K) floats}) when read from Arrow; else the
    ratings are read from the dicts of ``raw``'s ratings columns."""
    cols = {c: raw[c] for c in contract.REQUIRED_COLUMNS if c in raw.columns}
    out = pd.DataFrame(cols, index=raw.index)
    out[_ROW] = np.arange(len(raw), dtype=np.int64)
    if "chosen" in raw.columns and "rejected" in raw.columns:
        out[_SAME] = (raw["chosen"] == raw["rejected"]).fillna(False).to_numpy(dtype=bool)
    if "pair_id" in raw.columns:
        out[_REPEAT] = (raw["pair_id"].notna() & raw["pair_id"].duplicated(keep="first")).to_numpy()
    out[_CONTRA] = contradictory_labels(raw.reset_index(drop=True))
    for which in ("chosen", "rejected"):
        col = f"ratings_{which}"
        if ratings is not None:
            for j, key in enumerate(ratings[0]):
                out[rating_column(which, key)] = ratings[1][which][:, j]
            continue
        if col not in raw.columns:
            continue
        dicts = [r if isinstance(r, dict) else {} for r in raw[col]]
        for key in _rating_keys(raw):
            out[rating_column(which, key)] = pd.to_numeric(
                pd.Series([d.get(key) for d in dicts], index=raw.index, dtype=object), errors="coerce")
    return out.reset_index(drop=True)


# ---------------------------------------------------------------------------------------------
# The suites. Each expectation carries meta {check, reason}: a stable key for counts and the
# sentence a user reads in the quarantine table.

def _meta(check_key: str, reason: str) -> dict[str, str]:
    return {"fgpo_check": check_key, "fgpo_reason": reason}


def row_expectations(frame: pd.DataFrame, config: ValidateConfig) -> list:
    """The row-level expectations (and the required-columns table check) for ``frame``."""
    import great_expectations.expectations as gxe

    exps = [gxe.ExpectTableColumnsToMatchSet(
        column_set=list(contract.REQUIRED_COLUMNS), exact_match=False,
        meta=_meta("required_columns", "required columns are missing"))]
    for col in contract.REQUIRED_COLUMNS:
        if col not in frame.columns:
            continue  # reported by the table check above; rows cannot be checked on it
        exps.append(gxe.ExpectColumnValuesToNotBeNull(
            column=col, meta=_meta(f"{col}_missing", f"{col} is missing")))
        exps.append(gxe.ExpectColumnValuesToMatchRegex(
            column=col, regex=r"\S", meta=_meta(f"{col}_empty", f"{col} is empty or whitespace")))
    for col in TEXT_FIELDS:
        if col in frame.columns:
            # min_chars <= 1 is already enforced by the non-empty check: do not report it twice
            lo = config.min_chars if config.min_chars > 1 else None
            exps.append(gxe.ExpectColumnValueLengthsToBeBetween(
                column=col, min_value=lo, max_value=config.max_chars,
                meta=_meta(f"{col}_length", f"{col} length outside "
                                            f"[{config.min_chars}, {config.max_chars}] characters")))
    if _SAME in frame.columns:
        exps.append(gxe.ExpectColumnValuesToBeInSet(
            column=_SAME, value_set=[False],
            meta=_meta("chosen_equals_rejected", "chosen and rejected are the same text")))
    if config.aspects and "aspect" in frame.columns:
        exps.append(gxe.ExpectColumnValuesToBeInSet(
            column="aspect", value_set=list(config.aspects),
            meta=_meta("aspect_unknown", f"aspect not in the configured aspects {list(config.aspects)}")))
    if config.rating_min is not None or config.rating_max is not None:
        bounds = f"[{config.rating_min}, {config.rating_max}]"
        for col in frame.columns:
            if col.startswith("ratings_"):
                exps.append(gxe.ExpectColumnValuesToBeBetween(
                    column=col, min_value=config.rating_min, max_value=config.rating_max,
                    meta=_meta(f"{col}_range", f"{col} outside {bounds}")))
    if _REPEAT in frame.columns:
        exps.append(gxe.ExpectColumnValuesToBeInSet(
            column=_REPEAT, value_set=[False],
            meta=_meta("pair_id_duplicate", "pair_id repeats an earlier row (the first is kept)")))
    if _CONTRA in frame.columns:
        exps.append(gxe.ExpectColumnValuesToBeInSet(
            column=_CONTRA, value_set=[False],
            meta=_meta("contradictory_labels", "contradictory_labels: other rows label the same "
                       "prompt and responses the other way on this aspect (the strict majority "
                       "direction is kept; a tie drops every row)")))
    return exps


def table_expectations(config: ValidateConfig) -> list:
    """Expectations on the per-aspect count table (columns aspect, accepted_pairs)."""
    import great_expectations.expectations as gxe

    return [
        gxe.ExpectColumnValuesToBeBetween(
            column="accepted_pairs", min_value=config.min_pairs_per_aspect,
            meta=_meta("aspect_min_pairs", f"fewer than min_pairs_per_aspect="
                                           f"{config.min_pairs_per_aspect} accepted pairs")),
        gxe.ExpectColumnSumToBeBetween(
            column="accepted_pairs", min_value=1,
            meta=_meta("no_accepted_pairs", "no pair was accepted")),
    ]


def _gx_context(docs_dir: Path | None):
    """An in-memory GX context; its one data docs site (if any) writes into ``docs_dir``."""
    # GX logs hundreds of INFO lines at import; keep them out unless a level was set for it.
    gx_log = logging.getLogger("great_expectations")
    if gx_log.level == logging.NOTSET:
        gx_log.setLevel(logging.WARNING)
    import great_expectations as gx
    from great_expectations.data_context.types.base import (DataContextConfig,
                                                            InMemoryStoreBackendDefaults,
                                                            ProgressBarsConfig)

    config = DataContextConfig(store_backend_defaults=InMemoryStoreBackendDefaults(),
                               progress_bars=ProgressBarsConfig(globally=False))
    if docs_dir is not None:
        config.data_docs_sites = {"fgpo": {
            "class_name": "SiteBuilder", "show_how_to_buttons": False,
            "store_backend": {"class_name": "TupleFilesystemStoreBackend",
                              "base_directory": str(Path(docs_dir).resolve())},
            "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"}}}
    return gx.get_context(mode="ephemeral", project_config=config)


def _run_suite(context, name: str, frame: pd.DataFrame, expectations: list, index_columns: list[str]):
    """Validate ``frame`` against a new suite; COMPLETE results list every failing row."""
    import great_expectations as gx

    suite = context.suites.add(gx.ExpectationSuite(name=name, expectations=expectations))
    asset = context.data_sources.add_pandas(f"{name}_source").add_dataframe_asset(name)
    batch = asset.add_batch_definition_whole_dataframe("whole").get_batch(
        batch_parameters={"dataframe": frame})
    result = batch.validate(suite, result_format={
        "result_format": "COMPLETE", "unexpected_index_column_names": index_columns,
        "return_unexpected_index_query": False})
    for r in result.results:
        info = r.exception_info or {}
        infos = [info] if "raised_exception" in info else list(info.values())
        for i in infos:
            if i.get("raised_exception"):
                raise RuntimeError(f"GX could not evaluate {r.expectation_config.type} "
                                   f"{r.expectation_config.kwargs}: {i.get('exception_message')}")
    return result


def _unexpected_rows(r, index_column: str) -> list:
    return [d[index_column] for d in (r.result.get("unexpected_index_list") or [])]


def _shorten(value):
    if isinstance(value, str) and len(value) > _MAX_SHOWN_CHARS:
        return value[:_MAX_SHOWN_CHARS] + f"... ({len(value)} chars)"
    if isinstance(value, list):
        return [_shorten(v) for v in value]
    if isinstance(value, dict):
        return {k: _shorten(v) for k, v in value.items()}
    return value


def _slim(result, run_name: str, created_at: str) -> None:
    """Drop the full unexpected lists (rows are in quarantine.parquet) and cut long texts, so the
    JSON report and data docs stay small; pin run time to the run's timestamp, not the clock."""
    for r in result.results:
        for key in ("unexpected_list", "unexpected_index_list", "unexpected_index_query"):
            r.result.pop(key, None)
        for key in ("partial_unexpected_list", "partial_unexpected_index_list",
                    "partial_unexpected_counts", "observed_value"):
            if key in r.result:
                r.result[key] = _shorten(r.result[key])
    result.meta.pop("batch_markers", None)  # holds the load time: not reproducible
    result.meta["run_id"] = {"run_name": run_name, "run_time": created_at}
    result.meta["validation_time"] = created_at


def _build_docs(context, results: list, run_name: str, created_at: str) -> None:
    from great_expectations.core.run_identifier import RunIdentifier
    from great_expectations.data_context.types.resource_identifiers import (
        ExpectationSuiteIdentifier, ValidationResultIdentifier)

    run_id = RunIdentifier(run_name=run_name, run_time=created_at)
    for result in results:
        suite_id = ExpectationSuiteIdentifier(name=result.suite_name)
        context.validation_results_store.store_validation_results(
            suite_validation_result=result,
            suite_validation_result_identifier=ValidationResultIdentifier(
                expectation_suite_identifier=suite_id, run_id=run_id, batch_identifier=result.batch_id),
            expectation_suite_identifier=suite_id)
    context.build_data_docs()


def _expectation_rows(result) -> list[dict[str, Any]]:
    """One compact line per expectation: what every report and the manifest list."""
    rows = []
    for r in result.results:
        cfg = r.expectation_config
        kwargs = {k: v for k, v in cfg.kwargs.items() if k != "batch_id"}
        rows.append({"check": cfg.meta.get("fgpo_check"), "expectation": cfg.type,
                     "kwargs": _shorten(kwargs), "success": bool(r.success),
                     "element_count": r.result.get("element_count"),
                     "unexpected_count": r.result.get("unexpected_count"),
                     "observed_value": _shorten(r.result.get("observed_value"))})
    return rows


def _row_failures(result) -> tuple[dict[int, list[tuple[str, str, str]]], list[str]]:
    """Per input row, the (check, reason, expectation) it failed, in suite order; and the
    failures of the table-level expectation in the row suite."""
    reasons: dict[int, list[tuple[str, str, str]]] = {}
    table_failures = []
    for r in result.results:
        cfg = r.expectation_config
        if cfg.type == "expect_table_columns_to_match_set":
            if not r.success:
                missing = sorted(set(contract.REQUIRED_COLUMNS) - set(r.result["observed_value"]))
                table_failures.append(f"required columns are missing: {missing}")
            continue
        where = f"{cfg.type}({cfg.kwargs.get('column')})"
        for i in _unexpected_rows(r, _ROW):
            reasons.setdefault(int(i), []).append((cfg.meta["fgpo_check"], cfg.meta["fgpo_reason"], where))
    return reasons, table_failures


def _table_failures(result, config: ValidateConfig) -> list[str]:
    failures = []
    for r in result.results:
        if r.success:
            continue
        if r.expectation_config.meta["fgpo_check"] == "aspect_min_pairs":
            low = {d["aspect"]: int(d["accepted_pairs"]) for d in r.result["unexpected_index_list"]}
            failures.append(f"aspects with fewer than min_pairs_per_aspect="
                            f"{config.min_pairs_per_aspect} accepted pairs: {low}")
        else:
            failures.append("no pair was accepted")
    return failures


# ---------------------------------------------------------------------------------------------

def _origin(row: pd.Series) -> str:
    """'source:line' of a row (or as much of it as is known)."""
    source = row.get("source")
    line = row.get("source_line")
    where = str(source) if isinstance(source, str) and source else f"input row {row['input_row']}"
    if line is not None and not (isinstance(line, float) and math.isnan(line)):
        where += f":{int(line)}"
    return where


def _read_input(data_dir: Path) -> tuple[pa.Table, pd.DataFrame, tuple, dict]:
    """The input table as stored (a missing required column stays missing), the frame GX checks
    (text columns as Arrow-backed strings, no Python object per row; the ratings as floats in
    a tuple for ``check_frame``) and its provenance."""
    path = data_dir / contract.PAIRS_FILE
    if not path.is_file():
        raise FgpoError(f"{data_dir}: not an fgpo data directory (no {contract.PAIRS_FILE})")
    table = pq.read_table(path)
    cols = [c for c in table.column_names if c not in ("ratings_chosen", "ratings_rejected")]
    raw = table.select(cols).to_pandas(types_mapper={pa.string(): pd.StringDtype("pyarrow")}.get)
    if "prompt_messages" in raw.columns and not raw["prompt_messages"].notna().any():
        raw["prompt_messages"] = None
    from fgpo_tasks.scoring import _rating_values

    aspects = contract.table_rating_aspects(table)
    ratings = (aspects, {w: _rating_values(table, f"ratings_{w}", aspects) for w in ("chosen", "rejected")})
    manifest = {}
    if (data_dir / contract.MANIFEST_FILE).is_file():
        manifest = contract.read_manifest(data_dir)
    origin = {"path": str(data_dir), "stage": manifest.get("stage"),
              "fingerprint": manifest.get("fingerprint"),
              "file_sha256": file_fingerprint(path)}
    return table, raw, ratings, origin


def failure_message(summary: dict[str, Any], out_dir: Path) -> str:
    """The readable multi-line account of why validation failed."""
    n_in, n_q = summary["rows_in"], summary["rows_quarantined"]
    limit = summary["max_quarantine_fraction"]
    lines = [f"validation failed: {n_q} of {n_in} rows quarantined "
             f"({summary['quarantine_fraction']:.1%}; max_quarantine_fraction={limit})"]
    if summary["quarantine_fraction"] > limit:
        lines.append(f"  the quarantined fraction is above max_quarantine_fraction={limit}")
    for t in summary["table_failures"]:
        lines.append(f"  table check failed: {t}")
    if summary["top_reasons"]:
        lines.append("  top reasons (rows, reason, first example):")
        for item in summary["top_reasons"]:
            lines.append(f"    {item['rows']:>7}  {item['reason']}  (e.g. {item['example']})")
    lines.append(f"  report: {out_dir / QUARANTINE_FILE}, {out_dir / RESULT_FILE}"
                 + (f", {out_dir / DOCS_DIR / 'index.html'}" if summary.get("data_docs") else ""))
    lines.append("  no pairs.parquet was written")
    return "\n".join(lines)


def run_validate(data_dir: str | Path, out_dir: str | Path, config: ValidateConfig,
                 created_at: str) -> dict[str, Any]:
    """Validate the pair directory ``data_dir``; write accepted pairs and the reports to ``out_dir``.

    Raises ``ValidationFailed`` (after writing the reports, but no pair table) when the
    quarantined fraction exceeds ``config.max_quarantine_fraction`` or a table check fails.
    """
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    clock = time.perf_counter()
    seconds: dict[str, float] = {}

    def lap(name: str) -> None:
        nonlocal clock
        seconds[name] = round(time.perf_counter() - clock, 3)
        clock = time.perf_counter()

    table, raw, ratings, origin = _read_input(data_dir)
    n_in = len(raw)
    frame = check_frame(raw, ratings)
    del ratings
    run_name = f"fgpo-validate-{created_at}"
    lap("read")

    with atomic_dir(out_dir) as tmp:
        context = _gx_context(tmp / DOCS_DIR if config.data_docs else None)
        row_result = _run_suite(context, ROW_SUITE, frame, row_expectations(frame, config), [_ROW])

        reasons, table_failures = _row_failures(row_result)
        bad = np.zeros(n_in, dtype=bool)
        bad[list(reasons)] = True
        accepted = raw[~bad].reset_index(drop=True)
        quarantined = contract.frame(contract.from_arrow(table.filter(pa.array(bad))))
        assert len(accepted) + len(quarantined) == n_in, "rows in != rows accepted + quarantined"
        rows = sorted(reasons)  # raw[bad] keeps input order, so rows[k] is quarantined row k
        quarantined["input_row"] = np.array(rows, dtype=np.int64)
        quarantined["checks"] = ["; ".join(x[0] for x in reasons[i]) for i in rows]
        quarantined["reason"] = ["; ".join(x[1] for x in reasons[i]) for i in rows]
        quarantined["expectation"] = ["; ".join(x[2] for x in reasons[i]) for i in rows]

        # Table level: accepted pairs per aspect, over the configured (else the present) aspects.
        present = raw["aspect"].dropna().astype(str) if "aspect" in raw.columns else pd.Series([], dtype=str)
        present = present[present.str.strip() != ""]
        aspects = sorted(config.aspects or set(present))
        acc_counts = (accepted["aspect"].value_counts() if "aspect" in accepted.columns
                      else pd.Series(dtype=int))
        in_counts = present.value_counts()
        counts = pd.DataFrame({"aspect": aspects,
                               "accepted_pairs": [int(acc_counts.get(a, 0)) for a in aspects]})
        table_result = _run_suite(context, TABLE_SUITE, counts, table_expectations(config), ["aspect"])
        table_failures += _table_failures(table_result, config)

        # Per-reason counts with a first example, most frequent first.
        per_reason: dict[str, dict[str, Any]] = {}
        for pos, i in enumerate(rows):
            for key, text, _ in reasons[i]:
                entry = per_reason.get(key)
                if entry is None:
                    entry = per_reason[key] = {"check": key, "reason": text, "rows": 0,
                                               "example": _origin(quarantined.iloc[pos])}
                entry["rows"] += 1
        fraction = len(quarantined) / n_in if n_in else 0.0
        failed = bool(table_failures) or fraction > config.max_quarantine_fraction
        summary = {
            "status": "failed" if failed else "passed",
            "rows_in": n_in, "rows_accepted": len(accepted), "rows_quarantined": len(quarantined),
            "quarantine_fraction": fraction,
            "max_quarantine_fraction": config.max_quarantine_fraction,
            "table_failures": table_failures,
            "per_reason": {k: v["rows"] for k, v in
                           sorted(per_reason.items(), key=lambda kv: (-kv[1]["rows"], kv[0]))},
            "top_reasons": sorted(per_reason.values(), key=lambda v: (-v["rows"], v["check"]))[:5],
            "per_aspect": {a: {"in": int(in_counts.get(a, 0)), "accepted": int(acc_counts.get(a, 0)),
                               "quarantined": int(in_counts.get(a, 0) - acc_counts.get(a, 0))}
                           for a in aspects},
            "suites": [ROW_SUITE, TABLE_SUITE],
            "expectations": _expectation_rows(row_result) + _expectation_rows(table_result),
            "data_docs": config.data_docs,
            "input": origin,
        }

        lap("gx_suites")
        _slim(row_result, run_name, created_at)
        _slim(table_result, run_name, created_at)
        report = {"summary": {k: summary[k] for k in ("status", "rows_in", "rows_accepted",
                                                      "rows_quarantined", "table_failures")},
                  "expectations": summary["expectations"],
                  "results": [row_result.to_json_dict(), table_result.to_json_dict()]}
        (tmp / RESULT_FILE).write_text(jsonio.dumps(report, indent=1, default=str) + "\n")
        (tmp / SUMMARY_FILE).write_text(jsonio.dumps(summary, indent=2, default=str) + "\n")
        contract.write_pair_table(quarantined, tmp, QUARANTINE_FILE)
        if config.data_docs:
            _build_docs(context, [row_result, table_result], run_name, created_at)
        lap("reports")
        if not failed:
            accepted_table = table.filter(pa.array(~bad))
            manifest = contract.build_manifest(
                accepted_table, stage="validate", config=to_dict(config), created_at=created_at,
                inputs=[origin], extra={"validation": {k: v for k, v in summary.items()
                                                       if k not in ("input", "top_reasons")}})
            contract.write_pair_table(accepted_table, tmp)
            contract.write_manifest(tmp, manifest)
    lap("write_pairs")

    metrics = {"status": summary["status"], "rows_in": n_in, "rows_accepted": len(accepted),
               "rows_quarantined": len(quarantined), "quarantine_fraction": round(fraction, 6),
               "out": str(out_dir), "seconds": seconds}
    if failed:
        raise ValidationFailed(failure_message(summary, out_dir), summary)
    log.info("validated %d rows: %d accepted, %d quarantined -> %s (seconds: %s)",
             n_in, len(accepted), len(quarantined), out_dir, seconds)
    return metrics
