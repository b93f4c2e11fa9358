"""DPO data preparation at scale: the token store built from 10k / 100k / 1M pairs, seconds and peak RSS.

    .venv/bin/python benchmarks/bench_tokenstore.py [--sizes 10000,100000,1000000] [--tokenizer tiny-llama]

Per size: a pair table of synthetic short texts is written as Parquet (vectorised, numpy + pyarrow,
not the synthetic generator); then, each in its own process, (1) ``tokenstore.prepare`` builds the
store from it (cold: tokenise in batches from Arrow, write the memory-mapped file, fingerprint the
tokens), then the reference pass's columns are written and read back (``refcache.save`` / ``load``
of one float32 column pair per pair); (2) ``prepare`` again (a rerun or a second rank: the store
is opened, not rebuilt) and 2,000 padded batches of 8 pairs collated from the memory map. Peak RSS
is each process's maximum resident set (``getrusage(RUSAGE_CHILDREN)`` of a wrapper that runs only
that process), which counts the pages of the memory-mapped store it touched.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks._common import machine, markdown_table, write_section  # noqa: E402

MALLOC = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(16 << 30)}
GOAL_MB = 4096
WORDS = ("the a model answer question data pair token quick brown fox jumps over lazy dog helpful "
         "honest short long river city table light sound paper stone green water music winter").split()
# Runs one command and prints its peak RSS: RUSAGE_CHILDREN of a process whose only child is it.
WRAPPER = ("import json, resource, subprocess, sys; rc = subprocess.call(sys.argv[1:]); "
           "u = resource.getrusage(resource.RUSAGE_CHILDREN); "
           "print(json.dumps({'rc': rc, 'peak_rss_mb': u.ru_maxrss / 1024, 'cpu_s': u.ru_utime + u.ru_stime}))")


def make_pairs(n: int, out: Path, seed: int = 0) -> None:
    """``out/pairs.parquet``: n pairs of short texts (prompts ~30-70 characters, responses ~20-110),
    every contract column; vectorised, so 1M pairs take seconds."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    pool = np.array([" ".join(rng.choice(WORDS, k)) for k in rng.integers(3, 18, 20_000)], dtype=object)
    idx = np.arange(n).astype(str).astype(object)
    prompt = "Question " + idx + ": " + pool[rng.integers(0, len(pool), n)] + "?"
    chosen = pool[rng.integers(0, len(pool), n)] + "."
    rejected = pool[rng.integers(0, len(pool), n)] + "!"
    aspects = np.array(["helpfulness", "correctness", "coherence", "complexity", "verbosity"], dtype=object)
    table = pa.table({
        "pair_id": pa.array(np.char.zfill(np.arange(n).astype(str), 32).astype(object), pa.string()),
        "prompt": pa.array(prompt, pa.string()), "chosen": pa.array(chosen, pa.string()),
        "rejected": pa.array(rejected, pa.string()), "aspect": pa.array(aspects[np.arange(n) % 5], pa.string()),
        "prompt_messages": pa.nulls(n, pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))),
        "source": pa.array(np.full(n, "bench", dtype=object), pa.string()),
        "batch_id": pa.array(np.full(n, "bench", dtype=object), pa.string())})
    out.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, out / "pairs.parquet", row_group_size=1 << 16)


