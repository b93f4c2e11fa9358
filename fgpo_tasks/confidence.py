"""How far PD selection can be trusted: the ``selection_confidence`` report and its verdict.

PD is only as good as the proxies behind it. The score step writes this report
(``selection_confidence.json`` beside ``scores.parquet`` and under ``selection_confidence`` in
the scores manifest); the select step reads it and follows ``SelectConfig.on_weak_proxies``.

The evidence:

- each proxy's held-out pairwise accuracy (the share of its own aspect's held-out pairs it orders
  like the label, from its training record) with a Wilson score interval at ``level``;
- where the pool carries other aspects' ratings (``pd_ratings``): Spearman(PD, PD from ratings)
  and the *conflict AUC*: how well PD from the proxies ranks the pairs that PD from ratings calls
  conflicting (``pd_ratings > 0``) above the rest (Mann-Whitney AUC, ties one half, with the
  Hanley-McNeil interval).

The verdict (thresholds: ``ConfidenceConfig``):

- ``none``: no proxy is distinguishable from chance: every proxy's interval reaches down to 0.5
  (it includes 0.5, or lies below it: a proxy worse than chance is no evidence either); or, with
  enough rated pairs and ``none_if_auc_at_chance``, the conflict AUC's interval reaches 0.5 (PD
  itself, measured against the ratings, is at chance);
- ``ok``: not ``none``, the mean accuracy >= ``ok_mean_accuracy``, every proxy's accuracy >=
  ``ok_min_accuracy`` and, where ratings give enough pairs (``min_rating_pairs``), the conflict
  AUC >= ``ok_conflict_auc`` and the Spearman correlation >= ``ok_spearman``;
- ``weak``: the rest.

PD from ratings (``fgpo score --from-ratings``) uses no proxy: its verdict is ``ok``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fgpo_tasks.choices import ON_WEAK
from fgpo_tasks.config import check, to_dict
from fgpo_tasks.errors import FgpoError

REPORT_FILE = "selection_confidence.json"
VERDICTS = ("ok", "weak", "none")
# strategies that rank by PD from the proxies: the ones the verdict is about
PROXY_PD_STRATEGIES = ("pd", "pd_high", "pd_mid")


@dataclass
class ConfidenceConfig:
    level: float = field(default=0.95, metadata={
        "help": "confidence level of the accuracy (Wilson) and conflict-AUC (Hanley-McNeil) intervals"})
    ok_mean_accuracy: float = field(default=0.65, metadata={
        "help": "ok needs the proxies' mean held-out accuracy at least this (issue 13's target)"})
    ok_min_accuracy: float = field(default=0.58, metadata={
        "help": "ok needs every proxy's held-out accuracy at least this (issue 13's target)"})
    ok_conflict_auc: float = field(default=0.70, metadata={
        "help": "with ratings, ok needs the conflict AUC (PD vs pd_ratings > 0) at least this"})
    ok_spearman: float = field(default=0.30, metadata={
        "help": "with ratings, ok needs Spearman(PD, PD from ratings) at least this"})
    none_if_auc_at_chance: bool = field(default=True, metadata={
        "help": "with enough rated pairs, a conflict-AUC interval that reaches 0.5 also gives 'none': "
                "PD measured directly against PD from ratings is at chance, whatever the proxies' "
                "own accuracies"})
    min_rating_pairs: int = field(default=20, metadata={
        "help": "the rating figures enter the verdict only with at least this many pairs carrying "
                "both PDs (and both conflicting and other pairs, for the AUC)"})

    def __post_init__(self):
        check(0.0 < self.level < 1.0, f"confidence level must be in (0, 1), got {self.level}")
        for name in ("ok_mean_accuracy", "ok_min_accuracy", "ok_conflict_auc"):
            v = getattr(self, name)
            check(0.0 <= v <= 1.0, f"{name} must be in [0, 1], got {v}")
        check(-1.0 <= self.ok_spearman <= 1.0, f"ok_spearman must be in [-1, 1], got {self.ok_spearman}")
        check(self.min_rating_pairs >= 3, f"min_rating_pairs must be >= 3, got {self.min_rating_pairs}")


def _z(level: float) -> float:
    from scipy.stats import norm

    return float(norm.ppf(0.5 + level / 2))


# ---------------------------------------------------------------------------------------------
# Pure statistics

def wilson_interval(p: float, n: int, level: float = 0.95) -> list[float] | None:
    """Wilson score interval [low, high] of a proportion ``p`` observed on ``n`` trials; None for
    n = 0. (The naive p +- z sqrt(p(1-p)/n) collapses to a point at p = 0 or 1; Wilson does not.)"""
    if not n:
        return None
    z = _z(level)
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return [max(0.0, centre - half), min(1.0, centre + half)]


def auc(score, positive) -> float | None:
    """P(score of a positive > score of a negative), ties one half (Mann-Whitney U / n1 n0).
    None without both classes. Naive equivalent: the mean over all (positive, negative) pairs of
    (s_p > s_n) + 0.5 (s_p == s_n)."""
    from scipy.stats import rankdata

    s = np.asarray(score, dtype=float)
    pos = np.asarray(positive, dtype=bool)
    n1, n0 = int(pos.sum()), int((~pos).sum())
    if n1 == 0 or n0 == 0:
        return None
    ranks = rankdata(s)  # average ranks for ties
    return float((ranks[pos].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def auc_interval(a: float, n_pos: int, n_neg: int, level: float = 0.95) -> list[float] | None:
    """Hanley & McNeil (1982) normal interval of an AUC from the class sizes."""
    if a is None or not n_pos or not n_neg:
        return None
    q1, q2 = a / (2 - a), 2 * a * a / (1 + a)
    var = (a * (1 - a) + (n_pos - 1) * (q1 - a * a) + (n_neg - 1) * (q2 - a * a)) / (n_pos * n_neg)
    half = _z(level) * math.sqrt(max(var, 0.0))
    return [max(0.0, a - half), min(1.0, a + half)]


def rating_agreement(pd_values, pd_ratings, level: float = 0.95) -> dict[str, Any] | None:
    """Spearman(PD, PD from ratings) and the conflict AUC over the pairs carrying both; None when
    no pair carries both."""
    from fgpo_tasks.reward_models import spearman

    x, y = np.asarray(pd_values, dtype=float), np.asarray(pd_ratings, dtype=float)
    ok = np.isfinite(x) & np.isfinite(y)
    if not ok.any():
        return None
    x, y = x[ok], y[ok]
    conflicting = y > 0
    a = auc(x, conflicting)
    n_pos, n_neg = int(conflicting.sum()), int((~conflicting).sum())
    return {"n_pairs": int(ok.sum()), "n_conflicting": n_pos, "spearman": spearman(x, y),
            "conflict_auc": a, "conflict_auc_ci": auc_interval(a, n_pos, n_neg, level)}


def proxy_evidence(models: list[dict], level: float = 0.95) -> dict[str, dict]:
    """{aspect: {accuracy, n, ci}} from the proxies' training records (``metrics.heldout_accuracy``
    on ``metrics.n_heldout`` held-out pairs of the proxy's own aspect)."""
    out = {}
    for m in models:
        metrics = m.get("metrics") or {}
        acc, n = metrics.get("heldout_accuracy"), int(metrics.get("n_heldout") or 0)
        if acc is None:
            n = 0
        out[m["aspect"]] = {"accuracy": acc, "n": n,
                            "ci": wilson_interval(acc, n, level) if n else None}
    return out


