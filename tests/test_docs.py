"""The project's documentation is self-contained: docs/algorithm.md, nothing outside the repository."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# Split so that this file does not match itself.
OUTSIDE = re.compile(r"\.\./" "shared|shared/" "reference")


def _project_files() -> list[Path]:
    top = [p for p in REPO.iterdir() if p.is_file()]
    nested = [p for d in ("sdi_blender", "tests", "bench", "docs") for p in (REPO / d).rglob("*")]
    return [p for p in top + nested if p.suffix in {".py", ".md", ".toml"}]


def test_no_project_file_refers_outside_the_repository():
    offenders = [str(p.relative_to(REPO)) for p in _project_files() if OUTSIDE.search(p.read_text(encoding="utf-8"))]
    assert not offenders


def test_the_algorithm_page_exists_and_is_referenced():
    assert (REPO / "docs" / "algorithm.md").is_file()
    text = (REPO / "sdi_blender" / "server" / "training" / "config.py").read_text(encoding="utf-8")
    assert "docs/algorithm.md" in text
