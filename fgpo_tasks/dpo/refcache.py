"""Reference log-probs: computed once per (reference model, tokenised pairs), cached on disk.

The cache key is sha256 of the reference model's weight files (a hub id resolved to its local
snapshot first, never its name), the pairs' token ids (which fold in the tokenizer, chat template
and max lengths), the precision and the torch / transformers versions, so a retrain on the same
pairs reuses the numbers and a change in any input computes them afresh. A cache file holds
pair_id, ref_chosen and ref_rejected (float32) in the pairs' order as an uncompressed Arrow IPC
file (``<key>.arrow``, by default in the token store's ``ref/`` folder: the store's reference
columns), memory-mapped when read; ``.npz`` files of earlier versions still load. No pickle.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np

from fgpo_tasks import jsonio
from fgpo_tasks import models
from fgpo_tasks.dpo.data import collate
from fgpo_tasks.provenance import file_fingerprint, sha256_hex

log = logging.getLogger(__name__)

CACHE_VERSION = "ref-logps-v1"  # bump when the way log-probs are computed changes
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf", ".json", ".model")


def default_dir() -> Path:
    from fgpo_tasks.env import work_dir
    return work_dir() / "cache" / "ref_logps"


def _files_fingerprint(files: list[Path], cache_dir: Path) -> str:
    """sha256 of the files' bytes, memoised by (path, size, mtime) so big weights hash once."""
    memo_path = cache_dir / "fingerprints.json"
    memo = json.loads(memo_path.read_text()) if memo_path.is_file() else {}
    parts = []
    for f in sorted(files):
        st = f.stat()
        key = f"{f.resolve()}|{st.st_size}|{st.st_mtime_ns}"
        if key not in memo:
            memo[key] = file_fingerprint(f)
        parts.append(f"{f.name}:{memo[key]}")
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = memo_path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(jsonio.dumps(memo))
    os.replace(tmp, memo_path)
    return sha256_hex(*parts)


def _snapshot(hub_id: str) -> Path:
    """The local folder of a hub id: its cached snapshot, else downloaded now. A hub id's name
    says nothing about the weights behind it, so the key is never made from the name."""
    from huggingface_hub import snapshot_download

    from fgpo_tasks.errors import FgpoError

    try:
        return Path(snapshot_download(hub_id, local_files_only=True))
    except Exception:  # noqa: BLE001 - not cached: download it (the reference model needs it anyway)
        try:
            return Path(snapshot_download(hub_id))
        except Exception as e:  # noqa: BLE001
            raise FgpoError(f"reference model {hub_id!r}: no local copy and the download failed ({e}); "
                            "its weights must be hashed to key the reference log-prob cache") from None


def model_fingerprint(spec: str, cache_dir: Path) -> str:
    """Fingerprint of a model spec's weights: the bytes of its weight and config files (a hub id
    resolved to its local snapshot first, downloading it if needed)."""
    path, gguf_file = models.resolve(spec) if spec not in models.TINY else (models.pretrained_path(spec), None)
    if gguf_file:
        return _files_fingerprint([Path(path) / gguf_file], cache_dir)
    folder = Path(path)
    if not folder.is_dir():
        folder = _snapshot(str(path))
    files = [f for f in folder.rglob("*") if f.is_file() and f.name.endswith(WEIGHT_SUFFIXES)]
    return _files_fingerprint(files, cache_dir)


def library_versions() -> str:
    """The libraries whose numerics the log-probs depend on."""
    import torch
    import transformers

    return f"torch={torch.__version__};transformers={transformers.__version__}"


def cache_key(ref_fingerprint: str, tokens, precision: str) -> str:
    """Key of the reference log-probs of ``tokens`` (PairTokens or a TokenStore)."""
    return sha256_hex(CACHE_VERSION, ref_fingerprint, tokens.fingerprint(), precision, library_versions())[:32]


