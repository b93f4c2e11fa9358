"""Supervised fine-tuning (SFT): the starting policy that DPO then shapes.

    run_sft(out_dir, config, created_at, data_dir=None)

The data is a pair directory (``data_dir``) or toy-world pairs generated from ``config.synthetic``.
Each pair gives SFT examples ``prompt -> response``: with ``responses: both`` (the default) its
chosen AND its rejected response, so the policy learns the whole variety of responses the pool
holds (right and wrong answers, with and without polite / detail sentences) and DPO's job is to
shift probability between them; ``chosen`` trains on the chosen responses alone. Identical
(prompt, response) examples are kept once.

Tokens are built exactly as DPO builds them (``dpo.data.tokenize_pairs``: chat template, prompt
keeps its end, response its start), and the loss is the mean cross-entropy over response tokens:
prompt and padding positions are masked out. The loop runs on Accelerate.

Output folder: weights + tokenizer (``save_pretrained``), ``fgpo_model.json`` (= ``manifest.json``:
config, data fingerprint, code version, metrics), ``metrics.jsonl``.

``TOY_POLICY``: the recipe of the ``tiny-llama-toy`` model spec (fgpo_tasks.models), a tiny
byte-level Llama fine-tuned once on toy-world pairs drawn with a seed (12345) that the pipeline's
data (seed 0) and the evaluation prompts (seed 20240501) do not use.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from fgpo_tasks import jsonio, models, zoo
from fgpo_tasks.config import check, from_dict, to_dict
from fgpo_tasks.errors import InputError
from fgpo_tasks.provenance import code_version, sha256_hex, stable_json
from fgpo_tasks.storage import atomic_dir
from fgpo_tasks.zoo import train_bpe_tokenizer  # noqa: F401  (moved to the zoo; importable from here)

log = logging.getLogger(__name__)

MODEL_CARD = "fgpo_model.json"
SCHEDULERS = ("cosine", "linear", "constant")


@dataclass
class SFTConfig:
    model: str = field(default="tiny-llama", metadata={
        "help": "starting model spec (hub id, folder, .gguf, alias; fgpo_tasks.models)"})
    tiny_dims: dict[str, int] = field(default_factory=dict, metadata={
        "help": "model tiny-llama only: build a FRESH model with these tiny_config dims (hidden, "
                "layers, heads) and seed instead of the cached default-size one; {} = the cached one"})
    bpe_vocab: int = field(default=0, metadata={
        "help": "with tiny_dims: train a byte-level BPE tokenizer of this many tokens on the SFT "
                "data's text (toy-world words become single tokens, ~4x fewer positions than bytes); "
                "0 = the byte tokenizer"})
    synthetic: dict[str, Any] = field(default_factory=lambda: {"n_pairs": 1500, "seed": 12345}, metadata={
        "help": "toy-world data (SyntheticConfig fields) when run_sft gets no data_dir"})
    responses: Literal["both", "chosen"] = field(default="both", metadata={
        "help": "both: an example per chosen AND per rejected response (the policy learns every "
                "kind of response; DPO shapes it); chosen: the chosen responses only"})
    epochs: int = field(default=1, metadata={"help": "passes over the examples (when max_steps is 0)"})
    max_steps: int = field(default=0, metadata={"help": "optimizer steps; 0 = epochs x steps per epoch"})
    lr: float = field(default=3e-3, metadata={"help": "peak AdamW learning rate"})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay"})
    scheduler: str = field(default="cosine", metadata={"help": f"one of {list(SCHEDULERS)}"})
    warmup_ratio: float = field(default=0.05, metadata={"help": "warmup as a fraction of all steps"})
    max_grad_norm: float = field(default=1.0, metadata={"help": "gradient clipping norm; 0 = off"})
    batch_size: int = field(default=16, metadata={"help": "examples per optimizer step"})
    max_length: int = field(default=320, metadata={"help": "max tokens of prompt + response"})
    max_prompt_length: int = field(default=96, metadata={
        "help": "a too-long example's prompt keeps its last max_prompt_length tokens"})
    seed: int = field(default=0, metadata={"help": "seed of the data order and of a fresh tiny model"})
    logging_steps: int = field(default=10, metadata={"help": "record metrics every this many steps"})

    def __post_init__(self):
        self.tiny_dims = dict(self.tiny_dims)
        self.synthetic = dict(self.synthetic)
        check(bool(self.model), "model must name a model spec, got an empty string")
        check(not self.tiny_dims or self.model == "tiny-llama",
              f"tiny_dims only applies to model 'tiny-llama', got model {self.model!r}")
        unknown = sorted(set(self.tiny_dims) - {"hidden", "layers", "heads", "max_positions"})
        check(not unknown, f"tiny_dims: unknown dims {unknown}; known: hidden, layers, heads, max_positions")
        check(self.bpe_vocab == 0 or (self.tiny_dims and self.bpe_vocab >= 259 + 3),
              f"bpe_vocab needs tiny_dims (a fresh model) and must be 0 or >= 262, got {self.bpe_vocab}")
        check(self.responses in ("both", "chosen"), f"responses must be 'both' or 'chosen', got {self.responses!r}")
        check(self.epochs >= 1, f"epochs must be >= 1, got {self.epochs}")
        check(self.max_steps >= 0, f"max_steps must be >= 0 (0 = use epochs), got {self.max_steps}")
        check(self.lr > 0, f"lr must be > 0, got {self.lr}")
        check(self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay}")
        check(self.scheduler in SCHEDULERS, f"scheduler: unknown {self.scheduler!r}; expected one of {list(SCHEDULERS)}")
        check(0.0 <= self.warmup_ratio < 1.0, f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        check(self.max_grad_norm >= 0, f"max_grad_norm must be >= 0, got {self.max_grad_norm}")
        check(self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}")
        check(self.max_length >= 2, f"max_length must be >= 2, got {self.max_length}")
        check(1 <= self.max_prompt_length < self.max_length,
              f"max_prompt_length must be in [1, max_length={self.max_length}), got {self.max_prompt_length}")
        check(self.logging_steps >= 1, f"logging_steps must be >= 1, got {self.logging_steps}")


# The recipe of the `tiny-llama-toy` spec: 4 layers x 128 wide (~0.9M parameters) with a 512-token
# BPE learned on the SFT text, one epoch over 1500 toy-world pairs (seed 12345). ~25 s on one CPU
# thread. It answers in the toy world's form; it does not learn the sums (nor most capitals).
# With the 259-token byte tokenizer instead, sequences are 4x longer and the same budget leaves a
# model whose greedy text breaks down after the first DPO steps.
TOY_POLICY = SFTConfig(model="tiny-llama", tiny_dims={"hidden": 128, "layers": 4, "heads": 4}, bpe_vocab=512,
                       synthetic={"n_pairs": 1500, "conflict_rate": 0.2, "seed": 12345},
                       responses="both", epochs=1, lr=3e-3, batch_size=16, seed=0)


# ---------------------------------------------------------------------------------------------
# Data

def sft_examples(tokens, responses: str = "both") -> list[tuple[list[int], list[int]]]:
    """(prompt ids, response ids) per SFT example from DPO's PairTokens; repeats kept once."""
    seen, out = set(), []
    for i in range(len(tokens)):
        resp = [tokens.chosen[i]] + ([tokens.rejected[i]] if responses == "both" else [])
        for r in resp:
            key = (tuple(tokens.prompt[i]), tuple(r))
            if key not in seen and r:
                seen.add(key)
                out.append((tokens.prompt[i], r))
    return out


