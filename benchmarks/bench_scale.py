"""Per-stage seconds and peak RSS of ingest -> validate -> score --from-ratings -> select at scale.

    nice -n 10 .venv/bin/python benchmarks/bench_scale.py --sizes 10000 100000 1000000

Writes HelpSteer-shaped rated rows (4 responses per prompt, 5 aspects rated 0-4; so about 6 pairs
per prompt) to a rated-responses JSONL source, then runs each stage as its own ``fgpo``
subprocess, as a user would, and reads the child's wall seconds and peak RSS (``os.wait4``).
A stage whose RSS passes ``--max-rss-gb`` is killed and reported as such. Writes the ``scale``
section of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks._common import machine, markdown_table, write_section  # noqa: E402

ASPECTS = ("helpfulness", "correctness", "coherence", "complexity", "verbosity")
RESPONSES_PER_PROMPT = 4
PAIRS_PER_PROMPT = RESPONSES_PER_PROMPT * (RESPONSES_PER_PROMPT - 1) // 2
WORDS = ("the a model answer is correct helpful clear short long data of to and in for with on "
         "that this it by as be are was from at or an which can will more one all their has "
         "use example step result value first also each other time should make").split()
CREATED_AT = "2026-01-01T00:00:00+00:00"


def _texts(rng: np.random.Generator, n: int, mean_words: int, prefix: str) -> list[str]:
    """n distinct texts of about mean_words random words (each starts with its own id)."""
    lengths = rng.integers(mean_words // 2, mean_words * 3 // 2 + 1, size=n)
    words = np.asarray(WORDS)[rng.integers(0, len(WORDS), size=int(lengths.sum()))]
    ends = np.cumsum(lengths)
    starts = ends - lengths
    return [f"{prefix}{i}: " + " ".join(words[s:e]) for i, (s, e) in enumerate(zip(starts, ends))]


def write_rated_source(path: Path, n_pairs: int, seed: int = 0, prompt_words: int = 30,
                       response_words: int = 50) -> int:
    """A rated-responses JSONL file giving about n_pairs pairs; returns the rows written."""
    rng = np.random.default_rng(seed)
    n_prompts = math.ceil(n_pairs / PAIRS_PER_PROMPT)
    n_rows = n_prompts * RESPONSES_PER_PROMPT
    prompts = _texts(rng, n_prompts, prompt_words, "Question ")
    responses = _texts(rng, n_rows, response_words, "Reply ")
    ratings = rng.integers(0, 5, size=(n_rows, len(ASPECTS)))
    with open(path, "w", encoding="utf-8") as f:
        for i in range(n_rows):
            row = {"prompt": prompts[i // RESPONSES_PER_PROMPT], "response": responses[i]}
            row.update(zip(ASPECTS, ratings[i].tolist()))
            f.write(json.dumps(row) + "\n")
    return n_rows


def _rss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def run_stage(cmd: list[str], env: dict, max_rss_gb: float, log_path: Path) -> dict:
    """Run one stage; its wall seconds, peak RSS (GB) and return code (killed above max_rss_gb)."""
    start = time.perf_counter()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        killed = threading.Event()

        def watch():
            while proc.poll() is None:
                if _rss_kb(proc.pid) > max_rss_gb * (1 << 20):
                    killed.set()
                    proc.send_signal(signal.SIGKILL)
                    return
                time.sleep(0.2)

        threading.Thread(target=watch, daemon=True).start()
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    return {"seconds": time.perf_counter() - start, "rss_gb": usage.ru_maxrss / (1 << 20),
            "rc": proc.returncode, "killed": killed.is_set()}


def stages(work: Path, source: Path) -> list[tuple[str, list[str]]]:
    fgpo = [sys.executable, "-m", "fgpo_tasks.cli"]
    return [
        ("ingest", fgpo + ["ingest", "--source", str(source), "--format", "rated-responses",
                           "--out", str(work / "ingested"), "--config",
                           str(ROOT / "configs/ingest/helpsteer-ratings.yaml")]),
        ("validate", fgpo + ["validate", "--data", str(work / "ingested"), "--out",
                             str(work / "validated"), "--no-data-docs"]),
        ("score --from-ratings", fgpo + ["score", "--data", str(work / "validated"), "--from-ratings",
                                         "--out", str(work / "scores")]),
        ("select pd_ratings", fgpo + ["select", "--scores", str(work / "scores"), "--data",
                                      str(work / "validated"), "--strategy", "pd_ratings",
                                      "--out", str(work / "selected")]),
    ]


def bench_size(n_pairs: int, tmp: Path, env: dict, max_rss_gb: float, args) -> tuple[dict, list]:
    work = tmp / f"n{n_pairs}"
    work.mkdir()
    source = work / "helpsteer_rated.jsonl"
    t = time.perf_counter()
    n_rows = write_rated_source(source, n_pairs, args.seed, args.prompt_words, args.response_words)
    info = {"n_rows": n_rows, "source_mb": source.stat().st_size / 1e6,
            "write_source_s": time.perf_counter() - t}
    results = []
    for name, cmd in stages(work, source):
        r = run_stage(cmd, env, max_rss_gb, work / f"{name.split()[0]}.log")
        results.append({"stage": name, **r})
        print(f"  {n_pairs:>9,} {name:<22} {r['seconds']:8.1f} s {r['rss_gb']:6.2f} GB rc={r['rc']}"
              + (" KILLED (RSS limit)" if r["killed"] else ""), flush=True)
        if r["rc"] != 0:
            print((work / f"{name.split()[0]}.log").read_text()[-3000:])
            break
    manifest = work / "ingested" / "manifest.json"
    info["pairs"] = json.loads(manifest.read_text())["row_counts"]["total"] if manifest.is_file() else None
    shutil.rmtree(work, ignore_errors=True)
    return info, results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000],
                        help="target pair counts (about 6 pairs per prompt)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--prompt-words", type=int, default=30, help="mean words of a prompt")
    parser.add_argument("--response-words", type=int, default=50, help="mean words of a response")
    parser.add_argument("--max-rss-gb", type=float, default=8.0,
                        help="kill a stage whose resident memory passes this")
    parser.add_argument("--label", default="after", help="names this run in the section heading")
    parser.add_argument("--no-write", action="store_true", help="print the table, leave BENCHMARKS.md")
    args = parser.parse_args()

    env = {**os.environ, "PYTHONPATH": str(ROOT), "FGPO_CREATED_AT": CREATED_AT}
    rows, totals = [], {}
    with tempfile.TemporaryDirectory(prefix="fgpo-scale-", dir=os.environ.get("FGPO_BENCH_TMP")) as tmp:
        env.setdefault("FGPO_WORK_DIR", str(Path(tmp) / "work"))
        for n in args.sizes:
            info, results = bench_size(n, Path(tmp), env, args.max_rss_gb, args)
            ok = all(r["rc"] == 0 for r in results) and len(results) == 4
            totals[n] = sum(r["seconds"] for r in results) if ok else None
            for r in results:
                status = "killed (RSS limit)" if r["killed"] else ("ok" if r["rc"] == 0 else f"rc {r['rc']}")
                rows.append([f"{info['pairs'] or n:,}", r["stage"], round(r["seconds"], 1),
                             round(r["rss_gb"], 2), status])
            rows.append([f"{info['pairs'] or n:,}", "**total**",
                         round(totals[n], 1) if totals[n] is not None else "-",
                         round(max(r["rss_gb"] for r in results), 2), "max RSS"])
            print(f"  source: {info['n_rows']:,} rows, {info['source_mb']:.0f} MB, written in "
                  f"{info['write_source_s']:.1f} s", flush=True)
    table = markdown_table(["pairs", "stage", "seconds", "peak RSS GB", "status"], rows)
    ratios = []
    sizes = sorted(n for n in totals if totals[n])
    for small, big in zip(sizes, sizes[1:]):
        ratios.append(f"{big:,}/{small:,} pairs: time x{totals[big] / totals[small]:.1f}")
    sizes_flag = " ".join(str(n) for n in args.sizes)
    body = (f"## Scale: ingest -> validate -> score --from-ratings -> select ({args.label})\n\n"
            f"`nice -n 10 .venv/bin/python benchmarks/bench_scale.py --sizes {sizes_flag}`  \n"
            f"HelpSteer-shaped rated-responses JSONL ({RESPONSES_PER_PROMPT} responses per prompt, "
            f"{len(ASPECTS)} aspects rated 0-4 at random, prompts ~{args.prompt_words} words, "
            f"responses ~{args.response_words} words), `configs/ingest/helpsteer-ratings.yaml`; "
            f"each stage is one `fgpo` process (wall seconds and peak RSS of that process). "
            f"Machine: {machine()} (shared; expect +-30% noise).\n\n{table}\n\n"
            + ("Cost ratios: " + "; ".join(ratios) + ".\n" if ratios else ""))
    print(body)
    if not args.no_write:
        write_section(f"scale_{args.label}" if args.label != "after" else "scale", body)


if __name__ == "__main__":
    main()
