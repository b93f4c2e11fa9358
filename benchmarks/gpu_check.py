"""GPU check: the training and scoring paths measured against the GPU's own matmul peak, in one run.

    python benchmarks/gpu_check.py            # one CUDA GPU (sized for <= 8 minutes on an H200)
    python benchmarks/gpu_check.py --smoke    # tiny sizes on the CPU: the same code, no figures

Everything is built from configs (no hub): a ~0.5B Llama (16 layers x 1536, 32,000-token
vocabulary; the byte tokenizer feeds it, the head still has all 32,000 rows) and a SmolLM2-135M-
shaped sequence classifier as the proxy / judge. Pairs are ASCII texts of fixed length (prompt 256,
responses 768 tokens), so no batch carries padding. Measured, in this order:

1. bf16 matmul peak: torch.matmul of 8192 x 8192 bf16 matrices, timed with CUDA events;
2. fgpo DPO (``run_train_dpo``: full fine-tune, bf16 weights and autocast, AdamW) tokens/s, pairs/s
   and MFU against (1), with padded and with packed (padding-free) batches. Step times come from
   the trainer's per-step metrics callback; the first steps (allocator, kernel selection) are
   excluded;
3. TRL's DPOTrainer on the same model, batch and steps (when ``trl`` imports): pairs/s, MFU, and
   both trainers' loss on one batch of a perturbed policy in fp32 (must agree to 1e-4);
4. reference log-probs/s (``refcache.compute``, bf16) and proxy scoring texts/s (evaluate's HF
   judge, bf16).

MFU counts the FLOPs a DPO step needs, per sequence of S tokens with R response tokens:
6 * N_body * S (backbone forward + backward) + 6 * V * H * R (the LM head at response positions)
+ 6 * L * H * S^2 (causal attention), over the measured seconds, divided by (1). The reference
forward (cached by fgpo, run every step by TRL) and any recomputation are not counted as useful.

A real run prints a table and writes the ``gpu`` section of BENCHMARKS.md. ``--smoke`` writes its
(clearly labelled) section to a temporary file unless ``--out`` names one, never to BENCHMARKS.md.
Needs torch, transformers, accelerate, peft and fgpo's own requirements (numpy, pandas, pyarrow,
pyyaml, safetensors, tqdm); trl is optional.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks._common import markdown_table, write_section  # noqa: E402

CREATED_AT = "2026-01-01T00:00:00+00:00"
SIZES = {
    "gpu": dict(hidden=1536, layers=16, heads=12, intermediate=4096, vocab=32000, prompt=256, response=768,
                batch=8, steps=30, skip=5, matmul=8192, matmul_reps=30, ref_pairs=256, ref_batch=16,
                proxy=dict(hidden=576, layers=30, heads=9, kv_heads=3, intermediate=1536, vocab=49152),
                proxy_texts=1024, proxy_batch=64),
    "smoke": dict(hidden=64, layers=2, heads=4, intermediate=128, vocab=512, prompt=24, response=40,
                  batch=2, steps=4, skip=1, matmul=128, matmul_reps=3, ref_pairs=8, ref_batch=4,
                  proxy=dict(hidden=32, layers=2, heads=4, kv_heads=2, intermediate=64, vocab=512),
                  proxy_texts=8, proxy_batch=4),
}


# ---------------------------------------------------------------------------------------------
# Inputs built from code

def build_llama(folder: Path, size: dict, classifier: bool = False) -> int:
    """A randomly initialised Llama (causal LM or one-label classifier) + byte tokenizer; its
    parameter count. Built once per folder."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    from fgpo_tasks import zoo

    config = zoo.tiny_config("tiny-llama", size["vocab"], hidden=size["hidden"], layers=size["layers"],
                             heads=size["heads"], intermediate=size["intermediate"],
                             kv_heads=size.get("kv_heads"), max_positions=4096)
    if classifier:
        config.num_labels = 1
    if not (folder / "config.json").is_file():
        torch.manual_seed(0)
        cls = AutoModelForSequenceClassification if classifier else AutoModelForCausalLM
        with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
            model = cls.from_config(config, dtype=torch.bfloat16)
        model.save_pretrained(folder)
        zoo.byte_tokenizer().save_pretrained(folder)
        del model
    L, H, V, inter, kv = config.num_hidden_layers, config.hidden_size, config.vocab_size, \
        config.intermediate_size, config.num_key_value_heads
    head_dim = H // config.num_attention_heads
    body = L * (2 * H * H + 2 * H * kv * head_dim + 3 * H * inter + 2 * H) + H
    return body


