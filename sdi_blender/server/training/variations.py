"""Variations: one prompt trained with several seeds, one normal run per seed in one folder, and a
contact sheet of their turntables.

Each variation is an ordinary run in ``FOLDER/seed-N`` (:func:`sdi_blender.catalog.variation_folder`):
resumable, exportable, and promoted by continuing it (``generate --resume FOLDER/seed-N --steps …``
or ``--preset …``). The CLI's ``generate --seeds`` and the server share the planning and the sheet.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from PIL import Image

from ...catalog import VARIATIONS_SHEET, variation_folder
from ...errors import UserError
from ..util.fileio import atomic_write
from ..util.images import png_bytes
from . import run_dir
from .config import TrainConfig
from .plan import GenerateRequest, plan_run
from .reports import titled


def plan_variations(req: GenerateRequest, seeds: list[int]) -> list[tuple[GenerateRequest, TrainConfig]]:
    """Each seed's run request (``req`` with its own folder and seed) and config, all checked
    before the first one trains; touches no file."""
    if req.resume:
        raise UserError("seeds start new runs", hint="continue one variation with --resume FOLDER/seed-N")
    if not seeds:
        raise UserError("no seeds given", hint="e.g. --seeds 0-3")
    runs = [
        replace(req, out=req.out / variation_folder(seed), settings={**(req.settings or {}), "seed": seed})
        for seed in seeds
    ]
    return [(run, plan_run(run)[0]) for run in runs]


def contact_sheet(runs: list[Path], seeds: list[int]) -> Image.Image:
    """The runs' turntables, one row per run, each under its seed."""
    rows = []
    for run, seed in zip(runs, seeds):
        with Image.open(run / run_dir.TURNTABLE) as image:
            rows.append(titled(image, f"seed {seed}"))
    sheet = Image.new("RGB", (max(r.width for r in rows), sum(r.height for r in rows)), (255, 255, 255))
    for k, row in enumerate(rows):
        sheet.paste(row, (0, sum(r.height for r in rows[:k])))
    return sheet


def write_contact_sheet(folder: Path, runs: list[Path], seeds: list[int]) -> Path:
    """Write ``folder/variations.png`` (atomically); returns its path."""
    path = folder / VARIATIONS_SHEET
    atomic_write(path, png_bytes(contact_sheet(runs, seeds)))
    return path
