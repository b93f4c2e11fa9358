"""The model zoo: models built from code instead of downloaded, each built once into the model cache.

- ``tiny-llama`` / ``tiny-bert``: a freshly initialised few-hundred-thousand-parameter model from
  :func:`tiny_config` with the 259-token :func:`byte_tokenizer` (``build_tiny``);
- ``tiny-llama-toy``: the SFT recipe ``fgpo_tasks.sft.TOY_POLICY`` run once (``TOY_POLICIES``).

Layering: this module imports no other model module. ``models`` (spec resolution and loading)
imports it; ``sft`` imports both. The toy policies' builder is named by entry point
(``"module:function"``) and imported when one is first built, so no module imports its importer.

Concurrency: every build happens under an exclusive file lock beside its output (two processes
asking for the same model: one builds, the other waits and reuses it), into a unique temporary
folder renamed into place once complete, so a killed build never leaves a half model under the
final name and never blocks the next one.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Iterator

from fgpo_tasks.errors import ConfigError

TINY = {"tiny-llama", "tiny-bert", "tiny-llama-toy"}
# TINY specs that are SFT recipes: spec -> "module:function(spec, cache_root) -> folder"
TOY_POLICIES = {"tiny-llama-toy": "fgpo_tasks.sft:build_toy_policy"}
BYTE_CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
SPECIALS = ["<|pad|>", "<|bos|>", "<|end|>"]


@contextlib.contextmanager
def file_lock(path: str | Path) -> Iterator[None]:
    """Exclusive advisory lock on ``path`` (created if missing) for the ``with`` block; other
    processes taking the same lock wait. Released by the kernel if the holder dies."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def build_once(out: str | Path, build: Callable[[Path], None], done: str = "config.json") -> Path:
    """``out``, built by ``build(tmp_folder)`` unless ``out/<done>`` exists: under the file lock
    ``.<name>.lock`` beside it, into a unique temporary sibling, renamed into place when complete."""
    out = Path(out)
    if (out / done).is_file():
        return out
    with file_lock(out.parent / f".{out.name}.lock"):
        if (out / done).is_file():  # built by another process while this one waited
            return out
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.build-", dir=out.parent))
        try:
            build(tmp)
            if out.exists():  # a partial folder from before locks (no `done` file): replace it
                shutil.rmtree(out)
            tmp.rename(out)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def byte_tokenizer():
    """A byte-level tokenizer (259 tokens) built in code: any text, no files, a chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {t: i for i, t in enumerate(SPECIALS + sorted(alphabet))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<|pad|>", bos_token="<|bos|>",
                                   eos_token="<|end|>")
    fast.chat_template = BYTE_CHAT_TEMPLATE
    return fast


def train_bpe_tokenizer(texts: list[str], vocab_size: int):
    """A byte-level BPE tokenizer trained on ``texts`` (deterministic for the same texts), with the
    byte tokenizer's special tokens (pad 0, bos 1, eos 2) and chat template: any text still
    encodes (the 256 bytes are in the vocabulary) and decodes back exactly."""
    from tokenizers import Tokenizer, decoders, models as tmodels, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(tmodels.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<|pad|>", bos_token="<|bos|>",
                                   eos_token="<|end|>")
    fast.chat_template = BYTE_CHAT_TEMPLATE
    return fast


def tiny_config(kind: str, vocab_size: int, hidden: int = 64, layers: int = 2, heads: int = 4,
                max_positions: int = 1024, intermediate: int | None = None, kv_heads: int | None = None,
                tie_embeddings: bool = True):
    """Config of a Llama / BERT built from code (tests, demos and benchmarks size it up)."""
    if kind == "tiny-llama":
        from transformers import LlamaConfig
        return LlamaConfig(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=intermediate or hidden * 2,
                           num_hidden_layers=layers, num_attention_heads=heads,
                           num_key_value_heads=kv_heads or heads, max_position_embeddings=max_positions,
                           tie_word_embeddings=tie_embeddings, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    if kind == "tiny-bert":
        from transformers import BertConfig
        return BertConfig(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=intermediate or hidden * 2,
                          num_hidden_layers=layers, num_attention_heads=heads,
                          max_position_embeddings=max_positions, pad_token_id=0)
    raise ConfigError(f"Unknown tiny model kind: {kind!r}; expected one of {sorted(TINY - set(TOY_POLICIES))}")


def build_tiny(kind: str, out_dir: str | Path, seed: int = 0, **dims) -> Path:
    """A freshly initialised tiny model + byte tokenizer in ``out_dir`` (a local spec), built once."""
    config = tiny_config(kind, len(SPECIALS) + 256, **dims)  # validates kind before any lock

    def build(tmp: Path) -> None:
        import torch
        from transformers import AutoModel, AutoModelForCausalLM

        tok = byte_tokenizer()
        with torch.random.fork_rng(devices=[]):  # the caller's RNG is the same whether or not it built
            torch.manual_seed(seed)
            model = (AutoModelForCausalLM if kind == "tiny-llama" else AutoModel).from_config(config)
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
    return build_once(out_dir, build)


def toy_policy(spec: str, cache_root: str | Path) -> Path:
    """The folder of a toy policy spec, built once by its entry point (an SFT recipe)."""
    module, func = TOY_POLICIES[spec].split(":")
    return Path(getattr(importlib.import_module(module), func)(spec, cache_root))
