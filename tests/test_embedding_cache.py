"""The embedding cache: a lookup opens only the buckets and shards holding its texts, caches of the
flat layout earlier versions wrote read back the same rows, chunked writes keep every row."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from fgpo_tasks.reward_models import EmbeddingCache, text_key
from fgpo_tasks.reward_models import embeddings


def vec(key: str, dim: int = 4) -> np.ndarray:
    return np.frombuffer(hashlib.sha256(key.encode()).digest(), dtype=np.uint8)[:dim].astype(np.float32)


def test_a_lookup_opens_only_the_shards_holding_its_texts(tmp_path, monkeypatch):
    writer = EmbeddingCache(tmp_path, "key")
    batches = [[text_key(f"prompt {b}-{i}", "response") for i in range(40)] for b in range(3)]
    for keys in batches:  # three writes: up to 16 bucket shards each
        writer.add(keys, np.stack([vec(k) for k in keys]))
    holder = {}  # text key -> the shard file that holds it, read from the files themselves
    for kf in tmp_path.glob("key/*/shard-*.keys.npy"):
        for k in np.load(kf).tolist():
            holder[k.decode()] = f"{kf.parent.name}/{kf.name[:-len('.keys.npy')]}"
    assert len(holder) == 120 and len(set(holder.values())) > 3
    wanted = [batches[0][3], batches[2][7], batches[2][7], batches[1][0]]

    opened: list[Path] = []
    real = np.load
    monkeypatch.setattr(np, "load", lambda f, *a, **k: opened.append(Path(f)) or real(f, *a, **k))
    reader = EmbeddingCache(tmp_path, "key")
    got = reader.fetch(wanted, lambda missing: pytest.fail(f"recomputed {missing}"))
    np.testing.assert_array_equal(got, np.stack([vec(k) for k in wanted]))
    vectors = {f"{p.parent.name}/{p.name[:-len('.npy')]}" for p in opened if not p.name.endswith(".keys.npy")}
    key_files = {p for p in opened if p.name.endswith(".keys.npy")}
    assert vectors == {holder[k] for k in wanted}  # only the shards holding them
    assert {p.parent.name for p in key_files} == {k[0] for k in wanted}  # only their buckets' keys
    assert len(key_files) < len(list(tmp_path.glob("key/*/shard-*.keys.npy")))


def test_a_flat_cache_of_earlier_versions_reads_back_the_same_rows(tmp_path):
    """Earlier versions wrote ``<key>/shard-<id>.npy`` + ``.keys.npy`` (unicode keys) in one folder."""
    flat = tmp_path / "key"
    flat.mkdir()
    rows = {}
    for s in range(2):
        keys = [text_key(f"p{s}-{i}", "r") for i in range(25)]
        emb = np.stack([vec(k, 8) for k in keys])
        np.save(flat / f"shard-{s}.npy", emb)
        np.save(flat / f"shard-{s}.keys.npy", np.array(keys))
        rows.update(zip(keys, emb))
    wanted = list(rows)[::3]
    got = EmbeddingCache(tmp_path, "key").fetch(wanted, lambda missing: pytest.fail(f"recomputed {missing}"))
    np.testing.assert_array_equal(got, np.stack([rows[k] for k in wanted]))
    assert not list(flat.glob("shard-*"))  # moved into buckets
    again = EmbeddingCache(tmp_path, "key")
    again.refresh()
    assert len(again) == 50


def test_missing_texts_are_embedded_in_bounded_chunks(tmp_path, monkeypatch):
    monkeypatch.setattr(embeddings, "WRITE_CHUNK", 7)
    calls = []

    def compute(missing):
        calls.append(len(missing))
        return np.stack([vec(k) for k in missing])

    keys = [text_key(f"q{i}", "r") for i in range(100)]
    cache = EmbeddingCache(tmp_path, "key")
    got = cache.fetch(keys + keys[:10], compute)
    np.testing.assert_array_equal(got, np.stack([vec(k) for k in keys + keys[:10]]))
    assert sum(calls) == 100 and max(calls) <= 7  # each text once, never more than a chunk at a time
    assert cache.fetch(keys[::-1], lambda m: pytest.fail("recomputed")).shape == (100, 4)


def test_an_index_built_in_one_sort_equals_one_built_shard_by_shard():
    from fgpo_tasks.reward_models.embeddings import _Bucket

    rng = np.random.default_rng(0)
    shards = [(f"a/shard-{i}", np.array([f"{k:04x}".encode() for k in rng.integers(0, 3000, size=50)]))
              for i in range(30)]  # keys repeat across shards: the older shard's row must win
    one, many = _Bucket(), _Bucket()
    for sid, keys in shards:
        one.extend(sid, keys)
    many.extend_many(shards)
    for name in ("keys", "shard", "row"):
        assert np.array_equal(getattr(one, name), getattr(many, name))
    assert one.sids == many.sids and one.seen == many.seen
    first = {}
    for s, (_, keys) in enumerate(shards):
        for r, k in enumerate(keys):
            first.setdefault(k, (s, r))
    pos = many.locate(np.array(list(first)))
    assert [(int(many.shard[p]), int(many.row[p])) for p in pos] == list(first.values())
