"""DPO training on Hugging Face Accelerate, top to bottom.

    run_train_dpo(data_dir, out_dir, config, created_at)

1. check the config's model paths and read the pairs (fail before any work);
2. tokenise (chat template when the tokenizer has one), truncate keeping the response, into the
   token store (``tokenstore``: built once by the local main process, memory-mapped by all);
3. reference log-probs: from the store's reference columns, else computed once, batched by length
   (a separate reference model is loaded, used and freed before the policy is trained);
4. the loop: length-grouped steps in an order fixed by (seed, epoch), gradient accumulation,
   clipping, schedule; TRL's metric names every ``logging_steps``; ``accelerator.save_state``
   every ``checkpoint_every`` steps into ``.<out>.dpo-run/`` beside the output;
5. save: weights (merged when LoRA, unless lora_merge is false) + tokenizer + fgpo_model.json,
   written atomically; the checkpoints are then removed.

A run killed at any point and started again with the same arguments resumes from its newest
checkpoint and ends with the weights an uninterrupted run ends with: the data order is a function
of (seed, epoch), and the checkpoint holds model, optimizer, scheduler and RNG states.
Several processes: launch with ``accelerate launch -m fgpo_tasks.cli train-dpo ...``.
"""

from __future__ import annotations

import gc
import json
import logging
import math
import os
import shutil
import time
from pathlib import Path
from typing import Callable

import numpy as np

from fgpo_tasks import jsonio
from fgpo_tasks import models
from fgpo_tasks.config import to_dict
from fgpo_tasks.contract import data_fingerprint, read_pair_table
from fgpo_tasks.dpo import data, refcache, tokenstore
from fgpo_tasks.dpo.config import DPOConfig
from fgpo_tasks.dpo.losses import SequenceLogps, preference_loss, sft_loss
from fgpo_tasks.errors import ConfigError, InputError
from fgpo_tasks.provenance import code_version, sha256_hex, stable_json
from fgpo_tasks.storage import atomic_dir

log = logging.getLogger(__name__)

MODEL_CARD = "fgpo_model.json"
METRICS_FILE = "metrics.jsonl"
SCORES_FILE = "scores.parquet"
# Sums kept per logging window (pairs-weighted means at log time), in this order.
STATS = ("pairs", "loss", "rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins",
         "logps/chosen", "logps/rejected", "sft_loss")


def check_model_spec(field: str, spec: str) -> None:
    """A model spec that names a missing file or package fails here, naming the config field."""
    if spec in models.TINY:
        return
    try:
        models.resolve(spec)
    except ConfigError as e:
        raise ConfigError(f"{field}: {e}") from None


RAW_MARGIN_PREFIX = "raw_margin_"


def dfpo_pd(scores, mode: str):  # -> pandas Series
    """PD per pair_id for the DFPO loss. ``raw``: - sum over the other aspects of the raw reward
    differences (columns raw_margin_<aspect>, null on the pair's own aspect and where a reward model
    may not score the pair), METHOD.md's PD(z); ``scaled``: the selection PD (column pd)."""
    if mode == "scaled":
        return scores["pd"]
    cols = [c for c in scores.columns if c.startswith(RAW_MARGIN_PREFIX)]
    return -scores[cols].sum(axis=1, skipna=True, min_count=0)


def scores_num_aspects(scores_dir: str, scores) -> int:
    """K of the DFPO loss: the number of reward models (aspects) the scores were made with, from the
    scores manifest (metrics.aspects), else the number of raw_margin_<aspect> columns."""
    path = Path(scores_dir) / "manifest.json"
    if path.is_file():
        aspects = (json.loads(path.read_text()).get("metrics") or {}).get("aspects")
        if aspects:
            return len(aspects)
    n = sum(c.startswith(RAW_MARGIN_PREFIX) for c in scores.columns)
    if n == 0:
        raise ConfigError(f"scores_dir: {path} names no aspects (metrics.aspects) and the scores have no "
                          f"{RAW_MARGIN_PREFIX}<aspect> columns; set num_aspects")
    return n


