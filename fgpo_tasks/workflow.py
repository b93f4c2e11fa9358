"""The stages of fgpo, each over the stage layer (``fgpo_tasks.stages``): one implementation that
``fgpo pipeline``, the fgpo_retrain DAG and the experiment runner all call.

Each function takes a ``Store``, its inputs (paths), its config dataclass and the run's
timestamp, and returns the ``StageRun`` (key, folder, result, whether it was computed now).
A function never asks which run it serves: two runs (or two experiment arms) that ask for the same
stage on the same inputs with the same config get the one stored output.

Incremental retraining (``reward_model``): a proxy is a function of its aspect's data, so new
pairs give a new stage key; the stage then looks for an earlier proxy of the same recipe (aspect,
every weight-relevant config field, code) whose pairs are all still in the data, and reuses it
while the aspect's data has grown by less than ``refresh_fraction`` since that proxy was trained.
The result says ``reused`` and why. Scores of pairs a reused proxy already scored come from the
score cache (keyed by the proxy's fingerprint), so only new pairs are scored.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Callable

from fgpo_tasks.provenance import sha256_hex, stable_json
from fgpo_tasks.stages import Store, StageRun, code_version, result_fields, stage_key

log = logging.getLogger(__name__)


def _counts(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


# ---------------------------------------------------------------------------------------------
# data

def ingest(store: Store, sources: list[str], formats: list[str], config, created_at: str) -> StageRun:
    """Read the sources into the data contract (``result['data']``)."""
    from fgpo_tasks.ingest import run_ingest

    def compute(out: Path) -> dict:
        metrics = run_ingest(sources, formats, out / "data", config, created_at)
        return {"data": str(out / "data"),
                **{k: metrics[k] for k in ("rows_in", "accepted", "quarantined") if k in metrics}}

    return store.run("ingest", inputs={"sources": sources}, created_at=created_at, compute=compute,
                     config={"format": list(formats), "ingest": result_fields(config)})


def validate(store: Store, data: str, config, holdout, created_at: str) -> StageRun:
    """Validate; with a ``holdout`` (HoldoutConfig) split off the evaluation parts by prompt.
    ``result['data']`` is the pool the proxies, selection and DPO use."""
    from fgpo_tasks import contract
    from fgpo_tasks.holdout import write_split
    from fgpo_tasks.validate import run_validate

    def compute(out: Path) -> dict:
        validated = out / "data"
        metrics = run_validate(data, validated, config, created_at)
        result = {"validated": str(validated), **_counts(metrics)}
        pool = validated
        if holdout is not None:
            split = write_split(validated, out / "holdout", holdout, created_at)
            pool = Path(split["pool"])
            result.update({k: v for k, v in split.items() if k.startswith("n_")},
                          eval_rm=split["eval_rm"], eval_prompts=split["eval_prompts"])
        result["data"] = str(pool)
        result["aspects"] = sorted(contract.read_manifest(pool)["row_counts"]["per_aspect"])
        return result

    return store.run("validate", inputs={"data": data}, created_at=created_at, compute=compute,
                     config={"validate": result_fields(config),
                             "holdout": result_fields(holdout) if holdout is not None else None})


def cap(store: Store, pool: str, max_pairs: int | None, proxy_max_pairs: int | None, seed: int,
        created_at: str) -> StageRun:
    """At most ``max_pairs`` pairs of a pool (and a ``proxy_max_pairs`` superset for the proxies)."""
    from fgpo_tasks import contract
    from fgpo_tasks.holdout import cap_pairs

    def compute(out: Path) -> dict:
        df = contract.read_pairs(pool)
        inputs = [{"path": pool, "fingerprint": contract.data_fingerprint(pool, df)}]
        result: dict[str, Any] = {}
        if proxy_max_pairs is not None:
            proxy = cap_pairs(df, proxy_max_pairs, seed)
            contract.write_pairs(proxy, out / "proxy_pool", stage="cap", created_at=created_at, inputs=inputs,
                                 config={"max_pairs": proxy_max_pairs, "seed": seed})
            result.update(proxy_pool=str(out / "proxy_pool"), n_proxy_pairs=int(len(proxy)))
        df = cap_pairs(df, max_pairs, seed)
        contract.write_pairs(df, out / "pool", stage="cap", created_at=created_at, inputs=inputs,
                             config={"max_pairs": max_pairs, "seed": seed})
        return {**result, "pool": str(out / "pool"), "n_pairs": int(len(df)),
                "aspects": sorted(df["aspect"].unique())}

    return store.run("cap", inputs={"pool": pool}, created_at=created_at, compute=compute,
                     config={"max_pairs": max_pairs, "proxy_max_pairs": proxy_max_pairs, "seed": seed})


# ---------------------------------------------------------------------------------------------
# proxies

def _recipe(aspect: str, config) -> str:
    from fgpo_tasks import reward_models as rm
    return sha256_hex("recipe", aspect, stable_json(rm.weight_fields(config)), code_version("reward_model"))[:24]


def _reusable(store: Store, stage: str, recipe: str, ids: set[str], refresh_fraction: float
              ) -> tuple[dict | None, str]:
    """(the record of a proxy to reuse, or None; why). The newest trained proxy of the recipe
    whose pairs are all still in the data decides: reused while growth < refresh_fraction."""
    for rec in reversed(store.records(stage)):
        if rec.get("recipe") != recipe or rec["result"].get("reused"):
            continue
        model = Path(rec["result"]["model"])
        try:
            seen = set(json.loads((model / "training_ids.json").read_text()))
            seen |= set(json.loads((model / "heldout_ids.json").read_text()))
        except (OSError, ValueError):
            continue
        if not seen <= ids:
            continue
        n_then = int(rec["result"]["n_pairs"])
        growth = (len(ids) - n_then) / max(n_then, 1)
        if growth < refresh_fraction:
            return rec, (f"reused: the aspect's data grew by {growth:.1%} ({n_then} -> {len(ids)} pairs) "
                         f"since proxy {rec['key']} was trained, below refresh_fraction {refresh_fraction}")
        return None, (f"retrained: the aspect's data grew by {growth:.1%} ({n_then} -> {len(ids)} pairs) "
                      f"since proxy {rec['key']} was trained, at least refresh_fraction {refresh_fraction}")
    return None, "trained: no earlier proxy of this recipe on a subset of this data"


def reward_model(store: Store, data: str, aspect: str, config, created_at: str, stage: str = "reward_model"
                 ) -> StageRun:
    """The proxy reward model of ONE aspect (``result['model']`` is its folder)."""
    from fgpo_tasks import contract
    from fgpo_tasks import reward_models as rm

    recipe = _recipe(aspect, config)

    def compute(out: Path) -> dict:
        df = contract.read_pairs(data)
        rows = df if aspect == rm.UNIFIED else df[df["aspect"] == aspect]
        ids = set(rows["pair_id"])
        prev, reason = _reusable(store, stage, recipe, ids, config.refresh_fraction)
        log.info("reward model %s: %s", aspect, reason)
        if prev is not None:
            before = prev["result"]
            return {"aspect": aspect, "model": before["model"], "reused": True, "reason": reason,
                    "trained_key": prev["key"], "n_pairs": before["n_pairs"], "n_pairs_now": len(ids),
                    "accuracy": before.get("accuracy"), "metrics": before.get("metrics", {}),
                    "train_seconds": before.get("train_seconds")}
        metrics = rm.run_reward_model(data, aspect, out, config, created_at)
        return {"aspect": aspect, "model": str(out / aspect), "reused": False, "reason": reason,
                "trained_key": out.name, "n_pairs": int(metrics["n_pairs"]), "n_pairs_now": len(ids),
                "accuracy": metrics.get("heldout_accuracy"), "train_seconds": metrics.get("seconds"),
                "metrics": {k: v for k, v in metrics.items() if k not in ("model_dir",)}}

    return store.run(stage, inputs={"data": data}, created_at=created_at, compute=compute,
                     config={"aspect": aspect, "reward_models": result_fields(config)}, extra={"recipe": recipe})


def embed(store: Store, datas: list[str], config, created_at: str) -> StageRun:
    """Embed every (prompt, response) of the pair dirs once with the frozen backbone, into an
    embedding cache of this stage's own (timed apart: every proxy-using strategy pays it)."""
    import pandas as pd

    from fgpo_tasks import contract
    from fgpo_tasks import reward_models as rm

    def compute(out: Path) -> dict:
        emb = rm.get_embedder(config.backbone, config.max_length, config.max_prompt_length,
                              config.pooling, config.embed_batch_size, config.device,
                              layer=config.layer, dtype=config.dtype)
        df = pd.concat([contract.read_pairs(d) for d in dict.fromkeys(datas)]).drop_duplicates("pair_id")
        prompts = df["prompt"].tolist()
        emb.embed(prompts + prompts, df["chosen"].tolist() + df["rejected"].tolist(), out / "embeddings")
        return {"cache_dir": str(out / "embeddings"), "n_texts": 2 * len(df)}

    fields = {k: v for k, v in result_fields(config).items()
              if k in ("backbone", "max_length", "max_prompt_length", "pooling", "mode", "layer", "dtype")}
    return store.run("embed", inputs={"data": list(dict.fromkeys(datas))}, created_at=created_at,
                     compute=compute, config=fields)