def collate(examples: list[tuple[list[int], list[int]]], pad_id: int) -> dict:
    """input_ids / attention_mask (B, T) and labels (B, T): -100 on prompt and padding positions,
    so the loss counts response tokens only."""
    import torch

    width = max(len(p) + len(r) for p, r in examples)
    input_ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(examples), width), dtype=torch.long)
    labels = torch.full((len(examples), width), -100, dtype=torch.long)
    for row, (p, r) in enumerate(examples):
        seq = p + r
        input_ids[row, :len(seq)] = torch.tensor(seq, dtype=torch.long)
        attention[row, :len(seq)] = 1
        labels[row, len(p):len(seq)] = torch.tensor(r, dtype=torch.long)
    return {"input_ids": input_ids, "attention_mask": attention, "labels": labels}


def _pairs(config: SFTConfig, data_dir: str | Path | None):
    """(pair table, description of where it came from)."""
    import pandas as pd

    from fgpo_tasks import contract

    if data_dir is not None:
        df = contract.read_pairs(data_dir)
        return df, {"data_dir": str(data_dir)}
    from fgpo_tasks.synthetic import SyntheticConfig, generate

    syn = from_dict(SyntheticConfig, config.synthetic, where="sft.synthetic")
    df = pd.DataFrame(generate(syn))
    return df, {"synthetic": to_dict(syn)}


