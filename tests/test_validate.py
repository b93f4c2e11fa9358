"""The validation stage: every defect class is quarantined with its reason, nothing is lost."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st

from fgpo_tasks import contract
from fgpo_tasks.cli import main as cli_main
from fgpo_tasks.errors import ConfigError, FgpoError
from fgpo_tasks.validate import (QUARANTINE_FILE, RESULT_FILE, ROW_SUITE, SUMMARY_FILE,
                                 ValidateConfig, ValidationFailed, run_validate)

ASPECTS = ["helpfulness", "coherence"]
SOURCE = "test:pairs.jsonl"


def clean_rows(n: int = 40) -> list[dict]:
    """``n`` valid pairs, alternating aspects, line i+1 of SOURCE."""
    return [contract.make_pair(
        prompt=f"question {i}?", chosen=f"a good answer {i}", rejected=f"a poor answer {i}",
        aspect=ASPECTS[i % 2], source=SOURCE, batch_id="b1",
        ratings_chosen={"helpfulness": 3.0, "coherence": 4.0},
        ratings_rejected={"helpfulness": 1.0, "coherence": 2.0}, source_line=i + 1)
        for i in range(n)]


def config(**kw) -> ValidateConfig:
    defaults = dict(aspects=ASPECTS, min_pairs_per_aspect=5, max_chars=100, data_docs=False)
    return ValidateConfig(**(defaults | kw))


def write_input(rows: list[dict], path: Path) -> Path:
    contract.write_pairs(pd.DataFrame(rows), path, stage="ingest", config={}, created_at="2026-01-01")
    return path


def quarantine(out: Path) -> pd.DataFrame:
    return pd.read_parquet(out / QUARANTINE_FILE)


# Each defect: how to break a row, the reason a user reads, the expectation that caught it.
DEFECTS = {
    "empty_prompt": (lambda r: r.update(prompt=""), "prompt is empty or whitespace",
                     "expect_column_values_to_match_regex(prompt)"),
    "blank_chosen": (lambda r: r.update(chosen="  \n"), "chosen is empty or whitespace",
                     "expect_column_values_to_match_regex(chosen)"),
    "missing_batch": (lambda r: r.update(batch_id=None), "batch_id is missing",
                      "expect_column_values_to_not_be_null(batch_id)"),
    "same_texts": (lambda r: r.update(rejected=r["chosen"]), "chosen and rejected are the same text",
                   "expect_column_values_to_be_in_set(_chosen_equals_rejected)"),
    "unknown_aspect": (lambda r: r.update(aspect="humour"), "aspect not in the configured aspects",
                       "expect_column_values_to_be_in_set(aspect)"),
    "rating_high": (lambda r: r.update(ratings_chosen={"helpfulness": 7.5}),
                    "ratings_chosen[helpfulness] outside [0.0, 5.0]",
                    "expect_column_values_to_be_between(ratings_chosen[helpfulness])"),
    "rating_low": (lambda r: r.update(ratings_rejected={"coherence": -1.0}),
                   "ratings_rejected[coherence] outside [0.0, 5.0]",
                   "expect_column_values_to_be_between(ratings_rejected[coherence])"),
    "too_long": (lambda r: r.update(rejected="x" * 101), "rejected length outside [1, 100] characters",
                 "expect_column_value_lengths_to_be_between(rejected)"),
}


def test_each_defect_is_quarantined_with_its_reason(tmp_path, created_at):
    rows = clean_rows(40)
    broken = {}  # input row -> defect name
    for i, (name, (mutate, _, _)) in enumerate(DEFECTS.items()):
        mutate(rows[2 * i])
        broken[2 * i] = name
    rows.append(dict(rows[21]))  # an exact repeat of a clean row: the later copy goes
    broken[len(rows) - 1] = "duplicate"
    out = tmp_path / "out"

    metrics = run_validate(write_input(rows, tmp_path / "in"), out,
                           config(max_quarantine_fraction=0.5), created_at)

    q = quarantine(out).set_index("input_row")
    assert sorted(q.index) == sorted(broken)
    for row, name in broken.items():
        if name == "duplicate":
            assert q.loc[row, "reason"] == "pair_id repeats an earlier row (the first is kept)"
            continue
        _, reason, expectation = DEFECTS[name]
        assert q.loc[row, "reason"].startswith(reason), (name, q.loc[row, "reason"])
        assert q.loc[row, "expectation"] == expectation, name
        assert (q.loc[row, "source"], q.loc[row, "source_line"]) == (SOURCE, row + 1)
    accepted = contract.read_pairs(out)
    assert len(accepted) + len(q) == len(rows) == metrics["rows_in"]
    assert rows[21]["pair_id"] in set(accepted["pair_id"])  # the first occurrence is kept
    assert set(accepted.columns) >= set(contract.COLUMNS)


def test_manifest_and_reports_describe_the_run(tmp_path, created_at):
    rows = clean_rows(30)
    rows[0]["prompt"] = ""
    rows[1]["aspect"] = "humour"
    rows[3]["aspect"] = "humour"
    src = write_input(rows, tmp_path / "in")
    out = tmp_path / "out"

    run_validate(src, out, config(data_docs=True), created_at)

    manifest = contract.read_manifest(out)
    v = manifest["validation"]
    assert manifest["stage"] == "validate" and manifest["created_at"] == created_at
    assert (v["rows_in"], v["rows_accepted"], v["rows_quarantined"]) == (30, 27, 3)
    assert v["per_reason"] == {"aspect_unknown": 2, "prompt_empty": 1}
    assert v["per_aspect"]["helpfulness"] == {"in": 15, "accepted": 14, "quarantined": 1}
    assert ROW_SUITE in v["suites"]
    assert manifest["inputs"][0]["fingerprint"] == contract.read_manifest(src)["fingerprint"]
    assert manifest["row_counts"]["total"] == 27
    report = json.loads((out / RESULT_FILE).read_text())
    by_check = {e["check"]: e for e in report["expectations"]}
    assert by_check["aspect_unknown"]["success"] is False
    assert by_check["aspect_unknown"]["unexpected_count"] == 2
    assert by_check["chosen_equals_rejected"] == by_check["chosen_equals_rejected"] | {
        "success": True, "unexpected_count": 0}
    assert all("success" in e for e in report["expectations"])
    assert (out / "data_docs" / "index.html").is_file()


def test_too_few_pairs_for_an_aspect_fails(tmp_path, created_at):
    rows = clean_rows(30)
    for r in rows[:12]:
        if r["aspect"] == "coherence":
            r["rejected"] = r["chosen"]  # 6 of the 15 coherence pairs quarantined: 9 remain
    out = tmp_path / "out"
    with pytest.raises(ValidationFailed) as err:
        run_validate(write_input(rows, tmp_path / "in"), out, config(min_pairs_per_aspect=10,
                                                                     max_quarantine_fraction=0.5),
                     created_at)
    assert "min_pairs_per_aspect=10" in str(err.value) and "'coherence': 9" in str(err.value)
    assert not (out / contract.PAIRS_FILE).exists()


def test_a_configured_aspect_with_no_pairs_fails(tmp_path, created_at):
    with pytest.raises(ValidationFailed, match="'verbosity': 0"):
        run_validate(write_input(clean_rows(20), tmp_path / "in"), tmp_path / "out",
                     config(aspects=ASPECTS + ["verbosity"]), created_at)


def test_threshold_failure_names_reason_and_origin_and_writes_no_pairs(tmp_path, created_at):
    rows = clean_rows(20)
    for r in rows[:6]:
        r["prompt"] = " "
    out = tmp_path / "out"
    contract.write_pairs(pd.DataFrame(clean_rows(4)), out, stage="validate", config={},
                         created_at=created_at)  # an earlier passing result must not survive

    with pytest.raises(ValidationFailed) as err:
        run_validate(write_input(rows, tmp_path / "in"), out, config(max_quarantine_fraction=0.25),
                     created_at)

    message = str(err.value)
    assert "6 of 20 rows quarantined" in message and "max_quarantine_fraction=0.25" in message
    assert f"prompt is empty or whitespace  (e.g. {SOURCE}:1)" in message
    assert err.value.summary["status"] == "failed"
    assert len(quarantine(out)) == 6 and (out / RESULT_FILE).is_file() and (out / SUMMARY_FILE).is_file()
    with pytest.raises(FgpoError, match="no pairs.parquet"):
        contract.read_pairs(out)


def test_missing_required_column_fails(tmp_path, created_at):
    import pyarrow as pa
    import pyarrow.parquet as pq

    df = contract.frame(clean_rows(20)).drop(columns=["batch_id", "ratings_chosen", "ratings_rejected"])
    (tmp_path / "in").mkdir()
    pq.write_table(pa.Table.from_pandas(df, preserve_index=False), tmp_path / "in" / contract.PAIRS_FILE)
    with pytest.raises(ValidationFailed, match=r"required columns are missing: \['batch_id'\]"):
        run_validate(tmp_path / "in", tmp_path / "out", config(), created_at)


def test_empty_input_fails(tmp_path, created_at):
    src = tmp_path / "in"
    contract.write_pairs(contract.frame([]), src, stage="ingest", config={}, created_at=created_at)
    with pytest.raises(ValidationFailed, match="no pair was accepted"):
        run_validate(src, tmp_path / "out", config(aspects=[], min_pairs_per_aspect=0), created_at)


def test_no_aspects_configured_accepts_those_present(tmp_path, created_at):
    rows = clean_rows(20)
    for r in rows[:10]:
        r["aspect"] = "humour"
    metrics = run_validate(write_input(rows, tmp_path / "in"), tmp_path / "out",
                           config(aspects=[]), created_at)
    assert metrics["rows_quarantined"] == 0
    assert contract.read_manifest(tmp_path / "out")["row_counts"]["per_aspect"] == {
        "coherence": 5, "helpfulness": 5, "humour": 10}


@pytest.mark.parametrize("kw, quoted", [
    (dict(rating_min=3.0, rating_max=1.0), "rating_min (3.0) must be <= rating_max (1.0)"),
    (dict(max_quarantine_fraction=1.5), "got 1.5"),
    (dict(min_chars=10, max_chars=5), "max_chars (5)"),
    (dict(aspects=["a", "a"]), "['a', 'a']"),
    (dict(min_pairs_per_aspect=-1), "got -1"),
])
def test_config_checks_quote_the_bad_value(kw, quoted):
    with pytest.raises(ConfigError) as err:
        ValidateConfig(**kw)
    assert quoted in str(err.value)


# --- property: whatever is corrupted, nothing is lost and every corrupted row is caught --------

# No shrink phase: each example is a GX run (~0.3 s), and shrinking a failure took minutes.
@settings(max_examples=12, deadline=None, phases=[Phase.explicit, Phase.reuse, Phase.generate],
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(corruptions=st.dictionaries(st.integers(0, 29), st.lists(
    st.sampled_from(sorted(DEFECTS) + ["duplicate"]), min_size=1, max_size=3), max_size=12))
@example(corruptions={26: ["duplicate"], 25: ["rating_high", "duplicate"]})  # copy of a row corrupted later
def test_property_rows_are_conserved_and_corruptions_caught(tmp_path_factory, created_at, corruptions):
    rows = clean_rows(30)
    corrupted = set()
    for i, kinds in sorted(corruptions.items()):  # in row order: a copy must see its source's final form
        for kind in kinds:
            if kind == "duplicate":
                if i == 0:
                    continue
                rows[i] = dict(rows[i - 1])  # the earlier row survives unless corrupted itself
            else:
                DEFECTS[kind][0](rows[i])
            corrupted.add(i)
    tmp = tmp_path_factory.mktemp("prop")
    out = tmp / "out"
    try:
        run_validate(write_input(rows, tmp / "in"), out, config(min_pairs_per_aspect=0,
                                                                max_quarantine_fraction=1.0), created_at)
        accepted = contract.read_pairs(out)
    except ValidationFailed:  # all rows corrupted: nothing accepted
        accepted = contract.frame([])
    q = quarantine(out)
    assert len(accepted) + len(q) == len(rows)
    assert set(q["input_row"]) == corrupted  # clean rows pass, corrupted ones never do


# --- CLI ------------------------------------------------------------------------------------------

def test_cli_success_and_failure(tmp_path, capsys):
    rows = clean_rows(20)
    src = write_input(rows, tmp_path / "in")
    cfg = tmp_path / "validate.yaml"
    cfg.write_text("validate:\n  aspects: [helpfulness, coherence]\n  min_pairs_per_aspect: 5\n"
                   "  data_docs: false\n")

    assert cli_main(["--created-at", "2026-01-01T00:00:00+00:00", "validate", "--data", str(src),
                     "--out", str(tmp_path / "ok"), "--config", str(cfg)]) == 0
    assert json.loads(capsys.readouterr().out)["rows_accepted"] == 20

    for r in rows[:10]:
        r["chosen"] = r["rejected"]
    bad = write_input(rows, tmp_path / "bad")
    assert cli_main(["validate", "--data", str(bad), "--out", str(tmp_path / "out"),
                     "--config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fgpo validate: error: validation failed: 10 of 20 rows quarantined")
    assert f"chosen and rejected are the same text  (e.g. {SOURCE}:1)" in err
    assert "Traceback" not in err


def test_cli_rejects_bad_config(tmp_path, capsys):
    cfg = tmp_path / "validate.yaml"
    cfg.write_text("rating_max: -1\n")
    assert cli_main(["validate", "--data", str(tmp_path), "--out", str(tmp_path / "o"),
                     "--config", str(cfg)]) == 2
    assert "rating_min (0.0) must be <= rating_max (-1" in capsys.readouterr().err


# --- real data ------------------------------------------------------------------------------------

def test_real_helpsteer2_pairs_validate(shared_data, tmp_path, created_at):
    folder = shared_data / "helpsteer2-aspects"
    src = tmp_path / "in"
    try:
        from fgpo_tasks.ingest import IngestConfig, run_ingest
    except ImportError:
        run_ingest = None
    if run_ingest is not None:
        run_ingest([str(folder)], ["helpsteer2-aspects"], src, IngestConfig(), created_at)
    else:
        rows = []
        for path in sorted(folder.glob("*_preference_test.jsonl")):
            aspect = path.name.split("_")[0]
            for line, text in enumerate(path.open(encoding="utf-8"), 1):  # not splitlines: U+2028
                d = json.loads(text)
                w = d["better_response_id"]
                rows.append(contract.make_pair(
                    prompt=d["prompt"], chosen=d[f"response_{w}"], rejected=d[f"response_{1 - w}"],
                    aspect=aspect, source=f"helpsteer2:{path.name}", batch_id="helpsteer2",
                    ratings_chosen={aspect: d[f"{aspect}_score_{w}"]},
                    ratings_rejected={aspect: d[f"{aspect}_score_{1 - w}"]}, source_line=line))
        write_input(rows, src)
    n_in = len(contract.read_pairs(src))

    metrics = run_validate(src, tmp_path / "out", ValidateConfig(
        aspects=["helpfulness", "correctness", "coherence", "complexity", "verbosity"],
        data_docs=False), created_at)

    assert n_in > 4000 and metrics["rows_in"] == n_in
    assert metrics["rows_accepted"] + metrics["rows_quarantined"] == n_in
    assert metrics["quarantine_fraction"] < 0.01  # real HelpSteer2 pairs are clean
    assert len(contract.read_pairs(tmp_path / "out")) == metrics["rows_accepted"]


# --- contradictory labels -------------------------------------------------------------------------

def _vote(prompt: str, winner: str, loser: str, aspect: str, line: int, batch: str = "b1") -> dict:
    return contract.make_pair(prompt=prompt, chosen=winner, rejected=loser, aspect=aspect,
                              source=f"test:{batch}.jsonl", batch_id=batch, source_line=line)


def test_contradictory_labels_majority_kept_ties_dropped(tmp_path, created_at):
    rows = clean_rows(20)
    votes = [
        # tie: one row each way -> both quarantined
        _vote("tie?", "A", "B", "helpfulness", 101, "ann1"), _vote("tie?", "B", "A", "helpfulness", 102, "ann2"),
        # 2 against 1 -> the majority direction stays, the minority row goes
        _vote("maj?", "C", "D", "coherence", 103, "ann1"), _vote("maj?", "C", "D", "coherence", 104, "ann3"),
        _vote("maj?", "D", "C", "coherence", 105, "ann2"),
        # the same responses, opposite ways on DIFFERENT aspects: a fine-grained conflict, kept
        _vote("fine?", "E", "F", "helpfulness", 106), _vote("fine?", "F", "E", "coherence", 107),
        # the same responses, opposite ways, to DIFFERENT prompts: kept
        _vote("p1?", "G", "H", "helpfulness", 108), _vote("p2?", "H", "G", "helpfulness", 109),
    ]
    src = write_input(rows + votes, tmp_path / "in")
    metrics = run_validate(src, tmp_path / "out", config(), created_at)
    n = len(rows) + len(votes)
    assert metrics["rows_in"] == n == metrics["rows_accepted"] + metrics["rows_quarantined"]
    q = quarantine(tmp_path / "out")
    contra = q[q["checks"].str.contains("contradictory_labels")]
    assert sorted(contra["source_line"]) == [101, 102, 105]
    assert contra["reason"].str.startswith("contradictory_labels").all()
    # the second majority row repeats the first's pair_id: kept once, as any duplicate
    assert q.loc[q["source_line"] == 104, "checks"].tolist() == ["pair_id_duplicate"]
    accepted = contract.read_pairs(tmp_path / "out")
    assert set(accepted["source_line"]) >= {103, 106, 107, 108, 109}
    summary = json.loads((tmp_path / "out" / "validation_summary.json").read_text())
    assert summary["per_reason"]["contradictory_labels"] == 3


def test_contradictory_labels_see_conversations(tmp_path, created_at):
    conv = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"},
            {"role": "user", "content": "and?"}]
    rows = clean_rows(20) + [_vote(conv, "A", "B", "helpfulness", 201), _vote(conv, "B", "A", "helpfulness", 202),
                             _vote(conv[:1], "B", "A", "helpfulness", 203)]  # another prompt
    src = write_input(rows, tmp_path / "in")
    run_validate(src, tmp_path / "out", config(), created_at)
    q = quarantine(tmp_path / "out")
    assert sorted(q.loc[q["checks"].str.contains("contradictory"), "source_line"]) == [201, 202]


def test_real_helpsteer2_files_have_no_same_aspect_contradictions(shared_data, tmp_path, created_at):
    """Measured: within one aspect's file no prompt and response pair is labelled both ways (0
    rows); 170 pairs are labelled differently on DIFFERENT aspects, which is kept."""
    from fgpo_tasks.ingest import IngestConfig, run_ingest

    run_ingest([str(shared_data / "helpsteer2-aspects")], ["helpsteer2-aspects"], tmp_path / "in",
               IngestConfig(), created_at)
    raw = contract.read_pairs(tmp_path / "in")
    from fgpo_tasks.validate import contradictory_labels

    assert int(contradictory_labels(raw).sum()) == 0
    key = raw.apply(lambda r: (r["prompt"], frozenset((r["chosen"], r["rejected"]))), axis=1)
    both = raw.assign(key=key).groupby("key")["chosen"].nunique()
    assert int((both > 1).sum()) == 170  # cross-aspect disagreements: not contradictions


# --- relative paths -------------------------------------------------------------------------------

def test_cli_relative_paths_with_data_docs(tmp_path, capsys, monkeypatch):
    write_input(clean_rows(20), tmp_path / "ing")
    monkeypatch.chdir(tmp_path)
    assert cli_main(["validate", "--data", "ing", "--out", "val"]) == 0, capsys.readouterr().err
    assert (tmp_path / "val" / "data_docs" / "index.html").is_file()
    assert (tmp_path / "val" / "pairs.parquet").is_file()
    assert not list(tmp_path.glob(".val.*"))
