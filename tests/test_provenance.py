"""Provenance stored with a run: package versions, the commit of every row, the code changed
between the commits of a resumed run, and the SHA-256 of the input files a suite read."""
from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from structbench import provenance
from structbench.results import PROJECT_ROOT


def test_a_file_digest_is_its_sha256_and_names_no_absolute_path(tmp_path: Path) -> None:
    data = tmp_path / "weights.bin"
    data.write_bytes(b"structbench" * 1000)
    found = provenance.input_digests({"weights": data, "absent": tmp_path / "nope.json"})
    assert found["weights"] == {"file": "weights.bin", "bytes": 11000,
                                "sha256": hashlib.sha256(b"structbench" * 1000).hexdigest()}
    assert found["absent"] == {"file": "nope.json", "missing": True}
    assert str(tmp_path) not in json.dumps(found)


def test_a_changed_file_gets_a_new_digest(tmp_path: Path) -> None:
    data = tmp_path / "tokens.bin"
    data.write_bytes(b"a" * 10)
    first = provenance.sha256_file(data)
    data.write_bytes(b"b" * 11)
    assert provenance.sha256_file(data) != first


def test_versions_name_torch_and_the_scorers() -> None:
    found = provenance.versions()
    assert found["torch"] and {"transformers", "fvcore", "lm_eval"} <= set(found)


def test_changed_code_lists_result_producing_files_between_two_commits() -> None:
    log = subprocess.run(["git", "log", "--format=%H", "-n", "40", "--", "structbench"], cwd=PROJECT_ROOT,
                         capture_output=True, text=True)
    commits = log.stdout.split()
    if log.returncode != 0 or len(commits) < 2:
        import pytest
        pytest.skip("needs the project's git history")
    changed = provenance.changed_code(commits[1], commits[0], PROJECT_ROOT)
    assert changed and all(path.split("/")[0] in ("structbench", "matrices", "suites", "pyproject.toml")
                           for path in changed)
    assert provenance.changed_code("0" * 40, commits[0], PROJECT_ROOT) is None


@pytest.mark.slow
def test_every_row_and_the_run_record_the_commit_and_the_run_its_environment(tmp_path: Path) -> None:
    out = tmp_path / "results"
    done = subprocess.run([sys.executable, "bench.py", "--suite", "kernels", "--quick", "--families", "dense",
                           "--out", str(out)], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    run_dir = next(out.glob("kernels/*"))
    meta = json.loads((run_dir / "run.json").read_text())
    rows = [json.loads(line) for line in (run_dir / "rows.jsonl").read_text().splitlines()]
    head = meta["commits"][-1]
    expected = head["commit"] + ("+dirty" if head["dirty"] else "") if head["commit"] else None
    assert rows and all(row["commit"] == expected for row in rows)
    assert meta["env"]["versions"]["torch"]


def test_a_run_resumed_at_another_commit_records_what_changed_under_the_result_code(tmp_path: Path) -> None:
    from structbench.results import RunWriter, git_info

    head = git_info()
    log = subprocess.run(["git", "log", "--format=%H", "-n", "2", "--", "structbench"], cwd=PROJECT_ROOT,
                         capture_output=True, text=True)
    older = log.stdout.split()[-1] if log.returncode == 0 and log.stdout.split() else None
    if not head["commit"] or older is None or older == head["commit"]:
        import pytest
        pytest.skip("needs the project's git history")
    meta = {"commits": [{"commit": older, "dirty": False, "at": "then"}]}
    writer = RunWriter(tmp_path / "run", meta)
    try:
        assert [c["commit"] for c in meta["commits"]] == [older, head["commit"]]
        assert meta["commits"][-1]["changed"] == provenance.changed_code(older, head["commit"], PROJECT_ROOT)
        writer.append([{"status": "ok", "case_key": "a"}])
        assert writer.rows[-1]["commit"].startswith(head["commit"])
    finally:
        writer.close()
    again = RunWriter(tmp_path / "run", meta)  # the same commit again: nothing new recorded
    again.close()
    assert len(meta["commits"]) == 2


def test_a_published_index_does_not_mark_the_next_run_dirty_but_changed_code_does(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from structbench import results

    def git(*args: str) -> None:
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=tmp_path, check=True,
                       capture_output=True)

    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "index.html").write_text("<p>reference runs</p>")
    (tmp_path / "code.py").write_text("x = 1\n")
    git("init", "-q")
    git("add", "-A")
    git("commit", "-q", "-m", "start")
    monkeypatch.setattr(results, "PROJECT_ROOT", tmp_path)
    (tmp_path / "results" / "index.html").write_text("<p>reference runs and yours</p>")  # what publishing does
    assert results.git_info()["dirty"] is False
    (tmp_path / "code.py").write_text("x = 2\n")
    assert results.git_info()["dirty"] is True
