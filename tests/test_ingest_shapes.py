"""Every data-set family of docs/formats.md, on generated rows of exactly its public shape.

Each case writes rows shaped as the public data set ships them (field names, nesting, types,
file names), ingests them as the docs say, and checks pairs > 0 and rows in = accepted +
quarantined. The failure cases check the one-line error a user gets instead of an empty pool.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from fgpo_tasks import cli
from fgpo_tasks.contract import read_manifest, read_pairs
from fgpo_tasks.errors import ConfigError
from fgpo_tasks.ingest import IngestConfig, run_ingest
from fgpo_tasks.ingest.run import REPORT_FILE, IngestFailed

REPO = Path(__file__).resolve().parent.parent
CONFIGS = REPO / "configs" / "ingest"
ASPECTS5 = ["helpfulness", "correctness", "coherence", "complexity", "verbosity"]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def msgs(*turns: tuple[str, str]) -> list[dict]:
    return [{"role": r, "content": c} for r, c in turns]


# ---------------------------------------------------------------------------- the shapes

def helpsteer(d: Path) -> Path:
    """nvidia/HelpSteer: one rated response a row, five 0-4 integer ratings."""
    rows = [{"prompt": f"Question {p}?", "response": f"Answer {p}.{r}",
             **{a: (p + r * (i + 1)) % 5 for i, a in enumerate(ASPECTS5)}}
            for p in range(6) for r in range(3)]
    return write_jsonl(d / "helpsteer_train.jsonl", rows)


def helpsteer2_native(d: Path) -> Path:
    """nvidia/HelpSteer2: as HelpSteer, multi-turn prompts with <extra_id_1> turn markers."""
    rows = [{"prompt": f"Hi {p}\n<extra_id_1>Assistant\nHello!\n<extra_id_1>User\nTell me {p}",
             "response": f"Reply {p}.{r}", **{a: (p + r * (i + 2)) % 5 for i, a in enumerate(ASPECTS5)}}
            for p in range(6) for r in range(2)]
    return write_jsonl(d / "helpsteer2_train.jsonl", rows)


def helpsteer2_per_aspect(d: Path) -> Path:
    """HelpSteer2 per-aspect pairs: '<aspect>_preference_test.jsonl' with the aspect's scores."""
    for a in ("coherence", "verbosity"):
        rows = [{"prompt": f"P{i} {a}", "response_0": f"x{i}", "response_1": f"y{i}",
                 "better_response_id": i % 2, f"{a}_score_0": 1.0 + (i % 2) * 2, f"{a}_score_1": 2.5}
                for i in range(5)]
        write_jsonl(d / "hs2" / f"{a}_preference_test.jsonl", rows)
    return d / "hs2"


def label_only(d: Path) -> Path:
    """Per-aspect label files (Hummer-style; HelpSteer2 annotator files): no scores, the aspect
    only in the file name '<aspect>_eval.jsonl'."""
    for a in ("helpfulness", "safety"):
        rows = [{"prompt": f"P{i}", "response_0": f"{a} a{i}", "response_1": f"{a} b{i}",
                 "better_response_id": (i + len(a)) % 2} for i in range(4)]
        write_jsonl(d / "labels" / f"{a}_eval.jsonl", rows)
    return d / "labels"


def ultrafeedback_raw(d: Path) -> Path:
    """openbmb/UltraFeedback: four completions, each with four annotated aspects (text ratings,
    'N/A' allowed)."""
    def completion(i, k):
        ann = {a: {"Rating": str(1 + (i + k * (j + 1)) % 5), "Rationale": "because"}
               for j, a in enumerate(["helpfulness", "honesty", "instruction_following", "truthfulness"])}
        ann["helpfulness"]["Type"] = ["1", "2"]
        if k == 3:
            ann["honesty"]["Rating"] = "N/A"
        return {"model": f"m{k}", "principle": "helpfulness", "custom_system_prompt": "",
                "response": f"completion {i}.{k}", "annotations": ann,
                "critique": "ok", "overall_score": 5.0, "fine-grained_score": 3.5}
    rows = [{"source": "evol_instruct", "instruction": f"Instruction {i}", "models": ["m0", "m1"],
             "completions": [completion(i, k) for k in range(4)], "correct_answers": ["None"],
             "incorrect_answers": ["None"]} for i in range(4)]
    return write_jsonl(d / "ultrafeedback.jsonl", rows)


