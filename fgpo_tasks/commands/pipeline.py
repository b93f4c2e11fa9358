"""`fgpo pipeline`: every stage in order in this process, as the fgpo_retrain DAG runs them."""

HELP = "run the whole pipeline (ingest .. register) in-process on a profile"


def add_arguments(p):
    p.add_argument("--profile", default="demo", help="configs/pipeline/<profile>.yaml (default: demo)")
    p.add_argument("--run-key", default=None, help="pipeline run id; re-running the same key resumes "
                   "it: finished stages are reused, a changed flag recomputes the stages it changes "
                   "(default: manual__<created-at>)")
    p.add_argument("--strategy", default=None, help="selection strategy (overrides the profile)")
    p.add_argument("--budget", type=float, default=None, help="fraction of pairs kept (overrides the profile)")
    p.add_argument("--on-weak-proxies", choices=("warn", "fallback_ratings", "fail"), default=None,
                   help="what select does when no proxy beats chance (selection_confidence 'none'); "
                        "overrides the profile's select.on_weak_proxies (default warn)")
    p.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default: sqlite in the work folder)")
    p.add_argument("--storage-root", default=None, help="where run artifacts go (default: <work>/storage)")


def main(args):
    from fgpo_tasks.pipeline import run_pipeline
    from fgpo_tasks.provenance import run_timestamp

    created_at = run_timestamp(args.created_at)
    run_key = args.run_key or "manual__" + created_at.replace(":", "-").replace("+00-00", "Z")
    params = {"profile": args.profile, "strategy": args.strategy, "budget": args.budget,
              "on_weak_proxies": args.on_weak_proxies, "tracking_uri": args.tracking_uri, "storage_root": args.storage_root}
    return run_pipeline(params, run_key, created_at)
