"""Proxy reward-model candidates on a prompt-disjoint HelpSteer2 held-out split: per-aspect and
mean pairwise accuracy, and seconds per 1k pairs (embedding + training + scoring).

    .venv/bin/python benchmarks/bench_proxies.py --data DIR [--phase features|heads|all]

DIR is the HelpSteer2 pair directory built by fgpo's own ingest
(``fgpo ingest --source ../shared/data/helpsteer2-aspects --format helpsteer2-aspects --out DIR``).
The split is ``fgpo_tasks.holdout.split_for_evaluation`` (a prompt hash): the held-out pairs
(``eval_rm`` + ``eval_prompts``) share no prompt with the training pool, unlike the reward-model
stage's own per-aspect pair split (HelpSteer2 has two responses per prompt and the same prompt under
several aspects, so a pair split lets a model see a held-out prompt under another aspect).

Features come from the frozen backbones through the project's embedding cache (one backbone pass
per backbone fills every (layer, pooling) recipe); heads are the reward-model stage's own
``_train_head`` (Bradley-Terry with the length term), one per aspect, trained on the pool's pairs
of that aspect. The table goes to BENCHMARKS.md and to docs/method-choices.md (section
``bench:proxies``); ``--no-write`` only prints.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks._common import machine, markdown_table, write_section  # noqa: E402

METHOD_CHOICES = REPO / "docs" / "method-choices.md"


@dataclass(frozen=True)
class Backbone:
    """One frozen-backbone pass: spec, token caps, and the (layer, pooling) recipes it fills."""
    name: str
    spec: str
    max_length: int
    max_prompt_length: int
    recipes: tuple = ((None, "auto"),)


BACKBONES = {
    # MiniLM-L6 (6 blocks): the final hidden state and blocks 3-5, cross-encoded (prompt, response)
    "minilm": Backbone("minilm", "minilm-l6", 256, 96,
                       ((None, "mean"), (None, "cls"), (3, "mean"), (4, "mean"), (5, "mean"))),
    # the response alone (no prompt): "separate" embeddings; a linear BT head cancels any prompt term
    "minilm-resp": Backbone("minilm-resp", "minilm-l6", 256, 0, ((None, "mean"),)),
    # SmolLM2-135M-Instruct (30 blocks), chat template, blocks 4-12 (the forward stops at 12)
    "smollm2": Backbone("smollm2", "smollm2-135m-instruct", 128, 48,
                        tuple((lay, p) for lay in (4, 8, 12) for p in ("mean", "last"))),
}


@dataclass(frozen=True)
class Candidate:
    """A head on one or more feature recipes (concatenated): ``features`` = ((backbone, layer,
    pooling), ...)."""
    name: str
    features: tuple
    head_hidden: int = 0
    weight_decay: float = 0.01
    lr: float = 1e-3
    epochs: int = 30
    ensemble: int = 1
    rho: float = 0.5
    tau: float | None = None
    extra: dict = field(default_factory=dict, hash=False)


def _f(backbone, layer=None, pooling="mean"):
    return (backbone, layer, pooling)


CANDIDATES = [
    Candidate("minilm final mean, linear (the old default)", (_f("minilm"),)),
    Candidate("minilm final mean, rho 0", (_f("minilm"),), rho=0.0),
    Candidate("minilm final cls, linear", (_f("minilm", None, "cls"),)),
    Candidate("minilm block 3 mean", (_f("minilm", 3),)),
    Candidate("minilm block 4 mean", (_f("minilm", 4),)),
    Candidate("minilm block 5 mean", (_f("minilm", 5),)),
    Candidate("minilm blocks 4+final mean", (_f("minilm", 4), _f("minilm"))),
    Candidate("minilm block 3 mean, MLP 128", (_f("minilm", 3),), head_hidden=128),
    Candidate("minilm block 3 mean, MLP 128, 5-seed ensemble", (_f("minilm", 3),), head_hidden=128, ensemble=5),
    Candidate("minilm block 3 mean, 5-seed ensemble", (_f("minilm", 3),), ensemble=5),
    Candidate("minilm block 3 mean, rho 0", (_f("minilm", 3),), rho=0.0),
    Candidate("minilm block 4 mean, MLP 128, 5-seed ensemble", (_f("minilm", 4),), head_hidden=128, ensemble=5),
    Candidate("minilm response only (separate)", (_f("minilm-resp"),)),
    Candidate("minilm final mean, wd 1", (_f("minilm"),), weight_decay=1.0),
    Candidate("minilm final mean, 10 epochs", (_f("minilm"),), epochs=10),
    Candidate("minilm final mean, 100 epochs lr 3e-4", (_f("minilm"),), epochs=100, lr=3e-4),
    Candidate("minilm final mean, MLP 128", (_f("minilm"),), head_hidden=128),
    Candidate("minilm final mean, MLP 128 wd 0.1", (_f("minilm"),), head_hidden=128, weight_decay=0.1),
    Candidate("minilm final mean, 5-seed ensemble", (_f("minilm"),), ensemble=5),
    Candidate("minilm final mean, MLP 128, 5-seed ensemble", (_f("minilm"),), head_hidden=128, ensemble=5),
] + [
    Candidate(f"smollm2 block {lay} {p}", (_f("smollm2", lay, p),))
    for lay in (4, 8, 12) for p in ("mean", "last")
] + [
    Candidate("smollm2 block 8 mean+last", (_f("smollm2", 8, "mean"), _f("smollm2", 8, "last"))),
    Candidate("smollm2 block 12 mean, MLP 128", (_f("smollm2", 12),), head_hidden=128),
    Candidate("smollm2 block 12 mean, 5-seed ensemble", (_f("smollm2", 12),), ensemble=5),
    Candidate("smollm2 block 12 mean, rho 0", (_f("smollm2", 12),), rho=0.0),
    Candidate("minilm final + smollm2 block 12 mean", (_f("minilm"), _f("smollm2", 12))),
    Candidate("minilm final + smollm2 block 12 mean, 5-seed ensemble", (_f("minilm"), _f("smollm2", 12)),
              ensemble=5),
]


def read(data: Path, prompt_fraction: float):
    """The pairs of a fixed ``prompt_fraction`` of the prompts (by prompt hash, seed 99; 1 = all):
    a smaller bench on a shared CPU keeps whole prompts."""
    from fgpo_tasks import contract
    from fgpo_tasks.holdout import split_for_evaluation

    df = contract.read_pairs(data)
    if prompt_fraction >= 1:
        return df
    _, a, b = split_for_evaluation(df, prompt_fraction, 0.5, 99)
    return df.loc[sorted(set(a.index) | set(b.index))]


def split(data: Path, seed: int, fraction: float, prompt_fraction: float = 1.0):
    """(pool, held-out) frames, disjoint by prompt (the evaluation split's prompt hash)."""
    import pandas as pd

    from fgpo_tasks.holdout import split_for_evaluation

    df = read(data, prompt_fraction)
    pool, eval_rm, eval_prompts = split_for_evaluation(df, fraction, 0.5, seed)
    return pool.reset_index(drop=True), pd.concat([eval_rm, eval_prompts]).reset_index(drop=True)


def texts(df) -> tuple[list[str], list[str]]:
    pairs = list(dict.fromkeys(list(zip(df["prompt"], df["chosen"])) + list(zip(df["prompt"], df["rejected"]))))
    return [p for p, _ in pairs], [r for _, r in pairs]


def embedder(bb: Backbone):
    from fgpo_tasks.reward_models import get_embedder

    return get_embedder(bb.spec, bb.max_length, bb.max_prompt_length, "auto", 16, "cpu")


def _recipes(emb, bb: Backbone):
    return [(lay, emb.pooling if p == "auto" else p) for lay, p in bb.recipes]


def features(data: Path, cache: Path, names: list[str], timings: Path, prompt_fraction: float) -> None:
    """Fill the embedding cache for every backbone in ``names`` over every text of ``data``;
    record seconds per text (cold: texts already cached are not timed)."""
    df = read(data, prompt_fraction)
    prompts, responses = texts(df)
    done = json.loads(timings.read_text()) if timings.exists() else {}
    for name in names:
        bb = BACKBONES[name]
        emb = embedder(bb)
        from fgpo_tasks.reward_models.config import text_key
        from fgpo_tasks.reward_models.embeddings import embedding_cache

        recipes = _recipes(emb, bb)
        keys = [text_key(p, r) for p, r in zip(prompts, responses)]
        missing = set()
        for r in recipes:
            c = embedding_cache(cache, emb.recipe_key(*r))
            c.refresh()
            missing |= set(c.missing(keys))
        t = time.perf_counter()
        emb.fill_cache(prompts, responses, cache, recipes, progress=True, chunk=256)
        dt = time.perf_counter() - t
        if missing:
            done = json.loads(timings.read_text()) if timings.exists() else {}  # other passes' entries
            prev = done.get(name, {"texts": 0, "seconds": 0.0})  # an interrupted fill resumed
            n, sec = prev["texts"] + len(missing), prev["seconds"] + dt
            done[name] = {"texts": n, "seconds": round(sec, 1), "seconds_per_text": sec / n,
                          "n_recipes": len(recipes)}
            timings.write_text(json.dumps(done, indent=2))
        print(f"{name}: {len(missing)} texts embedded in {dt:.0f} s", flush=True)


def feature_matrix(df, cand: Candidate, cache: Path):
    """(e_chosen, e_rejected) of ``df``'s pairs: the candidate's recipes concatenated."""
    import numpy as np

    from fgpo_tasks.reward_models.config import text_key
    from fgpo_tasks.reward_models.embeddings import embedding_cache

    p = df["prompt"].tolist()
    kw = [text_key(a, b) for a, b in zip(p, df["chosen"])]
    kl = [text_key(a, b) for a, b in zip(p, df["rejected"])]
    ws, ls = [], []
    for name, layer, pooling in cand.features:
        emb = embedder(BACKBONES[name])
        c = embedding_cache(cache, emb.recipe_key(layer, pooling))
        c.refresh()
        if c.missing(kw + kl):
            raise SystemExit(f"{cand.name}: features {name}/{layer}/{pooling} not cached; run --phase features")
        ws.append(c.get(kw))
        ls.append(c.get(kl))
    return np.concatenate(ws, 1), np.concatenate(ls, 1)


def evaluate(cand: Candidate, pool, held, cache: Path, seed: int) -> dict:
    """Per-aspect held-out accuracy of one head per aspect, and the head seconds."""
    import numpy as np

    from fgpo_tasks.reward_models import RewardModelConfig
    from fgpo_tasks.reward_models.training import (_head_margin, _train_head, pairwise_accuracy,
                                                   word_length)

    cfg = RewardModelConfig(head_hidden=cand.head_hidden, weight_decay=cand.weight_decay, lr=cand.lr,
                            epochs=cand.epochs, rho=cand.rho, tau=cand.tau, seed=seed, device="cpu")
    out, secs = {}, 0.0
    for aspect in sorted(pool["aspect"].unique()):
        tr = pool[pool["aspect"] == aspect]
        ho = held[held["aspect"] == aspect]
        ew, el = feature_matrix(tr, cand, cache)
        hw, hl = feature_matrix(ho, cand, cache)
        lw, ll = word_length(tr["chosen"]), word_length(tr["rejected"])
        t = time.perf_counter()
        margin = np.zeros(len(ho))
        for m in range(cand.ensemble):
            head, _ = _train_head(ew, el, (lw - ll) / cfg.length_unit_words, lw >= ll,
                                  replace(cfg, seed=seed + m), cand.rho, cand.tau)
            margin += _head_margin(head, hw, hl) / cand.ensemble
        secs += time.perf_counter() - t
        out[aspect] = pairwise_accuracy(margin)
    out["mean"] = float(np.mean([out[a] for a in sorted(pool["aspect"].unique())]))
    out["head_seconds"] = secs
    return out


# Reward-model configs (RewardModelConfig overrides) for the HelpSteer v1 conflict AUC
CONFLICT_CONFIGS = {
    "minilm final mean, linear": {"backbone": "minilm-l6"},
    "minilm final mean, 5-seed ensemble": {"backbone": "minilm-l6", "ensemble": 5},
    "minilm final mean, MLP 128, 5-seed ensemble": {"backbone": "minilm-l6", "ensemble": 5, "head_hidden": 128},
    "minilm final mean, MLP 128": {"backbone": "minilm-l6", "head_hidden": 128},
    "minilm block 3 mean": {"backbone": "minilm-l6", "layer": 3, "pooling": "mean"},
    "minilm block 4 mean, MLP 128, 5-seed ensemble": {"backbone": "minilm-l6", "layer": 4, "pooling": "mean",
                                                      "head_hidden": 128, "ensemble": 5},
    "minilm block 3 mean, MLP 128": {"backbone": "minilm-l6", "layer": 3, "pooling": "mean", "head_hidden": 128},
    "minilm block 3 mean, MLP 128, 5-seed ensemble": {"backbone": "minilm-l6", "layer": 3, "pooling": "mean",
                                                      "head_hidden": 128, "ensemble": 5},
    "minilm final mean, MLP 128, 5-seed ensemble, rho 0": {"backbone": "minilm-l6", "ensemble": 5,
                                                           "head_hidden": 128, "rho": 0},
    "smollm2 block 12 mean, MLP 128, 5-seed ensemble": {
        "backbone": "smollm2-135m-instruct", "layer": 12, "pooling": "mean", "max_length": 128,
        "max_prompt_length": 48, "ensemble": 5, "head_hidden": 128},
    **{f"smollm2 block {lay} {p}": {"backbone": "smollm2-135m-instruct", "layer": lay, "pooling": p,
                                    "max_length": 128, "max_prompt_length": 48}
       for lay in (4, 8, 12) for p in ("mean", "last")},
}


# Fine-tuned proxies (RewardModelConfig overrides, mode finetune): the sequence classifier trained
# per aspect on the split's pool, as the reward-model stage's finetune mode trains it
_FT = {"backbone": "minilm-l6", "mode": "finetune", "max_length": 256, "max_prompt_length": 96,
       "batch_size": 16, "epochs": 2}
FINETUNE_CONFIGS = {
    "minilm fine-tuned, all 6 blocks (lr 3e-5)": {**_FT, "lr": 3e-5},
    "minilm fine-tuned, top 2 blocks (lr 1e-4)": {**_FT, "finetune_layers": 2, "lr": 1e-4},
    "minilm LoRA r 8 + head (lr 5e-4)": {**_FT, "lora_r": 8, "lr": 5e-4},
}


def finetune(cfg_name: str, pool, held, seed: int, aspects: list[str]) -> dict:
    """Per-aspect held-out accuracy of a fine-tuned classifier per aspect, and its seconds
    (training + scoring the held-out pairs, cold: no cache serves a fine-tuned model)."""
    import numpy as np

    from fgpo_tasks.reward_models import RewardModelConfig
    from fgpo_tasks.reward_models.training import (_pair_margin_classifier, _train_classifier,
                                                   pairwise_accuracy, word_length)

    cfg = RewardModelConfig(**FINETUNE_CONFIGS[cfg_name], seed=seed, device="cpu", compare_undebiased=False)
    out, secs = {}, 0.0
    for aspect in aspects:
        tr = pool[pool["aspect"] == aspect].sort_values("pair_id").reset_index(drop=True)
        ho = held[held["aspect"] == aspect].reset_index(drop=True)
        lw, ll = word_length(tr["chosen"]), word_length(tr["rejected"])
        t = time.perf_counter()
        model, tok, _ = _train_classifier(tr, (lw - ll) / cfg.length_unit_words, lw >= ll, cfg, cfg.rho, cfg.tau)
        out[aspect] = pairwise_accuracy(_pair_margin_classifier(model, tok, ho, cfg))
        secs += time.perf_counter() - t
        print(f"  {cfg_name} seed {seed} {aspect}: {out[aspect]:.3f} ({len(tr)} train / {len(ho)} held-out pairs, "
              f"{secs:.0f} s so far)", flush=True)
    out["mean"] = float(np.mean([out[a] for a in aspects]))
    out["seconds"] = secs
    return out


def prefill(data: Path, cache: Path, configs: list[dict]) -> None:
    """One backbone pass per (backbone, caps) fills every (layer, pooling) the configs use."""
    from fgpo_tasks import contract
    from fgpo_tasks.reward_models import RewardModelConfig, get_embedder

    groups: dict[tuple, set] = {}
    for c in configs:
        cfg = RewardModelConfig(**c)
        groups.setdefault((cfg.backbone, cfg.max_length, cfg.max_prompt_length), set()).add(
            (cfg.layer, cfg.pooling))
    prompts, responses = texts(contract.read_pairs(data))
    for (spec, ml, mp), recipes in groups.items():
        emb = get_embedder(spec, ml, mp, "auto", 16, "cpu")
        recipes = [(lay, emb.pooling if p == "auto" else p) for lay, p in sorted(recipes, key=str)]
        t = time.perf_counter()
        emb.fill_cache(prompts, responses, cache, recipes, progress=False)
        print(f"prefill {spec}: {len(prompts)} texts, {len(recipes)} recipes, {time.perf_counter() - t:.0f} s",
              flush=True)


def conflict_auc(data: Path, work: Path, names: list[str], gamma: float = 0.95) -> dict:
    """Train each config's proxies on the rated pool itself (``fgpo reward-models``), score it
    (``fgpo score``) and measure how well PD from the proxies finds the pairs that PD from the
    ratings calls conflicting (pd_ratings > 0): ROC AUC, and Spearman(pd, pd_ratings)."""
    import subprocess

    import pandas as pd
    from scipy.stats import mannwhitneyu, spearmanr

    fgpo = [sys.executable, "-m", "fgpo_tasks.cli", "--created-at", "2026-01-01T00:00:00+00:00"]
    out = {}
    prefill(data, work / "embeddings", [CONFLICT_CONFIGS[n] for n in names])
    for name in names:
        slug = "".join(c if c.isalnum() else "-" for c in name)
        rm, sc = work / f"rm-{slug}", work / f"scores-{slug}"
        sets = [a for k, v in CONFLICT_CONFIGS[name].items() for a in ("--set", f"{k}={v}")]
        t = time.perf_counter()
        subprocess.run(fgpo + ["reward-models", "--data", str(data), "--out", str(rm), "--cache-dir",
                               str(work / "embeddings"), "--set", "compare_undebiased=false"] + sets, check=True)
        t_rm = time.perf_counter() - t
        subprocess.run(fgpo + ["score", "--data", str(data), "--reward-models", str(rm), "--out", str(sc),
                               "--gamma", str(gamma)], check=True)
        t_all = time.perf_counter() - t
        s = pd.read_parquet(sc / "scores.parquet").dropna(subset=["pd", "pd_ratings"])
        pos, neg = s.loc[s["pd_ratings"] > 0, "pd"], s.loc[s["pd_ratings"] <= 0, "pd"]
        auc = float(mannwhitneyu(pos, neg).statistic / (len(pos) * len(neg)))
        acc = json.loads((rm / "manifest.json").read_text())["metrics"]
        out[name] = {"auc": auc, "n_conflicting": int(len(pos)), "n": int(len(s)),
                     "spearman": float(spearmanr(s["pd"], s["pd_ratings"]).statistic),
                     "heldout_accuracy": float(sum(m["heldout_accuracy"] for m in acc) / len(acc)),
                     "seconds_train": round(t_rm, 1), "seconds_total": round(t_all, 1)}
        print(name, out[name], flush=True)
    return out


def seconds_per_1k(cand: Candidate, res: dict, n_pairs: int, texts_per_pair: float, timings: dict) -> float | None:
    embed = 0.0
    for name in dict.fromkeys(f[0] for f in cand.features):
        if name not in timings:
            return None
        embed += timings[name]["seconds_per_text"]
    return 1000 * (embed * texts_per_pair + res["head_seconds"] / n_pairs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="HelpSteer2 pair directory (fgpo ingest output)")
    ap.add_argument("--work", default="work/bench-proxies", help="timings and results folder")
    ap.add_argument("--cache", default=None, help="embedding cache root (default <work>/embeddings)")
    ap.add_argument("--phase", choices=["features", "heads", "all", "conflict", "finetune"], default="all")
    ap.add_argument("--finetune", default=None, help="finetune phase: semicolon list of " + "; ".join(FINETUNE_CONFIGS)
                    + " (none: re-render the table)")
    ap.add_argument("--baseline", default="minilm block 4 mean, MLP 128, 5-seed ensemble",
                    help="finetune phase: the frozen candidate measured on the same splits beside them")
    ap.add_argument("--rated", default=None, help="conflict phase: the HelpSteer v1 pair directory "
                    "(fgpo ingest --format rated-responses)")
    ap.add_argument("--conflict", default=None, help="conflict phase: comma list of " + "; ".join(CONFLICT_CONFIGS))
    ap.add_argument("--backbones", default="minilm,minilm-resp,smollm2", help="comma list of " + ",".join(BACKBONES))
    ap.add_argument("--only", default=None, help="semicolon list of substrings: run only matching candidates")
    ap.add_argument("--seeds", default="0,1,2", help="split seeds (the held-out split and head init)")
    ap.add_argument("--holdout-fraction", type=float, default=0.25, help="fraction of prompts held out")
    ap.add_argument("--prompt-fraction", type=float, default=1.0,
                    help="bench on this fraction of the prompts (by prompt hash; 1 = all)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--section", default="proxies", help="BENCHMARKS.md / method-choices.md section name")
    ap.add_argument("--title", default="Proxy reward-model candidates (HelpSteer2, prompt-disjoint held-out split)")
    ap.add_argument("--no-write", action="store_true", help="print only")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    cache = Path(args.cache or work / "embeddings")
    timings_file = work / "embed_timings.json"
    if args.phase in ("features", "all"):
        features(Path(args.data), cache, args.backbones.split(","), timings_file, args.prompt_fraction)
    if args.phase == "features":
        return
    if args.phase == "conflict":
        res_file = work / "conflict.json"
        res = json.loads(res_file.read_text()) if res_file.exists() else {}
        names = [n for n in (args.conflict or "").split(";") if n]  # none: re-render the table
        if names:
            res.update(conflict_auc(Path(args.rated), work, names))
        res_file.write_text(json.dumps(res, indent=2))
        rows = [[k, round(v["auc"], 3), round(v["spearman"], 3), f"{v['n_conflicting']}/{v['n']}",
                 round(v["heldout_accuracy"], 3), v["seconds_total"]] for k, v in res.items()]
        md = "\n".join([
            "## Conflict AUC on the HelpSteer v1 sample (proxies trained on the pool itself)", "",
            "`.venv/bin/python benchmarks/bench_proxies.py --phase conflict --rated DIR --conflict "
            "'NAME;NAME'` (DIR: `fgpo ingest --source ../shared/data/helpsteer-ratings --format "
            "rated-responses`): `fgpo reward-models --data DIR` with the config's fields, then "
            "`fgpo score --gamma 0.95`. AUC: PD from the proxies as a detector of the pairs whose PD "
            f"from ratings is > 0. Machine: {machine()} (shared).", "",
            markdown_table(["proxies", "conflict AUC", "Spearman(pd, pd_ratings)", "conflicting / pairs",
                            "held-out accuracy (own split)", "seconds (train + score, cold)"], rows)])
        print(md)
        if not args.no_write:
            write_section("proxies-conflict", md)
            write_section("proxies-conflict", md, METHOD_CHOICES)
        return
    if args.phase == "finetune":
        finetune_phase(args, cache)
        return
    df = read(Path(args.data), args.prompt_fraction)
    texts_per_pair = len(texts(df)[0]) / len(df)
    timings = json.loads(timings_file.read_text()) if timings_file.exists() else {}
    results_file = work / "results.json"
    results = json.loads(results_file.read_text()) if results_file.exists() else {}
    seeds = [int(s) for s in args.seeds.split(",")]
    splits = {s: split(Path(args.data), s, args.holdout_fraction, args.prompt_fraction) for s in seeds}
    wanted = [c for c in CANDIDATES if not args.only or any(o in c.name for o in args.only.split(";"))]
    for cand in wanted:
        if any(f[0] not in args.backbones.split(",") for f in cand.features):
            continue
        runs = [evaluate(cand, *splits[s], cache, s) for s in seeds]
        aspects = [k for k in runs[0] if k not in ("mean", "head_seconds")]
        import numpy as np

        res = {a: float(np.mean([r[a] for r in runs])) for a in aspects + ["mean"]}
        res["mean_sd"] = float(np.std([r["mean"] for r in runs]))
        res["head_seconds"] = float(np.mean([r["head_seconds"] for r in runs]))
        res["n_train"] = int(np.mean([len(splits[s][0]) for s in seeds]))
        res["n_heldout"] = int(np.mean([len(splits[s][1]) for s in seeds]))
        res["s_per_1k"] = seconds_per_1k(cand, res, res["n_train"] + res["n_heldout"], texts_per_pair, timings)
        results[cand.name] = res
        results_file.write_text(json.dumps(results, indent=2))
        print(f"{cand.name}: mean {res['mean']:.3f} (sd {res['mean_sd']:.3f}) "
              + " ".join(f"{a} {res[a]:.3f}" for a in aspects)
              + f" | s/1k pairs {res['s_per_1k']}", flush=True)
    rows = []
    order = [c.name for c in CANDIDATES if c.name in results]
    aspects = sorted({k for r in results.values() for k in r} - {"mean", "mean_sd", "head_seconds",
                                                                   "n_train", "n_heldout", "s_per_1k"})
    for name in order:
        r = results[name]
        rows.append([name] + [round(r[a], 3) for a in aspects] + [f"**{r['mean']:.3f}**", round(r["mean_sd"], 3),
                    "-" if r["s_per_1k"] is None else round(r["s_per_1k"], 1)])
    n = next(iter(results.values()))
    embed_lines = [f"- `{k}` ({BACKBONES[k].spec}, cap {BACKBONES[k].max_length}, prompt "
                   f"{BACKBONES[k].max_prompt_length}): {v['texts']} texts in {v['seconds']:.0f} s, "
                   f"{v['seconds_per_text'] * 1000:.0f} ms/text, {v['n_recipes']} recipes in one pass"
                   for k, v in timings.items()]
    md = "\n".join([
        f"## {args.title}", "",
        f"`.venv/bin/python benchmarks/bench_proxies.py --data DIR --backbones {args.backbones} --seeds {args.seeds} "
        f"--holdout-fraction {args.holdout_fraction} --prompt-fraction {args.prompt_fraction}` "
        "(DIR: `fgpo ingest --format helpsteer2-aspects`)  ",
        f"Machine: {machine()} (shared with other jobs; expect +-50% noise in seconds). "
        f"Split: {args.holdout_fraction:.0%} of the prompts held out (`holdout.split_for_evaluation`), "
        f"~{n['n_train']} training / ~{n['n_heldout']} held-out pairs over 5 aspects; accuracies are "
        f"means over split seeds {args.seeds} (sd = the spread of the mean over seeds). "
        "s/1k pairs = backbone seconds per text x distinct texts per pair (cold cache, one pass "
        "for all recipes of a backbone, so it is what the pipeline pays for that backbone) + "
        "head training for 5 aspects + scoring, per 1,000 pairs.", "",
        markdown_table(["candidate"] + aspects + ["mean", "sd", "s/1k pairs"], rows), "",
        "Backbone passes (cold):", "", *embed_lines,
    ])
    print(md)
    if not args.no_write:
        write_section(args.section, md)
        write_section(args.section, md, METHOD_CHOICES)


def finetune_phase(args, cache: Path) -> None:
    """Fine-tuned candidates and the frozen ``--baseline`` on the same prompt-disjoint splits;
    results accumulate in <work>/finetune.json; the table goes to section ``<--section>``."""
    import numpy as np

    work = Path(args.work)
    res_file = work / "finetune.json"
    results = json.loads(res_file.read_text()) if res_file.exists() else {}
    seeds = [int(s) for s in args.seeds.split(",")]
    splits = {s: split(Path(args.data), s, args.holdout_fraction, args.prompt_fraction) for s in seeds}
    aspects = sorted(splits[seeds[0]][0]["aspect"].unique())
    names = [n for n in (args.finetune or "").split(";") if n]
    for name in names:
        if name not in FINETUNE_CONFIGS:
            raise SystemExit(f"unknown fine-tune config {name!r}; known: {list(FINETUNE_CONFIGS)}")
        runs = [finetune(name, *splits[s], s, aspects) for s in seeds]
        results[name] = {"runs": runs, "seeds": seeds, "config": FINETUNE_CONFIGS[name],
                         "n_pairs": int(np.mean([len(splits[s][0]) + len(splits[s][1]) for s in seeds]))}
        res_file.write_text(json.dumps(results, indent=2))
    if names and args.baseline:  # the frozen default on the same splits (features from --phase features)
        cand = next(c for c in CANDIDATES if c.name == args.baseline)
        t = time.perf_counter()
        runs = [evaluate(cand, *splits[s], cache, s) for s in seeds]
        timings = json.loads((work / "embed_timings.json").read_text())
        df = read(Path(args.data), args.prompt_fraction)
        embed_s = timings["minilm"]["seconds_per_text"] * len(texts(df)[0])
        for r in runs:
            r["seconds"] = r.pop("head_seconds") + embed_s
        results[f"frozen baseline: {cand.name}"] = {"runs": runs, "seeds": seeds, "n_pairs": len(df)}
        res_file.write_text(json.dumps(results, indent=2))
        print(f"baseline {time.perf_counter() - t:.0f} s", flush=True)
    rows = []
    for name, r in results.items():
        acc = {a: float(np.mean([run[a] for run in r["runs"]])) for a in aspects}
        mean = float(np.mean([run["mean"] for run in r["runs"]]))
        s1k = 1000 * float(np.mean([run["seconds"] for run in r["runs"]])) / r["n_pairs"]
        rows.append([name] + [round(acc[a], 3) for a in aspects] + [f"**{mean:.3f}**",
                    ",".join(map(str, r["seeds"])), round(s1k, 1)])
    n = splits[seeds[0]]
    md = "\n".join([
        f"## Fine-tuned MiniLM proxies vs the frozen default (HelpSteer2, prompt-disjoint held-out split)", "",
        f"`.venv/bin/python benchmarks/bench_proxies.py --data DIR --phase finetune --finetune 'NAME;NAME' "
        f"--seeds {args.seeds} --holdout-fraction {args.holdout_fraction} --prompt-fraction {args.prompt_fraction}` "
        "(after `--phase features --backbones minilm` at the same prompt fraction, for the baseline)  ",
        f"Machine: {machine()} (shared with other jobs). Split seed {seeds[0]}: {len(n[0])} training / "
        f"{len(n[1])} held-out pairs over 5 aspects, no held-out prompt trained on. One classifier per "
        "aspect (`mode: finetune`, 2 epochs, batch 16, 256 tokens, rho 0.5). s/1k pairs: training + "
        "scoring the held-out pairs, all aspects, per 1,000 pairs of the split (the frozen row: one "
        "backbone pass per text, cold, + heads).", "",
        markdown_table(["candidate"] + aspects + ["mean", "split seeds", "s/1k pairs"], rows)])
    print(md)
    if not args.no_write:
        write_section(args.section, md)
        write_section(args.section, md, METHOD_CHOICES)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