def ultrafeedback_binarized_h4(d: Path) -> Path:
    """HuggingFaceH4/ultrafeedback_binarized: message lists, score_chosen / score_rejected."""
    rows = [{"prompt": f"Q{i}", "prompt_id": f"{i:064x}",
             "chosen": msgs(("user", f"Q{i}"), ("assistant", f"good {i}")),
             "rejected": msgs(("user", f"Q{i}"), ("assistant", f"bad {i}")),
             "messages": msgs(("user", f"Q{i}"), ("assistant", f"good {i}")),
             "score_chosen": 8.0, "score_rejected": 5.5} for i in range(5)]
    return write_jsonl(d / "train_prefs.jsonl", rows)


def ultrafeedback_binarized_metadata(d: Path) -> Path:
    """UltraFeedback binarized with the ratings nested under metadata."""
    rows = [{"prompt": f"Q{i}", "chosen": msgs(("user", f"Q{i}"), ("assistant", f"good {i}")),
             "rejected": msgs(("user", f"Q{i}"), ("assistant", f"bad {i}")),
             "metadata": {"rating_chosen": 5.0, "rating_rejected": 2.0, "source": "sharegpt"}}
            for i in range(5)]
    return write_jsonl(d / "uf_binarized.jsonl", rows)


def pku_saferlhf(d: Path) -> Path:
    """PKU-Alignment/PKU-SafeRLHF: two responses, better_response_id and safer_response_id."""
    rows = [{"prompt": f"How do I {i}?", "response_0": f"safe {i}", "response_1": f"risky {i}",
             "prompt_source": "Alpaca3-70B", "response_0_source": "A", "response_1_source": "B",
             "is_response_0_safe": True, "is_response_1_safe": False,
             "response_0_harm_category": {}, "response_1_harm_category": {},
             "response_0_severity_level": 0, "response_1_severity_level": 2,
             "better_response_id": (i + 1) % 2, "safer_response_id": 0,
             "response_0_sha256": "x", "response_1_sha256": "y"} for i in range(6)]
    return write_jsonl(d / "pku_train.jsonl", rows)


def trl_standard(d: Path) -> Path:
    """TRL standard preference: prompt / chosen / rejected strings."""
    rows = [{"prompt": f"The sky is {i}", "chosen": " blue.", "rejected": f" green {i}."} for i in range(5)]
    return write_jsonl(d / "trl_standard.jsonl", rows)


def trl_conversational(d: Path) -> Path:
    """TRL conversational preference: prompt messages, chosen / rejected assistant messages."""
    rows = [{"prompt": msgs(("user", f"What color is the sky {i}?")),
             "chosen": msgs(("assistant", "Blue.")), "rejected": msgs(("assistant", f"Green {i}."))}
            for i in range(5)]
    return write_jsonl(d / "trl_conv.jsonl", rows)


def trl_conversational_implicit(d: Path) -> Path:
    """TRL conversational with an implicit prompt: the shared turns of chosen and rejected."""
    rows = [{"chosen": msgs(("user", f"Sky {i}?"), ("assistant", "Blue.")),
             "rejected": msgs(("user", f"Sky {i}?"), ("assistant", f"Green {i}."))} for i in range(5)]
    return write_jsonl(d / "trl_implicit.jsonl", rows)


def generic_csv(d: Path) -> Path:
    """Any CSV: named columns (configs/ingest/generic-csv.yaml)."""
    path = d / "annotations.csv"
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["question", "preferred", "other", "aspect"])
        for i in range(6):
            w.writerow([f"q{i}", f"good, {i}", f"bad {i}", ["clarity", "tone"][i % 2]])
    return path


