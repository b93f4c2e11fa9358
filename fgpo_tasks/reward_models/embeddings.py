"""Frozen backbones: tokenising (prompt, response), embedding, and the on-disk embedding cache."""

from __future__ import annotations

import contextlib
import io
import logging
import uuid
from pathlib import Path
from typing import Callable

import numpy as np

from fgpo_tasks.errors import FgpoError
from fgpo_tasks.provenance import sha256_hex
from fgpo_tasks.reward_models.config import EMBED_VERSION, ENCODER_TYPES, resolve_device, text_key

log = logging.getLogger(__name__)



def length_sorted_batches(lengths, batch_size: int) -> list[np.ndarray]:
    """Index batches of texts sorted by length (longest first), so padding stays small."""
    order = np.argsort(-np.asarray(lengths), kind="stable")
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]



def padding_fraction(lengths, batches) -> float:
    """Fraction of padding tokens when each batch is padded to its longest member."""
    lengths = np.asarray(lengths)
    total = sum(len(b) * lengths[b].max() for b in batches if len(b))
    return float(1.0 - lengths.sum() / total) if total else 0.0



def encode_texts(tokenizer, prompts: list[str], responses: list[str], max_length: int,
                 max_prompt_length: int) -> list[dict]:
    """Token features per (prompt, response): the prompt keeps its last tokens, the response the rest."""
    out = []
    use_template = getattr(tokenizer, "chat_template", None) is not None
    for prompt, response in zip(prompts, responses):
        p_ids = tokenizer(prompt, add_special_tokens=False, verbose=False)["input_ids"]
        if max_prompt_length == 0:
            prompt = ""
        elif len(p_ids) > max_prompt_length:
            prompt = tokenizer.decode(p_ids[-max_prompt_length:])
        if use_template:
            text = tokenizer.apply_chat_template(
                [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}],
                tokenize=False)
            enc = tokenizer(text, add_special_tokens=False, truncation=True, max_length=max_length)
        else:
            enc = tokenizer(prompt, response, truncation="only_second", max_length=max_length)
        out.append({k: list(v) for k, v in enc.items()})
    return out



def _collate(tokenizer, feats: list[dict], device):
    batch = tokenizer.pad(feats, padding=True, return_tensors="pt")
    return {k: v.to(device) for k, v in batch.items()}



def _autocast(device: str):
    import torch

    if device == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()



BUCKET_CHARS = 1  # a text key's first hex character names its bucket: 16 buckets
WRITE_CHUNK = 4096  # texts embedded (and written as shards) per compute call: bounds memory


def bucket_of(key: str) -> str:
    """The bucket of a text key: its first hex characters (text keys are sha256 hex); any other
    string is hashed first, so a bucket name is always a safe folder name."""
    head = key[:BUCKET_CHARS].lower()
    if len(head) == BUCKET_CHARS and all(c in "0123456789abcdef" for c in head):
        return head
    return sha256_hex(key)[:BUCKET_CHARS]


class _Bucket:
    """The key index of one bucket: sorted key bytes, and for each the shard and row holding it."""

    __slots__ = ("keys", "shard", "row", "sids", "seen")

    def __init__(self):
        self.keys = np.empty(0, dtype="S1")
        self.shard = np.empty(0, dtype=np.int32)
        self.row = np.empty(0, dtype=np.int32)
        self.sids: list[str] = []  # "<bucket>/shard-<id>"
        self.seen: set[str] = set()

    def extend(self, sid: str, keys: np.ndarray) -> None:
        self.extend_many([(sid, keys)])

    def extend_many(self, shards: list[tuple[str, np.ndarray]]) -> None:
        """Add shards (id, keys) to the index with ONE sort: a reader opening a bucket of many
        shards pays one sort of its keys, not one per shard."""
        if not shards:
            return
        keys, shard, row = [self.keys], [self.shard], [self.row]
        for sid, k in shards:
            self.seen.add(sid)
            self.sids.append(sid)
            k = _as_bytes(k)
            keys.append(k)
            shard.append(np.full(len(k), len(self.sids) - 1, np.int32))
            row.append(np.arange(len(k), dtype=np.int32))
        all_keys = np.concatenate(keys)  # bytes of the widest width
        order = np.argsort(all_keys, kind="stable")  # an older shard's row wins a duplicate key
        self.keys, self.shard, self.row = all_keys[order], np.concatenate(shard)[order], np.concatenate(row)[order]

    def locate(self, keys: np.ndarray) -> np.ndarray:
        """Positions in the index of ``keys`` (bytes), -1 where absent."""
        if not len(self.keys):
            return np.full(len(keys), -1)
        pos = np.searchsorted(self.keys, keys)
        pos = np.minimum(pos, len(self.keys) - 1)
        return np.where(self.keys[pos] == keys, pos, -1)


