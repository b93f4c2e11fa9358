"""fgpo register --model DIR --eval DIR --run-key KEY [--config FILE]"""

from __future__ import annotations

HELP = "register a policy in the MLflow model registry; promote it to champion if the gate passes"


def add_arguments(parser) -> None:
    parser.add_argument("--model", required=True, metavar="DIR", help="the policy folder to register")
    parser.add_argument("--eval", required=True, metavar="DIR",
                        help="its evaluation folder (fgpo evaluate against the current champion)")
    parser.add_argument("--run-key", required=True, metavar="KEY",
                        help="the pipeline run: registering the same key again creates nothing new")
    parser.add_argument("--config", metavar="FILE",
                        help="YAML with RegisterConfig fields (top level, or under a 'register:' key)")
    parser.add_argument("--model-name", default=None, help="override: registered model name")
    parser.add_argument("--min-win-rate", type=float, default=None, help="override: gate minimum win rate")
    parser.add_argument("--max-aspect-regression", type=float, default=None,
                        help="override: gate tolerance per aspect (win rate >= 0.5 - this)")
    parser.add_argument("--tracking-uri", metavar="URI",
                        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite in the work folder)")
    parser.add_argument("--experiment", default=None, help="MLflow experiment (default: fgpo)")
    parser.add_argument("--retries", type=int, default=3, help="retries of a failing MLflow call")
    parser.add_argument("--strategy", default=None, help="selection strategy (a version tag)")
    parser.add_argument("--budget", default=None, help="selection budget (a version tag)")
    parser.add_argument("--data-fingerprint", default=None,
                        help="training data fingerprint (default: from the model's fgpo_model.json)")
    parser.add_argument("--tag", action="append", default=[], metavar="KEY=VALUE",
                        help="extra version tag fgpo.KEY (repeatable)")


def main(args) -> dict:
    from fgpo_tasks.config import load_config, read_yaml
    from fgpo_tasks.errors import ConfigError
    from fgpo_tasks.registry import RegisterConfig, register_candidate
    from fgpo_tasks.tracking import TrackingConfig

    section = None
    if args.config and isinstance(read_yaml(args.config).get("register"), dict):
        section = "register"
    config = load_config(RegisterConfig, args.config, section, model_name=args.model_name,
                         min_win_rate=args.min_win_rate, max_aspect_regression=args.max_aspect_regression)
    tags = {"strategy": args.strategy, "budget": args.budget, "data_fingerprint": args.data_fingerprint}
    for item in args.tag:
        if "=" not in item:
            raise ConfigError(f"--tag must be KEY=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        tags[key] = value
    return register_candidate(args.model, args.eval, tracking_uri=args.tracking_uri,
                              model_name=config.model_name, run_key=args.run_key, config=config,
                              tags=tags, tracking=TrackingConfig(experiment_name=args.experiment or "fgpo",
                                                       retries=args.retries))
