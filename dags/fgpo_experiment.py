"""
### fgpo_experiment: selection strategies side by side (arms x pools x seeds)

`plan -> prepare -> prepare_pool (mapped: one per pool and seed) -> prepare_eval
-> run_arm (mapped: one per pool, seed and arm) -> report`

Each task calls one function of `fgpo_tasks.experiment` with plain values: the experiment config
file (`config` param: a file in `configs/experiments`, or in `$FGPO_EXPERIMENTS_DIR` when set;
nothing outside that folder is read), the DAG run id as run key and the run's
logical date as timestamp. `prepare_pool` computes the data, the proxy reward models and the PD
scores of a (pool, seed) ONCE; every arm on that pool and seed reuses them. `run_arm` selects,
trains DPO from the starting policy and evaluates against it; each arm is one MLflow run (tag
`fgpo.strategy`) in the config's experiment, so MLflow's compare view is the results table.
`report` runs even when some arms failed: it writes results.md / results.png of the
finished arms beside the units, then fails when an arm is missing.

Units write under `<storage root>/experiments/<run id>/` and commit atomically: a retried task
returns the finished result. Heavy tasks run in pool `fgpo_gpu` on queue `gpu`.
"""

from __future__ import annotations

from airflow.sdk import Param, dag, task
from fgpo_airflow.decorators import fgpo_step
from fgpo_airflow.retry import task_defaults
from fgpo_airflow.settings import GPU_POOL, GPU_QUEUE, step_run

GPU = {"pool": GPU_POOL, "queue": GPU_QUEUE}


def _experiment():
    """(config, run key, timestamp) of the running task; deployment settings applied."""
    from pathlib import Path

    from fgpo_airflow.settings import experiment_config_path
    from fgpo_tasks.experiment import load_experiment

    run = step_run()
    out = None
    if run.params.get("storage_root"):
        safe = "".join(c if c.isalnum() or c in "-_.+" else "_" for c in run.run_key)
        out = str(Path(run.params["storage_root"]) / "experiments" / safe)
    cfg = load_experiment(experiment_config_path(run.params["config"]), out_dir=out,
                          tracking_uri=run.params.get("tracking_uri"), seeds=run.params.get("seeds") or None)
    return cfg, run.run_key, run.created_at


@dag(
    dag_id="fgpo_experiment",
    schedule=None,
    start_date=None,
    catchup=False,
    max_active_runs=1,  # arms of two experiments would compete for the same GPU pool
    params={
        "config": Param("configs/experiments/synthetic.yaml", type="string", title="Experiment config",
                        description="Experiment YAML (fgpo_tasks.experiment.ExperimentConfig) in "
                                    "configs/experiments (or $FGPO_EXPERIMENTS_DIR): "
                                    "configs/experiments/synthetic.yaml or helpsteer2.yaml."),
        "seeds": Param(None, type=["null", "array"], items={"type": "integer"}, title="Seeds",
                       description="Seeds to run instead of the config's (one integer per line); null: "
                                   "the config's seeds."),
    },
    default_args=task_defaults(),
    tags=["fgpo", "experiment"],
    doc_md=__doc__,
)
def fgpo_experiment():
    @task
    def plan() -> dict:
        """The units to map over: (pool, seed) and (pool, seed, arm)."""
        from fgpo_tasks.experiment import arm_units, pool_units

        cfg, key, _ = _experiment()
        return {"key": key, "pools": pool_units(cfg), "arms": arm_units(cfg)}

    @task
    def pool_list(planned: dict) -> list[dict]:
        return list(planned["pools"])

    @task
    def arm_list(planned: dict) -> list[dict]:
        return list(planned["arms"])

    @fgpo_step(**GPU)
    def prepare(planned: dict) -> dict:
        from fgpo_tasks.experiment import prepare as run

        cfg, key, created_at = _experiment()
        return run(cfg, key, created_at)

    @fgpo_step(**GPU)
    def prepare_pool(prepared: dict, unit: dict) -> dict:
        from fgpo_tasks.experiment import prepare_pool as run

        cfg, key, created_at = _experiment()
        return run(cfg, key, unit["pool"], unit["seed"], created_at)

    @fgpo_step(**GPU)
    def prepare_eval(pools: list[dict]) -> dict:
        from fgpo_tasks.experiment import prepare_eval as run

        cfg, key, created_at = _experiment()
        return run(cfg, key, created_at)

    @fgpo_step(**GPU)
    def run_arm(evaluation: dict, unit: dict) -> dict:
        from fgpo_tasks.experiment import run_arm as run

        cfg, key, created_at = _experiment()
        return run(cfg, key, unit["pool"], unit["seed"], unit["arm"], created_at)

    @task(trigger_rule="all_done")
    def report(arms: list[dict]) -> dict:
        """The table and plot of every arm that finished; then fails if an arm is missing, so the
        run shows it (the table of the others is written either way)."""
        from fgpo_tasks.errors import FgpoError
        from fgpo_tasks.experiment import report as run

        cfg, key, created_at = _experiment()
        result = run(cfg, key, created_at)
        if result["arms_run"] < result["arms_planned"]:
            raise FgpoError(f"report written with {result['arms_run']} of {result['arms_planned']} arms: "
                            "see the failed run_arm tasks")
        return result

    planned = plan()
    prepared = prepare(planned)
    pools = prepare_pool.partial(prepared=prepared).expand(unit=pool_list(planned))
    evaluation = prepare_eval(pools)
    report(run_arm.partial(evaluation=evaluation).expand(unit=arm_list(planned)))


fgpo_experiment()
