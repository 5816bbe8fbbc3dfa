"""The checkpoint module: the one reader of checkpoints, safe against planted files."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch

from sdi_blender.errors import UserError
from sdi_blender.server.training import checkpoint


class _Planted:
    """Unpickling this runs code: it touches ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_planted_pickle_is_refused_without_running_it(tmp_path: Path) -> None:
    marker, path = tmp_path / "ran", tmp_path / "last.pt"
    torch.save({"format": checkpoint.FORMAT, "step": 1, "payload": _Planted(marker)}, path)
    with pytest.raises(UserError, match="cannot read checkpoint"):
        checkpoint.read(path)
    assert not marker.exists()
    # The same file unpickled unsafely would have run it: the test can fail.
    torch.load(path, weights_only=False)
    assert marker.exists()


def test_what_the_trainer_saves_reads_back(tmp_path: Path) -> None:
    gen = torch.Generator().manual_seed(3)
    state = {
        "step": 7,
        "config": {"prompt": "x"},
        "field": {"w": torch.ones(2)},
        "history": [{"step": 1, "loss": 0.5}],
        "gen_cpu": gen.get_state(),
        "scaler": {},
    }
    checkpoint.save(tmp_path / "last.pt", state)
    back = checkpoint.read(tmp_path / "last.pt")
    assert back["format"] == checkpoint.FORMAT and back["step"] == 7
    torch.testing.assert_close(back["gen_cpu"], gen.get_state())


@pytest.mark.parametrize("content", [b"", b"not a checkpoint", pickle.dumps({"format": 1})[:5]])
def test_truncated_or_foreign_files_are_one_line_errors(tmp_path: Path, content: bytes) -> None:
    (tmp_path / "last.pt").write_bytes(content)
    with pytest.raises(UserError, match="cannot read checkpoint") as info:
        checkpoint.read(tmp_path / "last.pt")
    assert "\n" not in str(info.value)


def test_another_format_is_refused(tmp_path: Path) -> None:
    torch.save({"format": checkpoint.FORMAT + 1}, tmp_path / "last.pt")
    with pytest.raises(UserError, match="unknown format"):
        checkpoint.read(tmp_path / "last.pt")


def test_weights_that_do_not_fit_name_the_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="does not match the run's field settings"):
        checkpoint.load_into(
            torch.nn.Linear(2, 2), {"weight": torch.ones(3, 3)}, tmp_path / "last.pt", "field settings"
        )


def test_a_programming_error_is_not_dressed_as_a_bad_checkpoint(tmp_path: Path) -> None:
    class Broken(torch.nn.Module):
        def load_state_dict(self, *args, **kwargs):  # type: ignore[override]
            raise ZeroDivisionError("bug")

    with pytest.raises(ZeroDivisionError):
        checkpoint.load_into(Broken(), {}, tmp_path / "last.pt", "field settings")
