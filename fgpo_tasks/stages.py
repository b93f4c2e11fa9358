"""The stage layer: every stage's output is stored under a key of exactly what it was computed from.

A stage is one function of (its inputs' fingerprints, its config, its code version). Its output
lives in ``<storage>/stages/<stage>/<key>/`` with a ``stage.json`` (written last) that describes
the inputs (path and fingerprint), the config, the code version, the compute seconds and the
result; ``key`` is sha256 of those three. A stage whose ``stage.json`` exists is never computed
again, whoever asks (DVC's run cache, Bazel's action cache); one that is missing is computed under
a lock on its key, so two workers asking for the same stage compute it once.

- **Input fingerprints.** A path inside a stage output is fingerprinted by that stage's key and
  the path under it (its content is a function of the key); any other path by its content
  (sha256 of every file, memoised by path, size and mtime_ns so a file is hashed once until it
  changes); a string that is not a path (a hub id, ``toy-world``) by itself.
- **Config.** Every field of the stage's config dataclass counts, except those whose field
  metadata says ``inert: True`` (batch sizes for inference, progress bars, cache locations:
  fields that cannot change the result). ``result_fields`` is the one rule.
- **Code version.** The package version plus a hash of the source files the stage runs
  (``STAGE_CODE``): an edit of the scoring code recomputes scoring and what follows it, an edit
  of the ingest readers does not retrain reward models on unchanged data.

A run key does not own outputs: the pipeline records, per run key and step, which stage key it
used (``<storage>/runs/<run_key>/<step>.json``). A changed parameter under an existing run key
gives a new stage key, so that stage and every stage after it (their inputs are its outputs) are
computed afresh; an unchanged rerun finds every key and computes nothing; runs that share a prefix
of stages share those outputs.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from fgpo_tasks import jsonio
from fgpo_tasks import __version__
from fgpo_tasks.config import to_dict
from fgpo_tasks.provenance import sha256_hex, stable_json
from fgpo_tasks.storage import atomic_write, file_lock, safe_name

log = logging.getLogger(__name__)

STAGE_FILE = "stage.json"
INERT = "inert"  # field metadata key: True on a config field that cannot change a stage's result
PACKAGE = Path(__file__).resolve().parent

# The source a stage's result depends on (files or folders under fgpo_tasks/). Shared helpers
# (config parsing, provenance, storage) only describe or store results and are left out.
_MODELS = ("models.py", "sft.py", "model_zoo.py", "zoo.py")
_RM = ("reward_models.py", "reward_models") + _MODELS
STAGE_CODE: dict[str, tuple[str, ...]] = {
    "ingest": ("ingest", "contract.py", "synthetic.py", "jsonio.py"),
    "validate": ("validate.py", "holdout.py", "contract.py"),
    "cap": ("holdout.py", "contract.py"),
    "embed": _RM + ("contract.py",),
    "reward_model": _RM + ("contract.py",),
    "eval_reward_model": _RM + ("contract.py",),
    "score": ("scoring.py", "confidence.py", "conflicts.py", "contract.py") + _RM,
    "select": ("selection.py", "scoring.py", "confidence.py", "contract.py") + _RM,
    "train_dpo": ("dpo", "contract.py") + _MODELS,
    "evaluate": ("evaluate.py", "contract.py", "synthetic.py") + _RM,
}


def result_fields(config: Any) -> dict:
    """A config dataclass as a dict of the fields that can change its stage's result."""
    if config is None:
        return {}
    if not dataclasses.is_dataclass(config):
        return dict(config)
    values = to_dict(config)
    return {f.name: values[f.name] for f in dataclasses.fields(config)
            if f.name in values and not f.metadata.get(INERT)}


def inert_fields(cls) -> set[str]:
    return {f.name for f in dataclasses.fields(cls) if f.metadata.get(INERT)}


# ---------------------------------------------------------------------------------------------
# Code versions

