"""The DPO token store: the training pairs tokenised once into a memory-mapped Arrow file.

    store = tokenstore.prepare(data_dir, tokenizer, max_length, max_prompt_length, root, accelerator)

A store is the folder ``<root>/<key>/``:

- ``tokens.arrow``: an uncompressed Arrow IPC file, memory-mapped when read, one row per pair in
  the pair table's order: ``pair_id`` (string), ``prompt`` / ``chosen`` / ``rejected`` (list<int32>,
  exactly what ``data.tokenize_pairs`` makes) and ``length`` (int32, tokens of the pair's longer
  sequence: what its padded batch row costs). One record batch per tokenised batch.
- ``store.json``: written last, so a store is complete when it exists: the key, the settings, the
  number of pairs and of truncated pairs, the tokens' fingerprint (``data.tokens_fingerprint``).
- ``ref/<ref key>.arrow``: reference log-prob columns (pair_id, ref_chosen, ref_rejected,
  float32), row-aligned with ``tokens.arrow``, one file per reference model / precision
  (``refcache``; written by the reference pass, read memory-mapped by a rerun or a resumed run).

The key is sha256 of the pair file's bytes (its row order is part of the training order), the
tokenizer (its whole serialised form, chat template, special tokens), max_length,
max_prompt_length and the versions of this code, transformers and tokenizers: a rerun or a
resume with the same inputs opens the store, any change builds another.

The pairs are read from the Parquet file in batches of ``batch_rows`` rows, tokenised and written
batch by batch, so building holds one batch of Python lists at a time, never the pool. Under
``accelerate launch`` the local main process builds while the others wait
(``local_main_process_first``), and a file lock keeps two separate runs from building the same
store; every process then memory-maps the same file (the page cache holds it once per machine).
"""

from __future__ import annotations

import bisect
import itertools
import json
import logging
import os
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np

from fgpo_tasks import jsonio
from fgpo_tasks.dpo.data import TOKENIZE_VERSION, PairTokens, tokenize_rows, tokens_fingerprint
from fgpo_tasks.errors import InputError
from fgpo_tasks.provenance import file_fingerprint, sha256_hex

log = logging.getLogger(__name__)

STORE_VERSION = "token-store-v1"  # bump when the layout of a store changes
TOKENS_FILE = "tokens.arrow"
META_FILE = "store.json"
REF_DIR = "ref"
BATCH_ROWS = 8192
READ_COLUMNS = ("pair_id", "prompt", "prompt_messages", "chosen", "rejected")
REQUIRED = ("pair_id", "prompt", "chosen", "rejected")


def default_root() -> Path:
    from fgpo_tasks.env import work_dir
    return work_dir() / "cache" / "token_store"


def schema():
    import pyarrow as pa

    ids = pa.list_(pa.int32())
    return pa.schema([("pair_id", pa.string()), ("prompt", ids), ("chosen", ids), ("rejected", ids),
                      ("length", pa.int32())])


TOKENIZER_FILE_WORDS = ("token", "vocab", "merges", "chat_template", "spiece", "sentencepiece")


def tokenizer_fingerprint(tokenizer) -> str:
    """sha256 of everything of a tokenizer that can change the token ids: the files it was loaded
    from (vocabulary, merges, config, chat template), then the live object's chat template,
    special and added tokens, and its Rust pipeline (normalizer, pre-tokenizer, post-processor,
    decoder), so a change made in code after loading counts too. A tokenizer built in code (no
    folder) is hashed from its whole serialised form; one without a Rust backend is saved and its
    files hashed."""
    template = getattr(tokenizer, "chat_template", None)
    special = sorted((k, str(v)) for k, v in getattr(tokenizer, "special_tokens_map", {}).items())
    added = sorted((int(i), str(t)) for i, t in getattr(tokenizer, "added_tokens_decoder", {}).items())
    parts = [type(tokenizer).__name__, jsonio.dumps(template), jsonio.dumps(special), jsonio.dumps(added),
             str(len(tokenizer)), str(getattr(tokenizer, "eos_token", None))]
    folder = Path(str(getattr(tokenizer, "name_or_path", "") or "."))
    files = sorted(f for f in folder.iterdir() if f.is_file() and any(w in f.name for w in TOKENIZER_FILE_WORDS)) \
        if str(folder) != "." and folder.is_dir() else []
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None and files:
        parts += [f"{f.name}:{file_fingerprint(f)}" for f in files]
        parts += [c.__getstate__().decode() if c is not None else "-"
                  for c in (backend.normalizer, backend.pre_tokenizer, backend.post_processor, backend.decoder)]
    elif backend is not None:
        parts.append(backend.to_str())
    else:
        with tempfile.TemporaryDirectory() as tmp:
            tokenizer.save_pretrained(tmp)
            parts.append(file_fingerprint(tmp))
    return sha256_hex(*parts)