def child_build(data: Path, root: Path, tokenizer_spec: str, max_length: int) -> dict:
    import numpy as np
    import pyarrow.compute as pc

    from fgpo_tasks import models
    from fgpo_tasks.dpo import refcache, tokenstore

    tok = models.load_tokenizer(tokenizer_spec)
    t0 = time.perf_counter()
    c0 = time.process_time()
    store = tokenstore.prepare(data, tok, max_length, max_length // 2, root)
    build_s, build_cpu = time.perf_counter() - t0, time.process_time() - c0
    assert store.built
    rng = np.random.default_rng(0)
    chosen, rejected = rng.normal(-50, 5, len(store)), rng.normal(-60, 5, len(store))
    t0 = time.perf_counter()
    refcache.save(store.ref_file("bench"), store, chosen, rejected)
    back = refcache.load(store.ref_file("bench"), store)
    ref_s = time.perf_counter() - t0
    assert np.array_equal(back[0], chosen.astype(np.float32))
    tokens = sum(pc.sum(pc.list_value_length(store.table[name])).as_py() for name in ("prompt", "chosen", "rejected"))
    return {"build_s": build_s, "build_cpu_s": build_cpu, "ref_s": ref_s, "pairs": len(store), "tokens": int(tokens),
        "store_mb": (store.path / tokenstore.TOKENS_FILE).stat().st_size / 2**20,
        "mean_length": float(store.lengths().mean())}


def child_reuse(data: Path, root: Path, tokenizer_spec: str, max_length: int) -> dict:
    import numpy as np

    from fgpo_tasks import models
    from fgpo_tasks.dpo import data as dpo_data, tokenstore

    tok = models.load_tokenizer(tokenizer_spec)
    t0 = time.perf_counter()
    store = tokenstore.prepare(data, tok, max_length, max_length // 2, root)
    open_s = time.perf_counter() - t0
    assert not store.built
    rng = np.random.default_rng(1)
    batches = [rng.integers(0, len(store), 8) for _ in range(2000)]
    t0 = time.perf_counter()
    for idx in batches:
        dpo_data.collate(store, idx, tok.pad_token_id)
    return {"open_s": open_s, "collate_ms": (time.perf_counter() - t0) / len(batches) * 1000}


def child_small(work: Path, n: int = 48, repeats: int = 5) -> dict:
    """The small path training takes on every run: what it did before the store (tokenize_pairs on
    the read table) against ``prepare`` cold (build) and warm (open), medians in ms."""
    import statistics

    import pandas as pd

    from fgpo_tasks import models, synthetic
    from fgpo_tasks.contract import read_pairs, write_pairs
    from fgpo_tasks.dpo import data as dpo_data, tokenstore

    pairs = work / f"small-{n}"
    shutil.rmtree(pairs, ignore_errors=True)
    write_pairs(pd.DataFrame(synthetic.generate(synthetic.SyntheticConfig(n_pairs=n, seed=0))), pairs,
                stage="bench", config={}, created_at="2026-01-01T00:00:00+00:00")
    out = {}
    for spec in ("tiny-llama", "smollm2-135m-instruct"):
        tok = models.load_tokenizer(spec)
        df = read_pairs(pairs)
        times: dict[str, list[float]] = {"tokenize_pairs": [], "cold": [], "warm": []}
        for r in range(repeats):
            root = work / f"small-stores-{spec}-{r}"
            shutil.rmtree(root, ignore_errors=True)
            for name, fn in (("tokenize_pairs", lambda: dpo_data.tokenize_pairs(df, tok, 512, 256)),
                             ("cold", lambda: tokenstore.prepare(pairs, tok, 512, 256, root)),
                             ("warm", lambda: tokenstore.prepare(pairs, tok, 512, 256, root))):
                t0 = time.perf_counter()
                fn()
                times[name].append((time.perf_counter() - t0) * 1000)
        out[spec] = {k: statistics.median(v) for k, v in times.items()}
    return out


def measure(argv: list[str], env: dict) -> tuple[dict, float, float]:
    """(the child's JSON result + its cpu_s, wall seconds, peak RSS MB) of one child process."""
    result = Path(argv[argv.index("--result") + 1])
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", WRAPPER, sys.executable, __file__, *argv], env=env, cwd=REPO,
                         check=True, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    usage = json.loads(out.stdout.strip().splitlines()[-1])
    if usage["rc"] != 0:
        raise RuntimeError(f"{argv} failed:\n{out.stderr[-3000:]}")
    return {**json.loads(result.read_text()), "cpu_s": usage["cpu_s"]}, wall, usage["peak_rss_mb"]


def small_path(args, work: Path, env: dict) -> None:
    work.mkdir(parents=True, exist_ok=True)
    small, _, _ = measure(["--child", "small", "--work", str(work), "--result", str(work / "r-small.json")], env)
    small.pop("cpu_s")
    text = "\n".join([
        "## DPO token store: the small path before and after", "",
        "`.venv/bin/python benchmarks/bench_tokenstore.py --small`  ",
        f"48 synthetic pairs, max_length 512, medians of 5 (ms); machine: {machine()} (shared with other jobs). "
        "What training did on every run before the store (`tokenize_pairs` on the read table) against "
        "`prepare` cold (the first run: key, tokenise, write, fingerprint) and warm (every later run, a "
        "resume, another rank: key and open).", "",
        markdown_table(["tokenizer", "tokenize_pairs ms (before)", "store cold ms", "store warm ms"],
                       [[spec, v["tokenize_pairs"], v["cold"], v["warm"]] for spec, v in small.items()])])
    print(text)
    if not args.no_write:
        write_section("tokenstore-small", text)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="10000,100000,1000000")
    p.add_argument("--tokenizer", default="tiny-llama", help="tiny-llama (byte level) or smollm2-135m-instruct")
    p.add_argument("--max-length", type=int, default=512)
    p.add_argument("--work", default=str(REPO / "work" / "bench_tokenstore"))
    p.add_argument("--small", action="store_true", help="only the small path: 48 pairs, before vs cold / warm store")
    p.add_argument("--no-write", action="store_true", help="print, do not update BENCHMARKS.md")
    p.add_argument("--child", choices=["make", "build", "reuse", "small"], help=argparse.SUPPRESS)
    p.add_argument("--n", type=int, help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    args = p.parse_args()
    work = Path(args.work)

    if args.child:
        data, root = work / f"pairs-{args.n}", work / f"stores-{args.n}"
        t0 = time.perf_counter()
        if args.child == "make":
            make_pairs(args.n, data)
            res = {"make_s": time.perf_counter() - t0}
        elif args.child == "small":
            res = child_small(work)
        elif args.child == "build":
            res = child_build(data, root, args.tokenizer, args.max_length)
        else:
            res = child_reuse(data, root, args.tokenizer, args.max_length)
        Path(args.result).write_text(json.dumps(res))
        return

    env = {**os.environ, **MALLOC, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1",
           "FGPO_WORK_DIR": os.environ.get("FGPO_WORK_DIR", str(REPO / "work"))}
    if args.small:
        return small_path(args, work, env)
    rows, builds = [], {}
    for n in [int(s) for s in args.sizes.split(",")]:
        shutil.rmtree(work / f"stores-{n}", ignore_errors=True)  # a cold build
        common = ["--n", str(n), "--tokenizer", args.tokenizer, "--max-length", str(args.max_length),
                  "--work", str(work)]
        made, make_wall, make_rss = measure(["--child", "make", *common, "--result", str(work / "r-make.json")], env)
        print(f"{n} pairs: parquet written in {make_wall:.1f} s", flush=True)
        b, build_wall, build_rss = measure(["--child", "build", *common, "--result", str(work / "r-build.json")], env)
        print(f"{n} pairs: store built in {build_wall:.1f} s, peak RSS {build_rss:.0f} MB", flush=True)
        r, reuse_wall, reuse_rss = measure(["--child", "reuse", *common, "--result", str(work / "r-reuse.json")], env)
        builds[n] = b["build_cpu_s"]
        rows.append([f"{n:,}", b["tokens"] / 1e6, b["mean_length"], build_wall, b["build_s"], b["build_cpu_s"],
                     b["build_cpu_s"] / n * 1e6, int(build_rss), b["store_mb"], b["ref_s"], r["open_s"],
                     int(reuse_rss), r["collate_ms"], make_wall])
    sizes = sorted(builds)
    ratios = [f"{sizes[i]:,} -> {sizes[i + 1]:,}: {builds[sizes[i + 1]] / builds[sizes[i]]:.2f}x the CPU time for "
              f"{sizes[i + 1] / sizes[i]:.0f}x the pairs" for i in range(len(sizes) - 1)]
    peak = max(max(int(r[7]), int(r[11])) for r in rows)
    shown = [a for a in sys.argv[1:] if a != "--no-write"]
    lines = [
        f"## DPO token store: pairs tokenised once, memory-mapped ({args.tokenizer} tokenizer)", "",
        "`" + " ".join([".venv/bin/python benchmarks/bench_tokenstore.py"] + shown) + "`  ",
        f"Synthetic short texts (prompts ~30-70 characters, responses ~20-110; vectorised Parquet, not the "
        f"generator), {args.tokenizer} tokenizer with its chat template, max_length {args.max_length}. "
        f"Machine: {machine()} (shared with other jobs). Build and reuse each run in their own process; peak RSS is its maximum "
        f"resident set (getrusage RUSAGE_CHILDREN of a wrapper around it), memory-mapped pages it touched included.", "",
        "build: `tokenstore.prepare` cold (read Parquet in batches of 8,192 rows, tokenise, write the Arrow "
        "file, fingerprint the tokens; wall s includes Python start-up and imports; CPU s is the "
        "process's own CPU time, the cost to compare on a machine other jobs share); ref cols s: the reference "
        "pass's columns written and read back; reuse: `prepare` again (what a rerun, a resume or a second rank "
        "does: key, open, memory-map), then 2,000 padded batches of 8 pairs collated from the map.", "",
        markdown_table(["pairs", "M tokens", "mean pair length", "build wall s", "build s", "build CPU s",
                        "CPU us/pair", "build peak RSS MB", "store MB", "ref cols s", "reuse s", "reuse peak RSS MB",
                        "collate ms/batch", "parquet s"], rows), "",
        f"Peak RSS of any step: {peak:,} MB (goal <= {GOAL_MB:,} MB: {'met' if peak <= GOAL_MB else 'NOT met'}). "
        "Cost in pairs: " + "; ".join(ratios) + ".",
    ]
    text = "\n".join(lines)
    print(text)
    if not args.no_write:
        write_section(f"tokenstore-{args.tokenizer}", text)


if __name__ == "__main__":
    main()
