"""Per-aspect proxy reward models (METHOD.md, "Estimating PD", step 1).

One Bradley-Terry reward model r_k per aspect k, trained on D_k (or a fraction ``p_r`` of it),
length-debiased two ways:

- length-balanced resampling: D_k+ (y_w at least as long as y_l) and D_k- are resampled so that
  f+' = exp(f+/tau) / (exp(f+/tau) + exp(f-/tau)); tau = inf gives exactly 50/50, tau = None
  ("off") keeps the data as it is;
- the length term rho in the loss: -log sigmoid(r(x,y_w) - r(x,y_l) + rho * dlen), with dlen the
  word-count difference in units of ``length_unit_words``; the model is scored with r alone.

Two modes:

- ``frozen``: a frozen backbone embeds every (prompt, response) once (mean pooling for encoders,
  last token for decoders) and a small head per aspect is trained on the embeddings. Embeddings
  live in an on-disk cache keyed by backbone + text hash, guarded by a file lock, so K aspect
  tasks running in parallel embed each response once overall.
- ``finetune``: the paper's setting, the whole ``AutoModelForSequenceClassification`` (one
  output) trained per aspect.

A shared fine-tuned backbone with K heads is deliberately NOT offered: that backbone would be
trained on every aspect's pairs, so r_k' scoring a pair of D_k would no longer be an
extrapolation (its features were fitted to D_k's labels), which biases PD toward agreement.
``frozen`` mode shares the backbone without that leak because the backbone never sees a label.

Layout written by ``run_reward_model``: ``out_dir/<aspect>/`` with reward_model.json (config,
aspect, fingerprints, metrics), training_ids.json, head.safetensors (frozen) or model/ (finetune),
loss_curve.png, length_bias.png, manifest.json.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import os
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

import numpy as np
import pandas as pd

from fgpo_tasks import contract
from fgpo_tasks.config import check, to_dict
from fgpo_tasks.errors import FgpoError, InputError
from fgpo_tasks.provenance import code_version, sha256_hex, stable_json
from fgpo_tasks.storage import atomic_dir

log = logging.getLogger(__name__)

UNIFIED = "__all__"  # the aspect name of the one unified reward model (the RAF baseline)
MODEL_FILE = "reward_model.json"
EMBED_VERSION = "1"  # bump when the embedding recipe changes: invalidates the embedding cache
ENCODER_TYPES = {"bert", "roberta", "distilbert", "deberta", "deberta-v2", "electra", "xlm-roberta",
                 "mpnet", "albert", "modernbert", "camembert", "nomic_bert"}


def _parse_tau(value):
    if value is False:  # YAML reads a bare `off` as false
        return None
    if value is True:
        raise FgpoError("tau must be a number, 'inf' or 'off', got true")
    if value is None or (isinstance(value, str) and value.strip().lower() in ("off", "none", "null")):
        return None
    if isinstance(value, str):
        try:
            return float(value)  # accepts "inf", "infinity"
        except ValueError:
            raise FgpoError(f"tau must be a number, 'inf' or 'off', got {value!r}") from None
    return float(value)


@dataclass
class RewardModelConfig:
    backbone: str = field(default="minilm-l6", metadata={
        "help": "model spec of the proxy backbone (hub id, folder, GGUF, alias: minilm-l6, "
                "smollm2-135m-instruct, tiny-bert, tiny-llama)"})
    mode: Literal["frozen", "finetune"] = field(default="frozen", metadata={
        "help": "frozen: embed once with a frozen backbone, train a head per aspect (fast); "
                "finetune: train the whole sequence classifier per aspect (the paper's)"})
    p_r: float = field(default=1.0, metadata={
        "help": "fraction of D_k's training part (what the held-out split leaves) used to train r_k"})
    heldout_fraction: float = field(default=0.2, metadata={
        "help": "fraction of D_k held out for accuracy and length-bias measurement (never trained on)"})
    rho: float = field(default=0.5, metadata={
        "help": "length term in the loss, per length_unit_words of length difference; 0 = off"})
    tau: float | str | bool | None = field(default=None, metadata={
        "help": "length-balancing temperature: f+' = softmax(f+/tau, f-/tau); 'inf' = exactly "
                "50/50, null/'off' = no resampling"})
    length_unit_words: float = field(default=100.0, metadata={
        "help": "the length difference in the rho term is counted in units of this many words"})
    lr: float | None = field(default=None, metadata={
        "help": "learning rate; default 1e-3 (frozen head) or 2e-5 (finetune)"})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay"})
    epochs: int | None = field(default=None, metadata={
        "help": "passes over the (resampled) training pairs; default 30 (frozen) or 1 (finetune)"})
    batch_size: int = field(default=32, metadata={"help": "training pairs per step"})
    max_length: int = field(default=256, metadata={"help": "tokens of prompt + response (truncated)"})
    max_prompt_length: int = field(default=96, metadata={
        "help": "the prompt keeps at most its LAST this many tokens, so the response gets the rest"})
    pooling: Literal["auto", "mean", "cls", "last"] = field(default="auto", metadata={
        "help": "frozen embedding pooling; auto: mean for encoders, last token for decoders"})
    head_hidden: int = field(default=0, metadata={
        "help": "frozen head: 0 = linear on standardised embeddings, >0 = one hidden layer"})
    embed_batch_size: int = field(default=32, metadata={
        "help": "texts per backbone forward pass", "inert": True})
    cache_dir: str | None = field(default=None, metadata={
        "help": "embedding cache root; default <work>/cache/embeddings", "inert": True})
    compare_undebiased: bool = field(default=True, metadata={
        "help": "also train a copy without debiasing (rho=0, no resampling) to report the length "
                "bias with and without debiasing", "weights": False})
    train_unified: bool = field(default=False, metadata={
        "help": "run_reward_models also trains one unified model on the whole pool (dir __all__, "
                "the RAF baseline's reward model)", "inert": True})
    refresh_fraction: float = field(default=0.25, metadata={
        "help": "incremental retraining: an earlier proxy of the same recipe is reused while its "
                "aspect's data has grown by less than this fraction since it was trained "
                "(0 = always retrain on new data)", "weights": False})
    device: Literal["auto", "cpu", "cuda"] = field(default="auto", metadata={
        "help": "auto: CUDA when available (bf16 autocast), else CPU"})
    seed: int = field(default=0, metadata={"help": "seed of the splits, resampling and init"})

    def __post_init__(self):
        self.tau = _parse_tau(self.tau)
        if self.lr is None:
            self.lr = 1e-3 if self.mode == "frozen" else 2e-5
        if self.epochs is None:
            self.epochs = 30 if self.mode == "frozen" else 1
        check(self.mode in ("frozen", "finetune"),
              f"mode must be 'frozen' or 'finetune', got {self.mode!r}")
        check(0.0 < self.p_r <= 1.0, f"p_r must be in (0, 1], got {self.p_r}")
        check(0.0 <= self.heldout_fraction < 1.0,
              f"heldout_fraction must be in [0, 1), got {self.heldout_fraction}")
        check(self.rho >= 0.0, f"rho must be >= 0, got {self.rho}")
        check(self.tau is None or self.tau > 0, f"tau must be > 0, 'inf' or 'off', got {self.tau}")
        check(self.length_unit_words > 0, f"length_unit_words must be > 0, got {self.length_unit_words}")
        check(self.lr > 0, f"lr must be > 0, got {self.lr}")
        check(self.epochs >= 1, f"epochs must be >= 1, got {self.epochs}")
        check(self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}")
        check(self.max_length >= 8, f"max_length must be >= 8, got {self.max_length}")
        check(0 <= self.max_prompt_length < self.max_length,
              f"max_prompt_length must be in [0, max_length={self.max_length}), "
              f"got {self.max_prompt_length}")
        check(self.head_hidden >= 0, f"head_hidden must be >= 0, got {self.head_hidden}")
        check(self.embed_batch_size >= 1, f"embed_batch_size must be >= 1, got {self.embed_batch_size}")
        check(self.refresh_fraction >= 0, f"refresh_fraction must be >= 0, got {self.refresh_fraction}")


def weight_fields(cfg: RewardModelConfig) -> dict:
    """The config fields that can change a trained model's weights (and so its scores): every
    field but those marked ``inert`` or ``weights: False`` in their metadata."""
    import dataclasses

    values = to_dict(cfg)
    return {f.name: values[f.name] for f in dataclasses.fields(cfg)
            if not f.metadata.get("inert") and f.metadata.get("weights", True)}


# ---------------------------------------------------------------------------------------------
# Small pure helpers (tested directly)

def word_length(texts) -> np.ndarray:
    """Length of each text in whitespace-separated words (tokenizer-independent)."""
    return np.array([len(str(t).split()) for t in texts], dtype=np.float64)


def balanced_fraction(f_plus: float, tau: float | None) -> float:
    """Target share of D_k+ after length balancing: exp(f+/tau) / (exp(f+/tau) + exp(f-/tau))."""
    if tau is None:
        return f_plus
    if math.isinf(tau):
        return 0.5
    a, b = f_plus / tau, (1.0 - f_plus) / tau
    m = max(a, b)  # stable softmax
    return math.exp(a - m) / (math.exp(a - m) + math.exp(b - m))


def _take(idx: np.ndarray, m: int, rng: np.random.Generator) -> np.ndarray:
    """m items of idx: whole copies first, then a sample without replacement (even reuse)."""
    if m <= 0 or len(idx) == 0:
        return np.empty(0, dtype=np.int64)
    full, rest = divmod(m, len(idx))
    parts = [idx] * full + [rng.choice(idx, size=rest, replace=False)]
    return np.concatenate(parts).astype(np.int64)


def length_balanced_indices(chosen_longer: np.ndarray, tau: float | None, rng: np.random.Generator,
                            n: int | None = None, warn: bool = True) -> np.ndarray:
    """Indices of a length-balanced resample of size n (default: the data size), shuffled.

    ``chosen_longer[i]``: pair i is in D_k+ (len(y_w) >= len(y_l)). Exactly
    round(balanced_fraction(f+, tau) * n) indices come from D_k+. With tau None, or when one side
    is empty (nothing to rebalance with), every index once.
    """
    chosen_longer = np.asarray(chosen_longer, dtype=bool)
    total = len(chosen_longer)
    n = total if n is None else n
    plus, minus = np.flatnonzero(chosen_longer), np.flatnonzero(~chosen_longer)
    if tau is None or len(plus) == 0 or len(minus) == 0:
        if warn and tau is not None and total:
            log.warning("length balancing skipped: every training pair has y_w %s y_l",
                        "at least as long as" if len(minus) == 0 else "shorter than")
        return rng.permutation(total)
    n_plus = int(round(balanced_fraction(len(plus) / total, tau) * n))
    picked = np.concatenate([_take(plus, n_plus, rng), _take(minus, n - n_plus, rng)])
    return rng.permutation(picked)


def bt_loss(margin, dlen, rho: float):
    """Bradley-Terry loss with the length term: -log sigmoid(margin + rho * dlen), mean."""
    import torch.nn.functional as F

    return -F.logsigmoid(margin + rho * dlen).mean()


def spearman(a, b) -> float | None:
    """Spearman correlation, None when undefined (fewer than 3 points or a constant input)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    ok = np.isfinite(a) & np.isfinite(b)
    a, b = a[ok], b[ok]
    if len(a) < 3 or np.all(a == a[0]) or np.all(b == b[0]):
        return None
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic)


