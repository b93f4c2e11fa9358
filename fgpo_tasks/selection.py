"""Selection (METHOD.md step 5) and the paper's baselines, as flat branches over ``strategy``.

Every ranking strategy keeps exactly round(budget * N) pairs, ties broken by pair_id, so the same
inputs and seed always give the same subset. ``all``, ``ova`` and ``avg`` are the paper's
full-data baselines: they keep the whole pool (the budget is recorded but not applied).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import pyarrow as pa

from fgpo_tasks import contract
from fgpo_tasks.choices import STRATEGIES
from fgpo_tasks.config import check, to_dict
from fgpo_tasks.errors import ConfigError, InputError
from fgpo_tasks.provenance import code_version, sha256_hex
from fgpo_tasks.storage import atomic_dir

log = logging.getLogger(__name__)

FULL_DATA = ("all", "ova", "avg")
# need only the pair ids of the pool (raf: and its texts, read chunk by chunk from Arrow)
RANKING = ("pd", "pd_ratings", "pd_high", "pd_mid", "random", "random_length", "all", "raf")
_POS = "_position"  # row of the pool table, carried through the ranking


@dataclass
class SelectConfig:
    strategy: Literal["pd", "pd_ratings", "pd_high", "pd_mid", "random", "random_length", "all", "raf", "ova", "avg"] = field(
        default="pd", metadata={"help": f"one of {list(STRATEGIES)}"})
    budget: float = field(default=0.3, metadata={
        "help": "lambda: the fraction of the pool kept (round(budget * N) pairs); all/ova/avg keep all"})
    seed: int = field(default=0, metadata={"help": "seed of the random strategy"})
    unified_model: str | None = field(default=None, metadata={
        "help": "raf: folder of the unified reward model (fgpo reward-models --unified writes "
                "<out>/__all__); default: <reward-models dir of the scores>/__all__"})
    overall_aspect: str = field(default="helpfulness", metadata={
        "help": "ova: the rating that stands for the overall preference"})
    avg_aspects: list[str] | None = field(default=None, metadata={
        "help": "avg: the ratings averaged; default every rating aspect"})
    lower_is_better: list[str] = field(default_factory=list, metadata={
        "help": "ova/avg: rating aspects where the LOWER rating wins (negated before averaging)"})
    pool_ratings: bool = field(default=True, metadata={
        "help": "ova/avg: a response's ratings from every pair it appears in count for all its pairs"})
    embedding_cache_dir: str | None = field(default=None, metadata={
        "help": "raf: embedding cache root of a frozen unified model; default: the model's own",
        "inert": True})
    length_bins: int = field(default=10, metadata={
        "help": "random_length: quantile bins of the word-length difference (chosen - rejected) "
                "within which the draw matches PD's selection"})
    max_pairs: int | None = field(default=None, metadata={
        "help": "keep at most this many of the selected pairs: a seeded uniform sample of the "
                "selection (a small-compute run trains on a sample of what the strategy chose, "
                "not on a different ranking); null = no cap"})
    on_weak_proxies: Literal["warn", "fallback_ratings", "fail"] = field(default="warn", metadata={
        "help": "when the scores' selection_confidence verdict is 'none' (no proxy beats chance) and "
                "the strategy ranks by proxy PD (pd, pd_high, pd_mid): warn (log it, select anyway), "
                "fallback_ratings (pd becomes pd_ratings where the pool carries PD from ratings; "
                "otherwise warn) or fail (stop with an error)"})

    def __post_init__(self):
        check(self.strategy in STRATEGIES, f"strategy must be one of {list(STRATEGIES)}, got {self.strategy!r}")
        check(0.0 < self.budget <= 1.0, f"budget must be in (0, 1], got {self.budget}")
        check(self.length_bins >= 1, f"length_bins must be >= 1, got {self.length_bins}")
        check(self.max_pairs is None or self.max_pairs >= 1, f"max_pairs must be >= 1 or null, got {self.max_pairs}")
        check(self.on_weak_proxies in ("warn", "fallback_ratings", "fail"),
              f"on_weak_proxies must be one of ['warn', 'fallback_ratings', 'fail'], got {self.on_weak_proxies!r}")


def cap_selection(selected: pd.DataFrame, max_pairs: int | None, seed: int) -> pd.DataFrame:
    """At most max_pairs rows of ``selected``: a uniform sample fixed by the seed and the pair ids
    (not by row order), kept in the selection's order."""
    if max_pairs is None or len(selected) <= max_pairs:
        return selected
    ids = selected["pair_id"].astype(str).to_numpy()
    keys = np.array([sha256_hex("cap", str(seed), i) for i in ids])
    keep = np.zeros(len(ids), dtype=bool)
    keep[np.argsort(keys, kind="stable")[:max_pairs]] = True
    return selected[keep]


