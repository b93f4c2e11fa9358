"""The ingest stage: every format adapter, quarantine of bad rows, errors, CLI, determinism."""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest

from fgpo_tasks import cli, contract
from fgpo_tasks.config import load_config, read_yaml
from fgpo_tasks.contract import read_manifest, read_pairs
from fgpo_tasks.errors import ConfigError, InputError
from fgpo_tasks.ingest import (IngestConfig, RatedResponse, pair_rated_responses, parse_conversation,
                               run_ingest)
from fgpo_tasks.ingest import readers
from fgpo_tasks.ingest.adapters import pair_rated_table
from fgpo_tasks.provenance import sha256_hex

HS2 = "helpsteer2-aspects"
CONFIGS = Path(__file__).resolve().parent.parent / "configs" / "ingest"


def ingest(sources, formats, out, created_at, **cfg):
    return run_ingest([str(s) for s in sources], formats, out, IngestConfig(**cfg), created_at)


def quarantine(out) -> pd.DataFrame:
    return pd.read_parquet(Path(out) / "quarantine.parquet")


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# ---------------------------------------------------------------------------- helpsteer2-aspects

def test_helpsteer2_aspects_real_data(shared_data, tmp_path, created_at):
    folder = shared_data / HS2
    res = ingest([folder], [HS2], tmp_path / "out", created_at)
    assert res["pairs"] == 4425 and res["rows_quarantined"] == 0
    assert res["per_aspect"] == {"coherence": 853, "complexity": 609, "correctness": 1018,
                                 "helpfulness": 1045, "verbosity": 900}
    df = read_pairs(tmp_path / "out")
    assert df["batch_id"].unique().tolist() == [HS2]

    # Each pair matches its raw line: chosen is the better response, ratings are that aspect's scores.
    lines = (folder / "correctness_preference_test.jsonl").read_text().splitlines()
    sub = df[df["source"] == f"{HS2}:correctness_preference_test.jsonl"]
    assert len(sub) == 1018
    for _, p in sub.sample(40, random_state=0).iterrows():
        raw = json.loads(lines[p["source_line"] - 1])
        b = raw["better_response_id"]
        assert (p["chosen"], p["rejected"]) == (raw[f"response_{b}"], raw[f"response_{1 - b}"])
        assert p["ratings_chosen"] == {"correctness": raw[f"correctness_score_{b}"]}
        assert p["ratings_rejected"] == {"correctness": raw[f"correctness_score_{1 - b}"]}

    # Multi-turn prompts become conversations: user first and last, roles alternating.
    convs = df["prompt_messages"].dropna()
    assert len(convs) > 1000
    for msgs in convs:
        roles = [m["role"] for m in msgs]
        assert roles[0] == "user" and roles[-1] == "user"
        assert all(a != b for a, b in zip(roles, roles[1:]))
        assert not any("<extra_id" in m["content"] for m in msgs)
    assert not df.loc[df["prompt_messages"].isna(), "prompt"].str.contains("<extra_id").any()


def test_parse_conversation():
    text = "Hi there\n<extra_id_1>Assistant\nHello!\n<extra_id_1>User\nWrite a poem\nabout rain"
    assert parse_conversation(text) == [
        {"role": "user", "content": "Hi there"}, {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "Write a poem\nabout rain"}]
    assert parse_conversation("Just one question?") == "Just one question?"


def test_helpsteer2_aspect_map_renames(tmp_path, created_at):
    rows = [{"prompt": "p", "response_0": "a", "response_1": "b", "better_response_id": 1,
             "coherence_score_0": 1.0, "coherence_score_1": 3.5}]
    src = write_jsonl(tmp_path / "coherence_preference_test.jsonl", rows)
    ingest([src], [HS2], tmp_path / "out", created_at, aspect_map={"coherence": "clarity"})
    p = read_pairs(tmp_path / "out").iloc[0]
    assert (p["aspect"], p["chosen"], p["ratings_chosen"]) == ("clarity", "b", {"clarity": 3.5})


