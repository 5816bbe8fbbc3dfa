"""The README's top shows exactly the two commands, and CI runs the second verbatim."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from sdi_blender.cli import build_parser

REPO = Path(__file__).resolve().parents[1]


def _top_commands() -> list[str]:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    first_section = text.split("\n## ", 1)[0]
    return [block.strip() for block in re.findall(r"```(?:bash|sh)?\n(.*?)```", first_section, re.S)]


def test_readme_top_has_exactly_two_one_line_commands():
    commands = _top_commands()
    assert len(commands) == 2
    assert all("\n" not in c for c in commands)


def test_main_command_sets_up_and_runs_distill2d_with_the_default_model():
    main_cmd = _top_commands()[0]
    setup, _, run = main_cmd.partition(" && ")
    assert setup == "python vendor_setup.py"
    argv = shlex.split(run)
    assert argv[0] == ".venv/bin/sdi-blender"
    args = build_parser().parse_args(argv[1:])  # the command line is valid
    assert args.command == "distill2d" and args.model is None  # None: the paper's default model


def test_ci_runs_the_test_command_verbatim():
    test_cmd = _top_commands()[1]
    assert test_cmd.startswith("python vendor_setup.py --dev && ")
    assert "pytest" in test_cmd
    ci = (REPO / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    assert test_cmd in ci