def _as_bytes(keys) -> np.ndarray:
    arr = np.asarray(keys)
    if arr.dtype.kind == "S":
        return arr
    return np.char.encode(arr.astype(str), "utf-8") if len(arr) else np.empty(0, dtype="S1")


class EmbeddingCache:
    """Embeddings keyed by text hash, one folder per embedding key (backbone contents + recipe).

    Layout: ``<key>/<bucket>/shard-<id>.npy`` (float32 rows) plus ``shard-<id>.keys.npy`` (its
    text keys), where the bucket is the text key's first two hex characters (``bucket_of``); a
    write puts each text in the shard of its bucket. Each file is written to a unique temporary
    name and renamed, the keys last: a shard exists for a reader once its keys do. Readers take no
    lock: a lookup reads the key files of the buckets its texts fall in (the index, cached per
    process and extended only by new shards) and then, memory-mapped, only the rows of the shards
    that hold its texts; a lookup never touches the other buckets. A writer of missing texts takes
    the locks of their buckets (in order) and looks again once it holds them, so parallel tasks
    embed each
    text once overall. Shards written by earlier versions (``<key>/shard-*``, no bucket) are moved
    into buckets the first time a cache folder is opened for writing or looked up."""

    def __init__(self, root: str | Path, backbone_key: str):
        self.dir = Path(root) / backbone_key
        self.dir.mkdir(parents=True, exist_ok=True)
        self._buckets: dict[str, _Bucket] = {}
        self._legacy_checked = False

    def __len__(self) -> int:
        """Keys in the buckets read so far (``refresh()`` reads them all)."""
        return sum(len(b.keys) for b in self._buckets.values())

    def _bucket(self, name: str) -> _Bucket:
        if name not in self._buckets:
            self._buckets[name] = _Bucket()
        return self._buckets[name]

    def _migrate_legacy(self) -> None:
        """Move shards of the flat layout (one folder of uuid shards) into buckets, once."""
        from fgpo_tasks.storage import file_lock

        if self._legacy_checked:
            return
        self._legacy_checked = True
        if not any(self.dir.glob("shard-*.keys.npy")):
            return
        with file_lock(self.dir / ".write.lock"):
            for kf in sorted(self.dir.glob("shard-*.keys.npy")):
                vf = kf.with_name(kf.name[:-len(".keys.npy")] + ".npy")
                keys = np.load(kf, allow_pickle=False).tolist()
                self.refresh(sorted({bucket_of(k) for k in keys}))
                have = self._locate(keys)
                new = [i for i, (b, p) in enumerate(have) if p < 0]
                if new:
                    vecs = np.load(vf, mmap_mode="r", allow_pickle=False)
                    self.add([keys[i] for i in new], np.asarray(vecs[new]))
                kf.unlink()
                vf.unlink(missing_ok=True)
            log.info("embedding cache %s: moved flat shards into buckets", self.dir)

    def refresh(self, buckets=None) -> None:
        """Read the key files of ``buckets`` (default: every bucket) not read yet."""
        self._migrate_legacy()
        names = buckets if buckets is not None else sorted(
            d.name for d in self.dir.iterdir() if d.is_dir() and len(d.name) == BUCKET_CHARS)
        for name in names:
            folder = self.dir / name
            if not folder.is_dir():
                continue
            b = self._bucket(name)
            new = []
            for kf in sorted(folder.glob("shard-*.keys.npy")):
                sid = f"{name}/{kf.name[:-len('.keys.npy')]}"
                if sid not in b.seen:
                    new.append((sid, np.load(kf, allow_pickle=False)))
            b.extend_many(new)

    def _locate(self, keys: list[str]) -> list[tuple[str, int]]:
        """(bucket, index position or -1) per key, from the buckets read so far."""
        by_bucket: dict[str, list[int]] = {}
        for n, k in enumerate(keys):
            by_bucket.setdefault(bucket_of(k), []).append(n)
        out: list[tuple[str, int]] = [("", -1)] * len(keys)
        for name, positions in by_bucket.items():
            b = self._buckets.get(name)
            found = b.locate(_as_bytes([keys[n] for n in positions])) if b else np.full(len(positions), -1)
            for n, p in zip(positions, found.tolist()):
                out[n] = (name, p)
        return out

    def missing(self, keys) -> list[str]:
        keys = list(dict.fromkeys(keys))
        return [k for k, (_, p) in zip(keys, self._locate(keys)) if p < 0]

    def get(self, keys: list[str]) -> np.ndarray:
        """The rows of ``keys`` (all present), reading only the shards that hold them."""
        where: dict[str, tuple[list[int], list[int]]] = {}
        for n, (name, p) in enumerate(self._locate(keys)):
            if p < 0:
                raise FgpoError(f"{self.dir}: text key {keys[n]!r} is not in the embedding cache")
            b = self._buckets[name]
            positions, rows = where.setdefault(b.sids[b.shard[p]], ([], []))
            positions.append(n)
            rows.append(int(b.row[p]))
        out = None
        for sid, (positions, rows) in where.items():
            arr = np.load(self.dir / f"{sid}.npy", mmap_mode="r", allow_pickle=False)
            if out is None:
                out = np.empty((len(keys), arr.shape[1]), dtype=np.float32)
            out[positions] = arr[rows]
        return out if out is not None else np.empty((0, 0), dtype=np.float32)

    def add(self, keys: list[str], emb: np.ndarray) -> None:
        """Write rows of ``keys`` as one shard per bucket."""
        from fgpo_tasks.storage import atomic_write

        if not keys:
            return
        emb = np.asarray(emb, dtype=np.float32)
        groups: dict[str, list[int]] = {}
        for n, k in enumerate(keys):
            groups.setdefault(bucket_of(k), []).append(n)
        shard_id = uuid.uuid4().hex
        for name, rows in groups.items():
            sid = f"{name}/shard-{shard_id}"
            part = _as_bytes([keys[n] for n in rows])
            for suffix, arr in ((".npy", emb[rows]), (".keys.npy", part)):
                buf = io.BytesIO()
                np.save(buf, arr, allow_pickle=False)
                atomic_write(self.dir / f"{sid}{suffix}", buf.getvalue())
            b = self._bucket(name)
            if sid not in b.seen:
                b.extend(sid, part)

    def fetch(self, keys: list[str], compute: Callable[[list[str]], np.ndarray]) -> np.ndarray:
        """Rows of ``keys``; ``compute(missing keys)`` embeds those no shard holds yet (called on
        at most ``WRITE_CHUNK`` keys at a time, each result written before the next call)."""
        from fgpo_tasks.storage import file_lock

        buckets = sorted({bucket_of(k) for k in keys})
        self.refresh(buckets)
        missing = self.missing(keys)
        if missing:
            with contextlib.ExitStack() as locks:
                # the locks of the buckets of the missing texts, in sorted order (no deadlock), then
                # one batched pass over what is still missing once they are held
                for g in sorted({bucket_of(k) for k in missing}):
                    locks.enter_context(file_lock(self.dir / f".write-{g}.lock"))
                self.refresh(buckets)  # another writer may have added them meanwhile
                todo = self.missing(missing)
                if todo:
                    log.info("embedding %d new texts (%d cached)", len(todo), len(set(keys)) - len(todo))
                for i in range(0, len(todo), WRITE_CHUNK):
                    chunk = todo[i:i + WRITE_CHUNK]
                    self.add(chunk, compute(chunk))
        return self.get(keys)