def test_corrupted_helpsteer2_copy(shared_data, tmp_path, created_at):
    lines = (shared_data / HS2 / "coherence_preference_test.jsonl").read_bytes().splitlines()[:30]
    bad = {}
    bad[3] = lines[2][:-20]                                           # malformed JSON (cut short)
    row = json.loads(lines[4]); del row["response_1"]
    bad[5] = json.dumps(row).encode()                                 # a missing field
    row = json.loads(lines[6]); row["better_response_id"] = "one"
    bad[7] = json.dumps(row).encode()                                 # a mistyped field
    row = json.loads(lines[8]); row["response_0"] = "BADBYTES" + row["response_0"]
    bad[9] = json.dumps(row).encode().replace(b"BADBYTES", b"\xff\xfe\x80")  # invalid UTF-8
    row = json.loads(lines[10]); row["response_1"] = "x" * (1 << 20)
    bad[11] = json.dumps(row).encode()                                # an enormous row (> 1 MiB)
    for line_no, text in bad.items():
        lines[line_no - 1] = text
    src = tmp_path / "coherence_preference_test.jsonl"
    src.write_bytes(b"\n".join(lines) + b"\n")

    res = ingest([src], [HS2], tmp_path / "out", created_at)
    assert (res["rows_in"], res["rows_accepted"], res["rows_quarantined"]) == (30, 25, 5)
    assert res["pairs"] == 25
    q = quarantine(tmp_path / "out").sort_values("line")
    assert q["line"].tolist() == [3, 5, 7, 9, 11]
    assert q["field"].tolist()[1:4] == ["response_1", "better_response_id", "response_0"]
    assert q["field"].isna().tolist() == [True, False, False, False, True]
    assert q["kind"].tolist() == ["malformed_json", "missing_field", "wrong_type", "invalid_utf8",
                                  "row_too_large"]
    assert set(q["file"]) == {str(src)}
    assert q["raw"].map(lambda s: len(s.encode())).max() <= 2048  # truncated to 2 KB
    assert "\\xff\\xfe\\x80" in q["raw"].iloc[3]  # the bad bytes, shown escaped
    assert q["raw"].iloc[0] == lines[2].decode()
    assert sorted(read_pairs(tmp_path / "out")["source_line"]) == [
        i for i in range(1, 31) if i not in bad]
    info = read_manifest(tmp_path / "out")["ingest"]
    assert {k: info["files"][0][k] for k in ("rows_in", "rows_accepted", "rows_quarantined", "pairs")} \
        == {"rows_in": 30, "rows_accepted": 25, "rows_quarantined": 5, "pairs": 25}
    assert info["quarantine_reasons"] == {"invalid_utf8": 1, "malformed_json": 1, "missing_field": 1,
                                          "row_too_large": 1, "wrong_type": 1}


def test_max_row_bytes_is_configurable(tmp_path, created_at):
    rows = [{"prompt": "p", "response_0": "a" * n, "response_1": "b", "better_response_id": 0,
             "verbosity_score_0": 1.0, "verbosity_score_1": 2.0} for n in (10, 500)]
    src = write_jsonl(tmp_path / "verbosity_preference_test.jsonl", rows)
    res = ingest([src], [HS2], tmp_path / "out", created_at, max_row_bytes=300)
    assert (res["rows_accepted"], res["rows_quarantined"]) == (1, 1)
    assert quarantine(tmp_path / "out")["line"].tolist() == [2]


# ---------------------------------------------------------------------------- rated-responses

