"""fgpo experiment: several selection arms side by side on the same pools, budget and seeds."""

from __future__ import annotations

HELP = "run a selection experiment (arms x pools x seeds) and write its results table and plot"


def add_arguments(p) -> None:
    p.add_argument("--config", required=True, help="experiment YAML (configs/experiments/)")
    p.add_argument("--run-key", default=None,
                   help="names the run (output folder, MLflow run keys); the same key resumes it: stages "
                        "already computed are reused, a changed config recomputes the stages it changes "
                        "(default: the config's name)")
    p.add_argument("--out", default=None, help="output folder (default: <work>/experiments/<run key>)")
    p.add_argument("--storage-root", default=None,
                   help="stage store shared with pipeline runs (default: <work>/storage)")
    p.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default: sqlite in the work folder)")
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="override the config's seeds")
    p.add_argument("--report-only", action="store_true",
                   help="only rebuild the table and plot from the arms finished so far")


def main(args) -> dict:
    from fgpo_tasks.experiment import load_experiment, report, run_experiment
    from fgpo_tasks.provenance import run_timestamp

    cfg = load_experiment(args.config, out_dir=args.out, tracking_uri=args.tracking_uri, seeds=args.seeds,
                          storage_root=args.storage_root)
    key = args.run_key or cfg.name
    created_at = run_timestamp(args.created_at)
    if args.report_only:
        return report(cfg, key, created_at)
    return run_experiment(cfg, key, created_at)
