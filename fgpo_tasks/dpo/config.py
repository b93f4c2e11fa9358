"""DPOConfig: every knob of the DPO stage, with defaults, help text and checks that name the field."""

from __future__ import annotations

from dataclasses import dataclass, field

from fgpo_tasks.choices import LOSS_TYPES
from fgpo_tasks.config import check
DFPO_PD = ("raw", "scaled")
SCHEDULERS = ("cosine", "linear", "constant")


@dataclass
class DPOConfig:
    # Models
    model: str = field(default="tiny-llama", metadata={
        "help": "policy model spec: hub id, local folder, .gguf file, or an alias (fgpo_tasks.models)"})
    ref_model: str | None = field(default=None, metadata={
        "help": "reference model spec; default: the policy's initial weights (model)"})

    # Loss
    loss_type: str = field(default="sigmoid", metadata={
        "help": f"one of {list(LOSS_TYPES)}: DPO, IPO, conservative DPO (label smoothing), DFPO (PD in the loss)"})
    beta: float = field(default=0.1, metadata={"help": "KL strength (tau for IPO); > 0"})
    label_smoothing: float = field(default=0.0, metadata={
        "help": "cdpo: probability a label is flipped, in [0, 0.5)"})
    sft_weight: float = field(default=0.0, metadata={
        "help": "weight of an NLL term on the chosen response (per-token mean, RPO); 0 = off"})
    scores_dir: str | None = field(default=None, metadata={
        "help": "dfpo: the score stage's folder (scores.parquet with pair_id, raw_margin_<aspect>, pd; "
                "manifest.json) covering every training pair"})
    dfpo_pd: str = field(default="raw", metadata={
        "help": "dfpo: the PD inside the loss. raw: - sum over the other aspects of the raw reward "
                "differences r_k'(x,y_w) - r_k'(x,y_l) (METHOD.md's DFPO loss); scaled: the selection "
                "PD (quantile-scaled, clipped margins; column pd)"})
    num_aspects: int | None = field(default=None, metadata={
        "help": "dfpo: K in -log sigmoid(K*M + PD); default: the number of reward models (aspects) "
                "in the scores manifest"})

    # Data
    max_length: int = field(default=1024, metadata={"help": "max tokens of prompt + response"})
    max_prompt_length: int = field(default=512, metadata={
        "help": "a too-long pair's prompt keeps its last max_prompt_length tokens; responses keep their start"})
    token_store_dir: str | None = field(default=None, metadata={
        "help": "root of the token stores (the pairs tokenised once into a memory-mapped Arrow file, "
                "keyed by data, tokenizer and max lengths, shared by every process); default: "
                "<work>/cache/token_store"})
    group_by_length: bool = field(default=True, metadata={
        "help": "sort pairs by length within blocks of 50 steps, so batches carry little padding"})

    # Optimisation
    batch_size: int = field(default=4, metadata={"help": "pairs per micro-batch per process"})
    grad_accum: int = field(default=1, metadata={"help": "micro-batches per optimizer step"})
    lr: float = field(default=1e-6, metadata={"help": "peak AdamW learning rate"})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay"})
    max_grad_norm: float = field(default=1.0, metadata={"help": "gradient clipping norm; 0 = off"})
    scheduler: str = field(default="linear", metadata={"help": f"learning-rate schedule, one of {list(SCHEDULERS)}"})
    warmup_ratio: float = field(default=0.1, metadata={"help": "warmup as a fraction of all steps, in [0, 1)"})
    warmup_steps: int = field(default=0, metadata={"help": "warmup steps; > 0 overrides warmup_ratio"})
    epochs: int = field(default=1, metadata={"help": "passes over the pairs (when max_steps is 0)"})
    max_steps: int = field(default=0, metadata={"help": "optimizer steps; 0 = epochs x steps per epoch"})
    seed: int = field(default=0, metadata={"help": "seed of data order, LoRA init and dropout"})

    # LoRA (off when lora_r is 0)
    lora_r: int = field(default=0, metadata={"help": "LoRA rank; 0 = full fine-tuning"})
    lora_alpha: float = field(default=16.0, metadata={"help": "LoRA alpha"})
    lora_dropout: float = field(default=0.05, metadata={"help": "LoRA dropout, in [0, 1)"})
    lora_target_modules: tuple[str, ...] = field(
        default=("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
        metadata={"help": "module names LoRA adapts"})
    lora_merge: bool = field(default=True, metadata={
        "help": "save merged full weights; false: save the adapter alone (loads on top of `model`)"})

    # Hardware and precision
    gradient_checkpointing: bool = field(default=False, metadata={"help": "recompute activations in backward"})
    dtype: str = field(default="auto", metadata={
        "help": "dtype the policy's weights are loaded and trained in: auto (bf16 on a CUDA GPU that has "
                "it, else fp32) | fp32 | bf16. bf16 halves weights, gradients and AdamW states; fp32 with "
                "bf16: true is mixed precision (fp32 master weights, bf16 matmuls)"})
    ref_dtype: str | None = field(default=None, metadata={
        "help": "dtype of the reference model: auto | fp32 | bf16 | fp16; default: the policy's dtype"})
    bf16: bool | None = field(default=None, metadata={"help": "bf16 autocast; default: on when a CUDA GPU has it"})
    packed: bool = field(default=False, metadata={
        "help": "padding-free batches: a micro-batch's sequences concatenated into one row, positions "
                "restarting per sequence, attention kept within each (FlashAttention 2's varlen kernel "
                "on GPUs, a block-diagonal mask with SDPA elsewhere)"})
    disable_dropout: bool = field(default=True, metadata={
        "help": "zero the model's own dropout (as TRL does); LoRA dropout is kept"})
    logps_chunk: int = field(default=4096, metadata={"help": "response tokens per LM-head call (memory bound)"})
    accelerate_config: str | None = field(default=None, metadata={
        "help": "accelerate config YAML (configs/accelerate/); with num_processes > 1 the CLI relaunches "
                "itself through `accelerate launch`"})

    # Reference log-probs
    ref_batch_size: int = field(default=16, metadata={"help": "pairs per reference forward"})
    ref_cache_dir: str | None = field(default=None, metadata={
        "help": "folder of cached reference log-probs (<key>.arrow: pair_id, ref_chosen, ref_rejected); "
                "default: the token store's ref/ folder"})

    # Logging and checkpoints
    logging_steps: int = field(default=10, metadata={"help": "log metrics every this many optimizer steps"})
    checkpoint_every: int = field(default=50, metadata={"help": "save a resumable checkpoint every N steps; 0 = off"})
    keep_checkpoints: int = field(default=1, metadata={"help": "checkpoints kept while training (newest)"})

    def __post_init__(self):
        self.lora_target_modules = tuple(self.lora_target_modules)
        check(self.loss_type in LOSS_TYPES,
              f"loss_type: unknown loss {self.loss_type!r}; expected one of {list(LOSS_TYPES)}")
        check(self.beta > 0, f"beta must be > 0, got {self.beta}")
        check(0.0 <= self.label_smoothing < 0.5, f"label_smoothing must be in [0, 0.5), got {self.label_smoothing}")
        check(self.label_smoothing == 0.0 or self.loss_type == "cdpo",
              f"label_smoothing={self.label_smoothing} only applies to loss_type 'cdpo', got {self.loss_type!r}")
        check(self.sft_weight >= 0, f"sft_weight must be >= 0, got {self.sft_weight}")
        check(self.loss_type != "dfpo" or bool(self.scores_dir),
              "scores_dir is required when loss_type is 'dfpo' (a folder with scores.parquet: pair_id, pd)")
        check(self.dfpo_pd in DFPO_PD, f"dfpo_pd: unknown {self.dfpo_pd!r}; expected one of {list(DFPO_PD)}")
        check(self.num_aspects is None or self.num_aspects >= 1, f"num_aspects must be >= 1, got {self.num_aspects}")
        check(bool(self.model), "model must name a model spec, got an empty string")
        check(self.max_length >= 2, f"max_length must be >= 2, got {self.max_length}")
        check(1 <= self.max_prompt_length < self.max_length,
              f"max_prompt_length must be in [1, max_length={self.max_length}), got {self.max_prompt_length}")
        check(self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}")
        check(self.grad_accum >= 1, f"grad_accum must be >= 1, got {self.grad_accum}")
        check(self.lr > 0, f"lr must be > 0, got {self.lr}")
        check(self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay}")
        check(self.max_grad_norm >= 0, f"max_grad_norm must be >= 0, got {self.max_grad_norm}")
        check(self.scheduler in SCHEDULERS, f"scheduler: unknown schedule {self.scheduler!r}; expected one of {list(SCHEDULERS)}")
        check(0.0 <= self.warmup_ratio < 1.0, f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        check(self.warmup_steps >= 0, f"warmup_steps must be >= 0, got {self.warmup_steps}")
        check(self.epochs >= 1, f"epochs must be >= 1, got {self.epochs}")
        check(self.max_steps >= 0, f"max_steps must be >= 0 (0 = use epochs), got {self.max_steps}")
        check(self.lora_r >= 0, f"lora_r must be >= 0 (0 = off), got {self.lora_r}")
        check(self.lora_alpha > 0, f"lora_alpha must be > 0, got {self.lora_alpha}")
        check(0.0 <= self.lora_dropout < 1.0, f"lora_dropout must be in [0, 1), got {self.lora_dropout}")
        check(self.lora_r == 0 or len(self.lora_target_modules) > 0,
              "lora_target_modules must name at least one module when lora_r > 0")
        check(self.dtype in ("auto", "fp32", "bf16"),
              f"dtype: {self.dtype!r} cannot be trained; expected auto, fp32 or bf16 (fp16 weights need "
              f"loss scaling AdamW does not do; fp16 is for ref_dtype)")
        check(self.ref_dtype in (None, "auto", "fp32", "bf16", "fp16"),
              f"ref_dtype: unknown {self.ref_dtype!r}; expected auto, fp32, bf16 or fp16")
        check(self.logps_chunk >= 1, f"logps_chunk must be >= 1, got {self.logps_chunk}")
        check(self.ref_batch_size >= 1, f"ref_batch_size must be >= 1, got {self.ref_batch_size}")
        check(self.logging_steps >= 1, f"logging_steps must be >= 1, got {self.logging_steps}")
        check(self.checkpoint_every >= 0, f"checkpoint_every must be >= 0 (0 = off), got {self.checkpoint_every}")
        check(self.keep_checkpoints >= 1, f"keep_checkpoints must be >= 1, got {self.keep_checkpoints}")

    @property
    def reference(self) -> str:
        """The reference model spec (the policy's when ``ref_model`` is unset)."""
        return self.ref_model or self.model