def test_rated_responses_real_data(shared_data, tmp_path, created_at):
    src = shared_data / "helpsteer-ratings" / "helpsteer_v1_sample.jsonl"
    res = ingest([src], ["rated-responses"], tmp_path / "out", created_at)
    df = read_pairs(tmp_path / "out")
    aspects = ["coherence", "complexity", "correctness", "helpfulness", "verbosity"]
    assert res["rows_in"] == 500 and res["rows_quarantined"] == 0 and len(df) > 300
    assert sorted(df["aspect"].unique()) == aspects
    counts = df["aspect"].value_counts()
    assert counts.max() - counts.min() <= 0.1 * counts.mean()  # balanced across aspects

    # Disjoint: each response pair is labelled on ONE aspect only.
    keys = df.apply(lambda p: (p["prompt"], frozenset((p["chosen"], p["rejected"]))), axis=1)
    assert keys.is_unique
    raw, lines = {}, src.read_text().splitlines()
    for line in lines:
        r = json.loads(line)
        raw.setdefault((r["prompt"], r["response"]), {a: float(r[a]) for a in aspects})
    for _, p in df.iterrows():
        rc, rr = p["ratings_chosen"], p["ratings_rejected"]
        assert rc == raw[(p["prompt"], p["chosen"])] and rr == raw[(p["prompt"], p["rejected"])]
        assert rc[p["aspect"]] - rr[p["aspect"]] >= 1.0  # chosen is the higher one, ratings differ
    pairing = read_manifest(tmp_path / "out")["ingest"]["pairing"][str(src)]
    assert pairing["duplicate_responses"] == len(lines) - len(raw) and pairing["pairs"] == len(df)


def _rated(prompt, response, line, **ratings):
    return RatedResponse(prompt, response, tuple(ratings.items()), "rated-responses:f.jsonl", line)


def test_pairing_options_and_order_independence():
    rs = [_rated("q1", "a", 1, help=4.0, verb=1.0), _rated("q1", "b", 2, help=1.0, verb=4.0),
          _rated("q1", "c", 3, help=2.0, verb=2.0), _rated("q2", "d", 4, help=3.0, verb=3.0),
          _rated("q2", "e", 5, help=3.0, verb=3.5)]
    pairs, stats = pair_rated_responses(rs, batch_id="b")
    # q2's responses differ by 0.5 < min_margin on verb and not at all on help: no pair.
    assert stats["no_margin"] == 1 and len(pairs) == 3
    shuffled = rs[:]
    random.Random(1).shuffle(shuffled)
    assert [p["pair_id"] for p in pair_rated_responses(shuffled, batch_id="b")[0]] == \
        [p["pair_id"] for p in pairs]

    pairs, _ = pair_rated_responses(rs, batch_id="b", min_margin=0.5, max_pairs_per_prompt=1)
    assert Counter(p["prompt"] for p in pairs) == {"q1": 1, "q2": 1}
    q2 = next(p for p in pairs if p["prompt"] == "q2")
    assert (q2["aspect"], q2["chosen"]) == ("verb", "e")

    pairs, _ = pair_rated_responses(rs[3:], batch_id="b", min_margin=0.5, lower_is_better=["verb"])
    assert (pairs[0]["chosen"], pairs[0]["ratings_chosen"]) == ("d", {"help": 3.0, "verb": 3.0})


def test_rated_responses_config_aspects_and_bad_rows(tmp_path, created_at):
    rows = [{"prompt": "q", "response": "a", "helpfulness": 4, "verbosity": 1, "note": 7},
            {"prompt": "q", "response": "b", "helpfulness": 1, "verbosity": 4, "note": 1},
            {"prompt": "q", "response": "c", "helpfulness": "high", "verbosity": 2},
            {"prompt": "q", "response": "d", "verbosity": 2}]
    src = write_jsonl(tmp_path / "r.jsonl", rows)
    res = ingest([src], ["rated-responses"], tmp_path / "out", created_at,
                 aspects=["helpfulness", "verbosity"])
    assert (res["rows_accepted"], res["rows_quarantined"], res["pairs"]) == (2, 2, 1)
    q = quarantine(tmp_path / "out")
    assert q[["line", "field", "kind"]].values.tolist() == [
        [3, "helpfulness", "wrong_type"], [4, "helpfulness", "missing_field"]]
    p = read_pairs(tmp_path / "out").iloc[0]
    assert set(p["ratings_chosen"]) == {"helpfulness", "verbosity"}  # 'note' not an aspect here


