"""The ``fgpo`` command line: one subcommand per pipeline stage.

Each subcommand lives in ``fgpo_tasks/commands/<name>.py`` with ``HELP`` (one line),
``add_arguments(parser)`` and ``main(args) -> dict``; they are discovered here, so adding a stage
never touches this file. Command modules import heavy libraries inside ``main`` only, so
``fgpo --help`` stays fast. A ``FgpoError`` becomes one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import pkgutil
import sys

from fgpo_tasks import jsonio
from fgpo_tasks import __version__, commands
from fgpo_tasks.env import setup_environment
from fgpo_tasks.errors import FgpoError

# Pipeline order for --help; commands not listed here follow alphabetically.
ORDER = ["ingest", "validate", "reward_models", "rm_eval", "score", "select", "export", "sft", "train_dpo",
         "evaluate", "register", "pipeline", "experiment"]


def _command_modules() -> list[tuple[str, object]]:
    names = [m.name for m in pkgutil.iter_modules(commands.__path__) if not m.name.startswith("_")]
    names.sort(key=lambda n: (ORDER.index(n) if n in ORDER else len(ORDER), n))
    return [(n, importlib.import_module(f"fgpo_tasks.commands.{n}")) for n in names]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fgpo", description="Fine-grained preference optimisation "
                                     "pipeline: ingest, validate, score PD, select, train, evaluate.")
    parser.add_argument("--version", action="version", version=f"fgpo {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--created-at", default=None,
                        help="the run's timestamp (ISO-8601) recorded in manifests; default: now")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module in _command_modules():
        p = sub.add_parser(name.replace("_", "-"), help=module.HELP, description=module.HELP)
        module.add_arguments(p)
        p.set_defaults(_main=module.main)
    return parser


def main(argv: list[str] | None = None) -> int:
    setup_environment()
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        result = args._main(args)
    except FgpoError as e:
        print(f"fgpo {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"fgpo {args.command}: interrupted", file=sys.stderr)
        return 130
    if result is not None:
        print(jsonio.dumps(result, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
