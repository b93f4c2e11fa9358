"""Print what the last pipeline run produced: the registered model, its aliases, the headline
figures, how far its selection can be trusted (the selection_confidence verdict), and the command
that opens the MLflow UI on the run."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from fgpo_tasks.pipeline import pipeline_config, run_dir, tracking_uri


def latest_run(runs_root: Path) -> Path | None:
    """The run folder (``<storage>/runs/<run key>``) whose registration finished last."""
    done = sorted(runs_root.glob("*/register/*/step.json"), key=lambda p: p.stat().st_mtime)
    return done[-1].parent.parent.parent if done else None


def confidence_line(select: dict) -> str:
    """One line: the verdict, and what select did about it."""
    verdict = select.get("selection_confidence") or "unknown"
    action = select.get("confidence_action")
    asked, ran = select.get("requested_strategy"), select.get("strategy")
    line = f"selection conf.  : {verdict}"
    if select.get("confidence.mean_accuracy") is not None:
        line += f" (proxies' mean held-out accuracy {select['confidence.mean_accuracy']:.3f})"
    if action == "fallback":
        line += f"; fell back from {asked} to {ran}"
    elif action in ("warned", "cannot_fallback"):
        line += f"; WARNING: {ran} selection is no better than random with these proxies"
    return line


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--profile", default="demo")
    ap.add_argument("--storage-root", default=None, help="default: the profile's (the work folder's)")
    ap.add_argument("--tracking-uri", default=None, help="default: the profile's")
    args = ap.parse_args()
    cfg = pipeline_config({"profile": args.profile, "storage_root": args.storage_root,
                           "tracking_uri": args.tracking_uri})
    root = latest_run(Path(run_dir(cfg, "x")).parent)
    if root is None:
        raise SystemExit("no finished pipeline run found")
    record = lambda step: json.loads((root / f"{step}.json").read_text())["result"]  # noqa: E731
    reg = json.loads(sorted((root / "register").glob("*/step.json"), key=lambda p: p.stat().st_mtime)[-1].read_text())
    ev, sel = record("evaluate"), record("select")
    results = json.loads((Path(ev["results"]) / "results.json").read_text())

    from mlflow import MlflowClient
    uri = tracking_uri(cfg)
    run = MlflowClient(uri).get_run(reg["run_id"])
    parent = run.data.tags.get("mlflow.parentRunId", run.info.run_id)
    print(f"\nregistered model : {reg['model_name']} version {reg['version']}  aliases: {', '.join(reg['aliases'])}")
    print(f"promotion gate   : {'passed' if reg['promoted'] else 'failed'}: {reg['reason']}")
    print(f"selected pairs   : {sel['selected']} ({sel.get('strategy') or cfg.strategy}, budget {cfg.budget})")
    print(confidence_line(sel))
    print(f"evaluation       : candidate vs {ev['baseline']}, {results['prompts']['n_prompts']} held-out prompts")
    print(f"  {'aspect':<14}{'win rate':>10}{'95% CI':>18}{'LC win rate':>13}{'cand. reward':>14}{'base reward':>13}")
    for aspect, f in results["aspects"].items():
        ci = f"[{f['win_rate_ci'][0]:.2f}, {f['win_rate_ci'][1]:.2f}]"
        print(f"  {aspect:<14}{f['win_rate']:>10.3f}{ci:>18}{f['lc_win_rate']:>13.3f}"
              f"{f['candidate_mean_reward']:>14.3f}{f['baseline_mean_reward']:>13.3f}")
    print(f"run artifacts    : {root}")
    print("open the MLflow UI on this run:")
    print(f"  .venv/bin/mlflow ui --backend-store-uri {uri} --port 5000")
    print(f"  then http://127.0.0.1:5000/#/experiments/{run.info.experiment_id}/runs/{parent}")


if __name__ == "__main__":
    main()