# ---------------------------------------------------------------------------- ultrafeedback

def _uf_completion(response, model, **ratings):
    def ann(r, with_type=False):
        a = {"Rating": r, "Rationale": "because"}
        return {**a, "Type": ["1"], "Rationale For Rating": "why"} if with_type else a
    return {"response": response, "model": model, "custom_system_prompt": "", "critique": "ok",
            "fine-grained_score": 4.0, "overall_score": 7.0, "principle": "helpfulness",
            "annotations": {"instruction_following": ann(ratings["if_"]), "honesty": ann(ratings["ho"]),
                            "truthfulness": ann(ratings["tr"], True),
                            "helpfulness": ann(ratings["he"], True)}}


def test_ultrafeedback(tmp_path, created_at):
    rows = [{"source": "evol_instruct", "instruction": "Name a prime.",
             "models": ["m1", "m2", "m3", "m4"], "correct_answers": ["None"], "incorrect_answers": [],
             "completions": [_uf_completion("2", "m1", if_="5", ho="5", tr="5", he="4"),
                             _uf_completion("9", "m2", if_="2", ho="N/A", tr="1", he="1"),
                             _uf_completion("7 is prime.", "m3", if_="4", ho="5", tr="5", he="5"),
                             _uf_completion("I am not sure.", "m4", if_="1", ho="4", tr="N/A", he="1")]},
            {"source": "sharegpt", "instruction": "Say hi.", "models": ["m1", "m2"],
             "completions": [_uf_completion("hi", "m1", if_="5", ho="5", tr="5", he="5"),
                             _uf_completion("bye", "m2", if_="1", ho="four", tr="5", he="1")]}]
    src = write_jsonl(tmp_path / "uf.jsonl", rows)
    res = ingest([src], ["ultrafeedback"], tmp_path / "out", created_at)
    assert (res["rows_accepted"], res["rows_quarantined"]) == (1, 1)
    q = quarantine(tmp_path / "out").iloc[0]
    assert (q["line"], q["field"]) == (2, "completions[1].annotations.honesty.Rating")
    df = read_pairs(tmp_path / "out")
    assert set(df["aspect"]) <= {"instruction_following", "honesty", "truthfulness", "helpfulness"}
    assert len(df) == 6 and df["source_line"].eq(1).all()
    for _, p in df.iterrows():
        assert p["ratings_chosen"][p["aspect"]] - p["ratings_rejected"][p["aspect"]] >= 1
    m2 = df[df["chosen"].eq("9") | df["rejected"].eq("9")]
    side = [p["ratings_chosen"] if p["chosen"] == "9" else p["ratings_rejected"] for _, p in m2.iterrows()]
    assert all(s == {"instruction_following": 2.0, "truthfulness": 1.0, "helpfulness": 1.0} for s in side)


# ---------------------------------------------------------------------------- pku-saferlhf

PKU_ROWS = [{"prompt": f"question {i}", "response_0": f"safe answer {i}", "response_1": f"risky {i}",
             "is_response_0_safe": True, "is_response_1_safe": False,
             "better_response_id": i % 2, "safer_response_id": 0} for i in range(12)]


def test_pku_saferlhf(tmp_path, created_at):
    src = write_jsonl(tmp_path / "pku.jsonl", PKU_ROWS)
    res = ingest([src], ["pku-saferlhf"], tmp_path / "both", created_at)
    assert res["pairs"] == 24 and res["per_aspect"] == {"helpful": 12, "safe": 12}
    df = read_pairs(tmp_path / "both")
    safe = df[df["aspect"] == "safe"]
    assert safe["chosen"].str.startswith("safe").all()
    helpful = df[(df["aspect"] == "helpful") & (df["source_line"] == 2)].iloc[0]  # better_response_id 1
    assert helpful["chosen"] == "risky 1"
    assert helpful["ratings_chosen"] == {"helpful": 1.0, "safe": 0.0}
    assert helpful["ratings_rejected"] == {"helpful": 0.0, "safe": 1.0}

    res = ingest([src], ["pku-saferlhf"], tmp_path / "split", created_at, split_aspects=True,
                 pairwise_ratings=False)
    df = read_pairs(tmp_path / "split")
    assert res["pairs"] == 12 and df["source_line"].is_unique and set(df["aspect"]) == {"helpful", "safe"}
    assert df["ratings_chosen"].isna().all()