_CACHES: dict[Path, EmbeddingCache] = {}



def embedding_cache(root: str | Path, key: str) -> EmbeddingCache:
    """One EmbeddingCache per folder and process, so its index is read once."""
    d = Path(root).absolute() / key
    if d not in _CACHES or not d.is_dir():
        _CACHES[d] = EmbeddingCache(root, key)
    return _CACHES[d]



def backbone_fingerprint(spec: str) -> str:
    """sha256 of every file of the backbone's local folder (weights, config, tokenizer), each
    hashed once per (path, size, mtime_ns); a hub id is resolved to its local snapshot first."""
    from fgpo_tasks.models import pretrained_path
    from fgpo_tasks.stages import tree_sha256

    path = Path(pretrained_path(spec))
    if not path.exists():
        try:
            from huggingface_hub import snapshot_download
            path = Path(snapshot_download(str(path), local_files_only=True))
        except Exception as e:  # noqa: BLE001 - any failure means "no local copy"
            raise FgpoError(f"backbone {spec!r}: no local copy to fingerprint ({e})") from None
    return tree_sha256(path)



def library_versions() -> str:
    """The libraries whose numerics an embedding depends on."""
    import torch
    import transformers

    return f"torch={torch.__version__};transformers={transformers.__version__}"



def pool(hidden, mask, pooling: str):
    """One vector per row of ``hidden`` (batch x tokens x dim) under the attention ``mask``
    (right padding): ``mean`` over the real tokens, ``cls`` the first token, ``last`` the last
    real token (a decoder's summary of prompt + response)."""
    import torch

    if pooling == "mean":
        m = mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * m).sum(1) / m.sum(1).clamp(min=1)
    if pooling == "cls":
        return hidden[:, 0]
    if pooling == "last":
        last = mask.sum(1) - 1
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
    raise FgpoError(f"pooling must be 'mean', 'cls' or 'last', got {pooling!r}")