def eval_reward_model_config(stages: dict, where: str):
    """The evaluation reward models' config: section ``eval_reward_models`` over the proxies'
    ``reward_models`` section (the one rule for the pipeline and the experiment)."""
    from fgpo_tasks.config import from_dict
    from fgpo_tasks.reward_models import RewardModelConfig

    values = {**(stages.get("reward_models") or {}), **(stages.get("eval_reward_models") or {})}
    return from_dict(RewardModelConfig, values, where=f"{where} [eval_reward_models]")


def eval_reward_models(store: Store, eval_rm: str, config, created_at: str) -> tuple[dict[str, list[str]], dict]:
    """One evaluation reward model per aspect of the held-out ``eval_rm`` pairs:
    ({aspect: ["fgpo:<folder>"]}, {aspect: StageRun})."""
    from fgpo_tasks import contract

    runs = {a: reward_model(store, eval_rm, a, config, created_at, stage="eval_reward_model")
            for a in sorted(contract.read_pairs(eval_rm)["aspect"].unique())}
    return {a: [f"fgpo:{r.result['model']}"] for a, r in runs.items()}, runs


# ---------------------------------------------------------------------------------------------
# scoring and selection

def score_spec(data: str, models: list[str], config) -> tuple[dict, dict]:
    """(inputs, config fields) of a score stage: its key, the same sharded or not
    (``shard_size`` is inert)."""
    return {"data": data, "models": sorted(models)}, result_fields(config)


