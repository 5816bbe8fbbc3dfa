"""The ``batch`` command's jobs file and ``--seeds`` ranges, read and checked before anything starts.

``.txt``: one prompt per line; blank lines and lines starting with ``#`` are ignored. ``.json``: a
list of objects with a ``prompt`` and optionally ``name``, ``seeds``, ``preset``, ``method``,
``model`` and ``negative_prompt`` (a job's own values win over the command line's). Every mistake
is one :class:`UserError` naming the file and the line or job.
"""

from __future__ import annotations

import difflib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ... import catalog
from ...errors import UserError
from .reuse import slug

KEYS = ("prompt", "name", "seeds", "preset", "method", "model", "negative_prompt")
"""What a job of a ``.json`` batch file may say."""
MAX_SEEDS = 1000
"""Seeds one job may have: more is surely a typo (``0-10000``)."""
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,79}")


@dataclass(frozen=True)
class BatchJob:
    """One prompt of a batch file: trained once per seed."""

    prompt: str
    """What the object should be."""
    name: str
    """Names its run folders, ``<name>-seed<k>``: given, or the prompt as a folder name."""
    where: str
    """Where it is in the file, for messages: ``props.txt line 3`` or ``props.json job 2``."""
    seeds: tuple[int, ...] | None = None
    """Its own seeds; None: the command line's."""
    preset: str | None = None
    """Its own preset; None: the command line's."""
    method: str | None = None
    """Its own method; None: the command line's."""
    model: str | None = None
    """Its own model; None: the command line's (or the preset's)."""
    negative_prompt: str | None = None
    """CFG's unconditional prompt; None: the default."""


def parse_seeds(text: str, where: str = "--seeds") -> tuple[int, ...]:
    """``0-3`` → 0, 1, 2, 3; ``5``; ``0,2,7-9`` (:func:`~sdi_blender.catalog.parse_seeds`, at most
    :data:`MAX_SEEDS`)."""
    try:
        return tuple(catalog.parse_seeds(text, MAX_SEEDS))
    except ValueError as exc:
        raise UserError(f"{where}: {exc}") from None


def read_jobs(path: Path) -> list[BatchJob]:
    """The jobs of a ``.txt`` or ``.json`` batch file, checked (names unique)."""
    if path.suffix.lower() not in (".txt", ".json"):
        raise UserError(
            f"batch file '{path}' is neither .txt nor .json",
            hint="one prompt per line in a .txt, or a list of jobs in a .json",
        )
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"no batch file '{path}'") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read the batch file '{path}': {exc}") from exc
    jobs = _json_jobs(path, text) if path.suffix.lower() == ".json" else _text_jobs(path, text)
    _check_unique(path, jobs)
    return jobs


def _text_jobs(path: Path, text: str) -> list[BatchJob]:
    lines = [(i, line.strip()) for i, line in enumerate(text.splitlines(), start=1)]
    jobs = [BatchJob(line, slug(line), f"{path.name} line {i}") for i, line in lines if line and line[0] != "#"]
    if not jobs:
        raise UserError(
            f"batch file '{path}' holds no prompts", hint="write one prompt per line (blank and # lines are ignored)"
        )
    return jobs


def _json_jobs(path: Path, text: str) -> list[BatchJob]:
    if not text.strip():
        raise UserError(f"batch file '{path}' is empty", hint='write a list of jobs: [{"prompt": "a red apple"}]')
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise UserError(f"batch file '{path}' is not valid JSON: {exc}") from None
    if not isinstance(data, list) or not data:
        raise UserError(
            f"batch file '{path}' must hold a non-empty list of jobs", hint='e.g. [{"prompt": "a red apple"}]'
        )
    return [_json_job(item, f"{path.name} job {i}") for i, item in enumerate(data, start=1)]


def _json_job(item: Any, where: str) -> BatchJob:
    if not isinstance(item, dict):
        raise UserError(f"{where} is not an object", hint='write each job as {"prompt": "…"}')
    for key in item:
        if key not in KEYS:
            near = difflib.get_close_matches(key, KEYS, n=1)
            raise UserError(
                f"{where}: unknown key '{key}'",
                hint=f"did you mean '{near[0]}'?" if near else f"a job may have {', '.join(KEYS)}",
            )
    values = {k: _text(item, k, where) for k in KEYS if k != "seeds"}
    if not (values["prompt"] or "").strip():
        raise UserError(f"{where} has no prompt", hint='every job needs a "prompt"')
    _check_choice(values["preset"], catalog.PRESETS, "preset", where)
    _check_choice(values["method"], catalog.METHODS, "method", where)
    name = values["name"]
    if name is not None and not _NAME.fullmatch(name):
        raise UserError(
            f"{where}: '{name}' cannot name run folders",
            hint="use up to 80 letters, digits, '.', '_' or '-', starting with a letter or digit",
        )
    prompt = values["prompt"]
    assert prompt is not None  # checked above
    return BatchJob(
        prompt=prompt,
        name=name or slug(prompt),
        where=where,
        seeds=_seeds(item.get("seeds"), where),
        preset=values["preset"],
        method=values["method"],
        model=values["model"],
        negative_prompt=values["negative_prompt"],
    )


def _text(item: dict, key: str, where: str) -> str | None:
    value = item.get(key)
    if value is not None and not isinstance(value, str):
        raise UserError(f"{where}: '{key}' must be a string, got {json.dumps(value)}")
    return value


def _seeds(value: Any, where: str) -> tuple[int, ...] | None:
    if value is None:
        return None
    if isinstance(value, str):
        return parse_seeds(value, f"{where} seeds")
    if isinstance(value, list) and value and all(isinstance(s, int) and not isinstance(s, bool) for s in value):
        return parse_seeds(",".join(map(str, value)), f"{where} seeds")
    raise UserError(f"{where}: 'seeds' must be a range such as \"0-3\" or a list of seeds, got {json.dumps(value)}")


def _check_choice(value: str | None, choices: dict, what: str, where: str) -> None:
    if value is not None and value not in choices:
        near = difflib.get_close_matches(value, list(choices), n=1)
        raise UserError(
            f"{where}: unknown {what} '{value}'",
            hint=(f"did you mean {near[0]}? " if near else "") + f"choose one of {', '.join(choices)}",
        )


def _check_unique(path: Path, jobs: list[BatchJob]) -> None:
    seen: dict[str, BatchJob] = {}
    how = "give each its own" if path.suffix.lower() == ".json" else 'give them "name"s in a .json batch file'
    for job in jobs:
        if job.name in seen:
            raise UserError(
                f"{job.where}: the name '{job.name}' is taken by {seen[job.name].where.split(' ', 1)[1]}",
                hint=f"names are the run folders' names; {how}",
            )
        seen[job.name] = job
