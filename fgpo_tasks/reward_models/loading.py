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
    from fgpo_tasks.models import resolve_dtype
    from fgpo_tasks.reward_models.config import weights_dtype

    dtype = resolve_dtype(weights_dtype(cfg.get("dtype", "fp32"), device))  # scoring: bf16 on GPU
    model = AutoModelForSequenceClassification.from_pretrained(path, dtype=dtype).to(device).eval()

    def score(prompts: list[str], responses: list[str]) -> np.ndarray:
        if len(prompts) != len(responses):
            raise FgpoError(f"{len(prompts)} prompts but {len(responses)} responses")
        if not prompts:
            return np.empty(0)
        return _score_classifier(model, tok, list(prompts), list(responses), cfg, device,
                                 cfg["embed_batch_size"], progress)

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
