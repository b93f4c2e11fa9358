"""The Assets that connect fgpo's DAGs (one definition, imported by producers and consumers)."""

from __future__ import annotations

from airflow.sdk import Asset

# Updated by fgpo_ingest when new annotation batch files land; fgpo_retrain is scheduled on it.
# Event extra: {"landing_dir", "format", "batches": every batch file now landed (the union the
# retrain trains on), "new": the files that landed since the previous event}.
ANNOTATION_BATCHES = Asset(
    name="fgpo_annotation_batches",
    uri="x-fgpo://annotations/landing",
    group="fgpo",
    extra={"description": "annotation batch files in the landing folder (Variable fgpo_landing_dir)"},
)

# Updated by fgpo_retrain's register task; event extra: model name, version, aliases, promoted.
REGISTERED_MODEL = Asset(
    name="fgpo_registered_model",
    uri="x-fgpo://models/registered",
    group="fgpo",
    extra={"description": "a policy version registered in the MLflow model registry"},
)
