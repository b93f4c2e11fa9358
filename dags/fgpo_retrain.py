"""
### fgpo_retrain: align a policy on the fine-grained preference pairs PD selects

`ingest -> validate -> train_reward_model (mapped: one per aspect validate found) -> score_shard
(mapped: one per shard of the pool and proxy) -> score_pd (the reduce: quantiles, PD, the table)
-> select -> train_dpo -> evaluate -> register`

Each task calls one step of `fgpo_tasks.pipeline` with plain values (the run's params, the DAG
run id as run key, the run's logical date / run_after as timestamp, the upstream URIs). Each step's
output is a content-addressed stage folder `<storage root>/stages/<stage>/<key>/` (key: the
hash of its inputs, config and code), committed atomically; `<storage root>/runs/<run id>/<step>.json`
records which one the run used. A retried or cleared task finds the finished stage instead of
redoing it. XCom carries URIs and small dicts only.

**Sharded scoring**: profile field `score.shard_size` (pairs per shard; null: one shard) sets how
many `score_shard` tasks run (shards x proxies, in parallel on as many workers as the GPU pool
and queue allow); each writes its raw margins into the score stage's folder, and `score_pd`
reduces them to exactly the scores one unsharded task would write (same stage key).

**Trigger** by hand with the form (profile plus overrides), or let it run when `fgpo_ingest`
reports new annotation batches (asset `fgpo_annotation_batches`): such a run trains on every
landed batch with the profile in Variable `fgpo_retrain_profile` (default `demo`); the scoring
cache scores only the new pairs. A trigger conf key the DAG does not know fails the run's first
task, naming the key and listing the known ones.

**Deployment settings** (connection `fgpo_mlflow`, Variables `fgpo_storage_root`,
`fgpo_mlflow_ui_url`, `fgpo_retrain_profile`) are resolved by the `fgpo_airflow` plugin.
GPU-heavy tasks run in pool `fgpo_gpu` (created by `make airflow` / the compose init job: a task
in a missing pool never starts) on Celery queue `gpu`. Each task links to its MLflow run ("MLflow run" button); a
failing task logs its stage and its MLflow run.
"""

from __future__ import annotations

from airflow.sdk import dag, task
from fgpo_airflow.assets import ANNOTATION_BATCHES, REGISTERED_MODEL
from fgpo_airflow.decorators import fgpo_step
from fgpo_airflow.params import retrain_params
from fgpo_airflow.retry import task_defaults
from fgpo_airflow.settings import GPU_POOL, GPU_QUEUE, step_run

GPU = {"pool": GPU_POOL, "queue": GPU_QUEUE}


