"""PD scoring speed: padding of length-sorted vs file-order batches, scoring pairs/s, and the
time of ``frozen`` against ``finetune`` reward models for K = 5 aspects.

    .venv/bin/python benchmarks/bench_scoring.py [--score-pairs 150] [--train-pairs 40] [--max-length 256]

Data: the real HelpSteer2 per-aspect files in ../shared/data (ingested with fgpo's own adapter).
Backbone: MiniLM-L6 (``minilm-l6``), the CPU default. Sizes are kept small because the CPUs are
shared; the measured rates, not the totals, are the result.
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

DATA = REPO.parent / "shared" / "data" / "helpsteer2-aspects"
CREATED_AT = "2026-01-01T00:00:00+00:00"


def ingest(work: Path) -> Path:
    from fgpo_tasks.ingest.config import IngestConfig
    from fgpo_tasks.ingest.run import run_ingest

    out = work / "hs2"
    run_ingest([str(DATA)], ["helpsteer2-aspects"], out, IngestConfig(), CREATED_AT)
    return out


def subset(data: Path, out: Path, per_aspect: int, seed: int = 0) -> Path:
    """The first ``per_aspect`` pairs of each aspect by pair_id (deterministic)."""
    from fgpo_tasks import contract

    df = contract.read_pairs(data).sort_values("pair_id")
    df = df.groupby("aspect", group_keys=False).head(per_aspect)
    contract.write_pairs(df, out, stage="bench", config={}, created_at=CREATED_AT)
    return out


def padding(data: Path, backbone: str, max_length: int, batch_size: int) -> list[list]:
    import numpy as np

    from fgpo_tasks import contract
    from fgpo_tasks.models import load_tokenizer
    from fgpo_tasks.reward_models import encode_texts, length_sorted_batches, padding_fraction

    df = contract.read_pairs(data)
    texts = list(dict.fromkeys(list(zip(df["prompt"], df["chosen"])) + list(zip(df["prompt"], df["rejected"]))))
    tok = load_tokenizer(backbone)
    rows = []
    for cap in (max_length, 512):
        feats = encode_texts(tok, [p for p, _ in texts], [r for _, r in texts], cap, min(96, cap // 2))
        lengths = np.array([len(f["input_ids"]) for f in feats])
        naive = [np.arange(i, min(i + batch_size, len(lengths))) for i in range(0, len(lengths), batch_size)]
        rows.append([f"{backbone}, cap {cap}", len(lengths), int(np.median(lengths)),
                     f"{padding_fraction(lengths, naive):.1%}",
                     f"{padding_fraction(lengths, length_sorted_batches(lengths, batch_size)):.1%}"])
    return rows


def embed_speed(data: Path, backbone: str, max_length: int, batch_size: int, n_texts: int) -> list[list]:
    """Wall time of one backbone pass over the same texts in file order vs length-sorted batches
    (the first ``n_texts`` distinct chosen responses, in file order)."""
    import numpy as np
    import torch

    from fgpo_tasks import contract
    from fgpo_tasks.reward_models import (_collate, encode_texts, get_embedder, length_sorted_batches,
                                          padding_fraction)

    df = contract.read_pairs(data)
    texts = list(dict.fromkeys(zip(df["prompt"], df["chosen"])))[:n_texts]
    emb = get_embedder(backbone, max_length, 96, "auto", batch_size)
    feats = encode_texts(emb.tokenizer, [p for p, _ in texts], [r for _, r in texts], max_length, 96)
    lengths = [len(f["input_ids"]) for f in feats]
    orders = {"file order": [np.arange(i, min(i + batch_size, len(feats))) for i in range(0, len(feats), batch_size)],
              "length-sorted": length_sorted_batches(lengths, batch_size)}
    rows = []
    for name, batches in orders.items():
        pad = padding_fraction(lengths, batches)
        start = time.perf_counter()
        with torch.inference_mode():
            for b in batches:
                enc = _collate(emb.tokenizer, [feats[i] for i in b], "cpu")
                emb.model(**enc)
        sec = time.perf_counter() - start
        rows.append([name, len(feats), f"{pad:.1%}", round(sec, 1), round(len(feats) / sec, 1)])
    return rows


def train_k5(data: Path, work: Path, mode: str, backbone: str, max_length: int) -> dict:
    from fgpo_tasks.reward_models import RewardModelConfig, run_reward_models

    cfg = RewardModelConfig(backbone=backbone, mode=mode, max_length=max_length, max_prompt_length=64,
                            compare_undebiased=False, cache_dir=str(work / f"emb-{mode}"),
                            epochs=None, batch_size=8 if mode == "finetune" else 32)
    start = time.perf_counter()
    m = run_reward_models(data, work / f"rm-{mode}", cfg, CREATED_AT)
    return {"seconds": time.perf_counter() - start, "metrics": m}


def score_speed(data: Path, work: Path, rm_dir: Path) -> list[list]:
    from fgpo_tasks import contract
    from fgpo_tasks.scoring import ScoreConfig, run_score

    n = len(contract.read_pairs(data))
    rows = []
    for label, cfg in (("cold (embed + heads)", ScoreConfig(cache_dir=str(work / "sc"), progress=False,
                                                           embedding_cache_dir=str(work / "emb-cold"))),
                       ("embeddings cached, score cache empty", ScoreConfig(cache_dir=str(work / "sc2"), progress=False,
                                                                         embedding_cache_dir=str(work / "emb-cold"))),
                       ("warm score cache", ScoreConfig(cache_dir=str(work / "sc"), progress=False,
                                                        embedding_cache_dir=str(work / "emb-cold")))):
        start = time.perf_counter()
        run_score(data, work / "scores", cfg, CREATED_AT, reward_models_dir=rm_dir)
        sec = time.perf_counter() - start
        rows.append([label, n, round(sec, 2), round(n / sec, 1)])
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--score-pairs", type=int, default=30, help="pairs per aspect for the scoring run")
    ap.add_argument("--train-pairs", type=int, default=40, help="pairs per aspect for the K=5 training run")
    ap.add_argument("--embed-texts", type=int, default=64, help="texts for the sorted-vs-naive pass")
    ap.add_argument("--embed-max-length", type=int, default=512, help="cap of the sorted-vs-naive pass")
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--backbone", default="minilm-l6")
    ap.add_argument("--work", default=None, help="scratch folder (default: a temp folder)")
    ap.add_argument("--modes", nargs="+", default=["frozen", "finetune"], choices=["frozen", "finetune"],
                    help="reward-model modes to train (scoring uses the frozen ones); without finetune "
                         "the section is printed only")
    ap.add_argument("--no-write", action="store_true", help="print, do not update BENCHMARKS.md")
    args = ap.parse_args()

    work = Path(args.work or tempfile.mkdtemp(prefix="bench-scoring-"))
    os.environ.setdefault("FGPO_WORK_DIR", str(work / "fgpo"))
    from fgpo_tasks.env import setup_environment

    setup_environment()
    full = ingest(work)
    pad_rows = padding(full, args.backbone, args.max_length, args.batch_size)
    speed_rows = embed_speed(full, args.backbone, args.embed_max_length, args.batch_size, args.embed_texts)
    train_data = subset(full, work / "train", args.train_pairs)
    modes = {m: train_k5(train_data, work, m, args.backbone, args.max_length) for m in dict.fromkeys(["frozen", *args.modes])}
    if "finetune" not in modes:  # a quick check of the scoring and embedding paths
        modes["finetune"] = {"seconds": float("nan"), "metrics": {"heldout_accuracy": {a: float("nan") for a in range(5)}}}
        args.no_write = True
    score_data = subset(full, work / "score", args.score_pairs)
    score_rows = score_speed(score_data, work, work / "rm-frozen")

    cmd = (f"`.venv/bin/python benchmarks/bench_scoring.py --score-pairs {args.score_pairs} "
           f"--train-pairs {args.train_pairs} --embed-texts {args.embed_texts} "
           f"--embed-max-length {args.embed_max_length} --max-length {args.max_length}`")
    fz, ft = modes["frozen"], modes["finetune"]
    md = [
        "## PD scoring and proxy reward models (HelpSteer2, MiniLM-L6)", "",
        f"{cmd}  ",
        f"Machine: {machine()} (shared with other jobs; expect +-50% noise). Backbone `{args.backbone}`, "
        f"batch {args.batch_size}.", "",
        "Padding tokens over all distinct (prompt, response) texts of HelpSteer2 (prompt keeps its last "
        "96 tokens):", "",
        markdown_table(["tokenizer, cap", "texts", "median tokens", "padding, file-order batches",
                        "padding, length-sorted batches"], pad_rows), "",
        f"One frozen backbone pass over {args.embed_texts} texts (cap {args.embed_max_length}):", "",
        markdown_table(["batch order", "texts", "padding", "seconds", "texts / s"], speed_rows), "",
        f"Scoring (`run_score`, 5 frozen reward models, {args.score_pairs} pairs per aspect; every model "
        "scores the pairs of the 4 other aspects):", "",
        markdown_table(["cache state", "pairs", "seconds", "pairs / s"], score_rows), "",
        f"Training K = 5 reward models ({args.train_pairs} pairs per aspect, 80% trained, cap "
        f"{args.max_length}, one epoch of fine-tuning vs 30 head epochs; the accuracy is on "
        f"{round(0.2 * args.train_pairs)} held-out pairs per aspect, so it is noise, shown only as a "
        "sanity check):", "",
        markdown_table(["mode", "seconds", "held-out accuracy (mean of 5)"], [
            ["frozen (embed once + 5 heads)", round(fz["seconds"], 1),
             round(sum(fz["metrics"]["heldout_accuracy"].values()) / 5, 3)],
            ["finetune (5 backbones)", round(ft["seconds"], 1),
             round(sum(ft["metrics"]["heldout_accuracy"].values()) / 5, 3)],
        ]), "",
        f"Frozen is {ft['seconds'] / fz['seconds']:.1f}x faster here; the gap grows with data because "
        "fine-tuning pays forward + backward per aspect and epoch, frozen one forward per text overall.",
    ]
    text = "\n".join(md)
    print(text)
    if not args.no_write:
        write_section("scoring", text)


if __name__ == "__main__":
    main()
