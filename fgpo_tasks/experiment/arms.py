"""The experiment's arms over the stage layer: the pipeline's stages, several arms side by side.

Every unit asks the stage layer (``fgpo_tasks.workflow``) for its stages, so whatever two units
share is computed once: every arm of a (pool, seed) uses the pool's one scoring, two arms with
the same selection (strategy, budget, seed: e.g. ``all`` with the sigmoid loss and with DFPO)
share that selection, and a pool built for one experiment is the same stage output for another
experiment or a pipeline run on the same data and settings. A unit's record
(``<out>/<unit>/step.json``) names the stage keys it used; a rerun with nothing changed finds
them all and computes nothing, a changed field computes the stages it reaches.

=================  =========================================================================
``prepare``        the starting policy (built once for an alias) and, when it was fine-tuned on
                   toy-world data, those pairs (their prompts are never evaluation prompts)
``prepare_pool``   per (pool, seed): ingest, validate (+ the evaluation split for real data),
                   cap, the embedding pass, the proxy reward models (one per aspect, plus the
                   unified one when a ``raf`` arm exists) and PD scoring
``prepare_eval``   the held-out prompts (none in any pool or in the policy's SFT data) and, with
                   ``eval_split``, the evaluation reward models trained on that split
``run_arm``        per (pool, seed, arm): select, DPO, evaluate; one MLflow run per arm
=================  =========================================================================

Costs are the stages' own compute seconds (recorded in each ``stage.json`` when it was computed),
so an arm that shares a stage is charged what that stage cost, as if it had run it.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from fgpo_tasks import jsonio
from fgpo_tasks import workflow
from fgpo_tasks.config import from_dict
from fgpo_tasks.errors import FgpoError
from fgpo_tasks.experiment.config import (ROLE_TAG, ArmSpec, ExperimentConfig, PoolSpec, _arm, _commit,
                                          _device_kind, _done, _pool, _require, _resolve_source,
                                          _stage, _threads, arm_units, out_root, pool_units, store)
from fgpo_tasks.experiment.report import _true_conflict, open_tracker, report

log = logging.getLogger(__name__)


def _keys(*runs) -> dict[str, str]:
    return {f"{r.stage}:{r.result.get('aspect', '')}".rstrip(":"): r.key for r in runs}


# ---------------------------------------------------------------------------------------------
# prepare: the starting policy

def prepare(cfg: ExperimentConfig, key: str, created_at: str) -> dict:
    """The starting policy's folder (built once for an alias) and its SFT data as a pair dir."""
    from fgpo_tasks import contract, models

    step = out_root(cfg, key) / "prepare"
    if (done := _done(step)) and done.get("starting_policy") == cfg.starting_policy \
            and done.get("exclude_policy_data") == cfg.exclude_policy_data:
        return done
    _threads(cfg)
    t0 = time.perf_counter()
    policy = models.pretrained_path(cfg.starting_policy)
    policy_data = None
    card_path = Path(policy) / "fgpo_model.json"
    card = json.loads(card_path.read_text()) if card_path.is_file() else {}
    if cfg.exclude_policy_data and card.get("synthetic"):
        from fgpo_tasks.synthetic import SyntheticConfig, generate
        rows = generate(from_dict(SyntheticConfig, card["synthetic"]))
        policy_data = str(step / "policy_data")
        contract.write_pairs(rows, policy_data, stage="ingest", config={"synthetic": card["synthetic"]},
                             created_at=created_at)
    elif cfg.exclude_policy_data and card.get("data_dir"):
        policy_data = card["data_dir"]
    return _commit(step, {"policy": policy, "policy_data": policy_data, "starting_policy": cfg.starting_policy,
                          "exclude_policy_data": cfg.exclude_policy_data,
                          "seconds": round(time.perf_counter() - t0, 2)})


# ---------------------------------------------------------------------------------------------
# prepare_pool: data, proxy reward models and PD scores, once per (pool, seed)

