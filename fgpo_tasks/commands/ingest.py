"""fgpo ingest: raw preference data (files, folders, globs, hub datasets) -> a pair directory."""

from __future__ import annotations

HELP = "read preference data in one or more formats into one pair directory (+ quarantine)"


def add_arguments(parser) -> None:
    from fgpo_tasks.ingest.config import FORMATS

    parser.add_argument("--source", action="append", required=True, metavar="S",
                        help="a file, folder, glob or Hugging Face dataset id (repeatable; several "
                             "sources make one aggregated pool)")
    parser.add_argument("--format", action="append", required=True, metavar="F", choices=FORMATS,
                        help=f"one of {', '.join(FORMATS)}: once for all sources or once per source")
    parser.add_argument("--out", required=True, metavar="DIR", help="output pair directory")
    parser.add_argument("--config", metavar="FILE",
                        help="YAML with IngestConfig fields (top level, or under an 'ingest:' key)")
    parser.add_argument("--batch-id", metavar="ID",
                        help="annotation batch id of every pair (default: config, else source name)")


def main(args) -> dict:
    from fgpo_tasks.config import load_config, read_yaml
    from fgpo_tasks.ingest import IngestConfig, run_ingest
    from fgpo_tasks.provenance import run_timestamp

    section = None
    if args.config and isinstance(read_yaml(args.config).get("ingest"), dict):
        section = "ingest"
    config = load_config(IngestConfig, args.config, section, batch_id=args.batch_id)
    return run_ingest(args.source, args.format, args.out, config, run_timestamp(args.created_at))
