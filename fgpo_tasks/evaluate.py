"""The evaluation stage: a candidate policy against a baseline, judged by evaluation reward models.

Both policies answer the same held-out prompts (batched, left padding, seeded decoding, the
tokenizer's chat template when it has one). Each aspect's evaluation reward models score every
response; per aspect we report each policy's mean reward, the candidate's win rate over the
baseline (ties count 0.5) with a seeded percentile-bootstrap confidence interval over prompts,
and a length-controlled win rate.

Length-controlled win rate (Dubois et al. 2024, "Length-Controlled AlpacaEval: A Simple Way to
Debias Automatic Evaluators", arXiv 2404.04475; AlpacaEval's ``length_controlled_minimal`` GLM):
fit ``logit P(candidate wins) = a + b * tanh(dlen / std(dlen))`` on the per-prompt preferences
(soft labels: ties are 0.5), where ``dlen`` is the candidate's minus the baseline's response
length (characters by default, as AlpacaEval's ``str.len()``); the LC win rate is the prediction
at zero length difference, ``sigmoid(a)``.

Evaluation reward models are configured per aspect (``eval_models``). A spec is ``rule:<aspect>``
(the toy world's exact scorer, ``synthetic.true_score``), ``fgpo:<dir>`` (a reward model saved by
the reward-model stage), or a Hugging Face sequence-classification model (hub id or folder,
optionally prefixed ``hf:``). They must differ from the proxy models that drove selection
(``proxy_models``): judging with the selector rewards the selector's own biases.

Held-out prompts: prompts come from synthetic generation, a pair directory or a JSONL file; every
prompt that appears in a training pool (``exclude_pairs``, plus the candidate's training data
when its ``fgpo_model.json`` names it) is dropped before sampling, by prompt identity
(``contract.prompt_key``), and ``results.json`` records how many were dropped.

Output folder: ``results.json`` (every figure), ``results.md`` and ``results.csv`` (the table),
``generations.jsonl`` (each prompt, both responses, every score), ``plots/<aspect>.png``,
``manifest.json``.
"""

from __future__ import annotations

import csv
import functools
import io
import json
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

import numpy as np

from fgpo_tasks import jsonio
from fgpo_tasks import contract
from fgpo_tasks.config import check, to_dict
from fgpo_tasks.errors import ConfigError, FgpoError, InputError
from fgpo_tasks.provenance import code_version, file_fingerprint, sha256_hex, stable_json
from fgpo_tasks.storage import atomic_dir
from fgpo_tasks.synthetic import ASPECTS as SYNTHETIC_ASPECTS

log = logging.getLogger(__name__)

Scorer = Callable[[list[str], list[str]], np.ndarray]
MODEL_INFO_FILE = "fgpo_model.json"


