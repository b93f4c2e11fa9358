"""Config loading, environment hygiene, the synthetic world, model specs, the CLI shell."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from fgpo_tasks import cli, models, synthetic
from fgpo_tasks.config import check, load_config
from fgpo_tasks.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent


@dataclass
class _Cfg:
    beta: float = field(default=0.1, metadata={"help": "beta"})
    name: str = "x"
    steps: int = 3

    def __post_init__(self):
        check(self.beta > 0, f"beta must be > 0, got {self.beta}")


def test_load_config_names_bad_fields(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("beta: 2\nsteps: 5\n")
    cfg = load_config(_Cfg, p, steps=7)
    assert (cfg.beta, cfg.steps) == (2.0, 7) and isinstance(cfg.beta, float)
    p.write_text("betta: 2\n")
    with pytest.raises(ConfigError, match=r"unknown field\(s\) \['betta'\]"):
        load_config(_Cfg, p)
    p.write_text("steps: many\n")
    with pytest.raises(ConfigError, match="field 'steps'"):
        load_config(_Cfg, p)
    p.write_text("beta: -1\n")
    with pytest.raises(ConfigError, match="beta must be > 0, got -1"):
        load_config(_Cfg, p)
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(_Cfg, tmp_path / "missing.yaml")


def test_nothing_writes_into_home(tmp_path):
    """Run the CLI with HOME pointed at an empty folder: it must stay empty."""
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "AIRFLOW", "MPL", "XDG", "FGPO"))}
    env.update(HOME=str(home), FGPO_WORK_DIR=str(tmp_path / "work"))
    code = ("import fgpo_tasks.cli as c, sys; c.setup_environment(); import matplotlib.pyplot, datasets, "
            "transformers; sys.exit(0)")
    subprocess.run([sys.executable, "-c", code], env=env, check=True, cwd=tmp_path)
    assert list(home.iterdir()) == []


def test_synthetic_world_is_deterministic_and_has_the_asked_conflict_rate():
    cfg = synthetic.SyntheticConfig(n_pairs=800, conflict_rate=0.3, seed=3)
    rows = synthetic.generate(cfg)
    assert rows == synthetic.generate(cfg)
    assert rows != synthetic.generate(synthetic.SyntheticConfig(n_pairs=800, conflict_rate=0.3, seed=4))
    assert len({r["pair_id"] for r in rows}) == 800
    true_pd = np.array([-sum(np.sign(r["ratings_chosen"][a] - r["ratings_rejected"][a])
                             for a in cfg.aspects if a != r["aspect"]) for r in rows])
    assert abs((true_pd > 0).mean() - 0.3) < 0.05
    for r in rows:  # labels follow the rules, and the rules read the text
        assert r["ratings_chosen"][r["aspect"]] > r["ratings_rejected"][r["aspect"]]
        assert r["ratings_chosen"] == synthetic.true_scores(r["prompt"], r["chosen"], cfg.aspects)


def test_true_scores_follow_the_documented_rules():
    p = "What is 17 plus 25?"
    assert synthetic.true_score("correctness", p, "The answer is 42.") == 1.0
    assert synthetic.true_score("correctness", p, "The answer is 41.") == 0.0
    assert synthetic.true_score("politeness", p, "Thank you for asking! I am happy to help.") == 2.0
    assert synthetic.true_score("conciseness", p, "one two three") == -0.3
    with pytest.raises(ConfigError, match="conflict_rate must be in"):
        synthetic.SyntheticConfig(conflict_rate=1.5)


def test_model_specs_resolve_offline(tmp_path):
    with pytest.raises(ConfigError, match="model path not found"):
        models.resolve("./no/such/model")
    with pytest.raises(ConfigError, match="model file not found"):
        models.resolve(str(tmp_path / "x.gguf"))
    assert models.resolve("HuggingFaceTB/SmolLM2-135M-Instruct") == ("HuggingFaceTB/SmolLM2-135M-Instruct", None)
    path, gguf = models.resolve("smollm2-135m-instruct")
    assert gguf.endswith(".gguf") and (Path(path) / gguf).is_file()
    assert (Path(models.resolve("minilm-l6")[0]) / "config.json").is_file()


def test_tiny_models_and_byte_tokenizer(tmp_path):
    tok = models.byte_tokenizer()
    ids = tok("héllo").input_ids
    assert tok.decode(ids) == "héllo"
    text = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert text == "<|user|>hi<|end|><|assistant|>"
    out = models.build_tiny("tiny-llama", tmp_path / "m")
    lm = models.load_causal_lm(str(out))
    assert lm.config.vocab_size == len(tok) and sum(p.numel() for p in lm.parameters()) < 1_000_000


def test_cli_lists_stages_and_fails_cleanly(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    assert "COMMAND" in capsys.readouterr().out
