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

How it is drawn (vectorised, numpy): pair slots come in fixed blocks of ``BLOCK`` slots, each with
its own random stream derived from (seed, block index), so a larger pool starts with a smaller
pool's rows. Within a block a response is a code (right answer or not; which polite and which
detail sentences, as 3-bit masks), and its true scores come from the code by the rules above
(``_CODE_SCORES``; ``tests/test_synthetic.py`` checks them against ``true_score`` on the text).
The rejection sampling draws candidate response pairs for every slot at once and keeps each
slot's first acceptable one; only the accepted pairs are rendered as text.
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


BLOCK = 4096  # pair slots per block: fixed, so the rows of a seed do not depend on n_pairs
MAX_TRIES = 200  # candidate response pairs per slot before its prompt is given up
TRIES_PER_ROUND = 8  # candidate pairs drawn at once for each slot still without a pair

_COUNTRIES = tuple(sorted(CAPITALS))
_CAPITAL_PROMPTS = tuple(f"What is the capital of {c}?" for c in _COUNTRIES)
_CAPITAL_OF = tuple(CAPITALS[c] for c in _COUNTRIES)
# a wrong capital is one of the other 14 (in sorted order); a wrong sum is off by one of these
_WRONG_CAPITALS = tuple(tuple(x for x in sorted(CAPITALS.values()) if x != CAPITALS[c]) for c in _COUNTRIES)
_SUM_ERRORS = (-10, -2, -1, 1, 2, 10)
_ANSWER_WORDS = len("The answer is X.".split())  # an answer is one word ("42", "Lima", "-6")


# A response code: bit 6 = states the right answer; bits 3-5 = which POLITE sentences it has
# (bit i: sentence i); bits 0-2 = which DETAIL sentences. The wrong answer (if any) is drawn apart:
# no score depends on which wrong answer it is.
def _polite_mask(code: int) -> int:
    return code >> 3 & 7


def _detail_mask(code: int) -> int:
    return code & 7


def _sentences(sentences: tuple[str, ...], mask: int) -> list[str]:
    return [s for i, s in enumerate(sentences) if mask >> i & 1]


def _code_scores(code: int) -> tuple[float, ...]:
    """True scores (in ASPECTS order) of every response with this code, by the rules of
    true_score: correctness = right answer, politeness / detail = sentences present, conciseness =
    -(word count) / 10 with the word count summed over the sentences."""
    polite, detail = _sentences(POLITE, _polite_mask(code)), _sentences(DETAIL, _detail_mask(code))
    words = _ANSWER_WORDS + sum(len(s.split()) for s in polite + detail)
    return float(code >> 6), float(len(polite)), float(len(detail)), -words / 10.0


def _template(code: int) -> tuple[str, str]:
    """(text before the answer, text after it) of a response: the first polite sentence,
    "The answer is X.", the detail sentences, the other polite sentences (each in index order)."""
    polite, detail = _sentences(POLITE, _polite_mask(code)), _sentences(DETAIL, _detail_mask(code))
    return ("".join(s + " " for s in polite[:1]) + "The answer is ",
            "." + "".join(" " + s for s in detail + polite[1:]))


_CODE_SCORES = np.array([_code_scores(c) for c in range(128)])  # [code, aspect in ASPECTS order]
_TEMPLATES = tuple(_template(c) for c in range(128))
# A sentence subset: its size uniform in 0..3, then a subset of that size uniformly; as 12 equally
# likely outcomes: the empty set 3 times, each single and each pair once, all three 3 times.
_SUBSET_DRAWS = (0, 0, 0, 1, 2, 4, 3, 5, 6, 7, 7, 7)
# A random response code: right answer with probability 1/2, polite and detail subsets as above,
# all independent; as 2 * 12 * 12 equally likely outcomes.
_CODE_DRAWS = np.array([r << 6 | p << 3 | d for r in (0, 1) for p in _SUBSET_DRAWS for d in _SUBSET_DRAWS])


def _block_rng(seed: int, block: int) -> np.random.Generator:
    """The random stream of one block: the block-th child of the seed's SeedSequence."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(block,)))


def _draw_pairs(rng: np.random.Generator, aspect: np.ndarray, want_conflict: np.ndarray,
                scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rejection sampling for every slot at once. For slot i, the first of up to MAX_TRIES random
    response pairs whose scores on ``aspect[i]`` differ and whose other aspects' summed sign of
    score differences (winner minus loser) is < 0 if ``want_conflict[i]``, else > 0. ``scores``
    is [code, aspect]. Returns the (winner, loser) codes of each slot, -1 where none was found."""
    m = len(aspect)
    winner, loser = np.full(m, -1), np.full(m, -1)
    other = np.ones((m, scores.shape[1]))
    other[np.arange(m), aspect] = 0.0
    todo, tries = np.arange(m), 0
    while todo.size and tries < MAX_TRIES:
        t = min(TRIES_PER_ROUND, MAX_TRIES - tries)
        tries += t
        c1 = _CODE_DRAWS[rng.integers(0, len(_CODE_DRAWS), size=(todo.size, t))]
        c2 = _CODE_DRAWS[rng.integers(0, len(_CODE_DRAWS), size=(todo.size, t))]
        sign = np.sign(scores[c1] - scores[c2])  # [slot, try, aspect], first minus second
        own = np.take_along_axis(sign, aspect[todo][:, None, None], axis=2)[..., 0]
        others = (sign * other[todo][:, None, :]).sum(axis=2) * own  # winner minus loser
        ok = (own != 0) & np.where(want_conflict[todo][:, None], others < 0, others > 0)
        hit = ok.any(axis=1)
        col = ok[hit].argmax(axis=1)  # the first acceptable try
        a, b = c1[hit, col], c2[hit, col]
        first_wins = own[hit, col] > 0
        winner[todo[hit]] = np.where(first_wins, a, b)
        loser[todo[hit]] = np.where(first_wins, b, a)
        todo = todo[~hit]
    return winner, loser