def score(store: Store, data: str, models: list[str], config, created_at: str) -> StageRun:
    """PD of every pair from the proxies in ``models`` (folders), or from ratings (config).

    Sharded (``config.shard_size``, or shards the DAG's mapped tasks already wrote into the
    stage folder, ``score_shard``): the reduce reads their margins, scoring any shard missing;
    the result is the unsharded one."""
    from fgpo_tasks.scoring import reduce_shards, run_score

    def compute(out: Path) -> dict:
        shards = out / "shards"
        if models and (config.shard_size is not None or shards.is_dir()):
            metrics = reduce_shards(data, out / "scores", config, created_at, models, shards)
        else:
            metrics = run_score(data, out / "scores", config, created_at, model_dirs=models or None)
        keep = {k: v for k, v in metrics.items() if k not in ("out_dir",)}
        return {"scores": str(out / "scores"), **keep}

    inputs, fields = score_spec(data, models, config)
    return store.run("score", inputs=inputs, created_at=created_at, compute=compute, config=fields)


def score_shard(store: Store, data: str, models: list[str], config, model: str, shard: int) -> dict:
    """One (shard, proxy) of the score stage: its raw margins, written into the score stage's own
    folder (``<stage dir>/shards``) before the stage finishes, where ``score`` reduces them.
    Nothing to do once the stage is stored."""
    from fgpo_tasks.scoring import score_shard as compute_shard

    inputs, fields = score_spec(data, models, config)
    key, _ = stage_key("score", inputs, fields)
    if store.lookup("score", key):
        return {"stage_key": key, "shard": shard, "model": model, "done": True}
    res = compute_shard(data, model, shard, config, store.stage_dir("score", key) / "shards")
    return {"stage_key": key, "done": False, **res}