def _source_files(names: tuple[str, ...]) -> list[Path]:
    files = []
    for name in names:
        p = PACKAGE / name
        if p.is_dir():
            files += sorted(f for f in p.rglob("*.py") if "__pycache__" not in f.parts)
        elif p.is_file():
            files.append(p)
    return sorted(set(files))


@functools.lru_cache(maxsize=None)
def code_version(stage: str) -> str:
    """``<package version>+<hash of the stage's source files>``."""
    if stage not in STAGE_CODE:
        raise KeyError(f"no source list for stage {stage!r}; known: {sorted(STAGE_CODE)}")
    h = hashlib.sha256()
    for f in _source_files(STAGE_CODE[stage]):
        h.update(str(f.relative_to(PACKAGE)).encode())
        h.update(b"\0")
        h.update(f.read_bytes())
        h.update(b"\0")
    return f"{__version__}+{h.hexdigest()[:12]}"


# ---------------------------------------------------------------------------------------------
# Content fingerprints, memoised by file stat

_memo: dict[str, str] = {}
_memo_lock = threading.Lock()
_memo_loaded: set[str] = set()


def _memo_path() -> Path:
    from fgpo_tasks.env import work_dir
    return work_dir() / "cache" / "file_hashes.json"


def _load_memo() -> None:
    path = _memo_path()
    if str(path) in _memo_loaded:
        return
    _memo_loaded.add(str(path))
    try:
        _memo.update(json.loads(path.read_text()))
    except (OSError, ValueError):
        pass


def _save_memo(new: dict[str, str]) -> None:
    path = _memo_path()
    try:
        with file_lock(path.with_suffix(".lock")):
            try:
                on_disk = json.loads(path.read_text())
            except (OSError, ValueError):
                on_disk = {}
            on_disk.update(new)
            atomic_write(path, jsonio.dumps(on_disk))
    except OSError as e:  # a read-only work folder: the memo is only a speed-up
        log.debug("file-hash memo not saved: %s", e)


def file_sha256(path: str | Path) -> str:
    """sha256 of a file's bytes; hashed once per (path, size, mtime_ns)."""
    p = Path(path).absolute()
    st = p.stat()
    stamp = f"{p}|{st.st_size}|{st.st_mtime_ns}"
    with _memo_lock:
        _load_memo()
        if stamp in _memo:
            return _memo[stamp]
    h = hashlib.sha256()
    with open(p, "rb") as fh:
        while block := fh.read(1 << 20):
            h.update(block)
    digest = h.hexdigest()
    with _memo_lock:
        _memo[stamp] = digest
    _save_memo({stamp: digest})
    return digest


def tree_sha256(path: str | Path, suffixes: tuple[str, ...] | None = None) -> str:
    """sha256 over every file's relative path and content hash under a folder (or of one file)."""
    p = Path(path)
    if p.is_file():
        return file_sha256(p)
    files = sorted(f for f in p.rglob("*") if f.is_file() and (suffixes is None or f.name.endswith(suffixes)))
    return sha256_hex(*(f"{f.relative_to(p)}:{file_sha256(f)}" for f in files))


def _stage_of(path: Path) -> tuple[Path, dict] | None:
    for d in [path, *path.parents]:
        marker = d / STAGE_FILE
        if marker.is_file():
            try:
                rec = json.loads(marker.read_text())
            except ValueError:
                return None
            if rec.get("kind") == "fgpo.stage":
                return d, rec
    return None


def fingerprint(value: Any) -> Any:
    """The fingerprint of one input: a path (see the module doc), a list of them, or None."""
    if value is None:
        return None
    if isinstance(value, (list, tuple)):
        return [fingerprint(v) for v in value]
    if isinstance(value, dict):
        return {k: fingerprint(v) for k, v in sorted(value.items())}
    s = str(value)
    p = Path(s)
    if not p.exists():
        return f"literal:{s}"
    p = p.absolute()
    found = _stage_of(p)
    if found:
        d, rec = found
        rel = p.relative_to(d).as_posix()
        return f"stage:{rec['stage']}/{rec['key']}" + (f"/{rel}" if rel != "." else "")
    return f"sha256:{tree_sha256(p)}"