def n_keep(budget: float, n: int) -> int:
    """round(budget * N), at least 1 for a non-empty pool."""
    return max(1, round(budget * n)) if n else 0


def rank_order(key: np.ndarray, pair_ids: np.ndarray, descending: bool = False) -> np.ndarray:
    """Positions sorted by key (ascending, or descending), ties by pair_id ascending; NaN last."""
    key = np.asarray(key, dtype=float)
    k = -key if descending else key
    k = np.where(np.isfinite(k), k, np.inf)
    return np.lexsort((np.asarray(pair_ids), k))


def _ranked(key, ids, n, descending=False) -> np.ndarray:
    return rank_order(key, ids, descending)[:n]


def relabel(df: pd.DataFrame, preference: np.ndarray, aspect: str) -> tuple[pd.DataFrame, int]:
    """Swap chosen/rejected where ``preference`` (chosen minus rejected score) is negative.

    Pairs whose preference is tied or unknown keep their label. The relabelled pool is labelled
    on ``aspect``; pair ids are recomputed and repeats (the same texts from several sub-datasets)
    kept once. Returns (pool, number of flipped pairs).
    """
    out = df.copy()
    flip = np.nan_to_num(np.asarray(preference, dtype=float), nan=0.0) < 0
    out.loc[flip, ["chosen", "rejected"]] = out.loc[flip, ["rejected", "chosen"]].to_numpy()
    out.loc[flip, ["ratings_chosen", "ratings_rejected"]] = (
        out.loc[flip, ["ratings_rejected", "ratings_chosen"]].to_numpy())
    out["aspect"] = aspect
    out["pair_id"] = [contract.pair_id(p, c, r, aspect, m if isinstance(m, list) and m else None)
                      for p, c, r, m in zip(out["prompt"], out["chosen"], out["rejected"],
                                            out["prompt_messages"])]
    out = out.drop_duplicates("pair_id", keep="first")
    return out.sort_values("pair_id", kind="stable").reset_index(drop=True), int(flip.sum())


def _rating_vector(df: pd.DataFrame, aspects: list[str], lower_is_better, pool: bool = True) -> np.ndarray:
    """(N, len(aspects)) rating differences chosen - rejected, NaN where missing."""
    from fgpo_tasks.scoring import rating_margins

    all_aspects, raw = rating_margins(df, lower_is_better, pool=pool)
    cols = [all_aspects.index(a) if a in all_aspects else None for a in aspects]
    return np.stack([raw[:, c] if c is not None else np.full(len(df), np.nan) for c in cols], axis=1)


def _unified_margins(pairs: pd.DataFrame | pa.Table, model_dir: str, config: SelectConfig,
                     chunk: int = 4096) -> np.ndarray:
    """r(chosen) - r(rejected) under the unified model, ``chunk`` pairs' texts in memory at a time."""
    from fgpo_tasks.reward_models import load_scorer

    score = load_scorer(model_dir, cache_dir=config.embedding_cache_dir)
    cols = ["prompt", "chosen", "rejected"]
    if isinstance(pairs, pd.DataFrame):
        pairs = pa.Table.from_pandas(pairs[cols], preserve_index=False)
    out = np.empty(len(pairs))
    for lo in range(0, len(pairs), chunk):
        p, c, r = (pairs.slice(lo, chunk).column(k).to_pylist() for k in cols)
        v = score(p + p, c + r)
        out[lo:lo + len(p)] = v[:len(p)] - v[len(p):]
    return out


def _unified_dir(config: SelectConfig, scores_manifest: dict) -> str:
    from fgpo_tasks.reward_models import MODEL_FILE, UNIFIED

    if config.unified_model:
        return config.unified_model
    rm_dir = scores_manifest.get("reward_models_dir")
    if rm_dir and (Path(rm_dir) / UNIFIED / MODEL_FILE).is_file():
        return str(Path(rm_dir) / UNIFIED)
    raise ConfigError("strategy 'raf' needs a unified reward model: train one with "
                      "`fgpo reward-models --data DIR --out RM --unified` and pass "
                      "--unified-model RM/__all__")