def _draw_block(config: SyntheticConfig, block: int) -> dict[str, np.ndarray]:
    """The pairs of one block of BLOCK slots as codes, only the slots that found a pair (a prompt
    that cannot give such a pair is dropped: the next slot draws another). Slot s of the pool
    (s = block * BLOCK + i) is for aspect s mod len(aspects): round-robin."""
    rng = _block_rng(config.seed, block)
    aspects = config.aspects
    aspect = (block * BLOCK + np.arange(BLOCK)) % len(aspects)
    is_sum = rng.random(BLOCK) < 0.5  # half sums of two numbers in [2, 99), half capitals
    ab = rng.integers(2, 99, size=(BLOCK, 2))
    country = rng.integers(0, len(_COUNTRIES), size=BLOCK)
    want_conflict = rng.random(BLOCK) < config.conflict_rate
    flip = rng.random(BLOCK) < config.label_noise
    scores = _CODE_SCORES[:, [ASPECTS.index(a) for a in aspects]]
    winner, loser = _draw_pairs(rng, aspect, want_conflict, scores)
    # which wrong answer each response states if it is wrong: uniform over the kind's choices
    wrong = rng.integers(0, np.where(is_sum, len(_SUM_ERRORS), len(_WRONG_CAPITALS[0]))[:, None],
                         size=(BLOCK, 2))
    wrong_winner, wrong_loser = wrong[:, 0], wrong[:, 1]
    # label noise: a flipped pair presents the loser as chosen
    chosen, rejected = np.where(flip, loser, winner), np.where(flip, winner, loser)
    wrong_chosen = np.where(flip, wrong_loser, wrong_winner)
    wrong_rejected = np.where(flip, wrong_winner, wrong_loser)
    keep = winner >= 0
    return {"is_sum": is_sum[keep], "a": ab[keep, 0], "b": ab[keep, 1], "country": country[keep],
            "aspect": aspect[keep], "chosen": chosen[keep], "rejected": rejected[keep],
            "wrong_chosen": wrong_chosen[keep], "wrong_rejected": wrong_rejected[keep]}


def _answer(is_sum: bool, total: int, country: int, code: int, wrong: int) -> str:
    if is_sum:
        return str(total if code >> 6 else total + _SUM_ERRORS[wrong])
    return _CAPITAL_OF[country] if code >> 6 else _WRONG_CAPITALS[country][wrong]


def _text(is_sum: bool, total: int, country: int, code: int, wrong: int) -> str:
    head, tail = _TEMPLATES[code]
    return head + _answer(is_sum, total, country, code, wrong) + tail


def _render(config: SyntheticConfig, drawn: dict[str, np.ndarray]):
    """Yield (prompt, chosen, rejected, aspect, ratings_chosen, ratings_rejected) of a block's
    pairs, in slot order, lazily: a small pool renders only the rows it keeps."""
    aspects = config.aspects
    scores = [tuple(s) for s in _CODE_SCORES[:, [ASPECTS.index(a) for a in aspects]].tolist()]
    columns = [drawn[k].tolist() for k in ("is_sum", "a", "b", "country", "aspect", "chosen",
                                           "rejected", "wrong_chosen", "wrong_rejected")]
    for is_sum, a, b, country, k, chosen, rejected, wc, wr in zip(*columns):
        prompt = f"What is {a} plus {b}?" if is_sum else _CAPITAL_PROMPTS[country]
        yield (prompt, _text(is_sum, a + b, country, chosen, wc), _text(is_sum, a + b, country, rejected, wr),
               aspects[k], dict(zip(aspects, scores[chosen])), dict(zip(aspects, scores[rejected])))


def generate(config: SyntheticConfig) -> list[dict]:
    """Contract rows of the toy world; deterministic for a config (seed included). Rows come
    block by block, so ``generate`` with more pairs starts with the rows of fewer."""
    rows, seen, block = [], set(), 0
    while len(rows) < config.n_pairs:
        before = len(rows)
        for prompt, chosen, rejected, aspect, sc, sr in _render(config, _draw_block(config, block)):
            row = make_pair(prompt=prompt, chosen=chosen, rejected=rejected, aspect=aspect,
                            source="synthetic", batch_id=config.batch_id, ratings_chosen=sc,
                            ratings_rejected=sr, source_line=len(rows) + 1)
            if row["pair_id"] in seen:  # the toy world is small: skip exact repeats
                continue
            seen.add(row["pair_id"])
            rows.append(row)
            if len(rows) == config.n_pairs:
                break
        check(len(rows) > before, f"no toy-world pair satisfies this config in {BLOCK} tries: {config}")
        block += 1
    return rows