def _ingest_config(cfg: ExperimentConfig, pool: PoolSpec, seed: int):
    from fgpo_tasks.ingest import IngestConfig

    values = dict(cfg.stages.get("ingest") or {})
    values.update(pool.ingest)
    if "synthetic" in pool.format and pool.seed_data:
        values["synthetic"] = {**values.get("synthetic", {}), **pool.ingest.get("synthetic", {}), "seed": seed}
    return from_dict(IngestConfig, values, where=f"pool {pool.name!r} [ingest]")


def prepare_data(cfg: ExperimentConfig, key: str, pool_name: str, seed: int, created_at: str) -> dict:
    """Ingest + validate (+ evaluation split, + cap) a pool: the pipeline's stages, so every seed
    that draws the same data (a real pool: all of them) gets the same outputs."""
    from fgpo_tasks.holdout import HoldoutConfig
    from fgpo_tasks.validate import ValidateConfig

    pool = _pool(cfg, pool_name)
    st = store(cfg)
    t0 = time.perf_counter()
    ingested = workflow.ingest(st, [_resolve_source(s) for s in pool.source], pool.format,
                               _ingest_config(cfg, pool, seed), created_at)
    holdout = from_dict(HoldoutConfig, cfg.eval_split, where="eval_split") if cfg.eval_split else None
    valid = workflow.validate(st, ingested.result["data"], _stage(cfg, "validate", ValidateConfig), holdout,
                              created_at)
    runs = [ingested, valid]
    result: dict[str, Any] = {"validated": valid.result["validated"],
                              **{k: valid.result[k] for k in ("eval_rm", "eval_prompts") if k in valid.result}}
    if pool.max_pairs is None and pool.proxy_max_pairs is None:
        from fgpo_tasks import contract

        result.update(pool=valid.result["data"], aspects=valid.result["aspects"],
                      n_pairs=int(contract.read_manifest(valid.result["data"])["row_counts"]["total"]))
    else:
        capped = workflow.cap(st, valid.result["data"], pool.max_pairs, pool.proxy_max_pairs,
                              seed if pool.seed_data else 0, created_at)
        runs.append(capped)
        result.update({k: capped.result[k] for k in ("pool", "n_pairs", "aspects", "proxy_pool", "n_proxy_pairs")
                       if k in capped.result})
    result.update(stage_keys=_keys(*runs), seconds=round(sum(r.seconds for r in runs), 2),
                  wall_seconds=round(time.perf_counter() - t0, 2))
    return result


