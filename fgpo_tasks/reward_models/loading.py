"""Saved reward models: finding them, reading their record, and scoring with them."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Callable

import numpy as np

from fgpo_tasks.errors import FgpoError
from fgpo_tasks.reward_models.config import MODEL_FILE, UNIFIED, default_cache_root, resolve_device, text_key
from fgpo_tasks.reward_models.embeddings import _autocast, _collate, encode_texts, get_embedder, length_sorted_batches

log = logging.getLogger(__name__)



def _make_head(in_dim: int, hidden: int, mean=None, std=None, members: int = 1):
    """A frozen-mode head; ``members`` > 1: an ensemble whose reward is the mean of its members'."""
    import torch
    from torch import nn

    if members > 1:
        class Ensemble(nn.Module):
            def __init__(self):
                super().__init__()
                self.members = nn.ModuleList([_make_head(in_dim, hidden, mean, std) for _ in range(members)])

            def forward(self, e):
                return torch.stack([m(e) for m in self.members]).mean(0)

        return Ensemble()

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



def head_values(head, e: np.ndarray) -> np.ndarray:
    """r(e) of a frozen head (``_make_head``) in float64, each row on its own: the same value for
    a text whatever batch, chunk or shard it is scored in (a batched torch matmul picks kernels by
    batch size, which moves the last bits). Naive equivalent: ``head(torch.as_tensor(e))``."""
    if hasattr(head, "members"):  # an ensemble: the mean of its members' rewards
        return np.mean([head_values(m, e) for m in head.members], axis=0)
    state = {k: v.detach().double().cpu().numpy() for k, v in head.state_dict().items()}
    x = (np.asarray(e, dtype=np.float64) - state["mean"]) / state["std"]
    if "net.weight" in state:  # linear
        return (x * state["net.weight"][0]).sum(axis=1) + state["net.bias"][0]
    from scipy.special import erf

    w1, b1, w2, b2 = (state[k] for k in ("net.0.weight", "net.0.bias", "net.2.weight", "net.2.bias"))
    out = np.empty(len(x))
    for i in range(0, len(x), 64):  # (64, hidden, dim) products at a time
        z = (x[i:i + 64, None, :] * w1[None]).sum(axis=2) + b1
        g = 0.5 * z * (1.0 + erf(z / np.sqrt(2.0)))  # exact GELU, as nn.GELU()
        out[i:i + 64] = (g * w2[0]).sum(axis=1) + b2[0]
    return out


SCORE_CHUNK = 8192  # texts per pass of a scorer: tokens, embeddings and outputs of one chunk at a time


def _in_chunks(fn: Callable[[list[str], list[str]], np.ndarray], prompts: list[str], responses: list[str],
               size: int = SCORE_CHUNK) -> np.ndarray:
    """``fn`` over consecutive chunks of at most ``size`` texts, concatenated (bounded memory)."""
    if len(prompts) <= size:
        return fn(prompts, responses)
    return np.concatenate([fn(prompts[i:i + size], responses[i:i + size]) for i in range(0, len(prompts), size)])


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

    rec = load_record(model_dir)
    cfg = rec["config"]
    if rec["mode"] == "frozen":
        from safetensors.torch import load_file

        emb = get_embedder(cfg["backbone"], cfg["max_length"], cfg["max_prompt_length"],
                           cfg["pooling"], cfg["embed_batch_size"], cfg["device"],
                           layer=cfg.get("layer"), dtype=cfg.get("dtype", "fp32"))
        head = _make_head(rec["head"]["in_dim"], rec["head"]["hidden"],
                          members=rec["head"].get("members", 1))
        head.load_state_dict(load_file(str(Path(model_dir) / "head.safetensors")))
        head.eval()
        root = cache_dir or cfg.get("cache_dir") or default_cache_root()

        def score(prompts: list[str], responses: list[str]) -> np.ndarray:
            if len(prompts) != len(responses):
                raise FgpoError(f"{len(prompts)} prompts but {len(responses)} responses")
            if not prompts:
                return np.empty(0)

            def chunk(p: list[str], r: list[str]) -> np.ndarray:
                return head_values(head, emb.embed(p, r, root, progress=progress))

            return _in_chunks(chunk, list(prompts), list(responses))

        score.embedder = emb  # lets the scoring stage batch K heads over one embedding pass
        score.head = head
        return score

    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    path = Path(model_dir) / "model"
    device = resolve_device(cfg["device"])
    tok = AutoTokenizer.from_pretrained(path)
    from fgpo_tasks.models import resolve_dtype
    from fgpo_tasks.reward_models.config import weights_dtype

    dtype = resolve_dtype(weights_dtype(cfg.get("dtype", "fp32"), device))  # scoring: bf16 on GPU
    model = AutoModelForSequenceClassification.from_pretrained(path, dtype=dtype).to(device).eval()

    def score(prompts: list[str], responses: list[str]) -> np.ndarray:
        if len(prompts) != len(responses):
            raise FgpoError(f"{len(prompts)} prompts but {len(responses)} responses")
        if not prompts:
            return np.empty(0)
        return _in_chunks(lambda p, r: _score_classifier(model, tok, p, r, cfg, device, cfg["embed_batch_size"],
                                                         progress), list(prompts), list(responses))

    return score



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
