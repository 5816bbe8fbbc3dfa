"""What a run costs, said before it starts: the estimate table, --help, the start line."""

from __future__ import annotations

from pathlib import Path

import torch

from sdi_blender import catalog
from sdi_blender.cli import PRESET_HELP
from sdi_blender.server.commands.generate import start_lines
from sdi_blender.server.training.config import PRESETS, make_config


def test_every_preset_has_a_cost_for_cpu_and_gpu_and_help_shows_it() -> None:
    assert set(catalog.PRESETS) == set(PRESETS)  # the add-on, the CLI and the server agree
    for name in catalog.PRESETS:
        costs = catalog.preset_costs(name)
        assert costs.startswith("CPU ") and ", GPU " in costs
        assert costs in PRESET_HELP
    assert catalog.preset_costs("toy") == "CPU about 26 s, GPU unmeasured"  # 600 × 0.043 s measured
    assert catalog.preset_costs("standard").startswith("CPU hours")


def test_the_start_line_names_the_run_and_its_cost() -> None:
    config = make_config("an orange box with a blue ball on its front", "toy")
    first, cost = start_lines(config, torch.device("cpu"), Path("runs/box"), config.steps)
    assert "model toyworld" in first and "600 steps at 32 px on cpu" in first and "runs/box" in first
    assert cost.startswith("estimated: about 26 s (0.04 s/step, measured")


def test_stable_diffusion_on_a_cpu_is_warned_about() -> None:
    config = make_config("a ripe strawberry", "draft")
    lines = start_lines(config, torch.device("cpu"), Path("runs/s"), config.steps)
    assert lines[1] == "estimated: many hours on a CPU (unmeasured; Stable Diffusion wants a GPU)"
    assert lines[2].startswith("warning: Stable Diffusion on a CPU takes many hours")
    gpu = start_lines(config, torch.device("cuda"), Path("runs/s"), config.steps)
    assert len(gpu) == 2 and "unmeasured for Draft on cuda" in gpu[1]


def test_every_preset_has_a_vram_estimate_and_a_smaller_one_is_suggested_when_it_does_not_fit() -> None:
    assert set(catalog.PEAK_VRAM_GB) == set(catalog.PRESETS)
    assert all(source.startswith("estimate") for _, source in catalog.PEAK_VRAM_GB.values())
    assert catalog.suggest_preset(80.0, "paper") is None  # fits
    assert catalog.suggest_preset(catalog.PEAK_VRAM_GB["paper"][0], "paper") is None  # exactly fits
    assert catalog.suggest_preset(24.0, "paper") == "draft"  # the largest that fits
    assert catalog.suggest_preset(24.0, "draft") is None
    assert catalog.suggest_preset(4.0, "standard") == "draft"  # none fits: the smallest for its model
    assert catalog.suggest_preset(0.5, "toy") == "toy"  # never a preset meant for another model
