"""The files stages hand each other are named, written and read in one place (lightning_nat.core.artifacts)."""

import json

import pytest

from lightning_nat.core import artifacts
from lightning_nat.core.artifacts import BuildRecord, read_build, write_build


def test_build_record_round_trip(tmp_path):
    rec = BuildRecord({"name": "nat", "neg_num": 500}, {"stats": {"positives": 3, "negatives": 2}}, {"style": "x"})
    write_build(tmp_path, rec)
    back = read_build(tmp_path)
    assert back == rec and back.path == tmp_path / artifacts.BUILD_FILE
    assert artifacts.run_counts(back) == {"variant": "nat", "pos_num": 3, "neg_num": 2}  # the actual counts, not --neg-num
    assert json.loads((tmp_path / "build.json").read_text())["prompt"] == {"style": "x"}


def test_build_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="no build.json"):
        read_build(tmp_path)
    assert artifacts.maybe_read_build(tmp_path) is None
    (tmp_path / "build.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"build.json: not JSON"):
        read_build(tmp_path)
    (tmp_path / "build.json").write_text(json.dumps({"config": {}}))
    with pytest.raises(ValueError, match="no 'report' object"):
        read_build(tmp_path)


def test_nat_build_writes_what_artifacts_reads(tmp_path, tiny_dataset):
    rec = read_build(tiny_dataset)
    assert rec.variant and rec.stats["negatives"] is not None and rec.prompt is not None
    from lightning_nat.core.artifacts import read_spec

    assert read_spec(str(tiny_dataset)).to_dict() == rec.prompt


def test_history_rows_append_and_read_old_spelling(tmp_path):
    path = tmp_path / "log" / artifacts.PERPLEXITY_FILE
    artifacts.append_row(path, {"step": 1, "perplexity": 3.0, **artifacts.run_counts(
        BuildRecord({"name": "nut"}, {"stats": {"positives": 4, "negatives": 5}}))})
    path.write_text(path.read_text() + json.dumps({"step": 2, "positives": 4, "negatives": 5}) + "\n")
    rows = artifacts.read_rows(path)
    assert [r["neg_num"] for r in rows] == [5, 5] and rows[0]["variant"] == "nut"


def test_no_module_spells_a_handoff_file_name_but_artifacts():
    """The names live in artifacts only: a new string-keyed read of build.json elsewhere fails here."""
    import re
    from pathlib import Path

    pattern = re.compile(r"""["'](build\.json|nat_prompt\.json|perplexity\.jsonl|react_eval\.jsonl)["']""")
    package = Path(artifacts.__file__).parent
    offenders = [f"{f.relative_to(package)}:{n}" for f in sorted(package.rglob("*.py"))
                 if f.name != "artifacts.py"
                 for n, line in enumerate(f.read_text().splitlines(), 1) if pattern.search(line)]
    assert offenders == []