# ---------------------------------------------------------------------------- trl / generic

def test_trl_standard_and_conversational(tmp_path, created_at):
    standard = [{"prompt": "The sky is", "chosen": " blue.", "rejected": " green.", "aspect": "truth"}]
    conv = [{"prompt": [{"role": "user", "content": "What color is the sky?"}],
             "chosen": [{"role": "assistant", "content": "It is blue."}],
             "rejected": [{"role": "assistant", "content": "It is green."}], "aspect": "truth"},
            {"prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
             "chosen": [{"role": "assistant", "content": "Hi!"}],
             "rejected": [{"role": "assistant", "content": "Hello, how are you today?"}],
             "aspect": "brevity"},
            {"chosen": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}],
             "rejected": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "5"}],
             "aspect": "truth"},  # implicit prompt
            {"prompt": "x", "chosen": [{"role": "assistant", "content": 4}], "rejected": "y", "aspect": "a"}]
    a = write_jsonl(tmp_path / "standard.jsonl", standard)
    b = write_jsonl(tmp_path / "conv.jsonl", conv)
    res = ingest([a, b], ["trl"], tmp_path / "out", created_at, aspect_column="aspect")
    assert (res["pairs"], res["rows_quarantined"]) == (4, 1)
    assert quarantine(tmp_path / "out")[["line", "field"]].values.tolist() == [[4, "chosen[0]"]]
    df = read_pairs(tmp_path / "out").set_index("source_line")
    conv_df = df[df["source"] == "trl:conv.jsonl"]
    assert conv_df.loc[1, "prompt"] == "What color is the sky?" and conv_df.loc[1, "chosen"] == "It is blue."
    assert [m["role"] for m in conv_df.loc[2, "prompt_messages"]] == ["system", "user"]
    implicit = conv_df.loc[3]
    assert (implicit["prompt"], implicit["chosen"], implicit["rejected"]) == ("2+2?", "4", "5")
    assert df[df["source"] == "trl:standard.jsonl"].iloc[0]["chosen"] == " blue."

    ingest([a], ["trl"], tmp_path / "fixed", created_at, aspect="overall")
    assert read_pairs(tmp_path / "fixed")["aspect"].tolist() == ["overall"]
    with pytest.raises(ConfigError, match="aspect"):
        ingest([a], ["trl"], tmp_path / "none", created_at)


@pytest.mark.parametrize("ext", ["jsonl", "csv", "parquet"])
def test_generic_file_types(tmp_path, created_at, ext):
    df = pd.DataFrame({"question": ["q1", "q2", "q3"], "good": ["g1", "g2", "g3"],
                       "bad": ["b1", "b2", "b3"], "dim": ["help", "safe", None],
                       "s_good": [4.0, 3.0, 2.0], "s_bad": [1.0, 2.0, 1.0]})
    path = tmp_path / f"data.{ext}"
    if ext == "jsonl":
        df.to_json(path, orient="records", lines=True)
    elif ext == "csv":
        df.to_csv(path, index=False)  # every value becomes text: ratings are read as numbers
    else:
        df.to_parquet(path)
    res = ingest([path], ["generic"], tmp_path / "out", created_at, aspect_column="dim",
                 columns={"prompt": "question", "chosen": "good", "rejected": "bad"},
                 chosen_rating_columns={"overall": "s_good"}, rejected_rating_columns={"overall": "s_bad"})
    out = read_pairs(tmp_path / "out")
    assert (res["rows_accepted"], res["rows_quarantined"]) == (2, 1)  # row 3 has no aspect
    assert quarantine(tmp_path / "out")[["line", "field"]].values.tolist() == [[3, "dim"]]
    assert out["aspect"].tolist() == ["help", "safe"]
    assert out.iloc[0][["prompt", "chosen", "rejected", "source"]].tolist() == [
        "q1", "g1", "b1", f"generic:data.{ext}"]
    assert out.iloc[1]["ratings_rejected"] == {"overall": 2.0}


