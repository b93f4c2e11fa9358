"""Training one proxy reward model per aspect: splits, length debiasing, the loops, the record."""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fgpo_tasks import jsonio
from fgpo_tasks import contract
from fgpo_tasks.config import to_dict
from fgpo_tasks.errors import InputError
from fgpo_tasks.provenance import code_version, sha256_hex, stable_json
from fgpo_tasks.reward_models.config import (MODEL_FILE, UNIFIED, RewardModelConfig, default_cache_root,
                                             resolve_device, weight_fields, weights_dtype)
from fgpo_tasks.reward_models.embeddings import (_collate, backbone_fingerprint, encode_texts, get_embedder,
                                                 transformer_blocks)
from fgpo_tasks.reward_models.loading import _make_head, _score_classifier, discover_models
from fgpo_tasks.storage import atomic_dir

log = logging.getLogger(__name__)



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



def _train_heads(ew: np.ndarray, el: np.ndarray, dlen: np.ndarray, longer: np.ndarray,
                 cfg: RewardModelConfig, rho: float, tau: float | None, eval_fn=None):
    """``cfg.ensemble`` heads (seeds seed, seed+1, ...) on the same pairs, as one module whose
    reward is their mean; the loss curve is the first member's (held-out points: the ensemble's
    are in the metrics). One member: the plain head."""
    import dataclasses

    if cfg.ensemble == 1:
        return _train_head(ew, el, dlen, longer, cfg, rho, tau, eval_fn)
    members, curve = [], None
    for m in range(cfg.ensemble):
        head, c = _train_head(ew, el, dlen, longer, dataclasses.replace(cfg, seed=cfg.seed + m), rho,
                              tau, eval_fn if m == 0 else None)
        members.append(head)
        curve = curve or c
    ens = _make_head(ew.shape[1], cfg.head_hidden, members=cfg.ensemble)
    for slot, head in zip(ens.members, members):
        slot.load_state_dict(head.state_dict())
    return ens.eval(), curve



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



def trainable(model, cfg: RewardModelConfig):
    """What finetune mode trains. ``lora_r``: LoRA adapters on every block's attention plus the
    whole head (peft's SEQ_CLS task); ``finetune_layers``: the top N blocks, the norms and pooler
    outside the blocks and the head, the embeddings and lower blocks frozen; else everything."""
    if cfg.lora_r:
        from peft import LoraConfig, get_peft_model

        return get_peft_model(model, LoraConfig(task_type="SEQ_CLS", r=cfg.lora_r, lora_alpha=2 * cfg.lora_r,
                                                lora_dropout=0.0))
    if cfg.finetune_layers is None:
        return model
    blocks = list(transformer_blocks(model.base_model)[0])
    top = {id(p) for b in blocks[max(0, len(blocks) - cfg.finetune_layers):] for p in b.parameters()}
    in_blocks = {id(p) for b in blocks for p in b.parameters()}
    base = {id(p) for p in model.base_model.parameters()}
    for name, p in model.named_parameters():
        low = name.lower()
        above = id(p) not in in_blocks and "embed" not in low and any(k in low for k in ("norm", "pooler", "ln_f"))
        p.requires_grad_(id(p) in top or id(p) not in base or above)
    return model


def _train_classifier(rows: pd.DataFrame, dlen: np.ndarray, longer: np.ndarray,
                      cfg: RewardModelConfig, rho: float, tau: float | None, eval_fn=None):
    """Finetune mode: train the whole sequence classifier; returns (model, tokenizer, curve)."""
    import torch
    from tqdm.auto import tqdm

    from fgpo_tasks.models import load_sequence_classifier, load_tokenizer

    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    tok = load_tokenizer(cfg.backbone)
    model = trainable(load_sequence_classifier(cfg.backbone, dtype=weights_dtype(cfg.dtype, cfg.device, "finetune")),
                      cfg)
    prompts = rows["prompt"].tolist()
    fw = encode_texts(tok, prompts, rows["chosen"].tolist(), cfg.max_length, cfg.max_prompt_length)
    fl = encode_texts(tok, prompts, rows["rejected"].tolist(), cfg.max_length, cfg.max_prompt_length)
    acc = _accelerator(cfg.device)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.lr,
                            weight_decay=cfg.weight_decay)
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
    model = acc.unwrap_model(model)
    if cfg.lora_r:  # a plain sequence classifier again: scoring and loading need no peft
        model = model.merge_and_unload()
    return model.cpu().eval(), tok, curve



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
    dlen_tr = dlen_all[tr]
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
                           config.pooling, config.embed_batch_size, config.device,
                           layer=config.layer, dtype=config.dtype)
        cache_root = config.cache_dir or default_cache_root()
        prompts = rows["prompt"].tolist()
        both = emb.embed(prompts + prompts, rows["chosen"].tolist() + rows["rejected"].tolist(),
                         cache_root)
        ew, el = both[:len(rows)], both[len(rows):]

        def eval_fn(head):
            m = _head_margin(head, ew[ho], el[ho])
            return {"heldout_loss": _heldout_loss(m), "heldout_accuracy": pairwise_accuracy(m)} if len(ho) else {}

        for name, (rho, tau) in variants.items():
            head, curves[name] = _train_heads(ew[tr], el[tr], dlen_tr, longer, config, rho, tau, eval_fn)
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
        "data_fingerprint": contract.data_fingerprint(data_dir, df),
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
            record["head"] = {"in_dim": int(ew.shape[1]), "hidden": config.head_hidden,
                              "members": config.ensemble}
        else:
            model, tok = models["debiased"]
            model.save_pretrained(tmp / "model")
            tok.save_pretrained(tmp / "model")
        (tmp / "training_ids.json").write_text(jsonio.dumps(sorted(train["pair_id"].tolist())) + "\n")
        (tmp / "heldout_ids.json").write_text(jsonio.dumps(sorted(held["pair_id"].tolist())) + "\n")
        (tmp / MODEL_FILE).write_text(jsonio.dumps(record, indent=2, default=str) + "\n")
        (tmp / "metrics.json").write_text(jsonio.dumps(metrics, indent=2) + "\n")
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
    tmp.write_text(jsonio.dumps(manifest, indent=2, default=str) + "\n")
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
