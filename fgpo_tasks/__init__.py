"""fgpo_tasks: the library behind the fgpo pipeline.

Every stage is a plain function from input directories to an output directory plus a small
metrics dict, runnable from the ``fgpo`` CLI, from a test and from an Airflow task alike.
This package never imports Airflow.
"""

__version__ = "0.1.0"