# (id, builder, --format, config file (or None), IngestConfig fields / --set, expected aspects)
CASES = [
    ("helpsteer", helpsteer, "rated-responses", "helpsteer-ratings.yaml", {}, set(ASPECTS5)),
    ("helpsteer2-native", helpsteer2_native, "rated-responses", "helpsteer-ratings.yaml", {}, None),
    ("helpsteer2-per-aspect", helpsteer2_per_aspect, "helpsteer2-aspects", "helpsteer2-aspects.yaml",
     {}, {"coherence", "verbosity"}),
    ("label-only-helpsteer2-aspects", label_only, "helpsteer2-aspects", None, {},
     {"helpfulness", "safety"}),
    ("label-only-generic", label_only, "generic", "label-only.yaml", {}, {"helpfulness", "safety"}),
    ("ultrafeedback-raw", ultrafeedback_raw, "ultrafeedback", "ultrafeedback.yaml", {}, None),
    ("ultrafeedback-binarized-h4", ultrafeedback_binarized_h4, "ultrafeedback", None, {}, {"overall"}),
    ("ultrafeedback-binarized-h4-trl", ultrafeedback_binarized_h4, "trl", "trl.yaml", {}, {"overall"}),
    ("ultrafeedback-binarized-metadata", ultrafeedback_binarized_metadata, "ultrafeedback", None, {},
     {"overall"}),
    ("ultrafeedback-binarized-metadata-trl", ultrafeedback_binarized_metadata, "trl", "trl.yaml",
     {"chosen_rating_columns": {"overall": "metadata.rating_chosen"},
      "rejected_rating_columns": {"overall": "metadata.rating_rejected"}}, {"overall"}),
    ("pku-saferlhf", pku_saferlhf, "pku-saferlhf", "pku-saferlhf.yaml", {}, {"helpful", "safe"}),
    ("trl-standard", trl_standard, "trl", None, {"aspect": "overall"}, {"overall"}),
    ("trl-conversational", trl_conversational, "trl", None, {"aspect": "overall"}, {"overall"}),
    ("trl-conversational-implicit", trl_conversational_implicit, "trl", None, {"aspect": "overall"},
     {"overall"}),
    ("generic-csv", generic_csv, "generic", "generic-csv.yaml", {}, {"clarity", "tone"}),
]


def _config(config_file: str | None, extra: dict) -> IngestConfig:
    from fgpo_tasks.config import read_yaml

    values = {}
    if config_file:
        values = read_yaml(CONFIGS / config_file)
        values = values.get("ingest", values)
    values.update(extra)
    return IngestConfig(**values)


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_each_documented_shape_gives_pairs(case, tmp_path, created_at):
    _, build, fmt, config_file, extra, aspects = case
    src = build(tmp_path)
    res = run_ingest([str(src)], [fmt], tmp_path / "out", _config(config_file, extra), created_at)
    assert res["pairs"] > 0
    assert res["rows_in"] == res["rows_accepted"] + res["rows_quarantined"]
    assert res["rows_quarantined"] == 0
    df = read_pairs(tmp_path / "out")
    assert len(df) == res["pairs"] and (df["chosen"] != df["rejected"]).all()
    if aspects is not None:  # the documented aspects (rated sets pair each on one of them)
        assert set(df["aspect"]) <= aspects and len(set(df["aspect"])) >= min(2, len(aspects))
    manifest = read_manifest(tmp_path / "out")
    assert manifest["ingest"]["rows_in"] == res["rows_in"]


def test_each_documented_shape_is_in_the_formats_doc():
    doc = (REPO / "docs" / "formats.md").read_text()
    for case_id, *_ in CASES:
        assert f"`{case_id}`" in doc, case_id


def test_label_only_pairs_follow_the_label(tmp_path, created_at):
    src = label_only(tmp_path)
    for fmt, cfg in (("helpsteer2-aspects", {}),
                     ("generic", {"aspect_from_file_name": True, "label_column": "better_response_id"})):
        out = tmp_path / fmt
        run_ingest([str(src)], [fmt], out, IngestConfig(**cfg), created_at)
        df = read_pairs(out).sort_values(["aspect", "source_line"])
        for a in ("helpfulness", "safety"):
            sub = df[df["aspect"] == a]
            lines = (src / f"{a}_eval.jsonl").read_text().splitlines()
            for _, p in sub.iterrows():
                raw = json.loads(lines[p["source_line"] - 1])
                b = raw["better_response_id"]
                assert (p["chosen"], p["rejected"]) == (raw[f"response_{b}"], raw[f"response_{1 - b}"])
                assert p["ratings_chosen"] is None
        if fmt == "helpsteer2-aspects":
            first = df
        else:  # both formats give the same pairs
            assert sorted(df["pair_id"]) == sorted(first["pair_id"])