def _conversation_texts(df, tok, responses: str) -> list[str]:
    """Every SFT example as the text the model will see (chat template applied)."""
    from fgpo_tasks.dpo.data import _conversation

    out = []
    for row in df.to_dict(orient="records"):
        conv = _conversation(row)
        for r in [row["chosen"]] + ([row["rejected"]] if responses == "both" else []):
            out.append(tok.apply_chat_template(conv + [{"role": "assistant", "content": r}], tokenize=False))
    return out


def _load_model(config: SFTConfig, df):
    import torch

    if config.tiny_dims:
        from transformers import AutoModelForCausalLM

        tok = zoo.byte_tokenizer()
        if config.bpe_vocab:
            tok = zoo.train_bpe_tokenizer(_conversation_texts(df, tok, config.responses), config.bpe_vocab)
        torch.manual_seed(config.seed)
        lm = AutoModelForCausalLM.from_config(zoo.tiny_config("tiny-llama", len(tok), **config.tiny_dims))
        tok.padding_side = "right"
        return lm, tok
    return models.load_causal_lm(config.model), models.load_tokenizer(config.model)


# ---------------------------------------------------------------------------------------------
# The stage

def run_sft(out_dir: str | Path, config: SFTConfig, created_at: str, data_dir: str | Path | None = None) -> dict:
    """Fine-tune ``config.model`` on the responses of ``data_dir`` (else toy-world pairs); save it."""
    import torch
    import torch.nn.functional as F
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from tqdm.auto import tqdm
    from transformers import get_scheduler

    from fgpo_tasks.contract import content_fingerprint, data_fingerprint
    from fgpo_tasks.dpo.data import tokenize_pairs

    df, data_record = _pairs(config, data_dir)
    if len(df) == 0:
        raise InputError("no pairs to fine-tune on", file=str(data_dir) if data_dir else None)
    data_fp = data_fingerprint(data_dir, df) if data_dir else content_fingerprint(df)
    accelerator = Accelerator()
    set_seed(config.seed)
    lm, tokenizer = _load_model(config, df)
    tokens = tokenize_pairs(df, tokenizer, config.max_length, config.max_prompt_length)
    examples = sft_examples(tokens, config.responses)
    steps_per_epoch = math.ceil(len(examples) / config.batch_size)
    total = config.max_steps or config.epochs * steps_per_epoch
    n_resp_tokens = sum(len(r) for _, r in examples)
    log.info("SFT: %d examples (%d pairs, responses=%s, %d response tokens), %d steps of %d",
             len(examples), len(df), config.responses, n_resp_tokens, total, config.batch_size)

    optimizer = torch.optim.AdamW(lm.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    scheduler = get_scheduler(config.scheduler, optimizer, num_warmup_steps=math.ceil(config.warmup_ratio * total),
                              num_training_steps=total)
    lm, optimizer, scheduler = accelerator.prepare(lm, optimizer, scheduler)
    lm.train()

    rng = np.random.default_rng(config.seed)
    curve, window, t0 = [], [], time.perf_counter()
    order = np.empty(0, dtype=np.int64)
    for step in tqdm(range(total), desc="SFT", disable=not accelerator.is_main_process):
        if len(order) < config.batch_size:  # a fresh shuffle per epoch, a function of the seed
            order = np.concatenate([order, rng.permutation(len(examples))])
        idx, order = order[:config.batch_size], order[config.batch_size:]
        batch = {k: v.to(accelerator.device) for k, v in collate([examples[i] for i in idx],
                                                                   tokenizer.pad_token_id).items()}
        logits = lm(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits  # (B, T, V)
        # position t predicts token t+1; ignore_index masks prompt and padding
        loss = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), batch["labels"][:, 1:].flatten(),
                               ignore_index=-100)
        accelerator.backward(loss)
        if config.max_grad_norm:
            accelerator.clip_grad_norm_(lm.parameters(), config.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
        window.append(float(loss.detach()))
        if (step + 1) % config.logging_steps == 0 or step + 1 == total:
            curve.append({"step": step + 1, "loss": float(np.mean(window)),
                          "learning_rate": scheduler.get_last_lr()[0]})
            window = []
    seconds = time.perf_counter() - t0

    metrics = {"examples": len(examples), "pairs": int(len(df)), "steps": total,
               "first_loss": curve[0]["loss"], "final_loss": curve[-1]["loss"],
               "train_seconds": round(seconds, 2)}
    card = {"kind": "fgpo.model", "stage": "sft", "created_at": created_at, "code_version": code_version(),
            "config": to_dict(config), **data_record, "data_fingerprint": data_fp,
            "tokens_fingerprint": tokens.fingerprint(), "metrics": metrics}
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        with atomic_dir(out_dir) as tmp:
            accelerator.unwrap_model(lm).save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            (tmp / "metrics.jsonl").write_text("".join(jsonio.dumps(c) + "\n" for c in curve))
            for name in (MODEL_CARD, "manifest.json"):
                (tmp / name).write_text(jsonio.dumps(card, indent=2, default=str) + "\n")
    accelerator.end_training()
    return {"out_dir": str(out_dir), **metrics, "curve": curve}


# ---------------------------------------------------------------------------------------------
# The tiny-llama-toy alias

def recipe_key(config: SFTConfig) -> str:
    """Short hash of a recipe (its config and the code that turns it into weights)."""
    # v2: the toy-world generator was vectorised, so a recipe's synthetic pairs (same seed) are other rows
    return sha256_hex("sft-recipe-v2", stable_json(to_dict(config)))[:12]


def build_policy(name: str, recipe: SFTConfig, cache_root: str | Path) -> Path:
    """``<cache_root>/<name>-<recipe key>``: the recipe's SFT model, built once (file-locked; run_sft
    writes into a unique temporary folder renamed into place), so every process asking for the
    spec gets the same folder and the same weights."""
    out = Path(cache_root) / f"{name}-{recipe_key(recipe)}"
    if (out / "config.json").is_file():
        return out
    with zoo.file_lock(Path(cache_root) / f".{out.name}.lock"):
        if not (out / "config.json").is_file():
            log.info("building %s once under %s (SFT, about a minute on a CPU)", name, out)
            # the recipe is fixed: a fixed timestamp keeps the card (and so the folder) deterministic;
            # the caller's torch RNG is the same whether or not it had to build
            import torch
            with torch.random.fork_rng(devices=[]):
                run_sft(out, recipe, created_at="1970-01-01T00:00:00+00:00")
    return out


TOY_RECIPES = {"tiny-llama-toy": "TOY_POLICY"}  # spec -> the recipe's name in this module


def build_toy_policy(spec: str, cache_root: str | Path) -> Path:
    """The zoo's entry point for the toy policy specs (fgpo_tasks.zoo.TOY_POLICIES)."""
    return build_policy(spec, globals()[TOY_RECIPES[spec]], cache_root)