def word_difference(texts: pa.Table) -> np.ndarray:
    """Words of the chosen minus words of the rejected response, per row of ``texts``."""
    def words(col):
        return np.array([len(t.split()) if t else 0 for t in texts.column(col).to_pylist()], dtype=np.float64)
    return words("chosen") - words("rejected")


def length_matched(dwords: np.ndarray, ref_idx: np.ndarray, ids: np.ndarray, seed: int, bins: int) -> np.ndarray:
    """Positions of a seeded uniform sample with as many pairs per bin of ``dwords`` (quantile
    bins of the whole pool) as ``ref_idx`` has there; within a bin the draw runs over pair_id order."""
    edges = np.unique(np.quantile(dwords, np.linspace(0, 1, bins + 1)[1:-1])) if len(dwords) else np.empty(0)
    which = np.searchsorted(edges, dwords, side="right")
    need = np.bincount(which[ref_idx], minlength=len(edges) + 1)
    rng = np.random.default_rng(seed)
    out = []
    for b in range(len(edges) + 1):
        members = np.flatnonzero(which == b)
        members = members[np.argsort(ids[members], kind="stable")]
        out.append(members[rng.permutation(len(members))[:need[b]]])
    return np.concatenate(out) if out else np.empty(0, dtype=np.int64)


def select_pairs(df: pd.DataFrame, scores: pd.DataFrame, config: SelectConfig,
                 scores_manifest: dict | None = None, texts: pa.Table | None = None) -> tuple[pd.DataFrame, dict]:
    """The selected (or relabelled) pool and facts for the manifest; ``df`` and ``scores`` aligned
    (``texts``: the pool's prompt/chosen/rejected as Arrow, where ``df`` holds ids only)."""
    ids = df["pair_id"].to_numpy()
    n = n_keep(config.budget, len(df))
    s, info = config.strategy, {"n_pool": int(len(df))}
    if s == "pd":
        # METHOD.md step 5: keep the lambda fraction with the MOST NEGATIVE PD.
        idx = _ranked(scores["pd"].to_numpy(), ids, n)
        info["threshold"] = float(scores["pd"].to_numpy()[idx[-1]])
    elif s == "pd_ratings":
        # Paper's "PD (rati.)": the same ranking on PD from the ratings.
        v = scores["pd_ratings"].to_numpy(dtype=float) if "pd_ratings" in scores else np.full(len(df), np.nan)
        if not np.isfinite(v).any():
            raise InputError("strategy 'pd_ratings' needs PD from ratings, and these scores have none "
                             "(the data carries no other aspect's ratings)")
        idx = _ranked(v, ids, n)
        picked = v[idx]
        info["threshold"] = float(picked[np.isfinite(picked)][-1])
        info["without_ratings_pd"] = int((~np.isfinite(v)).sum())
        info["selected_without_ratings_pd"] = int((~np.isfinite(picked)).sum())
        if info["selected_without_ratings_pd"]:
            log.warning("only %d pairs have PD from ratings, fewer than the %d to keep: the rest are "
                        "filled in pair_id order", int(np.isfinite(v).sum()), n)
    elif s == "pd_high":
        # Paper's PD-high ablation: the most POSITIVE PD (the most conflicting pairs).
        idx = _ranked(scores["pd"].to_numpy(), ids, n, descending=True)
        info["threshold"] = float(scores["pd"].to_numpy()[idx[-1]])
    elif s == "pd_mid":
        # Paper's PD-mid ablation: the n pairs around the median of the PD ranking.
        order = rank_order(scores["pd"].to_numpy(), ids)
        start = (len(order) - n) // 2
        idx = order[start:start + n]
        v = scores["pd"].to_numpy()
        info["threshold"] = [float(v[idx[0]]), float(v[idx[-1]])]
    elif s == "random":
        # RAND baseline: a uniform subset; the permutation runs over pair_id order, so the input
        # row order does not matter.
        order = np.argsort(ids, kind="stable")
        idx = order[np.random.default_rng(config.seed).permutation(len(order))[:n]]
    elif s == "random_length":
        # Control (ours, not in the paper): a uniform subset with the length profile of PD's
        # selection, so that PD minus this arm is what PD adds beyond keeping longer-chosen pairs.
        if texts is None:
            raise ValueError("strategy 'random_length' needs the pool's texts")
        pd_idx = _ranked(scores["pd"].to_numpy(), ids, n)
        dwords = word_difference(texts)
        idx = length_matched(dwords, pd_idx, ids, config.seed, config.length_bins)
        info.update(pd_chosen_longer_fraction=float((dwords[pd_idx] > 0).mean()),
                    chosen_longer_fraction=float((dwords[idx] > 0).mean()),
                    pd_mean_word_difference=float(dwords[pd_idx].mean()),
                    mean_word_difference=float(dwords[idx].mean()))
    elif s == "raf":
        # RAF baseline: the pairs with the largest margin under ONE unified reward model.
        model_dir = _unified_dir(config, scores_manifest or {})
        m = _unified_margins(texts if texts is not None else df, model_dir, config)
        idx = _ranked(m, ids, n, descending=True)
        info.update(threshold=float(m[idx[-1]]), unified_model=str(model_dir))
    elif s == "all":
        # ALL baseline: DPO on the whole aggregated pool.
        idx = np.arange(len(df))
    elif s == "ova":
        # OVA baseline: relabel every pair by the overall rating (where both responses have it).
        pref = _rating_vector(df, [config.overall_aspect], config.lower_is_better,
                              config.pool_ratings)[:, 0]
        if not np.isfinite(pref).any():
            raise InputError(f"strategy 'ova' needs '{config.overall_aspect}' ratings of both "
                             f"responses, and no pair has them (rating aspects: {contract.rating_aspects(df)})")
        out, flipped = relabel(df, pref, config.overall_aspect)
        info.update(relabelled=flipped, rated=int(np.isfinite(pref).sum()), deduplicated=int(len(df) - len(out)))
        return out, info
    elif s == "avg":
        # AVG baseline: relabel by the mean of the aspect ratings both responses carry.
        aspects = config.avg_aspects or contract.rating_aspects(df)
        v = _rating_vector(df, aspects, config.lower_is_better, config.pool_ratings) if aspects else np.full((len(df), 1), np.nan)
        rated = np.isfinite(v).any(axis=1)
        if not rated.any():
            raise InputError(f"strategy 'avg' needs ratings of both responses on {aspects or 'some aspect'}, "
                             "and no pair has them")
        pref = np.full(len(df), np.nan)
        pref[rated] = np.nanmean(v[rated], axis=1)
        out, flipped = relabel(df, pref, "average")
        info.update(relabelled=flipped, rated=int(rated.sum()), averaged=list(aspects),
                    deduplicated=int(len(df) - len(out)))
        return out, info
    else:
        raise ValueError(f"Unknown selection strategy: {s}")
    idx = np.sort(idx)
    return df.iloc[idx].reset_index(drop=True), info


