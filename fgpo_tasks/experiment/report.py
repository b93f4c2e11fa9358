"""The experiment's report: mean and spread over seeds per (pool, arm), as results.json / .md /
.csv and results.png, mirrored to MLflow."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

from fgpo_tasks import jsonio
from fgpo_tasks.config import to_dict
from fgpo_tasks.errors import FgpoError
from fgpo_tasks.experiment.config import (ROLE_TAG, ExperimentConfig, _done, _mlflow_key, arm_units,
                                          out_root, pool_units)

log = logging.getLogger(__name__)


def _tracking_uri(cfg: ExperimentConfig) -> str:
    from fgpo_tasks.tracking import default_tracking_uri
    return cfg.tracking_uri or default_tracking_uri()


def open_tracker(cfg: ExperimentConfig, key: str, *parts: str, run_name: str, tags: dict):
    """The experiment's one way to open an MLflow run (arm, shared work of a pool, report): keyed
    by the run key, the config's hash and ``parts``, in the experiment's MLflow experiment."""
    from fgpo_tasks.tracking import Tracker, TrackingConfig

    return Tracker(_mlflow_key(cfg, key, *parts),
                   TrackingConfig(tracking_uri=_tracking_uri(cfg), experiment_name=cfg.experiment_name,
                                  system_metrics=False),
                   run_name=run_name, tags=tags)


CONFLICT_COVERAGE = 0.5  # report the true-conflict share only where this much of a selection has ratings PD


def _true_conflict(selected_dir: str, scores_dir: str | None) -> dict:
    """Mean PD from ratings of the selected pairs and the share with PD > 0 (synthetic: the truth),
    when at least CONFLICT_COVERAGE of the selected pairs carry PD from ratings (HelpSteer2: few
    pairs do, and a share over 2 of 200 pairs would read as a finding)."""
    import numpy as np

    from fgpo_tasks import contract
    from fgpo_tasks.scoring import read_scores

    if not scores_dir:
        return {}
    scores, _ = read_scores(scores_dir)
    if "pd_ratings" not in scores or not np.isfinite(scores["pd_ratings"].to_numpy(dtype=float)).any():
        return {}
    ids = set(contract.read_pairs(selected_dir)["pair_id"])
    v = scores.loc[scores["pair_id"].isin(ids), "pd_ratings"].to_numpy(dtype=float)
    v = v[np.isfinite(v)]
    out = {"selected_with_ratings_pd": int(len(v))}
    if len(v) and len(v) >= CONFLICT_COVERAGE * len(ids):
        out.update(selected_pd_ratings_mean=float(v.mean()), selected_conflict_fraction=float((v > 0).mean()))
    return out



def _length_profile(selected_dir: str) -> dict:
    """Share of the selected pairs whose chosen response has more words, and the mean word
    difference (chosen - rejected): the length confound of a selection, beside its win rates."""
    from fgpo_tasks import contract
    from fgpo_tasks.selection import word_difference

    d = word_difference(contract.read_pair_table(selected_dir).select(["chosen", "rejected"]))
    return {"selected_chosen_longer": float((d > 0).mean()) if len(d) else None,
            "selected_word_difference": float(d.mean()) if len(d) else None}


def _log_report(cfg: ExperimentConfig, key: str, root: Path) -> None:
    """The table and plot as artifacts of one MLflow run (role 'report') beside the arms' runs."""
    try:
        tracker = open_tracker(cfg, key, "report", run_name=f"{key}/report",
                               tags={ROLE_TAG: "report", "fgpo.experiment": key})
        for name in ("results.md", "results.csv", "results.png", "results.json"):
            tracker.log_artifact(tracker.parent_run_id, root / name, "report")
        tracker.finish("FINISHED")
    except FgpoError as e:  # the files on disk are the result; MLflow only mirrors them
        log.warning("report not logged to MLflow: %s", e)


# ---------------------------------------------------------------------------------------------
# report: the results table, markdown and plot