# ---------------------------------------------------------------------------------------------
# The store

@dataclass
class StageRun:
    stage: str
    key: str
    dir: Path
    record: dict
    computed: bool  # True when this call computed it, False when it was found stored

    @property
    def result(self) -> dict:
        return self.record["result"]

    @property
    def seconds(self) -> float:
        return self.record.get("seconds", 0.0)


def stage_key(stage: str, inputs: dict[str, Any], config: dict) -> tuple[str, dict]:
    """(key, input fingerprints) of a stage on these inputs and config, at the current code."""
    fps = {k: fingerprint(v) for k, v in sorted(inputs.items())}
    key = sha256_hex(stage, stable_json(fps), stable_json(config), code_version(stage))[:24]
    return key, fps


class Store:
    """Stage outputs under ``<root>/stages`` and run records under ``<root>/runs``."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def stage_dir(self, stage: str, key: str) -> Path:
        return self.root / "stages" / stage / key

    def lookup(self, stage: str, key: str) -> dict | None:
        marker = self.stage_dir(stage, key) / STAGE_FILE
        return json.loads(marker.read_text()) if marker.is_file() else None

    def records(self, stage: str) -> list[dict]:
        """Every finished output of a stage, oldest first (for reuse decisions across keys)."""
        out = []
        for marker in (self.root / "stages" / stage).glob(f"*/{STAGE_FILE}"):
            try:
                out.append(json.loads(marker.read_text()))
            except ValueError:
                continue
        return sorted(out, key=lambda r: (r.get("finished_at", 0), r["key"]))

    def run(self, stage: str, *, inputs: dict[str, Any], config: dict, compute: Callable[[Path], dict],
            created_at: str, extra: dict | None = None) -> StageRun:
        """The stored output of ``stage`` for these inputs and config, computing it if missing.

        ``compute(out_dir)`` writes under ``out_dir`` and returns the result dict (plain JSON
        values; paths inside ``out_dir`` stay valid forever). A compute that fails leaves no
        ``stage.json``; the next call continues in the same folder (a stage may resume from its
        own checkpoints there)."""
        key, fps = stage_key(stage, inputs, config)
        out = self.stage_dir(stage, key)
        if rec := self.lookup(stage, key):
            return StageRun(stage, key, out, rec, False)
        with file_lock(out.parent / f".{key}.lock"):
            if rec := self.lookup(stage, key):
                return StageRun(stage, key, out, rec, False)
            out.mkdir(parents=True, exist_ok=True)
            log.info("stage %s %s: computing", stage, key)
            t0 = time.perf_counter()
            result = compute(out)
            record = {"kind": "fgpo.stage", "stage": stage, "key": key,
                      "inputs": {k: {"value": _plain(inputs[k]), "fingerprint": fps[k]} for k in fps},
                      "config": config, "code_version": code_version(stage), "created_at": created_at,
                      "seconds": round(time.perf_counter() - t0, 3), "finished_at": time.time(),
                      "pid": os.getpid(), **(extra or {}), "result": result}
            atomic_write(out / STAGE_FILE, jsonio.dumps(record, indent=2, default=str) + "\n")
        return StageRun(stage, key, out, json.loads((out / STAGE_FILE).read_text()), True)

    # ---- run records: which stage outputs a run key used

    def run_record_path(self, run_key: str, step: str) -> Path:
        return self.root / "runs" / safe_name(run_key) / f"{safe_name(step)}.json"

    def run_record(self, run_key: str, step: str) -> dict | None:
        p = self.run_record_path(run_key, step)
        return json.loads(p.read_text()) if p.is_file() else None

    def record_run(self, run_key: str, step: str, stages: dict[str, str], result: dict) -> dict:
        """Note that ``run_key``'s ``step`` used the stage outputs ``stages`` ({stage: key})."""
        atomic_write(self.run_record_path(run_key, step),
                     jsonio.dumps({"run_key": run_key, "step": step, "stages": stages, "result": result},
                                indent=2, default=str) + "\n")
        return result


def _plain(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return None if value is None else str(value)
