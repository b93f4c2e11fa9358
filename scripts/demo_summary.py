"""Print what the last pipeline run produced: the registered model, its aliases, the headline
figures, and the command that opens the MLflow UI on the run."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from fgpo_tasks.pipeline import pipeline_config, run_dir, tracking_uri


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--profile", default="demo")
    cfg = pipeline_config({"profile": ap.parse_args().profile})
    runs = sorted(Path(run_dir(cfg, "x")).parent.glob("*/register/step.json"), key=lambda p: p.stat().st_mtime)
    if not runs:
        raise SystemExit("no finished pipeline run found")
    root = runs[-1].parent.parent
    step = lambda name: json.loads((root / name / "step.json").read_text())  # noqa: E731
    reg, ev, sel = step("register"), step("evaluate"), step("select")
    results = json.loads((Path(ev["results"]) / "results.json").read_text())

    from mlflow import MlflowClient
    uri = tracking_uri(cfg)
    run = MlflowClient(uri).get_run(reg["run_id"])
    parent = run.data.tags.get("mlflow.parentRunId", run.info.run_id)
    print(f"\nregistered model : {reg['model_name']} version {reg['version']}  aliases: {', '.join(reg['aliases'])}")
    print(f"promotion gate   : {'passed' if reg['promoted'] else 'failed'}: {reg['reason']}")
    print(f"selected pairs   : {sel['selected']} ({cfg.strategy}, budget {cfg.budget})")
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
