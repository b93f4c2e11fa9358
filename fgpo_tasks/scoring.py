"""PD scoring (METHOD.md, "Estimating PD", steps 2-4, and "PD from ratings").

For a pair z in D_k and every other aspect k':
  delta_k'(z) = r_k'(x, y_w) - r_k'(x, y_l)            (cross-extrapolation: r_k' never scores
                                                       D_k' or any pair it trained on)
  q_k'        = gamma-quantile of |delta_k'| over the pairs r_k' scored (numpy linear interpolation)
  d_k'(z)     = clip(delta_k'(z) / q_k', -1, 1), or sign(delta_k'(z)) when q_k' = 0
  PD(z)       = - sum_{k' != k} d_k'(z)

Output ``scores.parquet`` (one row per pair of the data):

=====================  ==============================================================================
column                 meaning
=====================  ==============================================================================
pair_id, aspect        the pair and its labelled aspect k
margin_<a>             d_a(z), the scaled margin in [-1, 1]; null where a is the pair's own aspect
                       (or, for ratings, where a rating is missing)
raw_margin_<a>         delta_a(z) before scaling; null where masked
n_other                how many other aspects entered PD
pd                     PD(z) from reward models (or from ratings with ``--from-ratings``)
pd_ratings             PD from the ratings when the data carries other aspects' ratings, else null
=====================  ==============================================================================

Raw margins are cached per reward model (``score_cache_key``: its recipe fingerprint, folder
contents, backbone contents, library versions) and pair_id, so scoring after a new annotation
batch with a reused proxy only runs the models on the new pairs.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from fgpo_tasks import contract
from fgpo_tasks.config import check, to_dict
from fgpo_tasks.errors import ConfigError, FgpoError, InputError
from fgpo_tasks.provenance import code_version, file_fingerprint
from fgpo_tasks.storage import atomic_dir

log = logging.getLogger(__name__)

SCORES_FILE = "scores.parquet"


@dataclass
class ScoreConfig:
    gamma: float = field(default=0.95, metadata={
        "help": "quantile level of |delta_k'| that maps to a scaled margin of 1 (clip above)"})
    from_ratings: bool = field(default=False, metadata={
        "help": "PD from the other aspects' rating differences instead of reward models"})
    lower_is_better: list[str] = field(default_factory=list, metadata={
        "help": "rating aspects where the LOWER rating wins (their rating difference is negated)"})
    pool_ratings: bool = field(default=True, metadata={
        "help": "a response's ratings from every pair it appears in count for all its pairs "
                "(HelpSteer2's per-aspect files rate the same responses on several aspects)"})
    use_cache: bool = field(default=True, metadata={
        "help": "reuse raw margins of pairs already scored by the same reward model (its recipe "
                "fingerprint, its folder's contents and its backbone's contents)", "inert": True})
    cache_dir: str | None = field(default=None, metadata={
        "help": "score cache root; default <work>/cache/scores", "inert": True})
    embedding_cache_dir: str | None = field(default=None, metadata={
        "help": "embedding cache root for frozen models; default: the one each model was trained with",
        "inert": True})
    progress: bool = field(default=True, metadata={"help": "show progress bars", "inert": True})
    confidence: dict = field(default_factory=dict, metadata={
        "help": "thresholds of the selection_confidence verdict: fields of "
                "fgpo_tasks.confidence.ConfidenceConfig (level, ok_mean_accuracy, ok_min_accuracy, "
                "ok_conflict_auc, ok_spearman, none_if_auc_at_chance, min_rating_pairs); empty = the defaults"})
    conflict_review_pairs: int = field(default=50, metadata={
        "help": "the conflict review (reports/conflicts.csv, .html) lists this many pairs with the "
                "most positive PD"})
    shard_size: int | None = field(default=None, metadata={
        "help": "pairs per scoring shard: the fgpo_retrain DAG runs one task per (shard, reward model) "
                "and a reduce computes quantiles and PD; null = one shard. The scores do not depend on "
                "it (sharded equals unsharded), so it is not part of the stage key", "inert": True})

    def __post_init__(self):
        check(0.0 < self.gamma <= 1.0, f"gamma must be in (0, 1], got {self.gamma}")
        check(self.conflict_review_pairs >= 1,
              f"conflict_review_pairs must be >= 1, got {self.conflict_review_pairs}")
        check(self.shard_size is None or (isinstance(self.shard_size, int) and self.shard_size >= 1),
              f"shard_size must be a positive integer or null, got {self.shard_size!r}")
        self.confidence_config()  # bad thresholds fail at config time, quoting the value

    def confidence_config(self):
        from fgpo_tasks.config import from_dict
        from fgpo_tasks.confidence import ConfidenceConfig

        if not isinstance(self.confidence, dict):
            raise ConfigError(f"confidence must be a mapping of ConfidenceConfig fields, got {self.confidence!r}")
        return from_dict(ConfidenceConfig, self.confidence, where="score [confidence]")


# ---------------------------------------------------------------------------------------------
# The numeric core (pure functions; tests compare them with a naive loop)

def cross_mask(pair_aspects, model_aspects: list[str], pair_ids=None,
               training_ids: list[set] | None = None) -> np.ndarray:
    """(N, K) bool: may r_{model_aspects[j]} score pair i? Not its own aspect, not a training pair."""
    pair_aspects = np.asarray(pair_aspects)
    mask = pair_aspects[:, None] != np.asarray(model_aspects, dtype=object)[None, :]
    if training_ids is not None:
        ids = np.asarray(pair_ids)
        for j, trained in enumerate(training_ids):
            if trained:
                mask[:, j] &= ~np.isin(ids, list(trained))
    return mask


def quantile_scale(raw: np.ndarray, mask: np.ndarray, gamma: float) -> tuple[np.ndarray, np.ndarray]:
    """(scaled, q): d = clip(raw / q_j, -1, 1) per column j (sign(raw) where q_j = 0), NaN
    outside the mask or where raw is NaN; q_j = gamma-quantile of |raw| over the column's mask."""
    raw = np.asarray(raw, dtype=float)
    ok = mask & np.isfinite(raw)
    scaled = np.full(raw.shape, np.nan)
    q = np.full(raw.shape[1], np.nan)
    for j in range(raw.shape[1]):
        v = raw[ok[:, j], j]
        if len(v) == 0:
            continue
        q[j] = np.quantile(np.abs(v), gamma)
        scaled[ok[:, j], j] = np.sign(v) if q[j] == 0 else np.clip(v / q[j], -1.0, 1.0)
    return scaled, q


