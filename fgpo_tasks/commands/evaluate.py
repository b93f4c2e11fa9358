"""fgpo evaluate --model DIR --baseline DIR --config FILE --out DIR"""

from __future__ import annotations

HELP = "compare a policy with a baseline on held-out prompts, judged by evaluation reward models"


def add_arguments(parser) -> None:
    parser.add_argument("--model", required=True, metavar="DIR", help="candidate policy folder")
    parser.add_argument("--baseline", required=True, metavar="DIR",
                        help="baseline policy folder: the current champion, else the reference model")
    parser.add_argument("--config", metavar="FILE",
                        help="YAML with EvalConfig fields (top level, or under an 'evaluate:' key)")
    parser.add_argument("--out", required=True, metavar="DIR",
                        help="output folder: results.json/.md/.csv, generations.jsonl, plots/")
    parser.add_argument("--n-prompts", type=int, default=None, help="override: held-out prompts")
    parser.add_argument("--max-new-tokens", type=int, default=None, help="override: tokens per response")
    parser.add_argument("--run-key", metavar="KEY",
                        help="log the results to MLflow under this pipeline run (parent run key)")
    parser.add_argument("--tracking-uri", metavar="URI",
                        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite in the work folder)")
    parser.add_argument("--experiment", default=None, help="MLflow experiment (default: fgpo)")


def main(args) -> dict:
    from fgpo_tasks.config import load_config, read_yaml
    from fgpo_tasks.evaluate import EvalConfig, run_evaluate
    from fgpo_tasks.provenance import run_timestamp

    section = None
    if args.config and isinstance(read_yaml(args.config).get("evaluate"), dict):
        section = "evaluate"
    config = load_config(EvalConfig, args.config, section, n_prompts=args.n_prompts,
                         max_new_tokens=args.max_new_tokens)
    result = run_evaluate(args.model, args.baseline, args.out, config, run_timestamp(args.created_at))
    if args.run_key:
        from fgpo_tasks.tracking import Tracker, TrackingConfig, log_evaluation
        tracking = TrackingConfig(experiment_name=args.experiment or "fgpo")
        tracker = Tracker(args.run_key, tracking, tracking_uri=args.tracking_uri)
        result["mlflow_run_id"] = log_evaluation(tracker, args.out)
        result["tracking_uri"] = tracker.uri
    return result