def prepare_pool(cfg: ExperimentConfig, key: str, pool_name: str, seed: int, created_at: str) -> dict:
    """The pool's data, proxy reward models and PD scores for one seed, each timed."""
    from fgpo_tasks.reward_models import UNIFIED, RewardModelConfig
    from fgpo_tasks.scoring import ScoreConfig

    step = out_root(cfg, key) / "pools" / pool_name / f"seed{seed}"
    _threads(cfg)
    st = store(cfg)
    data = prepare_data(cfg, key, pool_name, seed, created_at)
    needs = cfg.needs
    result = {"pool": pool_name, "seed": seed, "data": data["pool"], "proxy_data": data.get("proxy_pool"),
              "n_pairs": data["n_pairs"], "aspects": data["aspects"], "device": _device_kind(),
              "rm_seconds": {}, "proxy_accuracy": {}, "proxy_reused": {}}
    keys = dict(data["stage_keys"])
    rm_config = _stage(cfg, "reward_models", RewardModelConfig, seed=seed)
    to_train = (data["aspects"] if needs & {"aspects", "score"} else []) + ([UNIFIED] if "unified" in needs else [])
    proxy_data = data.get("proxy_pool", data["pool"])
    if to_train and rm_config.mode == "frozen":
        # Frozen proxies share one embedding pass over the pool: timed on its own (every strategy
        # that uses a proxy pays it), in a cache of the embed stage's own (no pool rides on another's).
        emb = workflow.embed(st, [data["pool"], proxy_data], rm_config, created_at)
        rm_config.cache_dir = emb.result["cache_dir"]
        result["embed_seconds"] = round(emb.seconds, 2)
        keys["embed"] = emb.key
    models = {}
    for aspect in to_train:
        run = workflow.reward_model(st, proxy_data, aspect, rm_config, created_at)
        models[aspect] = run.result["model"]
        result["rm_seconds"][aspect] = round(run.seconds, 2)
        result["proxy_accuracy"][aspect] = run.result.get("accuracy")
        result["proxy_reused"][aspect] = run.result["reason"]
        keys[f"reward_model:{aspect}"] = run.key
    if models:
        result["reward_models"] = models
    # Scoring always runs when ratings can give PD too (pd_ratings arms, and the true conflict
    # fraction of every arm's selection on synthetic data); without models it scores from ratings.
    score_cfg = _stage(cfg, "score", ScoreConfig)
    scorers = [m for a, m in models.items() if a != UNIFIED and a in data["aspects"]]
    if not scorers:
        score_cfg.from_ratings = True
    try:
        run = workflow.score(st, data["pool"], scorers, score_cfg, created_at)
        metrics = run.result
        result["scores"] = metrics["scores"]
        result["ratings_pd"] = metrics.get("n_with_ratings_pd", 0) > 0
        result["n_ratings_pd"] = int(metrics.get("n_with_ratings_pd", 0))
        result["spearman_pd_vs_ratings"] = metrics.get("spearman_pd_vs_ratings")
        result["selection_confidence"] = metrics.get("selection_confidence")  # ok | weak | none
        result["score_seconds"] = round(run.seconds, 2)
        keys["score"] = run.key
    except FgpoError as e:
        if scorers:
            raise
        log.info("pool %s has no ratings of other aspects: no PD from ratings (%s)", pool_name, e)
        result["score_seconds"] = 0.0
    result["stage_keys"] = keys
    before = _done(step)
    if before is not None and before.get("stage_keys") == keys:
        return before
    _log_shared(cfg, key, result)
    return _commit(step, result)


# ---------------------------------------------------------------------------------------------
# prepare_eval: held-out prompts and evaluation reward models, once per experiment

def _eval_config(cfg: ExperimentConfig, eval_models: dict | None, proxy_models: list[str]):
    from fgpo_tasks.evaluate import EvalConfig
    return _stage(cfg, "evaluate", EvalConfig, eval_models=eval_models, proxy_models=proxy_models)


def _proxy_specs(pool_results: list[dict]) -> list[str]:
    return [f"fgpo:{m}" for r in pool_results for _, m in sorted((r.get("reward_models") or {}).items())]


