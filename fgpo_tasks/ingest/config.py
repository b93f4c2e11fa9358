"""IngestConfig: how raw preference data becomes contract pairs (one config for every format)."""

from __future__ import annotations

from dataclasses import dataclass, field

from fgpo_tasks.choices import FORMATS
from fgpo_tasks.config import check

COLUMN_KEYS = ("prompt", "chosen", "rejected", "ratings_chosen", "ratings_rejected")


@dataclass
class IngestConfig:
    batch_id: str | None = field(default=None, metadata={
        "help": "annotation batch id of every pair (the --batch-id flag wins); default: the "
                "source's basename (file stem, folder name, dataset name)"})
    max_row_bytes: int = field(default=1 << 20, metadata={
        "help": "rows larger than this (bytes of the raw line / serialized row) are quarantined"})
    max_quarantine_fraction: float = field(default=0.5, metadata={
        "help": "the ingest fails (no pairs.parquet) when more than this fraction of the rows "
                "read is quarantined; it always fails when no pair is accepted"})
    # helpsteer2-aspects
    aspect_map: dict[str, str] = field(default_factory=dict, metadata={
        "help": "helpsteer2-aspects: aspect label by file name, file stem or file-name aspect "
                "(e.g. {coherence: clarity}); default: the aspect the name gives, "
                "'<aspect>_preference*.jsonl', else '<aspect>_*.jsonl' (text before the first '_'); "
                "also used by generic's aspect_from_file_name"})
    # rated-responses / ultrafeedback
    aspects: list[str] | None = field(default=None, metadata={
        "help": "rated-responses / ultrafeedback: the aspects to read and pair on; default: every "
                "rating column found (ultrafeedback: every annotation)"})
    min_margin: float = field(default=1.0, metadata={
        "help": "rated-responses / ultrafeedback: a pair is eligible for an aspect when the two "
                "ratings differ by at least this much"})
    max_pairs_per_prompt: int | None = field(default=None, metadata={
        "help": "rated-responses / ultrafeedback: at most this many pairs per prompt (chosen by "
                "pair hash); default: every eligible pair"})
    lower_is_better: list[str] = field(default_factory=list, metadata={
        "help": "rated-responses / ultrafeedback: aspects where the LOWER rating wins (ratings are "
                "stored as read)"})
    # pku-saferlhf
    split_aspects: bool = field(default=False, metadata={
        "help": "pku-saferlhf: give each row to ONE aspect (helpful or safe, by row hash) so the "
                "sub-datasets are disjoint; default: one pair per aspect per row"})
    pairwise_ratings: bool = field(default=True, metadata={
        "help": "pku-saferlhf: store 1.0 / 0.0 as each aspect's rating of the response that "
                "wins / loses on it, so PD can be computed from ratings"})
    # trl / generic (and the one-aspect cases of the others)
    aspect: str | None = field(default=None, metadata={
        "help": "the one aspect of every pair: trl / generic (or aspect_column / "
                "aspect_from_file_name), binarized ultrafeedback (default 'overall'), "
                "helpsteer2-aspects (wins over the file name)"})
    aspect_from_file_name: bool = field(default=False, metadata={
        "help": "generic: each file's aspect from its name, '<aspect>_*' as for helpsteer2-aspects "
                "(aspect_map applies)"})
    label_column: str | None = field(default=None, metadata={
        "help": "generic: the column naming the preferred response, an index into "
                "response_columns (0/1) or one of their names; replaces chosen/rejected"})
    response_columns: list[str] = field(default_factory=lambda: ["response_0", "response_1"], metadata={
        "help": "generic with label_column: the two response columns the label indexes"})
    aspect_column: str | None = field(default=None, metadata={
        "help": "trl / generic: the column naming each pair's aspect"})
    columns: dict[str, str] = field(default_factory=dict, metadata={
        "help": f"trl / generic: source column for each of {list(COLUMN_KEYS)} (default: the same "
                "name); ratings_* columns hold a mapping aspect -> rating (or its JSON text). "
                "Every column name here and below may be a dotted path into nested objects "
                "(metadata.rating_chosen)"})
    chosen_rating_columns: dict[str, str] = field(default_factory=dict, metadata={
        "help": "trl / generic / binarized ultrafeedback: aspect -> column holding the chosen "
                "response's rating (e.g. {overall: metadata.rating_chosen})"})
    rejected_rating_columns: dict[str, str] = field(default_factory=dict, metadata={
        "help": "trl / generic: aspect -> column holding the rejected response's rating"})
    # Hugging Face hub sources
    hub_split: str = field(default="train", metadata={
        "help": "split loaded from a Hugging Face hub dataset source"})
    hub_name: str | None = field(default=None, metadata={
        "help": "configuration (subset) name of a Hugging Face hub dataset source"})
    hub_revision: str | None = field(default=None, metadata={
        "help": "git revision (commit sha) of a hub dataset: pin it for reproducible ingests"})
    # synthetic
    synthetic: dict = field(default_factory=dict, metadata={
        "help": "synthetic: fields of fgpo_tasks.synthetic.SyntheticConfig (n_pairs, seed, ...)"})

    def __post_init__(self):
        check(self.max_row_bytes > 0, f"max_row_bytes must be > 0, got {self.max_row_bytes}")
        check(self.min_margin > 0, f"min_margin must be > 0 (equal ratings never make a pair), "
                                   f"got {self.min_margin}")
        check(self.max_pairs_per_prompt is None or self.max_pairs_per_prompt >= 1,
              f"max_pairs_per_prompt must be >= 1 or null, got {self.max_pairs_per_prompt}")
        if self.aspects is not None:
            check(len(self.aspects) >= 1 and len(set(self.aspects)) == len(self.aspects),
                  f"aspects must be a non-empty list without repeats, got {self.aspects}")
            unknown = sorted(set(self.lower_is_better) - set(self.aspects))
            check(not unknown, f"lower_is_better names aspects not in aspects: {unknown}")
        check(sum(map(bool, (self.aspect, self.aspect_column, self.aspect_from_file_name))) <= 1,
              f"set one of aspect, aspect_column, aspect_from_file_name (got {self.aspect!r}, "
              f"{self.aspect_column!r}, {self.aspect_from_file_name!r})")
        check(0.0 <= self.max_quarantine_fraction <= 1.0,
              f"max_quarantine_fraction must be in [0, 1], got {self.max_quarantine_fraction}")
        check(len(self.response_columns) == 2 and len(set(self.response_columns)) == 2,
              f"response_columns must name two different columns, got {self.response_columns}")
        bad = sorted(set(self.columns) - set(COLUMN_KEYS))
        check(not bad, f"columns has unknown key(s) {bad}; known: {list(COLUMN_KEYS)}")
        check(set(self.chosen_rating_columns) == set(self.rejected_rating_columns),
              f"chosen_rating_columns and rejected_rating_columns must name the same aspects, got "
              f"{sorted(self.chosen_rating_columns)} and {sorted(self.rejected_rating_columns)}")
