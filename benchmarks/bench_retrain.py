"""Incremental retraining: the retrain stages (proxy reward models + PD scoring + selection) after
a +10% annotation batch, against a full retrain of the same (100%) pool, measured in one run.

    .venv/bin/python benchmarks/bench_retrain.py [--per-aspect 150] [--max-length 128]

Data: the real HelpSteer2 per-aspect files in ../shared/data (ingested with fgpo's own adapter),
the first ``--per-aspect`` pairs of each aspect by pair_id; the "old" pool is 90% of them (by a
hash of the pair id), the new batch the other 10%. Proxies: frozen MiniLM-L6 (``minilm-l6``), the
CPU default, one head per aspect. Phases, each through the stage layer (``fgpo_tasks.workflow``):

1. day 1: the stages on the 90% pool (store A, fresh caches);
2. incremental: the same stages on the 100% pool in store A: proxies reused (growth < 0.25),
   embeddings and margins of the old pairs from the caches;
3. full: the same stages on the 100% pool in a fresh store B with fresh caches.

The backbone is loaded once per process before phase 1, so no phase pays for loading it.
Target: incremental / full <= 0.15.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks._common import machine, markdown_table, write_section  # noqa: E402

DATA = REPO.parent / "shared" / "data" / "helpsteer2-aspects"
CREATED_AT = "2026-01-01T00:00:00+00:00"
TARGET = 0.15


def pools(work: Path, per_aspect: int) -> tuple[Path, Path]:
    """(90% pool, 100% pool) pair dirs of the first ``per_aspect`` pairs of each aspect."""
    from fgpo_tasks import contract
    from fgpo_tasks.ingest.config import IngestConfig
    from fgpo_tasks.ingest.run import run_ingest
    from fgpo_tasks.provenance import sha256_hex

    run_ingest([str(DATA)], ["helpsteer2-aspects"], work / "ingested", IngestConfig(), CREATED_AT)
    df = contract.read_pairs(work / "ingested").sort_values("pair_id")
    df = df.groupby("aspect", group_keys=False).head(per_aspect)
    old = df[[int(sha256_hex("batch", p)[:8], 16) % 10 != 0 for p in df["pair_id"]]]
    contract.write_pairs(old, work / "pool90", stage="bench", config={}, created_at=CREATED_AT)
    contract.write_pairs(df, work / "pool100", stage="bench", config={}, created_at=CREATED_AT)
    return work / "pool90", work / "pool100"


def retrain(store, data: Path, rm_cfg, score_cfg, select_cfg) -> dict:
    """The retrain stages on one pool: every aspect's proxy, PD scoring, PD selection."""
    from fgpo_tasks import contract, workflow

    t0 = time.perf_counter()
    aspects = sorted(contract.read_pairs(data)["aspect"].unique())
    models = [workflow.reward_model(store, str(data), a, rm_cfg, CREATED_AT) for a in aspects]
    scored = workflow.score(store, str(data), [m.result["model"] for m in models], score_cfg, CREATED_AT)
    workflow.select(store, scored.result["scores"], str(data), select_cfg, CREATED_AT)
    seconds = time.perf_counter() - t0
    scored_n, cached_n = sum(scored.result["scored"].values()), sum(scored.result["from_cache"].values())
    return {"seconds": seconds, "reused": sum(m.result["reused"] for m in models), "aspects": len(aspects),
            "scored": scored_n, "from_cache": cached_n}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--per-aspect", type=int, default=150)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--no-write", action="store_true", help="print only; do not touch BENCHMARKS.md")
    args = ap.parse_args()

    import torch

    from fgpo_tasks import contract
    from fgpo_tasks.reward_models import RewardModelConfig, get_embedder
    from fgpo_tasks.scoring import ScoreConfig
    from fgpo_tasks.selection import SelectConfig
    from fgpo_tasks.stages import Store

    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory(prefix="fgpo-bench-retrain-") as tmp:
        work = Path(tmp)
        pool90, pool100 = pools(work, args.per_aspect)
        n_old, n_new = len(contract.read_pairs(pool90)), len(contract.read_pairs(pool100))

        def configs(name: str):
            rm = RewardModelConfig(backbone="minilm-l6", mode="frozen", max_length=args.max_length,
                                   max_prompt_length=min(96, args.max_length // 2), compare_undebiased=False,
                                   cache_dir=str(work / name / "embeddings"))
            return rm, ScoreConfig(progress=False, cache_dir=str(work / name / "scores")), \
                SelectConfig(strategy="pd", budget=0.3)

        rm_a, score_a, sel_a = configs("a")
        get_embedder(rm_a.backbone, rm_a.max_length, rm_a.max_prompt_length, rm_a.pooling,
                     rm_a.embed_batch_size, rm_a.device)  # load the backbone once, outside every phase
        store_a, store_b = Store(work / "a"), Store(work / "b")
        day1 = retrain(store_a, pool90, rm_a, score_a, sel_a)
        inc = retrain(store_a, pool100, rm_a, score_a, sel_a)
        full = retrain(store_b, pool100, *configs("b"))

    ratio = inc["seconds"] / full["seconds"]
    cached_share = inc["from_cache"] / max(inc["from_cache"] + inc["scored"], 1)
    rows = [["day 1: 90% pool, fresh", n_old, f"{day1['seconds']:.1f}", f"0/{day1['aspects']}",
             day1["scored"], day1["from_cache"], ""],
            ["incremental: +10% batch", n_new, f"{inc['seconds']:.1f}", f"{inc['reused']}/{inc['aspects']}",
             inc["scored"], inc["from_cache"], f"{ratio:.3f}"],
            ["full retrain: 100% pool, fresh", n_new, f"{full['seconds']:.1f}", f"{full['reused']}/{full['aspects']}",
             full["scored"], full["from_cache"], "1.000"]]
    table = markdown_table(["phase", "pairs", "wall s", "proxies reused", "margins scored", "from cache",
                            "vs full"], rows)
    verdict = "meets" if ratio <= TARGET else "MISSES"
    text = f"""## Incremental retraining after a +10% batch (HelpSteer2, MiniLM-L6)

Command: `.venv/bin/python benchmarks/bench_retrain.py --per-aspect {args.per_aspect} --max-length {args.max_length}`
Machine: {machine()} (shared with other jobs while measured); torch threads 2.

The retrain stages (a proxy per aspect, PD scoring, PD selection at budget 0.3) through the stage
layer: on a 90% pool, then on the 100% pool in the same store (proxies reused while an aspect grew
by < refresh_fraction 0.25; embeddings and margins of old pairs from the caches), then on the 100%
pool in a fresh store with fresh caches. The backbone is loaded once before the phases.

{table}

Incremental / full wall time: **{ratio:.3f}** (target <= {TARGET}: {verdict} it); the incremental
run took {cached_share:.1%} of its margins from the score cache.
"""
    print(text)
    if not args.no_write:
        write_section("retrain", text)


if __name__ == "__main__":
    main()