def transformer_blocks(model):
    """The ModuleList of a backbone's transformer blocks (Llama-like ``layers``, BERT-like
    ``encoder.layer``, GPT-like ``h``)."""
    for path in ("layers", "model.layers", "encoder.layer", "transformer.h", "h"):
        obj = model
        for part in path.split("."):
            obj = getattr(obj, part, None)
            if obj is None:
                break
        if obj is not None and hasattr(obj, "__len__"):
            return obj, path
    raise FgpoError(f"{type(model).__name__}: cannot find its transformer blocks to pick a layer from")



class _DeepEnough(Exception):
    """Raised by the hook of the deepest block a recipe needs: the rest of the forward is skipped."""



def _block_output(out):
    return out[0] if isinstance(out, (tuple, list)) else out



class FrozenEmbedder:
    """A frozen backbone that turns (prompt, response) into one vector; shared across aspects.

    ``layer`` None: the backbone's final hidden state (after a decoder's final norm); ``layer`` k:
    the raw output of transformer block k (1-based), the backbone run only up to block k.
    ``max_prompt_length`` 0 embeds the response alone (no prompt: separate instead of
    cross-encoded)."""

    def __init__(self, spec: str, max_length: int, max_prompt_length: int, pooling: str,
                 batch_size: int, device: str = "auto", weights: str | None = None,
                 layer: int | None = None, dtype: str = "fp32"):
        from fgpo_tasks.models import load_encoder, load_tokenizer
        from fgpo_tasks.reward_models.config import weights_dtype

        self.spec, self.max_length, self.max_prompt_length = spec, max_length, max_prompt_length
        self.batch_size = batch_size
        self.device = resolve_device(device)
        self.dtype = weights_dtype(dtype, self.device)
        self.tokenizer = load_tokenizer(spec)
        self.model = load_encoder(spec, self.dtype).to(self.device).eval()
        self.n_blocks = len(transformer_blocks(self.model)[0])
        model_type = getattr(self.model.config, "model_type", "")
        if pooling == "auto":
            pooling = "mean" if model_type in ENCODER_TYPES else "last"
        self.pooling, self.layer = pooling, layer
        self.dim = int(self.model.config.hidden_size)
        self.weights = weights or backbone_fingerprint(spec)
        self.key = self.recipe_key(layer, pooling)

    def recipe_key(self, layer: int | None, pooling: str) -> str:
        """The embedding-cache key of this backbone's features at (layer, pooling)."""
        if layer is not None and not 1 <= layer <= self.n_blocks:
            raise FgpoError(f"layer must be in [1, {self.n_blocks}] for backbone {self.spec!r}, got {layer}")
        extra = ([f"layer={layer}"] if layer is not None else []) + (
            [f"dtype={self.dtype}"] if self.dtype != "fp32" else [])  # defaults keep earlier keys
        return sha256_hex(EMBED_VERSION, self.weights, library_versions(), str(self.max_length),
                          str(self.max_prompt_length), pooling, *extra)[:24]

    def _pool(self, hidden, mask):
        return pool(hidden, mask, self.pooling)

    def embed_recipes_uncached(self, prompts: list[str], responses: list[str],
                               recipes: list[tuple[int | None, str]], progress: bool = True
                               ) -> dict[tuple[int | None, str], np.ndarray]:
        """Features of each (prompt, response) at several (layer, pooling) recipes, one backbone
        pass for all: blocks past the deepest layer asked for are not run."""
        import torch
        from tqdm.auto import tqdm

        recipes = list(dict.fromkeys(recipes))
        layers = {lay for lay, _ in recipes}
        for lay in layers:
            self.recipe_key(lay, "mean")  # validates the layer
        # blocks past the deepest layer asked for are skipped: its hook stops the forward
        stop_at = None if None in layers else max(layers)
        captured: dict[int, object] = {}
        blocks, _ = transformer_blocks(self.model)

        def hook(lay):
            def capture(_module, _inputs, output):
                captured[lay] = _block_output(output)
                if lay == stop_at:
                    raise _DeepEnough
            return capture

        hooks = [blocks[lay - 1].register_forward_hook(hook(lay)) for lay in layers if lay is not None]
        feats = encode_texts(self.tokenizer, prompts, responses, self.max_length,
                             self.max_prompt_length)
        out = {r: np.zeros((len(feats), self.dim), dtype=np.float32) for r in recipes}
        batches = length_sorted_batches([len(f["input_ids"]) for f in feats], self.batch_size)
        try:
            with torch.inference_mode(), _autocast(self.device):
                for b in tqdm(batches, desc=f"embed {self.spec}", unit="batch", disable=not progress,
                              leave=False):
                    enc = _collate(self.tokenizer, [feats[i] for i in b], self.device)
                    final = None
                    try:
                        final = self.model(**enc).last_hidden_state
                    except _DeepEnough:
                        pass
                    for lay, pooling in recipes:
                        hidden = final if lay is None else captured[lay]
                        out[(lay, pooling)][b] = pool(hidden, enc["attention_mask"], pooling
                                                      ).float().cpu().numpy()
        finally:
            for h in hooks:
                h.remove()
        return out

    def embed_uncached(self, prompts: list[str], responses: list[str], progress: bool = True
                       ) -> np.ndarray:
        recipe = (self.layer, self.pooling)
        return self.embed_recipes_uncached(prompts, responses, [recipe], progress)[recipe]

    def fill_cache(self, prompts: list[str], responses: list[str], cache_root: str | Path,
                   recipes: list[tuple[int | None, str]], progress: bool = True, chunk: int = 512) -> dict:
        """Embed the texts missing from any recipe's cache in ONE pass and add them to every
        recipe's cache; returns {recipe: cache key}. (Benchmarks compare layers this way.)"""
        keys = [text_key(p, r) for p, r in zip(prompts, responses)]
        first: dict[str, int] = {}
        for i, k in enumerate(keys):
            first.setdefault(k, i)
        caches = {r: embedding_cache(cache_root, self.recipe_key(*r)) for r in recipes}
        for c in caches.values():
            c.refresh()
        missing = sorted({k for c in caches.values() for k in c.missing(first)})
        if missing:
            log.info("embedding %d texts for %d recipes in one pass", len(missing), len(recipes))
        for s in range(0, len(missing), chunk):  # a shard per chunk: an interrupted fill keeps its work
            part = missing[s:s + chunk]
            embs = self.embed_recipes_uncached([prompts[first[k]] for k in part],
                                               [responses[first[k]] for k in part], recipes, progress)
            for r, c in caches.items():
                todo = set(c.missing(part))
                rows = [i for i, k in enumerate(part) if k in todo]
                c.add([part[i] for i in rows], embs[r][rows])
        return {r: c.dir.name for r, c in caches.items()}

    def embed(self, prompts: list[str], responses: list[str], cache_root: str | Path | None = None,
              progress: bool = True) -> np.ndarray:
        """Embeddings of each (prompt, response); each distinct text is embedded at most once,
        ever, when ``cache_root`` is given (else once per call)."""
        keys = [text_key(p, r) for p, r in zip(prompts, responses)]
        first = {}
        for i, k in enumerate(keys):
            first.setdefault(k, i)
        if cache_root is None:
            uniq = list(first.values())
            emb = self.embed_uncached([prompts[i] for i in uniq], [responses[i] for i in uniq], progress)
            row = {k: j for j, k in enumerate(first)}
            return emb[[row[k] for k in keys]]
        cache = embedding_cache(cache_root, self.key)

        def compute(missing: list[str]) -> np.ndarray:
            return self.embed_uncached([prompts[first[k]] for k in missing],
                                       [responses[first[k]] for k in missing], progress)

        return cache.fetch(keys, compute)



_EMBEDDERS: dict[tuple, FrozenEmbedder] = {}



def get_embedder(spec: str, max_length: int, max_prompt_length: int, pooling: str,
                 batch_size: int, device: str = "auto", layer: int | None = None,
                 dtype: str = "fp32") -> FrozenEmbedder:
    """One loaded backbone per process, recipe and backbone contents (loading MiniLM takes
    seconds; weights changed in place are a new backbone, never the stale loaded one)."""
    weights = backbone_fingerprint(spec)
    k = (spec, weights, max_length, max_prompt_length, pooling, batch_size, device, layer, dtype)
    if k not in _EMBEDDERS:
        _EMBEDDERS[k] = FrozenEmbedder(spec, max_length, max_prompt_length, pooling, batch_size, device,
                                       weights=weights, layer=layer, dtype=dtype)
    return _EMBEDDERS[k]