def select(store: Store, scores: str | None, data: str, config, created_at: str) -> StageRun:
    """The budget's fraction of pairs by the strategy (``result['data']``)."""
    import dataclasses

    from fgpo_tasks import contract
    from fgpo_tasks.selection import run_select

    def compute(out: Path) -> dict:
        metrics = run_select(scores, data, out / "data", config, created_at)
        return {"data": str(out / "data"), "n_selected": metrics.get("n_selected"),
                "selected": contract.read_manifest(out / "data").get("row_counts", {}).get("total"),
                "strategy": metrics.get("strategy"), "requested_strategy": metrics.get("requested_strategy"),
                "selection_confidence": metrics.get("selection_confidence"),
                "confidence_action": metrics.get("confidence_action"),
                "metrics": {k: v for k, v in metrics.items() if isinstance(v, (int, float, str, type(None)))}}

    fields = result_fields(config)
    unified = fields.pop("unified_model", None)
    # strategies that read no scores do not depend on them
    needs_scores = config.strategy not in ("all", "random") if dataclasses.is_dataclass(config) else True
    return store.run("select", created_at=created_at, compute=compute, config=fields,
                     inputs={"data": data, "scores": scores if needs_scores else None, "unified_model": unified})


# ---------------------------------------------------------------------------------------------
# policy

def train_dpo(store: Store, data: str, config, created_at: str,
              metrics_callback: Callable[[int, dict], None] | None = None,
              on_compute: Callable[[], Any] | None = None) -> StageRun:
    """DPO from ``config.model`` on the selected pairs (``result['model']``); checkpoints live in
    the stage folder, so a retried stage resumes. ``on_compute()`` (if given) is entered around
    the training only when it runs (an MLflow stage run), and returns the metrics callback."""
    from fgpo_tasks.dpo import run_train_dpo

    def compute(out: Path) -> dict:
        import contextlib

        ctx = on_compute() if on_compute else contextlib.nullcontext(metrics_callback)
        with ctx as callback:
            metrics = run_train_dpo(data, out / "model", config, created_at, metrics_callback=callback)
            if callback is not None and hasattr(callback, "flush"):
                callback.flush(raise_errors=False)
        return {"model": str(out / "model"), "steps": metrics.get("steps"),
                "metrics": {k: v for k, v in metrics.items() if isinstance(v, (int, float, str, type(None)))}}

    inputs, fields = dpo_spec(data, config)
    return store.run("train_dpo", created_at=created_at, compute=compute, config=fields, inputs=inputs)


def dpo_spec(data: str, config) -> tuple[dict, dict]:
    """(inputs, config fields) of a train_dpo stage: what its key is made of. A model spec that
    is a local folder is fingerprinted by its content, as every input path."""
    fields = result_fields(config)
    scores_dir = fields.pop("scores_dir", None)
    return {"data": data, "scores": scores_dir, "policy": fields.get("model"),
            "reference": fields.get("ref_model")}, fields


def evaluate(store: Store, model: str, baseline: str, config, created_at: str,
             prompts_file: str | None = None) -> StageRun:
    """The candidate against the baseline, judged by ``config.eval_models`` (``result['results']``)."""
    from fgpo_tasks.evaluate import run_evaluate

    def compute(out: Path) -> dict:
        prompts = None
        if prompts_file:
            prompts = [json.loads(line) for line in Path(prompts_file).read_text().splitlines() if line.strip()]
        figures = run_evaluate(model, baseline, out / "results", config, created_at, prompts=prompts)
        return {"results": str(out / "results"), "baseline": baseline,
                **{k: v for k, v in figures.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}}

    return store.run("evaluate", created_at=created_at, compute=compute, config=result_fields(config),
                     inputs={"model": model, "baseline": baseline, "prompts": prompts_file})