def library_versions() -> str:
    import tokenizers
    import transformers

    return f"transformers={transformers.__version__};tokenizers={tokenizers.__version__}"


def store_key(data_fingerprint: str, tokenizer_fp: str, max_length: int, max_prompt_length: int) -> str:
    return sha256_hex(STORE_VERSION, TOKENIZE_VERSION, data_fingerprint, tokenizer_fp, str(max_length),
                      str(max_prompt_length), library_versions())[:32]


def record_batch(tokens: PairTokens):
    """One batch of tokenised pairs as a record batch of the store's schema."""
    import pyarrow as pa
    import pyarrow.compute as pc

    s = schema()
    cols = [pa.array(tokens.pair_id, pa.string())]
    cols += [pa.array(getattr(tokens, name), s.field(name).type) for name in ("prompt", "chosen", "rejected")]
    longest = pc.max_element_wise(pc.list_value_length(cols[2]), pc.list_value_length(cols[3]))
    cols.append(pc.add(pc.list_value_length(cols[1]), longest).cast(pa.int32()))
    return pa.record_batch(cols, schema=s)


def build(pairs_file: Path, folder: Path, tokenizer, max_length: int, max_prompt_length: int,
          batch_rows: int = BATCH_ROWS, meta: dict | None = None) -> dict:
    """Tokenise ``pairs_file`` (Parquet) batch by batch into ``folder``; returns its store.json."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    t0 = time.perf_counter()
    source = pq.ParquetFile(pairs_file)
    names = source.schema_arrow.names
    for col in REQUIRED:
        if col not in names:
            raise InputError(f"missing column {col!r}; found {names}", file=str(pairs_file), field=col)
    n_pairs = n_truncated = 0
    with pa.OSFile(str(folder / TOKENS_FILE), "wb") as sink, pa.ipc.new_file(sink, schema()) as writer:
        for batch in source.iter_batches(batch_size=batch_rows, columns=[c for c in READ_COLUMNS if c in names]):
            tokens = tokenize_rows(batch.to_pylist(), tokenizer, max_length, max_prompt_length, quiet=True)
            writer.write_batch(record_batch(tokens))
            n_pairs += len(tokens)
            n_truncated += tokens.n_truncated
    meta = {**(meta or {}), "version": STORE_VERSION, "pairs": n_pairs, "n_truncated": n_truncated,
            "max_length": max_length, "max_prompt_length": max_prompt_length,
            "tokens_fingerprint": tokens_fingerprint(TokenStore(folder, meta={}).table),
            "build_seconds": round(time.perf_counter() - t0, 3)}
    tmp = folder / f".{META_FILE}.tmp{os.getpid()}"
    tmp.write_text(jsonio.dumps(meta, indent=2) + "\n")
    os.replace(tmp, folder / META_FILE)
    if n_truncated:
        log.info("truncated %d of %d pairs to max_length=%d (prompt keeps its end, responses their start)",
                 n_truncated, n_pairs, max_length)
    return meta


def prepare(data_dir: str | Path, tokenizer, max_length: int, max_prompt_length: int,
            root: str | Path | None = None, accelerator=None, batch_rows: int = BATCH_ROWS) -> "TokenStore":
    """The token store of a pair directory's pairs.parquet: opened when one with the same key
    exists, else built now (by the local main process alone under accelerate)."""
    from fgpo_tasks.contract import PAIRS_FILE
    from fgpo_tasks.zoo import build_once

    pairs_file = Path(data_dir) / PAIRS_FILE
    if not pairs_file.is_file():
        raise InputError(f"{data_dir}: not an fgpo data directory (no {PAIRS_FILE})", file=str(pairs_file))
    data_fp = file_fingerprint(pairs_file)
    tok_fp = tokenizer_fingerprint(tokenizer)
    key = store_key(data_fp, tok_fp, max_length, max_prompt_length)
    folder = Path(root) if root else default_root()
    folder = folder / key
    folder.parent.mkdir(parents=True, exist_ok=True)
    meta = {"key": key, "data_file": str(pairs_file), "data_file_sha256": data_fp, "tokenizer_sha256": tok_fp}
    built = []

    def _build(tmp: Path) -> None:
        built.append(build(pairs_file, tmp, tokenizer, max_length, max_prompt_length, batch_rows, meta))

    first = accelerator.local_main_process_first() if accelerator is not None else nullcontext()
    with first:
        build_once(folder, _build, done=META_FILE)
    store = TokenStore(folder)
    if built:
        log.info("token store %s: tokenised %d pairs in %.1f s", folder, len(store), built[0]["build_seconds"])
    else:
        log.info("token store %s: reused (%d pairs)", folder, len(store))
    store.built = bool(built)
    return store


class _Column:
    """Rows of one column of a chunked Arrow table, by global row index."""

    def __init__(self, chunked):
        self._chunked = chunked
        self._starts = list(itertools.accumulate((len(c) for c in chunked.chunks), initial=0))

    def __len__(self) -> int:
        return self._starts[-1]

    def _locate(self, i) -> tuple[int, int]:
        i = int(i)
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(f"row {i} out of range for {len(self)} rows")
        c = bisect.bisect_right(self._starts, i) - 1
        return c, i - self._starts[c]

    def to_arrow(self):
        return self._chunked


class _StringColumn(_Column):
    def __getitem__(self, i) -> str:
        c, j = self._locate(i)
        return self._chunked.chunks[c][j].as_py()

    def __iter__(self):
        for chunk in self._chunked.chunks:
            yield from chunk.to_pylist()


class _IdsColumn(_Column):
    """list<int32> rows as zero-copy numpy views of the memory map (offsets, values per chunk)."""

    def __init__(self, chunked):
        super().__init__(chunked)
        self._parts = [(c.offsets.to_numpy(), c.values.to_numpy()) for c in chunked.chunks]

    def ids(self, i) -> np.ndarray:
        c, j = self._locate(i)
        offsets, values = self._parts[c]
        return values[offsets[j]:offsets[j + 1]]

    def __getitem__(self, i) -> list[int]:
        return self.ids(i).tolist()

    def __iter__(self):
        for i in range(len(self)):
            yield self[i]


class TokenStore:
    """A store, memory-mapped: reads like ``data.PairTokens`` (len, pair_id[i], prompt[i] /
    chosen[i] / rejected[i] as lists of ids, lengths(), fingerprint(), n_truncated), so collate,
    collate_packed, micro_batches and the reference pass take either; rows come from the file on
    demand, so several processes share one copy in the page cache."""

    def __init__(self, folder: str | Path, meta: dict | None = None):
        import pyarrow as pa

        self.path = Path(folder)
        self.table = pa.ipc.open_file(pa.memory_map(str(self.path / TOKENS_FILE))).read_all()
        self.meta = meta if meta is not None else json.loads((self.path / META_FILE).read_text())
        self.pair_id = _StringColumn(self.table["pair_id"])
        self.prompt = _IdsColumn(self.table["prompt"])
        self.chosen = _IdsColumn(self.table["chosen"])
        self.rejected = _IdsColumn(self.table["rejected"])
        self.built = False

    def __len__(self) -> int:
        return self.table.num_rows

    @property
    def n_truncated(self) -> int:
        return int(self.meta["n_truncated"])

    def lengths(self) -> np.ndarray:
        """Tokens in a pair's longer sequence: what its padded batch row costs."""
        return self.table["length"].to_numpy().astype(np.int64)

    def fingerprint(self) -> str:
        """``data.tokens_fingerprint`` of the store, computed once when it was built."""
        return self.meta["tokens_fingerprint"] if "tokens_fingerprint" in self.meta else tokens_fingerprint(self.table)

    def ref_file(self, key: str) -> Path:
        """Where the reference log-prob columns of reference key ``key`` live in this store."""
        return self.path / REF_DIR / f"{key}.arrow"

    def to_pair_tokens(self) -> PairTokens:
        """The whole store as in-memory lists (small stores and tests only)."""
        return PairTokens(pair_id=list(self.pair_id), prompt=list(self.prompt), chosen=list(self.chosen),
                          rejected=list(self.rejected), n_truncated=self.n_truncated)