# ---------------------------------------------------------------------------------------------
# The verdict

def verdict(proxies: dict[str, dict], ratings: dict | None, config: ConfidenceConfig
            ) -> tuple[str, list[str]]:
    """(``ok`` | ``weak`` | ``none``, the reasons) from the proxies' evidence and, when given,
    the rating agreement (``rating_agreement``); the rules are in the module doc."""
    above = [a for a, p in proxies.items() if p.get("ci") and p["ci"][0] > 0.5]
    if not above:
        shown = ", ".join(f"{a} {_fmt(p['accuracy'])} (n={p['n']}, CI {_fmt_ci(p['ci'])})"
                          for a, p in sorted(proxies.items())) or "no proxy"
        return "none", [f"no proxy is distinguishable from chance: every held-out accuracy interval "
                        f"reaches 0.5 ({shown})"]
    rated = bool(ratings and ratings["n_pairs"] >= config.min_rating_pairs)
    ci = ratings.get("conflict_auc_ci") if rated else None
    if config.none_if_auc_at_chance and ci and ci[0] <= 0.5:
        return "none", [f"PD does not find the pairs PD from ratings calls conflicting better than chance: "
                        f"conflict AUC {_fmt(ratings['conflict_auc'])} (CI {_fmt_ci(ci)}, "
                        f"{ratings['n_pairs']} pairs)"]
    reasons = []
    accs = {a: p["accuracy"] for a, p in proxies.items() if p.get("accuracy") is not None}
    mean = float(np.mean(list(accs.values())))
    if mean < config.ok_mean_accuracy:
        reasons.append(f"mean held-out accuracy {mean:.3f} < ok_mean_accuracy {config.ok_mean_accuracy}")
    low = sorted(a for a in proxies if (accs.get(a) is None or accs[a] < config.ok_min_accuracy))
    if low:
        reasons.append("held-out accuracy below ok_min_accuracy "
                       f"{config.ok_min_accuracy}: " + ", ".join(f"{a} {_fmt(accs.get(a))}" for a in low))
    if rated:
        a = ratings.get("conflict_auc")
        if a is not None and a < config.ok_conflict_auc:
            reasons.append(f"conflict AUC {a:.3f} < ok_conflict_auc {config.ok_conflict_auc}")
        s = ratings.get("spearman")
        if s is None or s < config.ok_spearman:
            reasons.append(f"Spearman(PD, PD from ratings) {_fmt(s)} < ok_spearman {config.ok_spearman}")
    if reasons:
        return "weak", reasons
    return "ok", [f"{len(above)} of {len(proxies)} proxies above chance, mean held-out accuracy "
                  f"{mean:.3f}" + (f", conflict AUC {_fmt(ratings.get('conflict_auc'))}, Spearman "
                                   f"{_fmt(ratings.get('spearman'))}" if ratings and
                                   ratings["n_pairs"] >= config.min_rating_pairs else "")]