@dataclass
class EvalConfig:
    prompt_source: Literal["synthetic", "pairs", "jsonl"] = field(default="synthetic", metadata={
        "help": "where held-out prompts come from: 'synthetic' (toy-world prompts drawn with "
                "prompt_seed), 'pairs' (a pair directory's prompts) or 'jsonl' (one JSON object per "
                "line with 'prompt' and optionally 'messages')"})
    prompt_path: str | None = field(default=None, metadata={
        "help": "the pair directory or JSONL file for prompt_source 'pairs' / 'jsonl'"})
    n_prompts: int = field(default=64, metadata={"help": "held-out prompts to evaluate on (fewer if "
                                                         "the source has fewer)"})
    prompt_seed: int = field(default=20240501, metadata={
        "help": "seed of the prompt draw (and of the synthetic prompts); differ from the training "
                "data's seed"})
    exclude_pairs: list[str] = field(default_factory=list, metadata={
        "help": "pair directories of the training pool: their prompts are never evaluation prompts"})
    follow_lineage: bool = field(default=True, metadata={
        "help": "also exclude the prompts of every pair directory the training data's manifest "
                "lists as an input (the pool a selected subset came from)"})
    eval_models: dict[str, list[str]] = field(
        default_factory=lambda: {a: [f"rule:{a}"] for a in SYNTHETIC_ASPECTS}, metadata={
            "help": "aspect -> evaluation reward model specs: 'rule:<aspect>', 'fgpo:<dir>', or a "
                    "hub id / folder of a sequence-classification model ('hf:' prefix optional)"})
    proxy_models: list[str] = field(default_factory=list, metadata={
        "help": "the proxy reward models used for selection; an evaluation model equal to one is "
                "an error"})
    decoding: Literal["greedy", "sample"] = field(default="greedy", metadata={
        "help": "greedy decoding, or sampling with temperature / top_p"})
    temperature: float = field(default=0.7, metadata={"help": "sampling temperature (decoding: sample)"})
    top_p: float = field(default=0.9, metadata={"help": "nucleus sampling mass (decoding: sample)"})
    max_new_tokens: int = field(default=128, metadata={"help": "tokens generated per response"})
    max_prompt_tokens: int = field(default=512, metadata={
        "help": "prompts longer than this keep their last tokens"})
    batch_size: int = field(default=8, metadata={"help": "prompts per generation batch"})
    seed: int = field(default=0, metadata={"help": "generation seed (set before each policy)"})
    use_chat_template: bool = field(default=True, metadata={
        "help": "wrap prompts in the tokenizer's chat template when it has one"})
    device: str = field(default="auto", metadata={"help": "'auto' (cuda when available), 'cpu', 'cuda'"})
    dtype: str = field(default="auto", metadata={
        "help": "dtype of the policies (generation) and of the HF judges: auto (bf16 on a CUDA GPU that "
                "has it, else fp32) | fp32 | bf16 | fp16"})
    score_batch_size: int = field(default=8, metadata={"help": "responses per reward-model batch",
                                                       "inert": True})
    score_max_length: int = field(default=1024, metadata={
        "help": "HF reward models: prompt+response tokens kept (longer inputs are truncated)"})
    tie_tolerance: float = field(default=0.0, metadata={
        "help": "|reward difference| at or below this counts as a tie (0.5)"})
    length_unit: Literal["chars", "words", "tokens"] = field(default="chars", metadata={
        "help": "response length for the LC regression: characters (as AlpacaEval), words, or "
                "tokens of the candidate's tokenizer"})
    bootstrap_samples: int = field(default=1000, metadata={"help": "bootstrap resamples for the CI"})
    ci_level: float = field(default=0.95, metadata={"help": "confidence level of the win-rate CI"})
    bootstrap_seed: int = field(default=0, metadata={"help": "seed of the bootstrap resampling"})
    plots: bool = field(default=True, metadata={"help": "write plots/<aspect>.png"})
    generation_cache: bool = field(default=True, metadata={
        "help": "reuse a policy's responses to the same prompts under the same decoding settings "
                "(the starting policy in every arm of an experiment, the champion on every retrain), "
                "kept under <work>/cache/generations; false = always generate", "inert": True})

    def __post_init__(self):
        self.exclude_pairs = list(self.exclude_pairs)
        self.proxy_models = list(self.proxy_models)
        self.eval_models = {str(a): ([m] if isinstance(m, str) else list(m))
                            for a, m in dict(self.eval_models).items()}
        check(self.n_prompts >= 1, f"n_prompts must be >= 1, got {self.n_prompts}")
        check(self.prompt_source == "synthetic" or self.prompt_path,
              f"prompt_source {self.prompt_source!r} needs prompt_path")
        check(bool(self.eval_models), "eval_models must name at least one aspect")
        for aspect, specs in self.eval_models.items():
            check(bool(specs), f"eval_models[{aspect!r}] is empty: give at least one model")
            for spec in specs:
                check(isinstance(spec, str) and spec.strip() != "",
                      f"eval_models[{aspect!r}] holds an invalid spec {spec!r}")
                if spec.startswith("rule:"):
                    check(spec[5:] in SYNTHETIC_ASPECTS, f"eval_models[{aspect!r}]: unknown rule "
                          f"{spec!r}; known: {[f'rule:{a}' for a in SYNTHETIC_ASPECTS]}")
        check(self.temperature > 0, f"temperature must be > 0, got {self.temperature}")
        check(0 < self.top_p <= 1, f"top_p must be in (0, 1], got {self.top_p}")
        check(self.max_new_tokens >= 1, f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        check(self.max_prompt_tokens >= 1, f"max_prompt_tokens must be >= 1, got {self.max_prompt_tokens}")
        check(self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}")
        check(self.score_batch_size >= 1, f"score_batch_size must be >= 1, got {self.score_batch_size}")
        check(self.tie_tolerance >= 0, f"tie_tolerance must be >= 0, got {self.tie_tolerance}")
        check(self.bootstrap_samples >= 1, f"bootstrap_samples must be >= 1, got {self.bootstrap_samples}")
        check(0 < self.ci_level < 1, f"ci_level must be in (0, 1), got {self.ci_level}")
        check(self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:"),
              f"device must be 'auto', 'cpu' or 'cuda[:N]', got {self.device!r}")
        check_disjoint(self.eval_models, self.proxy_models)


# ---------------------------------------------------------------------------------------------
# Model specs: evaluation models must not be proxy models

def spec_identity(spec: str) -> str:
    """What a reward-model spec points at: a resolved folder for paths, else the id itself."""
    body = spec
    for prefix in ("fgpo:", "hf:"):
        if spec.startswith(prefix):
            body = spec[len(prefix):]
    if spec.startswith("rule:"):
        return spec
    path = Path(body).expanduser()
    if path.exists():
        return str(path.resolve())
    return body


def check_disjoint(eval_models: dict[str, list[str]], proxy_models: list[str]) -> None:
    """Raise ConfigError naming both specs when an evaluation model is also a proxy model."""
    proxies = {spec_identity(p): p for p in proxy_models}
    for aspect, specs in eval_models.items():
        for spec in specs:
            hit = proxies.get(spec_identity(spec))
            if hit is not None:
                raise ConfigError(f"evaluation model {spec!r} (aspect {aspect!r}) is also the proxy "
                                  f"model {hit!r} used for selection: evaluate with a different model")


def model_label(spec: str) -> str:
    """A short, stable name for a spec in tables and metric names."""
    if spec.startswith("rule:"):
        return spec.replace(":", "_")
    body = spec.split(":", 1)[1] if spec.startswith(("fgpo:", "hf:")) else spec
    name = Path(body.rstrip("/")).name or body
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
    return f"{spec.split(':', 1)[0]}_{safe}" if spec.startswith(("fgpo:", "hf:")) else safe


# ---------------------------------------------------------------------------------------------
# Prompts

def _read_jsonl_prompts(path: Path) -> list[dict]:
    if not path.is_file():
        raise InputError("prompt file not found", file=str(path))
    out = []
    with open(path, encoding="utf-8") as fh:
        for i, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise InputError(f"not valid JSON: {e.msg}", file=str(path), line=i) from None
            if isinstance(obj, str):
                obj = {"prompt": obj}
            messages = obj.get("messages") or obj.get("prompt_messages") if isinstance(obj, dict) else None
            prompt = obj.get("prompt") if isinstance(obj, dict) else None
            if messages is not None:
                if not (isinstance(messages, list) and all(isinstance(m, dict) and "role" in m and
                                                           "content" in m for m in messages)):
                    raise InputError("must be a list of {role, content}", file=str(path), line=i,
                                     field="messages")
                messages = [{"role": str(m["role"]), "content": str(m["content"])} for m in messages]
                prompt = prompt or contract.render_messages(messages)
            if not isinstance(prompt, str) or not prompt.strip():
                raise InputError("missing or empty", file=str(path), line=i, field="prompt")
            out.append({"prompt": prompt, "messages": messages})
    return out


def _pair_prompts(directory: str | Path) -> list[dict]:
    df = contract.read_pairs(directory)
    out = []
    for prompt, messages in zip(df["prompt"], df["prompt_messages"]):
        msgs = [dict(m) for m in messages] if isinstance(messages, (list, tuple)) and len(messages) else None
        out.append({"prompt": prompt, "messages": msgs})
    return out


def _key(p: dict) -> str:
    return contract.prompt_key(p["prompt"], p.get("messages"))


def _training_dirs(config: EvalConfig, model_dir: str | Path | None) -> list[str]:
    """The configured training pools, the data dir the candidate's fgpo_model.json names, and
    (follow_lineage) every pair directory their manifests list as inputs: the pool a selected
    subset was drawn from is training data too."""
    dirs = list(config.exclude_pairs)
    info = read_model_info(model_dir) if model_dir else {}
    for key in ("data_dir", "train_data", "data"):
        value = info.get(key)
        if isinstance(value, str) and (Path(value) / contract.PAIRS_FILE).is_file():
            dirs.append(value)
    frontier, seen = list(dirs), set()
    for _ in range(4 if config.follow_lineage else 0):  # select -> validate -> ingest is 2 hops
        nxt = []
        for d in frontier:
            try:
                inputs = contract.read_manifest(d).get("inputs") or []
            except (FgpoError, ValueError):
                continue
            for item in inputs:
                path = item.get("path") if isinstance(item, dict) else item
                if isinstance(path, str) and (Path(path) / contract.PAIRS_FILE).is_file():
                    nxt.append(path)
        frontier = [d for d in nxt if d not in dirs]
        dirs += frontier
    out = []
    for d in dirs:
        key = str(Path(d).resolve())
        if key not in seen:
            seen.add(key)
            out.append(d)
    return out


def load_prompts(config: EvalConfig, model_dir: str | Path | None = None) -> tuple[list[dict], dict]:
    """Held-out prompts ({prompt, messages}) and a record of how they were held out."""
    if config.prompt_source == "synthetic":
        from fgpo_tasks.synthetic import SyntheticConfig, generate
        rows = generate(SyntheticConfig(n_pairs=max(4 * config.n_prompts, 64), seed=config.prompt_seed))
        pool = [{"prompt": r["prompt"], "messages": None} for r in rows]
    elif config.prompt_source == "pairs":
        pool = _pair_prompts(config.prompt_path)
    else:
        pool = _read_jsonl_prompts(Path(config.prompt_path))
    unique: dict[str, dict] = {}
    for p in pool:
        unique.setdefault(_key(p), p)
    train_dirs = _training_dirs(config, model_dir)
    train_keys: set[str] = set()
    for d in train_dirs:
        train_keys.update(_key(p) for p in _pair_prompts(d))
    held_out = [p for k, p in unique.items() if k not in train_keys]
    dropped = len(unique) - len(held_out)
    if not held_out:
        raise FgpoError(f"no held-out prompts: all {len(unique)} prompts of the {config.prompt_source} "
                        f"source appear in the training pool {train_dirs}")
    # Order by a seeded hash of the prompt identity: the same sample whatever the file order.
    held_out.sort(key=lambda p: sha256_hex(str(config.prompt_seed), _key(p)))
    chosen = held_out[:config.n_prompts]
    if len(chosen) < config.n_prompts:
        log.warning("only %d held-out prompts available (n_prompts=%d)", len(chosen), config.n_prompts)
    record = {"source": config.prompt_source, "path": config.prompt_path,
              "unique_prompts": len(unique), "excluded_training_prompts": dropped,
              "training_pools": train_dirs, "n_prompts": len(chosen),
              "prompts_fingerprint": sha256_hex(*sorted(_key(p) for p in chosen))}
    return chosen, record


# ---------------------------------------------------------------------------------------------
# Generation

def read_model_info(model_dir: str | Path) -> dict:
    path = Path(model_dir) / MODEL_INFO_FILE
    if path.is_file():
        try:
            return json.loads(path.read_text())
        except json.JSONDecodeError:
            log.warning("%s is not valid JSON; ignored", path)
    return {}


def _device(config: EvalConfig) -> str:
    import torch
    if config.device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return config.device


def _prompt_text(tok, p: dict, use_chat_template: bool) -> tuple[str, bool]:
    """(text, already_has_special_tokens)."""
    if use_chat_template and getattr(tok, "chat_template", None):
        messages = p.get("messages") or [{"role": "user", "content": p["prompt"]}]
        return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True), True
    return p["prompt"], False