def test_generic_json_array_and_csv_shape_errors(tmp_path, created_at):
    arr = tmp_path / "pairs.json"
    arr.write_text(json.dumps([{"prompt": "p", "chosen": "c", "rejected": "r", "score": 1}, "not an object",
                               {"prompt": "p", "chosen": "same", "rejected": "same", "score": 1},
                               {"prompt": "p", "chosen": "c\ud800", "rejected": "r", "score": 1}]))
    csv = tmp_path / "pairs.csv"
    csv.write_text('prompt,chosen,rejected,score\np,c,r,1\n"p2",c2\np3,c3,r3,extra,2\np4,c4,r4,\n')
    res = ingest([arr, csv], ["generic"], tmp_path / "out", created_at, aspect="a",
                 chosen_rating_columns={"a": "score"}, rejected_rating_columns={"a": "score"},
                 max_quarantine_fraction=0.8)
    assert (res["pairs"], res["rows_quarantined"]) == (2, 6)
    q = quarantine(tmp_path / "out")
    assert q[["line", "field", "kind"]].fillna("-").values.tolist() == [
        [2, "-", "not_an_object"], [3, "rejected", "identical_responses"], [4, "chosen", "invalid_utf8"],
        [2, "-", "malformed_csv"], [3, "-", "malformed_csv"], [4, "score", "missing_field"]]


# ---------------------------------------------------------------------------- sources and errors

def test_hub_source_uses_datasets_load_dataset(tmp_path, created_at, monkeypatch):
    import datasets

    calls = []

    def fake_load_dataset(path, name=None, split=None, revision=None, **kw):
        calls.append((path, name, split, revision))
        return datasets.Dataset.from_list(PKU_ROWS[:3])

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    res = ingest(["PKU-Alignment/PKU-SafeRLHF"], ["pku-saferlhf"], tmp_path / "out", created_at,
                 hub_split="test", hub_revision="abc123")
    assert calls == [("PKU-Alignment/PKU-SafeRLHF", None, "test", "abc123")]
    df = read_pairs(tmp_path / "out")
    assert res["pairs"] == 6 and set(df["batch_id"]) == {"PKU-SafeRLHF"}
    assert set(df["source"]) == {"pku-saferlhf:test"}

    def offline(*a, **kw):
        raise ConnectionError("offline")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(InputError, match="PKU-Alignment/PKU-SafeRLHF.*offline"):
        ingest(["PKU-Alignment/PKU-SafeRLHF"], ["pku-saferlhf"], tmp_path / "out2", created_at)