def load_pd(scores_dir: str, df, mode: str = "raw") -> tuple[np.ndarray, int]:
    """(PD of every pair in row order, K) from ``scores_dir`` (scores.parquet + manifest.json)."""
    import pandas as pd

    path = Path(scores_dir) / SCORES_FILE
    if not path.is_file():
        raise ConfigError(f"scores_dir: {path} not found (loss_type 'dfpo' needs PD scores)")
    scores = pd.read_parquet(path)
    needed = ["pair_id"] + (["pd"] if mode == "scaled" else [])
    for col in needed:
        if col not in scores.columns:
            raise InputError(f"missing column {col!r}; found {list(scores.columns)}", file=str(path), field=col)
    if mode == "raw" and not any(c.startswith(RAW_MARGIN_PREFIX) for c in scores.columns):
        raise InputError(f"dfpo_pd 'raw' needs {RAW_MARGIN_PREFIX}<aspect> columns (the reward differences); "
                         f"found {list(scores.columns)}", file=str(path), field=RAW_MARGIN_PREFIX + "<aspect>")
    scores = scores.drop_duplicates("pair_id")
    pd_by_id = pd.Series(dfpo_pd(scores, mode).to_numpy(dtype=np.float64), index=scores["pair_id"].to_numpy())
    values = pd_by_id.reindex(df["pair_id"]).to_numpy(dtype=np.float32)
    missing = np.isnan(values)
    if missing.any():
        first = df["pair_id"].iloc[int(np.argmax(missing))]
        raise InputError(f"{int(missing.sum())} of {len(df)} training pairs have no PD (first: {first})",
                         file=str(path), field="pd" if mode == "scaled" else "pair_id")
    return values, scores_num_aspects(scores_dir, scores)


class DeviceClock:
    """Wall seconds of a span, and on a CUDA device also the GPU stream's seconds between two CUDA
    events recorded at its ends (``cuda_s``; None elsewhere): device time named for what it is."""

    def __init__(self, device):
        import torch

        self.cuda = getattr(device, "type", str(device)) == "cuda"
        self.wall_s, self.cuda_s = 0.0, (0.0 if self.cuda else None)
        self._torch = torch

    def __enter__(self):
        self._t0 = time.perf_counter()
        if self.cuda:
            self._start = self._torch.cuda.Event(enable_timing=True)
            self._start.record()
        return self

    def __exit__(self, *exc):
        if self.cuda:
            end = self._torch.cuda.Event(enable_timing=True)
            end.record()
            end.synchronize()
            self.cuda_s += self._start.elapsed_time(end) / 1000.0
        self.wall_s += time.perf_counter() - self._t0
        return False


def device_kind(device) -> str:
    """``cpu`` or ``cuda:<GPU name>``: what the seconds of a run were spent on."""
    import torch

    if getattr(device, "type", str(device)) == "cuda":
        return f"cuda:{torch.cuda.get_device_name(device)}"
    return getattr(device, "type", str(device))


def precision_key(ref_dtype: str, autocast_bf16: bool) -> str:
    """The reference log-probs' precision, for their cache key: ``fp32`` / ``bf16`` (fp32 weights
    without / with bf16 autocast, the keys of earlier versions), else ``<dtype>-weights[+bf16]``."""
    if ref_dtype == "fp32":
        return "bf16" if autocast_bf16 else "fp32"
    return f"{ref_dtype}-weights" + ("+bf16" if autocast_bf16 else "")


def disable_dropout(model) -> None:
    """Zero every dropout module, as TRL's disable_dropout_in_model does."""
    from torch import nn
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0


def add_lora(lm, config: DPOConfig):
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                      target_modules=list(config.lora_target_modules), task_type="CAUSAL_LM")
    lm = get_peft_model(lm, lora)
    if config.gradient_checkpointing:
        lm.enable_input_require_grads()
    return lm


