"""The vectorised toy world keeps its truth: labels follow true_score, conflicts are as asked."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from fgpo_tasks import contract, synthetic


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