GENERATION_CACHE_VERSION = "1"  # bump when generate_responses changes what it produces


def _generation_key(model_dir: str | Path, prompts: list[dict], config: EvalConfig) -> str:
    """Everything the responses depend on: the weights, the prompts, the decoding settings."""
    import torch
    import transformers

    settings = {k: getattr(config, k) for k in ("decoding", "temperature", "top_p", "max_new_tokens",
                                                 "max_prompt_tokens", "batch_size", "seed", "use_chat_template")}
    return sha256_hex(GENERATION_CACHE_VERSION, _policy_fingerprint(model_dir),
                      stable_json([_key(p) for p in prompts]), stable_json(settings), _device(config),
                      torch.__version__, transformers.__version__, _dtype(config))


def _dtype(config: EvalConfig) -> str:
    """The dtype policies and HF judges load in on this machine (``auto`` resolved: cpu means fp32)."""
    from fgpo_tasks.models import dtype_name

    return "fp32" if _device(config) == "cpu" and config.dtype == "auto" else dtype_name(config.dtype)


def _policy_fingerprint(model_dir: str | Path) -> str:
    """The policy's weights: its folder, and for a LoRA adapter alone also its base model's folder."""
    from fgpo_tasks.models import adapter_base, check_policy_dir, pretrained_path

    own = model_fingerprint(model_dir)
    if check_policy_dir(model_dir) == "full":
        return own
    base = pretrained_path(adapter_base(model_dir))
    return sha256_hex(own, model_fingerprint(base) if Path(base).exists() else base)