def test_label_column_may_name_the_response_column(tmp_path, created_at):
    rows = [{"q": "p1", "a": "x", "b": "y", "winner": "b"}, {"q": "p2", "a": "x", "b": "y", "winner": "a"}]
    src = write_jsonl(tmp_path / "tone_batch1.jsonl", rows)
    cfg = IngestConfig(aspect_from_file_name=True, label_column="winner", response_columns=["a", "b"],
                       columns={"prompt": "q"})
    run_ingest([str(src)], ["generic"], tmp_path / "out", cfg, created_at)
    df = read_pairs(tmp_path / "out")
    assert df[["prompt", "chosen", "aspect"]].values.tolist() == [["p1", "y", "tone"], ["p2", "x", "tone"]]


def test_helpsteer2_aspect_from_file_name_rules(tmp_path, created_at):
    row = {"prompt": "p", "response_0": "a", "response_1": "b", "better_response_id": 0}
    # aspect_map names an aspect that holds '_' (the name rule takes the text before the first '_')
    src = write_jsonl(tmp_path / "a" / "instruction_following_eval.jsonl", [row])
    run_ingest([str(src)], ["helpsteer2-aspects"], tmp_path / "o1",
               IngestConfig(aspect_map={"instruction_following_eval": "instruction_following"}), created_at)
    assert read_pairs(tmp_path / "o1")["aspect"].tolist() == ["instruction_following"]
    # --aspect wins over the file name
    run_ingest([str(src)], ["helpsteer2-aspects"], tmp_path / "o2", IngestConfig(aspect="x"), created_at)
    assert read_pairs(tmp_path / "o2")["aspect"].tolist() == ["x"]
    # a name without '_' and no score fields: the row cannot say its aspect -> a clear failure
    src = write_jsonl(tmp_path / "b" / "train.jsonl", [row])
    with pytest.raises(IngestFailed, match=r"unknown_aspect.*try: name the files '<aspect>_\*.jsonl'"):
        run_ingest([str(src)], ["helpsteer2-aspects"], tmp_path / "o3", IngestConfig(), created_at)
    # a name without '_': the score fields say the aspect
    src = write_jsonl(tmp_path / "c" / "train.jsonl", [{**row, "coherence_score_0": 3, "coherence_score_1": 1}])
    run_ingest([str(src)], ["helpsteer2-aspects"], tmp_path / "o4", IngestConfig(), created_at)
    assert read_pairs(tmp_path / "o4")["aspect"].tolist() == ["coherence"]
    # the file name and the score fields disagree: quarantined, never guessed
    src = write_jsonl(tmp_path / "d" / "train_v2.jsonl", [{**row, "coherence_score_0": 3, "coherence_score_1": 1}])
    with pytest.raises(IngestFailed, match="aspect_mismatch"):
        run_ingest([str(src)], ["helpsteer2-aspects"], tmp_path / "o5", IngestConfig(), created_at)


def test_dotted_paths_reach_nested_fields(tmp_path, created_at):
    rows = [{"data": {"question": f"q{i}", "answers": {"good": f"g{i}", "bad": f"b{i}"}},
             "meta": {"aspect": "tone", "scores": {"good": 4, "bad": 1}}} for i in range(3)]
    src = write_jsonl(tmp_path / "nested.jsonl", rows)
    cfg = IngestConfig(columns={"prompt": "data.question", "chosen": "data.answers.good",
                                "rejected": "data.answers.bad"}, aspect_column="meta.aspect",
                       chosen_rating_columns={"tone": "meta.scores.good"},
                       rejected_rating_columns={"tone": "meta.scores.bad"})
    run_ingest([str(src)], ["generic"], tmp_path / "out", cfg, created_at)
    df = read_pairs(tmp_path / "out")
    assert df[["prompt", "chosen", "rejected", "aspect"]].values.tolist()[0] == ["q0", "g0", "b0", "tone"]
    assert df["ratings_chosen"].tolist()[0] == {"tone": 4.0}
    # a missing nested field is quarantined with its dotted name
    write_jsonl(src, rows + [{"data": {"question": "q9", "answers": {"good": "g9"}}, "meta": rows[0]["meta"]}])
    run_ingest([str(src)], ["generic"], tmp_path / "out2", cfg, created_at)
    q = pd.read_parquet(tmp_path / "out2" / "quarantine.parquet")
    assert q[["line", "field", "kind"]].values.tolist() == [[4, "data.answers.bad", "missing_field"]]