def pairwise_accuracy(margin) -> float | None:
    """Share of pairs the model orders like the label (a tie counts one half)."""
    margin = np.asarray(margin, dtype=float)
    if len(margin) == 0:
        return None
    return float(np.mean((margin > 0) + 0.5 * (margin == 0)))


def length_sorted_batches(lengths, batch_size: int) -> list[np.ndarray]:
    """Index batches of texts sorted by length (longest first), so padding stays small."""
    order = np.argsort(-np.asarray(lengths), kind="stable")
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def padding_fraction(lengths, batches) -> float:
    """Fraction of padding tokens when each batch is padded to its longest member."""
    lengths = np.asarray(lengths)
    total = sum(len(b) * lengths[b].max() for b in batches if len(b))
    return float(1.0 - lengths.sum() / total) if total else 0.0


def split_aspect(pair_ids: list[str], heldout_fraction: float, p_r: float, seed: int
                 ) -> tuple[np.ndarray, np.ndarray]:
    """(train, heldout) positions of one aspect's pairs: deterministic for the ids and seed."""
    order = np.argsort(np.asarray(pair_ids), kind="stable")  # independent of the input order
    perm = order[np.random.default_rng(seed).permutation(len(order))]
    n_held = int(round(heldout_fraction * len(perm)))
    if heldout_fraction > 0 and len(perm) >= 2:
        n_held = min(max(n_held, 1), len(perm) - 1)
    held, rest = perm[:n_held], perm[n_held:]
    n_train = max(1, int(round(p_r * len(rest)))) if len(rest) else 0
    return np.sort(rest[:n_train]), np.sort(held)