def _pair_ids(tokens):
    """The pair ids of ``tokens`` as an Arrow (chunked) array, without a Python list for a store."""
    import pyarrow as pa

    ids = tokens.pair_id
    return ids.to_arrow() if hasattr(ids, "to_arrow") else pa.array(ids, pa.string())


def load(path: Path, tokens) -> tuple[np.ndarray, np.ndarray] | None:
    """(ref_chosen, ref_rejected) in the order of ``tokens``, or None when the file is absent or
    does not cover every pair. An Arrow file in the same row order is read without copying."""
    import pyarrow as pa

    path = Path(path)
    if not path.is_file():
        return None
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as f:
            ids, chosen, rejected = pa.array(f["pair_id"].tolist(), pa.string()), f["ref_chosen"], f["ref_rejected"]
    else:
        table = pa.ipc.open_file(pa.memory_map(str(path))).read_all()
        ids = table["pair_id"]
        chosen, rejected = (table[c].to_numpy() for c in ("ref_chosen", "ref_rejected"))
    ids, wanted = _chunked(ids), _chunked(_pair_ids(tokens))
    if ids.equals(wanted):  # the same rows in the same order: no copy, no index
        return chosen, rejected
    import pandas as pd

    order = pd.Index(ids.to_numpy(zero_copy_only=False)).get_indexer(wanted.to_numpy(zero_copy_only=False))
    if (order < 0).any():
        log.warning("%s lacks %d of %d pairs; computing the reference log-probs afresh",
                    path, int((order < 0).sum()), len(order))
        return None
    return chosen[order], rejected[order]


def _chunked(array):
    import pyarrow as pa
    return array if isinstance(array, pa.ChunkedArray) else pa.chunked_array([array])


def save(path: Path, tokens, chosen: np.ndarray, rejected: np.ndarray) -> None:
    """Write the columns atomically (a reader sees the whole file or none)."""
    import pyarrow as pa

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.table({"pair_id": _pair_ids(tokens), "ref_chosen": pa.array(np.asarray(chosen, np.float32)),
                      "ref_rejected": pa.array(np.asarray(rejected, np.float32))})
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}{path.suffix}")
    with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table, max_chunksize=1 << 16)
    os.replace(tmp, path)


def compute(logps_model, tokens, accelerator, batch_size: int, pad_id: int,
            show_progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Summed response log-probs of every pair under ``logps_model`` (a SequenceLogps, possibly
    prepared by accelerate), batched by length; each process scores a share, all get the whole."""
    import torch
    from accelerate.utils import gather_object
    from tqdm.auto import tqdm

    order = np.argsort(-tokens.lengths(), kind="stable")
    # Every process runs the same number of forwards (ZeRO-3 and FSDP gather weights collectively),
    # so the order is padded to a whole number of rounds.
    per_round = batch_size * accelerator.num_processes
    order = np.resize(order, -(-len(order) // per_round) * per_round)
    mine = [order[i + accelerator.process_index * batch_size:i + (accelerator.process_index + 1) * batch_size]
            for i in range(0, len(order), per_round)]
    was_training = logps_model.training
    logps_model.eval()
    results: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []  # (pair indices, chosen, rejected) per batch
    with torch.no_grad():
        for idx in tqdm(mine, desc="reference log-probs", disable=not (show_progress and accelerator.is_main_process)):
            batch = collate(tokens, idx, pad_id)
            batch = {k: v.to(accelerator.device) for k, v in batch.items()}
            with accelerator.autocast():
                logps = logps_model(batch["input_ids"], batch["attention_mask"], batch["response_mask"])
            logps = logps.float().cpu().numpy()
            results.append((np.asarray(idx), logps[:len(idx)], logps[len(idx):]))
    logps_model.train(was_training)
    chosen = np.zeros(len(tokens), dtype=np.float32)
    rejected = np.zeros(len(tokens), dtype=np.float32)
    for i, c, r in gather_object(results):  # padded rounds repeat pairs: same values
        chosen[i], rejected[i] = c, r
    return chosen, rejected