# ---------------------------------------------------------------------------- failures

def _cli(argv: list[str], capsys) -> tuple[int, str, str]:
    code = cli.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_shipped_trl_config_on_nested_ratings_fails_in_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ultrafeedback_binarized_metadata(tmp_path)
    code, out, err = _cli(["ingest", "--source", "uf_binarized.jsonl", "--format", "trl", "--config",
                           str(CONFIGS / "trl.yaml"), "--out", "uf"], capsys)
    assert code == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    line = lines[0]
    for part in ("uf_binarized.jsonl", "no pair accepted", "read 5 rows", "missing_field 'score_chosen' x5",
                 "try:", "metadata.rating_chosen", "uf/quarantine.parquet"):
        assert part in line, (part, line)
    # the report is there, the pair table is not (no later stage can read an empty pool)
    assert not (tmp_path / "uf" / "pairs.parquet").exists()
    report = json.loads((tmp_path / "uf" / REPORT_FILE).read_text())
    assert report["ingest"]["rows_in"] == 5 and report["ingest"]["pairs"] == 0
    assert len(pd.read_parquet(tmp_path / "uf" / "quarantine.parquet")) == 5
    # ... and the mapping the line suggests, given with --set, gives the pairs
    code, out, err = _cli(["ingest", "--source", "uf_binarized.jsonl", "--format", "trl", "--config",
                           str(CONFIGS / "trl.yaml"), "--out", "uf",
                           "--set", "chosen_rating_columns={overall: metadata.rating_chosen}",
                           "--set", "rejected_rating_columns={overall: metadata.rating_rejected}"], capsys)
    assert code == 0, err
    assert json.loads(out)["pairs"] == 5
    assert read_pairs(tmp_path / "uf")["ratings_rejected"].tolist()[0] == {"overall": 2.0}


def test_too_many_quarantined_rows_fail(tmp_path, created_at):
    rows = [{"prompt": "p", "chosen": f"c{i}", "rejected": f"r{i}"} for i in range(4)]
    rows += [{"prompt": "p", "chosen": "same", "rejected": "same"}] * 5
    src = write_jsonl(tmp_path / "t.jsonl", rows)
    with pytest.raises(IngestFailed) as e:
        run_ingest([str(src)], ["trl"], tmp_path / "out", IngestConfig(aspect="a"), created_at)
    msg = str(e.value)
    assert "56% of rows quarantined, over max_quarantine_fraction=0.5" in msg
    assert "read 9 rows, 4 accepted, 5 quarantined" in msg and "identical_responses" in msg
    assert "--set max_quarantine_fraction=0.61" in msg and "\n" not in msg
    res = run_ingest([str(src)], ["trl"], tmp_path / "out", IngestConfig(aspect="a", max_quarantine_fraction=0.6),
                     created_at)
    assert (res["pairs"], res["rows_in"], res["rows_quarantined"]) == (4, 9, 5)


def test_no_pairs_from_ratings_without_margin_fails(tmp_path, created_at):
    rows = [{"prompt": "p", "response": f"r{i}", "helpfulness": 2} for i in range(3)]
    src = write_jsonl(tmp_path / "flat.jsonl", rows)
    with pytest.raises(IngestFailed, match="none quarantined.*min_margin=1.0"):
        run_ingest([str(src)], ["rated-responses"], tmp_path / "out", IngestConfig(), created_at)


def test_pipeline_ingest_step_applies_the_rule(tmp_path):
    from fgpo_tasks.pipeline import step_ingest

    src = ultrafeedback_binarized_metadata(tmp_path)
    params = {"source": [str(src)], "format": ["trl"], "storage_root": str(tmp_path / "store"),
              "stages": {"ingest": {"aspect": "overall",
                                    "chosen_rating_columns": {"overall": "score_chosen"},
                                    "rejected_rating_columns": {"overall": "score_rejected"}}}}
    with pytest.raises(IngestFailed, match="no pair accepted"):
        step_ingest(params, "run-1", "2026-01-01T00:00:00+00:00")


