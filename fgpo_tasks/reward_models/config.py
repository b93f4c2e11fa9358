"""The proxy reward models' config (``RewardModelConfig``), its names and small shared helpers."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from fgpo_tasks.config import check, to_dict
from fgpo_tasks.errors import FgpoError
from fgpo_tasks.provenance import sha256_hex

log = logging.getLogger(__name__)



UNIFIED = "__all__"  # the aspect name of the one unified reward model (the RAF baseline)



MODEL_FILE = "reward_model.json"



EMBED_VERSION = "1"  # bump when the embedding recipe changes: invalidates the embedding cache



ENCODER_TYPES = {"bert", "roberta", "distilbert", "deberta", "deberta-v2", "electra", "xlm-roberta",
                 "mpnet", "albert", "modernbert", "camembert", "nomic_bert"}



# layer: auto -> the transformer block measured best on the prompt-disjoint HelpSteer2 split
# (docs/method-choices.md, "Proxy reward-model candidates"); other backbones: the final state
LAYER_DEFAULTS = {"minilm-l6": 4}



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
    finetune_layers: int | None = field(default=None, metadata={
        "help": "finetune: train only the top N transformer blocks (and the final norm, pooler and "
                "head above them); null = every block"})
    lora_r: int = field(default=0, metadata={
        "help": "finetune: > 0 trains LoRA adapters of this rank (peft, alpha = 2r) on every block's "
                "attention projections plus the whole head, merged into the weights when saved; "
                "0 = no LoRA"})
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
    layer: int | str | None = field(default="auto", metadata={
        "help": "frozen features from transformer block `layer` (1-based; the backbone runs only up "
                "to it); null = the final hidden state (after a decoder's final norm); auto = the "
                "block measured best for the backbone (minilm-l6: 4), else null"})
    head_hidden: int = field(default=128, metadata={
        "help": "frozen head: 0 = linear on standardised embeddings, >0 = one hidden layer of this "
                "many GELU units"})
    ensemble: int = field(default=5, metadata={
        "help": "frozen: heads per aspect, trained with seeds seed .. seed+ensemble-1 on the same "
                "pairs; the reward is their mean"})
    dtype: Literal["auto", "fp32", "bf16", "fp16"] = field(default="auto", metadata={
        "help": "backbone weights: auto = bf16 on a CUDA GPU, fp32 on CPU (finetune under auto: "
                "fp32 master weights with bf16 autocast on GPU); bf16/fp16/fp32 force it"})
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
        if self.layer == "auto":
            self.layer = LAYER_DEFAULTS.get(self.backbone) if self.mode == "frozen" else None
        if self.lr is None:
            self.lr = 1e-3 if self.mode == "frozen" else 2e-5
        if self.epochs is None:
            self.epochs = 30 if self.mode == "frozen" else 1
        check(self.mode in ("frozen", "finetune"),
              f"mode must be 'frozen' or 'finetune', got {self.mode!r}")
        check(self.finetune_layers is None or self.finetune_layers >= 1,
              f"finetune_layers must be >= 1 or null, got {self.finetune_layers}")
        check(self.lora_r >= 0, f"lora_r must be >= 0, got {self.lora_r}")
        check(self.mode == "finetune" or (self.finetune_layers is None and not self.lora_r),
              "finetune_layers and lora_r apply to mode 'finetune' only")
        check(not (self.lora_r and self.finetune_layers is not None),
              "choose one of finetune_layers and lora_r")
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
        check(self.layer is None or (isinstance(self.layer, int) and not isinstance(self.layer, bool)
                                     and self.layer >= 1),
              f"layer must be an integer >= 1, 'auto' or null, got {self.layer!r}")
        check(self.ensemble >= 1, f"ensemble must be >= 1, got {self.ensemble}")
        check(self.dtype in ("auto", "fp32", "bf16", "fp16"),
              f"dtype must be one of auto, fp32, bf16, fp16, got {self.dtype!r}")
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



def text_key(prompt: str, response: str) -> str:
    return sha256_hex(prompt, response)[:32]



def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise FgpoError("device 'cuda' requested but CUDA is not available")
    return device



def weights_dtype(dtype: str, device: str, mode: str = "frozen") -> str:
    """The dtype name the backbone's weights load in: ``auto`` is bf16 on a CUDA device (fp32
    master weights for ``finetune``, which trains under bf16 autocast) and fp32 on a CPU."""
    from fgpo_tasks.models import dtype_name

    if dtype != "auto":
        return dtype
    if resolve_device(device) != "cuda" or mode == "finetune":
        return "fp32"
    return dtype_name("auto")



def default_cache_root(kind: str = "embeddings") -> Path:
    from fgpo_tasks.env import work_dir

    return work_dir() / "cache" / kind