def forward_loss(model, batch: dict, config: DPOConfig, num_aspects: int | None):
    """Loss of one micro-batch (mean over its pairs) and the sums behind the logged metrics."""
    import torch

    logps = model(batch["input_ids"], batch.get("attention_mask"), batch["response_mask"],
                  position_ids=batch.get("position_ids"), seq_index=batch.get("seq_index"))  # (2B,)
    n_tokens = batch["response_tokens"] if "response_tokens" in batch else batch["response_mask"].sum(dim=1)  # (2B,)
    chosen, rejected = logps.chunk(2)
    chosen_tokens, rejected_tokens = n_tokens.chunk(2)
    losses = preference_loss(config.loss_type, chosen, rejected, batch["ref_chosen"], batch["ref_rejected"],
                             config.beta, label_smoothing=config.label_smoothing, chosen_tokens=chosen_tokens,
                             rejected_tokens=rejected_tokens, pd=batch.get("pd"), num_aspects=num_aspects)
    sft = sft_loss(chosen, chosen_tokens)
    if config.sft_weight:
        losses = losses + config.sft_weight * sft
    with torch.no_grad():
        rewards_chosen = config.beta * (chosen - batch["ref_chosen"])
        rewards_rejected = config.beta * (rejected - batch["ref_rejected"])
        stats = torch.stack([
            torch.tensor(float(len(chosen)), device=chosen.device), losses.sum(), rewards_chosen.sum(),
            rewards_rejected.sum(), (rewards_chosen > rewards_rejected).float().sum(),
            (rewards_chosen - rewards_rejected).sum(), chosen.sum(), rejected.sum(), sft.sum()]).float()
    return losses.mean(), stats


def accumulate_step(accelerator, model, optimizer, micro: list[dict], config: DPOConfig,
                    num_aspects: int | None):
    """Forward and backward every micro-batch of one optimizer step; clip, step, zero the grads.

    Returns (stats sums, grad norm or None). ``accelerator.accumulate`` skips the DDP all-reduce
    until the last micro-batch and divides each loss by grad_accum, so the step's gradient is the
    mean over its pairs whatever the split into micro-batches.
    """
    stats, grad_norm = 0, None
    for batch in micro:
        with accelerator.accumulate(model):
            loss, s = forward_loss(model, batch, config, num_aspects)
            accelerator.backward(loss)
            stats = stats + s
            if accelerator.sync_gradients:
                grad_norm = accelerator.clip_grad_norm_(model.parameters(), config.max_grad_norm or float("inf"))
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    assert accelerator.sync_gradients, "a step must end on a gradient sync (grad_accum micro-batches)"
    return stats, grad_norm


def latest_checkpoint(run_dir: Path) -> Path | None:
    done = [p for p in (run_dir / "checkpoints").glob("step-*") if (p / "fgpo_state.json").is_file()]
    return max(done, key=lambda p: int(p.name.split("-")[1])) if done else None


def save_checkpoint(accelerator, run_dir: Path, step: int, keep: int) -> None:
    """save_state into a temporary folder, renamed into place once complete: a kill mid-save
    leaves the previous checkpoint as the newest."""
    ckpts = run_dir / "checkpoints"
    tmp, final = ckpts / f".tmp-step-{step:07d}", ckpts / f"step-{step:07d}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (tmp / "fgpo_state.json").write_text(jsonio.dumps({"step": step}))
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        older = sorted((p for p in ckpts.glob("step-*") if p != final), key=lambda p: int(p.name.split("-")[1]))
        for p in older[:max(0, len(older) - (keep - 1))]:
            shutil.rmtree(p, ignore_errors=True)
    accelerator.wait_for_everyone()


def prepare_run_dir(accelerator, run_dir: Path, identity: dict) -> Path | None:
    """The checkpoint to resume from, if the run folder belongs to this same run (config and data)."""
    info = run_dir / "run.json"
    identity = json.loads(stable_json(identity))  # as it reads back from the file (tuples become lists)
    ckpt = None
    if info.is_file() and json.loads(info.read_text()) == identity:
        ckpt = latest_checkpoint(run_dir)
    elif info.is_file():
        log.warning("%s holds checkpoints of a different config or data; starting afresh", run_dir)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if ckpt is None:
            shutil.rmtree(run_dir, ignore_errors=True)
        run_dir.mkdir(parents=True, exist_ok=True)
        info.write_text(stable_json(identity))
    accelerator.wait_for_everyone()
    return ckpt


def merge_adapter(folder: Path, base_spec: str, dtype: str) -> None:
    """Replace the LoRA adapter saved in ``folder`` by merged full weights: the base model loaded
    on this process's CPU, the adapter put on it and merged (no sharded module is touched)."""
    lm = models.load_policy(folder, dtype)
    for name in ("adapter_model.safetensors", "adapter_model.bin", models.ADAPTER_CONFIG):
        (folder / name).unlink(missing_ok=True)
    lm.save_pretrained(folder)


