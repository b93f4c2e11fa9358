"""The named choices that configs, the CLI and the Airflow trigger form share.

Dependency-free on purpose: the DAG parser imports this module (plugins/fgpo_airflow/params.py)
and must not load pandas or torch to build its form.
"""

from __future__ import annotations

# selection strategies: fgpo_tasks.selection (one flat branch per strategy)
STRATEGIES = ("pd", "pd_ratings", "pd_high", "pd_mid", "random", "random_length", "all", "raf", "ova", "avg")
# DPO losses: fgpo_tasks.dpo.losses
LOSS_TYPES = ("sigmoid", "ipo", "cdpo", "dfpo")
# what select does when the proxies' verdict is `none`: fgpo_tasks.confidence.decide
ON_WEAK = ("warn", "fallback_ratings", "fail")
# ingest formats: fgpo_tasks.ingest.adapters
FORMATS = ("helpsteer2-aspects", "rated-responses", "ultrafeedback", "pku-saferlhf", "trl",
           "generic", "synthetic")
