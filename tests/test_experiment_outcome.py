"""The implicit-reward outcome: accuracy, its bootstrap CI by prompt, the mean-rating held-out
pairs (prompt-disjoint from training), one tiny experiment reporting it for every arm, and
``keep_models: false`` leaving shared stage outputs usable."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fgpo_tasks import contract, experiment
from fgpo_tasks.config import from_dict
from fgpo_tasks.errors import ConfigError
from fgpo_tasks.experiment import ExperimentConfig
from fgpo_tasks.experiment import outcome

ASPECTS = ["coherence", "complexity", "correctness", "helpfulness", "verbosity"]


# ------------------------------------------------------------------------------ accuracy

def test_implicit_accuracy_is_the_share_of_positive_beta_log_ratio_margins():
    ref_c, ref_r = np.array([-10.0, -10.0, -10.0, -10.0]), np.array([-12.0, -12.0, -12.0, -12.0])
    # pair 0: the policy raised chosen by 1 -> +beta; pair 1: raised rejected by 2 -> -2 beta;
    # pair 2: moved both by the same -> 0 (not a success); pair 3: lowered rejected by 3 -> +3 beta
    pol_c = ref_c + np.array([1.0, 0.0, -0.5, 0.0])
    pol_r = ref_r + np.array([0.0, 2.0, -0.5, -3.0])
    m = outcome.implicit_margins(pol_c, pol_r, ref_c, ref_r, beta=0.1)
    assert m == pytest.approx([0.1, -0.2, 0.0, 0.3])
    assert outcome.implicit_accuracy(m) == 0.5
    # the reference's own preference does not count: only the change from it does
    assert outcome.implicit_accuracy(outcome.implicit_margins(ref_c, ref_r, ref_c, ref_r, 0.1)) == 0.0
    with pytest.raises(ValueError, match="shape"):
        outcome.implicit_margins(pol_c, pol_r[:3], ref_c, ref_r, 0.1)


# ------------------------------------------------------------------------------ bootstrap by prompt

def _clustered(n_prompts, per_prompt, rng, truth=0.7, spread=0.25):
    """Pairs whose correctness shares a per-prompt rate (prompts differ), mean rate ``truth``."""
    rates = np.clip(truth + rng.uniform(-spread, spread, n_prompts), 0, 1)
    correct = np.concatenate([rng.random(per_prompt) < r for r in rates])
    prompts = np.repeat([f"p{i}" for i in range(n_prompts)], per_prompt)
    return correct, prompts.tolist()


def test_bootstrap_resamples_prompts_not_pairs():
    # one prompt with 100 correct pairs, nine with one wrong pair each: by pair the share looks
    # certain (100/109); by prompt, whether the big prompt is drawn decides it
    correct = np.array([True] * 100 + [False] * 9)
    prompts = ["big"] * 100 + [f"small{i}" for i in range(9)]
    lo, hi = outcome.bootstrap_by_prompt(correct, prompts, 2000, seed=0)
    lo_pair, hi_pair = outcome.bootstrap_by_prompt(correct, [f"u{i}" for i in range(109)], 2000, seed=0)
    assert hi_pair - lo_pair < 0.15 and lo < 0.05 and hi > 0.9
    assert lo <= 100 / 109 <= hi


def test_bootstrap_ci_narrows_with_more_prompts_and_covers_the_truth():
    rng = np.random.default_rng(1)
    widths = {}
    for n in (20, 80, 320):
        c, p = _clustered(n, 3, rng)
        lo, hi = outcome.bootstrap_by_prompt(c, p, 1000, seed=0)
        widths[n] = hi - lo
    assert widths[20] > widths[80] > widths[320]
    assert widths[20] / widths[320] > 2.5  # ~ sqrt(16) = 4 for a sqrt(n) law
    # coverage of the true rate over many data sets with 50 prompts of 3 pairs each
    covered = 0
    for _ in range(200):
        c, p = _clustered(50, 3, rng)
        lo, hi = outcome.bootstrap_by_prompt(c, p, 400, seed=int(rng.integers(1 << 30)))
        covered += lo <= 0.7 <= hi
    assert 0.88 <= covered / 200 <= 0.99


def test_bootstrap_of_several_seeds_uses_the_same_resampled_prompts():
    correct = np.array([[1, 1, 0, 0], [1, 0, 1, 0]], dtype=bool)
    prompts = ["a", "a", "b", "b"]
    lo, hi = outcome.bootstrap_by_prompt(correct, prompts, 500, seed=0)
    # mean over seeds: prompt a gives 0.75, prompt b 0.25: every resample lies in [0.25, 0.75]
    assert 0.25 <= lo <= hi <= 0.75 and lo < 0.5 < hi
    with pytest.raises(ValueError, match="prompt keys"):
        outcome.bootstrap_by_prompt(correct, prompts[:3])


def test_paired_difference_cancels_what_two_arms_share():
    rng = np.random.default_rng(2)
    b, prompts = _clustered(60, 4, rng, truth=0.6, spread=0.4)  # easy and hard prompts
    a = b.copy()
    flip = rng.choice(np.flatnonzero(~b), 24, replace=False)  # A also gets 24 of B's wrong pairs right: +0.1
    a[flip] = True
    d, lo, hi = outcome.bootstrap_difference_by_prompt(a, b, prompts, 2000, seed=0)
    assert d == pytest.approx(0.1) and 0 < lo < 0.1 < hi
    # the paired CI of the difference is narrower than either arm's own CI (an unpaired
    # difference's would be wider than both)
    la, ha = outcome.bootstrap_by_prompt(a, prompts, 2000, seed=0)
    lb, hb = outcome.bootstrap_by_prompt(b, prompts, 2000, seed=0)
    assert (hi - lo) < 0.75 * min(ha - la, hb - lb)
    assert outcome.bootstrap_difference_by_prompt(b, b, prompts, 200)[1:] == (0.0, 0.0)


# ------------------------------------------------------------------------------ mean-rating pairs

def _pair(prompt, chosen, rejected, aspect, rc, rr):
    return {"pair_id": contract.pair_id(prompt, chosen, rejected, aspect), "prompt": prompt, "chosen": chosen,
            "rejected": rejected, "aspect": aspect, "prompt_messages": None,
            "ratings_chosen": dict(zip(ASPECTS, rc)), "ratings_rejected": dict(zip(ASPECTS, rr))}


def test_mean_rating_pairs_orient_by_the_mean_drop_ties_and_count_a_pair_once():
    rows = [
        # labelled 'A' by verbosity, but B's mean is higher (3.0 vs 2.2): B is chosen
        _pair("q1", "A", "B", "verbosity", [2, 2, 2, 1, 4], [3, 3, 3, 3, 3]),
        # the same two responses listed under another aspect, the other way round: counted once
        _pair("q1", "B", "A", "helpfulness", [3, 3, 3, 3, 3], [2, 2, 2, 1, 4]),
        # equal means (2.0 both): dropped
        _pair("q2", "C", "D", "correctness", [4, 2, 2, 1, 1], [1, 2, 1, 2, 4]),
        # agrees with its aspect label
        _pair("q2", "C", "E", "coherence", [4, 2, 2, 1, 1], [0, 1, 2, 1, 1]),
    ]
    missing = _pair("q3", "F", "G", "coherence", [4, 4, 4, 4, 4], [0, 0, 0, 0, 0])
    del missing["ratings_rejected"]["verbosity"]
    pairs, counts = outcome.mean_rating_pairs(pd.DataFrame(rows + [missing]))
    assert counts["aspects"] == ASPECTS
    assert (counts["pairs"], counts["duplicates"], counts["ties"], counts["missing_ratings"]) == (2, 1, 1, 1)
    got = {(r.prompt, r.chosen, r.rejected): (r.mean_chosen, r.mean_rejected) for r in pairs.itertuples()}
    assert got == {("q1", "B", "A"): (3.0, 2.2), ("q2", "C", "E"): (2.0, 1.0)}
    assert pairs["pair_id"].is_unique
    # averaging a subset of aspects changes the label: on verbosity alone A wins the first pair
    sub, _ = outcome.mean_rating_pairs(pd.DataFrame(rows), aspects=["verbosity"])
    assert ("q1", "A", "B") in {(r.prompt, r.chosen, r.rejected) for r in sub.itertuples()}


def test_held_out_pairs_whose_prompt_trained_are_dropped_and_the_cap_is_stable():
    rows = [_pair(f"q{i}", "x" * (i + 1), "y", "coherence", [4] * 5, [1] * 5) for i in range(20)]
    pairs, _ = outcome.mean_rating_pairs(pd.DataFrame(rows))
    kept, dropped = outcome.disjoint_from(pairs, {"q1", "q2", "q3"})
    assert dropped == 3 and not set(kept["prompt_key"]) & {"q1", "q2", "q3"} and len(kept) == 17
    a, b = outcome.cap(kept, 10, seed=0), outcome.cap(kept.iloc[::-1], 10, seed=0)
    assert len(a) == 10 and a["pair_id"].tolist() == b["pair_id"].tolist()
    assert outcome.cap(kept, 10, seed=1)["pair_id"].tolist() != a["pair_id"].tolist()


def test_held_out_pairs_from_a_rated_source_leave_out_training_prompts(tmp_path):
    from fgpo_tasks.experiment.arms import prepare_heldout
    from fgpo_tasks.ingest import IngestConfig, run_ingest

    src = _rated_responses(tmp_path / "src", n_prompts=30)
    run_ingest([str(src)], ["rated-responses"], tmp_path / "all", IngestConfig(), "2026-01-01T00:00:00+00:00")
    every = contract.read_pairs(tmp_path / "all")
    trained_prompts = sorted(every["prompt"].unique())[:5]
    contract.write_pairs(every[every["prompt"].isin(trained_prompts)], tmp_path / "train", stage="ingest", config={},
                         created_at="2026-01-01T00:00:00+00:00")
    cfg = from_dict(ExperimentConfig, {"storage_root": str(tmp_path / "storage"), "implicit_reward": {
        "source": [str(src)], "max_pairs": None}})
    got = prepare_heldout(cfg, [], [str(tmp_path / "train")], tmp_path / "ev", "2026-01-01T00:00:00+00:00")
    held = pd.read_parquet(got["heldout_pairs"])
    everything, _ = outcome.mean_rating_pairs(every)
    assert got["heldout_origin"] == "source" and not set(held["prompt"]) & set(trained_prompts)
    assert got["heldout_counts"]["dropped_training_prompt"] == everything["prompt"].isin(trained_prompts).sum() > 0
    assert len(held) == len(everything) - got["heldout_counts"]["dropped_training_prompt"]


def test_config_needs_a_source_of_held_out_pairs():
    with pytest.raises(ConfigError, match="implicit_reward"):
        from_dict(ExperimentConfig, {"implicit_reward": {"max_pairs": 10}})
    with pytest.raises(ConfigError, match="max_pairs"):
        from_dict(ExperimentConfig, {"eval_split": {"fraction": 0.5}, "implicit_reward": {"max_pairs": 0}})
    cfg = experiment.load_experiment("configs/experiments/helpsteer_v1.yaml")
    assert [a.strategy for a in cfg.arm_specs] == ["all", "random", "pd", "pd_ratings", "raf", "pd_high"]
    assert cfg.seeds == [0, 1, 2] and cfg.implicit_reward_config.max_pairs == 300
    assert all(not a.dpo and a.loss_type == "sigmoid" for a in cfg.arm_specs)  # every arm trained the same way
    # an unset outcome leaves older configs' identity (their MLflow run keys) unchanged
    assert "implicit_reward" not in experiment._identity(experiment.load_experiment("configs/experiments/synthetic.yaml"))


# ------------------------------------------------------------------------------ one tiny experiment

def _rated_responses(path: Path, n_prompts: int = 100, seed: int = 0) -> Path:
    """A rated-responses file: 3 responses per prompt, every response rated on all five aspects;
    longer answers rate higher on average, so there is something to learn."""
    rng = np.random.default_rng(seed)
    words = "the a cat dog runs jumps over under quickly slowly red blue because therefore".split()
    lines = []
    for i in range(n_prompts):
        prompt = f"Question {i}: tell me about {words[i % len(words)]} number {i}."
        for j in range(3):
            n = int(rng.integers(2, 12))
            text = " ".join(rng.choice(words, n))
            base = min(4, n // 3)
            ratings = {a: int(np.clip(base + rng.integers(-1, 2), 0, 4)) for a in ASPECTS}
            lines.append(json.dumps({"prompt": prompt, "response": f"{text} ({j})", **ratings}))
    path.mkdir(parents=True, exist_ok=True)
    (path / "rated.jsonl").write_text("\n".join(lines) + "\n")
    return path


def tiny_rated_config(tmp, policy: str, keep_models: bool = False) -> ExperimentConfig:
    return from_dict(ExperimentConfig, {
        "name": "tiny-rated", "seeds": [0], "budget": 0.4, "starting_policy": policy, "threads": 1,
        "experiment_name": "test-outcome", "tracking_uri": f"sqlite:///{tmp / 'mlflow.db'}",
        "out_dir": str(tmp / "exp"), "storage_root": str(tmp / "storage"), "keep_models": keep_models,
        "eval_split": {"fraction": 0.5, "prompt_fraction": 0.3, "seed": 0},
        "implicit_reward": {"max_pairs": 40, "bootstrap_samples": 200},
        "pools": [{"name": "rated", "source": [str(_rated_responses(tmp / "data"))], "format": ["rated-responses"],
                   "seed_data": False}],
        "arms": [{"name": "all", "strategy": "all"}, {"name": "random", "strategy": "random"},
                 {"name": "pd", "strategy": "pd"}, {"name": "random_length", "strategy": "random_length"},
                 {"name": "pd_ratings", "strategy": "pd_ratings"}],
        "stages": {
            "validate": {"min_pairs_per_aspect": 3, "data_docs": False},
            "reward_models": {"backbone": "tiny-bert", "max_length": 64, "max_prompt_length": 24, "epochs": 2,
                              "compare_undebiased": False},
            "eval_reward_models": {"backbone": "tiny-bert", "max_length": 64, "max_prompt_length": 24, "epochs": 2,
                                   "compare_undebiased": False, "seed": 1},
            "score": {"progress": False},
            "dpo": {"lr": 1e-3, "batch_size": 8, "max_steps": 4, "max_length": 96, "max_prompt_length": 32,
                    "checkpoint_every": 0, "logging_steps": 1},
            "evaluate": {"n_prompts": 4, "max_new_tokens": 8, "batch_size": 4, "decoding": "sample",
                         "bootstrap_samples": 20, "plots": False},
        },
    })


@pytest.fixture(scope="module")
def ran(tmp_path_factory):
    from fgpo_tasks import stages
    from fgpo_tasks.sft import SFTConfig, run_sft

    tmp = tmp_path_factory.mktemp("outcome")
    policy = tmp / "policy"
    run_sft(policy, SFTConfig(tiny_dims={"hidden": 32, "layers": 1, "heads": 2}, bpe_vocab=300,
                              synthetic={"n_pairs": 40, "seed": 99}, max_steps=5, lr=1e-2, batch_size=8),
            "2026-01-01T00:00:00+00:00")
    cfg = tiny_rated_config(tmp, str(policy))
    summary = experiment.run_experiment(cfg, "rated-key", "2026-01-01T00:00:00+00:00")
    computed, real_run = [], stages.Store.run
    mp = pytest.MonkeyPatch()

    def spy(self, stage, **kw):
        run = real_run(self, stage, **kw)
        if run.computed:
            computed.append(stage)
        return run

    mp.setattr(stages.Store, "run", spy)
    again = experiment.run_experiment(cfg, "rated-key", "2026-01-01T00:00:00+00:00")
    mp.undo()
    return {"cfg": cfg, "tmp": tmp, "summary": summary, "again": again, "rerun_computed": computed,
            "root": tmp / "exp"}


def _arm(ran, name) -> dict:
    return json.loads((ran["root"] / "arms" / "rated" / "seed0" / name / "step.json").read_text())


def test_held_out_pairs_are_prompt_disjoint_from_every_training_pool(ran):
    ev = json.loads((ran["root"] / "evaluation" / "step.json").read_text())
    pool = json.loads((ran["root"] / "pools" / "rated" / "seed0" / "step.json").read_text())
    held = pd.read_parquet(ev["heldout_pairs"])
    assert ev["heldout_origin"] == "eval_split" and ev["n_heldout_pairs"] == len(held) > 10
    trained = set(contract.read_pairs(pool["data"])["prompt"])
    assert trained and not set(held["prompt"]) & trained
    # every held-out pair is oriented by the mean rating, with no ties
    assert (held["mean_chosen"] > held["mean_rejected"]).all()
    longer = (held["chosen"].str.len() > held["rejected"].str.len()).mean()
    assert ev["heldout_longer_chosen"] == pytest.approx(longer)
    assert f"is right on {longer:.3f} of these pairs" in (ran["root"] / "results.md").read_text()


def test_every_arm_reports_the_implicit_reward_accuracy_beside_its_win_rate(ran):
    from mlflow import MlflowClient

    assert ran["summary"]["arms_run"] == 5
    md = (ran["root"] / "results.md").read_text()
    header = next(line for line in md.splitlines() if line.startswith("| arm |"))
    cols = [c.strip() for c in header.strip("|").split("|")]
    assert cols.index("implicit acc") == cols.index("win rate") + 1
    assert "implicit acc − random [CI]" in cols
    table = pd.read_csv(ran["root"] / "results.csv")
    assert table["arm"].tolist() == ["all", "random", "pd", "random_length", "pd_ratings"]
    rnd = _arm(ran, "random")["implicit_reward"]["accuracy"]
    for name in ("all", "pd", "random_length", "pd_ratings"):
        row = table[table["arm"] == name].iloc[0]
        assert row["implicit_vs_random"] == pytest.approx(_arm(ran, name)["implicit_reward"]["accuracy"] - rnd)
        assert row["implicit_vs_random.low"] <= row["implicit_vs_random"] <= row["implicit_vs_random.high"]
    # PD against its length-matched control, in the table and said in the report
    pd_row = table[table["arm"] == "pd"].iloc[0]
    vs = _arm(ran, "pd")["implicit_reward"]["accuracy"] - _arm(ran, "random_length")["implicit_reward"]["accuracy"]
    assert pd_row["implicit_vs_random_length"] == pytest.approx(vs)
    assert pd_row["implicit_vs_random_length.low"] <= vs <= pd_row["implicit_vs_random_length.high"]
    assert table[table["arm"] != "pd"]["implicit_vs_random_length"].isna().all()
    assert "Implicit acc of pd − random_length" in md and f"{vs:+.3f}" in md
    assert table["implicit_accuracy.mean"].between(0, 1).all()
    assert (table["implicit_ci.low"] <= table["implicit_accuracy.mean"]).all()
    assert (table["implicit_accuracy.mean"] <= table["implicit_ci.high"]).all()
    client = MlflowClient(ran["cfg"].tracking_uri)
    exp = client.get_experiment_by_name("test-outcome")
    runs = client.search_runs([exp.experiment_id], "tags.`fgpo.role` = 'arm'")
    assert {r.data.tags["fgpo.arm"] for r in runs} == {"all", "random", "pd", "random_length", "pd_ratings"}
    for r in runs:
        arm = _arm(ran, r.data.tags["fgpo.arm"])
        ir = arm["implicit_reward"]
        assert r.data.metrics["implicit_reward.accuracy"] == pytest.approx(ir["accuracy"])
        assert ir["ci_low"] <= ir["accuracy"] <= ir["ci_high"] and ir["n_pairs"] > 10
        # the policy moved: no margin is exactly 0, and the margins file gives the accuracy back
        margins = pd.read_parquet(ir["margins"])
        assert ir["n_zero_margin"] == 0 and ((margins["margin"] > 0).mean()) == pytest.approx(ir["accuracy"])
        assert margins["margin"].to_numpy() == pytest.approx(
            0.1 * ((margins["policy_chosen"] - margins["ref_chosen"]) - (margins["policy_rejected"] - margins["ref_rejected"])),
            abs=1e-5)


def test_the_reference_is_the_starting_policy_and_matches_the_dpo_code(ran):
    """The held-out reference log-probs are the starting policy's, as DPO computes them: the
    starting policy scored directly gives the same numbers."""
    ev = json.loads((ran["root"] / "evaluation" / "step.json").read_text())
    held = pd.read_parquet(ev["heldout_pairs"])
    margins = pd.read_parquet(_arm(ran, "pd")["implicit_reward"]["margins"])
    policy = str(ran["tmp"] / "policy")
    c, r = outcome.sequence_logps(policy, policy, held, 96, 32)
    assert margins["ref_chosen"].to_numpy() == pytest.approx(c, abs=1e-4)
    assert margins["ref_rejected"].to_numpy() == pytest.approx(r, abs=1e-4)


def test_a_rerun_computes_nothing_even_with_the_weights_dropped(ran):
    assert ran["rerun_computed"] == [] and ran["again"]["arms_run"] == 5
    arm = _arm(ran, "all")
    assert arm["weights_dropped"] == "dropped" and not list(Path(arm["model"]).glob("*.safetensors"))
    # the formula the resume check uses gives the evaluate stage's real key
    prep = json.loads((ran["root"] / "prepare" / "step.json").read_text())
    ev = json.loads((ran["root"] / "evaluation" / "step.json").read_text())
    from fgpo_tasks.experiment.arms import _eval_config, _proxy_specs, evaluate_key

    pool = json.loads((ran["root"] / "pools" / "rated" / "seed0" / "step.json").read_text())
    eval_cfg = _eval_config(ran["cfg"], ev["eval_models"], _proxy_specs([pool]))
    assert evaluate_key(arm["stage_keys"]["train_dpo"], prep["policy"], ev["prompts"], eval_cfg) == \
        arm["stage_keys"]["evaluate"]


def test_dropped_weights_are_trained_again_by_the_next_run_that_needs_them(ran):
    """keep_models: false deleted the weights of a content-addressed stage folder; another run
    asking for the same train_dpo stage must get a model with weights, not the emptied folder."""
    from fgpo_tasks import workflow
    from fgpo_tasks.experiment.arms import _arm_configs

    cfg, arm = ran["cfg"], _arm(ran, "pd")
    pool = json.loads((ran["root"] / "pools" / "rated" / "seed0" / "step.json").read_text())
    st = experiment.store(cfg)
    folder = st.stage_dir("train_dpo", arm["stage_keys"]["train_dpo"])
    assert (folder / "stage.dropped.json").is_file() and not (folder / "stage.json").is_file()
    _, dpo_cfg = _arm_configs(cfg, experiment._arm(cfg, "pd"), pool, 0)
    again = workflow.train_dpo(st, arm["selected"], dpo_cfg, "2026-01-01T00:00:00+00:00")
    assert again.key == arm["stage_keys"]["train_dpo"] and again.computed
    assert list(Path(again.result["model"]).glob("*.safetensors"))


def test_weights_of_a_stage_another_run_made_are_kept(tmp_path):
    from fgpo_tasks.experiment.arms import drop_weights
    from fgpo_tasks.stages import StageRun, Store

    st = Store(tmp_path)
    folder = st.stage_dir("train_dpo", "k")
    (folder / "model").mkdir(parents=True)
    (folder / "model" / "model.safetensors").write_bytes(b"w")
    (folder / "stage.json").write_text("{}")
    found = StageRun("train_dpo", "k", folder, {"result": {"model": str(folder / "model")}}, computed=False)
    assert drop_weights(st, found) == "kept: shared"
    assert (folder / "model" / "model.safetensors").is_file() and (folder / "stage.json").is_file()
    mine = StageRun("train_dpo", "k", folder, {"result": {"model": str(folder / "model")}}, computed=True)
    assert drop_weights(st, mine) == "dropped"
    assert not (folder / "model" / "model.safetensors").exists() and st.lookup("train_dpo", "k") is None