def prepare_eval(cfg: ExperimentConfig, key: str, created_at: str) -> dict:
    """Held-out prompts (prompts.jsonl, the same for every arm) and evaluation reward models."""
    from fgpo_tasks.evaluate import load_prompts
    from fgpo_tasks.storage import atomic_write

    root = out_root(cfg, key)
    step = root / "evaluation"
    _threads(cfg)
    prep = _require(root / "prepare", "prepare")
    pools = [_require(root / "pools" / u["pool"] / f"seed{u['seed']}", f"pool {u}") for u in pool_units(cfg)]
    t0 = time.perf_counter()
    eval_models = None
    result: dict[str, Any] = {"eval_rm_seconds": {}, "stage_keys": {}}
    if cfg.eval_split:
        data = [prepare_data(cfg, key, p.name, cfg.seeds[0], created_at) for p in cfg.pool_specs]
        # every pool's evaluation part, the same prompts whatever the seed (a real pool is seed-free)
        rm_cfg = workflow.eval_reward_model_config(cfg.stages, f"experiment {cfg.name!r}")
        eval_models = {}
        for pool, d in zip(cfg.pool_specs, data):
            judges, runs = workflow.eval_reward_models(store(cfg), d["eval_rm"], rm_cfg, created_at)
            for aspect, run in runs.items():
                result["eval_rm_seconds"][f"{pool.name}/{aspect}"] = round(run.seconds, 2)
                result.setdefault("eval_rm_accuracy", {})[f"{pool.name}/{aspect}"] = run.result.get("accuracy")
                result["stage_keys"][f"{pool.name}/{aspect}"] = run.key
                eval_models.setdefault(aspect, []).extend(judges[aspect])
        prompt_dirs = [d["eval_prompts"] for d in data]  # the first pool's are the evaluation prompts
    config = _eval_config(cfg, eval_models, _proxy_specs(pools))
    # What the policy and the proxies trained on, named exactly: following the manifests' lineage
    # would reach the whole validated data, evaluation split included.
    config.follow_lineage = False
    config.exclude_pairs = ([p["data"] for p in pools] + [p["proxy_data"] for p in pools if p.get("proxy_data")]
                            + ([prep["policy_data"]] if prep.get("policy_data") else []))
    if cfg.eval_split:
        config.prompt_source, config.prompt_path = "pairs", prompt_dirs[0]
    if cfg.implicit_reward_config is not None:
        result.update(prepare_heldout(cfg, data if cfg.eval_split else [], config.exclude_pairs, step, created_at))
    prompts, record = load_prompts(config)
    text = "".join(jsonio.dumps(p, ensure_ascii=False) + "\n" for p in prompts)
    path = step / "prompts.jsonl"
    if not path.is_file() or path.read_text(encoding="utf-8") != text:
        atomic_write(path, text)
    result.update(prompts=str(path), n_prompts=len(prompts), eval_models=config.eval_models,
                  prompt_record={k: v for k, v in record.items() if k != "training_pools"},
                  seconds=round(time.perf_counter() - t0, 2))
    before = _done(step)
    same = ("stage_keys", "eval_models", "n_prompts", "heldout_fingerprint", "heldout_longer_chosen")
    if before is not None and {k: before.get(k) for k in same} == {k: result.get(k) for k in same}:
        return before
    return _commit(step, result)


def prepare_heldout(cfg: ExperimentConfig, data: list[dict], training_dirs: list[str], step: Path,
                    created_at: str) -> dict:
    """The implicit-reward outcome's held-out pairs (``<step>/heldout_pairs.parquet``): the
    configured rated source, else every pool's held-out evaluation parts; labelled by the mean of
    all aspect ratings; any pair whose prompt is in ``training_dirs`` (the pools, the proxies'
    pools, the policy's SFT data) dropped; capped."""
    import pandas as pd

    from fgpo_tasks import contract
    from fgpo_tasks.experiment import outcome
    from fgpo_tasks.ingest import IngestConfig
    from fgpo_tasks.storage import atomic_write

    ir = cfg.implicit_reward_config
    if ir.source:
        run = workflow.ingest(store(cfg), [_resolve_source(s) for s in ir.source], list(ir.format),
                              from_dict(IngestConfig, ir.ingest, where="implicit_reward.ingest"), created_at)
        frames, origin = [contract.read_pairs(run.result["data"])], "source"
    else:
        frames = [contract.read_pairs(d[part]) for d in data for part in ("eval_rm", "eval_prompts")]
        origin = "eval_split"
    pairs, counts = outcome.mean_rating_pairs(pd.concat(frames, ignore_index=True), ir.aspects)
    training = set().union(*(outcome.prompt_keys(contract.read_pairs(d)) for d in training_dirs))
    pairs, counts["dropped_training_prompt"] = outcome.disjoint_from(pairs, training)
    if counts["dropped_training_prompt"]:
        log.info("implicit reward: %d held-out pairs dropped, their prompt is in a training pool",
                 counts["dropped_training_prompt"])
    counts["before_cap"] = int(len(pairs))
    pairs = outcome.cap(pairs, ir.max_pairs, ir.seed)
    if len(pairs) == 0:
        raise FgpoError(f"implicit_reward: no held-out pair is left ({counts}); every pair needs all aspect "
                        "ratings on both responses, different means and a prompt outside the training pools")
    import io
    buf = io.BytesIO()
    pairs.to_parquet(buf, index=False)
    path = step / outcome.HELDOUT_FILE
    if not path.is_file() or path.read_bytes() != buf.getvalue():
        atomic_write(path, buf.getvalue())
    from fgpo_tasks.provenance import sha256_hex
    return {"heldout_pairs": str(path), "n_heldout_pairs": int(len(pairs)),
            "n_heldout_prompts": int(pairs["prompt_key"].nunique()), "heldout_origin": origin,
            "heldout_counts": counts,
            # a judge-free reference point: the share of held-out pairs whose chosen response is longer
            "heldout_longer_chosen": float((pairs["chosen"].str.len() > pairs["rejected"].str.len()).mean()),
            "heldout_fingerprint": sha256_hex(*(f"{a}>{b}" for a, b in zip(pairs["pair_id"], pairs["chosen"])))[:16]}


