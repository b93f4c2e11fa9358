"""Export a pair directory (a selection, or any contract table) as a TRL preference dataset.

Teams that train with their own stack can use fgpo for ingest, validation and selection alone:
``run_export`` writes ``train.jsonl`` in TRL's preference format, which ``datasets.load_dataset``
and TRL's ``DPOTrainer`` read as they are (``load_dataset("<out>", split="train")``: the file
name gives the split), and ``fgpo_export.json`` (what was exported, from where). No README.md
dataset card is written: a card's YAML ``configs`` block makes ``datasets`` cache the folder by
its name alone, so a second export to a folder of the same name would load the first one's rows.

- standard: ``{"prompt": str, "chosen": str, "rejected": str}`` (a conversation prompt rendered as
  text, as in the contract's ``prompt`` column);
- conversational: ``{"prompt": [{role, content}, ...], "chosen": [{"role": "assistant", ...}],
  "rejected": [{"role": "assistant", ...}]}``: TRL applies the tokenizer's chat template.

Each row also carries ``pair_id``, ``aspect`` and ``score_chosen`` / ``score_rejected`` (the
pair's rating on its own aspect, null when unrated), columns TRL leaves alone.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fgpo_tasks import contract, jsonio
from fgpo_tasks.config import check, to_dict
from fgpo_tasks.errors import InputError
from fgpo_tasks.provenance import code_version, file_fingerprint
from fgpo_tasks.storage import atomic_dir

log = logging.getLogger(__name__)

EXPORT_FORMATS = ("trl",)
DATA_FILE = "train.jsonl"
EXPORT_MANIFEST = "fgpo_export.json"


@dataclass
class ExportConfig:
    format: str = field(default="trl", metadata={"help": f"output format: one of {list(EXPORT_FORMATS)}"})
    conversational: bool = field(default=False, metadata={
        "help": "TRL conversational rows (message lists) instead of standard (text)"})
    extra_columns: bool = field(default=True, metadata={
        "help": "also write pair_id, aspect, score_chosen, score_rejected"})

    def __post_init__(self):
        check(self.format in EXPORT_FORMATS,
              f"unknown export format {self.format!r}; known: {', '.join(EXPORT_FORMATS)}")


def _messages(value: Any) -> list[dict] | None:
    if value is None:
        return None
    items = value.tolist() if hasattr(value, "tolist") else list(value)
    return [{"role": str(m["role"]), "content": str(m["content"])} for m in items] or None


def _rating(ratings: Any, aspect: str) -> float | None:
    if isinstance(ratings, dict) and ratings.get(aspect) is not None:
        return float(ratings[aspect])
    return None


def trl_row(pair: dict, conversational: bool, extra: bool) -> dict:
    """One contract pair as a TRL preference row."""
    if conversational:
        prompt = _messages(pair.get("prompt_messages")) or [{"role": "user", "content": pair["prompt"]}]
        row = {"prompt": prompt, "chosen": [{"role": "assistant", "content": pair["chosen"]}],
               "rejected": [{"role": "assistant", "content": pair["rejected"]}]}
    else:
        row = {"prompt": pair["prompt"], "chosen": pair["chosen"], "rejected": pair["rejected"]}
    if extra:
        row.update({"pair_id": pair["pair_id"], "aspect": pair["aspect"],
                    "score_chosen": _rating(pair.get("ratings_chosen"), pair["aspect"]),
                    "score_rejected": _rating(pair.get("ratings_rejected"), pair["aspect"])})
    return row


def run_export(data_dir: str | Path, out_dir: str | Path, config: ExportConfig, created_at: str) -> dict:
    """Write the pairs of ``data_dir`` to ``out_dir`` as a TRL preference dataset; return counts."""
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    df = contract.read_pairs(data_dir)
    if len(df) == 0:
        raise InputError("no pairs to export", file=str(data_dir))
    manifest = contract.read_manifest(data_dir)
    rows = [trl_row(p, config.conversational, config.extra_columns) for p in df.to_dict(orient="records")]
    with atomic_dir(out_dir) as tmp:
        with open(tmp / DATA_FILE, "w", encoding="utf-8") as fh:
            for row in rows:
                fh.write(jsonio.dumps(row, ensure_ascii=False) + "\n")
        record = {"kind": "fgpo.export", "created_at": created_at, "code_version": code_version(),
                  "config": to_dict(config), "rows": len(rows),
                  "load_with": f'datasets.load_dataset("{out_dir}", split="train")',
                  "per_aspect": contract.counts(df)["per_aspect"],
                  "input": {"path": str(data_dir), "stage": manifest.get("stage"),
                            "fingerprint": manifest.get("fingerprint")},
                  "files": {DATA_FILE: file_fingerprint(tmp / DATA_FILE)}}
        jsonio.write_json(tmp / EXPORT_MANIFEST, record)
    log.info("exported %d pairs (%s, %s) -> %s", len(rows), config.format,
             "conversational" if config.conversational else "standard", out_dir)
    return {"out_dir": str(out_dir), "rows": len(rows), "format": config.format,
            "conversational": config.conversational, "file": str(out_dir / DATA_FILE)}
