"""``staged_folder``: a folder built beside its target and swapped in whole."""

from __future__ import annotations

from pathlib import Path

import pytest

from sdi_blender.server.util import fileio
from sdi_blender.server.util.fileio import staged_folder


def _tree(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): p.read_text() for p in sorted(folder.rglob("*")) if p.is_file()}


def _old_target(tmp_path: Path) -> Path:
    target = tmp_path / "out"
    (target / "sub").mkdir(parents=True)
    (target / "a.txt").write_text("old a")
    (target / "sub" / "b.txt").write_text("old b")
    return target


def test_success_creates_the_target(tmp_path: Path):
    target = tmp_path / "deep" / "out"
    with staged_folder(target) as staging:
        assert staging.parent == target.parent and staging.is_dir() and not any(staging.iterdir())
        assert not target.exists()  # nothing appears before the body is done
        (staging / "x.txt").write_text("new")
    assert _tree(target) == {"x.txt": "new"}
    assert [p.name for p in target.parent.iterdir()] == ["out"]  # no staging left


def test_success_replaces_the_whole_target(tmp_path: Path):
    target = _old_target(tmp_path)
    with staged_folder(target) as staging:
        assert _tree(target) == {"a.txt": "old a", "sub/b.txt": "old b"}  # untouched while staging
        (staging / "c.txt").write_text("new c")
    assert _tree(target) == {"c.txt": "new c"}  # nothing of the old one survives
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_failure_leaves_the_old_target_untouched(tmp_path: Path):
    target = _old_target(tmp_path)
    with pytest.raises(RuntimeError, match="boom"), staged_folder(target) as staging:
        (staging / "a.txt").write_text("half-written")
        raise RuntimeError("boom")
    assert _tree(target) == {"a.txt": "old a", "sub/b.txt": "old b"}
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_failure_without_a_target_leaves_nothing(tmp_path: Path):
    with pytest.raises(KeyboardInterrupt), staged_folder(tmp_path / "out") as staging:
        (staging / "a.txt").write_text("half-written")
        raise KeyboardInterrupt
    assert not any(tmp_path.iterdir())


def test_a_failed_swap_puts_the_old_target_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    target = _old_target(tmp_path)
    real_rename = Path.rename

    def rename(self: Path, dest):
        if Path(dest) == target and self.name.endswith(".staging"):
            raise OSError("disk trouble")
        return real_rename(self, dest)

    def replace(src, dst):
        raise OSError("directory not empty")

    monkeypatch.setattr(Path, "rename", rename)
    monkeypatch.setattr(fileio.os, "replace", replace)
    with pytest.raises(OSError, match="disk trouble"), staged_folder(target) as staging:
        (staging / "a.txt").write_text("new a")
    assert _tree(target) == {"a.txt": "old a", "sub/b.txt": "old b"}
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_keep_leaves_a_finished_target_that_won_the_race(tmp_path: Path):
    target = tmp_path / "model"
    with staged_folder(target, keep=lambda t: (t / "done").is_file()) as staging:
        (staging / "done").write_text("ours")
        target.mkdir()  # a concurrent builder finishes first
        (target / "done").write_text("theirs")
    assert _tree(target) == {"done": "theirs"}
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


def test_keep_replaces_an_unfinished_target(tmp_path: Path):
    target = tmp_path / "model"
    target.mkdir()
    (target / "partial").write_text("left by a crash")
    with staged_folder(target, keep=lambda t: (t / "done").is_file()) as staging:
        (staging / "done").write_text("ours")
    assert _tree(target) == {"done": "ours"}
    assert [p.name for p in tmp_path.iterdir()] == ["model"]