# ---------------------------------------------------------------------------------------------
# run_arm: select, DPO, evaluate, one MLflow run

def _selection_cost(arm: ArmSpec, pool: dict) -> float:
    needs = arm.needs
    rm = pool.get("rm_seconds", {})
    s = pool.get("embed_seconds", 0.0) if needs & {"aspects", "unified"} else 0.0
    if "aspects" in needs:
        s += sum(v for a, v in rm.items() if a != "__all__")
    if "unified" in needs:
        s += rm.get("__all__", 0.0)
    if "score" in needs:
        s += pool.get("score_seconds", 0.0)
    return s


def _arm_configs(cfg: ExperimentConfig, arm: ArmSpec, pool: dict, seed: int):
    from fgpo_tasks.dpo import DPOConfig
    from fgpo_tasks.selection import SelectConfig

    unified = (pool.get("reward_models") or {}).get("__all__") if arm.strategy == "raf" else None
    select_cfg = _stage(cfg, "select", SelectConfig, strategy=arm.strategy, budget=arm.budget or cfg.budget,
                        seed=seed, unified_model=unified)
    dpo_cfg = _stage(cfg, "dpo", DPOConfig, **arm.dpo, model=cfg.starting_policy, seed=seed,
                     loss_type=arm.loss_type, scores_dir=pool.get("scores") if arm.loss_type == "dfpo" else None)
    return select_cfg, dpo_cfg


def evaluate_key(dpo_key: str, baseline: str, prompts: str, eval_cfg) -> str:
    """The key of the evaluate stage of train_dpo ``dpo_key``'s model, named by that stage's key
    (``stages.fingerprint`` of a path inside a stage output) whether or not its stage record is
    still there (``drop_weights`` moves it): ``stages.stage_key``'s formula on those fingerprints."""
    from fgpo_tasks.provenance import sha256_hex, stable_json
    from fgpo_tasks.stages import code_version, fingerprint, result_fields

    fps = {"baseline": fingerprint(baseline), "model": f"stage:train_dpo/{dpo_key}/model",
           "prompts": fingerprint(prompts)}
    return sha256_hex("evaluate", stable_json(dict(sorted(fps.items()))), stable_json(result_fields(eval_cfg)),
                      code_version("evaluate"))[:24]


