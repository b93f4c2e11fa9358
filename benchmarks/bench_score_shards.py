"""Sharded scoring: what an embedding-cache lookup reads as the cache grows, and what sharding
the score stage costs over one pass (per-shard overhead, the reduce) on the tiny profile's models.

    .venv/bin/python benchmarks/bench_score_shards.py [--cache-sizes 10000 100000 1000000] [--pairs 2000]

Part 1 fills an EmbeddingCache with random 8-dim rows under real text keys, in writes of 4096
texts (the size scoring writes), then times a cold lookup of 1000 of them in a fresh process-level
object; "every key list" is what each lookup of earlier versions read (all shards' keys). Part 2
trains tiny-bert frozen proxies on synthetic pairs and scores them once unsharded and once in
shards (every (shard, proxy) unit in turn, as the DAG's mapped tasks would, then the reduce).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks._common import machine, markdown_table, write_section  # noqa: E402

CREATED_AT = "2026-01-01T00:00:00+00:00"


def cache_lookup(root: Path, size: int, lookups: int = 1000) -> list:
    import numpy as np

    from fgpo_tasks.reward_models import EmbeddingCache, text_key
    from fgpo_tasks.reward_models import embeddings

    keys = [text_key(f"prompt {size}-{i}", "response") for i in range(size)]
    writer = EmbeddingCache(root, f"c{size}")
    rng = np.random.default_rng(0)
    start = time.perf_counter()
    for i in range(0, size, embeddings.WRITE_CHUNK):
        part = keys[i:i + embeddings.WRITE_CHUNK]
        writer.add(part, rng.standard_normal((len(part), 8)).astype(np.float32))
    write_s = time.perf_counter() - start
    wanted = [keys[int(i)] for i in rng.choice(size, lookups, replace=False)]

    opened: list[Path] = []
    real = np.load

    def counting(f, *a, **k):
        opened.append(Path(f))
        return real(f, *a, **k)

    np.load = counting
    try:
        reader = EmbeddingCache(root, f"c{size}")
        start = time.perf_counter()
        reader.fetch(wanted, lambda missing: (_ for _ in ()).throw(AssertionError(missing)))
        lookup_s = time.perf_counter() - start
        few = EmbeddingCache(root, f"c{size}")
        opened_before = len(opened)
        start = time.perf_counter()
        few.fetch(wanted[:10], lambda missing: (_ for _ in ()).throw(AssertionError(missing)))
        few_s = time.perf_counter() - start
        few_files = opened[opened_before:]
        first = opened[:opened_before]
        everything = EmbeddingCache(root, f"c{size}")
        start = time.perf_counter()
        everything.refresh()
        all_s = time.perf_counter() - start
    finally:
        np.load = real
    key_files = [p for p in first if p.name.endswith(".keys.npy")]
    all_keys = list((root / f"c{size}").glob("*/shard-*.keys.npy"))
    few_keys = [p for p in few_files if p.name.endswith(".keys.npy")]
    mb = sum(p.stat().st_size for p in key_files) / 1e6
    return [size, len(all_keys), round(write_s, 1), round(lookup_s, 3),
            f"{len(key_files)} ({mb:.1f} MB)", len(first) - len(key_files),
            round(few_s, 3), f"{len(few_keys)} / {len(few_files) - len(few_keys)}",
            round(all_s, 3), f"{sum(p.stat().st_size for p in all_keys) / 1e6:.1f} MB"]


def sharded_scoring(work: Path, n_pairs: int, shard_size: int) -> tuple[list, dict]:
    import pandas as pd

    from fgpo_tasks import contract, synthetic
    from fgpo_tasks.reward_models import RewardModelConfig, discover_models, run_reward_models
    from fgpo_tasks.scoring import ScoreConfig, reduce_shards, run_score, score_shard, shard_plan

    df = pd.DataFrame(synthetic.generate(synthetic.SyntheticConfig(n_pairs=n_pairs, seed=0)))
    contract.write_pairs(df, work / "pool", stage="bench", config={}, created_at=CREATED_AT)
    rm_cfg = RewardModelConfig(backbone="tiny-bert", epochs=2, max_length=128, compare_undebiased=False,
                               cache_dir=str(work / "emb"))
    start = time.perf_counter()
    run_reward_models(work / "pool", work / "rm", rm_cfg, CREATED_AT)  # embeds every text once
    train_s = time.perf_counter() - start
    models = [m["dir"] for m in discover_models(work / "rm")]
    rows = []
    cfg = ScoreConfig(use_cache=False, progress=False)
    start = time.perf_counter()
    run_score(work / "pool", work / "one", cfg, CREATED_AT, model_dirs=models)
    one_s = time.perf_counter() - start
    rows.append(["one pass (run_score)", 1, round(one_s, 2), "", round(n_pairs / one_s, 1)])
    cfg = ScoreConfig(use_cache=False, progress=False, shard_size=shard_size)
    units = shard_plan(n_pairs, models, shard_size)
    unit_s = []
    for u in units:
        start = time.perf_counter()
        score_shard(work / "pool", u["model"], u["shard"], cfg, work / "shards")
        unit_s.append(time.perf_counter() - start)
    start = time.perf_counter()
    reduce_shards(work / "pool", work / "sharded", cfg, CREATED_AT, models, work / "shards")
    reduce_s = time.perf_counter() - start
    total = sum(unit_s) + reduce_s
    rows.append([f"{len(units)} units of {shard_size} pairs x 1 proxy, then the reduce", len(units),
                 round(total, 2), f"{max(unit_s):.2f} / {reduce_s:.2f}", round(n_pairs / total, 1)])
    same = (work / "one" / "scores.parquet").read_bytes() == (work / "sharded" / "scores.parquet").read_bytes()
    return rows, {"train_s": train_s, "same": same, "units": len(units), "models": len(models)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache-sizes", type=int, nargs="+", default=[10000, 100000, 1000000])
    ap.add_argument("--pairs", type=int, default=2000, help="synthetic pairs for the sharded scoring run")
    ap.add_argument("--shard-size", type=int, default=500)
    ap.add_argument("--work", default=None, help="scratch folder (default: a temp folder)")
    ap.add_argument("--no-write", action="store_true", help="print, do not update BENCHMARKS.md")
    args = ap.parse_args()

    work = Path(args.work or tempfile.mkdtemp(prefix="bench-shards-"))
    os.environ.setdefault("FGPO_WORK_DIR", str(work / "fgpo"))
    from fgpo_tasks.env import setup_environment

    setup_environment()
    import torch

    torch.set_num_threads(1)  # tiny models: threads only contend on shared cores
    cache_rows = [cache_lookup(work / "emb-cache", n) for n in args.cache_sizes]
    score_rows, info = sharded_scoring(work / "score", args.pairs, args.shard_size)

    cmd = (f"`.venv/bin/python benchmarks/bench_score_shards.py --cache-sizes "
           f"{' '.join(map(str, args.cache_sizes))} --pairs {args.pairs} --shard-size {args.shard_size}`")
    md = [
        "## Sharded scoring and the embedding cache", "",
        f"{cmd}  ",
        f"Machine: {machine()} (shared with other jobs; expect +-50% noise).", "",
        "Embedding cache lookups (8-dim rows, written 4096 texts at a time as one shard per hash "
        "bucket; a fresh reader each time). \"1000 / 10 texts\": a cold lookup of that many cached "
        "texts, with the key files it read and the vector shards it memory-mapped; \"every key "
        "list\": reading all buckets, what each lookup read before buckets:", "",
        markdown_table(["cached texts", "shards", "write s", "1000 texts s", "key files read (size)",
                        "vector shards opened", "10 texts s", "10 texts: key / vector files",
                        "every key list s", "all keys"], cache_rows), "",
        f"Scoring {args.pairs} synthetic pairs with {info['models']} frozen tiny-bert proxies (embedding "
        "cache warm from their training, score cache off, 1 torch thread), one pass against the "
        "sharded units run one after another (on a deployment they run in parallel, one task each):", "",
        markdown_table(["how", "tasks", "seconds (sum)", "slowest unit / reduce s", "pairs / s"], score_rows), "",
        f"Sharded scores byte-identical to one pass: {info['same']}.",
    ]
    text = "\n".join(md)
    print(text)
    if not args.no_write:
        write_section("score_shards", text)


if __name__ == "__main__":
    main()
