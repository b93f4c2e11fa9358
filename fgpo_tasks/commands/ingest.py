"""fgpo ingest: raw preference data (files, folders, globs, hub datasets) -> a pair directory."""

from __future__ import annotations

HELP = "read preference data in one or more formats into one pair directory (+ quarantine)"


def add_arguments(parser) -> None:
    import dataclasses

    from fgpo_tasks.ingest.config import FORMATS, IngestConfig

    fields = ", ".join(f.name for f in dataclasses.fields(IngestConfig))

    parser.add_argument("--source", action="append", required=True, metavar="S",
                        help="a file, folder, glob or Hugging Face dataset id (repeatable; several "
                             "sources make one aggregated pool)")
    parser.add_argument("--format", action="append", required=True, metavar="F", choices=FORMATS,
                        help=f"one of {', '.join(FORMATS)}: once for all sources or once per "
                             "source (row shapes: docs/formats.md)")
    parser.add_argument("--out", required=True, metavar="DIR", help="output pair directory")
    parser.add_argument("--config", metavar="FILE",
                        help="YAML with IngestConfig fields (top level, or under an 'ingest:' key)")
    parser.add_argument("--aspect", metavar="A",
                        help="the one aspect of every pair (trl, generic, binarized ultrafeedback; "
                             "helpsteer2-aspects: instead of the file name's aspect)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="set_",
                        help="set any IngestConfig field over the config file; VALUE is YAML "
                             "(--set min_margin=0.5, --set aspect_map='{helpfulness_eval: help}', "
                             "--set chosen_rating_columns='{overall: metadata.rating_chosen}'); "
                             "KEY may be FIELD.SUBKEY for a mapping field; repeatable. Fields: "
                             f"{fields} (meanings: fgpo_tasks/ingest/config.py)")
    parser.add_argument("--batch-id", metavar="ID",
                        help="annotation batch id of every pair (default: config, else source name)")


def parse_sets(items: list[str]) -> dict:
    """'KEY=VALUE' strings as {field: value}, each VALUE parsed as YAML; 'FIELD.SUB=V' sets one
    key of a mapping field."""
    import yaml

    from fgpo_tasks.errors import ConfigError

    out: dict = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE (e.g. --set min_margin=0.5)")
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError as e:
            raise ConfigError(f"--set {key}: VALUE is not valid YAML: "
                              f"{str(e).splitlines()[0]}") from None
        field, dot, sub = key.partition(".")
        if dot:
            if not isinstance(out.get(field, {}), dict):
                raise ConfigError(f"--set {key}: {field} was already set to a non-mapping")
            out.setdefault(field, {})[sub] = value
        else:
            out[field] = value
    return out


def main(args) -> dict:
    import dataclasses

    from fgpo_tasks.config import from_dict, read_yaml
    from fgpo_tasks.ingest import IngestConfig, run_ingest
    from fgpo_tasks.provenance import run_timestamp

    values: dict = {}
    where = "--set"
    if args.config:
        data = read_yaml(args.config)
        if isinstance(data.get("ingest"), dict):
            data = data["ingest"]
        values.update(data)
        where = f"{args.config} (+ --set)"
    sets = parse_sets(args.set_)
    known = {f.name for f in dataclasses.fields(IngestConfig)}
    for key, value in sets.items():  # a FIELD.SUB entry merges into the file's mapping
        if key in known and isinstance(value, dict) and any("." in s and s.startswith(key + ".")
                                                            for s in args.set_):
            base = values.get(key) if isinstance(values.get(key), dict) else {}
            values[key] = {**base, **value}
        else:
            values[key] = value
    for key, flag in (("batch_id", args.batch_id), ("aspect", args.aspect)):
        if flag is not None:
            values[key] = flag
    config = from_dict(IngestConfig, values, where=where)
    return run_ingest(args.source, args.format, args.out, config, run_timestamp(args.created_at))