def run_arm(cfg: ExperimentConfig, key: str, pool_name: str, seed: int, arm_name: str, created_at: str) -> dict:
    """One arm on one pool and seed: select, train DPO from the starting policy, evaluate against it."""
    from fgpo_tasks.stages import stage_key
    from fgpo_tasks.tracking import log_evaluation

    root = out_root(cfg, key)
    step = root / "arms" / pool_name / f"seed{seed}" / arm_name
    _threads(cfg)
    arm = _arm(cfg, arm_name)
    prep = _require(root / "prepare", "prepare")
    pool = _require(root / "pools" / pool_name / f"seed{seed}", f"pool {pool_name} seed {seed}")
    ev = _require(root / "evaluation", "prepare_eval")
    result: dict[str, Any] = {"pool": pool_name, "seed": seed, "arm": arm.name, "strategy": arm.strategy,
                              "loss_type": arm.loss_type, "budget": arm.budget or cfg.budget,
                              "device": _device_kind(), "n_pool": pool["n_pairs"]}
    if arm.strategy == "pd_ratings":
        from fgpo_tasks.selection import n_keep

        have, need = pool.get("n_ratings_pd", 0 if not pool.get("ratings_pd") else pool["n_pairs"]), \
            n_keep(arm.budget or cfg.budget, pool["n_pairs"])
        if have < need:  # the rest of the subset would be filled by the tie-break, not by PD
            result["skipped"] = (f"only {have} of {pool['n_pairs']} pairs carry other aspects' ratings "
                                 f"(PD from ratings), fewer than the {need} the budget keeps")
            log.warning("arm %s on %s: %s", arm.name, pool_name, result["skipped"])
            return _commit(step, result)
    needs_pd = "score" in arm.needs or arm.strategy == "pd_ratings"
    scores_dir = pool.get("scores")
    if needs_pd and not scores_dir:
        raise FgpoError(f"arm {arm.name!r} needs PD scores and pool {pool_name!r} has none")

    st = store(cfg)
    select_cfg, dpo_cfg = _arm_configs(cfg, arm, pool, seed)
    eval_cfg = _eval_config(cfg, ev["eval_models"], _proxy_specs([pool]))
    sel = workflow.select(st, scores_dir, pool["data"], select_cfg, created_at)
    dpo_key = stage_key("train_dpo", *workflow.dpo_spec(sel.result["data"], dpo_cfg))[0]
    before = _done(step)
    if before is not None and before.get("stage_keys", {}).get("select") == sel.key \
            and before["stage_keys"].get("train_dpo") == dpo_key:
        eval_key = evaluate_key(dpo_key, prep["policy"], ev["prompts"], eval_cfg)
        if before["stage_keys"].get("evaluate") == eval_key and (
                cfg.implicit_reward_config is None
                or (before.get("implicit_reward") or {}).get("heldout_fingerprint") == ev.get("heldout_fingerprint")):
            return before

    tracker = _tracker(cfg, key, pool_name, seed, arm)
    try:
        # the select step's verdict on its scores and what it did about it (strategy run as asked,
        # or a fallback): None for strategies that read no scores
        result.update(selection_confidence=sel.result.get("selection_confidence"),
                      confidence_action=sel.result.get("confidence_action"),
                      strategy_run=sel.result.get("strategy") or arm.strategy)
        result.update(n_selected=sel.result["n_selected"], selected=sel.result["data"],
                      **_true_conflict(sel.result["data"], scores_dir))

        def tracked():
            import contextlib

            @contextlib.contextmanager
            def cm():
                with tracker.stage("train_dpo", system_metrics=False) as run:
                    run.log_config(dpo_cfg)
                    yield run.metrics_callback("dpo")
            return cm()

        trained = workflow.train_dpo(st, sel.result["data"], dpo_cfg, created_at, on_compute=tracked)
        evaluated = workflow.evaluate(st, trained.result["model"], prep["policy"], eval_cfg, created_at,
                                      prompts_file=ev["prompts"])
        log_evaluation(tracker, evaluated.result["results"])
        if cfg.implicit_reward_config is not None:
            result["implicit_reward"] = _implicit_reward(cfg, ev, dpo_cfg, trained.result["model"], step)
            tracker.log_metrics(tracker.parent_run_id, {"implicit_reward": {
                k: v for k, v in result["implicit_reward"].items() if k in IMPLICIT_METRICS}})
        if not cfg.keep_models:
            result["weights_dropped"] = drop_weights(st, trained)

        sel_cost = _selection_cost(arm, pool) + sel.seconds
        # wall seconds on result["device"]; training_cuda_s: the GPU stream's seconds (CUDA events), else None
        result["cost"] = {"selection_s": round(sel_cost, 2), "training_s": round(trained.seconds, 2),
                          "total_s": round(sel_cost + trained.seconds, 2), "clock": "wall",
                          "device": trained.result.get("device", result["device"]),
                          "training_cuda_s": trained.result.get("train_cuda_s"),
                          "evaluation_s": round(evaluated.seconds, 2)}
        result["dpo_steps"] = trained.result.get("steps")
        result["model"] = trained.result["model"]
        result["evaluation"] = _eval_summary(Path(evaluated.result["results"]))
        result["evaluation_dir"] = evaluated.result["results"]
        result["stage_keys"] = {"select": sel.key, "train_dpo": trained.key, "evaluate": evaluated.key}
        result["shared"] = {r.stage: not r.computed for r in (sel, trained, evaluated)}
        tracker.log_metrics(tracker.parent_run_id, {"cost": result["cost"], "selection": {
            k: result[k] for k in ("n_selected", "selected_conflict_fraction", "selected_pd_ratings_mean")
            if k in result}})
        tracker.set_tags(tracker.parent_run_id, {f"fgpo.stage_key.{k}": v for k, v in result["stage_keys"].items()})
        tracker.finish("FINISHED")
    except BaseException:
        tracker.finish("FAILED")
        raise
    result["mlflow_run_id"] = tracker.parent_run_id
    return _commit(step, result)