def text_key(prompt: str, response: str) -> str:
    return sha256_hex(prompt, response)[:32]


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise FgpoError("device 'cuda' requested but CUDA is not available")
    return device


def default_cache_root(kind: str = "embeddings") -> Path:
    from fgpo_tasks.env import work_dir

    return work_dir() / "cache" / kind


# ---------------------------------------------------------------------------------------------
# Tokenising (prompt, response) for either an encoder (pair encoding) or a chat model (template)

def encode_texts(tokenizer, prompts: list[str], responses: list[str], max_length: int,
                 max_prompt_length: int) -> list[dict]:
    """Token features per (prompt, response): the prompt keeps its last tokens, the response the rest."""
    out = []
    use_template = getattr(tokenizer, "chat_template", None) is not None
    for prompt, response in zip(prompts, responses):
        p_ids = tokenizer(prompt, add_special_tokens=False, verbose=False)["input_ids"]
        if max_prompt_length == 0:
            prompt = ""
        elif len(p_ids) > max_prompt_length:
            prompt = tokenizer.decode(p_ids[-max_prompt_length:])
        if use_template:
            text = tokenizer.apply_chat_template(
                [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}],
                tokenize=False)
            enc = tokenizer(text, add_special_tokens=False, truncation=True, max_length=max_length)
        else:
            enc = tokenizer(prompt, response, truncation="only_second", max_length=max_length)
        out.append({k: list(v) for k, v in enc.items()})
    return out


def _collate(tokenizer, feats: list[dict], device):
    batch = tokenizer.pad(feats, padding=True, return_tensors="pt")
    return {k: v.to(device) for k, v in batch.items()}


def _autocast(device: str):
    import torch

    if device == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


# ---------------------------------------------------------------------------------------------
# Frozen backbone: embeddings with an on-disk cache

class EmbeddingCache:
    """Embeddings keyed by text hash, one folder per embedding key (backbone contents + recipe).

    A shard is ``shard-<id>.npy`` (float32 rows) plus ``shard-<id>.keys.npy`` (its text keys),
    each written to a unique temporary name and renamed, the keys last: a shard exists for a
    reader once its keys do. Readers take no lock: they read the key files (the index, cached per
    process and extended only by new shards) and then, memory-mapped, only the rows of the shards
    that hold the texts they ask for. Writers of missing texts serialise on a file lock and look
    again once they hold it, so parallel tasks embed each text once overall."""

    def __init__(self, root: str | Path, backbone_key: str):
        self.dir = Path(root) / backbone_key
        self.dir.mkdir(parents=True, exist_ok=True)
        self.index: dict[str, tuple[str, int]] = {}
        self._shards: set[str] = set()

    def refresh(self) -> None:
        for kf in sorted(self.dir.glob("shard-*.keys.npy")):
            sid = kf.name[:-len(".keys.npy")]
            if sid in self._shards:
                continue
            for i, k in enumerate(np.load(kf, allow_pickle=False).tolist()):
                self.index.setdefault(k, (sid, i))
            self._shards.add(sid)

    def missing(self, keys) -> list[str]:
        return [k for k in dict.fromkeys(keys) if k not in self.index]

    def get(self, keys: list[str]) -> np.ndarray:
        """The rows of ``keys`` (all present), reading only the shards that hold them."""
        where: dict[str, list[int]] = {}
        for n, k in enumerate(keys):
            where.setdefault(self.index[k][0], []).append(n)
        out = None
        for sid, positions in where.items():
            arr = np.load(self.dir / f"{sid}.npy", mmap_mode="r", allow_pickle=False)
            if out is None:
                out = np.empty((len(keys), arr.shape[1]), dtype=np.float32)
            out[positions] = arr[[self.index[keys[n]][1] for n in positions]]
        return out if out is not None else np.empty((0, 0), dtype=np.float32)

    def add(self, keys: list[str], emb: np.ndarray) -> None:
        from fgpo_tasks.storage import atomic_write

        if not keys:
            return
        sid = f"shard-{uuid.uuid4().hex}"
        for suffix, arr in ((".npy", emb.astype(np.float32)), (".keys.npy", np.array(keys))):
            buf = io.BytesIO()
            np.save(buf, arr, allow_pickle=False)
            atomic_write(self.dir / f"{sid}{suffix}", buf.getvalue())
        for i, k in enumerate(keys):
            self.index.setdefault(k, (sid, i))
        self._shards.add(sid)

    def fetch(self, keys: list[str], compute: Callable[[list[str]], np.ndarray]) -> np.ndarray:
        """Rows of ``keys``; ``compute(missing keys)`` embeds those no shard holds yet."""
        from fgpo_tasks.storage import file_lock

        self.refresh()
        if self.missing(keys):
            with file_lock(self.dir / ".write.lock"):
                self.refresh()  # another writer may have added them meanwhile
                missing = self.missing(keys)
                if missing:
                    log.info("embedding %d new texts (%d cached)", len(missing),
                             len(set(keys)) - len(missing))
                    self.add(missing, compute(missing))
        return self.get(keys)


