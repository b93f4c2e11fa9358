"""fgpo_airflow: the Airflow edge of fgpo (links, callbacks, assets, settings, params).

Everything Airflow-specific lives here so that ``fgpo_tasks`` stays a plain library: this
package resolves connections and variables and hands ``fgpo_tasks.pipeline`` plain values.
Nothing here imports torch, transformers, mlflow or ``fgpo_tasks.pipeline`` at module level:
DAG files import it at parse time.
"""