IMPLICIT_METRICS = ("accuracy", "ci_low", "ci_high", "n_pairs", "n_prompts", "mean_margin", "n_zero_margin",
                    "seconds")


def _implicit_reward(cfg: ExperimentConfig, ev: dict, dpo_cfg, model_dir: str, step: Path) -> dict:
    """The trained policy's implicit-reward accuracy on the held-out pairs, against its DPO
    reference (the starting policy unless dpo.ref_model says otherwise), truncated as DPO
    truncates; the per-pair margins go to ``<arm>/implicit_reward.parquet``."""
    import io

    import pandas as pd

    from fgpo_tasks.experiment import outcome
    from fgpo_tasks.storage import atomic_write

    ir = cfg.implicit_reward_config
    t0 = time.perf_counter()
    pairs = pd.read_parquet(ev["heldout_pairs"])
    lengths = (dpo_cfg.max_length, dpo_cfg.max_prompt_length)
    ref = outcome.reference_logps(dpo_cfg.reference, pairs, *lengths, ir.batch_size, dpo_cfg.logps_chunk,
                                  dpo_cfg.ref_cache_dir)
    pol = outcome.sequence_logps(model_dir, dpo_cfg.model, pairs, *lengths, ir.batch_size, dpo_cfg.logps_chunk)
    margins = outcome.implicit_margins(pol[0], pol[1], ref[0], ref[1], dpo_cfg.beta)
    table = pd.DataFrame({"pair_id": pairs["pair_id"], "prompt_key": pairs["prompt_key"], "margin": margins,
                          "policy_chosen": pol[0], "policy_rejected": pol[1], "ref_chosen": ref[0],
                          "ref_rejected": ref[1]})
    buf = io.BytesIO()
    table.to_parquet(buf, index=False)
    atomic_write(step / outcome.MARGINS_FILE, buf.getvalue())
    summary = outcome.summarize(margins, pairs["prompt_key"].tolist(), ir)
    summary.update(beta=dpo_cfg.beta, reference=dpo_cfg.reference, margins=str(step / outcome.MARGINS_FILE),
                   heldout_fingerprint=ev["heldout_fingerprint"], seconds=round(time.perf_counter() - t0, 2))
    log.info("implicit-reward accuracy %.3f [%.3f, %.3f] on %d held-out pairs (%d prompts)", summary["accuracy"],
             summary["ci_low"], summary["ci_high"], summary["n_pairs"], summary["n_prompts"])
    return summary