@dag(
    dag_id="fgpo_retrain",
    schedule=[ANNOTATION_BATCHES],
    start_date=None,
    catchup=False,
    max_active_runs=1,  # runs share the GPU pool and promote to the same registered model
    params=retrain_params(),
    default_args=task_defaults(),
    tags=["fgpo"],
    doc_md=__doc__,
)
def fgpo_retrain():
    @fgpo_step
    def ingest() -> dict:
        from fgpo_tasks.pipeline import step_ingest

        run = step_run()
        return step_ingest(run.params, run.run_key, run.created_at)

    @fgpo_step
    def validate(ingested: dict) -> dict:
        from fgpo_tasks.pipeline import step_validate

        run = step_run()
        return step_validate(run.params, run.run_key, run.created_at, data=ingested["data"])

    @task
    def aspects(validated: dict) -> list[str]:
        """The list to map over (Airflow maps only over a task's whole return value): every aspect,
        plus the unified model '__all__' when the strategy (raf) needs one. Fails here, before any
        training, when the profile's evaluation would judge aspects the data does not have."""
        from fgpo_tasks.judging import check_judges
        from fgpo_tasks.pipeline import pipeline_config

        check_judges(pipeline_config(step_run().params), validated["aspects"])
        return list(validated.get("reward_models") or validated["aspects"])

    @fgpo_step(**GPU, map_index_template="{{ fgpo_aspect }}")  # the UI lists mapped tasks by aspect
    def train_reward_model(validated: dict, aspect: str) -> dict:
        from airflow.sdk import get_current_context
        from fgpo_tasks.pipeline import step_reward_model

        get_current_context()["fgpo_aspect"] = aspect
        run = step_run()
        return step_reward_model(run.params, run.run_key, run.created_at, data=validated["data"],
                                 aspect=aspect)

    @task
    def score_plan(validated: dict, reward_models: list[dict]) -> list[dict]:
        """The (shard, proxy) units to map score_shard over: {"model", "shard"} each."""
        from fgpo_tasks.pipeline import step_score_plan

        return step_score_plan(step_run().params, data=validated["data"], reward_models=list(reward_models))

    @fgpo_step(**GPU, map_index_template="{{ fgpo_shard }}")  # the UI lists them as "<aspect> shard <i>"
    def score_shard(validated: dict, reward_models: list[dict], model: str, shard: int) -> dict:
        from airflow.sdk import get_current_context
        from fgpo_tasks.pipeline import step_score_shard

        run = step_run()
        result = step_score_shard(run.params, run.run_key, run.created_at, data=validated["data"],
                                  reward_models=list(reward_models), model=model, shard=shard)
        get_current_context()["fgpo_shard"] = f"{result.get('aspect', model.rstrip('/').rsplit('/', 1)[-1])} shard {shard}"
        return result

    # The reduce is cheap (quantiles, PD, the table): a CPU task. It also runs when there is no
    # shard to map (PD from ratings: score_shard is skipped), hence none_failed.
    @fgpo_step(trigger_rule="none_failed")
    def score_pd(validated: dict, reward_models: list[dict]) -> dict:
        from fgpo_tasks.pipeline import step_score

        run = step_run()
        return step_score(run.params, run.run_key, run.created_at, data=validated["data"],
                          reward_models=list(reward_models))

    @fgpo_step
    def select(validated: dict, scored: dict) -> dict:
        from fgpo_tasks.pipeline import step_select

        run = step_run()
        return step_select(run.params, run.run_key, run.created_at, data=validated["data"],
                           scores=scored["scores"])

    @fgpo_step(**GPU)
    def train_dpo(selected: dict, scored: dict) -> dict:
        from fgpo_tasks.pipeline import step_train_dpo

        run = step_run()
        return step_train_dpo(run.params, run.run_key, run.created_at, data=selected["data"],
                              scores=scored["scores"])

    @fgpo_step(**GPU)
    def evaluate(trained: dict, validated: dict, reward_models: list[dict]) -> dict:
        from fgpo_tasks.pipeline import step_evaluate

        run = step_run()
        return step_evaluate(run.params, run.run_key, run.created_at, model=trained["model"],
                             validated=validated, reward_models=list(reward_models))

    @fgpo_step(outlets=[REGISTERED_MODEL])
    def register(trained: dict, evaluation: dict, *, outlet_events=None) -> dict:
        from fgpo_tasks.pipeline import step_register

        run = step_run()
        result = step_register(run.params, run.run_key, run.created_at, model=trained["model"],
                               evaluation=evaluation)
        # The registry as it is now (a rerun reports the current aliases and champion, not the
        # verdict of the first attempt): version, its aliases, whether it is champion, the champion.
        outlet_events[REGISTERED_MODEL].extra = {
            k: result.get(k) for k in ("model_name", "version", "aliases", "promoted", "champion_version",
                                       "gate_passed", "reason")}
        return result

    validated = validate(ingest())
    reward_models = train_reward_model.partial(validated=validated).expand(aspect=aspects(validated))
    shards = score_shard.partial(validated=validated, reward_models=reward_models).expand_kwargs(
        score_plan(validated, reward_models))
    scored = score_pd(validated=validated, reward_models=reward_models)
    shards >> scored
    selected = select(validated=validated, scored=scored)
    trained = train_dpo(selected=selected, scored=scored)
    evaluation = evaluate(trained=trained, validated=validated, reward_models=reward_models)
    register(trained=trained, evaluation=evaluation)


fgpo_retrain()