def test_folder_glob_and_several_sources_combine(tmp_path, created_at):
    pku = tmp_path / "pku" / "part"
    pku.mkdir(parents=True)
    write_jsonl(pku / "a.jsonl", PKU_ROWS[:2])
    write_jsonl(pku / "b.jsonl", PKU_ROWS[2:4])
    (pku / "README.md").write_text("not data")
    trl = write_jsonl(tmp_path / "prefs.jsonl", [{"prompt": "p", "chosen": "c", "rejected": "r"}])
    res = ingest([tmp_path / "pku", str(tmp_path / "pku" / "*" / "b.jsonl"), trl],
                 ["pku-saferlhf", "pku-saferlhf", "trl"], tmp_path / "out", created_at, aspect="overall")
    df = read_pairs(tmp_path / "out")
    assert res["rows_in"] == 2 + 2 + 2 + 1 and res["pairs"] == 8 + 4 + 1
    assert Counter(df["source"]) == {"pku-saferlhf:part/a.jsonl": 4, "pku-saferlhf:part/b.jsonl": 8,
                                     "trl:prefs.jsonl": 1}
    assert Counter(df["batch_id"]) == {"pku": 8 + 4, "prefs": 1}
    assert res["duplicate_pair_ids"] == 4  # b.jsonl given twice
    assert len(read_manifest(tmp_path / "out")["ingest"]["files"]) == 4

    ingest([trl], ["trl"], tmp_path / "out2", created_at, aspect="overall", batch_id="batch-7")
    assert read_pairs(tmp_path / "out2")["batch_id"].tolist() == ["batch-7"]
    with pytest.raises(ConfigError, match="one per source"):
        ingest([trl, trl, trl], ["trl", "generic"], tmp_path / "out3", created_at, aspect="a")


def test_pair_ids_stable_across_runs(shared_data, tmp_path, created_at):
    src = shared_data / "helpsteer-ratings" / "helpsteer_v1_sample.jsonl"
    ingest([src], ["rated-responses"], tmp_path / "one", created_at)
    ingest([src], ["rated-responses"], tmp_path / "two", created_at)
    a, b = read_pairs(tmp_path / "one"), read_pairs(tmp_path / "two")
    assert a["pair_id"].tolist() == b["pair_id"].tolist() and a["pair_id"].is_unique
    assert read_manifest(tmp_path / "one")["fingerprint"] == read_manifest(tmp_path / "two")["fingerprint"]


@pytest.mark.parametrize("content", [b"", b"\n  \n"])
def test_empty_file_is_a_clear_error(tmp_path, created_at, content):
    src = tmp_path / "empty.jsonl"
    src.write_bytes(content)
    with pytest.raises(InputError, match="empty.jsonl.*empty"):
        ingest([src], [HS2], tmp_path / "out", created_at)
    assert not (tmp_path / "out").exists()


def test_missing_sources_and_unknown_format(tmp_path, created_at):
    with pytest.raises(InputError, match="nope.jsonl: no such file"):
        ingest([tmp_path / "nope.jsonl"], [HS2], tmp_path / "out", created_at)
    with pytest.raises(InputError, match=r"\*.parquet: glob matches no file"):
        ingest([str(tmp_path / "*.parquet")], [HS2], tmp_path / "out", created_at)
    with pytest.raises(ConfigError, match="Unknown format 'shp'"):
        ingest([tmp_path], ["shp"], tmp_path / "out", created_at)
    with pytest.raises(InputError, match="no data files"):
        ingest([tmp_path], [HS2], tmp_path / "out", created_at)


