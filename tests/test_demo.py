"""The demo's ``--out`` folder: it never deletes what it did not create."""

from __future__ import annotations

from pathlib import Path

import pytest

from calm_azure_sync.demo.__main__ import MARKER, cli, prepare_output


def test_a_folder_with_someone_elses_files_is_refused_and_left_alone(tmp_path: Path, capsys) -> None:
    # Before: --out ran shutil.rmtree(DIR), deleting whatever the folder held.
    mine = tmp_path / "thesis"
    mine.mkdir()
    (mine / "chapter1.docx").write_text("two years of work")
    (mine / "calm.sqlite").write_text("not the demo's")
    assert cli(["--out", str(mine)]) == 2
    assert "not empty and was not made by the demo" in capsys.readouterr().err
    assert sorted(p.name for p in mine.iterdir()) == ["calm.sqlite", "chapter1.docx"]
    assert (mine / "calm.sqlite").read_text() == "not the demo's"


def test_a_file_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "notes.txt"
    target.write_text("keep me")
    assert prepare_output(target) == f"--out {target}: is a file, not a folder"
    assert target.read_text() == "keep me"


@pytest.mark.parametrize("exists", [False, True])
def test_a_new_or_empty_folder_is_taken_and_marked(tmp_path: Path, exists: bool) -> None:
    out = tmp_path / "nested" / "demo"
    if exists:
        out.mkdir(parents=True)
    assert prepare_output(out) is None
    assert sorted(p.name for p in out.iterdir()) == [MARKER]


def test_a_rerun_replaces_only_the_demos_own_files(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    assert cli(["--out", str(out)]) == 0
    assert {MARKER, "calm.sqlite", "import-log.sqlite"} <= {p.name for p in out.iterdir()}
    (out / "my-notes.txt").write_text("added by the user afterwards")
    (out / "calm.sqlite-wal").write_bytes(b"stale")  # a stale side file from a crashed run
    assert prepare_output(out) is None
    assert sorted(p.name for p in out.iterdir()) == [MARKER, "my-notes.txt"]
    assert cli(["--out", str(out)]) == 0  # a clean second demo, not one on top of the first
    assert (out / "my-notes.txt").read_text() == "added by the user afterwards"