def cached_responses(model_dir: str | Path, prompts: list[dict], config: EvalConfig, desc: str = "generate",
                     cache_dir: str | Path | None = None) -> list[str]:
    """generate_responses, memoised on disk by _generation_key when config.generation_cache is on."""
    if not config.generation_cache:
        return generate_responses(model_dir, prompts, config, desc=desc)
    from fgpo_tasks.env import work_dir

    path = Path(cache_dir or work_dir() / "cache" / "generations") / f"{_generation_key(model_dir, prompts, config)}.json"
    if path.is_file():
        log.info("%s: responses of %s reused from %s", desc, model_dir, path)
        return json.loads(path.read_text(encoding="utf-8"))
    out = generate_responses(model_dir, prompts, config, desc=desc)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(jsonio.dumps(out, ensure_ascii=False), encoding="utf-8")
    tmp.replace(path)  # atomic: a reader sees the whole list or nothing
    return out


def generate_responses(model_dir: str | Path, prompts: list[dict], config: EvalConfig,
                       desc: str = "generate") -> list[str]:
    """Responses of the causal LM in ``model_dir`` to ``prompts``: batched, left-padded, seeded."""
    import torch
    from tqdm.auto import tqdm
    from transformers import AutoTokenizer, GenerationConfig

    from fgpo_tasks.models import check_policy_dir, load_policy

    check_policy_dir(model_dir)  # full weights, or a LoRA adapter on its base model
    device = _device(config)
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"  # decoder-only generation continues from the right edge
    tok.truncation_side = "left"  # a long prompt keeps its end, where the question is
    model = load_policy(model_dir, _dtype(config)).to(device).eval()
    gen = GenerationConfig(max_new_tokens=config.max_new_tokens, do_sample=config.decoding == "sample",
                           temperature=config.temperature if config.decoding == "sample" else None,
                           top_p=config.top_p if config.decoding == "sample" else None,
                           pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    torch.manual_seed(config.seed)
    if device.startswith("cuda"):
        torch.cuda.manual_seed_all(config.seed)
    texts = [_prompt_text(tok, p, config.use_chat_template) for p in prompts]
    out: list[str] = []
    for start in tqdm(range(0, len(texts), config.batch_size), desc=desc, leave=False):
        batch = texts[start:start + config.batch_size]
        templated = batch[0][1]
        enc = tok([t for t, _ in batch], return_tensors="pt", padding=True, truncation=True,
                  max_length=config.max_prompt_tokens, add_special_tokens=not templated).to(device)
        with torch.no_grad():
            ids = model.generate(**enc, generation_config=gen)
        new = ids[:, enc["input_ids"].shape[1]:]  # (B, new tokens): only what was generated
        out.extend(s.strip() for s in tok.batch_decode(new, skip_special_tokens=True))
    del model
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    return out


# ---------------------------------------------------------------------------------------------
# Scoring

def _rule_scorer(aspect: str) -> Scorer:
    from fgpo_tasks.synthetic import true_score

    def score(prompts: list[str], responses: list[str]) -> np.ndarray:
        return np.array([true_score(aspect, p, r) for p, r in zip(prompts, responses)], dtype=float)
    return score


def _hf_scorer(spec: str, config: EvalConfig) -> Scorer:
    import torch
    from fgpo_tasks.models import load_sequence_classifier, load_tokenizer

    device = _device(config)
    tok = load_tokenizer(spec)
    model = load_sequence_classifier(spec, dtype=_dtype(config)).to(device).eval()

    def text(p: str, r: str) -> str:
        if getattr(tok, "chat_template", None):
            return tok.apply_chat_template([{"role": "user", "content": p},
                                            {"role": "assistant", "content": r}], tokenize=False)
        return f"{p}\n\n{r}"

    def score(prompts: list[str], responses: list[str]) -> np.ndarray:
        out = []
        for s in range(0, len(prompts), config.score_batch_size):
            batch = [text(p, r) for p, r in zip(prompts[s:s + config.score_batch_size],
                                                 responses[s:s + config.score_batch_size])]
            enc = tok(batch, return_tensors="pt", padding=True, truncation=True,
                      max_length=config.score_max_length).to(device)
            with torch.no_grad():
                out.append(model(**enc).logits[:, 0].float().cpu().numpy())
        return np.concatenate(out) if out else np.zeros(0)
    return score


def build_scorer(spec: str, config: EvalConfig) -> Scorer:
    """A callable (prompts, responses) -> rewards for an evaluation model spec."""
    if spec.startswith("rule:"):
        return _rule_scorer(spec[5:])
    if spec.startswith("fgpo:"):
        from fgpo_tasks.reward_models import load_scorer  # the reward-model stage's loader
        return load_scorer(spec[5:])
    return _hf_scorer(spec[3:] if spec.startswith("hf:") else spec, config)


# ---------------------------------------------------------------------------------------------
# Statistics

def preferences(candidate: np.ndarray, baseline: np.ndarray, tie_tolerance: float = 0.0) -> np.ndarray:
    """Per-prompt preference for the candidate: 1 win, 0.5 tie, 0 loss."""
    diff = np.asarray(candidate, dtype=float) - np.asarray(baseline, dtype=float)
    return np.where(np.abs(diff) <= tie_tolerance, 0.5, (diff > 0).astype(float))


def win_rate(prefs: np.ndarray) -> float:
    return float(np.mean(prefs))


def bootstrap_ci(prefs: np.ndarray, n_samples: int = 1000, level: float = 0.95,
                 seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean preference, resampling prompts with replacement.

    Same as: for each of ``n_samples`` draws, ``mean(prefs[rng.integers(0, n, n)])``; then the
    ((1-level)/2, (1+level)/2) quantiles of those means.
    """
    prefs = np.asarray(prefs, dtype=float)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(prefs), size=(n_samples, len(prefs)))
    means = prefs[idx].mean(axis=1)
    alpha = (1.0 - level) / 2
    lo, hi = np.quantile(means, [alpha, 1.0 - alpha])
    return float(lo), float(hi)


def length_feature(delta_len: np.ndarray) -> np.ndarray:
    """AlpacaEval's length term: tanh(dlen / std(dlen)); all zeros when every dlen is equal."""
    delta_len = np.asarray(delta_len, dtype=float)
    sd = float(np.std(delta_len, ddof=1)) if len(delta_len) > 1 else 0.0  # pandas .std(): ddof=1
    return np.tanh(delta_len / sd) if sd > 0 else np.zeros_like(delta_len)


def fit_logistic(x: np.ndarray, y: np.ndarray, l2: float = 1e-6, max_iter: int = 100) -> tuple[float, float]:
    """(a, b) maximising sum y log s(a+bx) + (1-y) log(1-s(a+bx)) for soft labels y in [0, 1].

    Newton's method. A tiny ridge ``l2`` keeps the fit finite when the preferences are separable
    (e.g. every prompt a win), where the MLE runs off to infinity.
    """
    X = np.column_stack([np.ones_like(x, dtype=float), np.asarray(x, dtype=float)])
    y = np.asarray(y, dtype=float)
    w = np.zeros(2)
    for _ in range(max_iter):
        p = 1.0 / (1.0 + np.exp(-(X @ w)))
        grad = X.T @ (y - p) - l2 * w
        hess = X.T @ (X * (p * (1 - p))[:, None]) + l2 * np.eye(2)
        step = np.linalg.solve(hess, grad)
        w = w + step
        if np.max(np.abs(step)) < 1e-10:
            break
    return float(w[0]), float(w[1])


def length_controlled_win_rate(prefs: np.ndarray, delta_len: np.ndarray) -> dict[str, float]:
    """LC win rate: the fitted win probability at zero length difference (AlpacaEval LC)."""
    x = length_feature(delta_len)
    a, b = fit_logistic(x, prefs)
    return {"lc_win_rate": float(1.0 / (1.0 + math.exp(-a))), "lc_intercept": a, "lc_length_coef": b}


def _lengths(texts: list[str], unit: str, tok=None) -> np.ndarray:
    if unit == "chars":
        return np.array([len(t) for t in texts], dtype=float)
    if unit == "words":
        return np.array([len(t.split()) for t in texts], dtype=float)
    return np.array([len(tok(t, add_special_tokens=False)["input_ids"]) for t in texts], dtype=float)


# ---------------------------------------------------------------------------------------------
# The stage

def _model_record(path: str | Path) -> dict[str, Any]:
    info = read_model_info(path)
    return {"path": str(Path(path).resolve()), "fingerprint": model_fingerprint(path),
            "training_data_fingerprint": info.get("data_fingerprint"),
            "code_version": info.get("code_version")}


def model_fingerprint(path: str | Path) -> str:
    """Content hash of a policy folder's weights, config and tokenizer (what the registry compares).

    Memoised in-process by every file's (path, size, mtime): an evaluation needs a policy's hash
    for the generation cache and again for results.json, and a policy's weights are hundreds of MB."""
    root = Path(path)
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    stamp = tuple((str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files)
    return _fingerprint(str(root.resolve()), stamp)


@functools.lru_cache(maxsize=64)
def _fingerprint(path: str, stamp: tuple) -> str:
    return file_fingerprint(path)


def _aspect_figures(aspect: str, specs: list[str], cand_scores: dict, base_scores: dict,
                    delta_len: np.ndarray, config: EvalConfig) -> tuple[dict, np.ndarray]:
    per_model, prefs_by_model = {}, []
    for spec in specs:
        c, b = cand_scores[spec], base_scores[spec]
        prefs = preferences(c, b, config.tie_tolerance)
        prefs_by_model.append(prefs)
        lo, hi = bootstrap_ci(prefs, config.bootstrap_samples, config.ci_level, config.bootstrap_seed)
        per_model[spec] = {"label": model_label(spec), "candidate_mean_reward": float(np.mean(c)),
                           "baseline_mean_reward": float(np.mean(b)),
                           "reward_delta": float(np.mean(c) - np.mean(b)),
                           "win_rate": win_rate(prefs), "win_rate_ci": [lo, hi],
                           **length_controlled_win_rate(prefs, delta_len)}
    # An aspect with several evaluation models: each prompt's preference is the models' average.
    prefs = np.mean(prefs_by_model, axis=0)
    lo, hi = bootstrap_ci(prefs, config.bootstrap_samples, config.ci_level, config.bootstrap_seed)
    figures = {
        "eval_models": specs,
        "candidate_mean_reward": float(np.mean([m["candidate_mean_reward"] for m in per_model.values()])),
        "baseline_mean_reward": float(np.mean([m["baseline_mean_reward"] for m in per_model.values()])),
        "win_rate": win_rate(prefs), "win_rate_ci": [lo, hi],
        **length_controlled_win_rate(prefs, delta_len),
        "wins": int(np.sum(prefs > 0.5)), "ties": int(np.sum(prefs == 0.5)), "losses": int(np.sum(prefs < 0.5)),
        "models": per_model,
    }
    figures["reward_delta"] = figures["candidate_mean_reward"] - figures["baseline_mean_reward"]
    return figures, prefs


TABLE_HEADERS = ["aspect", "eval models", "candidate mean", "baseline mean", "win rate",
                 "CI low", "CI high", "LC win rate", "W/T/L"]


def results_table(results: dict) -> list[list]:
    rows = []
    for aspect, f in results["aspects"].items():
        rows.append([aspect, " ".join(model_label(s) for s in f["eval_models"]),
                     f["candidate_mean_reward"], f["baseline_mean_reward"], f["win_rate"],
                     f["win_rate_ci"][0], f["win_rate_ci"][1], f["lc_win_rate"],
                     f"{f['wins']}/{f['ties']}/{f['losses']}"])
    o = results["overall"]
    rows.append(["overall (mean of aspects)", "", "", "", o["win_rate"], "", "", o["lc_win_rate"], ""])
    return rows


def _markdown(results: dict) -> str:
    def fmt(v):
        return f"{v:.3f}" if isinstance(v, float) else str(v)
    lines = [f"# Evaluation: candidate vs baseline ({results['prompts']['n_prompts']} held-out prompts)", "",
             f"- candidate: `{results['candidate']['path']}`", f"- baseline: `{results['baseline']['path']}`",
             f"- win rate: ties count 0.5; {int(results['config']['ci_level'] * 100)}% percentile "
             f"bootstrap CI over prompts ({results['config']['bootstrap_samples']} resamples)",
             "- LC win rate: AlpacaEval length-controlled win rate (arXiv 2404.04475), length in "
             f"{results['config']['length_unit']}", "",
             "| " + " | ".join(TABLE_HEADERS) + " |", "|" + "---|" * len(TABLE_HEADERS)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in results_table(results)]
    return "\n".join(lines) + "\n"


def _csv(results: dict) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(TABLE_HEADERS)
    w.writerows(results_table(results))
    return buf.getvalue()


def _plot(path: Path, aspect: str, figures: dict, cand_scores: dict, base_scores: dict,
          prefs: np.ndarray, delta_len: np.ndarray) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    specs = figures["eval_models"]
    data, labels = [], []
    for spec in specs:
        data += [cand_scores[spec], base_scores[spec]]
        labels += [f"cand\n{model_label(spec)}", f"base\n{model_label(spec)}"]
    ax1.boxplot(data, showmeans=True)
    ax1.set_xticks(range(1, len(labels) + 1), labels, fontsize=7)
    ax1.set_ylabel("reward")
    ax1.set_title(f"{aspect}: rewards")
    x = length_feature(delta_len)
    jitter = np.random.default_rng(0).uniform(-0.03, 0.03, len(prefs))
    ax2.scatter(x, prefs + jitter, s=12, alpha=0.6, label="per-prompt preference")
    grid = np.linspace(-1, 1, 101)
    ax2.plot(grid, 1 / (1 + np.exp(-(figures["lc_intercept"] + figures["lc_length_coef"] * grid))),
             color="C1", label="logistic fit")
    ax2.axhline(figures["win_rate"], color="C2", ls="--", label=f"win rate {figures['win_rate']:.2f}")
    ax2.scatter([0], [figures["lc_win_rate"]], color="C3", zorder=3,
                label=f"LC win rate {figures['lc_win_rate']:.2f}")
    ax2.set_xlabel("tanh(length difference / std)")
    ax2.set_ylabel("P(candidate wins)")
    ax2.set_ylim(-0.1, 1.1)
    ax2.set_title(f"{aspect}: win rate {figures['win_rate']:.2f} "
                  f"[{figures['win_rate_ci'][0]:.2f}, {figures['win_rate_ci'][1]:.2f}]")
    ax2.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def run_evaluate(model: str | Path, baseline: str | Path, out_dir: str | Path, config: EvalConfig,
                 created_at: str, prompts: list[str] | list[dict] | None = None) -> dict:
    """Evaluate ``model`` against ``baseline``; write the results folder; return headline figures.

    ``prompts`` (texts or {prompt, messages}) replaces the configured prompt source.
    """
    if prompts is not None:
        plist = [p if isinstance(p, dict) else {"prompt": str(p), "messages": None} for p in prompts]
        if not plist:
            raise FgpoError("prompts is empty")
        record = {"source": "given", "path": None, "unique_prompts": len(plist),
                  "excluded_training_prompts": 0, "training_pools": [], "n_prompts": len(plist),
                  "prompts_fingerprint": sha256_hex(*sorted(_key(p) for p in plist))}
    else:
        plist, record = load_prompts(config, model)
    texts = [p["prompt"] for p in plist]
    log.info("evaluating %s vs %s on %d prompts", model, baseline, len(plist))
    cand_resp = cached_responses(model, plist, config, desc="candidate")
    base_resp = cached_responses(baseline, plist, config, desc="baseline")

    tok = None
    if config.length_unit == "tokens":
        from transformers import AutoTokenizer
        tok = AutoTokenizer.from_pretrained(str(model))
    delta_len = _lengths(cand_resp, config.length_unit, tok) - _lengths(base_resp, config.length_unit, tok)

    scorers: dict[str, Scorer] = {}
    cand_scores: dict[str, np.ndarray] = {}
    base_scores: dict[str, np.ndarray] = {}
    for spec in dict.fromkeys(s for specs in config.eval_models.values() for s in specs):
        scorers[spec] = build_scorer(spec, config)
        cand_scores[spec] = np.asarray(scorers[spec](texts, cand_resp), dtype=float)
        base_scores[spec] = np.asarray(scorers[spec](texts, base_resp), dtype=float)
        if cand_scores[spec].shape != (len(texts),):
            raise FgpoError(f"reward model {spec!r} returned shape {cand_scores[spec].shape} for "
                            f"{len(texts)} responses")

    aspects, prefs_by_aspect = {}, {}
    for aspect, specs in config.eval_models.items():
        aspects[aspect], prefs_by_aspect[aspect] = _aspect_figures(
            aspect, specs, cand_scores, base_scores, delta_len, config)
    overall = {
        "win_rate": float(np.mean([f["win_rate"] for f in aspects.values()])),
        "lc_win_rate": float(np.mean([f["lc_win_rate"] for f in aspects.values()])),
        "reward_delta": float(np.mean([f["reward_delta"] for f in aspects.values()])),
        "min_aspect_win_rate": float(min(f["win_rate"] for f in aspects.values())),
        "candidate_mean_length": float(np.mean(_lengths(cand_resp, config.length_unit, tok))),
        "baseline_mean_length": float(np.mean(_lengths(base_resp, config.length_unit, tok))),
    }
    results = {
        "kind": "fgpo.evaluation", "created_at": created_at, "code_version": code_version(),
        "config": to_dict(config), "candidate": _model_record(model), "baseline": _model_record(baseline),
        "prompts": record, "aspects": aspects, "overall": overall,
    }

    with atomic_dir(out_dir) as tmp:
        with open(tmp / "generations.jsonl", "w", encoding="utf-8") as fh:
            for i, p in enumerate(plist):
                fh.write(jsonio.dumps({
                    "prompt": p["prompt"], "messages": p.get("messages"),
                    "candidate": cand_resp[i], "baseline": base_resp[i], "delta_length": float(delta_len[i]),
                    "candidate_scores": {s: float(v[i]) for s, v in cand_scores.items()},
                    "baseline_scores": {s: float(v[i]) for s, v in base_scores.items()},
                    "preference": {a: float(v[i]) for a, v in prefs_by_aspect.items()},
                }, ensure_ascii=False) + "\n")
        (tmp / "results.json").write_text(jsonio.dumps(results, indent=2, default=str) + "\n")
        (tmp / "results.md").write_text(_markdown(results))
        (tmp / "results.csv").write_text(_csv(results))
        if config.plots:
            (tmp / "plots").mkdir()
            for aspect, figures in aspects.items():
                safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in aspect)
                _plot(tmp / "plots" / f"{safe}.png", aspect, figures, cand_scores, base_scores,
                      prefs_by_aspect[aspect], delta_len)
        manifest = {
            "kind": "fgpo.evaluation", "stage": "evaluate", "created_at": created_at,
            "code_version": code_version(), "config": to_dict(config),
            "inputs": [{"role": "candidate", **results["candidate"]},
                       {"role": "baseline", **results["baseline"]}],
            "counts": {"prompts": len(plist), "aspects": len(aspects)},
            "outputs": {name: file_fingerprint(tmp / name) for name in
                        ("results.json", "generations.jsonl")},
        }
        (tmp / contract.MANIFEST_FILE).write_text(jsonio.dumps(manifest, indent=2, default=str) + "\n")
    return {"out": str(out_dir), "n_prompts": len(plist), "win_rate": overall["win_rate"],
            "lc_win_rate": overall["lc_win_rate"],
            "aspects": {a: {"win_rate": f["win_rate"], "lc_win_rate": f["lc_win_rate"],
                            "win_rate_ci": f["win_rate_ci"]} for a, f in aspects.items()}}


def read_results(path: str | Path) -> dict:
    """results.json of an evaluation folder (or the file itself)."""
    path = Path(path)
    file = path / "results.json" if path.is_dir() else path
    if not file.is_file():
        raise FgpoError(f"{path}: no evaluation results (results.json)")
    return json.loads(file.read_text())