_CACHES: dict[Path, EmbeddingCache] = {}


def embedding_cache(root: str | Path, key: str) -> EmbeddingCache:
    """One EmbeddingCache per folder and process, so its index is read once."""
    d = Path(root).absolute() / key
    if d not in _CACHES or not d.is_dir():
        _CACHES[d] = EmbeddingCache(root, key)
    return _CACHES[d]


def backbone_fingerprint(spec: str) -> str:
    """sha256 of every file of the backbone's local folder (weights, config, tokenizer), each
    hashed once per (path, size, mtime_ns); a hub id is resolved to its local snapshot first."""
    from fgpo_tasks.models import pretrained_path
    from fgpo_tasks.stages import tree_sha256

    path = Path(pretrained_path(spec))
    if not path.exists():
        try:
            from huggingface_hub import snapshot_download
            path = Path(snapshot_download(str(path), local_files_only=True))
        except Exception as e:  # noqa: BLE001 - any failure means "no local copy"
            raise FgpoError(f"backbone {spec!r}: no local copy to fingerprint ({e})") from None
    return tree_sha256(path)


def library_versions() -> str:
    """The libraries whose numerics an embedding depends on."""
    import torch
    import transformers

    return f"torch={torch.__version__};transformers={transformers.__version__}"


class FrozenEmbedder:
    """A frozen backbone that turns (prompt, response) into one vector; shared across aspects."""

    def __init__(self, spec: str, max_length: int, max_prompt_length: int, pooling: str,
                 batch_size: int, device: str = "auto", weights: str | None = None):
        from fgpo_tasks.models import load_encoder, load_tokenizer

        self.spec, self.max_length, self.max_prompt_length = spec, max_length, max_prompt_length
        self.batch_size = batch_size
        self.device = resolve_device(device)
        self.tokenizer = load_tokenizer(spec)
        self.model = load_encoder(spec).to(self.device).eval()
        model_type = getattr(self.model.config, "model_type", "")
        if pooling == "auto":
            pooling = "mean" if model_type in ENCODER_TYPES else "last"
        self.pooling = pooling
        self.dim = int(self.model.config.hidden_size)
        self.weights = weights or backbone_fingerprint(spec)
        self.key = sha256_hex(EMBED_VERSION, self.weights, library_versions(),
                              str(max_length), str(max_prompt_length), pooling)[:24]

    def _pool(self, hidden, mask):
        import torch

        if self.pooling == "mean":
            m = mask.unsqueeze(-1).to(hidden.dtype)
            return (hidden * m).sum(1) / m.sum(1).clamp(min=1)
        if self.pooling == "cls":
            return hidden[:, 0]
        last = mask.sum(1) - 1  # right padding: the last real token
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]

    def embed_uncached(self, prompts: list[str], responses: list[str], progress: bool = True
                       ) -> np.ndarray:
        import torch
        from tqdm.auto import tqdm

        feats = encode_texts(self.tokenizer, prompts, responses, self.max_length,
                             self.max_prompt_length)
        out = np.zeros((len(feats), self.dim), dtype=np.float32)
        batches = length_sorted_batches([len(f["input_ids"]) for f in feats], self.batch_size)
        with torch.inference_mode(), _autocast(self.device):
            for b in tqdm(batches, desc=f"embed {self.spec}", unit="batch", disable=not progress,
                          leave=False):
                enc = _collate(self.tokenizer, [feats[i] for i in b], self.device)
                hidden = self.model(**enc).last_hidden_state
                out[b] = self._pool(hidden, enc["attention_mask"]).float().cpu().numpy()
        return out

    def embed(self, prompts: list[str], responses: list[str], cache_root: str | Path | None = None,
              progress: bool = True) -> np.ndarray:
        """Embeddings of each (prompt, response); each distinct text is embedded at most once,
        ever, when ``cache_root`` is given (else once per call)."""
        keys = [text_key(p, r) for p, r in zip(prompts, responses)]
        first = {}
        for i, k in enumerate(keys):
            first.setdefault(k, i)
        if cache_root is None:
            uniq = list(first.values())
            emb = self.embed_uncached([prompts[i] for i in uniq], [responses[i] for i in uniq], progress)
            row = {k: j for j, k in enumerate(first)}
            return emb[[row[k] for k in keys]]
        cache = embedding_cache(cache_root, self.key)

        def compute(missing: list[str]) -> np.ndarray:
            return self.embed_uncached([prompts[first[k]] for k in missing],
                                       [responses[first[k]] for k in missing], progress)

        return cache.fetch(keys, compute)


_EMBEDDERS: dict[tuple, FrozenEmbedder] = {}