def save_model(accelerator, model, tokenizer, folder: Path, config: DPOConfig) -> dict:
    """Weights + tokenizer into ``folder``; returns what was saved, for the model card.

    LoRA: merged into full weights unless lora_merge is false. Under FSDP / ZeRO-3 the adapter is
    gathered first (a collective), saved, and merged on the main process from the saved adapter
    and the base model's files, so a sharded module is never merged in place."""
    from accelerate.utils import DistributedType

    sharded = accelerator.distributed_type in (DistributedType.DEEPSPEED, DistributedType.FSDP)
    state = accelerator.get_state_dict(model)  # collective: gathers shards onto the main process
    lm = accelerator.unwrap_model(model).lm
    saved = {"format": "full", "lora": bool(config.lora_r)}
    if accelerator.is_main_process:
        state = {k[len("lm."):]: v for k, v in state.items() if k.startswith("lm.")}
        if config.lora_r and config.lora_merge and not sharded:
            lm.merge_and_unload().save_pretrained(folder)
            saved["format"] = "merged"
        elif config.lora_r:
            lm.save_pretrained(folder, state_dict=state)
            saved.update(format="adapter", base_model=config.model)
            if config.lora_merge:
                (folder / MODEL_CARD).write_text(json.dumps({"weights": saved}))  # the base, for the loader
                merge_adapter(folder, config.model, models.dtype_name(config.dtype))
                (folder / MODEL_CARD).unlink()
                saved = {"format": "merged", "lora": True, "merged_after_gather": True}
        else:
            lm.save_pretrained(folder, state_dict=state)
        tokenizer.save_pretrained(folder)
    return saved


