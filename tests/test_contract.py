"""The data contract: ids, round trips through Parquet, manifests, atomic writes."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from fgpo_tasks import contract
from fgpo_tasks.errors import FgpoError
from fgpo_tasks.storage import atomic_dir


def _rows():
    return [
        contract.make_pair(prompt="What is 2 plus 2?", chosen="The answer is 4.", rejected="The answer is 5.",
                           aspect="correctness", source="test:a.jsonl", batch_id="b1",
                           ratings_chosen={"correctness": 1.0, "politeness": 0.0},
                           ratings_rejected={"correctness": 0.0, "politeness": 2.0}, source_line=1),
        contract.make_pair(prompt=[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
                                   {"role": "user", "content": "bye?"}],
                           chosen="Bye!", rejected="No.", aspect="politeness", source="test:b.jsonl",
                           batch_id="b2", source_line=7),
    ]


def test_pair_id_is_stable_and_depends_on_every_part():
    a = contract.pair_id("p", "c", "r", "x")
    assert a == contract.pair_id("p", "c", "r", "x")
    assert len({a, contract.pair_id("p", "c", "r", "y"), contract.pair_id("p", "r", "c", "x"),
                contract.pair_id("pc", "", "r", "x")}) == 4


def test_conversation_prompt_is_rendered_and_kept():
    row = _rows()[1]
    assert row["prompt_messages"][2] == {"role": "user", "content": "bye?"}
    assert "assistant: hello" in row["prompt"]
    lone = contract.make_pair(prompt=[{"role": "user", "content": "hi"}], chosen="a", rejected="b",
                              aspect="x", source="s", batch_id="b")
    assert lone["prompt"] == "hi"
    assert lone["pair_id"] != contract.make_pair(prompt="hi", chosen="a", rejected="b", aspect="x",
                                                 source="s", batch_id="b")["pair_id"]


def test_round_trip_keeps_every_column(tmp_path, created_at):
    rows = _rows()
    manifest = contract.write_pairs(rows, tmp_path / "d", stage="test", config={"k": 1}, created_at=created_at)
    back = contract.read_pairs(tmp_path / "d")
    assert list(back.columns) == contract.COLUMNS
    assert back.to_dict(orient="records") == pd.DataFrame(rows)[contract.COLUMNS].to_dict(orient="records")
    assert manifest["row_counts"] == {"total": 2, "per_aspect": {"correctness": 1, "politeness": 1}}
    assert manifest["created_at"] == created_at
    assert manifest["rating_aspects"] == ["correctness", "politeness"]
    on_disk = json.loads((tmp_path / "d" / contract.MANIFEST_FILE).read_text())
    assert on_disk["fingerprint"] == contract.content_fingerprint(back) == manifest["fingerprint"]


def test_fingerprint_ignores_row_order_but_not_content():
    df = contract.frame(_rows())
    assert contract.content_fingerprint(df) == contract.content_fingerprint(df.iloc[::-1])
    changed = df.copy()
    changed.loc[0, "batch_id"] = "b9"
    assert contract.content_fingerprint(changed) != contract.content_fingerprint(df)


def test_read_of_a_non_data_dir_names_it(tmp_path):
    with pytest.raises(FgpoError, match="not an fgpo data directory"):
        contract.read_pairs(tmp_path)


def test_atomic_dir_leaves_nothing_on_failure_and_replaces_on_success(tmp_path):
    out = tmp_path / "out"
    with atomic_dir(out) as d:
        (d / "x").write_text("1")
    with pytest.raises(RuntimeError):
        with atomic_dir(out) as d:
            (d / "x").write_text("half")
            raise RuntimeError("killed")
    assert (out / "x").read_text() == "1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_fingerprint_is_the_same_for_an_arrow_table_in_any_layout(tmp_path, created_at):
    import pyarrow as pa

    rows = _rows() * 3
    for i, r in enumerate(rows):
        rows[i] = {**r, "source_line": i}
    manifest = contract.write_pairs(rows, tmp_path / "d", stage="test", config={}, created_at=created_at)
    table = contract.read_pair_table(tmp_path / "d")  # Parquet renames the list item: same content
    chunked = pa.concat_tables([table.slice(0, 2), table.slice(2)])
    assert contract.content_fingerprint(chunked) == contract.content_fingerprint(table.take([5, 3, 1, 0, 2, 4]))
    assert contract.content_fingerprint(table) == manifest["fingerprint"] == contract.data_fingerprint(tmp_path / "d")
    assert contract.content_fingerprint(table.slice(1)) != manifest["fingerprint"]


def test_stages_take_an_input_fingerprint_from_its_manifest_and_hash_only_what_they_write(tmp_path, created_at,
                                                                                        monkeypatch):
    from fgpo_tasks import holdout

    rows = [{**r, "source_line": i, "prompt": f"{r['prompt']} #{i}"} for i, r in enumerate(_rows() * 4)]
    manifest = contract.write_pairs(rows, tmp_path / "d", stage="test", config={}, created_at=created_at)
    hashed, real = [], contract.content_fingerprint
    monkeypatch.setattr(contract, "content_fingerprint", lambda t: hashed.append(len(t)) or real(t))
    out = holdout.write_split(tmp_path / "d", tmp_path / "split", holdout.HoldoutConfig(fraction=0.5), created_at)
    # three parts written and hashed once each; the input's whole table is never hashed again
    assert sorted(hashed) == sorted(out[f"n_{p}"] for p in holdout.PARTS) and len(rows) not in hashed
    for part in holdout.PARTS:
        assert contract.read_manifest(out[part])["inputs"][0]["fingerprint"] == manifest["fingerprint"]
