"""The selection experiment: several arms (selection strategy x DPO loss) side by side.

Every arm trains DPO from the same starting policy on a pool built with the same data, budget
and seed, and is evaluated against that starting policy with the same evaluation reward models on
the same held-out prompts. The runner knows nothing about which arm should win: it runs them
all the same way and reports mean and spread over seeds.

The arms run the pipeline's stages (``fgpo_tasks.workflow`` over the stage layer), so what arms
share is computed once. Modules: ``config`` (ExperimentConfig, arms, pools, the run key's
layout), ``arms`` (the units of work: prepare, prepare_pool, prepare_eval, run_arm),
``outcome`` (the implicit-reward accuracy on held-out pairs labelled by the mean of all aspect
ratings, with a bootstrap CI by prompt: ``implicit_reward`` in the config) and ``report`` (the
results table and plot).

Evaluation split (real data, ``eval_split``): the pipeline's ``holdout`` split
(``fgpo_tasks.holdout``): pairs are assigned by a hash of their PROMPT; ``fraction`` of the
prompts leave the pool; of those, ``prompt_fraction`` become the evaluation prompts and the rest
train the evaluation reward models (section ``eval_reward_models`` over ``reward_models``).
"""

from fgpo_tasks.experiment.arms import (_arm_configs, _eval_config, _eval_summary, _ingest_config,  # noqa: F401
                                        _log_shared, _proxy_specs, _selection_cost, _tracker, prepare,
                                        prepare_data, prepare_eval, prepare_pool, run_arm, run_experiment)
from fgpo_tasks.experiment.config import (LOSS_TYPES, NEEDS, REPO, ROLE_TAG, STAGE_SECTIONS,  # noqa: F401
                                          STRATEGIES, ArmSpec, ExperimentConfig, PoolSpec, _arm, _commit, _done,
                                          _identity, _mlflow_key, _pool, _require, _stage, arm_units,
                                          load_experiment, out_root, pool_units, store)
from fgpo_tasks.experiment.report import (CONFLICT_COVERAGE, _log_report, _mean_sd, _true_conflict,  # noqa: F401
                                          aggregate, markdown, plot, report)
from fgpo_tasks.holdout import cap_pairs, prompt_part, split_for_evaluation  # noqa: F401 (re-exported)
