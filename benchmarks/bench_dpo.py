"""Our DPO trainer against TRL's DPOTrainer: pairs/s, peak memory and loss trajectories.

    .venv/bin/python benchmarks/bench_dpo.py [--pairs 48] [--batch-size 4] [--max-length 512]

Same model (a ~16M-parameter Llama built from a config, SmolLM2's tokenizer and chat template),
same data (real HelpSteer2 pairs from ../shared/data that fit max_length, so both trainers see
the same tokens), same batches in the same order (TRL reads our length-grouped order
sequentially), same optimizer, schedule, clipping, beta, fp32. Each arm runs in its own process
(clean peak RSS, its own malloc settings), once with glibc's default malloc and once with
MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=16 GiB. ``--profile`` adds torch.profiler tables.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks._common import machine, markdown_table, write_section  # noqa: E402

DATA = REPO.parent / "shared" / "data" / "helpsteer2-aspects"
MALLOC = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(16 << 30)}
CREATED_AT = "2026-01-01T00:00:00+00:00"


def build_inputs(work: Path, args) -> tuple[Path, Path, int, int]:
    """The model folder and the pair directory, built once (deterministic) under ``work``."""
    import numpy as np
    import pandas as pd
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from fgpo_tasks import models
    from fgpo_tasks.contract import frame, make_pair, write_pairs
    from fgpo_tasks.dpo.data import tokenize_pairs

    model_dir, pairs_dir = work / "model", work / "pairs"
    tok = models.load_tokenizer("smollm2-135m-instruct")
    if not (model_dir / "config.json").is_file():
        config = LlamaConfig(vocab_size=len(tok), hidden_size=args.hidden, intermediate_size=args.hidden * 3,
                             num_hidden_layers=args.layers, num_attention_heads=4, num_key_value_heads=4,
                             max_position_embeddings=2048, tie_word_embeddings=True,
                             pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
        torch.manual_seed(0)
        LlamaForCausalLM(config).save_pretrained(model_dir)
        tok.save_pretrained(model_dir)
    rows = []
    for path in sorted(DATA.glob("*_preference_test.jsonl")):
        aspect = path.name.split("_")[0]
        for line in path.read_text().split("\n"):  # not splitlines: texts hold U+2028
            if not line.strip():
                continue
            r = json.loads(line)
            b = int(r["better_response_id"])
            rows.append(make_pair(prompt=r["prompt"], chosen=r[f"response_{b}"], rejected=r[f"response_{1 - b}"],
                                  aspect=aspect, source=f"helpsteer2:{path.name}", batch_id="bench"))
    df = frame(pd.DataFrame(rows)).drop_duplicates("pair_id")
    df = df.sample(frac=1.0, random_state=0).iloc[:args.pairs * 4].reset_index(drop=True)
    lengths = tokenize_pairs(df, tok, 1 << 20, 1 << 19).lengths()
    df = df[lengths <= args.max_length].iloc[:args.pairs]  # pairs that fit: no truncation in either trainer
    write_pairs(df, pairs_dir, stage="bench", config={}, created_at=CREATED_AT)
    n_params = sum(p.numel() for p in LlamaForCausalLM.from_pretrained(model_dir).parameters())
    return model_dir, pairs_dir, n_params, int(np.sum(lengths[lengths <= args.max_length][:args.pairs]))


def common(args) -> dict:
    steps = args.pairs // args.batch_size
    return dict(steps=steps, warmup=max(1, steps // 10))


def run_ours(args, model_dir: Path, pairs_dir: Path, out: Path, profile: bool) -> dict:
    from fgpo_tasks.dpo import DPOConfig, run_train_dpo

    c = common(args)
    cfg = DPOConfig(model=str(model_dir), loss_type="sigmoid", beta=0.1, lr=args.lr, scheduler="linear",
                    warmup_steps=c["warmup"], max_steps=c["steps"], batch_size=args.batch_size,
                    max_length=args.max_length, max_prompt_length=args.max_length // 2, logging_steps=1,
                    checkpoint_every=0, ref_batch_size=args.batch_size, ref_cache_dir=str(out / "refcache"), seed=0)
    shutil.rmtree(out, ignore_errors=True)  # a cold reference cache
    t0 = time.perf_counter()
    result = run_train_dpo(pairs_dir, out / "ours", cfg, CREATED_AT)
    total = time.perf_counter() - t0
    assert result["ref_cache"] == "miss"
    losses = [json.loads(line)["loss"] for line in (out / "ours" / "metrics.jsonl").read_text().splitlines()]
    res = {"total_s": total, "train_s": result["train_seconds"], "ref_s": result["ref_seconds"], "losses": losses}
    t0 = time.perf_counter()  # the same run again: the reference log-probs come from the cache
    warm = run_train_dpo(pairs_dir, out / "ours-warm", cfg, CREATED_AT)
    assert warm["ref_cache"] == "hit"
    res.update(warm_total_s=time.perf_counter() - t0, warm_s=warm["train_seconds"] + warm["ref_seconds"])
    if profile:
        res["profile"] = profile_ours(args, model_dir, pairs_dir)
    return res


def _trl_trainer(args, model_dir: Path, pairs_dir: Path, out: Path, steps: int):
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from trl import DPOConfig as TRLConfig, DPOTrainer

    from fgpo_tasks import models
    from fgpo_tasks.contract import read_pairs
    from fgpo_tasks.dpo.data import step_order, tokenize_pairs

    c = common(args)
    df = read_pairs(pairs_dir)
    tok = models.load_tokenizer(str(model_dir))
    lengths = tokenize_pairs(df, tok, args.max_length, args.max_length // 2).lengths()
    order = step_order(lengths, args.batch_size, seed=0, epoch=0).ravel()  # the batches our trainer runs
    ds = Dataset.from_list([{"prompt": [{"role": "user", "content": df["prompt"][i]}],
                             "chosen": [{"role": "assistant", "content": df["chosen"][i]}],
                             "rejected": [{"role": "assistant", "content": df["rejected"][i]}]} for i in order])
    targs = TRLConfig(output_dir=str(out / "trl"), loss_type=["sigmoid"], beta=0.1, learning_rate=args.lr,
                      lr_scheduler_type="linear", warmup_steps=c["warmup"], max_steps=steps,
                      per_device_train_batch_size=args.batch_size, gradient_accumulation_steps=1, max_grad_norm=1.0,
                      weight_decay=0.0, optim="adamw_torch", bf16=False, gradient_checkpointing=False,
                      max_length=None, logging_steps=1, save_strategy="no", report_to=[], use_cpu=True, seed=0,
                      train_sampling_strategy="sequential", dataloader_num_workers=0, disable_tqdm=True)
    load = lambda: AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)  # noqa: E731
    return DPOTrainer(model=load(), ref_model=load(), args=targs, train_dataset=ds, processing_class=tok)


def run_trl(args, model_dir: Path, pairs_dir: Path, out: Path, profile: bool) -> dict:
    t0 = time.perf_counter()
    trainer = _trl_trainer(args, model_dir, pairs_dir, out, common(args)["steps"])
    t1 = time.perf_counter()
    trainer.train()
    t2 = time.perf_counter()
    trainer.save_model(str(out / "trl" / "final"))
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    res = {"total_s": time.perf_counter() - t0, "train_s": t2 - t1, "ref_s": 0.0, "losses": losses}
    if profile:
        res["profile"] = profile_trl(args, model_dir, pairs_dir, out)
    return res


def _table(prof, rows: int = 12) -> list[list]:
    events = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)
    total = sum(e.self_cpu_time_total for e in events)
    return [[e.key[:60], e.self_cpu_time_total / 1e6, 100.0 * e.self_cpu_time_total / total] for e in events[:rows]]


def profile_ours(args, model_dir: Path, pairs_dir: Path) -> list[list]:
    """torch.profiler over 3 training steps of our loop (reference already cached)."""
    import torch
    from accelerate import Accelerator

    from fgpo_tasks import models
    from fgpo_tasks.contract import read_pairs
    from fgpo_tasks.dpo import DPOConfig, data
    from fgpo_tasks.dpo.losses import SequenceLogps
    from fgpo_tasks.dpo.train import accumulate_step

    cfg = DPOConfig(model=str(model_dir), batch_size=args.batch_size, lr=args.lr, max_length=args.max_length,
                    max_prompt_length=args.max_length // 2)
    tok = models.load_tokenizer(str(model_dir))
    tokens = data.tokenize_pairs(read_pairs(pairs_dir), tok, cfg.max_length, cfg.max_prompt_length)
    lengths = tokens.lengths()
    order = data.step_order(lengths, args.batch_size, 0, 0)
    acc = Accelerator()
    model = SequenceLogps(models.load_causal_lm(str(model_dir)))
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr)
    model, opt = acc.prepare(model, opt)
    ref = tuple(-100.0 * torch.ones(len(tokens)).numpy() for _ in range(2))
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for k in range(3):
            micro = [data.collate(tokens, idx, tok.pad_token_id, ref)
                     for idx in data.micro_batches(order[k % len(order)], lengths, args.batch_size, 1, 0)]
            accumulate_step(acc, model, opt, micro, cfg, None)
    return _table(prof)


def profile_trl(args, model_dir: Path, pairs_dir: Path, out: Path) -> list[list]:
    import torch

    trainer = _trl_trainer(args, model_dir, pairs_dir, out / "profile", 3)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        trainer.train()
    return _table(prof)


def arm_main(args) -> None:
    """One arm in this process: write its result JSON."""
    import torch

    torch.set_num_threads(args.threads)
    out = Path(args.work) / f"{args.arm}-{args.tag}"
    model_dir, pairs_dir = Path(args.work) / "model", Path(args.work) / "pairs"
    fn = run_ours if args.arm == "ours" else run_trl
    res = fn(args, model_dir, pairs_dir, out, args.profile)
    res["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    Path(args.result).write_text(json.dumps(res))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pairs", type=int, default=48)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--max-length", type=int, default=512)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=1, help="repeat the arms, interleaved, to average out noise")
    p.add_argument("--profile", action="store_true", help="add torch.profiler tables (malloc-tuned arms)")
    p.add_argument("--work", default=str(REPO / "work" / "bench_dpo"))
    p.add_argument("--no-write", action="store_true", help="print, do not update BENCHMARKS.md")
    p.add_argument("--report-only", action="store_true", help="rebuild the report from the last run's results")
    p.add_argument("--arm", choices=["ours", "trl"], help=argparse.SUPPRESS)
    p.add_argument("--tag", default="", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    args = p.parse_args()
    from fgpo_tasks.env import setup_environment
    setup_environment()
    if args.arm:
        return arm_main(args)

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    model_dir, pairs_dir, n_params, n_tokens = build_inputs(work, args)
    if args.report_only:
        results = {}
        for rnd in range(args.rounds):
            for malloc in ("default", "tuned"):
                for arm in ("trl", "ours"):
                    path = work / f"result-{arm}-{malloc}-{rnd}.json"
                    results.setdefault((arm, malloc), []).append(json.loads(path.read_text()))
        return report(args, results, n_params, n_tokens)
    passthrough = ["--pairs", str(args.pairs), "--batch-size", str(args.batch_size), "--max-length",
                   str(args.max_length), "--hidden", str(args.hidden), "--layers", str(args.layers),
                   "--lr", str(args.lr), "--threads", str(args.threads), "--work", str(work)]
    results: dict[tuple[str, str], list[dict]] = {}
    for rnd in range(args.rounds):
        for malloc in ("default", "tuned"):
            for arm in ("trl", "ours"):
                env = {k: v for k, v in os.environ.items() if k not in MALLOC}
                if malloc == "tuned":
                    env.update(MALLOC)
                env.setdefault("OMP_NUM_THREADS", str(args.threads))
                result = work / f"result-{arm}-{malloc}-{rnd}.json"
                profile = ["--profile"] if args.profile and malloc == "tuned" and rnd == 0 else []
                cmd = [sys.executable, __file__, *passthrough, "--arm", arm, "--tag", f"{malloc}-{rnd}",
                       "--result", str(result), *profile]
                print(f"round {rnd} {arm} malloc={malloc} ...", flush=True)
                subprocess.run(cmd, env=env, check=True, cwd=REPO, stdout=subprocess.DEVNULL)
                results.setdefault((arm, malloc), []).append(json.loads(result.read_text()))
    report(args, results, n_params, n_tokens)


WHERE_THE_TIME_GOES = """**Where the time goes.** TRL runs, every step, the policy forward and backward *and* a
reference forward over every position of the padded [chosen; rejected] batch; off Triton its fused
LM head scores all positions (prompt and padding included), recomputes the logits tile by tile in
the backward, and folds entropy / top-1 / mean-logit statistics in elementwise passes over
(tokens x 49,152): matrix products are {trl:.0f}% of its CPU time, the rest is exp, mul, sub, copy,
fill over those tiles. Ours computes the reference log-probs once (cached on disk for the next run),
runs the LM head only at response positions, and uses a custom autograd function that saves only
each token's logsumexp for the backward and there recomputes one `logps_chunk` of logits at a time
(so memory is bounded by the chunk, tests/test_dpo_memory.py), turning them into the softmax in
place and moving its normalisation onto the (tokens x hidden) side of the two gradient matmuls:
{ours:.0f}% of our time is matrix products, most of them the head's four GEMMs over response tokens
(forward, recompute, two gradients; at hidden 256 the 49,152-way head holds ~3/4 of a token's
FLOPs). What would close the rest: bf16 (`dtype: bf16`, or `bf16: true` autocast; this CPU's bf16
GEMM peak is ~2.3x fp32), padding-free batches (`packed: true`: no backbone work on the padding of
the shorter response of each pair; efficient with FlashAttention 2 on a GPU, a block-diagonal mask
with SDPA elsewhere), one prompt forward shared by chosen and rejected (prompts are ~25% of these
tokens), and on a GPU larger batches for fuller GEMMs."""


def report(args, results, n_params: int, n_tokens: int) -> None:
    rows, pps = [], {}
    med = statistics.median
    for (arm, malloc), rs in sorted(results.items()):
        per_round = [args.pairs / (r["train_s"] + r["ref_s"]) for r in rs]
        pps[(arm, malloc)] = med(per_round)
        warm = med([args.pairs / r["warm_s"] for r in rs]) if arm == "ours" else "-"
        rows.append([{"ours": "fgpo (Accelerate)", "trl": "TRL DPOTrainer"}[arm], malloc, pps[(arm, malloc)], warm,
                     med([r["ref_s"] for r in rs]), med([r["train_s"] for r in rs]),
                     med([r["total_s"] for r in rs]), int(max(r["peak_rss_mb"] for r in rs)),
                     " / ".join(f"{x:.3f}" for x in per_round)])
    ours_l, trl_l = results[("ours", "tuned")][0]["losses"], results[("trl", "tuned")][0]["losses"]
    traj = [[i + 1, a, b, abs(a - b)] for i, (a, b) in enumerate(zip(ours_l, trl_l))]
    shown = [a for a in sys.argv[1:] if a not in ("--report-only", "--no-write")]
    cmd = " ".join([".venv/bin/python benchmarks/bench_dpo.py"] + shown)
    lines = [
        f"## DPO trainer vs TRL DPOTrainer ({args.pairs} HelpSteer2 pairs, CPU)", "",
        f"`{cmd}`  ",
        f"Model: Llama {args.layers} layers x {args.hidden} hidden, {n_params / 1e6:.1f}M parameters (SmolLM2 "
        f"tokenizer, 49,152 tokens, chat template), fp32, {args.threads} thread(s) per process. Data: {args.pairs} pairs that fit "
        f"{args.max_length} tokens ({n_tokens:,} tokens in the longer sequence of each pair); batch {args.batch_size}, "
        f"{args.pairs // args.batch_size} steps, beta 0.1, lr {args.lr}, same batches in the same order. "
        f"Machine: {machine()} (shared with other jobs; medians of {args.rounds} round(s)).", "",
        "pairs/s counts the reference log-probs (ours: computed once before training, cache cold; TRL: a "
        "reference forward in every step) and the training loop; 'ref cached' is ours run again on the same "
        "pairs (the reference log-probs come from the disk cache); total adds loading, tokenising and saving. "
        "Peak RSS is the arm's process maximum.", "",
        markdown_table(["trainer", "malloc", "pairs/s", "pairs/s, ref cached", "ref s", "loop s", "total s",
                        "peak RSS MB", "pairs/s per round"], rows), "",
        f"**Speed-up (ours / TRL, pairs/s):** default malloc {pps[('ours', 'default')] / pps[('trl', 'default')]:.2f}x, "
        f"tuned malloc {pps[('ours', 'tuned')] / pps[('trl', 'tuned')]:.2f}x. "
        f"Tuned malloc (MALLOC_MMAP_MAX_=0, MALLOC_TRIM_THRESHOLD_=16 GiB) vs default: ours "
        f"{pps[('ours', 'tuned')] / pps[('ours', 'default')]:.2f}x, TRL {pps[('trl', 'tuned')] / pps[('trl', 'default')]:.2f}x.", "",
        f"Loss per step (tuned malloc), the same batches in both: max abs diff {max(r[3] for r in traj):.1e}.", "",
        markdown_table(["step", "ours", "TRL", "abs diff"], traj),
    ]
    for arm in ("ours", "trl"):
        prof = results[(arm, "tuned")][0].get("profile")
        if prof:
            lines += ["", f"torch.profiler, 3 steps of {arm}, top ops by self CPU time:", "",
                      markdown_table(["op", "self s", "%"], prof)]
    profiles = {arm: results[(arm, "tuned")][0].get("profile") for arm in ("ours", "trl")}
    if all(profiles.values()):
        share = {arm: sum(r[2] for r in prof if r[0] in ("aten::mm", "aten::addmm_", "aten::addmm", "aten::bmm"))
                 for arm, prof in profiles.items()}
        lines += ["", WHERE_THE_TIME_GOES.format(ours=share["ours"], trl=share["trl"])]
    text = "\n".join(lines)
    print(text)
    if not args.no_write:
        write_section("dpo", text)


if __name__ == "__main__":
    main()
