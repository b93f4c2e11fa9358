"""Ingest + validate throughput on synthetic pairs: build rows, write the pair table, validate.

    .venv/bin/python benchmarks/bench_ingest_validate.py --n-pairs 100000

Writes the ``ingest_validate`` section of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._common import machine, markdown_table, write_section  # noqa: E402
from fgpo_tasks import contract  # noqa: E402
from fgpo_tasks.env import setup_environment  # noqa: E402
from fgpo_tasks.validate import SUMMARY_FILE, ValidateConfig, ValidationFailed, run_validate  # noqa: E402

CREATED_AT = "2026-01-01T00:00:00+00:00"


def build_rows(n: int) -> tuple[list[dict], str]:
    """Synthetic pairs from fgpo_tasks.synthetic when it exists, else random texts."""
    try:
        from fgpo_tasks.synthetic import ASPECTS, SyntheticConfig, generate
    except ImportError:
        import numpy as np

        rng = np.random.default_rng(0)
        words = np.array("the a model answer is correct helpful polite short long data of to".split())
        text = lambda: " ".join(rng.choice(words, rng.integers(5, 80)))  # noqa: E731
        aspects = ["helpfulness", "correctness", "coherence"]
        return [contract.make_pair(prompt=text(), chosen=text(), rejected=text(),
                                   aspect=aspects[i % 3], source="bench:random", batch_id="bench",
                                   ratings_chosen={a: float(rng.integers(0, 5)) for a in aspects},
                                   ratings_rejected={a: float(rng.integers(0, 5)) for a in aspects},
                                   source_line=i + 1) for i in range(n)], "random texts"
    return generate(SyntheticConfig(n_pairs=n)), f"fgpo_tasks.synthetic (aspects {list(ASPECTS)})"


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-pairs", type=int, default=100_000)
    parser.add_argument("--corrupt-fraction", type=float, default=0.02,
                        help="fraction of rows broken (half empty prompt, half chosen == rejected) "
                             "so the quarantine path is timed too")
    parser.add_argument("--no-write", action="store_true", help="print the table, leave BENCHMARKS.md")
    args = parser.parse_args()
    setup_environment()

    (rows, kind), t_build = timed(lambda: build_rows(args.n_pairs))
    n = len(rows)
    step = max(1, round(1 / args.corrupt_fraction)) if args.corrupt_fraction > 0 else 0
    for k, i in enumerate(range(0, n, step) if step else []):
        rows[i] = {**rows[i], **({"prompt": ""} if k % 2 else {"rejected": rows[i]["chosen"]})}
    aspects = sorted({r["aspect"] for r in rows})
    # The synthetic world's conciseness rating is -words/10, so the rating bounds are off here.
    config = ValidateConfig(aspects=aspects, rating_min=None, rating_max=None, data_docs=False)
    phases = [("build rows", t_build)]
    with tempfile.TemporaryDirectory(prefix="fgpo-bench-") as tmp:
        tmp = Path(tmp)
        _, t = timed(lambda: contract.write_pairs(rows, tmp / "pairs", stage="ingest", config={},
                                                  created_at=CREATED_AT))
        phases.append(("write pairs (parquet + manifest)", t))
        _, t = timed(lambda: __import__("great_expectations"))
        phases.append(("import great_expectations (once per process)", t))

        def validate(out: str, cfg: ValidateConfig) -> dict:
            try:
                return run_validate(tmp / "pairs", tmp / out, cfg, CREATED_AT)
            except ValidationFailed as e:
                return e.summary

        metrics, t = timed(lambda: validate("v1", config))
        phases.append(("validate (GX suite, quarantine, write)", t))
        phases += [(f"- of which {k}", v) for k, v in metrics.get("seconds", {}).items()]
        _, t = timed(lambda: validate("v2", dataclasses.replace(config, data_docs=True)))
        phases.append(("validate + GX data docs", t))
        summary = json.loads((tmp / "v1" / SUMMARY_FILE).read_text())

    table = markdown_table(["phase", "seconds", "pairs / s"],
                           [[name, round(sec, 2), "-" if "import" in name else f"{n / sec:,.0f}"]
                            for name, sec in phases])
    reasons = ", ".join(f"{k}: {v}" for k, v in summary["per_reason"].items()) or "none"
    body = (f"## Ingest + validate throughput ({n:,} pairs)\n\n"
            f"`.venv/bin/python benchmarks/bench_ingest_validate.py --n-pairs {args.n_pairs}`  \n"
            f"Rows: {kind}; every {step}th row broken. Machine: {machine()} "
            f"(shared; expect +-50% noise).\n\n{table}\n\n"
            f"Validation: {summary['rows_accepted']:,} accepted, {summary['rows_quarantined']:,} "
            f"quarantined ({reasons}); status {summary['status']}. The two validate rows include "
            f"reading the input and writing the output with its content fingerprint.\n")
    print(body)
    if not args.no_write:
        write_section("ingest_validate", body)


if __name__ == "__main__":
    main()
