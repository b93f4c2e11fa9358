"""The trigger form of fgpo_retrain: typed, documented Params.

Every knob but ``profile`` defaults to null, meaning "the profile's value"
(configs/pipeline/<profile>.yaml); a value set in the form overrides the profile.
The enums are fgpo_tasks.choices, the lists the configs and the CLI check against
(a dependency-free module: parsing the DAG loads no pandas or torch).
"""

from __future__ import annotations

from airflow.sdk import Param

from fgpo_tasks.choices import FORMATS, ON_WEAK, STRATEGIES

PROFILES = ("demo", "helpsteer2", "tiny")  # configs/pipeline/<name>.yaml; tests/test_dags.py checks

_DATA, _SELECT, _MODELS, _GATE = "Data", "Selection", "Models and training", "Promotion gate"


def _nullable(kind: str) -> list[str]:
    return ["null", kind]


def retrain_params() -> dict[str, Param]:
    return {
        "profile": Param(
            "demo", type="string", enum=list(PROFILES), title="Profile",
            description="Preset of data, models and stage settings: 'demo' (synthetic data, tiny "
                        "models, minutes on a CPU), 'helpsteer2' (HelpSteer2 files, SmolLM2 policy, "
                        "MiniLM reward proxies) or 'tiny' (the smallest real run, for tests). The "
                        "fields below override it.",
            section=_DATA),
        "source": Param(
            None, type=_nullable("array"), items={"type": "string"}, title="Data sources",
            description="Files, folders, globs or Hugging Face dataset ids (one per line); null: "
                        "the profile's. Runs triggered by new annotation batches use the landed "
                        "batch files instead.",
            section=_DATA),
        "format": Param(
            None, type=_nullable("array"), items={"type": "string", "enum": list(FORMATS)},
            title="Data formats",
            description=f"Ingest format: one for all sources or one per source, from {list(FORMATS)}; "
                        "null: the profile's.",
            section=_DATA),
        "aspects": Param(
            None, type=_nullable("array"), items={"type": "string"}, title="Aspects",
            description="Aspects to keep (e.g. helpfulness, correctness); null or empty: every aspect "
                        "in the data. One proxy reward model is trained per aspect.",
            section=_DATA),
        "strategy": Param(
            None, type=_nullable("string"), enum=[None, *STRATEGIES], title="Selection strategy",
            description="pd: preference divergence from proxy reward models (the method); "
                        "pd_ratings: PD from the ratings; pd_high / pd_mid: ablations; random_length: "
                        "random with pd's length profile (a control); random, all, "
                        "raf, ova, avg: baselines. null: the profile's.",
            section=_SELECT),
        "budget": Param(
            None, type=_nullable("number"), exclusiveMinimum=0, maximum=1, title="Budget",
            description="Fraction of the pairs the selection keeps, in (0, 1] (the paper: 0.3 on "
                        "UltraFeedback, 0.5 on HelpSteer). null: the profile's.",
            section=_SELECT),
        "on_weak_proxies": Param(
            None, type=_nullable("string"), enum=[None, *ON_WEAK], title="When the proxies are at chance",
            description="What select does when the score step's selection_confidence verdict is "
                        "'none' (no proxy reward model beats chance) and the strategy ranks by proxy "
                        "PD: warn (log it, select anyway), fallback_ratings (select by PD from the "
                        "ratings where the data has them) or fail. null: the profile's (default warn).",
            section=_SELECT),
        "reward_backbone": Param(
            None, type=_nullable("string"), title="Reward-model backbone",
            description="Model spec of the proxy reward models: hub id, local folder, GGUF file, "
                        "an offline alias (minilm-l6, smollm2-135m-instruct) or tiny-bert / tiny-llama. "
                        "null: the profile's.",
            section=_MODELS),
        "policy_model": Param(
            None, type=_nullable("string"), title="Policy model",
            description="Model spec of the policy trained with DPO (same forms as the backbone). "
                        "null: the profile's.",
            section=_MODELS),
        "beta": Param(
            None, type=_nullable("number"), exclusiveMinimum=0, title="DPO beta",
            description="Strength of the KL penalty to the reference policy. null: the profile's.",
            section=_MODELS),
        "epochs": Param(
            None, type=_nullable("integer"), minimum=1, title="DPO epochs",
            description="Passes over the selected pairs. null: the profile's.",
            section=_MODELS),
        "min_win_rate": Param(
            None, type=_nullable("number"), minimum=0, maximum=1, title="Minimum win rate",
            description="Promotion gate: the lower bound of the confidence interval of the "
                        "candidate's mean win rate over the current champion must be above this "
                        "(and above 0.5: a tie never promotes). null: the profile's.",
            section=_GATE),
        "min_prompts": Param(
            None, type=_nullable("integer"), minimum=1, title="Minimum evaluation prompts",
            description="Promotion gate: the evaluation must have used at least this many prompts. "
                        "null: the profile's (default 32).",
            section=_GATE),
        "max_aspect_regression": Param(
            None, type=_nullable("number"), minimum=0, maximum=0.5, title="Maximum aspect regression",
            description="Promotion gate: no aspect's win rate may fall below 0.5 minus this. "
                        "null: the profile's.",
            section=_GATE),
        "model_name": Param(
            None, type=_nullable("string"), title="Registered model name",
            description="Name in the MLflow model registry. null: the profile's.",
            section=_GATE),
    }
