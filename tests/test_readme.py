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


def test_main_command_goes_from_prompt_to_textured_mesh_with_the_default_model():
    setup, *steps = _top_commands()[0].split(" && ")
    assert setup == "python vendor_setup.py"
    parsed = []
    for step in steps:
        argv = shlex.split(step)
        assert argv[0] == ".venv/bin/sdi-blender"
        parsed.append(build_parser().parse_args(argv[1:]))  # each command line is valid
    generate, export = parsed
    assert generate.command == "generate" and generate.model is None  # None: the paper's model
    assert export.command == "export" and export.run == generate.out


def test_ci_runs_the_test_command_verbatim():
    test_cmd = _top_commands()[1]
    assert test_cmd.startswith("python vendor_setup.py --dev && ")
    assert "pytest" in test_cmd
    # Lint, format check and types run before the tests, on the whole tree.
    for check in (".venv/bin/ruff check .", ".venv/bin/ruff format --check .", ".venv/bin/mypy"):
        assert check in test_cmd
    ci = (REPO / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    assert test_cmd in ci


def _readme_command_lines() -> list[str]:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```(?:bash|sh)?\n(.*?)```", text, re.S)
    return [line for block in blocks for line in block.splitlines() if "sdi-blender " in line]


def test_every_readme_command_runs_as_written():
    """Each sdi-blender line names the venv's program (no activation assumed) and parses."""
    lines = _readme_command_lines()
    assert len(lines) > 10
    for line in lines:
        for part in line.split(" && "):
            argv = shlex.split(part, comments=True)
            if not argv or argv[0] != ".venv/bin/sdi-blender":
                assert "sdi-blender" not in argv[:1], line
                continue
            build_parser().parse_args(argv[1:])  # a usage error raises SystemExit