def text_of(n_chars: int, rng) -> str:
    words = ["alpha", "beta", "gamma", "delta", "omega", "river", "stone", "light", "paper", "cloud"]
    out = ""
    while len(out) < n_chars:
        out += words[int(rng.integers(len(words)))] + " "
    return out[:n_chars]


def build_pairs(folder: Path, n: int, size: dict) -> Path:
    """n pairs whose prompt and responses are ASCII texts of fixed length (1 byte = 1 token)."""
    import numpy as np
    import pandas as pd

    from fgpo_tasks.contract import make_pair, write_pairs

    if (folder / "manifest.json").is_file():
        return folder
    rng = np.random.default_rng(0)
    rows = [make_pair(prompt=text_of(size["prompt"] - 12, rng), chosen=text_of(size["response"] - 8, rng),
                      rejected=text_of(size["response"] - 8, rng), aspect="quality", source="gpu_check",
                      batch_id="gpu_check") for _ in range(n)]
    write_pairs(pd.DataFrame(rows), folder, stage="gpu_check", config={}, created_at=CREATED_AT)
    return folder


# ---------------------------------------------------------------------------------------------
# Measurements

def sync():
    import torch
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def matmul_peak(n: int, reps: int, device: str) -> float:
    """bf16 matmul FLOP/s of n x n x n products (CUDA events on a GPU, wall seconds on a CPU)."""
    import torch

    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    sync()
    if device == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(reps):
            a @ b
        end.record()
        end.synchronize()
        seconds = start.elapsed_time(end) / 1000
    else:
        t0 = time.perf_counter()
        for _ in range(reps):
            a @ b
        seconds = time.perf_counter() - t0
    return 2 * n ** 3 * reps / seconds


def step_flops(body: int, size: dict, seq: int, resp: int) -> float:
    """FLOPs a DPO step needs for one sequence of ``seq`` tokens with ``resp`` response tokens."""
    return 6 * body * seq + 6 * size["vocab"] * size["hidden"] * resp + 6 * size["layers"] * size["hidden"] * seq ** 2


def sequence_shape(pairs_dir: Path, model_dir: Path, size: dict) -> tuple[int, int]:
    """(tokens, response tokens) of one sequence (all sequences have the same length)."""
    from fgpo_tasks import models
    from fgpo_tasks.contract import read_pairs
    from fgpo_tasks.dpo.data import tokenize_pairs

    tok = models.load_tokenizer(str(model_dir))
    t = tokenize_pairs(read_pairs(pairs_dir).iloc[:4], tok, 1 << 16, 1 << 15)
    lens = {(len(t.prompt[i]) + len(t.chosen[i]), len(t.chosen[i])) for i in range(len(t))}
    lens |= {(len(t.prompt[i]) + len(t.rejected[i]), len(t.rejected[i])) for i in range(len(t))}
    assert len(lens) == 1, f"sequences differ in length: {lens}"
    return lens.pop()


def steady_rate(times: list[float], skip: int, per_step: float) -> float:
    """Units per second over the steps after the first ``skip`` (times: end of each step)."""
    return per_step * (len(times) - 1 - skip) / (times[-1] - times[skip])


