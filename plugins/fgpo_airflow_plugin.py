"""Registers fgpo's Airflow edge (the fgpo_airflow package beside this file) as a plugin."""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from fgpo_airflow.decorators import FgpoStepOperator
from fgpo_airflow.links import MlflowRunLink


class FgpoAirflowPlugin(AirflowPlugin):
    name = "fgpo_airflow"
    # The link is declared on FgpoStepOperator itself; registering it here lists it in the
    # plugins view and attaches it to the operator class wherever DAGs are deserialized.
    operator_extra_links = [MlflowRunLink()]


MlflowRunLink.operators = [FgpoStepOperator]