def _mean_sd(values: list[float]) -> tuple[float, float | None]:
    import numpy as np
    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], dtype=float)
    if not len(v):
        return float("nan"), None
    return float(v.mean()), (float(v.std(ddof=1)) if len(v) > 1 else None)


def _verdicts(by_seed: dict | None) -> str:
    """The scores' selection_confidence verdict per seed ('none (seed 0), weak (seed 1)')."""
    if not by_seed:
        return "n/a"
    got: dict[str, list] = {}
    for seed, v in sorted(by_seed.items(), key=lambda kv: str(kv[0])):
        got.setdefault(str(v or "n/a"), []).append(str(seed))
    return ", ".join(f"{v} (seed{'s' if len(s) > 1 else ''} {', '.join(s)})" for v, s in got.items())


def aggregate(cfg: ExperimentConfig, arm_results: list[dict]) -> list[dict]:
    """One row per (pool, arm): mean and sample sd over seeds of every figure."""
    rows = []
    all_cost = {(r["pool"], r["seed"]): r["cost"]["total_s"] for r in arm_results
                if r.get("strategy") == "all" and r.get("loss_type") == "sigmoid" and "cost" in r}
    for pool in cfg.pool_specs:
        for arm in cfg.arm_specs:
            runs = [r for r in arm_results if r["pool"] == pool.name and r["arm"] == arm.name]
            done = [r for r in runs if "evaluation" in r]
            row: dict[str, Any] = {"pool": pool.name, "arm": arm.name, "strategy": arm.strategy,
                                   "loss_type": arm.loss_type, "seeds": len(done)}
            if not done:
                row["skipped"] = next((r.get("skipped") for r in runs if r.get("skipped")), "not run")
                rows.append(row)
                continue
            fig = {"win_rate": [r["evaluation"]["overall"]["win_rate"] for r in done],
                   "lc_win_rate": [r["evaluation"]["overall"]["lc_win_rate"] for r in done],
                   "reward_delta": [r["evaluation"]["overall"]["reward_delta"] for r in done],
                   "implicit_accuracy": [(r.get("implicit_reward") or {}).get("accuracy") for r in done],
                   "n_selected": [r["n_selected"] for r in done],
                   "selected_conflict_fraction": [r.get("selected_conflict_fraction") for r in done],
                   "selected_chosen_longer": [r.get("selected_chosen_longer") for r in done],
                   "selected_word_difference": [r.get("selected_word_difference") for r in done],
                   "selection_s": [r["cost"]["selection_s"] for r in done],
                   "training_s": [r["cost"]["training_s"] for r in done],
                   "total_s": [r["cost"]["total_s"] for r in done],
                   "cost_vs_all": [r["cost"]["total_s"] / all_cost[(r["pool"], r["seed"])]
                                   if all_cost.get((r["pool"], r["seed"])) else None for r in done]}
            for aspect in done[0]["evaluation"]["aspects"]:
                for name in ("reward_delta", "win_rate", "lc_win_rate"):
                    fig[f"{aspect}.{name}"] = [r["evaluation"]["aspects"][aspect][name] for r in done]
            row.update({k: _mean_sd(v) for k, v in fig.items()})
            actions = sorted({str(r["confidence_action"]) for r in done if r.get("confidence_action")})
            row["confidence_action"] = ", ".join(actions) or None
            row["aspects"] = list(done[0]["evaluation"]["aspects"])
            if cfg.implicit_reward_config is not None:
                ci = pooled_implicit_ci(cfg, done)
                row["implicit_ci"] = list(ci) if ci else None  # a list: tuples are (mean, sd) here
                row["_done"] = done
            rows.append(row)
    if cfg.implicit_reward_config is not None:
        for pool in cfg.pool_specs:
            base = next((r for r in rows if r["pool"] == pool.name and r.get("strategy") == "random"
                         and r.get("loss_type") == "sigmoid" and "_done" in r), None)
            for r in rows:
                if r["pool"] == pool.name and "_done" in r and base is not None and r is not base:
                    r["implicit_vs_random"] = implicit_difference(cfg, r["_done"], base["_done"])
            # PD minus its length-matched control: what PD adds beyond "keep longer-chosen pairs"
            matched = next((r for r in rows if r["pool"] == pool.name and r.get("strategy") == "random_length"
                            and r.get("loss_type") == "sigmoid" and "_done" in r), None)
            for r in rows:
                if (r["pool"] == pool.name and "_done" in r and matched is not None
                        and r.get("strategy") == "pd" and r.get("loss_type") == "sigmoid"):
                    r["implicit_vs_random_length"] = implicit_difference(cfg, r["_done"], matched["_done"])
    for r in rows:
        r.pop("_done", None)
    return rows