def test_cli_error_is_one_line_with_exit_code_2(tmp_path, capsys):
    src = tmp_path / "empty.jsonl"
    src.write_bytes(b"")
    code = cli.main(["ingest", "--source", str(src), "--format", HS2, "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert str(src) in err and "Traceback" not in err


def test_cli_runs_with_an_example_config(tmp_path, capsys):
    rows = PKU_ROWS[:4]
    src = write_jsonl(tmp_path / "pku.jsonl", rows)
    code = cli.main(["--created-at", "2026-01-01T00:00:00+00:00", "ingest", "--source", str(src),
                     "--format", "pku-saferlhf", "--out", str(tmp_path / "out"),
                     "--config", str(CONFIGS / "pku-saferlhf.yaml"), "--batch-id", "b1"])
    assert code == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["pairs"] == 4 and printed["rows_in"] == 4
    manifest = read_manifest(tmp_path / "out")
    assert manifest["config"]["split_aspects"] is True and manifest["created_at"].startswith("2026-01-01")
    assert read_pairs(tmp_path / "out")["batch_id"].eq("b1").all()


def test_example_configs_load():
    files = sorted(CONFIGS.glob("*.yaml"))
    assert len(files) >= 5
    for f in files:
        section = "ingest" if isinstance(read_yaml(f).get("ingest"), dict) else None
        load_config(IngestConfig, f, section)


def test_config_checks_quote_bad_values():
    with pytest.raises(ConfigError, match="-1"):
        IngestConfig(min_margin=-1)
    with pytest.raises(ConfigError, match="'promt'"):
        IngestConfig(columns={"promt": "q"})
    with pytest.raises(ConfigError, match="one of aspect, aspect_column"):
        IngestConfig(aspect="a", aspect_column="b")
    with pytest.raises(ConfigError, match="1.5"):
        IngestConfig(max_quarantine_fraction=1.5)


def test_synthetic_format(tmp_path, created_at):
    res = ingest(["toy"], ["synthetic"], tmp_path / "out", created_at, synthetic={"n_pairs": 12, "seed": 3})
    df = read_pairs(tmp_path / "out")
    assert res["pairs"] == 12 and set(df["batch_id"]) == {"toy"} and set(df["source"]) == {"synthetic:toy"}
    assert df["ratings_chosen"].notna().all()


def test_readers_hub_id_detection(tmp_path):
    assert readers.resolve_source("openbmb/UltraFeedback", "ultrafeedback").kind == "hub"
    assert readers.resolve_source("hf:squad", "trl").kind == "hub"
    with pytest.raises(InputError):
        readers.resolve_source("data/pairs.jsonl", "trl")  # looks like a path: never the hub


def _naive_pairing(responses, min_margin, max_pairs_per_prompt):
    """The pairing as first written: every candidate built, then the per-prompt cap applied."""
    groups = {}
    for r in responses:
        groups.setdefault(r.prompt, [])
        if r.response not in [x.response for x in groups[r.prompt]]:
            groups[r.prompt].append(r)
    cands = sorted((sha256_hex(k, *sorted((a.response, b.response))), k, *sorted((a, b), key=lambda r: r.response))
                   for k, rs in groups.items() for i, a in enumerate(rs) for b in rs[i + 1:])
    per_aspect, per_prompt, out = Counter(), Counter(), []
    for h, k, a, b in cands:
        if max_pairs_per_prompt is not None and per_prompt[k] >= max_pairs_per_prompt:
            continue
        ra, rb = dict(a.ratings), dict(b.ratings)
        eligible = [x for x in ra if abs(ra[x] - rb[x]) >= min_margin]
        if not eligible:
            continue
        aspect = min(eligible, key=lambda x: (per_aspect[x], sha256_hex(h, x)))
        per_aspect[aspect] += 1
        per_prompt[k] += 1
        win = a if ra[aspect] > rb[aspect] else b
        out.append((k, win.response, aspect))
    return out


@pytest.mark.parametrize("cap", [None, 1, 2])
def test_pairing_caps_while_building_and_the_table_holds_the_same_rows(cap):
    rng = random.Random(3)
    rs = [_rated(f"q{i // 5}", f"r{i}", i + 1, help=float(rng.randint(0, 4)), verb=float(rng.randint(0, 4)),
                 corr=float(rng.randint(0, 4))) for i in range(200)]
    pairs, stats = pair_rated_responses(rs, batch_id="b", max_pairs_per_prompt=cap)
    assert [(p["prompt"], p["chosen"], p["aspect"]) for p in pairs] == _naive_pairing(rs, 1.0, cap)
    assert stats["candidate_pairs"] == 40 * 10
    assert stats["candidate_pairs"] == stats["no_margin"] + stats["over_max_pairs_per_prompt"] + len(pairs)
    table, table_stats = pair_rated_table(rs, batch_id="b", max_pairs_per_prompt=cap)
    assert table_stats == stats
    assert contract.from_arrow(table).to_dict(orient="records") == \
        contract.from_arrow(contract.to_arrow(contract.frame(pairs))).to_dict(orient="records")
    assert contract.content_fingerprint(table) == contract.content_fingerprint(contract.frame(pairs))