def _isin(values: pd.Series, allowed: pd.Series) -> np.ndarray:
    """Boolean mask: which ``values`` occur in ``allowed`` (Arrow's hash lookup, no Python list)."""
    import pyarrow.compute as pc

    arr = pa.array(values.to_numpy(dtype=object), type=pa.string())
    return pc.is_in(arr, value_set=pa.array(allowed.to_numpy(dtype=object), type=pa.string())
                    ).to_numpy(zero_copy_only=False)


def run_select(scores_dir: str | Path, data_dir: str | Path, out_dir: str | Path,
               config: SelectConfig, created_at: str) -> dict[str, Any]:
    """Write the selected subset of ``data_dir`` (a contract pair dir) plus manifest and reports.

    The scores' ``selection_confidence`` report decides, with ``config.on_weak_proxies``, whether
    the strategy runs as asked (``fgpo_tasks.confidence.decide``); the manifest and the result
    say the verdict, what was done, the strategy asked for and the one run."""
    import dataclasses

    from fgpo_tasks import confidence, reports
    from fgpo_tasks.scoring import read_scores

    start = time.perf_counter()
    table = None
    if config.strategy in RANKING:
        # Only pair ids are ranked: the pool stays an Arrow table, the selection is a take().
        table = contract.read_pair_table(data_dir)
        df = table.select(["pair_id", "aspect"]).to_pandas()
        df[_POS] = np.arange(len(df), dtype=np.int64)
    else:
        df = contract.read_pairs(data_dir)
    needs_scores = config.strategy in ("pd", "pd_ratings", "pd_high", "pd_mid", "random_length")
    scores, s_manifest = (read_scores(scores_dir) if scores_dir is not None or needs_scores
                          else (None, {}))
    if scores is not None:
        unscored = ~_isin(df["pair_id"], scores["pair_id"])
        missing = sorted(df["pair_id"][unscored].unique().tolist())
        if missing:
            raise InputError(f"{len(missing)} pairs of the data have no score (e.g. {missing[0]}): "
                             "score this data first (`fgpo score --data ...`)", file=str(scores_dir))
        scores = scores.drop_duplicates("pair_id").set_index("pair_id").loc[df["pair_id"]].reset_index()
    else:
        scores = pd.DataFrame({"pair_id": df["pair_id"]})
    trust = s_manifest.get("selection_confidence")
    has_ratings_pd = "pd_ratings" in scores and bool(np.isfinite(scores["pd_ratings"].to_numpy(dtype=float)).any())
    requested = config.strategy
    decision = confidence.decide(trust, requested, config.on_weak_proxies, has_ratings_pd)
    if decision.message:
        log.warning("%s", decision.message)
    elif trust and trust.get("verdict") == "weak" and requested in confidence.PROXY_PD_STRATEGIES:
        log.warning("selection confidence 'weak': %s", "; ".join(trust.get("reasons") or []))
    asked = config
    if decision.strategy != requested:
        config = dataclasses.replace(config, strategy=decision.strategy)
    confidence_facts = {"selection_confidence": trust.get("verdict") if trust else None,
                        "confidence_action": decision.action, "requested_strategy": requested,
                        "confidence_message": decision.message}
    if config.strategy in FULL_DATA and config.budget != 1.0:
        log.info("strategy %r keeps the whole pool: budget %s not applied", config.strategy, config.budget)
    selected, info = select_pairs(df, scores, config, s_manifest, texts=table)
    if config.max_pairs is not None and len(selected) > config.max_pairs:
        info["n_before_cap"] = int(len(selected))
        selected = cap_selection(selected, config.max_pairs, config.seed)
        log.info("max_pairs=%d: training on a uniform sample of %d of the %d selected pairs",
                 config.max_pairs, len(selected), info["n_before_cap"])
    chosen_mask = _isin(df["pair_id"], selected["pair_id"])
    if table is not None:
        selected = table.take(pa.array(selected[_POS].to_numpy()))
        pool: pd.DataFrame | pa.Table = table
    else:
        pool = df
    before, after = contract.counts(df), contract.counts(selected)
    cut = info.get("threshold")
    selection = {
        "strategy": config.strategy, "budget": config.budget,
        "budget_applied": config.strategy not in FULL_DATA,
        "n_selected": int(len(selected)), "threshold": cut,
        "pd_threshold": cut if config.strategy in ("pd", "pd_ratings", "pd_high", "pd_mid") else None,
        "counts_before": before["per_aspect"], "counts_after": after["per_aspect"],
        **{k: v for k, v in info.items() if k != "threshold"},
        **confidence_facts,
        "confidence": trust,
    }
    with atomic_dir(out_dir) as tmp:
        contract.write_pair_table(selected, tmp)
        rep = tmp / "reports"
        if "pd" in scores and config.strategy in ("pd", "pd_high", "pd_mid", "random", "random_length", "raf"):
            reports.pd_histogram(scores["pd"].to_numpy(), rep, selected=chosen_mask,
                                 cut=cut if config.strategy in ("pd", "pd_high") else None,
                                 title=f"PD, strategy {config.strategy}, budget {config.budget}")
        if config.strategy == "pd_ratings":
            reports.pd_histogram(scores["pd_ratings"].to_numpy(), rep, selected=chosen_mask, cut=cut,
                                 title=f"PD from ratings, budget {config.budget}")
        reports.length_distributions(pool, selected, rep)
        inputs = [{"path": str(data_dir), "fingerprint": contract.data_fingerprint(data_dir, table)}]
        if s_manifest:
            inputs.append({"path": str(scores_dir), "fingerprint": s_manifest.get("fingerprint")})
        manifest = contract.build_manifest(selected, stage="select", config=to_dict(asked),
                                           created_at=created_at, inputs=inputs,
                                           extra={"selection": selection})
        contract.write_manifest(tmp, manifest)
    log.info("selected %d of %d pairs (%s, budget %s)", len(selected), len(df), config.strategy,
             config.budget)
    return {"out_dir": str(out_dir), "strategy": config.strategy, "n_pool": int(len(df)),
            "n_selected": int(len(selected)), "threshold": cut,
        "pd_threshold": cut if config.strategy in ("pd", "pd_ratings", "pd_high", "pd_mid") else None,
            "counts_after": after["per_aspect"], "code_version": code_version(),
            **confidence_facts, **confidence.metrics(trust),
            "seconds": round(time.perf_counter() - start, 2)}