def preference_divergence(scaled: np.ndarray) -> np.ndarray:
    """PD = - sum of the available scaled margins of the other aspects (masked entries are NaN)."""
    return -np.nansum(scaled, axis=1)


def compute_pd(raw: np.ndarray, mask: np.ndarray, gamma: float):
    """(pd, scaled, q) from raw margins and the cross-extrapolation mask."""
    scaled, q = quantile_scale(raw, mask, gamma)
    return preference_divergence(scaled), scaled, q


# ---------------------------------------------------------------------------------------------
# Ratings

def pooled_ratings(df: pd.DataFrame) -> tuple[list, list]:
    """Ratings are properties of a response, not of a pair: gather every rating a (prompt,
    response) text received anywhere in the pool (mean where it got several) and return the
    (chosen, rejected) ratings of each pair from that pool. In HelpSteer2's per-aspect files the
    same response pair appears under several aspects, so pooling gives those pairs ratings of
    other aspects (needed for PD from ratings, OVA and AVG)."""
    bag: dict[tuple, dict[str, list[float]]] = {}
    for col, resp in (("ratings_chosen", "chosen"), ("ratings_rejected", "rejected")):
        for prompt, text, r in zip(df["prompt"], df[resp], df[col]):
            if isinstance(r, dict):
                d = bag.setdefault((prompt, text), {})
                for a, v in r.items():
                    if v is not None and not (isinstance(v, float) and np.isnan(v)):
                        d.setdefault(a, []).append(float(v))
    merged = {k: {a: float(np.mean(v)) for a, v in d.items()} for k, d in bag.items()}
    return ([merged.get((p, c)) for p, c in zip(df["prompt"], df["chosen"])],
            [merged.get((p, r)) for p, r in zip(df["prompt"], df["rejected"])])


RATING_COLUMNS = ["pair_id", "aspect", "prompt", "chosen", "rejected", "ratings_chosen", "ratings_rejected"]


def _rating_values(table: pa.Table, col: str, aspects: list[str]) -> np.ndarray:
    """(N, K) float ratings of one side (NaN where the rating or the whole struct is null)."""
    out = np.full((table.num_rows, len(aspects)), np.nan)
    if col not in table.column_names or not pa.types.is_struct(table.schema.field(col).type):
        return out
    column = table.column(col)
    valid = pc.is_valid(column).to_numpy(zero_copy_only=False)
    names = {f.name for f in column.type}
    for j, a in enumerate(aspects):
        if a in names:
            v = pc.struct_field(column, a).cast(pa.float64()).to_numpy(zero_copy_only=False)
            out[:, j] = np.where(valid, v, np.nan)
    return out


