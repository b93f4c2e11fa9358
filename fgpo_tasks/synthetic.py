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


def _prompt(rng: np.random.Generator) -> str:
    if rng.random() < 0.5:
        a, b = rng.integers(2, 99, size=2)
        return f"What is {a} plus {b}?"
    return f"What is the capital of {rng.choice(sorted(CAPITALS))}?"


def _wrong_answer(prompt: str, rng: np.random.Generator) -> str:
    right = correct_answer(prompt)
    if right.isdigit():
        return str(int(right) + int(rng.choice([-10, -2, -1, 1, 2, 10])))
    return str(rng.choice([c for c in sorted(CAPITALS.values()) if c != right]))


def _response(prompt: str, rng: np.random.Generator) -> str:
    """A random response: answer (right or wrong), some polite and some detail sentences."""
    answer = correct_answer(prompt) if rng.random() < 0.5 else _wrong_answer(prompt, rng)
    polite = [POLITE[i] for i in sorted(rng.choice(3, size=rng.integers(0, 4), replace=False))]
    detail = [DETAIL[i] for i in sorted(rng.choice(3, size=rng.integers(0, 4), replace=False))]
    parts = polite[:1] + [f"The answer is {answer}."] + detail + polite[1:]
    return " ".join(parts)


def _other_sign_sum(sw: dict, sl: dict, aspect: str, aspects) -> float:
    return float(sum(np.sign(sw[a] - sl[a]) for a in aspects if a != aspect))


def _draw_pair(prompt, aspect, want_conflict, aspects, rng, max_tries=200):
    for _ in range(max_tries):
        r1, r2 = _response(prompt, rng), _response(prompt, rng)
        s1, s2 = true_scores(prompt, r1, aspects), true_scores(prompt, r2, aspects)
        if s1[aspect] == s2[aspect]:
            continue
        (cw, sw), (cl, sl) = ((r1, s1), (r2, s2)) if s1[aspect] > s2[aspect] else ((r2, s2), (r1, s1))
        others = _other_sign_sum(sw, sl, aspect, aspects)
        if (others < 0) if want_conflict else (others > 0):
            return cw, cl, sw, sl
    return None


def generate(config: SyntheticConfig) -> list[dict]:
    """Contract rows of the toy world; deterministic for a config (seed included)."""
    rng = np.random.default_rng(config.seed)
    rows, seen, i = [], set(), 0
    while len(rows) < config.n_pairs:
        aspect = config.aspects[i % len(config.aspects)]
        i += 1
        prompt = _prompt(rng)
        want_conflict = bool(rng.random() < config.conflict_rate)
        drawn = _draw_pair(prompt, aspect, want_conflict, config.aspects, rng)
        if drawn is None:  # this prompt cannot give such a pair; draw another
            continue
        chosen, rejected, sc, sr = drawn
        if rng.random() < config.label_noise:
            chosen, rejected, sc, sr = rejected, chosen, sr, sc
        row = make_pair(prompt=prompt, chosen=chosen, rejected=rejected, aspect=aspect,
                        source="synthetic", batch_id=config.batch_id, ratings_chosen=sc,
                        ratings_rejected=sr, source_line=len(rows) + 1)
        if row["pair_id"] in seen:  # the toy world is small: skip exact repeats
            continue
        seen.add(row["pair_id"])
        rows.append(row)
    return rows
