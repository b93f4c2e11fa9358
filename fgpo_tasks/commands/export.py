"""fgpo export --data DIR --format trl --out DIR [--conversational]"""

from __future__ import annotations

HELP = "write a pair directory (e.g. a selection) as a TRL preference dataset"


def add_arguments(parser) -> None:
    from fgpo_tasks.export import EXPORT_FORMATS

    parser.add_argument("--data", required=True, metavar="DIR",
                        help="pair directory to export (a selection, or any contract table)")
    parser.add_argument("--format", default="trl", choices=EXPORT_FORMATS,
                        help="output format (default trl: prompt / chosen / rejected)")
    parser.add_argument("--out", required=True, metavar="DIR",
                        help="output folder: train.jsonl and fgpo_export.json")
    parser.add_argument("--conversational", action="store_true",
                        help="TRL conversational rows (message lists; TRL applies the chat "
                             "template) instead of standard text rows")
    parser.add_argument("--no-extra-columns", action="store_true",
                        help="write only prompt / chosen / rejected (default: also pair_id, "
                             "aspect, score_chosen, score_rejected)")


def main(args) -> dict:
    from fgpo_tasks.config import from_dict
    from fgpo_tasks.export import ExportConfig, run_export
    from fgpo_tasks.provenance import run_timestamp

    config = from_dict(ExportConfig, {"format": args.format, "conversational": args.conversational,
                                      "extra_columns": not args.no_extra_columns}, where="fgpo export")
    return run_export(args.data, args.out, config, run_timestamp(args.created_at))