def implicit_correct(done: list[dict]):
    """({seed: correct (n_pairs,)}, prompt keys) of one (pool, arm)'s finished seeds, from their
    per-pair margins files (sorted by pair id), or None when a file is missing or the seeds scored
    different held-out pairs."""
    import pandas as pd

    paths = {r["seed"]: (r.get("implicit_reward") or {}).get("margins") for r in done}
    if not paths or not all(p and Path(p).is_file() for p in paths.values()):
        return None
    tables = {s: pd.read_parquet(p).sort_values("pair_id").reset_index(drop=True) for s, p in paths.items()}
    first = next(iter(tables.values()))
    if any(not t["pair_id"].equals(first["pair_id"]) for t in tables.values()):
        return None
    return {s: t["margin"].to_numpy() > 0 for s, t in tables.items()}, first["prompt_key"].tolist()


def pooled_implicit_ci(cfg: ExperimentConfig, done: list[dict]) -> tuple[float, float] | None:
    """CI of the seed-mean implicit-reward accuracy of one (pool, arm): every seed's per-pair
    margins on the same held-out pairs, the prompts resampled once for all seeds (so it is the
    held-out sampling's uncertainty of the mean over these seeds, not the seeds' spread)."""
    from fgpo_tasks.experiment.outcome import bootstrap_by_prompt

    ir, got = cfg.implicit_reward_config, implicit_correct(done)
    if got is None:
        return None
    return bootstrap_by_prompt(list(got[0].values()), got[1], ir.bootstrap_samples, ir.seed, ir.confidence)


def implicit_difference(cfg: ExperimentConfig, done: list[dict], baseline: list[dict]):
    """[difference, CI low, CI high] of the seed-mean implicit-reward accuracy of an arm minus a
    baseline arm's, over the seeds both finished, paired by held-out pair (prompts resampled
    once for both); None when they cannot be paired."""
    from fgpo_tasks.experiment.outcome import bootstrap_difference_by_prompt

    ir = cfg.implicit_reward_config
    a, b = implicit_correct(done), implicit_correct(baseline)
    if a is None or b is None or a[1] != b[1]:
        return None
    seeds = sorted(set(a[0]) & set(b[0]))
    if not seeds:
        return None
    return list(bootstrap_difference_by_prompt([a[0][s] for s in seeds], [b[0][s] for s in seeds], a[1],
                                               ir.bootstrap_samples, ir.seed, ir.confidence))


def _fmt_ci(ci) -> str:
    if not ci or not all(math.isfinite(x) for x in ci):
        return "n/a"
    return f"[{ci[0]:.3f}, {ci[1]:.3f}]"


def _fmt(ms, digits: int = 3) -> str:
    mean, sd = ms
    if mean is None or not math.isfinite(mean):
        return "n/a"
    return f"{mean:.{digits}f}" + (f" ± {sd:.{digits}f}" if sd is not None else "")