def get_embedder(spec: str, max_length: int, max_prompt_length: int, pooling: str,
                 batch_size: int, device: str = "auto") -> FrozenEmbedder:
    """One loaded backbone per process, recipe and backbone contents (loading MiniLM takes
    seconds; weights changed in place are a new backbone, never the stale loaded one)."""
    weights = backbone_fingerprint(spec)
    k = (spec, weights, max_length, max_prompt_length, pooling, batch_size, device)
    if k not in _EMBEDDERS:
        _EMBEDDERS[k] = FrozenEmbedder(spec, max_length, max_prompt_length, pooling, batch_size, device,
                                       weights=weights)
    return _EMBEDDERS[k]


def _make_head(in_dim: int, hidden: int, mean=None, std=None):
    import torch
    from torch import nn

    class Head(nn.Module):
        """r(e) = w . ((e - mean) / std) [+ MLP]: standardising makes one lr fit any backbone."""

        def __init__(self):
            super().__init__()
            self.register_buffer("mean", torch.zeros(in_dim) if mean is None else torch.as_tensor(mean))
            self.register_buffer("std", torch.ones(in_dim) if std is None else torch.as_tensor(std))
            self.net = (nn.Linear(in_dim, 1) if hidden == 0 else
                        nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU(), nn.Linear(hidden, 1)))

        def forward(self, e):
            return self.net((e - self.mean) / self.std).squeeze(-1)

    return Head()


# ---------------------------------------------------------------------------------------------
# Training loops (Accelerate)

def _accelerator(device: str):
    from accelerate import Accelerator

    dev = resolve_device(device)
    return Accelerator(cpu=dev == "cpu", mixed_precision="bf16" if dev == "cuda" else "no")


