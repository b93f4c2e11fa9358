"""The vectorised toy world keeps its truth: labels follow true_score, conflicts are as asked."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from fgpo_tasks import contract, synthetic
from fgpo_tasks.errors import ConfigError


def _other_sign_sum(row: dict, aspects) -> float:
    """Summed sign of the other aspects' true-score differences, chosen minus rejected."""
    sc, sr = row["ratings_chosen"], row["ratings_rejected"]
    return float(sum(np.sign(sc[a] - sr[a]) for a in aspects if a != row["aspect"]))


def test_same_seed_same_rows_other_seed_other_rows():
    cfg = synthetic.SyntheticConfig(n_pairs=300, seed=11)
    rows = synthetic.generate(cfg)
    assert rows == synthetic.generate(synthetic.SyntheticConfig(n_pairs=300, seed=11))
    assert rows != synthetic.generate(synthetic.SyntheticConfig(n_pairs=300, seed=12))
    assert len(rows) == 300 and len({r["pair_id"] for r in rows}) == 300
    assert [r["source_line"] for r in rows] == list(range(1, 301))


@pytest.mark.parametrize("conflict_rate", [0.0, 0.2, 0.5, 1.0])
def test_conflicting_share_is_the_conflict_rate(conflict_rate):
    cfg = synthetic.SyntheticConfig(n_pairs=2000, conflict_rate=conflict_rate, seed=1)
    others = np.array([_other_sign_sum(r, cfg.aspects) for r in synthetic.generate(cfg)])
    assert not (others == 0).any()  # every pair is either conflicting or agreeing
    assert abs((others < 0).mean() - conflict_rate) < 0.04  # binomial sd at n=2000 is <= 0.011


def test_labels_and_ratings_are_the_true_scores_of_the_texts():
    cfg = synthetic.SyntheticConfig(n_pairs=1500, conflict_rate=0.3, seed=2)
    for r in synthetic.generate(cfg):
        assert r["ratings_chosen"] == synthetic.true_scores(r["prompt"], r["chosen"], cfg.aspects)
        assert r["ratings_rejected"] == synthetic.true_scores(r["prompt"], r["rejected"], cfg.aspects)
        assert r["ratings_chosen"][r["aspect"]] > r["ratings_rejected"][r["aspect"]]
        assert synthetic.correct_answer(r["prompt"]) is not None
        assert r == contract.make_pair(prompt=r["prompt"], chosen=r["chosen"], rejected=r["rejected"],
                                       aspect=r["aspect"], source="synthetic", batch_id="synthetic",
                                       ratings_chosen=r["ratings_chosen"],
                                       ratings_rejected=r["ratings_rejected"],
                                       source_line=r["source_line"])


def test_the_world_covers_every_answer_kind_and_sentence_count():
    rows = synthetic.generate(synthetic.SyntheticConfig(n_pairs=2000, seed=3))
    responses = [(r["prompt"], t) for r in rows for t in (r["chosen"], r["rejected"])]
    correct = [synthetic.true_score("correctness", p, t) for p, t in responses]
    assert 0.3 < np.mean(correct) < 0.7  # right or wrong answers, both common
    assert {synthetic.true_score("politeness", p, t) for p, t in responses} == {0.0, 1.0, 2.0, 3.0}
    assert {synthetic.true_score("detail", p, t) for p, t in responses} == {0.0, 1.0, 2.0, 3.0}
    sums = sum(bool(synthetic._SUM.search(r["prompt"])) for r in rows)
    assert 0.4 < sums / len(rows) < 0.6  # half sums, half capitals


def test_aspects_are_round_robin_and_only_the_configured_ones():
    rows = synthetic.generate(synthetic.SyntheticConfig(n_pairs=1000, seed=4))
    assert Counter(r["aspect"] for r in rows) == {a: 250 for a in synthetic.ASPECTS}
    cfg = synthetic.SyntheticConfig(n_pairs=300, aspects=("politeness", "conciseness", "detail"), seed=4)
    rows = synthetic.generate(cfg)
    assert {r["aspect"] for r in rows} == set(cfg.aspects)
    assert all(set(r["ratings_chosen"]) == set(cfg.aspects) for r in rows)


def test_label_noise_flips_that_share_of_labels():
    cfg = synthetic.SyntheticConfig(n_pairs=2000, label_noise=0.2, seed=5)
    wrong = np.mean([r["ratings_chosen"][r["aspect"]] < r["ratings_rejected"][r["aspect"]]
                     for r in synthetic.generate(cfg)])
    assert abs(wrong - 0.2) < 0.03


def test_a_larger_pool_starts_with_a_smaller_pools_rows():
    small = synthetic.generate(synthetic.SyntheticConfig(n_pairs=500, seed=6, conflict_rate=0.3))
    large = synthetic.generate(synthetic.SyntheticConfig(n_pairs=5000, seed=6, conflict_rate=0.3))
    assert small == large[:500]
    assert len(large) == 5000 > synthetic.BLOCK  # the large pool spans more than one block
    # across a block boundary too
    over = synthetic.generate(synthetic.SyntheticConfig(n_pairs=synthetic.BLOCK + 7, seed=6, conflict_rate=0.3))
    assert over == large[:synthetic.BLOCK + 7]


@pytest.mark.parametrize("is_sum", [True, False])
def test_code_scores_are_the_true_scores_of_the_rendered_text(is_sum):
    """Every response code (answer right or wrong, each polite and detail subset), rendered for a
    sum and a capital prompt with every wrong answer, scores by true_score as _CODE_SCORES says."""
    prompt = "What is 3 plus 4?" if is_sum else synthetic._CAPITAL_PROMPTS[5]
    country = 5
    n_wrong = len(synthetic._SUM_ERRORS) if is_sum else len(synthetic._WRONG_CAPITALS[country])
    texts = set()
    for code in range(128):
        for wrong in range(n_wrong):
            text = synthetic._text(is_sum, 7, country, code, wrong)
            texts.add(text)
            expected = dict(zip(synthetic.ASPECTS, synthetic._CODE_SCORES[code].tolist()))
            assert synthetic.true_scores(prompt, text) == expected, (code, wrong, text)
    assert len(texts) == 64 * (1 + n_wrong)  # codes and wrong answers all render differently


def test_response_codes_are_drawn_as_the_rules_say():
    """A response: right answer with probability 1/2; polite and detail subsets each of a size
    uniform in 0..3, the subset uniform given its size; all independent."""
    draws = synthetic._CODE_DRAWS
    assert len(draws) == 288 and np.mean(draws >> 6) == 0.5
    for mask_of in (lambda c: c >> 3 & 7, lambda c: c & 7):
        masks = Counter(mask_of(int(c)) for c in draws)
        assert masks == {0: 72, 7: 72, 1: 24, 2: 24, 4: 24, 3: 24, 5: 24, 6: 24}
    assert Counter((int(c) >> 6, int(c) >> 3 & 7, int(c) & 7) for c in draws) == Counter(
        (r, p, d) for r in (0, 1) for p in synthetic._SUBSET_DRAWS for d in synthetic._SUBSET_DRAWS)


def test_a_block_without_any_pair_fails_instead_of_looping(monkeypatch):
    monkeypatch.setattr(synthetic, "MAX_TRIES", 0)  # no slot may try a pair: none is found
    with pytest.raises(ConfigError, match="no toy-world pair"):
        synthetic.generate(synthetic.SyntheticConfig(n_pairs=10))
