"""Format adapters: one raw row in, contract pairs (or rated responses to pair) out.

``parse_row`` is a flat if/elif over the format name. A row that does not fit its format raises
``RowError`` (field, kind, reason); the caller quarantines it. Formats that rate single responses
(rated-responses, ultrafeedback) return ``RatedResponse`` items, paired later per source by
``pair_rated_responses`` so every response pair lands in exactly ONE aspect's sub-dataset.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any, Sequence

import numpy as np

from fgpo_tasks.contract import make_pair, prompt_key
from fgpo_tasks.errors import ConfigError
from fgpo_tasks.ingest.config import FORMATS, IngestConfig
from fgpo_tasks.ingest.readers import Row
from fgpo_tasks.provenance import sha256_hex

log = logging.getLogger(__name__)

GROUPED_FORMATS = ("rated-responses", "ultrafeedback")
PKU_ASPECTS = ("helpful", "safe")
# HelpSteer2 / SteerLM chat markers: "\n<extra_id_1>User\n" starts a user turn, and so on.
_TURN = re.compile(r"\n?<extra_id_\d+>(System|User|Assistant)\n")
_ASPECT_FILE = re.compile(r"^(.+?)_preference")
_SCORE_0 = re.compile(r"^(.+)_score_0$")
_SURROGATE = re.compile("[\ud800-\udfff]")  # valid JSON ("\\ud800") but not encodable text


class RowError(Exception):
    """A row that does not fit its format: quarantined, never a traceback."""

    def __init__(self, field: str | None, kind: str, reason: str):
        self.field, self.kind, self.reason = field, kind, reason
        super().__init__(f"{field}: {reason}" if field else reason)


@dataclass(frozen=True)
class RatedResponse:
    prompt: str | tuple            # text, or the conversation as a tuple of {role, content}
    response: str
    ratings: tuple                 # ((aspect, rating or None), ...)
    source: str
    line: int


@dataclass
class Context:
    """What the adapters know about the source being read."""
    fmt: str
    batch_id: str
    config: IngestConfig
    rating_aspects: list[str] | None = None  # rated-responses: found in the first rated row


# ---------------------------------------------------------------------------- field helpers

def lookup(data: dict, name: str, default: Any = None) -> Any:
    """``data[name]``, where a dotted name reaches into nested objects: 'metadata.rating_chosen'
    is ``data["metadata"]["rating_chosen"]`` (a literal key holding the dot wins; an object
    stored as JSON text, as in CSV, is parsed on the way)."""
    if name in data:
        return data[name]
    if "." not in name:
        return default
    value: Any = data
    for part in name.split("."):
        if isinstance(value, str) and value.lstrip().startswith("{"):
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                return default
        if not isinstance(value, dict) or part not in value:
            return default
        value = value[part]
    return value


_ABSENT = object()


def present(data: dict, name: str) -> bool:
    return lookup(data, name, _ABSENT) is not _ABSENT


def _get(data: dict, name: str, label: str | None = None) -> Any:
    value = lookup(data, name)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        raise RowError(label or name, "missing_field", "missing (or null)")
    return value


def text(data: dict, name: str, label: str | None = None) -> str:
    value = _get(data, name, label)
    if not isinstance(value, str):
        raise RowError(label or name, "wrong_type", f"expected text, got {type(value).__name__}")
    if not value.strip():
        raise RowError(label or name, "empty_field", "empty text")
    _encodable(value, label or name)
    return value


def _encodable(value: str, label: str) -> None:
    if _SURROGATE.search(value):
        raise RowError(label, "invalid_utf8", "text holds a lone surrogate (not valid Unicode)")


def as_number(value: Any, label: str, loose: bool) -> float:
    """A finite float from int/float (and from numeric text when the file is text, as CSV is)."""
    if isinstance(value, bool):
        raise RowError(label, "wrong_type", "expected a number, got bool")
    if isinstance(value, str) and loose:
        if not value.strip():
            raise RowError(label, "missing_field", "missing (empty cell)")
        try:
            value = float(value)
        except ValueError:
            raise RowError(label, "wrong_type", f"expected a number, got {value[:40]!r}") from None
    if not isinstance(value, (int, float)):
        raise RowError(label, "wrong_type", f"expected a number, got {type(value).__name__}")
    if not math.isfinite(value):
        raise RowError(label, "bad_value", f"not a finite number: {value}")
    return float(value)


def number(data: dict, name: str, loose: bool, label: str | None = None) -> float:
    return as_number(_get(data, name, label), label or name, loose)


def choice(data: dict, name: str, loose: bool, allowed=(0, 1)) -> int:
    value = number(data, name, loose)
    if not value.is_integer() or int(value) not in allowed:
        raise RowError(name, "bad_value", f"expected one of {list(allowed)}, got {lookup(data, name)!r}")
    return int(value)


def messages(value: Any, label: str) -> list[dict]:
    """A list of {role, content} with text values, as chat datasets store conversations."""
    if not isinstance(value, (list, tuple)) or not value:
        raise RowError(label, "wrong_type", "expected a non-empty list of {role, content} messages")
    out = []
    for i, m in enumerate(value):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) \
                or not isinstance(m.get("content"), str):
            raise RowError(f"{label}[{i}]", "wrong_type", "expected {role: text, content: text}")
        _encodable(m["role"] + m["content"], f"{label}[{i}]")
        out.append({"role": m["role"], "content": m["content"]})
    return out


def normalize_prompt(msgs: list[dict]) -> str | list[dict]:
    """A lone user turn is plain text, so the same prompt gets the same pair_id in every format."""
    if len(msgs) == 1 and msgs[0]["role"] == "user":
        return msgs[0]["content"]
    return msgs


def parse_conversation(prompt: str) -> str | list[dict]:
    """HelpSteer2's multi-turn prompt text as {role, content} messages (plain text if one turn).

    'Hi\\n<extra_id_1>Assistant\\nHello\\n<extra_id_1>User\\nBye' ->
    [user: Hi, assistant: Hello, user: Bye]. The text before the first marker is a user turn.
    """
    parts = _TURN.split(prompt)
    if len(parts) == 1:
        return prompt
    msgs = [{"role": "user", "content": parts[0]}] if parts[0].strip() else []
    msgs += [{"role": role.lower(), "content": content} for role, content in zip(parts[1::2], parts[2::2])]
    return normalize_prompt(msgs)


def _ratings_mapping(value: Any, label: str, loose: bool) -> dict[str, float | None]:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise RowError(label, "wrong_type", "expected a mapping aspect -> rating (or its JSON)") from None
    if not isinstance(value, dict):
        raise RowError(label, "wrong_type",
                       f"expected a mapping aspect -> rating, got {type(value).__name__}")
    return {str(k): None if v is None else as_number(v, f"{label}.{k}", loose) for k, v in value.items()}


def _not_identical(chosen: str, rejected: str, label: str) -> None:
    if chosen == rejected:
        raise RowError(label, "identical_responses", "chosen and rejected are the same text")


def _source(ctx: Context, row: Row) -> str:
    return f"{ctx.fmt}:{row.file.rel}"


# ---------------------------------------------------------------------------- formats

def parse_row(row: Row, ctx: Context) -> list:
    """Contract pairs (or RatedResponse items for the grouped formats) from one raw row."""
    fmt = ctx.fmt
    if fmt == "helpsteer2-aspects":
        return _helpsteer2_aspects(row, ctx)
    elif fmt == "rated-responses":
        return _rated_response(row, ctx)
    elif fmt == "ultrafeedback":
        return _ultrafeedback(row, ctx)
    elif fmt == "pku-saferlhf":
        return _pku_saferlhf(row, ctx)
    elif fmt == "trl":
        return _preference(row, ctx, implicit_prompt=True)
    elif fmt == "generic":
        return _preference(row, ctx, implicit_prompt=False)
    raise ConfigError(f"Unknown format {fmt!r}; known formats: {', '.join(FORMATS)}")


def file_aspect(rel: str, aspect_map: dict[str, str]) -> tuple[str | None, str | None]:
    """(aspect label, name aspect) of a per-aspect file, from its name.

    The name aspect is the text before '_preference' ('coherence_preference_test.jsonl' ->
    'coherence'), else the text before the first '_' ('helpfulness_eval.jsonl' -> 'helpfulness');
    a name without '_' names no aspect. aspect_map renames by file name, file stem or name aspect
    (and is the way to name an aspect that holds '_': {instruction_following_eval:
    instruction_following}). (None, None) when the name says nothing.
    """
    name = PurePosixPath(rel).name
    stem = name.split(".")[0]
    m = _ASPECT_FILE.match(stem)
    prefix = m.group(1) if m else (stem.split("_")[0] or None if "_" in stem else None)
    for key in (name, stem, prefix):
        if key is not None and key in aspect_map:
            return aspect_map[key], prefix
    return prefix, prefix


def _mapped(rel: str, aspect_map: dict[str, str]) -> bool:
    name = PurePosixPath(rel).name
    stem = name.split(".")[0]
    return name in aspect_map or stem in aspect_map


def _helpsteer2_aspects(row: Row, ctx: Context) -> list[dict]:
    """{prompt, response_0, response_1, better_response_id[, <a>_score_0, <a>_score_1]}.

    The aspect: ``aspect`` (config / --aspect), else aspect_map, else the file name
    ('<aspect>_preference*' or '<aspect>_*'), else the row's one pair of score fields. Score
    fields are optional (label-only files); when present they become the ratings.
    """
    d, loose, cfg = row.data, row.loose, ctx.config
    prompt = text(d, "prompt")
    responses = [text(d, "response_0"), text(d, "response_1")]
    better = choice(d, "better_response_id", loose)
    label, prefix = file_aspect(row.file.rel, cfg.aspect_map)
    if row.file.hub_id is not None and not _mapped(row.file.rel, cfg.aspect_map):
        label = prefix = None  # a hub split's name ('train_prefs') is not an aspect
    found = sorted(m.group(1) for k in d if (m := _SCORE_0.match(k)))
    explicit = bool(cfg.aspect) or _mapped(row.file.rel, cfg.aspect_map) or \
        (prefix is not None and prefix in cfg.aspect_map)
    if prefix in found:
        score_prefix = prefix
    elif len(found) == 1 and (explicit or prefix is None):
        score_prefix = found[0]
    elif found and prefix is not None and not explicit:
        raise RowError(f"{found[0]}_score_0", "aspect_mismatch",
                       f"the file name {PurePosixPath(row.file.rel).name!r} reads as aspect "
                       f"{prefix!r} ('<aspect>_*.jsonl') but the row's score fields are for {found}; "
                       "rename the file or set aspect_map / --aspect")
    elif len(found) > 1:
        raise RowError("<aspect>_score_0", "ambiguous_aspect",
                       f"score fields for several aspects {found}; set aspect_map or --aspect")
    else:
        score_prefix = None
    aspect = cfg.aspect or (label if label is not None and (explicit or prefix in found or not found)
                            else None) or cfg.aspect_map.get(score_prefix or "", score_prefix)
    if not aspect:
        raise RowError("better_response_id", "unknown_aspect",
                       "cannot tell the aspect: the file name has no '<aspect>_' part and the row "
                       "no '<aspect>_score_0' field; name the file '<aspect>_*.jsonl' or set "
                       "aspect_map / --aspect")
    _not_identical(responses[0], responses[1], "response_1")
    rc = rr = None
    if score_prefix is not None:
        scores = [number(d, f"{score_prefix}_score_0", loose), number(d, f"{score_prefix}_score_1", loose)]
        rc, rr = {aspect: scores[better]}, {aspect: scores[1 - better]}
    return [make_pair(prompt=parse_conversation(prompt), chosen=responses[better],
                      rejected=responses[1 - better], aspect=aspect, source=_source(ctx, row),
                      batch_id=ctx.batch_id, ratings_chosen=rc, ratings_rejected=rr,
                      source_line=row.line)]


def _rated_response(row: Row, ctx: Context) -> list[RatedResponse]:
    """HelpSteer / HelpSteer2 native: {prompt, response, <aspect>: rating, ...}."""
    d, loose = row.data, row.loose
    prompt = parse_conversation(text(d, "prompt"))
    response = text(d, "response")
    if ctx.rating_aspects is None:
        ctx.rating_aspects = ctx.config.aspects or _numeric_columns(d, loose)
        if not ctx.rating_aspects:
            ctx.rating_aspects = None
            raise RowError(None, "missing_field", "no rating columns (numbers besides prompt/response)")
        if not ctx.config.aspects:
            log.info("rated-responses: rating columns %s, found on line %d of %s (set 'aspects' to "
                     "choose them)", ctx.rating_aspects, row.line, row.file.display)
    ratings = []
    for a in ctx.rating_aspects:
        if not present(d, a):
            raise RowError(a, "missing_field", "missing rating")
        v = lookup(d, a)
        empty = v is None or (isinstance(v, float) and math.isnan(v)) or (loose and v == "")
        ratings.append((a, None if empty else as_number(v, a, loose)))
    return [RatedResponse(_hashable(prompt), response, tuple(ratings), _source(ctx, row), row.line)]


def _numeric_columns(d: dict, loose: bool) -> list[str]:
    out = []
    for k, v in d.items():
        if k in ("prompt", "response"):
            continue
        try:
            as_number(v, k, loose)
            out.append(k)
        except RowError:
            pass
    return out


def _ultrafeedback(row: Row, ctx: Context) -> list[RatedResponse]:
    """openbmb/UltraFeedback: {instruction, completions: [{response, annotations: {aspect:
    {Rating: "4", ...}}}]}; ratings are text and may be "N/A" (kept as unknown)."""
    d = row.data
    if "completions" not in d and present(d, "chosen") and present(d, "rejected"):
        return _ultrafeedback_binarized(row, ctx)
    if "completions" not in d:
        raise RowError("completions", "missing_field",
                       "missing: expected raw UltraFeedback {instruction, completions} or "
                       "binarized {prompt, chosen, rejected}")
    prompt = text(d, "instruction")
    completions = _get(d, "completions")
    if not isinstance(completions, list):
        raise RowError("completions", "wrong_type", f"expected a list, got {type(completions).__name__}")
    out = []
    for i, c in enumerate(completions):
        label = f"completions[{i}]"
        if not isinstance(c, dict):
            raise RowError(label, "wrong_type", f"expected an object, got {type(c).__name__}")
        response = text(c, "response", f"{label}.response")
        annotations = _get(c, "annotations", f"{label}.annotations")
        if not isinstance(annotations, dict):
            raise RowError(f"{label}.annotations", "wrong_type", "expected an object")
        ratings = []
        for a in ctx.config.aspects or sorted(annotations):
            entry = annotations.get(a)
            if isinstance(entry, list) and len(entry) == 1:  # some exports wrap it in a list
                entry = entry[0]
            if entry is None:
                ratings.append((a, None))
                continue
            if not isinstance(entry, dict):
                raise RowError(f"{label}.annotations.{a}", "wrong_type", "expected an object")
            ratings.append((a, _uf_rating(entry.get("Rating"), f"{label}.annotations.{a}.Rating")))
        out.append(RatedResponse(prompt, response, tuple(ratings), _source(ctx, row), row.line))
    return out


# Where binarized UltraFeedback exports keep the two ratings, in the order they are looked for.
UF_BINARIZED_RATINGS = (("score_chosen", "score_rejected"),
                        ("metadata.rating_chosen", "metadata.rating_rejected"),
                        ("rating_chosen", "rating_rejected"),
                        ("metadata.score_chosen", "metadata.score_rejected"))


def _ultrafeedback_binarized(row: Row, ctx: Context) -> list[dict]:
    """Binarized UltraFeedback: {prompt, chosen, rejected (text or messages), score_chosen /
    score_rejected or metadata.rating_chosen / metadata.rating_rejected}: already a pair, on
    ``aspect`` (default 'overall'); ratings are optional."""
    d, cfg = row.data, ctx.config
    aspect = cfg.aspect or "overall"
    chosen_cols, rejected_cols = cfg.chosen_rating_columns, cfg.rejected_rating_columns
    if not chosen_cols:
        for c, r in UF_BINARIZED_RATINGS:
            if present(d, c):
                chosen_cols, rejected_cols = {aspect: c}, {aspect: r}
                break
    return _pair_from_columns(row, ctx, implicit_prompt=True, aspect=aspect,
                              chosen_rating_columns=chosen_cols, rejected_rating_columns=rejected_cols)


def _uf_rating(value: Any, label: str) -> float | None:
    if value is None or (isinstance(value, str) and value.strip().upper() in ("N/A", "NA", "")):
        return None
    return as_number(value, label, loose=True)


def _pku_saferlhf(row: Row, ctx: Context) -> list[dict]:
    """PKU-SafeRLHF: {prompt, response_0, response_1, better_response_id, safer_response_id}."""
    d, loose, cfg = row.data, row.loose, ctx.config
    prompt = text(d, "prompt")
    responses = [text(d, "response_0"), text(d, "response_1")]
    winner = {"helpful": choice(d, "better_response_id", loose),
              "safe": choice(d, "safer_response_id", loose)}
    _not_identical(responses[0], responses[1], "response_1")
    aspects = PKU_ASPECTS
    if cfg.split_aspects:  # disjoint sub-datasets: the row's hash picks its one aspect
        aspects = (PKU_ASPECTS[int(sha256_hex(prompt, *responses)[:8], 16) % 2],)
    out = []
    for a in aspects:
        w = winner[a]
        rc = rr = None
        if cfg.pairwise_ratings:
            rc = {k: float(winner[k] == w) for k in PKU_ASPECTS}
            rr = {k: 1.0 - v for k, v in rc.items()}
        out.append(make_pair(prompt=prompt, chosen=responses[w], rejected=responses[1 - w], aspect=a,
                             source=_source(ctx, row), batch_id=ctx.batch_id, ratings_chosen=rc,
                             ratings_rejected=rr, source_line=row.line))
    return out


def _preference(row: Row, ctx: Context, implicit_prompt: bool) -> list[dict]:
    """trl / generic: prompt / chosen / rejected (text or {role, content} lists), one aspect per
    row; generic with ``label_column``: the label indexes ``response_columns``."""
    cfg = ctx.config
    if cfg.aspect_column:
        aspect = text(row.data, cfg.aspect_column)
    elif cfg.aspect:
        aspect = cfg.aspect
    else:  # aspect_from_file_name (checked before reading)
        aspect = file_aspect(row.file.rel, cfg.aspect_map)[0]
        if not aspect:
            raise RowError(None, "unknown_aspect",
                           f"aspect_from_file_name: the file name {PurePosixPath(row.file.rel).name!r} "
                           "has no '<aspect>_' part; rename it '<aspect>_*' or set aspect_map")
    return _pair_from_columns(row, ctx, implicit_prompt=implicit_prompt, aspect=aspect,
                              chosen_rating_columns=cfg.chosen_rating_columns,
                              rejected_rating_columns=cfg.rejected_rating_columns)


def _labelled_responses(d: dict, cfg: IngestConfig, loose: bool) -> tuple[Any, Any, str, str]:
    """(chosen value, rejected value, their column names) when a label column picks the winner:
    an index into response_columns (0/1, numeric text in CSV) or one of their names."""
    cols = cfg.response_columns
    value = _get(d, cfg.label_column)
    if isinstance(value, str) and value in cols:
        win = cols.index(value)
    else:
        win = int(choice(d, cfg.label_column, loose, allowed=tuple(range(len(cols)))))
    return _get(d, cols[win]), _get(d, cols[1 - win]), cols[win], cols[1 - win]


def _pair_from_columns(row: Row, ctx: Context, *, implicit_prompt: bool, aspect: str,
                       chosen_rating_columns: dict[str, str],
                       rejected_rating_columns: dict[str, str]) -> list[dict]:
    """One pair from named (possibly dotted) columns.

    TRL conversational rows keep the assistant reply in chosen/rejected; with ``implicit_prompt``
    (TRL) a row without a prompt column uses the turns chosen and rejected share as the prompt.
    """
    d, loose, cfg = row.data, row.loose, ctx.config
    col = {k: cfg.columns.get(k, k) for k in ("prompt", "chosen", "rejected", "ratings_chosen",
                                               "ratings_rejected")}
    if cfg.label_column and ctx.fmt == "generic":
        chosen_v, rejected_v, col["chosen"], col["rejected"] = _labelled_responses(d, cfg, loose)
    else:
        chosen_v, rejected_v = _get(d, col["chosen"]), _get(d, col["rejected"])
    prompt_v = lookup(d, col["prompt"])
    if prompt_v is None and implicit_prompt and isinstance(chosen_v, list) and isinstance(rejected_v, list):
        chosen_m, rejected_m = messages(chosen_v, col["chosen"]), messages(rejected_v, col["rejected"])
        if len(chosen_m) < 2 or chosen_m[:-1] != rejected_m[:-1]:
            raise RowError(col["prompt"], "missing_field",
                           "missing, and chosen/rejected share no prompt turns")
        prompt_v, chosen_v, rejected_v = chosen_m[:-1], chosen_m[-1:], rejected_m[-1:]
    if isinstance(prompt_v, (list, tuple)):
        prompt = normalize_prompt(messages(prompt_v, col["prompt"]))
    else:
        prompt = text(d, col["prompt"])
    chosen = _reply(chosen_v, col["chosen"])
    rejected = _reply(rejected_v, col["rejected"])
    _not_identical(chosen, rejected, col["rejected"])
    rc = _row_ratings(d, col["ratings_chosen"], chosen_rating_columns, loose)
    rr = _row_ratings(d, col["ratings_rejected"], rejected_rating_columns, loose)
    return [make_pair(prompt=prompt, chosen=chosen, rejected=rejected, aspect=aspect,
                      source=_source(ctx, row), batch_id=ctx.batch_id, ratings_chosen=rc,
                      ratings_rejected=rr, source_line=row.line)]


def _reply(value: Any, label: str) -> str:
    """A response as text: the text itself, or the assistant turns of a message list."""
    if isinstance(value, str):
        if not value.strip():
            raise RowError(label, "empty_field", "empty text")
        _encodable(value, label)
        return value
    if isinstance(value, (list, tuple)):
        parts = [m["content"] for m in messages(value, label) if m["role"] == "assistant"]
        if not parts or not "".join(parts).strip():
            raise RowError(label, "missing_field", "no assistant message with text")
        return "\n\n".join(parts)
    raise RowError(label, "wrong_type", f"expected text or messages, got {type(value).__name__}")


def _row_ratings(d: dict, column: str, per_aspect: dict[str, str], loose: bool) -> dict | None:
    ratings: dict[str, float | None] = {}
    if lookup(d, column) is not None:
        ratings.update(_ratings_mapping(lookup(d, column), column, loose))
    for aspect, col in per_aspect.items():
        ratings[aspect] = number(d, col, loose)
    return {k: v for k, v in ratings.items() if v is not None} or None


def _hashable(prompt: str | list[dict]) -> str | tuple:
    return prompt if isinstance(prompt, str) else tuple((m["role"], m["content"]) for m in prompt)


def _unhashable(prompt: str | tuple) -> str | list[dict]:
    return prompt if isinstance(prompt, str) else [{"role": r, "content": c} for r, c in prompt]


# ---------------------------------------------------------------------------- pairing

def _eligible(ra: dict, rb: dict, min_margin: float) -> list[str]:
    return [k for k in ra if ra[k] is not None and rb.get(k) is not None and abs(ra[k] - rb[k]) >= min_margin]


def _plan_pairs(responses: Sequence[RatedResponse], min_margin: float,
                max_pairs_per_prompt: int | None, lower_is_better: Sequence[str]) -> tuple[list, dict]:
    """(pairs as (winner, loser, aspect, winner's ratings, loser's ratings), stats).

    ``max_pairs_per_prompt`` applies while a prompt's candidates are built: they are walked in
    hash order and only its first eligible ones are kept (the rest are counted, never held)."""
    groups: dict[str, list[RatedResponse]] = defaultdict(list)
    seen: set[tuple[str, str]] = set()
    duplicates = 0
    for r in responses:
        prompt = _unhashable(r.prompt)
        key = prompt_key(prompt, None) if isinstance(prompt, str) else prompt_key("", prompt)
        if (key, r.response) in seen:  # the same response twice: first one wins
            duplicates += 1
            continue
        seen.add((key, r.response))
        groups[key].append(r)
    del seen
    candidates = []
    n_candidates, no_margin, over_limit = 0, 0, 0
    for key, rs in groups.items():
        mine = []
        for i in range(len(rs)):
            for j in range(i + 1, len(rs)):
                a, b = (rs[i], rs[j]) if rs[i].response <= rs[j].response else (rs[j], rs[i])
                mine.append((sha256_hex(key, a.response, b.response), a, b))
        n_candidates += len(mine)
        if max_pairs_per_prompt is not None and len(mine) > max_pairs_per_prompt:
            mine.sort(key=lambda c: c[0])
        kept = 0
        for h, a, b in mine:
            if max_pairs_per_prompt is not None and kept >= max_pairs_per_prompt:
                over_limit += 1
                continue
            ra, rb = dict(a.ratings), dict(b.ratings)
            eligible = _eligible(ra, rb, min_margin)
            if not eligible:
                no_margin += 1
                continue
            kept += 1
            candidates.append((h, a, b, ra, rb, eligible))
    candidates.sort(key=lambda c: c[0])

    per_aspect: Counter = Counter()
    plan = []
    lower = set(lower_is_better)
    for h, a, b, ra, rb, eligible in candidates:
        aspect = min(eligible, key=lambda k: (per_aspect[k], sha256_hex(h, k)))
        a_wins = (ra[aspect] < rb[aspect]) if aspect in lower else (ra[aspect] > rb[aspect])
        per_aspect[aspect] += 1
        plan.append((a, b, aspect, ra, rb) if a_wins else (b, a, aspect, rb, ra))
    stats = {"responses": len(responses), "duplicate_responses": duplicates, "prompts": len(groups),
             "candidate_pairs": n_candidates, "no_margin": no_margin,
             "over_max_pairs_per_prompt": over_limit, "pairs": len(plan)}
    return plan, stats


def pair_rated_responses(responses: Sequence[RatedResponse], *, batch_id: str, min_margin: float = 1.0,
                         max_pairs_per_prompt: int | None = None,
                         lower_is_better: Sequence[str] = ()) -> tuple[list[dict], dict]:
    """Pairs of responses to the same prompt, each labelled on ONE aspect (disjoint sub-datasets).

    Candidates are every two distinct responses to a prompt, taken in order of a hash of their
    texts (so the result does not depend on row order). A candidate is eligible for the aspects
    on which both are rated and differ by >= ``min_margin``; it goes to the eligible aspect with
    the fewest pairs so far (ties: by a hash of pair and aspect), which balances the aspects.
    chosen = the better one on that aspect; every aspect's rating is kept on both sides.
    Returns (contract rows, stats).
    """
    plan, stats = _plan_pairs(responses, min_margin, max_pairs_per_prompt, lower_is_better)
    out = [make_pair(prompt=_unhashable(win.prompt), chosen=win.response, rejected=lose.response,
                     aspect=aspect, source=win.source, batch_id=batch_id,
                     ratings_chosen={k: v for k, v in rw.items() if v is not None} or None,
                     ratings_rejected={k: v for k, v in rl.items() if v is not None} or None,
                     source_line=win.line)
           for win, lose, aspect, rw, rl in plan]
    return out, stats


def pair_rated_table(responses: Sequence[RatedResponse], *, batch_id: str, min_margin: float = 1.0,
                     max_pairs_per_prompt: int | None = None, lower_is_better: Sequence[str] = ()):
    """``pair_rated_responses`` as the contract's Arrow table (columns built directly, no dict
    per pair): the same rows, in the same order. Returns (table, stats)."""
    import pyarrow as pa

    from fgpo_tasks.contract import MESSAGE_TYPE, pair_id, render_messages

    plan, stats = _plan_pairs(responses, min_margin, max_pairs_per_prompt, lower_is_better)
    del responses
    n = len(plan)
    cols: dict[str, list] = {c: [None] * n for c in ("pair_id", "prompt", "prompt_messages", "chosen",
                                                     "rejected", "aspect", "source", "source_line")}
    aspects = sorted({k for _, _, _, rw, rl in plan for d in (rw, rl) for k, v in d.items() if v is not None})
    ratings = {w: {a: [None] * n for a in aspects} for w in ("chosen", "rejected")}
    rendered: dict = {}
    for i, (win, lose, aspect, rw, rl) in enumerate(plan):
        if isinstance(win.prompt, str):
            prompt, messages = win.prompt, None
        else:
            if win.prompt not in rendered:
                msgs = _unhashable(win.prompt)
                rendered[win.prompt] = (render_messages(msgs), msgs)
            prompt, messages = rendered[win.prompt]
        cols["pair_id"][i] = pair_id(prompt, win.response, lose.response, aspect, messages)
        cols["prompt"][i], cols["prompt_messages"][i] = prompt, messages
        cols["chosen"][i], cols["rejected"][i], cols["aspect"][i] = win.response, lose.response, aspect
        cols["source"][i], cols["source_line"][i] = win.source, win.line
        for which, d in (("chosen", rw), ("rejected", rl)):
            for k, v in d.items():
                if v is not None:
                    ratings[which][k][i] = float(v)
    del plan
    arrays = {c: pa.array(cols.pop(c), type=pa.string()) for c in ("pair_id", "prompt", "chosen", "rejected", "aspect")}
    arrays["prompt_messages"] = pa.array(cols.pop("prompt_messages"), type=MESSAGE_TYPE)
    arrays["source"] = pa.array(cols.pop("source"), type=pa.string())
    arrays["batch_id"] = pa.array([batch_id] * n, type=pa.string())
    for which in ("chosen", "rejected"):
        if aspects:
            children = [pa.array(ratings[which].pop(a), type=pa.float64()) for a in aspects]
            rated = np.zeros(n, dtype=bool)
            for c in children:
                rated |= c.is_valid().to_numpy(zero_copy_only=False)
            arrays[f"ratings_{which}"] = pa.StructArray.from_arrays(children, names=aspects,
                                                                   mask=pa.array(~rated))
        else:
            arrays[f"ratings_{which}"] = pa.nulls(n)
    arrays["source_line"] = pa.array(cols.pop("source_line"), type=pa.int64())
    from fgpo_tasks.contract import COLUMNS

    return pa.table({c: arrays[c] for c in COLUMNS}), stats