@contextlib.contextmanager
def _one_thread():
    """Small head ops gain nothing from threads, and on a busy CPU several threads spin-wait:
    one thread trained a head 18x faster than two on the shared 2-core machine."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _train_head(ew: np.ndarray, el: np.ndarray, dlen: np.ndarray, longer: np.ndarray,
                cfg: RewardModelConfig, rho: float, tau: float | None, eval_fn=None):
    """Train a frozen-mode head on embedding pairs; returns (head, loss curve)."""
    with _one_thread():
        return _train_head_loop(ew, el, dlen, longer, cfg, rho, tau, eval_fn)


def _train_head_loop(ew, el, dlen, longer, cfg, rho, tau, eval_fn):
    import torch

    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    both = np.concatenate([ew, el])
    mean, std = both.mean(0), both.std(0) + 1e-6
    head = _make_head(ew.shape[1], cfg.head_hidden, mean.astype(np.float32), std.astype(np.float32))
    acc = _accelerator(cfg.device)
    opt = torch.optim.AdamW(head.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    head, opt = acc.prepare(head, opt)
    tw, tl = torch.as_tensor(ew, device=acc.device), torch.as_tensor(el, device=acc.device)
    td = torch.as_tensor(dlen, dtype=torch.float32, device=acc.device)
    curve = []
    for epoch in range(cfg.epochs):
        head.train()
        idx = torch.as_tensor(length_balanced_indices(longer, tau, rng, warn=epoch == 0),
                              device=acc.device)
        total, steps = 0.0, 0
        for s in range(0, len(idx), cfg.batch_size):
            b = idx[s:s + cfg.batch_size]
            loss = bt_loss(head(tw[b]) - head(tl[b]), td[b], rho)
            opt.zero_grad()
            acc.backward(loss)
            opt.step()
            total, steps = total + float(loss.detach()), steps + 1
        point = {"epoch": epoch + 1, "train_loss": total / max(steps, 1)}
        if eval_fn is not None:
            point.update(eval_fn(acc.unwrap_model(head)))
        curve.append(point)
    return acc.unwrap_model(head).cpu().eval(), curve


def _head_margin(head, ew: np.ndarray, el: np.ndarray) -> np.ndarray:
    import torch

    with torch.inference_mode(), _one_thread():
        return (head(torch.as_tensor(ew)) - head(torch.as_tensor(el))).numpy().astype(np.float64)


def _score_classifier(model, tokenizer, prompts, responses, cfg_like: dict, device: str,
                      batch_size: int, progress: bool = True) -> np.ndarray:
    """r(x, y) of a sequence classifier on each text; one pass per distinct text, length-sorted."""
    import torch
    from tqdm.auto import tqdm

    keys = [text_key(p, r) for p, r in zip(prompts, responses)]
    first = {}
    for i, k in enumerate(keys):
        first.setdefault(k, i)
    uniq = list(first.values())
    feats = encode_texts(tokenizer, [prompts[i] for i in uniq], [responses[i] for i in uniq],
                         cfg_like["max_length"], cfg_like["max_prompt_length"])
    vals = np.zeros(len(feats), dtype=np.float64)
    model.eval()
    with torch.inference_mode(), _autocast(device):
        for b in tqdm(length_sorted_batches([len(f["input_ids"]) for f in feats], batch_size),
                      desc="score", unit="batch", disable=not progress, leave=False):
            enc = _collate(tokenizer, [feats[i] for i in b], device)
            vals[b] = model(**enc).logits[:, 0].float().cpu().numpy()
    row = {k: j for j, k in enumerate(first)}
    return vals[[row[k] for k in keys]]


def _train_classifier(rows: pd.DataFrame, dlen: np.ndarray, longer: np.ndarray,
                      cfg: RewardModelConfig, rho: float, tau: float | None, eval_fn=None):
    """Finetune mode: train the whole sequence classifier; returns (model, tokenizer, curve)."""
    import torch
    from tqdm.auto import tqdm

    from fgpo_tasks.models import load_sequence_classifier, load_tokenizer

    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    tok = load_tokenizer(cfg.backbone)
    model = load_sequence_classifier(cfg.backbone)
    prompts = rows["prompt"].tolist()
    fw = encode_texts(tok, prompts, rows["chosen"].tolist(), cfg.max_length, cfg.max_prompt_length)
    fl = encode_texts(tok, prompts, rows["rejected"].tolist(), cfg.max_length, cfg.max_prompt_length)
    acc = _accelerator(cfg.device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    model, opt = acc.prepare(model, opt)
    curve = []
    for epoch in range(cfg.epochs):
        model.train()
        idx = length_balanced_indices(longer, tau, rng, warn=epoch == 0)
        total, steps = 0.0, 0
        for s in tqdm(range(0, len(idx), cfg.batch_size), desc=f"finetune epoch {epoch + 1}",
                      unit="step", leave=False):
            b = idx[s:s + cfg.batch_size]
            enc = _collate(tok, [fw[i] for i in b] + [fl[i] for i in b], acc.device)
            with acc.autocast():
                r = model(**enc).logits[:, 0].float()
            d = torch.as_tensor(dlen[b], dtype=torch.float32, device=acc.device)
            loss = bt_loss(r[:len(b)] - r[len(b):], d, rho)
            opt.zero_grad()
            acc.backward(loss)
            opt.step()
            total, steps = total + float(loss.detach()), steps + 1
        point = {"epoch": epoch + 1, "train_loss": total / max(steps, 1)}
        if eval_fn is not None:
            point.update(eval_fn(acc.unwrap_model(model), tok))
        curve.append(point)
    return acc.unwrap_model(model).cpu().eval(), tok, curve


# ---------------------------------------------------------------------------------------------
# One aspect

def _aspect_rows(df: pd.DataFrame, aspect: str) -> pd.DataFrame:
    rows = df if aspect == UNIFIED else df[df["aspect"] == aspect]
    return rows.sort_values("pair_id", kind="stable").reset_index(drop=True)


def _recipe_fingerprint(aspect: str, cfg: RewardModelConfig, train_fp: str, backbone_fp: str = "") -> str:
    """Identity of a trained model: what it was trained on and how (every weight-relevant field,
    the backbone's weights, the reward-model code). The score cache keys on it, so a retrain on
    unchanged data and config reuses earlier scores."""
    from fgpo_tasks.stages import code_version as stage_code

    return sha256_hex(aspect, stable_json(weight_fields(cfg)), train_fp, backbone_fp,
                      stage_code("reward_model"))[:32]


def _length_bias_figure(path: Path, dlen, margins: dict[str, np.ndarray], aspect: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(margins), figsize=(5 * len(margins), 4), squeeze=False)
    for ax, (name, m) in zip(axes[0], margins.items()):
        rho_s = spearman(m, dlen)
        ax.scatter(dlen, m, s=8, alpha=0.5)
        ax.axhline(0, color="grey", lw=0.5)
        ax.set_title(f"{name}: Spearman {rho_s:.3f}" if rho_s is not None else name)
        ax.set_xlabel("len(y_w) - len(y_l) (words)")
        ax.set_ylabel("margin r(y_w) - r(y_l)")
    fig.suptitle(f"length bias on held-out pairs: {aspect}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _loss_figure(path: Path, curves: dict[str, list[dict]], aspect: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, curve in curves.items():
        ep = [p["epoch"] for p in curve]
        ax.plot(ep, [p["train_loss"] for p in curve], label=f"{name} train")
        if curve and "heldout_loss" in curve[0]:
            ax.plot(ep, [p["heldout_loss"] for p in curve], "--", label=f"{name} held-out")
    ax.set_xlabel("epoch")
    ax.set_ylabel("BT loss")
    ax.set_title(f"reward model {aspect}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _heldout_loss(margin: np.ndarray) -> float:
    return float(np.mean(np.logaddexp(0.0, -margin))) if len(margin) else float("nan")


def run_reward_model(data_dir: str | Path, aspect: str, out_dir: str | Path,
                     config: RewardModelConfig, created_at: str) -> dict[str, Any]:
    """Train r_k for ONE aspect (or the unified model, aspect ``__all__``) into out_dir/<aspect>/."""
    start = time.perf_counter()
    df = contract.read_pairs(data_dir)
    rows = _aspect_rows(df, aspect)
    known = sorted(df["aspect"].unique())
    if len(rows) == 0:
        raise InputError(f"no pairs labelled on aspect {aspect!r}; aspects in the data: {known}",
                         file=str(data_dir))
    tr, ho = split_aspect(rows["pair_id"].tolist(), config.heldout_fraction, config.p_r, config.seed)
    if len(tr) < 2:
        raise InputError(f"aspect {aspect!r} has too few pairs to train on ({len(rows)})",
                         file=str(data_dir))
    train, held = rows.iloc[tr].reset_index(drop=True), rows.iloc[ho].reset_index(drop=True)
    lw, ll = word_length(rows["chosen"]), word_length(rows["rejected"])
    dlen_all = (lw - ll) / config.length_unit_words
    dlen_tr, dlen_ho = dlen_all[tr], dlen_all[ho]
    longer = (lw >= ll)[tr]
    dwords_ho = (lw - ll)[ho]
    train_fp = contract.content_fingerprint(train)
    fingerprint = _recipe_fingerprint(aspect, config, train_fp, backbone_fingerprint(config.backbone))
    variants = {"debiased": (config.rho, config.tau)}
    if config.compare_undebiased and (config.rho != 0 or config.tau is not None):
        variants["undebiased"] = (0.0, None)
    log.info("reward model %s: %d train / %d held-out pairs, mode %s, backbone %s", aspect,
             len(train), len(held), config.mode, config.backbone)

    curves, margins, models = {}, {}, {}
    if config.mode == "frozen":
        emb = get_embedder(config.backbone, config.max_length, config.max_prompt_length,
                           config.pooling, config.embed_batch_size, config.device)
        cache_root = config.cache_dir or default_cache_root()
        prompts = rows["prompt"].tolist()
        both = emb.embed(prompts + prompts, rows["chosen"].tolist() + rows["rejected"].tolist(),
                         cache_root)
        ew, el = both[:len(rows)], both[len(rows):]

        def eval_fn(head):
            m = _head_margin(head, ew[ho], el[ho])
            return {"heldout_loss": _heldout_loss(m), "heldout_accuracy": pairwise_accuracy(m)} if len(ho) else {}

        for name, (rho, tau) in variants.items():
            head, curves[name] = _train_head(ew[tr], el[tr], dlen_tr, longer, config, rho, tau, eval_fn)
            models[name] = head
            margins[name] = _head_margin(head, ew[ho], el[ho])
    else:
        def eval_fn(model, tok):
            if not len(ho):
                return {}
            m = _pair_margin_classifier(model, tok, held, config)
            return {"heldout_loss": _heldout_loss(m), "heldout_accuracy": pairwise_accuracy(m)}

        for name, (rho, tau) in variants.items():
            model, tok, curves[name] = _train_classifier(train, dlen_tr, longer, config, rho, tau,
                                                         eval_fn)
            models[name] = (model, tok)
            margins[name] = _pair_margin_classifier(model, tok, held, config) if len(ho) else np.empty(0)

    metrics = {
        "aspect": aspect,
        "n_pairs": int(len(rows)), "n_train": int(len(train)), "n_heldout": int(len(held)),
        "train_chosen_longer_fraction": float(longer.mean()),
        "heldout_accuracy": pairwise_accuracy(margins["debiased"]),
        "length_corr": spearman(margins["debiased"], dwords_ho),
        "heldout_accuracy_undebiased": pairwise_accuracy(margins["undebiased"]) if "undebiased" in margins else None,
        "length_corr_undebiased": spearman(margins["undebiased"], dwords_ho) if "undebiased" in margins else None,
        "heldout_chosen_longer_fraction": float((dwords_ho >= 0).mean()) if len(ho) else None,
    }
    record = {
        "kind": "fgpo.reward_model",
        "aspect": aspect,
        "mode": config.mode,
        "backbone": config.backbone,
        "config": to_dict(config),
        "fingerprint": fingerprint,
        "training_data_fingerprint": train_fp,
        "data_fingerprint": contract.content_fingerprint(df),
        "data_dir": str(data_dir),
        "code_version": code_version(),
        "created_at": created_at,
        "metrics": metrics,
        "loss_curve": curves,
    }
    if config.mode == "frozen":
        record["embedding_key"] = emb.key
    target = Path(out_dir) / aspect
    with atomic_dir(target) as tmp:
        if config.mode == "frozen":
            from safetensors.torch import save_file

            save_file({k: v.contiguous() for k, v in models["debiased"].state_dict().items()},
                      str(tmp / "head.safetensors"))
            record["head"] = {"in_dim": int(ew.shape[1]), "hidden": config.head_hidden}
        else:
            model, tok = models["debiased"]
            model.save_pretrained(tmp / "model")
            tok.save_pretrained(tmp / "model")
        (tmp / "training_ids.json").write_text(json.dumps(sorted(train["pair_id"].tolist())) + "\n")
        (tmp / "heldout_ids.json").write_text(json.dumps(sorted(held["pair_id"].tolist())) + "\n")
        (tmp / MODEL_FILE).write_text(json.dumps(record, indent=2, default=str) + "\n")
        (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        _loss_figure(tmp / "loss_curve.png", curves, aspect)
        if len(ho):
            _length_bias_figure(tmp / "length_bias.png", dwords_ho, margins, aspect)
        contract.write_manifest(tmp, {
            "kind": "fgpo.reward_model", "stage": "reward_models", "aspect": aspect,
            "created_at": created_at, "code_version": code_version(), "config": to_dict(config),
            "fingerprint": fingerprint, "training_data_fingerprint": train_fp,
            "inputs": [{"path": str(data_dir), "fingerprint": record["data_fingerprint"]}],
            "row_counts": {"train": int(len(train)), "heldout": int(len(held))},
            "metrics": metrics,
        })
    metrics = dict(metrics, model_dir=str(target), fingerprint=fingerprint,
                   seconds=round(time.perf_counter() - start, 2))
    log.info("reward model %s: held-out accuracy %s, length corr %s (undebiased %s)", aspect,
             metrics["heldout_accuracy"], metrics["length_corr"], metrics["length_corr_undebiased"])
    return metrics


def _pair_margin_classifier(model, tok, rows: pd.DataFrame, cfg: RewardModelConfig) -> np.ndarray:
    dev = next(model.parameters()).device.type
    p = rows["prompt"].tolist()
    r = _score_classifier(model, tok, p + p, rows["chosen"].tolist() + rows["rejected"].tolist(),
                          {"max_length": cfg.max_length, "max_prompt_length": cfg.max_prompt_length},
                          dev, cfg.embed_batch_size, progress=False)
    return r[:len(rows)] - r[len(rows):]


def run_unified_reward_model(data_dir: str | Path, out_dir: str | Path, config: RewardModelConfig,
                             created_at: str) -> dict[str, Any]:
    """The RAF baseline's reward model: one model on the whole pool, in out_dir/__all__/."""
    return run_reward_model(data_dir, UNIFIED, out_dir, config, created_at)


def discover_models(reward_models_dir: str | Path, include_unified: bool = False) -> list[dict]:
    """The saved reward models under a folder (one sub-folder each), sorted by aspect."""
    root = Path(reward_models_dir)
    if not root.is_dir():
        raise FgpoError(f"{root}: reward-model folder not found")
    found = []
    for sub in sorted(root.iterdir()):
        f = sub / MODEL_FILE
        if f.is_file():
            rec = json.loads(f.read_text())
            if rec["aspect"] == UNIFIED and not include_unified:
                continue
            rec["dir"] = str(sub)
            rec["training_ids"] = set(json.loads((sub / "training_ids.json").read_text()))
            found.append(rec)
    if not found:
        raise FgpoError(f"{root}: no reward models found (expected <aspect>/{MODEL_FILE}; "
                        "train them with `fgpo reward-models`)")
    return sorted(found, key=lambda r: r["aspect"])


def load_models(model_dirs: list[str | Path], include_unified: bool = False) -> list[dict]:
    """The saved reward models in the folders ``model_dirs`` (each one model), sorted by aspect."""
    found = []
    for d in model_dirs:
        rec = load_record(d)
        if rec["aspect"] == UNIFIED and not include_unified:
            continue
        rec["dir"] = str(d)
        rec["training_ids"] = set(json.loads((Path(d) / "training_ids.json").read_text()))
        found.append(rec)
    return sorted(found, key=lambda r: r["aspect"])


def summarize_reward_models(out_dir: str | Path, created_at: str, config: RewardModelConfig | None = None
                            ) -> dict[str, Any]:
    """Write out_dir/manifest.json and the accuracy / length-bias report over every model there."""
    from fgpo_tasks import reports

    out = Path(out_dir)
    models = discover_models(out, include_unified=True)
    table = [dict(r["metrics"], fingerprint=r["fingerprint"], mode=r["mode"], backbone=r["backbone"])
             for r in models]
    reports.reward_model_table(table, out / "reports")
    manifest = {
        "kind": "fgpo.reward_models", "stage": "reward_models", "created_at": created_at,
        "code_version": code_version(), "config": to_dict(config) if config else None,
        "models": {r["aspect"]: {"fingerprint": r["fingerprint"], "dir": Path(r["dir"]).name,
                                 "training_data_fingerprint": r["training_data_fingerprint"]}
                   for r in models},
        "metrics": table,
    }
    tmp = out / f".manifest-{uuid.uuid4().hex[:8]}.json"
    tmp.write_text(json.dumps(manifest, indent=2, default=str) + "\n")
    os.replace(tmp, out / contract.MANIFEST_FILE)
    return manifest


def run_reward_models(data_dir: str | Path, out_dir: str | Path, config: RewardModelConfig,
                      created_at: str, aspects: list[str] | None = None) -> dict[str, Any]:
    """Train every aspect's reward model (each independent) into out_dir/<aspect>/; see module doc."""
    df = contract.read_pairs(data_dir)
    known = sorted(df["aspect"].unique())
    aspects = list(aspects) if aspects else known
    unknown = sorted(set(aspects) - set(known) - {UNIFIED})
    if unknown:
        raise InputError(f"aspects {unknown} have no pairs; aspects in the data: {known}",
                         file=str(data_dir))
    if config.train_unified and UNIFIED not in aspects:
        aspects.append(UNIFIED)
    results = {a: run_reward_model(data_dir, a, out_dir, config, created_at) for a in aspects}
    summarize_reward_models(out_dir, created_at, config)
    return {"out_dir": str(out_dir), "aspects": list(results),
            "heldout_accuracy": {a: r["heldout_accuracy"] for a, r in results.items()},
            "length_corr": {a: r["length_corr"] for a, r in results.items()},
            "length_corr_undebiased": {a: r["length_corr_undebiased"] for a, r in results.items()},
            "seconds": round(sum(r["seconds"] for r in results.values()), 2)}


# ---------------------------------------------------------------------------------------------
# Scoring with a saved model

def load_record(model_dir: str | Path) -> dict:
    f = Path(model_dir) / MODEL_FILE
    if not f.is_file():
        raise FgpoError(f"{model_dir}: not a reward-model folder (no {MODEL_FILE})")
    return json.loads(f.read_text())


def load_scorer(model_dir: str | Path, cache_dir: str | Path | None = None, progress: bool = True
                ) -> Callable[[list[str], list[str]], np.ndarray]:
    """r(x, y) of a saved reward model as a function of (prompts, responses) -> float64 array.

    Frozen models embed through the shared embedding cache (``cache_dir``, default the one in the
    model's config), so K aspect scorers on the same texts run the backbone once.
    """
    import torch

    rec = load_record(model_dir)
    cfg = rec["config"]
    if rec["mode"] == "frozen":
        from safetensors.torch import load_file

        emb = get_embedder(cfg["backbone"], cfg["max_length"], cfg["max_prompt_length"],
                           cfg["pooling"], cfg["embed_batch_size"], cfg["device"])
        head = _make_head(rec["head"]["in_dim"], rec["head"]["hidden"])
        head.load_state_dict(load_file(str(Path(model_dir) / "head.safetensors")))
        head.eval()
        root = cache_dir or cfg.get("cache_dir") or default_cache_root()

        def score(prompts: list[str], responses: list[str]) -> np.ndarray:
            if len(prompts) != len(responses):
                raise FgpoError(f"{len(prompts)} prompts but {len(responses)} responses")
            if not prompts:
                return np.empty(0)
            e = emb.embed(list(prompts), list(responses), root, progress=progress)
            with torch.inference_mode():
                return head(torch.as_tensor(e)).numpy().astype(np.float64)

        score.embedder = emb  # lets the scoring stage batch K heads over one embedding pass
        score.head = head
        return score

    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    path = Path(model_dir) / "model"
    device = resolve_device(cfg["device"])
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path).to(device).eval()

    def score(prompts: list[str], responses: list[str]) -> np.ndarray:
        if len(prompts) != len(responses):
            raise FgpoError(f"{len(prompts)} prompts but {len(responses)} responses")
        if not prompts:
            return np.empty(0)
        return _score_classifier(model, tok, list(prompts), list(responses), cfg, device,
                                 cfg["embed_batch_size"], progress)

    return score
