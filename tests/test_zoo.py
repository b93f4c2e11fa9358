"""The model zoo: two processes asking for the same model built from code get one build and the same
weights; a failed or half-finished build never leaves a model under the final name."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from fgpo_tasks import zoo

REPO = Path(__file__).resolve().parent.parent

CHILD = r"""
import sys, time
from fgpo_tasks import models, zoo
real = zoo.byte_tokenizer
def slow():
    with open(sys.argv[1], "a") as f:
        f.write("built\n")
    time.sleep(1.5)  # the other process arrives while this one builds
    return real()
zoo.byte_tokenizer = slow
print(models.pretrained_path("tiny-llama"))
"""


def test_two_processes_build_the_same_tiny_model_once(tmp_path):
    env = {"FGPO_MODEL_CACHE": str(tmp_path / "cache"), "FGPO_WORK_DIR": str(tmp_path / "work"),
           "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}
    log = tmp_path / "builds.log"
    procs = [subprocess.Popen([sys.executable, "-c", CHILD, str(log)], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [e for _, e in outs]
    paths = {o.strip().splitlines()[-1] for o, _ in outs}
    assert paths == {str(tmp_path / "cache" / "tiny-llama")}
    assert log.read_text().count("built") == 1  # the second process waited and reused the first's
    folder = tmp_path / "cache" / "tiny-llama"
    assert (folder / "config.json").is_file() and (folder / "model.safetensors").stat().st_size > 1000
    leftovers = sorted(p.name for p in (tmp_path / "cache").iterdir() if p.name != "tiny-llama")
    assert leftovers == [".tiny-llama.lock"]  # no temporary build folder is left behind


def test_a_failed_build_leaves_nothing_and_a_partial_folder_is_replaced(tmp_path):
    out = tmp_path / "m"

    def broken(tmp: Path) -> None:
        (tmp / "config.json").write_text("{}")
        raise RuntimeError("killed mid-build")

    with pytest.raises(RuntimeError):
        zoo.build_once(out, broken)
    assert not out.exists() and [p.name for p in tmp_path.iterdir()] == [".m.lock"]
    out.mkdir()  # a half-written folder from an older build (no config.json)
    (out / "model.safetensors").write_text("partial")
    zoo.build_tiny("tiny-llama", out)
    assert (out / "config.json").is_file() and (out / "model.safetensors").stat().st_size > 1000


def test_models_and_sft_do_not_import_each_other():
    def imports(name: str) -> set[str]:
        tree = ast.parse((REPO / "fgpo_tasks" / f"{name}.py").read_text())
        found = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module:
                found |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
            elif isinstance(node, ast.Import):
                found |= {a.name for a in node.names}
        return found

    assert not {m for m in imports("models") if m.startswith("fgpo_tasks.sft")}
    assert not {m for m in imports("zoo") if m.startswith(("fgpo_tasks.sft", "fgpo_tasks.models"))}
    assert "fgpo_tasks.models" in {m.rsplit(".", 1)[0] for m in imports("sft")} | imports("sft")