def run_train_dpo(data_dir: str | Path, out_dir: str | Path, config: DPOConfig, created_at: str,
                  metrics_callback: Callable[[int, dict], None] | None = None) -> dict:
    """Train a policy with DPO (or IPO, cDPO, DFPO) on a pair directory; save it into ``out_dir``.

    ``metrics_callback(step, metrics)`` is called on the main process at every logging step;
    the same records go to ``out_dir/metrics.jsonl``.
    """
    import torch
    from accelerate import Accelerator
    from accelerate.utils import DistributedType, set_seed
    from tqdm.auto import tqdm
    from transformers import get_scheduler

    # -- 1. Inputs, checked before any model is loaded ------------------------------------------
    check_model_spec("model", config.model)
    if config.ref_model:
        check_model_spec("ref_model", config.ref_model)
    # pair ids only (the texts reach training through the token store): bounded memory on large pools
    df = read_pair_table(data_dir, columns=["pair_id"]).to_pandas()
    if len(df) == 0:
        raise InputError("no pairs to train on", file=str(data_dir))
    data_fp = data_fingerprint(data_dir)  # the manifest's (computed once, when the pool was written)
    pd_values, num_aspects = None, None
    if config.loss_type == "dfpo":
        pd_values, scores_k = load_pd(config.scores_dir, df, config.dfpo_pd)
        num_aspects = config.num_aspects or scores_k

    bf16 = config.bf16 if config.bf16 is not None else bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    accelerator = Accelerator(mixed_precision="bf16" if bf16 else "no", gradient_accumulation_steps=config.grad_accum,
                              step_scheduler_with_optimizer=False)
    if accelerator.gradient_accumulation_steps != config.grad_accum:
        raise ConfigError(f"grad_accum={config.grad_accum} but the accelerate environment sets "
                          f"{accelerator.gradient_accumulation_steps}; set it in one place only")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world != accelerator.num_processes:  # e.g. torchrun on CPUs without ACCELERATE_USE_CPU=true
        raise ConfigError(f"accelerate_config: {world} processes were launched but accelerate joined "
                          f"{accelerator.num_processes}; on CPUs set use_cpu: true (ACCELERATE_USE_CPU=true)")
    is_main = accelerator.is_main_process
    set_seed(config.seed)
    out = Path(out_dir)
    run_dir = out.parent / f".{out.name}.dpo-run"

    # -- 2. Tokens --------------------------------------------------------------------------------
    tokenizer = models.load_tokenizer(config.model)
    tokens = tokenstore.prepare(data_dir, tokenizer, config.max_length, config.max_prompt_length,
                                config.token_store_dir, accelerator)
    assert len(tokens) == len(df), f"token store {tokens.path} holds {len(tokens)} pairs, the data {len(df)}"
    lengths = tokens.lengths()
    step_pairs = config.batch_size * config.grad_accum * accelerator.num_processes
    steps_per_epoch = math.ceil(len(tokens) / step_pairs)
    total_steps = config.max_steps or config.epochs * steps_per_epoch
    warmup = config.warmup_steps or math.ceil(config.warmup_ratio * total_steps)

    # -- 3. Reference log-probs: cache, else a separate reference model now, else the policy below -
    policy_dtype = models.dtype_name(config.dtype)
    ref_dtype = models.dtype_name(config.ref_dtype or config.dtype)
    cache_dir = Path(config.ref_cache_dir) if config.ref_cache_dir else refcache.default_dir()  # + weight hashes
    ref_key = refcache.cache_key(refcache.model_fingerprint(config.reference, cache_dir), tokens,
                                 precision_key(ref_dtype, bf16))
    cache_file = cache_dir / f"{ref_key}.arrow" if config.ref_cache_dir else tokens.ref_file(ref_key)
    ref_clock = DeviceClock(accelerator.device)
    ref = refcache.load(cache_file, tokens)
    ref_cache = "hit" if ref is not None else "miss"
    if ref is None and (config.reference != config.model or ref_dtype != policy_dtype):
        with ref_clock:
            ref_lm = models.load_causal_lm(config.reference, ref_dtype).to(accelerator.device)
            ref = refcache.compute(SequenceLogps(ref_lm, config.logps_chunk), tokens, accelerator,
                                   config.ref_batch_size, tokenizer.pad_token_id)
        del ref_lm
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    # -- 4. Policy, optimizer, schedule -----------------------------------------------------------
    lm = models.load_causal_lm(config.model, policy_dtype)
    if config.disable_dropout:
        disable_dropout(lm)
    if config.gradient_checkpointing:
        lm.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    if config.lora_r:
        lm = add_lora(lm, config)
    sharded = accelerator.distributed_type in (DistributedType.DEEPSPEED, DistributedType.FSDP)
    model = SequenceLogps(lm, config.logps_chunk, fused=not sharded)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=config.lr,
                                  weight_decay=config.weight_decay)
    scheduler = get_scheduler(config.scheduler, optimizer, num_warmup_steps=warmup, num_training_steps=total_steps)
    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        # No dataloader goes through prepare, so DeepSpeed learns the batch shape from us.
        ds = accelerator.state.deepspeed_plugin.deepspeed_config
        ds.update(train_micro_batch_size_per_gpu=config.batch_size, gradient_accumulation_steps=config.grad_accum,
                  gradient_clipping=config.max_grad_norm)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)

    if ref is None:  # the reference is the policy's initial weights (LoRA's B = 0 leaves them unchanged)
        with ref_clock:
            ref = refcache.compute(model, tokens, accelerator, config.ref_batch_size, tokenizer.pad_token_id)
    if ref_cache == "miss" and is_main:
        refcache.save(cache_file, tokens, *ref)
    accelerator.wait_for_everyone()

    identity = {"config": to_dict(config), "data_fingerprint": data_fp,
                "num_processes": accelerator.num_processes}
    ckpt = prepare_run_dir(accelerator, run_dir, identity)
    start_step = 0
    if ckpt is not None:
        accelerator.load_state(str(ckpt))
        start_step = json.loads((ckpt / "fgpo_state.json").read_text())["step"]
        log.info("resuming from %s (step %d of %d)", ckpt, start_step, total_steps)
    metrics_path = run_dir / METRICS_FILE
    if is_main:  # keep the records up to the checkpoint, so a resumed file reads like an uninterrupted one
        kept = [line for line in (metrics_path.read_text().splitlines() if metrics_path.is_file() else [])
                if json.loads(line)["step"] <= start_step]
        metrics_path.write_text("".join(line + "\n" for line in kept))

    # -- 5. The loop ------------------------------------------------------------------------------
    log.info("DPO (%s): %d pairs, %d steps of %d pairs (%d x %d accumulation x %d processes), ref cache %s",
             config.loss_type, len(tokens), total_steps, step_pairs, config.batch_size, config.grad_accum,
             accelerator.num_processes, ref_cache)
    model.train()
    window = torch.zeros(len(STATS), device=accelerator.device)
    order, order_epoch, last = None, -1, {}
    t_window = time.perf_counter()
    train_clock = DeviceClock(accelerator.device).__enter__()
    bar = tqdm(total=total_steps, initial=start_step, desc="DPO", disable=not is_main)
    for step in range(start_step, total_steps):
        epoch, k = divmod(step, steps_per_epoch)
        if epoch != order_epoch:
            order = data.step_order(lengths, step_pairs, config.seed, epoch, config.group_by_length)
            order_epoch = epoch
        micro = []
        for idx in data.micro_batches(order[k], lengths, config.batch_size, accelerator.num_processes,
                                      accelerator.process_index):
            collate = data.collate_packed if config.packed else data.collate
            batch = collate(tokens, idx, tokenizer.pad_token_id, ref, pd_values)
            micro.append({name: t.to(accelerator.device, non_blocking=True) for name, t in batch.items()})
        stats, grad_norm = accumulate_step(accelerator, model, optimizer, micro, config, num_aspects)
        scheduler.step()
        window += stats
        bar.update(1)

        if (step + 1) % config.logging_steps == 0 or step + 1 == total_steps:
            sums = accelerator.reduce(window, reduction="sum").tolist()
            now = time.perf_counter()
            last = {name: sums[i] / sums[0] for i, name in enumerate(STATS) if i > 0}
            if not config.sft_weight:
                del last["sft_loss"]
            last.update({"learning_rate": scheduler.get_last_lr()[0],
                         "grad_norm": float(grad_norm) if grad_norm is not None else float("nan"),
                         "epoch": (step + 1) / steps_per_epoch, "pairs_per_s": sums[0] / (now - t_window)})
            window.zero_()
            t_window = now
            if is_main:
                with metrics_path.open("a") as f:
                    f.write(jsonio.dumps({"step": step + 1, **last}) + "\n")
                if metrics_callback is not None:
                    metrics_callback(step + 1, dict(last))
                bar.set_postfix(loss=f"{last['loss']:.4f}", margin=f"{last['rewards/margins']:.3f}")
        if config.checkpoint_every and (step + 1) % config.checkpoint_every == 0 and step + 1 < total_steps:
            save_checkpoint(accelerator, run_dir, step + 1, config.keep_checkpoints)
    bar.close()
    train_clock.__exit__(None, None, None)

    # -- 6. Save ----------------------------------------------------------------------------------
    accelerator.wait_for_everyone()
    result = {"out_dir": str(out), "steps": total_steps, "pairs": len(tokens), "step_pairs": step_pairs,
              "ref_cache": ref_cache, "resumed_from_step": start_step or None,
              # wall seconds (named so), and the GPU stream's seconds from CUDA events on a GPU (else None)
              "ref_seconds": round(ref_clock.wall_s, 3), "train_seconds": round(train_clock.wall_s, 3),
              "ref_cuda_s": _round(ref_clock.cuda_s), "train_cuda_s": _round(train_clock.cuda_s),
              "device": device_kind(accelerator.device),
              **last}  # the last logged metrics, TRL's names
    card = {
        "kind": "fgpo.model", "stage": "train_dpo", "created_at": created_at, "code_version": code_version(),
        "config": to_dict(config), "data_dir": str(data_dir), "data_fingerprint": data_fp,
        "tokens_fingerprint": tokens.fingerprint(), "ref_logps_key": ref_key,
        "scores_fingerprint": (sha256_hex(*map(str, pd_values.tolist())) if pd_values is not None else None),
        "num_aspects": num_aspects, "num_processes": accelerator.num_processes, "bf16": bf16,
        "dtype": policy_dtype, "ref_dtype": ref_dtype, "attention": models.attention(policy_dtype),
        "n_truncated": tokens.n_truncated, "metrics": last,
        **{k: result[k] for k in ("steps", "pairs")},  # no timings: the card is part of the weights' hash
    }
    with atomic_dir(out) if is_main else _null_dir(out) as tmp:
        card["weights"] = save_model(accelerator, model, tokenizer, tmp, config)
        if is_main:
            shutil.copy(metrics_path, tmp / METRICS_FILE)
            for name in (MODEL_CARD, "manifest.json"):  # manifest.json: the stage convention
                (tmp / name).write_text(jsonio.dumps(card, indent=2, default=str) + "\n")
    accelerator.wait_for_everyone()
    if is_main:
        shutil.rmtree(run_dir, ignore_errors=True)
    accelerator.end_training()
    return result


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 3)


class _null_dir:
    """Non-main processes take part in the collective save but write nothing."""

    def __init__(self, out):
        self.out = out

    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False