def _fmt(v) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def _fmt_ci(ci) -> str:
    return "n/a" if not ci else f"[{ci[0]:.2f}, {ci[1]:.2f}]"


def selection_confidence(source: str, models: list[dict], pd_values, pd_ratings,
                         config: ConfidenceConfig) -> dict[str, Any]:
    """The report: evidence, verdict and reasons. ``source`` is the scores' source
    (``reward_models`` or ``ratings``); ``models`` the proxies' records (``load_models``)."""
    ratings = None
    if source == "reward_models" and pd_ratings is not None:
        ratings = rating_agreement(pd_values, pd_ratings, config.level)
    if source == "ratings":
        proxies, v, reasons = {}, "ok", ["PD from ratings: no proxy involved"]
    else:
        proxies = proxy_evidence(models, config.level)
        v, reasons = verdict(proxies, ratings, config)
    accs = [p["accuracy"] for p in proxies.values() if p["accuracy"] is not None]
    return {"kind": "fgpo.selection_confidence", "verdict": v, "reasons": reasons, "source": source,
            "proxies": proxies,
            "mean_accuracy": float(np.mean(accs)) if accs else None,
            "min_accuracy": float(np.min(accs)) if accs else None,
            "ratings": ratings,
            "ratings_used": bool(ratings and ratings["n_pairs"] >= config.min_rating_pairs),
            "thresholds": to_dict(config)}


def metrics(report: dict | None) -> dict[str, float]:
    """The report's numbers as flat metrics (MLflow): ``confidence.*``; the verdict as
    ``confidence.verdict_level`` (ok 2, weak 1, none 0)."""
    if not report:
        return {}
    out = {"confidence.verdict_level": float(2 - VERDICTS.index(report["verdict"]))}
    for k in ("mean_accuracy", "min_accuracy"):
        if report.get(k) is not None:
            out[f"confidence.{k}"] = float(report[k])
    for a, p in (report.get("proxies") or {}).items():
        if p.get("accuracy") is not None:
            out[f"confidence.accuracy.{a}"] = float(p["accuracy"])
            if p.get("ci"):
                out[f"confidence.accuracy_ci_low.{a}"] = float(p["ci"][0])
    r = report.get("ratings") or {}
    for k in ("spearman", "conflict_auc"):
        if r.get(k) is not None:
            out[f"confidence.{k}"] = float(r[k])
    return out


# ---------------------------------------------------------------------------------------------
# What select does with it

@dataclass
class Decision:
    strategy: str          # the strategy select runs
    action: str            # none | warned | fallback | cannot_fallback
    message: str | None    # what select logs (None: nothing to say)


def decide(report: dict | None, strategy: str, on_weak: str, has_ratings_pd: bool) -> Decision:
    """What select does given the report: only ``none`` acts, and only on strategies that rank by
    PD from the proxies (``PROXY_PD_STRATEGIES``). ``warn``: a warning; ``fallback_ratings``:
    ``pd`` becomes ``pd_ratings`` when the pool carries PD from ratings (else a warning that it
    cannot); ``fail``: FgpoError."""
    if on_weak not in ON_WEAK:
        raise ValueError(f"Unknown on_weak_proxies: {on_weak}")
    if not report or report.get("verdict") != "none" or strategy not in PROXY_PD_STRATEGIES:
        return Decision(strategy, "none", None)
    why = "; ".join(report.get("reasons") or [])
    head = f"selection confidence 'none': PD selection ({strategy}) is no better than random here ({why})"
    if on_weak == "fail":
        raise FgpoError(f"{head}. on_weak_proxies=fail: stopping. Train better proxies, select with "
                        "strategy pd_ratings, or set on_weak_proxies to warn or fallback_ratings")
    if on_weak == "fallback_ratings":
        if strategy == "pd" and has_ratings_pd:
            return Decision("pd_ratings", "fallback",
                            f"{head}. on_weak_proxies=fallback_ratings: selecting by PD from ratings "
                            "(strategy pd_ratings) instead")
        cannot = ("the pool carries no PD from ratings" if strategy == "pd"
                  else f"strategy {strategy} has no ratings counterpart")
        return Decision(strategy, "cannot_fallback",
                        f"{head}. on_weak_proxies=fallback_ratings cannot fall back: {cannot}; "
                        f"selecting by {strategy} anyway")
    return Decision(strategy, "warned", f"{head}. Selecting by {strategy} anyway (on_weak_proxies=warn)")
