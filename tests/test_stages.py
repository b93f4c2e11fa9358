"""The stage layer: outputs keyed by what they were computed from, run keys that only point at
them, incremental retraining, and caches that never serve stale or half-written results."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import numpy as np
import pytest

from fgpo_tasks import pipeline, stages
from fgpo_tasks.storage import atomic_dir

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
CREATED_AT = "2026-01-01T00:00:00+00:00"


def _params(tmp_path: Path, **extra) -> dict:
    return {"profile": "tiny", "storage_root": str(tmp_path / "storage"),
            "tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}", **extra}


@pytest.fixture
def computed(monkeypatch):
    """Every stage the layer computes (not found stored) during the test, in order."""
    seen: list[str] = []
    real = stages.Store.run

    def spy(self, stage, **kw):
        run = real(self, stage, **kw)
        if run.computed:
            seen.append(stage)
        return run

    monkeypatch.setattr(stages.Store, "run", spy)
    return seen


def _strategy(select_dir: str) -> str:
    return json.loads((Path(select_dir) / "manifest.json").read_text())["config"]["strategy"]


def test_a_changed_parameter_recomputes_and_an_unchanged_rerun_computes_nothing(tmp_path, computed):
    params = _params(tmp_path)
    first = pipeline.run_pipeline(params, "K", CREATED_AT)
    assert _strategy(first["select"]["data"]) == "pd"
    assert {"ingest", "validate", "reward_model", "score", "select", "train_dpo", "evaluate"} <= set(computed)

    computed.clear()
    again = pipeline.run_pipeline(params, "K", CREATED_AT)
    assert computed == [], f"an unchanged rerun computed {computed}"
    assert again["select"] == first["select"] and again["evaluate"] == first["evaluate"]

    # The CLI, from another folder, under the same run key with another strategy: a random
    # selection (and a policy trained on it), never the stored pd one.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    proc = subprocess.run([str(BIN / "fgpo"), "pipeline", "--profile", "tiny", "--run-key", "K",
                           "--strategy", "random", "--storage-root", "../storage",
                           "--tracking-uri", params["tracking_uri"]],
                          cwd=elsewhere, capture_output=True, text=True, timeout=900,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout)
    assert _strategy(out["select"]["data"]) == "random"
    assert out["select"]["data"] != first["select"]["data"]
    assert out["train_dpo"]["model"] != first["train_dpo"]["model"]
    # the stages before selection did not change, so the run shares them with its pd version
    assert out["score"]["scores"] == first["score"]["scores"]
    assert [m["model"] for m in out["reward_models"]] == [m["model"] for m in first["reward_models"]]
    record = json.loads((tmp_path / "storage" / "runs" / "K" / "select.json").read_text())
    assert record["result"]["data"] == out["select"]["data"]


def _through_scoring(params: dict, run_key: str) -> tuple[list[dict], dict]:
    ingested = pipeline.step_ingest(params, run_key, CREATED_AT)
    valid = pipeline.step_validate(params, run_key, CREATED_AT, ingested["data"])
    models = [pipeline.step_reward_model(params, run_key, CREATED_AT, valid["data"], a) for a in valid["aspects"]]
    return models, pipeline.step_score(params, run_key, CREATED_AT, valid["data"], models)


def _n(n_pairs: int) -> dict:
    return {"stages": {"ingest": {"synthetic": {"n_pairs": n_pairs, "conflict_rate": 0.2, "seed": 0}}}}


def test_a_small_new_batch_reuses_the_proxies_and_scores_only_new_pairs(tmp_path):
    from fgpo_tasks.scoring import read_scores

    models, _ = _through_scoring(_params(tmp_path, **_n(180)), "day-1")
    assert not any(m["reused"] for m in models)

    # +11% per aspect (45 -> 50 pairs): below refresh_fraction 0.25, so every proxy is reused
    models2, scores = _through_scoring(_params(tmp_path, **_n(200)), "day-2")
    assert all(m["reused"] for m in models2), [m["reason"] for m in models2]
    assert all("grew by 11.1% (45 -> 50 pairs)" in m["reason"] for m in models2)
    assert [m["model"] for m in models2] == [m["model"] for m in models]
    table, manifest = read_scores(scores["scores"])
    assert len(table) == 200  # quantiles, PD and selection are over the whole pool
    scored, cached = manifest["metrics"]["scored"], manifest["metrics"]["from_cache"]
    assert scored == {a: 15 for a in scored}  # 5 new pairs of each of the 3 other aspects
    assert sum(cached.values()) / (sum(cached.values()) + sum(scored.values())) >= 0.85

    # +44% since the proxies were trained: retrained, and told why
    models3, scores3 = _through_scoring(_params(tmp_path, **_n(260)), "day-3")
    assert not any(m["reused"] for m in models3)
    assert all(m["reason"].startswith("retrained: the aspect's data grew by 44.4%") for m in models3)
    assert read_scores(scores3["scores"])[1]["metrics"]["from_cache"] == {a: 0 for a in scored}


def test_changing_a_backbone_in_place_never_serves_stale_embeddings(tmp_path):
    """Same path, same file names, same sizes, new weights: new embeddings."""
    import shutil

    import torch
    from safetensors.torch import load_file, save_file

    from fgpo_tasks import models, reward_models as rm

    backbone = tmp_path / "backbone"
    shutil.copytree(models.pretrained_path("tiny-bert"), backbone)
    prompts, responses = ["a question", "another question"], ["an answer", "a second answer"]
    cache = tmp_path / "cache"
    before = rm.get_embedder(str(backbone), 64, 24, "auto", 8, "cpu").embed(prompts, responses, cache)

    weights = next(backbone.glob("*.safetensors"))
    size = weights.stat().st_size
    tensors = load_file(str(weights))
    name = next(k for k, v in tensors.items() if v.dtype == torch.float32 and v.ndim == 2)
    tensors[name] = tensors[name] + 0.5
    save_file(tensors, str(weights), metadata={"format": "pt"})
    assert weights.stat().st_size == size

    after = rm.get_embedder(str(backbone), 64, 24, "auto", 8, "cpu").embed(prompts, responses, cache)
    assert not np.allclose(before, after)
    fresh = rm.get_embedder(str(backbone), 64, 24, "auto", 8, "cpu").embed_uncached(prompts, responses, False)
    assert np.allclose(after, fresh, atol=1e-5)
    assert len([d for d in cache.iterdir() if d.is_dir()]) == 2  # one cache folder per backbone content


def _two_processes(script: str, tmp_path: Path) -> list[str]:
    path = tmp_path / "worker.py"
    path.write_text(textwrap.dedent(script))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [subprocess.Popen([sys.executable, str(path), str(i)], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for i in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [e[-2000:] for _, e in outs]
    return [o.strip() for o, _ in outs]


def test_two_processes_asking_for_one_stage_compute_it_once(tmp_path):
    out = _two_processes(f"""
        import sys, time, os
        from pathlib import Path
        from fgpo_tasks.stages import Store

        def compute(d):
            with open({str(tmp_path / 'log')!r}, "a") as fh:
                fh.write(f"{{os.getpid()}}\\n")
            time.sleep(1.0)
            (d / "out.txt").write_text("done")
            return {{"file": str(d / "out.txt")}}

        run = Store({str(tmp_path / 'store')!r}).run("cap", inputs={{"pool": "literal"}}, config={{"n": 1}},
                                                   compute=compute, created_at="t")
        print(run.key, Path(run.result["file"]).read_text())
    """, tmp_path)
    assert out[0] == out[1] and out[0].endswith("done")
    assert len((tmp_path / "log").read_text().split()) == 1


def test_two_processes_filling_one_embedding_cache_embed_each_text_once(tmp_path):
    out = _two_processes(f"""
        import sys, time, hashlib, json
        import numpy as np
        from fgpo_tasks.reward_models import EmbeddingCache

        me = int(sys.argv[1])
        keys = [f"k{{i}}" for i in range(me * 50, me * 50 + 100)]  # 50 texts overlap

        def vec(k):
            return np.frombuffer(hashlib.sha256(k.encode()).digest(), dtype=np.uint8)[:8].astype(np.float32)

        def compute(missing):
            with open({str(tmp_path / 'computed')!r}, "a") as fh:
                fh.write("\\n".join(missing) + "\\n")
            time.sleep(0.5)
            return np.stack([vec(k) for k in missing])

        got = EmbeddingCache({str(tmp_path / 'cache')!r}, "key").fetch(keys, compute)
        assert np.array_equal(got, np.stack([vec(k) for k in keys]))
        print(len(keys))
    """, tmp_path)
    assert out == ["100", "100"]
    done = (tmp_path / "computed").read_text().split()
    assert sorted(done) == sorted(set(done)) and len(done) == 150  # each of the 150 texts once


def test_embedding_cache_reads_only_the_shards_it_needs(tmp_path, monkeypatch):
    from fgpo_tasks.reward_models import EmbeddingCache

    cache = EmbeddingCache(tmp_path, "key")
    for shard in range(3):
        keys = [f"s{shard}-{i}" for i in range(4)]
        cache.add(keys, np.full((4, 2), shard, dtype=np.float32))
    opened: list[str] = []
    real = np.load
    monkeypatch.setattr(np, "load", lambda f, *a, **k: opened.append(Path(f).name) or real(f, *a, **k))
    reader = EmbeddingCache(tmp_path, "key")
    reader.refresh()
    opened.clear()
    got = reader.fetch(["s1-0", "s1-3"], lambda missing: pytest.fail(f"recomputed {missing}"))
    assert got.tolist() == [[1.0, 1.0], [1.0, 1.0]]
    # only the shard(s) of the second write (one per hash bucket its keys fall in, one file name)
    assert len(set(opened)) == 1 and opened[0].endswith(".npy") and not opened[0].endswith(".keys.npy")


def test_atomic_dir_never_leaves_a_moment_without_output(tmp_path):
    out = tmp_path / "out"
    with atomic_dir(out) as tmp:
        (tmp / "v").write_text("0")
    missing, stop = [], threading.Event()

    def reader():
        while not stop.is_set():
            if not (out / "v").is_file():
                missing.append(1)

    t = threading.Thread(target=reader)
    t.start()
    for i in range(1, 60):
        with atomic_dir(out) as tmp:
            (tmp / "v").write_text(str(i))
    stop.set()
    t.join()
    assert not missing and (out / "v").read_text() == "59"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no temporary or old sibling left


def test_atomic_dir_restores_the_output_a_crash_left_only_as_old(tmp_path):
    """A crash between the fallback's two renames left only ``.out.old-*``: the next writer
    (and a failed one) finds the output back in place."""
    old = tmp_path / ".out.old-12345678"
    old.mkdir()
    (old / "v").write_text("kept")
    with pytest.raises(RuntimeError):
        with atomic_dir(tmp_path / "out"):
            raise RuntimeError("crash")
    assert (tmp_path / "out" / "v").read_text() == "kept"


def test_inert_fields_do_not_change_a_stage_key_and_the_rest_do():
    from fgpo_tasks.reward_models import RewardModelConfig
    from fgpo_tasks.scoring import ScoreConfig

    base = stages.stage_key("score", {"data": "x"}, stages.result_fields(ScoreConfig()))[0]
    quiet = stages.stage_key("score", {"data": "x"}, stages.result_fields(ScoreConfig(progress=False,
                                                                                      cache_dir="/elsewhere")))[0]
    other = stages.stage_key("score", {"data": "x"}, stages.result_fields(ScoreConfig(gamma=0.5)))[0]
    assert base == quiet and base != other
    assert {"embed_batch_size", "cache_dir"} <= stages.inert_fields(RewardModelConfig)
    assert "lr" in stages.result_fields(RewardModelConfig())

    from fgpo_tasks.evaluate import EvalConfig
    assert {"score_batch_size", "generation_cache"} <= stages.inert_fields(EvalConfig)
    assert {"n_prompts", "max_new_tokens", "decoding"} <= set(stages.result_fields(EvalConfig()))


def test_a_stage_code_version_follows_its_own_sources_only():
    assert stages.code_version("score") != stages.code_version("ingest")
    files = {f.name for f in stages._source_files(stages.STAGE_CODE["ingest"])}
    assert "scoring.py" not in files and "contract.py" in files


def test_the_reference_cache_keys_on_weight_contents_never_on_names(tmp_path):
    """A reference model changed in place gets a new key; a hub id is never hashed by its name."""
    import shutil

    from safetensors.torch import load_file, save_file

    from fgpo_tasks import models
    from fgpo_tasks.dpo import refcache
    from fgpo_tasks.errors import FgpoError

    ref = tmp_path / "ref"
    shutil.copytree(models.pretrained_path("tiny-llama"), ref)
    before = refcache.model_fingerprint(str(ref), tmp_path / "cache")
    weights = next(ref.glob("*.safetensors"))
    tensors = {k: v + 1 for k, v in load_file(str(weights)).items()}
    save_file(tensors, str(weights), metadata={"format": "pt"})
    assert refcache.model_fingerprint(str(ref), tmp_path / "cache") != before
    with pytest.raises(FgpoError, match="no local copy"):  # offline, not cached: no name-only key
        refcache.model_fingerprint("nobody/no-such-model", tmp_path / "cache")
