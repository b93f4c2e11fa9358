"""A deterministic toy world with known truth: the demo's data and a controlled experiment.

Prompts are small questions with one correct answer ("What is 17 plus 25?", "What is the capital
of Peru?"). A response is assembled from parts, and each aspect's TRUE score is a rule on its text:

=============  ===========================================================================
aspect         true score (``true_score``)
=============  ===========================================================================
correctness    1.0 if the response states the correct answer ("The answer is 42."), else 0.0
politeness     number of distinct politeness phrases present (0..3)
detail         number of distinct explanation sentences present (0..3)
conciseness    minus the word count divided by 10 (shorter is better)
=============  ===========================================================================

The aspects conflict by construction: politeness and detail add words, so they cost conciseness.

How labels arise: a pair for aspect k draws two responses whose true k-scores differ, and the
one with the higher k-score is ``chosen`` (a ``label_noise`` fraction is flipped). Whether the
OTHER aspects agree is controlled: with probability ``conflict_rate`` the pair is drawn (by
rejection sampling) so that the other aspects' summed sign of score differences prefers the
*rejected* response (true PD > 0, a conflicting pair), else so that it prefers the chosen one
(true PD < 0). Each pair's true ratings of both responses ride along in ratings_chosen /
ratings_rejected, so PD from ratings is exact. Aspects are assigned round-robin, so the
per-aspect sub-datasets are disjoint and balanced. Same config, same seed: same rows.

The generator is vectorised (numpy): a response is drawn as features (right answer or not, the
wrong answer, which polite and detail sentences it has), true scores are computed from the
features by the same rules, and the rejection sampling runs for a block of pairs at once; only
the accepted pairs are rendered as text. ``tests/test_synthetic.py`` checks that the scores read
from the rendered text with ``true_score`` equal the ratings.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

from fgpo_tasks.config import check
from fgpo_tasks.contract import make_pair

ASPECTS = ("correctness", "politeness", "detail", "conciseness")
POLITE = ("Thank you for asking!", "I am happy to help.", "Please let me know if you have more questions.")
DETAIL = ("I checked this step by step.", "This comes from a well known fact.",
          "You can verify it with a quick search or a calculator.")
CAPITALS = {
    "France": "Paris", "Peru": "Lima", "Japan": "Tokyo", "Kenya": "Nairobi", "Canada": "Ottawa",
    "Egypt": "Cairo", "Norway": "Oslo", "Chile": "Santiago", "India": "Delhi", "Spain": "Madrid",
    "Italy": "Rome", "Ghana": "Accra", "Cuba": "Havana", "Nepal": "Kathmandu", "Poland": "Warsaw",
}
_SUM = re.compile(r"What is (\d+) plus (\d+)\?")
_CAPITAL = re.compile(r"What is the capital of (\w+)\?")
_ANSWER = re.compile(r"The answer is ([A-Za-z0-9]+)\.")


@dataclass
class SyntheticConfig:
    n_pairs: int = field(default=2000, metadata={"help": "pairs to generate"})
    aspects: tuple[str, ...] = field(default=ASPECTS, metadata={"help": f"subset of {ASPECTS}"})
    conflict_rate: float = field(default=0.2, metadata={
        "help": "fraction of pairs whose other aspects prefer the rejected response (true PD > 0)"})
    label_noise: float = field(default=0.0, metadata={"help": "fraction of labels flipped at random"})
    seed: int = field(default=0, metadata={"help": "random seed: same seed, same rows"})
    batch_id: str = field(default="synthetic", metadata={"help": "annotation batch id of the rows"})

    def __post_init__(self):
        self.aspects = tuple(self.aspects)
        check(self.n_pairs >= 1, f"n_pairs must be >= 1, got {self.n_pairs}")
        unknown = sorted(set(self.aspects) - set(ASPECTS))
        check(not unknown, f"unknown synthetic aspects {unknown}; known: {list(ASPECTS)}")
        check(len(self.aspects) >= 2, f"need at least 2 aspects, got {list(self.aspects)}")
        check(0.0 <= self.conflict_rate <= 1.0, f"conflict_rate must be in [0, 1], got {self.conflict_rate}")
        check(0.0 <= self.label_noise < 0.5, f"label_noise must be in [0, 0.5), got {self.label_noise}")


def correct_answer(prompt: str) -> str | None:
    """The answer the rules expect for a toy-world prompt (None for any other prompt)."""
    if m := _SUM.search(prompt):
        return str(int(m.group(1)) + int(m.group(2)))
    if m := _CAPITAL.search(prompt):
        return CAPITALS.get(m.group(1))
    return None


def true_score(aspect: str, prompt: str, response: str) -> float:
    """The exact rule-based score of ``response`` on ``aspect``: usable on generated text too."""
    if aspect == "correctness":
        m = _ANSWER.search(response)
        return float(m is not None and m.group(1) == correct_answer(prompt))
    if aspect == "politeness":
        return float(sum(p in response for p in POLITE))
    if aspect == "detail":
        return float(sum(d in response for d in DETAIL))
    if aspect == "conciseness":
        return -len(response.split()) / 10.0
    raise ValueError(f"Unknown synthetic aspect: {aspect!r}; known: {list(ASPECTS)}")


def true_scores(prompt: str, response: str, aspects=ASPECTS) -> dict[str, float]:
    return {a: true_score(a, prompt, response) for a in aspects}


_COUNTRIES = tuple(sorted(CAPITALS))
_CAPITAL_OF = tuple(CAPITALS[c] for c in _COUNTRIES)
# a wrong capital: one of the other capitals (in sorted order), drawn uniformly
_OTHER_CAPITALS = tuple(tuple(x for x in sorted(CAPITALS.values()) if x != CAPITALS[c]) for c in _COUNTRIES)
_SUM_ERRORS = np.array([-10, -2, -1, 1, 2, 10])
_POPCOUNT = np.array([bin(m).count("1") for m in range(8)])
_POLITE_WORDS = np.array([sum(len(POLITE[i].split()) for i in range(3) if m >> i & 1) for m in range(8)])
_DETAIL_WORDS = np.array([sum(len(DETAIL[i].split()) for i in range(3) if m >> i & 1) for m in range(8)])
# subsets of 3 sentences by size: row s lists the masks of size s (padded), _N_BY_SIZE[s] of them
_MASKS_BY_SIZE = np.array([[0, 0, 0, 0, 0, 0], [1, 2, 4, 1, 2, 4], [3, 5, 6, 3, 5, 6], [7, 7, 7, 7, 7, 7]])
_N_BY_SIZE = np.array([1, 3, 3, 1])


def _prompts(rng: np.random.Generator, m: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """m random prompts as (is_sum, a, b, country index): half sums of two numbers in [2, 99),
    half capitals of a uniformly drawn country."""
    is_sum = rng.random(m) < 0.5
    ab = rng.integers(2, 99, size=(m, 2))
    country = rng.integers(0, len(_COUNTRIES), size=m)
    return is_sum, ab[:, 0], ab[:, 1], country


def _responses(rng: np.random.Generator, is_sum: np.ndarray, shape: tuple) -> dict[str, np.ndarray]:
    """Random responses (one per cell of ``shape``; rows are prompts) as features: right answer
    or not, the wrong answer drawn (a sum off by one of _SUM_ERRORS / another capital), and which
    polite and detail sentences are present (each set's size uniform in 0..3, then a subset)."""
    right = rng.random(shape) < 0.5
    sum_error = _SUM_ERRORS[rng.integers(0, len(_SUM_ERRORS), size=shape)]
    other_capital = rng.integers(0, len(_COUNTRIES) - 1, size=shape)  # skips the right one
    polite = _subset_masks(rng, shape)
    detail = _subset_masks(rng, shape)
    return {"right": right, "sum_error": sum_error, "other_capital": other_capital,
            "polite": polite, "detail": detail}


def _subset_masks(rng: np.random.Generator, shape: tuple) -> np.ndarray:
    """Bit masks over 3 sentences: the size is uniform in 0..3, the subset uniform given the size."""
    size = rng.integers(0, 4, size=shape)
    return _MASKS_BY_SIZE[size, rng.integers(0, 6, size=shape) % _N_BY_SIZE[size]]


def _scores(f: dict[str, np.ndarray], aspects) -> np.ndarray:
    """(..., len(aspects)) true scores from response features (the same rules as true_score)."""
    words = 4 + _POLITE_WORDS[f["polite"]] + _DETAIL_WORDS[f["detail"]]
    by_name = {"correctness": f["right"].astype(float), "politeness": _POPCOUNT[f["polite"]].astype(float),
               "detail": _POPCOUNT[f["detail"]].astype(float), "conciseness": -words / 10.0}
    return np.stack([by_name[a] for a in aspects], axis=-1)


def _draw_pairs(rng, is_sum, aspect_idx, want_conflict, aspects, max_tries=200, tries_per_round=8):
    """For each prompt, the first of up to max_tries random response pairs whose aspect scores
    differ and whose other aspects' summed sign agrees with want_conflict (rejection sampling).
    Returns (found, features of winner, features of loser, scores of winner, of loser)."""
    m = len(is_sum)
    found = np.zeros(m, dtype=bool)
    keys = ("right", "sum_error", "other_capital", "polite", "detail")
    win = {k: np.zeros(m, dtype=np.int64) for k in keys}
    lose = {k: np.zeros(m, dtype=np.int64) for k in keys}
    sw = np.zeros((m, len(aspects)))
    sl = np.zeros((m, len(aspects)))
    other = np.ones((m, len(aspects)), dtype=bool)
    other[np.arange(m), aspect_idx] = False
    tries = 0
    while tries < max_tries and not found.all():
        todo = np.flatnonzero(~found)
        t = min(tries_per_round, max_tries - tries)
        tries += t
        f1 = _responses(rng, is_sum[todo], (len(todo), t))
        f2 = _responses(rng, is_sum[todo], (len(todo), t))
        s1, s2 = _scores(f1, aspects), _scores(f2, aspects)
        own = aspect_idx[todo][:, None, None]
        k1 = np.take_along_axis(s1, own, axis=2)[..., 0]
        k2 = np.take_along_axis(s2, own, axis=2)[..., 0]
        first_wins = k1 > k2
        sign = np.sign(s1 - s2) * np.where(first_wins, 1.0, -1.0)[..., None]
        others = (sign * other[todo][:, None, :]).sum(axis=2)
        ok = (k1 != k2) & np.where(want_conflict[todo][:, None], others < 0, others > 0)
        hit = ok.any(axis=1)
        rows, col = todo[hit], ok[hit].argmax(axis=1)
        fw = first_wins[hit, col]
        for k in keys:
            a, b = f1[k][hit, col], f2[k][hit, col]
            win[k][rows], lose[k][rows] = np.where(fw, a, b), np.where(fw, b, a)
        a, b = s1[hit, col], s2[hit, col]
        sw[rows], sl[rows] = np.where(fw[:, None], a, b), np.where(fw[:, None], b, a)
        found[rows] = True
    return found, win, lose, sw, sl


def _template(polite: int, detail: int) -> tuple[str, str]:
    """(text before the answer, text after it) of a response with these sentence masks: the first
    polite sentence, "The answer is X.", the detail sentences, the other polite sentences."""
    p = [POLITE[i] for i in range(3) if polite >> i & 1]
    d = [DETAIL[i] for i in range(3) if detail >> i & 1]
    return "".join(s + " " for s in p[:1]) + "The answer is ", "." + "".join(" " + s for s in d + p[1:])


_TEMPLATES = tuple(_template(pm, dm) for pm in range(8) for dm in range(8))  # [polite * 8 + detail]


def _answers(is_sum, a, b, country, f) -> list[str]:
    """The answer text of each response: the sum (or off by its error), the capital (or another)."""
    total = a + b + np.where(f["right"] == 1, 0, f["sum_error"])
    cap = np.where(f["right"] == 1, -1, f["other_capital"])
    return [str(t) if s else (_CAPITAL_OF[c] if k < 0 else _OTHER_CAPITALS[c][k])
            for s, t, c, k in zip(is_sum.tolist(), total.tolist(), country.tolist(), cap.tolist())]


def _texts(is_sum, a, b, country, f) -> list[str]:
    """Response texts from features (answer, polite and detail sentences)."""
    templates = [_TEMPLATES[t] for t in (f["polite"] * 8 + f["detail"]).tolist()]
    return [h + ans + t for (h, t), ans in zip(templates, _answers(is_sum, a, b, country, f))]


def generate(config: SyntheticConfig) -> list[dict]:
    """Contract rows of the toy world; deterministic for a config (seed included).

    Vectorised: prompts, labels and rejection-sampled response pairs are drawn for a block of
    candidates at once (numpy), then the block's accepted rows are rendered as text."""
    rng = np.random.default_rng(config.seed)
    aspects = tuple(config.aspects)
    rows, seen, i = [], set(), 0
    while len(rows) < config.n_pairs:
        m = max(64, int((config.n_pairs - len(rows)) * 1.1))
        is_sum, a, b, country = _prompts(rng, m)
        aspect_idx = (i + np.arange(m)) % len(aspects)
        i += m
        want_conflict = rng.random(m) < config.conflict_rate
        flip = rng.random(m) < config.label_noise
        found, win, lose, sw, sl = _draw_pairs(rng, is_sum, aspect_idx, want_conflict, aspects)
        keep = np.flatnonzero(found)
        is_sum, a, b, country, aspect_idx, flip = (x[keep] for x in (is_sum, a, b, country, aspect_idx, flip))
        win, lose = ({k: v[keep] for k, v in f.items()} for f in (win, lose))
        chosen_texts = _texts(is_sum, a, b, country, win)
        rejected_texts = _texts(is_sum, a, b, country, lose)
        prompts = [f"What is {x} plus {y}?" if s else f"What is the capital of {_COUNTRIES[c]}?"
                   for s, x, y, c in zip(is_sum.tolist(), a.tolist(), b.tolist(), country.tolist())]
        for prompt, chosen, rejected, k, fl, rw, rl in zip(
                prompts, chosen_texts, rejected_texts, aspect_idx.tolist(), flip.tolist(),
                sw[keep].tolist(), sl[keep].tolist()):
            sc, sr = dict(zip(aspects, rw)), dict(zip(aspects, rl))
            if fl:
                chosen, rejected, sc, sr = rejected, chosen, sr, sc
            row = make_pair(prompt=prompt, chosen=chosen, rejected=rejected, aspect=aspects[k],
                            source="synthetic", batch_id=config.batch_id, ratings_chosen=sc,
                            ratings_rejected=sr, source_line=len(rows) + 1)
            if row["pair_id"] in seen:  # the toy world is small: skip exact repeats
                continue
            seen.add(row["pair_id"])
            rows.append(row)
            if len(rows) == config.n_pairs:
                break
    return rows
