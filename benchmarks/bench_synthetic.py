"""The toy-world generator: pairs per second, vectorised against the row-by-row one it replaced.

    .venv/bin/python benchmarks/bench_synthetic.py [--sizes 10000,100000] [--reference-size 10000]

In one run: the row-by-row generator (copied below as the reference baseline, exactly as
``fgpo_tasks/synthetic.py`` had it before vectorisation) makes ``--reference-size`` pairs, the
vectorised ``fgpo_tasks.synthetic.generate`` makes each of ``--sizes``; a table gives pairs / s
and the speed-up. Then the two generators' pools are compared (they draw the same world with
other random streams, so the figures agree within sampling noise, not exactly): the conflicting
share, the correctness mean, the politeness and detail histograms, the share of sum prompts,
distinct prompts per 1,000 pairs, and distinct prompts in the small pools tests use. Writes the
``synthetic`` section of BENCHMARKS.md (``--no-write`` prints only).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._common import machine, markdown_table, write_section  # noqa: E402
from fgpo_tasks.contract import make_pair  # noqa: E402
from fgpo_tasks.synthetic import (ASPECTS, CAPITALS, SyntheticConfig, _SUM, correct_answer,  # noqa: E402
                                  generate, true_scores)


# -- REFERENCE BASELINE: the row-by-row generator before vectorisation (not used by the project) --

def reference_prompt(rng: np.random.Generator) -> str:
    if rng.random() < 0.5:
        a, b = rng.integers(2, 99, size=2)
        return f"What is {a} plus {b}?"
    return f"What is the capital of {rng.choice(sorted(CAPITALS))}?"


def reference_wrong_answer(prompt: str, rng: np.random.Generator) -> str:
    right = correct_answer(prompt)
    if right.isdigit():
        return str(int(right) + int(rng.choice([-10, -2, -1, 1, 2, 10])))
    return str(rng.choice([c for c in sorted(CAPITALS.values()) if c != right]))


def reference_response(prompt: str, rng: np.random.Generator) -> str:
    from fgpo_tasks.synthetic import DETAIL, POLITE

    answer = correct_answer(prompt) if rng.random() < 0.5 else reference_wrong_answer(prompt, rng)
    polite = [POLITE[i] for i in sorted(rng.choice(3, size=rng.integers(0, 4), replace=False))]
    detail = [DETAIL[i] for i in sorted(rng.choice(3, size=rng.integers(0, 4), replace=False))]
    parts = polite[:1] + [f"The answer is {answer}."] + detail + polite[1:]
    return " ".join(parts)


def reference_draw_pair(prompt, aspect, want_conflict, aspects, rng, max_tries=200):
    for _ in range(max_tries):
        r1, r2 = reference_response(prompt, rng), reference_response(prompt, rng)
        s1, s2 = true_scores(prompt, r1, aspects), true_scores(prompt, r2, aspects)
        if s1[aspect] == s2[aspect]:
            continue
        (cw, sw), (cl, sl) = ((r1, s1), (r2, s2)) if s1[aspect] > s2[aspect] else ((r2, s2), (r1, s1))
        others = float(sum(np.sign(sw[a] - sl[a]) for a in aspects if a != aspect))
        if (others < 0) if want_conflict else (others > 0):
            return cw, cl, sw, sl
    return None


def reference_generate_row_by_row(config: SyntheticConfig) -> list[dict]:
    rng = np.random.default_rng(config.seed)
    rows, seen, i = [], set(), 0
    while len(rows) < config.n_pairs:
        aspect = config.aspects[i % len(config.aspects)]
        i += 1
        prompt = reference_prompt(rng)
        want_conflict = bool(rng.random() < config.conflict_rate)
        drawn = reference_draw_pair(prompt, aspect, want_conflict, config.aspects, rng)
        if drawn is None:
            continue
        chosen, rejected, sc, sr = drawn
        if rng.random() < config.label_noise:
            chosen, rejected, sc, sr = rejected, chosen, sr, sc
        row = make_pair(prompt=prompt, chosen=chosen, rejected=rejected, aspect=aspect,
                        source="synthetic", batch_id=config.batch_id, ratings_chosen=sc,
                        ratings_rejected=sr, source_line=len(rows) + 1)
        if row["pair_id"] in seen:
            continue
        seen.add(row["pair_id"])
        rows.append(row)
    return rows


# -- measurement -----------------------------------------------------------------------------------

def timed(generator, n: int, seed: int = 0) -> tuple[list[dict], float]:
    t = time.perf_counter()
    rows = generator(SyntheticConfig(n_pairs=n, seed=seed))
    return rows, time.perf_counter() - t


def pool_stats(rows: list[dict]) -> dict[str, float]:
    """Distribution figures of a pool (default config: all aspects, no label noise)."""
    others = [sum(np.sign(r["ratings_chosen"][a] - r["ratings_rejected"][a]) for a in ASPECTS if a != r["aspect"])
              for r in rows]
    ratings = [s for r in rows for s in (r["ratings_chosen"], r["ratings_rejected"])]
    stats = {"conflicting share": float(np.mean(np.array(others) < 0)),
             "correctness mean (responses)": float(np.mean([s["correctness"] for s in ratings])),
             "conciseness mean (responses)": float(np.mean([s["conciseness"] for s in ratings]))}
    for aspect in ("politeness", "detail"):
        counts = np.bincount([int(s[aspect]) for s in ratings], minlength=4) / len(ratings)
        stats.update({f"{aspect} = {k} (share of responses)": float(c) for k, c in enumerate(counts)})
    stats["sum prompts (share)"] = float(np.mean([bool(_SUM.search(r["prompt"])) for r in rows]))
    chunks = [rows[i:i + 1000] for i in range(0, len(rows) - 999, 1000)]
    stats["distinct prompts per 1,000 pairs"] = float(np.mean([len({r["prompt"] for r in c}) for c in chunks]))
    return stats


def small_pool_prompts(generator, n: int, seeds: range) -> float:
    """Mean distinct prompts of an n-pair pool over seeds (the small pools tests train on)."""
    return float(np.mean([len({r["prompt"] for r in generator(SyntheticConfig(n_pairs=n, seed=s))})
                          for s in seeds]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000", help="pool sizes of the vectorised generator")
    parser.add_argument("--reference-size", type=int, default=10_000, help="pool size of the row-by-row one")
    parser.add_argument("--no-write", action="store_true", help="print the tables, leave BENCHMARKS.md")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]

    generate(SyntheticConfig(n_pairs=10))  # warm up imports
    ref_rows, ref_s = timed(reference_generate_row_by_row, args.reference_size)
    ref_rate = len(ref_rows) / ref_s
    speed = [["row-by-row (reference)", f"{len(ref_rows):,}", round(ref_s, 2), f"{ref_rate:,.0f}", "1.0"]]
    pools = {}
    for n in sizes:
        rows, s = min((timed(generate, n) for _ in range(3 if n <= 20_000 else 1)), key=lambda x: x[1])
        pools[n] = rows
        speed.append(["vectorised", f"{n:,}", round(s, 2), f"{n / s:,.0f}", f"{n / s / ref_rate:,.1f}"])
    speed_table = markdown_table(["generator", "pairs", "seconds", "pairs / s", "speed-up"], speed)

    new_rows = pools.get(args.reference_size) or generate(SyntheticConfig(n_pairs=args.reference_size))
    old, new = pool_stats(ref_rows), pool_stats(new_rows)
    dist = [[k, f"{old[k]:.3f}", f"{new[k]:.3f}"] for k in old]
    for n in (24, 30, 60):
        seeds = range(20)
        dist.append([f"distinct prompts in a {n}-pair pool (mean of seeds 0-19)",
                     f"{small_pool_prompts(reference_generate_row_by_row, n, seeds):.2f}",
                     f"{small_pool_prompts(generate, n, seeds):.2f}"])
    dist_table = markdown_table(["figure", f"row-by-row, {len(ref_rows):,} pairs",
                                 f"vectorised, {len(new_rows):,} pairs"], dist)
    print(speed_table, "\n\n" + dist_table)

    command = "`.venv/bin/python benchmarks/bench_synthetic.py" + (
        f" --sizes {args.sizes}" if args.sizes != "10000,100000" else "") + (
        f" --reference-size {args.reference_size}" if args.reference_size != 10_000 else "") + "`"
    body = f"""## Toy-world generator: row-by-row vs vectorised (`fgpo_tasks.synthetic`)

{command}  
Default config (4 aspects, conflict rate 0.2, no label noise, seed 0). The row-by-row generator is the
reference copy in the benchmark (the one `fgpo_tasks.synthetic` had before it was vectorised); seconds
include building the contract rows (`make_pair`). Machine: {machine()} (shared; expect +-50% noise).

{speed_table}

The two draw the same world with other random streams: their pools agree within sampling noise,
not row for row.

{dist_table}
"""
    if not args.no_write:
        write_section("synthetic", body)


if __name__ == "__main__":
    main()