def pooled_rating_values(table: pa.Table, aspects: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """``pooled_ratings`` on an Arrow table, vectorised: (N, K) chosen and rejected ratings, each
    the mean of every rating that (prompt, response) text got anywhere in the table (NaN: none).
    Texts are dictionary-encoded to integer keys; the means are bincounts over those keys."""
    n = table.num_rows
    prompts = pc.dictionary_encode(table.column("prompt").combine_chunks())
    texts = pc.dictionary_encode(pa.concat_arrays([table.column("chosen").combine_chunks(),
                                                   table.column("rejected").combine_chunks()]))
    p_code = prompts.indices.to_numpy(zero_copy_only=False).astype(np.int64)
    t_code = texts.indices.to_numpy(zero_copy_only=False).astype(np.int64)
    key = np.concatenate([p_code, p_code]) * max(1, len(texts.dictionary)) + t_code
    del prompts, texts, p_code, t_code
    _, group = np.unique(key, return_inverse=True)
    del key
    values = np.concatenate([_rating_values(table, "ratings_chosen", aspects),
                             _rating_values(table, "ratings_rejected", aspects)])
    means = np.full(values.shape, np.nan)
    n_groups = int(group.max()) + 1 if len(group) else 0
    for j in range(len(aspects)):
        ok = np.isfinite(values[:, j])
        total = np.bincount(group, weights=np.where(ok, values[:, j], 0.0), minlength=n_groups)
        count = np.bincount(group, weights=ok.astype(float), minlength=n_groups)
        with np.errstate(invalid="ignore", divide="ignore"):
            means[:, j] = (total / count)[group]
    return means[:n], means[n:]


def rating_margins(df: pd.DataFrame | pa.Table, lower_is_better=(), pool: bool = True
                   ) -> tuple[list[str], np.ndarray]:
    """(aspects, (N, K) rating differences chosen - rejected, NaN where either rating is missing).

    ``pool``: use every rating each response received anywhere in ``df`` (``pooled_ratings``).
    ``df`` may be the pair table as Arrow (``contract.read_pair_table``): then every step is
    vectorised, with no Python object per row.
    """
    if isinstance(df, pa.Table):
        aspects = contract.table_rating_aspects(df)
        if pool:
            chosen_v, rejected_v = pooled_rating_values(df, aspects)
        else:
            chosen_v = _rating_values(df, "ratings_chosen", aspects)
            rejected_v = _rating_values(df, "ratings_rejected", aspects)
        raw = chosen_v - rejected_v
    else:
        aspects = contract.rating_aspects(df)
        raw = np.full((len(df), len(aspects)), np.nan)
        if pool:
            chosen, rejected = pooled_ratings(df)
        else:
            chosen, rejected = df["ratings_chosen"].tolist(), df["ratings_rejected"].tolist()
        for i, (rc, rr) in enumerate(zip(chosen, rejected)):
            if not isinstance(rc, dict) or not isinstance(rr, dict):
                continue
            for j, a in enumerate(aspects):
                if rc.get(a) is not None and rr.get(a) is not None:
                    raw[i, j] = float(rc[a]) - float(rr[a])
    for j, a in enumerate(aspects):
        if a in lower_is_better:
            raw[:, j] = -raw[:, j]
    return aspects, raw


def ratings_pd(df: pd.DataFrame | pa.Table, gamma: float, lower_is_better=(), pool: bool = True):
    """(aspects, pd, scaled, q, raw, mask); pd is NaN for pairs without any other aspect's rating."""
    aspects, raw = rating_margins(df, lower_is_better, pool)
    pair_aspects = (df.column("aspect").to_numpy(zero_copy_only=False) if isinstance(df, pa.Table)
                    else df["aspect"].to_numpy())
    mask = cross_mask(pair_aspects, aspects) if aspects else np.zeros((len(raw), 0), bool)
    pd_r, scaled, q = compute_pd(raw, mask, gamma)
    n_other = np.sum(np.isfinite(scaled), axis=1)
    pd_r = np.where(n_other > 0, pd_r, np.nan)
    return aspects, pd_r, scaled, q, raw, mask


# ---------------------------------------------------------------------------------------------
# Reward-model margins with a cache

class ScoreCache:
    """Raw margins by (reward-model fingerprint, pair_id), as Parquet shards per fingerprint."""

    def __init__(self, root: str | Path, fingerprint: str):
        self.dir = Path(root) / fingerprint
        self.dir.mkdir(parents=True, exist_ok=True)

    def load(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for shard in sorted(self.dir.glob("shard-*.parquet")):
            t = pd.read_parquet(shard)
            out.update(zip(t["pair_id"], t["raw_margin"].astype(float)))
        return out

    def lookup(self, pair_ids) -> np.ndarray:
        """The cached margin of each of ``pair_ids`` (NaN where none), reading one shard at a time
        (a later shard wins, as in ``load``)."""
        want = pd.Index(np.asarray(pair_ids, dtype=object))
        out = np.full(len(want), np.nan)
        for shard in sorted(self.dir.glob("shard-*.parquet")):
            t = pd.read_parquet(shard)
            pos = pd.Index(t["pair_id"]).get_indexer(want)
            hit = pos >= 0
            out[hit] = t["raw_margin"].to_numpy(float)[pos[hit]]
        return out

    def add(self, pair_ids: list[str], margins: np.ndarray) -> None:
        if not len(pair_ids):
            return
        tmp = self.dir / f".tmp-{uuid.uuid4().hex}.parquet"
        pd.DataFrame({"pair_id": list(pair_ids), "raw_margin": np.asarray(margins, float)}).to_parquet(tmp)
        tmp.rename(self.dir / f"shard-{uuid.uuid4().hex}.parquet")


def score_cache_key(model: dict) -> str:
    """What a cached margin depends on: the model's recipe fingerprint, the contents of its
    folder (weights changed in place are another model), the torch / transformers versions and,
    for frozen models, the backbone's contents."""
    from fgpo_tasks import reward_models as rm
    from fgpo_tasks.provenance import sha256_hex
    from fgpo_tasks.stages import tree_sha256

    parts = [model["fingerprint"], tree_sha256(model["dir"]), rm.library_versions()]
    if model.get("mode") == "frozen":
        parts.append(rm.backbone_fingerprint(model["backbone"]))
    return sha256_hex(*parts)[:32]


PAIR_CHUNK = 4096  # pairs per scoring pass: the texts, embeddings and margins of one chunk in memory


def _pair_margins(score_fn, rows: pd.DataFrame) -> np.ndarray:
    p = rows["prompt"].tolist()
    r = score_fn(p + p, rows["chosen"].tolist() + rows["rejected"].tolist())
    return r[:len(rows)] - r[len(rows):]


def _head_margins(scorers: dict, js: list[int], rows: pd.DataFrame, root, progress: bool) -> dict[int, np.ndarray]:
    """Margins of frozen models ``js`` (one backbone) on ``rows``: one embedding pass, K heads
    (``head_values``: a pair's margin does not depend on the chunk or shard it is scored in)."""
    from fgpo_tasks.reward_models.loading import head_values

    emb = scorers[js[0]].embedder
    p = rows["prompt"].tolist()
    e = emb.embed(p + p, rows["chosen"].tolist() + rows["rejected"].tolist(), root, progress=progress)
    out = {}
    for j in js:
        r = head_values(scorers[j].head, e)
        out[j] = r[:len(rows)] - r[len(rows):]
    return out


def model_margins(df: pd.DataFrame, models: list[dict], mask: np.ndarray, config: ScoreConfig,
                  chunk: int = PAIR_CHUNK, texts: Callable | None = None) -> tuple[np.ndarray, dict[str, dict]]:
    """(N, K) raw margins (NaN outside the mask) and per-model counts of new / cached pairs.

    Pairs go through the models ``chunk`` at a time (texts, embeddings and margins of one chunk
    in memory), and each chunk's new margins are written to the score cache as they come.
    ``texts(positions)`` gives those rows' prompt/chosen/rejected (default: ``df`` holds them)."""
    from fgpo_tasks import reward_models as rm

    raw = np.full(mask.shape, np.nan)
    stats = {}
    cache_root = config.cache_dir or rm.default_cache_root("scores")
    ids = df["pair_id"].to_numpy()
    todo = []  # (j, rows needing a model pass, cache)
    for j, m in enumerate(models):
        need = np.flatnonzero(mask[:, j])
        cache = ScoreCache(cache_root, score_cache_key(m)) if config.use_cache else None
        cached = cache.lookup(ids[need]) if cache else np.full(len(need), np.nan)
        hit = ~np.isnan(cached)
        raw[need[hit], j] = cached[hit]
        stats[m["aspect"]] = {"scored": int((~hit).sum()), "from_cache": int(hit.sum()),
                              "fingerprint": m["fingerprint"]}
        if (~hit).any():
            todo.append((j, need[~hit], cache))
    if not todo:
        return raw, stats
    # Frozen models sharing a backbone: one embedding pass over the union of their texts, then
    # each head; fine-tuned models run their own classifier.
    scorers = {j: rm.load_scorer(models[j]["dir"], cache_dir=config.embedding_cache_dir,
                                 progress=config.progress) for j, _, _ in todo}
    groups: dict[str, list] = {}
    for j, rows, cache in todo:
        emb = getattr(scorers[j], "embedder", None)
        groups.setdefault(emb.key if emb else f"model-{j}", []).append((j, rows, cache))
    for key, items in groups.items():
        union = np.unique(np.concatenate([rows for _, rows, _ in items]))
        log.info("scoring %d pairs with %s", len(union), [models[j]["aspect"] for j, _, _ in items])
        root = None
        if not key.startswith("model-"):
            root = (config.embedding_cache_dir or models[items[0][0]]["config"].get("cache_dir")
                    or rm.default_cache_root())
        need = np.zeros((len(df), len(models)), dtype=bool)
        for j, rows, _ in items:
            need[rows, j] = True
        for start in range(0, len(union), chunk):
            part = union[start:start + chunk]
            sub = texts(part) if texts is not None else df.iloc[part]
            if key.startswith("model-"):
                vals = {items[0][0]: _pair_margins(scorers[items[0][0]], sub)}
            else:
                vals = _head_margins(scorers, [j for j, _, _ in items], sub, root, config.progress)
            for j, _, cache in items:
                sel = need[part, j]
                raw[part[sel], j] = vals[j][sel]
                if cache:
                    cache.add(ids[part[sel]].tolist(), vals[j][sel])
    return raw, stats


# ---------------------------------------------------------------------------------------------
# The stage

def _table(df, aspects, raw, scaled, mask, pd_values, pd_r) -> pd.DataFrame:
    out = {"pair_id": df["pair_id"].to_numpy(), "aspect": df["aspect"].to_numpy()}
    for j, a in enumerate(aspects):
        out[f"margin_{a}"] = scaled[:, j]
    for j, a in enumerate(aspects):
        out[f"raw_margin_{a}"] = np.where(mask[:, j], raw[:, j], np.nan)
    out["n_other"] = np.sum(np.isfinite(scaled), axis=1).astype(np.int64)
    out["pd"] = pd_values
    out["pd_ratings"] = pd_r
    return pd.DataFrame(out)


def read_scores(scores_dir: str | Path) -> tuple[pd.DataFrame, dict]:
    """The scores table and manifest written by ``run_score``."""
    path = Path(scores_dir) / SCORES_FILE
    if not path.is_file():
        raise FgpoError(f"{scores_dir}: not a scores directory (no {SCORES_FILE}; run `fgpo score`)")
    return pd.read_parquet(path), contract.read_manifest(scores_dir)


def run_score(data_dir: str | Path, out_dir: str | Path, config: ScoreConfig, created_at: str,
              reward_models_dir: str | Path | None = None, model_dirs: list[str] | None = None,
              margins: Callable | None = None) -> dict[str, Any]:
    """Score PD for every pair of ``data_dir`` into out_dir/scores.parquet (+ manifest, reports).

    The reward models: every one under ``reward_models_dir``, or the folders ``model_dirs``.
    ``margins(df, models, mask) -> (raw, stats)`` supplies the raw margins (default
    ``model_margins``; ``reduce_shards`` passes the margins its shards wrote)."""
    from fgpo_tasks import confidence, conflicts, jsonio, reports
    from fgpo_tasks import reward_models as rm

    start = time.perf_counter()
    models: list[dict] = []
    if model_dirs:
        reward_models_dir = None
    if reward_models_dir is None and not model_dirs and not config.from_ratings:
        raise ConfigError("score needs reward models (--reward-models DIR) or --from-ratings")
    if (reward_models_dir is not None or model_dirs) and config.from_ratings:
        raise ConfigError("give either --reward-models or --from-ratings, not both")
    # Arrow all the way: no Python object per pair. The texts (which pooling ratings per response
    # needs) stay Arrow for an in-process model pass, one chunk at a time becoming Python strings;
    # the reduce of sharded scoring and PD from ratings drop them once the ratings are pooled (the
    # conflict review reads its few pairs' texts back from the file).
    pool = contract.read_pair_table(data_dir, columns=RATING_COLUMNS)
    df = pool.select(["pair_id", "aspect"]).to_pandas()
    if len(df) == 0:
        raise InputError("no pairs to score", file=str(data_dir))
    r_aspects, pd_r, r_scaled, r_q, r_raw, r_mask = ratings_pd(pool, config.gamma, config.lower_is_better,
                                                                config.pool_ratings)
    text_table = pool.select(list(TEXT_COLUMNS)) if not config.from_ratings and margins is None else None
    del pool
    has_rating_pd = bool(np.isfinite(pd_r).any())
    stats, model_info = {}, {}
    if config.from_ratings:
        if not has_rating_pd:
            raise InputError("--from-ratings: no pair carries ratings of an aspect other than its own "
                             f"(rating aspects found: {r_aspects})", file=str(data_dir))
        aspects, raw, mask, scaled, q, pd_values = r_aspects, r_raw, r_mask, r_scaled, r_q, pd_r
        source = "ratings"
    else:
        models = rm.load_models(model_dirs) if model_dirs else rm.discover_models(reward_models_dir)
        aspects = [m["aspect"] for m in models]
        missing = sorted(set(df["aspect"]) - set(aspects))
        if missing:
            log.warning("no reward model for aspects %s: PD of other pairs omits them", missing)
        mask = cross_mask(df["aspect"].to_numpy(), aspects, df["pair_id"].to_numpy(),
                          [m["training_ids"] for m in models])
        if margins is None:
            def margins(d, ms, mk):
                return model_margins(d, ms, mk, config, texts=lambda rows: text_table.take(pa.array(rows)).to_pandas())
        raw, stats = margins(df, models, mask)
        text_table = None
        pd_values, scaled, q = compute_pd(raw, mask, config.gamma)
        source = "reward_models"
        model_info = {m["aspect"]: {"fingerprint": m["fingerprint"], "dir": m["dir"],
                                    "mode": m["mode"], "backbone": m["backbone"]} for m in models}
    table = _table(df, aspects, raw, scaled, mask, pd_values, pd_r if has_rating_pd else np.full(len(df), np.nan))
    corr = None
    if source == "reward_models" and has_rating_pd:
        corr = rm.spearman(pd_values, pd_r)
    quantiles = {a: (float(v) if np.isfinite(v) else None) for a, v in zip(aspects, q)}
    trust = confidence.selection_confidence(source, models, pd_values, pd_r if has_rating_pd else None,
                                            config.confidence_config())
    metrics = {
        "n_pairs": int(len(df)), "source": source, "aspects": aspects,
        "quantiles": quantiles,
        # pairs without PD (no rating of another aspect) are counted, never averaged as NaN
        "pd_mean": float(np.mean(pd_values[np.isfinite(pd_values)])) if np.isfinite(pd_values).any() else None,
        "pd_missing": int((~np.isfinite(pd_values)).sum()),
        "pd_negative_fraction": float(np.mean(pd_values[np.isfinite(pd_values)] < 0))
        if np.isfinite(pd_values).any() else None,
        "spearman_pd_vs_ratings": corr,
        "n_with_ratings_pd": int(np.isfinite(pd_r).sum()),
        "scored": {a: s["scored"] for a, s in stats.items()},
        "from_cache": {a: s["from_cache"] for a, s in stats.items()},
        "selection_confidence": trust["verdict"],
        **confidence.metrics(trust),
    }
    with atomic_dir(out_dir) as tmp:
        table.to_parquet(tmp / SCORES_FILE, index=False)
        reports.pd_histogram(pd_values, tmp / "reports", title=f"PD ({source}), gamma={config.gamma}")
        reports.conflict_matrix(df["aspect"].to_numpy(), scaled, aspects, tmp / "reports")
        if has_rating_pd and source == "reward_models":
            reports.conflict_matrix(df["aspect"].to_numpy(), r_scaled, r_aspects, tmp / "reports",
                                    name="conflict_matrix_ratings")
        review = conflicts.write_conflict_review(df, table, aspects, tmp / "reports", config.conflict_review_pairs,
                                                 title=f"Conflict review: the {config.conflict_review_pairs} "
                                                       f"pairs with the most positive PD ({source})",
                                                 texts=lambda rows: contract.take_rows(data_dir, rows, TEXT_COLUMNS))
        jsonio.write_json(tmp / confidence.REPORT_FILE, trust)
        contract.write_manifest(tmp, {
            "kind": "fgpo.scores", "stage": "score", "created_at": created_at,
            "code_version": code_version(), "config": to_dict(config), "source": source,
            "reward_models_dir": str(reward_models_dir) if reward_models_dir else None,
            "models": model_info, "quantiles": quantiles,
            "rating_quantiles": {a: (float(v) if np.isfinite(v) else None) for a, v in zip(r_aspects, r_q)},
            "inputs": [{"path": str(data_dir), "fingerprint": contract.data_fingerprint(data_dir)}],
            "fingerprint": file_fingerprint(tmp / SCORES_FILE),
            "row_counts": contract.counts(df),
            "columns": list(table.columns),
            "metrics": metrics,
            "selection_confidence": trust,
            "conflict_review": review,
        })
    metrics["seconds"] = round(time.perf_counter() - start, 2)
    metrics["out_dir"] = str(out_dir)
    log.info("scored %d pairs (%s): PD mean %s (%d without PD), Spearman vs ratings %s", len(df), source,
             metrics["pd_mean"], metrics["pd_missing"], corr)
    (log.warning if trust["verdict"] == "none" else log.info)(
        "selection confidence %r: %s", trust["verdict"], "; ".join(trust["reasons"]))
    return metrics


# ---------------------------------------------------------------------------------------------
# Sharded scoring: one task per (shard, reward model), then a cheap reduce (the fgpo_retrain DAG)

SHARD_COLUMNS = ("pair_id", "aspect", "prompt", "chosen", "rejected")
TEXT_COLUMNS = ("prompt", "chosen", "rejected")


def shard_bounds(n_pairs: int, shard_size: int | None) -> list[tuple[int, int]]:
    """[lo, hi) row ranges of the shards of ``n_pairs`` pairs in file order (the last may be short)."""
    if shard_size is None or n_pairs <= shard_size:
        return [(0, n_pairs)]
    return [(lo, min(lo + shard_size, n_pairs)) for lo in range(0, n_pairs, shard_size)]


def shard_plan(n_pairs: int, model_dirs: list[str], shard_size: int | None) -> list[dict]:
    """One ``{"model", "shard"}`` per (shard, reward model): the kwargs of the DAG's mapped tasks."""
    return [{"model": str(m), "shard": i}
            for i in range(len(shard_bounds(n_pairs, shard_size))) for m in sorted(map(str, model_dirs))]


def n_pairs(data_dir: str | Path) -> int:
    """Rows of a pair directory, from its Parquet footer (reads no row)."""
    import pyarrow.parquet as pq

    path = Path(data_dir) / contract.PAIRS_FILE
    if not path.is_file():
        raise FgpoError(f"{data_dir}: not an fgpo data directory (no {contract.PAIRS_FILE})")
    return pq.ParquetFile(path).metadata.num_rows


def read_pair_rows(data_dir: str | Path, lo: int, hi: int, columns=SHARD_COLUMNS,
                   batch_rows: int = 65536) -> pd.DataFrame:
    """Rows [lo, hi) of a pair directory's table (file order), only ``columns``, streamed from
    Arrow record batches: memory holds this shard's rows, never the whole pool."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    f = pq.ParquetFile(Path(data_dir) / contract.PAIRS_FILE)
    parts, at = [], 0
    for batch in f.iter_batches(batch_size=batch_rows, columns=list(columns)):
        end = at + batch.num_rows
        if end > lo and at < hi:
            parts.append(batch.slice(max(lo - at, 0), min(hi, end) - max(lo, at)))
        at = end
        if at >= hi:
            break
    table = pa.Table.from_batches(parts) if parts else f.schema_arrow.empty_table().select(list(columns))
    return pd.DataFrame({c: table.column(c).to_pylist() for c in columns})


def shard_path(shards_dir: str | Path, aspect: str, shard_index: int, shard_size: int | None) -> Path:
    from fgpo_tasks.storage import safe_name

    return Path(shards_dir) / safe_name(aspect) / f"{shard_size or 'all'}-{shard_index:05d}.parquet"


def score_shard(data_dir: str | Path, model_dir: str | Path, shard_index: int, config: ScoreConfig,
                shards_dir: str | Path) -> dict:
    """Raw margins of ONE reward model on ONE shard of the pairs (``config.shard_size`` rows in
    file order), NaN where the model may not score the pair (its own aspect, its training pairs),
    written to ``shard_path(...)`` (pair_id, raw_margin) with its counts beside it. A shard
    already written is returned as it is (a retried task redoes nothing)."""
    from fgpo_tasks import jsonio
    from fgpo_tasks import reward_models as rm
    from fgpo_tasks.storage import atomic_write

    (m,) = rm.load_models([model_dir], include_unified=True)
    path = shard_path(shards_dir, m["aspect"], shard_index, config.shard_size)
    stats_file = path.with_suffix(".json")
    if path.is_file() and stats_file.is_file():
        return json.loads(stats_file.read_text())
    bounds = shard_bounds(n_pairs(data_dir), config.shard_size)
    if not 0 <= shard_index < len(bounds):
        raise ConfigError(f"shard {shard_index} out of range: {data_dir} has {len(bounds)} shard(s) of "
                          f"{config.shard_size or 'all'} pairs")
    lo, hi = bounds[shard_index]
    df = read_pair_rows(data_dir, lo, hi)
    mask = cross_mask(df["aspect"].to_numpy(), [m["aspect"]], df["pair_id"].to_numpy(), [m["training_ids"]])
    raw, stats = model_margins(df, [m], mask, config)
    result = {"aspect": m["aspect"], "shard": shard_index, "rows": [lo, hi], "path": str(path),
              "scored": stats[m["aspect"]]["scored"], "from_cache": stats[m["aspect"]]["from_cache"]}
    atomic_write(stats_file, jsonio.dumps(result))
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    pd.DataFrame({"pair_id": df["pair_id"].to_numpy(), "raw_margin": raw[:, 0]}).to_parquet(tmp, index=False)
    tmp.rename(path)  # the margins last: a shard exists once its parquet does
    return result


def reduce_shards(data_dir: str | Path, out_dir: str | Path, config: ScoreConfig, created_at: str,
                  model_dirs: list[str], shards_dir: str | Path) -> dict[str, Any]:
    """Quantiles, PD and the scores table from the shards' raw margins: exactly what ``run_score``
    writes for the same data and models (shards not written yet are scored here first)."""
    def gathered(df: pd.DataFrame, models: list[dict], mask: np.ndarray):
        raw = np.full(mask.shape, np.nan)
        stats = {m["aspect"]: {"scored": 0, "from_cache": 0, "fingerprint": m["fingerprint"]} for m in models}
        ids = df["pair_id"].to_numpy()
        for j, m in enumerate(models):
            for i, (lo, hi) in enumerate(shard_bounds(len(df), config.shard_size)):
                res = score_shard(data_dir, m["dir"], i, config, shards_dir)
                part = pd.read_parquet(res["path"])
                if len(part) != hi - lo or not np.array_equal(part["pair_id"].to_numpy(), ids[lo:hi]):
                    raise FgpoError(f"{res['path']}: its pairs are not rows {lo}-{hi} of {data_dir} "
                                    "(the data changed after the shard was scored)")
                raw[lo:hi, j] = np.where(mask[lo:hi, j], part["raw_margin"].to_numpy(float), np.nan)
                stats[m["aspect"]]["scored"] += res["scored"]
                stats[m["aspect"]]["from_cache"] += res["from_cache"]
        return raw, stats

    return run_score(data_dir, out_dir, config, created_at, model_dirs=list(model_dirs), margins=gathered)


def run_score_distributed(data_dir: str | Path, out_dir: str | Path, config: ScoreConfig, created_at: str,
                          reward_models_dir: str | Path | None = None, model_dirs: list[str] | None = None
                          ) -> dict[str, Any] | None:
    """``run_score`` data-parallel over the processes of ``accelerate launch`` (or torchrun):
    process r scores shards r, r + P, r + 2P... (``shard_size`` pairs each, default an equal
    share per process) with every reward model into a shard folder beside ``out_dir``; the main
    process then reduces them into the scores ``run_score`` writes (the same bytes), and removes
    the shard folder. Returns the metrics on the main process, None on the others."""
    import dataclasses
    import shutil

    from accelerate import PartialState

    from fgpo_tasks import reward_models as rm
    from fgpo_tasks.stages import result_fields, stage_key

    import os

    import torch

    # on CPUs (or ACCELERATE_USE_CPU) the processes join a gloo group; PartialState() alone would
    # leave each launched CPU process on its own
    cpu = os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes") or not torch.cuda.is_available()
    state = PartialState(cpu=cpu)
    if state.num_processes == 1 or config.from_ratings or (reward_models_dir is None and not model_dirs):
        metrics = run_score(data_dir, out_dir, config, created_at, reward_models_dir, model_dirs) \
            if state.is_main_process else None
        state.wait_for_everyone()
        return metrics
    models = list(model_dirs) if model_dirs else [m["dir"] for m in rm.discover_models(reward_models_dir)]
    n = n_pairs(data_dir)
    cfg = dataclasses.replace(config, shard_size=config.shard_size or max(1, -(-n // state.num_processes)))
    # keyed by what the margins depend on, so shards of other data or models are never mixed in
    key, _ = stage_key("score", {"data": str(data_dir), "models": sorted(models)}, result_fields(cfg))
    out = Path(out_dir)
    shards = out.parent / f".{out.name}.shards-{key}"
    mine = range(state.process_index, len(shard_bounds(n, cfg.shard_size)), state.num_processes)
    for i in mine:
        for m in sorted(models):
            score_shard(data_dir, m, i, cfg, shards)
    log.info("process %d/%d scored shards %s", state.process_index, state.num_processes, list(mine))
    state.wait_for_everyone()
    metrics = None
    if state.is_main_process:
        metrics = reduce_shards(data_dir, out_dir, cfg, created_at, models, shards)
        metrics["num_processes"] = state.num_processes
        shutil.rmtree(shards, ignore_errors=True)
    state.wait_for_everyone()
    return metrics
