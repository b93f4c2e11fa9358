"""fgpo validate --data DIR --out DIR [--config FILE]"""

from __future__ import annotations

HELP = "check a pair table with Great Expectations: quarantine bad rows, keep the clean ones"


def add_arguments(parser) -> None:
    parser.add_argument("--data", required=True, help="input pair directory (pairs.parquet + manifest.json)")
    parser.add_argument("--out", required=True,
                        help="output directory: accepted pairs, quarantine.parquet, reports, data_docs/")
    parser.add_argument("--config", default=None,
                        help="YAML file: its 'validate' section, or the whole file when it has none")
    parser.add_argument("--max-quarantine-fraction", type=float, default=None,
                        help="override: fail when more than this fraction of rows is quarantined")
    parser.add_argument("--no-data-docs", action="store_true", help="skip GX's HTML data docs")


def main(args) -> dict:
    from fgpo_tasks.config import load_config, read_yaml
    from fgpo_tasks.provenance import run_timestamp
    from fgpo_tasks.validate import ValidateConfig, run_validate

    section = None
    if args.config is not None and "validate" in read_yaml(args.config):
        section = "validate"
    config = load_config(ValidateConfig, args.config, section=section,
                         max_quarantine_fraction=args.max_quarantine_fraction,
                         data_docs=False if args.no_data_docs else None)
    return run_validate(args.data, args.out, config, run_timestamp(args.created_at))