def test_set_and_aspect_flags(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    trl_standard(tmp_path)
    code, out, err = _cli(["ingest", "--source", "trl_standard.jsonl", "--format", "trl", "--aspect", "tone",
                           "--out", "o", "--set", "batch_id=b7", "--set", "max_row_bytes=4096"], capsys)
    assert code == 0, err
    m = read_manifest(tmp_path / "o")
    assert (m["config"]["aspect"], m["config"]["batch_id"], m["config"]["max_row_bytes"]) == ("tone", "b7", 4096)
    # unknown field, bad YAML, missing '=' and a mistyped value: one line each, exit 2
    for bad, quoted in ((["--set", "min_margn=1"], "min_margn"), (["--set", "aspect_map={a: [}"], "not valid YAML"),
                        (["--set", "min_margin"], "KEY=VALUE"), (["--set", "min_margin=high"], "min_margin")):
        code, out, err = _cli(["ingest", "--source", "trl_standard.jsonl", "--format", "trl", "--aspect", "t",
                               "--out", "o2", *bad], capsys)
        assert code == 2 and quoted in err and len(err.strip().splitlines()) == 1, err
    # no aspect for trl: the error names the flag
    code, out, err = _cli(["ingest", "--source", "trl_standard.jsonl", "--format", "trl", "--out", "o3"], capsys)
    assert code == 2 and "--aspect" in err


def test_help_lists_aspect_and_set():
    text = subprocess.run([sys.executable, "-m", "fgpo_tasks.cli", "ingest", "--help"], capture_output=True,
                          text=True, check=True, cwd=REPO).stdout
    assert "--aspect A" in text and "--set KEY=VALUE" in text


def test_config_rejects_unknown_label_setup():
    with pytest.raises(ConfigError, match="response_columns"):
        IngestConfig(response_columns=["a"])


def test_hub_split_name_is_not_an_aspect(tmp_path, created_at, monkeypatch):
    import datasets

    rows = [{"prompt": f"p{i}", "response_0": "a", "response_1": f"b{i}", "better_response_id": 1,
             "helpfulness_score_0": 1.0, "helpfulness_score_1": 3.0} for i in range(3)]
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: datasets.Dataset.from_list(rows))
    run_ingest(["org/hs2-pairs"], ["helpsteer2-aspects"], tmp_path / "out", IngestConfig(hub_split="train_prefs"),
               created_at)
    assert set(read_pairs(tmp_path / "out")["aspect"]) == {"helpfulness"}


def test_set_merges_over_the_config_file(tmp_path, capsys, monkeypatch):
    from fgpo_tasks.commands.ingest import parse_sets

    assert parse_sets(["a=1", "b={x: y}", "b.z=metadata.r", "c=[p, q]", "d=null", "e='0.5'"]) == {
        "a": 1, "b": {"x": "y", "z": "metadata.r"}, "c": ["p", "q"], "d": None, "e": "0.5"}
    monkeypatch.chdir(tmp_path)
    (tmp_path / "c.yaml").write_text("ingest:\n  synthetic: {n_pairs: 50, seed: 3}\n")
    code = cli.main(["ingest", "--source", "toy", "--format", "synthetic", "--config", "c.yaml",
                     "--set", "synthetic.n_pairs=12", "--out", "o"])
    assert code == 0, capsys.readouterr().err
    m = read_manifest(tmp_path / "o")
    assert m["config"]["synthetic"] == {"n_pairs": 12, "seed": 3} and m["row_counts"]["total"] == 12


def test_binarized_ultrafeedback_scores_validate_on_a_1_to_10_scale(tmp_path, created_at):
    from fgpo_tasks.validate import ValidateConfig, ValidationFailed, run_validate

    run_ingest([str(ultrafeedback_binarized_h4(tmp_path))], ["ultrafeedback"], tmp_path / "ing", IngestConfig(),
               created_at)
    with pytest.raises(ValidationFailed, match=r"ratings_chosen\[overall\] outside \[0.0, 5.0\]"):
        run_validate(tmp_path / "ing", tmp_path / "v1", ValidateConfig(min_pairs_per_aspect=1, data_docs=False),
                     created_at)
    res = run_validate(tmp_path / "ing", tmp_path / "v2",
                       ValidateConfig(rating_max=10.0, min_pairs_per_aspect=1, data_docs=False), created_at)
    assert res["rows_accepted"] == 5