def run_ours(model_dir: Path, pairs_dir: Path, work: Path, size: dict, packed: bool = False) -> dict:
    from accelerate.state import AcceleratorState

    from fgpo_tasks.dpo import DPOConfig, run_train_dpo

    AcceleratorState._reset_state(True)
    times: list[float] = []
    cfg = DPOConfig(model=str(model_dir), dtype="bf16", bf16=True, loss_type="sigmoid", beta=0.1, lr=1e-6,
                    warmup_ratio=0.0, batch_size=size["batch"], max_steps=size["steps"], logging_steps=1,
                    checkpoint_every=0, max_length=size["prompt"] + size["response"] + 16,
                    max_prompt_length=size["prompt"] + 8, ref_batch_size=size["ref_batch"],
                    ref_cache_dir=str(work / "refcache"), packed=packed)

    def on_step(step, metrics):
        sync()
        times.append(time.perf_counter())

    out = work / ("ours-packed" if packed else "ours")
    result = run_train_dpo(pairs_dir, out, cfg, CREATED_AT, metrics_callback=on_step)
    AcceleratorState._reset_state(True)
    losses = [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {"times": times, "losses": losses, "train_seconds": result["train_seconds"],
            "train_cuda_s": result["train_cuda_s"], "device": result["device"]}


def _trl_dataset(pairs_dir: Path, n: int):
    from datasets import Dataset

    from fgpo_tasks.contract import read_pairs

    df = read_pairs(pairs_dir).iloc[:n]
    return Dataset.from_list([{"prompt": [{"role": "user", "content": r["prompt"]}],
                               "chosen": [{"role": "assistant", "content": r["chosen"]}],
                               "rejected": [{"role": "assistant", "content": r["rejected"]}]}
                              for r in df.to_dict(orient="records")])


def _trl_trainer(model_dir: Path, pairs_dir: Path, work: Path, size: dict, steps: int, dtype, bf16: bool):
    import torch
    from transformers import AutoModelForCausalLM
    from trl import DPOConfig as TRLConfig, DPOTrainer

    from fgpo_tasks import models

    args = TRLConfig(output_dir=str(work / "trl"), loss_type=["sigmoid"], beta=0.1, learning_rate=1e-6,
                     lr_scheduler_type="linear", warmup_steps=0, max_steps=steps,
                     per_device_train_batch_size=size["batch"], gradient_accumulation_steps=1, max_grad_norm=1.0,
                     optim="adamw_torch", bf16=bf16, gradient_checkpointing=False, max_length=None,
                     logging_steps=1, save_strategy="no", report_to=[], use_cpu=not torch.cuda.is_available(),
                     seed=0, dataloader_num_workers=0, disable_tqdm=True)
    load = lambda: AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype, attn_implementation=models.attention(dtype))  # noqa: E731
    return DPOTrainer(model=load(), ref_model=load(), args=args,
                      train_dataset=_trl_dataset(pairs_dir, steps * size["batch"]),
                      processing_class=models.load_tokenizer(str(model_dir)))


def run_trl(model_dir: Path, pairs_dir: Path, work: Path, size: dict) -> dict:
    import torch
    from accelerate.state import AcceleratorState
    from transformers import TrainerCallback

    AcceleratorState._reset_state(True)
    times: list[float] = []

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            sync()
            times.append(time.perf_counter())

    trainer = _trl_trainer(model_dir, pairs_dir, work, size, size["steps"], torch.bfloat16, True)
    trainer.add_callback(Clock())
    trainer.train()
    AcceleratorState._reset_state(True)
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    del trainer
    return {"times": times, "losses": losses}