def markdown(cfg: ExperimentConfig, rows: list[dict], meta: dict) -> str:
    lines = [f"### {cfg.name}: {len(cfg.arm_specs)} arms x {len(cfg.pool_specs)} pools x {len(cfg.seeds)} seeds", ""]
    if cfg.description:
        lines += [cfg.description.strip(), ""]
    lines += [f"Starting policy `{cfg.starting_policy}`; budget {cfg.budget}; {meta.get('n_prompts')} held-out "
              f"prompts; evaluation models: {meta.get('eval_models_text')}. Figures: mean ± sample sd over seeds "
              f"{cfg.seeds}. Win rates are against the starting policy (ties 0.5); LC = length-controlled; "
              "Δ = mean reward of the arm's policy minus the starting policy's (Δ mean: averaged over the aspects, "
              "the objective DFPO's derivation starts from); true conflict = share of the arm's training pairs "
              "whose PD from the ratings is > 0; cost = wall seconds of "
              "selection (reward models + scoring the arm needs + selection) and DPO training.", ""]
    if cfg.implicit_reward_config is not None:
        ir = cfg.implicit_reward_config
        lines += [f"Implicit-reward accuracy (implicit acc): share of {meta.get('n_heldout_pairs')} held-out pairs "
                  f"({meta.get('n_heldout_prompts')} prompts, none in a training pool; chosen = the response with the "
                  "higher MEAN of all aspect ratings, equal means dropped) where the arm's policy gives "
                  "beta*log(pi/pi_ref)(chosen) - beta*log(pi/pi_ref)(rejected) > 0, pi_ref = the starting policy "
                  f"(the unmoved policy scores 0); its CI: {ir.confidence:.0%} bootstrap of the seed-mean, "
                  f"resampling prompts ({ir.bootstrap_samples} resamples); − random: the seed-mean difference from the "
                  "random arm on the same pairs, its CI paired (each resample of the prompts applied to both)."
                  + (f" For reference, \"the longer response wins\" is right on {meta['heldout_longer_chosen']:.3f} of "
                     "these pairs." if meta.get("heldout_longer_chosen") is not None else ""), ""]
    for pool in cfg.pool_specs:
        prow = [r for r in rows if r["pool"] == pool.name]
        aspects = next((r["aspects"] for r in prow if "aspects" in r), [])
        facts = meta.get("pools", {}).get(pool.name)
        if facts:
            acc = ", ".join(f"{a} {_fmt(v, 2)}" for a, v in facts["proxy_accuracy"].items())
            lines += [f"Pool {pool.name}: {facts['n_pairs']} pairs; proxy held-out accuracy {acc or 'n/a'}; "
                      f"Spearman(PD, PD from ratings) {_fmt(facts['spearman'], 2)}; selection confidence "
                      f"{_verdicts(facts.get('verdicts'))}.", ""]
        implicit = cfg.implicit_reward_config is not None
        headers = (["arm", "pairs", "true conflict", "chosen longer (Δ words)", "LC win rate", "win rate"]
                   + (["implicit acc", "implicit acc CI", "implicit acc − random [CI]"] if implicit else [])
                   + ["Δ mean"] + [f"Δ {a}" for a in aspects] + ["selection s", "training s", "cost vs all"])
        lines += [f"**pool {pool.name}**", "", "| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
        for r in prow:
            if "skipped" in r:
                lines.append(f"| {r['arm']} | " + " | ".join(["—"] * (len(headers) - 2)) + f" | skipped: {r['skipped']} |")
                continue
            cells = [r["arm"], _fmt(r["n_selected"], 0), _fmt(r["selected_conflict_fraction"], 2),
                     f"{_fmt(r['selected_chosen_longer'], 2)} ({_fmt(r['selected_word_difference'], 0)})",
                     _fmt(r["lc_win_rate"]), _fmt(r["win_rate"])]
            if implicit:
                d = r.get("implicit_vs_random")
                cells += [_fmt(r["implicit_accuracy"]), _fmt_ci(r.get("implicit_ci")),
                          f"{d[0]:+.3f} {_fmt_ci(d[1:])}" if d and math.isfinite(d[0]) else "n/a"]
            cells += [_fmt(r["reward_delta"])]
            cells += [_fmt(r[f"{a}.reward_delta"]) for a in aspects]
            cells += [_fmt(r["selection_s"], 1), _fmt(r["training_s"], 1), _fmt(r["cost_vs_all"], 2)]
            lines.append("| " + " | ".join(cells) + " |")
        for r in prow:
            d = r.get("implicit_vs_random_length")
            if d and math.isfinite(d[0]):
                lines += ["", f"Implicit acc of {r['arm']} − random_length (a random subset with PD's length "
                              f"profile; paired, over the seeds both finished): {d[0]:+.3f} {_fmt_ci(d[1:])}."]
        acted = [f"{r['arm']} {r['confidence_action']}" for r in prow
                 if r.get("confidence_action") not in (None, "none")]
        if acted:  # on_weak_proxies: warn | fallback_ratings | fail (fgpo_tasks.confidence.decide)
            lines += ["", f"What select did on the verdict: {'; '.join(acted)}."]
        lines.append("")
    return "\n".join(lines) + "\n"


def plot(cfg: ExperimentConfig, rows: list[dict], path: Path) -> None:
    """Per pool: per-aspect reward change and LC win rate against the starting policy, per arm."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    pools = cfg.pool_specs
    implicit = cfg.implicit_reward_config is not None
    fig, axes = plt.subplots(len(pools), 3 if implicit else 2, figsize=(19 if implicit else 13, 3.6 * len(pools)),
                             squeeze=False)
    for i, pool in enumerate(pools):
        prow = [r for r in rows if r["pool"] == pool.name and "skipped" not in r]
        if not prow:
            continue
        aspects, arms = prow[0]["aspects"], [r["arm"] for r in prow]
        ax = axes[i][0]
        width = 0.8 / len(arms)
        for j, r in enumerate(prow):
            means = [r[f"{a}.reward_delta"][0] for a in aspects]
            sds = [r[f"{a}.reward_delta"][1] or 0.0 for a in aspects]
            ax.bar(np.arange(len(aspects)) + j * width - 0.4 + width / 2, means, width, yerr=sds, capsize=2,
                   label=r["arm"])
        ax.axhline(0, color="black", lw=0.8)
        ax.set_xticks(range(len(aspects)), aspects)
        ax.set_ylabel("reward − starting policy")
        ax.set_title(f"{pool.name}: per-aspect reward change")
        ax.legend(fontsize=7, ncol=2)
        ax = axes[i][1]
        means = [r["lc_win_rate"][0] for r in prow]
        sds = [r["lc_win_rate"][1] or 0.0 for r in prow]
        ax.bar(arms, means, yerr=sds, capsize=3, color=[f"C{j}" for j in range(len(arms))])
        ax.axhline(0.5, color="black", lw=0.8, ls="--")
        # zoomed on 0.5 (no change): arms a few points apart would look alike on [0, 1]
        reach = max([abs(m - 0.5) + sd for m, sd in zip(means, sds) if math.isfinite(m)] + [0.02])
        ax.set_ylim(0.5 - 1.3 * reach, 0.5 + 1.3 * reach)
        ax.set_ylabel("LC win rate vs starting policy")
        ax.set_title(f"{pool.name}: length-controlled win rate (mean of aspects)")
        ax.tick_params(axis="x", labelrotation=30)
        if implicit:
            ax = axes[i][2]
            acc = [r["implicit_accuracy"][0] for r in prow]
            ci = [r.get("implicit_ci") or [m, m] for r, m in zip(prow, acc)]
            err = np.array([[max(m - lo, 0) for m, (lo, _) in zip(acc, ci)], [max(hi - m, 0) for m, (_, hi) in zip(acc, ci)]])
            ax.bar(arms, acc, yerr=err, capsize=3, color=[f"C{j}" for j in range(len(arms))])
            ax.axhline(0.5, color="black", lw=0.8, ls="--")
            ax.set_ylim(0, 1)
            ax.set_ylabel("implicit-reward accuracy (95% CI by prompt)")
            ax.set_title(f"{pool.name}: held-out pairs by mean rating")
            ax.tick_params(axis="x", labelrotation=30)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def report(cfg: ExperimentConfig, key: str, created_at: str) -> dict:
    """Collect every arm's result into results.json / .md / .csv and results.png (always redone)."""
    import csv

    root = out_root(cfg, key)
    if not root.is_dir():
        raise FgpoError(f"nothing to report: {root} does not exist (run the experiment first; --run-key "
                        "names the run, default: the config's name)")
    ev = _done(root / "evaluation") or {}
    pools = [d for u in pool_units(cfg) if (d := _done(root / "pools" / u["pool"] / f"seed{u['seed']}"))]
    scores = {(d["pool"], d["seed"]): d.get("scores") for d in pools}
    results = []
    for u in arm_units(cfg):
        arm_dir = root / "arms" / u["pool"] / f"seed{u['seed']}" / u["arm"]
        done = _done(arm_dir)
        if done is None:
            log.warning("arm %s on %s seed %s has not run: left out of the report", u["arm"], u["pool"], u["seed"])
            continue
        if done.get("selected") and Path(done["selected"]).is_dir():  # the conflict facts by the current rule
            for k in ("selected_pd_ratings_mean", "selected_conflict_fraction", "selected_with_ratings_pd"):
                done.pop(k, None)
            done.update(_true_conflict(done["selected"], scores.get((u["pool"], u["seed"]))))
            done.update(_length_profile(done["selected"]))
        results.append(done)
    rows = aggregate(cfg, results)
    models = ev.get("eval_models") or {}
    meta = {"n_prompts": ev.get("n_prompts"),
            "eval_models_text": ", ".join(f"{a}: {' '.join(Path(m.split(':', 1)[-1]).name if m.startswith('fgpo:') else m for m in ms)}"
                                          for a, ms in models.items())}
    meta.update(n_heldout_pairs=ev.get("n_heldout_pairs"), n_heldout_prompts=ev.get("n_heldout_prompts"),
                heldout_longer_chosen=ev.get("heldout_longer_chosen"))
    meta["pools"] = {}
    for spec in cfg.pool_specs:
        mine = [d for d in pools if d["pool"] == spec.name]
        if mine:
            aspects = sorted({a for d in mine for a in d.get("proxy_accuracy", {})})
            meta["pools"][spec.name] = {
                "n_pairs": mine[0]["n_pairs"],
                "proxy_accuracy": {a: _mean_sd([d["proxy_accuracy"].get(a) for d in mine]) for a in aspects},
                "spearman": _mean_sd([d.get("spearman_pd_vs_ratings") for d in mine]),
                "verdicts": {d["seed"]: d.get("selection_confidence") for d in mine}}
    text = markdown(cfg, rows, meta)
    (root / "results.md").write_text(text)
    (root / "results.json").write_text(jsonio.dumps({"name": cfg.name, "key": key, "created_at": created_at,
                                                   "config": {k: v for k, v in to_dict(cfg).items()},
                                                   "rows": rows, "arms": results, "pools": pools,
                                                   "evaluation": ev}, indent=2, default=str) + "\n")
    with open(root / "results.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        keys = sorted({k for r in rows for k, v in r.items() if isinstance(v, tuple)})
        w.writerow(["pool", "arm", "strategy", "loss_type", "seeds"] + [f"{k}.{s}" for k in keys for s in ("mean", "sd")]
                   + ["implicit_ci.low", "implicit_ci.high", "implicit_vs_random", "implicit_vs_random.low",
                      "implicit_vs_random.high", "implicit_vs_random_length", "implicit_vs_random_length.low",
                      "implicit_vs_random_length.high"])
        for r in rows:
            w.writerow([r["pool"], r["arm"], r["strategy"], r["loss_type"], r["seeds"]]
                       + [x for k in keys for x in (r.get(k) or (None, None))] + list(r.get("implicit_ci") or (None, None))
                       + list(r.get("implicit_vs_random") or (None, None, None))
                       + list(r.get("implicit_vs_random_length") or (None, None, None)))
    plot(cfg, rows, root / "results.png")
    _log_report(cfg, key, root)
    return {"out_dir": str(root), "results_md": str(root / "results.md"), "plot": str(root / "results.png"),
            "arms_run": len(results), "arms_planned": len(arm_units(cfg)),
            "table": {f"{r['pool']}/{r['arm']}": (r["lc_win_rate"][0] if "lc_win_rate" in r else None) for r in rows}}
