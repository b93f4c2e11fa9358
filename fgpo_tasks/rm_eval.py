"""Proxy reward-model evaluation: how well each r_k ranks the pairs of its own aspect.

``fgpo rm-eval --reward-models DIR --data DIR --out DIR``: every proxy under DIR (the folder
``fgpo reward-models`` writes) scores the pairs of its own aspect k in DATA (any contract table)
with the same scorer ``fgpo score`` uses, margin = r_k(x, y_w) - r_k(x, y_l). Pairs a proxy
trained on (its ``training_ids.json``) are left out by default, so the figures are held-out
figures; their count is reported.

Writes into OUT:

- ``margins.parquet``: columns ``pair_id``, ``aspect``, ``margin`` (one row per scored pair);
- ``rm_eval.json`` (strict JSON): per aspect ``accuracy`` (share of positive margins, a tie
  counts one half), ``n``, ``n_excluded_training``, ``accuracy_ci`` ([low, high], percentile
  bootstrap over pairs), ``length_pearson`` / ``length_spearman`` (correlation of the margin with
  the word-count difference chosen - rejected; null when undefined), plus the config;
- ``margins.png``: the margin histogram of each aspect.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fgpo_tasks import contract, jsonio
from fgpo_tasks.config import check, to_dict
from fgpo_tasks.errors import FgpoError, InputError
from fgpo_tasks.storage import atomic_dir

log = logging.getLogger(__name__)

MARGINS_FILE = "margins.parquet"
EVAL_FILE = "rm_eval.json"
PLOT_FILE = "margins.png"


@dataclass
class RmEvalConfig:
    n_bootstrap: int = field(default=1000, metadata={
        "help": "bootstrap resamples of the pairs for the accuracy CI"})
    ci_level: float = field(default=0.95, metadata={"help": "confidence level of the accuracy CI"})
    seed: int = field(default=0, metadata={"help": "seed of the bootstrap"})
    exclude_training: bool = field(default=True, metadata={
        "help": "leave out the pairs each proxy trained on (its training_ids.json)"})
    embedding_cache_dir: str | None = field(default=None, metadata={
        "help": "embedding cache root for frozen models; default: the one each model was trained with",
        "inert": True})
    progress: bool = field(default=True, metadata={"help": "show progress bars", "inert": True})

    def __post_init__(self):
        check(self.n_bootstrap >= 1, f"n_bootstrap must be >= 1, got {self.n_bootstrap}")
        check(0.0 < self.ci_level < 1.0, f"ci_level must be in (0, 1), got {self.ci_level}")


# ---------------------------------------------------------------------------------------------
# Pure functions

def accuracy(margin) -> float | None:
    """Share of positive margins, a tie counting one half; None for no pairs."""
    m = np.asarray(margin, dtype=float)
    return float(np.mean((m > 0) + 0.5 * (m == 0))) if len(m) else None


def bootstrap_ci(margin, n_bootstrap: int, level: float, seed: int) -> list[float] | None:
    """Percentile bootstrap CI [low, high] of ``accuracy`` over resampled pairs."""
    m = np.asarray(margin, dtype=float)
    if len(m) == 0:
        return None
    wins = (m > 0) + 0.5 * (m == 0)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(m), size=(n_bootstrap, len(m)))
    accs = wins[idx].mean(axis=1)
    a = (1.0 - level) / 2
    return [float(np.quantile(accs, a)), float(np.quantile(accs, 1 - a))]


def correlations(margin, length_diff) -> tuple[float | None, float | None]:
    """(Pearson, Spearman) of margin with the length difference; None when undefined."""
    from fgpo_tasks.reward_models import spearman

    x, y = np.asarray(margin, dtype=float), np.asarray(length_diff, dtype=float)
    if len(x) < 3 or np.all(x == x[0]) or np.all(y == y[0]):
        return None, spearman(x, y)
    return float(np.corrcoef(x, y)[0, 1]), spearman(x, y)


def aspect_summary(margin, length_diff, config: RmEvalConfig) -> dict[str, Any]:
    pear, spear = correlations(margin, length_diff)
    return {"accuracy": accuracy(margin), "n": int(len(margin)),
            "accuracy_ci": bootstrap_ci(margin, config.n_bootstrap, config.ci_level, config.seed),
            "ci_level": config.ci_level, "length_pearson": pear, "length_spearman": spear}


def _plot(table: pd.DataFrame, path: Path) -> None:
    from fgpo_tasks.reports import _plt

    plt = _plt()
    aspects = sorted(table["aspect"].unique())
    fig, axes = plt.subplots(1, max(1, len(aspects)), figsize=(3.2 * max(1, len(aspects)), 2.8),
                             squeeze=False)
    for ax, a in zip(axes[0], aspects):
        ax.hist(table.loc[table["aspect"] == a, "margin"], bins=30)
        ax.axvline(0, color="k", lw=0.8)
        ax.set_title(a)
        ax.set_xlabel("r(chosen) - r(rejected)")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------
# The stage

def run_rm_eval(reward_models_dir: str | Path, data_dir: str | Path, out_dir: str | Path,
                config: RmEvalConfig, created_at: str) -> dict[str, Any]:
    """Score each proxy on its own aspect's pairs of ``data_dir``; write margins, summary, plot."""
    from fgpo_tasks import reward_models as rm
    from fgpo_tasks.scoring import _pair_margins

    models = rm.discover_models(reward_models_dir)
    df = contract.read_pairs(data_dir)
    if len(df) == 0:
        raise InputError("no pairs to evaluate", file=str(data_dir))
    parts, summary = [], {}
    for m in models:
        rows = df[df["aspect"] == m["aspect"]]
        n_all = len(rows)
        if config.exclude_training:
            rows = rows[~rows["pair_id"].isin(m["training_ids"])]
        if len(rows) == 0:
            log.warning("rm-eval: no %s pairs to evaluate (%d in the data, all used in training)",
                        m["aspect"], n_all)
            continue
        score = rm.load_scorer(m["dir"], cache_dir=config.embedding_cache_dir, progress=config.progress)
        margin = _pair_margins(score, rows)
        dlen = rm.word_length(rows["chosen"]) - rm.word_length(rows["rejected"])
        summary[m["aspect"]] = {**aspect_summary(margin, dlen, config),
                                "n_excluded_training": int(n_all - len(rows)), "model_dir": m["dir"],
                                "fingerprint": m["fingerprint"]}
        parts.append(pd.DataFrame({"pair_id": rows["pair_id"].to_numpy(), "aspect": m["aspect"],
                                   "margin": np.asarray(margin, dtype=np.float64)}))
    if not parts:
        raise FgpoError(f"{data_dir}: no pairs of the proxies' aspects {[m['aspect'] for m in models]} "
                        "left to evaluate")
    table = pd.concat(parts, ignore_index=True)
    result = {"kind": "fgpo.rm_eval", "created_at": created_at, "reward_models_dir": str(reward_models_dir),
              "data_dir": str(data_dir), "config": to_dict(config), "aspects": summary}
    with atomic_dir(out_dir) as tmp:
        table.to_parquet(tmp / MARGINS_FILE, index=False)
        jsonio.write_json(tmp / EVAL_FILE, result)
        _plot(table, tmp / PLOT_FILE)
    for a, s in summary.items():
        log.info("rm-eval %s: accuracy %.3f (n=%d, CI %s)", a, s["accuracy"], s["n"], s["accuracy_ci"])
    return {**result, "out_dir": str(out_dir)}