def same_loss(model_dir: Path, pairs_dir: Path, work: Path, size: dict) -> dict:
    """Both trainers' DPO loss on one batch (2 pairs) of a perturbed policy, fp32, on the device."""
    import copy

    import torch
    from accelerate.state import AcceleratorState

    from fgpo_tasks import models
    from fgpo_tasks.contract import read_pairs
    from fgpo_tasks.dpo import DPOConfig
    from fgpo_tasks.dpo.data import collate, tokenize_pairs
    from fgpo_tasks.dpo.losses import SequenceLogps
    from fgpo_tasks.dpo.train import forward_loss

    AcceleratorState._reset_state(True)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    small = {**size, "batch": 2}
    trainer = _trl_trainer(model_dir, pairs_dir, work / "loss", small, 1, torch.float32, False)
    policy = trainer.model
    torch.manual_seed(1)
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(0.5 * p.std().nan_to_num(0.02) * torch.randn_like(p))
    examples = [trainer.train_dataset[i] for i in range(2)]
    inputs = {k: v.to(device) if hasattr(v, "to") else v for k, v in trainer.data_collator(examples).items()}
    trainer.model.train()
    with torch.no_grad():
        trl_loss = float(trainer.compute_loss(trainer.model, inputs))
    tok = models.load_tokenizer(str(model_dir))
    tokens = tokenize_pairs(read_pairs(pairs_dir).iloc[:2], tok, 1 << 16, 1 << 15)
    batch = {k: v.to(device) for k, v in collate(tokens, [0, 1], tok.pad_token_id).items()}
    ours_policy, ref = copy.deepcopy(policy).to(device), trainer.ref_model.to(device)
    with torch.no_grad():
        ref_logps = SequenceLogps(ref)(batch["input_ids"], batch["attention_mask"], batch["response_mask"])
        batch["ref_chosen"], batch["ref_rejected"] = ref_logps.chunk(2)
        loss, _ = forward_loss(SequenceLogps(ours_policy), batch, DPOConfig(beta=0.1), None)
    AcceleratorState._reset_state(True)
    del trainer, ours_policy
    return {"ours": float(loss), "trl": trl_loss, "abs_diff": abs(float(loss) - trl_loss),
            "vs_log2": abs(float(loss) - 0.6931471805599453)}  # > 0: the policy differs from the reference


def ref_rate(model_dir: Path, pairs_dir: Path, size: dict) -> float:
    """Pairs/s of the reference log-probs (bf16 weights, bf16 autocast), loading excluded."""
    import torch
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    from fgpo_tasks import models
    from fgpo_tasks.contract import read_pairs
    from fgpo_tasks.dpo import refcache
    from fgpo_tasks.dpo.data import tokenize_pairs
    from fgpo_tasks.dpo.losses import SequenceLogps

    AcceleratorState._reset_state(True)
    acc = Accelerator(mixed_precision="bf16")
    tok = models.load_tokenizer(str(model_dir))
    tokens = tokenize_pairs(read_pairs(pairs_dir).iloc[:size["ref_pairs"]], tok, 1 << 16, 1 << 15)
    lm = SequenceLogps(models.load_causal_lm(str(model_dir), "bf16").to(acc.device))
    warm = tokenize_pairs(read_pairs(pairs_dir).iloc[:size["ref_batch"]], tok, 1 << 16, 1 << 15)
    refcache.compute(lm, warm, acc, size["ref_batch"], tok.pad_token_id, show_progress=False)
    sync()
    t0 = time.perf_counter()
    refcache.compute(lm, tokens, acc, size["ref_batch"], tok.pad_token_id, show_progress=False)
    sync()
    seconds = time.perf_counter() - t0
    AcceleratorState._reset_state(True)
    del lm
    return len(tokens) / seconds


