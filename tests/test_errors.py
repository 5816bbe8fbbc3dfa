"""Hints name commands that run as written (errors.program)."""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from sdi_blender import errors


def _fake_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, on_path: bool) -> Path:
    """A venv-like bin folder holding python and an ``sdi-blender`` script."""
    bin_dir = tmp_path / "venv" / "bin"
    bin_dir.mkdir(parents=True)
    script = bin_dir / "sdi-blender"
    script.write_text("#!/bin/sh\necho ran\n")
    script.chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(bin_dir / "python"))
    monkeypatch.setenv("PATH", str(bin_dir) if on_path else "/usr/bin:/bin")
    return script


def test_a_venv_script_not_on_path_is_named_by_a_path_that_runs(tmp_path, monkeypatch):
    script = _fake_env(tmp_path, monkeypatch, on_path=False)
    monkeypatch.chdir(tmp_path)
    typed = errors.program("sdi-blender")
    assert typed == "venv/bin/sdi-blender"
    out = subprocess.run(shlex.split(typed), capture_output=True, text=True, cwd=tmp_path, check=True).stdout
    assert out.strip() == "ran" and script.exists()


def test_outside_the_working_directory_the_path_is_absolute(tmp_path, monkeypatch):
    script = _fake_env(tmp_path, monkeypatch, on_path=False)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert errors.program("sdi-blender") == str(script)


def test_an_activated_venv_gets_the_bare_name(tmp_path, monkeypatch):
    _fake_env(tmp_path, monkeypatch, on_path=True)
    assert errors.program("sdi-blender") == "sdi-blender"


def test_a_program_this_environment_lacks_keeps_its_name(tmp_path, monkeypatch):
    _fake_env(tmp_path, monkeypatch, on_path=False)
    assert errors.program("hf-not-installed") == "hf-not-installed"