def drop_weights(st, trained) -> str:
    """``keep_models: false``: the trained weights of a train_dpo stage go, and with them its
    stage record (``stage.json`` becomes ``stage.dropped.json``), so a later run asking for the same
    stage (another experiment, a pipeline run, this one with a changed evaluation) trains it again
    instead of finding a model folder without weights. A stage this run found stored (``computed``
    false) was made by another run that may still use it: its weights stay. Returns what was done."""
    from fgpo_tasks.stages import STAGE_FILE
    from fgpo_tasks.storage import file_lock

    if not trained.computed:
        log.info("train_dpo %s was made by another run: its weights are kept", trained.key)
        return "kept: shared"
    folder = st.stage_dir("train_dpo", trained.key)
    with file_lock(folder.parent / f".{trained.key}.lock"):  # the lock Store.run computes under
        marker = folder / STAGE_FILE
        if marker.is_file():
            marker.replace(folder / "stage.dropped.json")
        for f in Path(trained.result["model"]).glob("*.safetensors"):
            f.unlink()
    return "dropped"


def _eval_summary(eval_dir: Path) -> dict:
    from fgpo_tasks.evaluate import read_results

    r = read_results(eval_dir)
    return {"overall": {k: r["overall"][k] for k in ("win_rate", "lc_win_rate", "reward_delta",
                                                      "candidate_mean_length", "baseline_mean_length")},
            "aspects": {a: {k: f[k] for k in ("win_rate", "lc_win_rate", "reward_delta", "candidate_mean_reward",
                                               "baseline_mean_reward")} for a, f in r["aspects"].items()},
            "n_prompts": r["prompts"]["n_prompts"]}


def _tracker(cfg: ExperimentConfig, key: str, pool: str, seed: int, arm: ArmSpec):
    tags = {ROLE_TAG: "arm", "fgpo.experiment": key, "fgpo.pool": pool, "fgpo.seed": seed, "fgpo.arm": arm.name,
            "fgpo.strategy": arm.strategy, "fgpo.loss_type": arm.loss_type, "fgpo.budget": arm.budget or cfg.budget,
            "fgpo.starting_policy": cfg.starting_policy}
    tracker = open_tracker(cfg, key, pool, f"s{seed}", arm.name, run_name=f"{pool}/seed{seed}/{arm.name}", tags=tags)
    tracker.set_tags(tracker.parent_run_id, tags)  # also on a run resumed after a crash
    tracker.log_params(tracker.parent_run_id, {"arm.strategy": arm.strategy, "arm.loss_type": arm.loss_type,
                                               "arm.budget": arm.budget or cfg.budget, "pool": pool, "seed": seed})
    return tracker


def _log_shared(cfg: ExperimentConfig, key: str, pool: dict) -> None:
    """The shared work of a (pool, seed) as its own MLflow run (role 'shared'), for its costs."""
    tags = {ROLE_TAG: "shared", "fgpo.experiment": key, "fgpo.pool": pool["pool"], "fgpo.seed": pool["seed"]}
    tracker = open_tracker(cfg, key, pool["pool"], f"s{pool['seed']}", "shared",
                           run_name=f"{pool['pool']}/seed{pool['seed']}/shared", tags=tags)
    tracker.log_metrics(tracker.parent_run_id, {
        "rm_seconds": pool["rm_seconds"], "score_seconds": pool.get("score_seconds", 0.0),
        "embed_seconds": pool.get("embed_seconds", 0.0),
        "proxy_accuracy": {a: v for a, v in pool["proxy_accuracy"].items() if v is not None},
        "spearman_pd_vs_ratings": pool.get("spearman_pd_vs_ratings"), "n_pairs": pool["n_pairs"]})
    tracker.finish("FINISHED")


def run_experiment(cfg: ExperimentConfig, key: str, created_at: str) -> dict:
    """Every unit in order, in this process: what the fgpo_experiment DAG does, for the CLI and tests."""
    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    prepare(cfg, key, created_at)
    for u in tqdm(pool_units(cfg), desc="pools"):
        prepare_pool(cfg, key, u["pool"], u["seed"], created_at)
    prepare_eval(cfg, key, created_at)
    for u in tqdm(arm_units(cfg), desc="arms"):
        log.info("arm %s on pool %s, seed %s", u["arm"], u["pool"], u["seed"])
        run_arm(cfg, key, u["pool"], u["seed"], u["arm"], created_at)
    out = report(cfg, key, created_at)
    out["seconds"] = round(time.perf_counter() - t0, 1)
    return out