def proxy_rate(proxy_dir: Path, pairs_dir: Path, size: dict) -> float:
    """Texts/s of an HF sequence-classifier judge / proxy (evaluate's scorer, bf16), loading excluded."""
    from fgpo_tasks.contract import read_pairs
    from fgpo_tasks.evaluate import EvalConfig, build_scorer

    df = read_pairs(pairs_dir)
    n = size["proxy_texts"]
    prompts = (list(df["prompt"]) * (n // len(df) + 1))[:n]
    responses = (list(df["chosen"]) * (n // len(df) + 1))[:n]
    score = build_scorer(f"hf:{proxy_dir}", EvalConfig(dtype="bf16", score_batch_size=size["proxy_batch"],
                                                       score_max_length=2048))
    score(prompts[:size["proxy_batch"]], responses[:size["proxy_batch"]])  # warm-up
    sync()
    t0 = time.perf_counter()
    out = score(prompts, responses)
    sync()
    assert len(out) == n
    return n / (time.perf_counter() - t0)


# ---------------------------------------------------------------------------------------------

def device_name() -> str:
    import torch
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)} (CUDA {torch.version.cuda}), torch {torch.__version__}"
    return f"CPU ({platform.machine()}, {os.cpu_count()} cores), torch {torch.__version__}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="tiny sizes on any device; writes no BENCHMARKS.md figures")
    p.add_argument("--work", default=None, help="scratch folder (default: a temporary one)")
    p.add_argument("--out", default=None, help="markdown file for the section (default: BENCHMARKS.md; "
                                               "--smoke: a temporary file)")
    p.add_argument("--no-write", action="store_true", help="print only")
    args = p.parse_args(argv)

    import torch

    t_start = time.perf_counter()
    if not args.smoke and not torch.cuda.is_available():
        print("gpu_check: no CUDA GPU is visible; run with --smoke for the CPU check of the code paths",
              file=sys.stderr)
        return 2
    size = SIZES["smoke" if args.smoke else "gpu"]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    work = Path(args.work or tempfile.mkdtemp(prefix="fgpo-gpu-check-"))
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("FGPO_WORK_DIR", str(work / "fgpo-work"))
    from fgpo_tasks.env import setup_environment
    setup_environment()
    if device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False  # fp32 stays fp32 (the loss comparison)

    peak = matmul_peak(size["matmul"], size["matmul_reps"], device)
    print(f"bf16 matmul peak: {peak / 1e12:.1f} TFLOP/s", flush=True)
    model_dir, proxy_dir = work / "policy", work / "proxy"
    body = build_llama(model_dir, size)
    build_llama(proxy_dir, size["proxy"], classifier=True)
    n_pairs = max(size["steps"] * size["batch"], size["ref_pairs"])
    pairs_dir = build_pairs(work / "pairs", n_pairs, size)
    seq, resp = sequence_shape(pairs_dir, model_dir, size)
    n_params = body + size["vocab"] * size["hidden"]
    flops_pair = 2 * step_flops(body, size, seq, resp)  # chosen and rejected sequences
    print(f"policy: {n_params / 1e6:.1f}M parameters; pairs of 2 x {seq} tokens ({resp} response)", flush=True)

    rows, figures = [], {}
    ours = run_ours(model_dir, pairs_dir, work, size)
    pps = steady_rate(ours["times"], size["skip"], size["batch"])
    figures["ours"] = {"pairs_s": pps, "tokens_s": pps * 2 * seq, "mfu": pps * flops_pair / peak}
    rows.append(["fgpo DPO (full fine-tune, bf16)", pps, pps * 2 * seq, 100 * figures["ours"]["mfu"]])
    print(f"fgpo DPO: {pps:.2f} pairs/s, MFU {100 * figures['ours']['mfu']:.1f}%", flush=True)
    from fgpo_tasks import models
    packed = run_ours(model_dir, pairs_dir, work, size, packed=True)
    kps = steady_rate(packed["times"], size["skip"], size["batch"])
    figures["ours_packed"] = {"pairs_s": kps, "tokens_s": kps * 2 * seq, "mfu": kps * flops_pair / peak,
                              "attention": models.attention("bf16"),
                              "max_loss_diff": max(abs(a - b) for a, b in zip(packed["losses"], ours["losses"]))}
    rows.append([f"fgpo DPO, packed batches ({figures['ours_packed']['attention']})", kps, kps * 2 * seq,
                 100 * figures["ours_packed"]["mfu"]])

    trl_ok = True
    try:
        import trl  # noqa: F401
    except ImportError:
        trl_ok = False
    if trl_ok:
        trl = run_trl(model_dir, pairs_dir, work, size)
        tpps = steady_rate(trl["times"], size["skip"], size["batch"])
        figures["trl"] = {"pairs_s": tpps, "tokens_s": tpps * 2 * seq, "mfu": tpps * flops_pair / peak,
                          "version": __import__("trl").__version__}
        rows.append([f"TRL {figures['trl']['version']} DPOTrainer (bf16)", tpps, tpps * 2 * seq,
                     100 * figures["trl"]["mfu"]])
        figures["loss"] = same_loss(model_dir, pairs_dir, work, size)
        print(f"TRL: {tpps:.2f} pairs/s; loss ours {figures['loss']['ours']:.6f} vs TRL "
              f"{figures['loss']['trl']:.6f}", flush=True)
    figures["ref_pairs_s"] = ref_rate(model_dir, pairs_dir, size)
    figures["proxy_texts_s"] = proxy_rate(proxy_dir, pairs_dir, size)
    total = time.perf_counter() - t_start

    label = "SMOKE RUN (tiny sizes, checks the code paths; not a measurement)" if args.smoke else "measured"
    cmd = "python benchmarks/gpu_check.py" + (" --smoke" if args.smoke else "")
    lines = [f"## GPU check ({label})", "",
             f"`{cmd}` on {device_name()}, {time.strftime('%Y-%m-%d', time.gmtime())}, {total:.0f} s in all.", "",
             f"Policy: Llama built from a config, {size['layers']} layers x {size['hidden']}, "
             f"{n_params / 1e6:.1f}M parameters, vocabulary {size['vocab']:,}; pairs of 2 x {seq} tokens "
             f"({resp} response), batch {size['batch']} pairs, {size['steps']} steps (the first {size['skip']} "
             f"not timed). MFU: the FLOPs a DPO step needs (6 N_body S + 6 V H R + 6 L H S^2 per sequence) "
             f"per second over the bf16 matmul peak measured in this run: {peak / 1e12:.1f} TFLOP/s.", "",
             markdown_table(["trainer", "pairs/s", "tokens/s", "MFU %"], rows), ""]
    verdict = (lambda ok: "not judged in a smoke run") if args.smoke else (lambda ok: "met" if ok else "NOT met")
    goals = [f"Goal MFU >= 40%: {verdict(figures['ours']['mfu'] >= 0.40)} ({100 * figures['ours']['mfu']:.1f}%)."]
    if trl_ok:
        ratio = figures["ours"]["pairs_s"] / figures["trl"]["pairs_s"]
        loss = figures["loss"]
        goals.append(f"Goal >= 1.5x TRL's pairs/s: {verdict(ratio >= 1.5)} ({ratio:.2f}x). "
                     f"Same loss (fp32, one batch of a perturbed policy): ours {loss['ours']:.6f}, TRL "
                     f"{loss['trl']:.6f}, |diff| {loss['abs_diff']:.1e} "
                     f"({'within' if loss['abs_diff'] <= 1e-4 else 'OUTSIDE'} 1e-4).")
    else:
        goals.append("TRL is not installed here: no comparison.")
    goals.append(f"Packed vs padded losses per step: max |diff| {figures['ours_packed']['max_loss_diff']:.1e} "
                 f"(these pairs carry no padding, so packing only changes the attention kernel's work).")
    lines += [" ".join(goals), "",
              f"Reference log-probs (bf16): {figures['ref_pairs_s']:.1f} pairs/s "
              f"({figures['ref_pairs_s'] * 2 * seq:,.0f} tokens/s). Proxy / judge scoring (sequence "
              f"classifier, {size['proxy']['layers']} x {size['proxy']['hidden']}, bf16): "
              f"{figures['proxy_texts_s']:.1f} texts/s of {seq} tokens."]
    text = "\n".join(lines)
    print("\n" + text)
    (work / "gpu_check.json").write_text(json.dumps({"peak_flops": peak, "total_s": total, **figures}, indent=2))
    if not args.no_write:
        out = Path(args.out) if args.out else (work / "gpu_check_smoke.md" if args.smoke else None)
        if out is not None:
            write_section("gpu", text, out)
        else:
            write_section("gpu", text)
        print(f"\nsection written to {out or 'BENCHMARKS.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
