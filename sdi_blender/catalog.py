"""What the add-on, the CLI and the server must agree on, in one torch-free place.

The run folder's names, the presets (steps, resolution, what each is for), the default and
built-in models and the methods. The add-on imports this module inside Blender, so it imports
nothing beyond the standard library; the server's presets
(:data:`sdi_blender.server.training.config.PRESETS`) take their steps and resolution from here.
"""

from __future__ import annotations

from dataclasses import dataclass

# -- the run folder (one per job; see sdi_blender.server.training.run_dir) ----------------------
CONFIG = "config.json"
"""The run's :class:`~sdi_blender.server.training.config.TrainConfig`."""
STATE = "state.json"
"""Status and step."""
CHECKPOINT = "checkpoints/last.pt"
"""Weights, optimiser and generators (:mod:`sdi_blender.server.training.checkpoint`)."""
METRICS = "metrics.jsonl"
"""Loss terms per logged step."""
PREVIEWS = "previews"
"""``step_NNNNNN.png`` while training."""
LOSS_CURVE = "loss_curve.png"
TURNTABLE = "turntable.png"
EXPORT_DIR = "export"
"""Where the textured mesh goes."""
MESH_STEM = "mesh"
"""The exported mesh's file name without suffix: ``mesh.glb`` or ``mesh.obj``."""
EXPORT_FORMATS = ("glb", "obj")


def mesh_file(fmt: str = "glb") -> str:
    """The exported mesh's path inside a run folder, e.g. ``export/mesh.glb``."""
    return f"{EXPORT_DIR}/{MESH_STEM}.{fmt}"


# -- models and methods --------------------------------------------------------------------
DEFAULT_MODEL = "stabilityai/stable-diffusion-2-1-base"
"""The paper's model."""
TINY = "tiny"
"""Built-in random-weight Stable Diffusion architecture, for plumbing tests (proves nothing)."""
TOYWORLD = "toyworld"
"""Built-in exact denoiser of known objects, whose right answer is known."""
BUILTIN_MODELS = (TINY, TOYWORLD)

METHODS: dict[str, str] = {
    "sdi": "Noise by DDIM inversion of the render (the paper): sharper",
    "sds": "Score Distillation Sampling with random noise: the classic baseline",
}
"""Score-distillation methods and what each does; the first is the default."""
DEFAULT_METHOD = "sdi"

DEVICE_HELP = "auto (CUDA if available), cpu, cuda or cuda:N"
"""What ``--device`` accepts, in every command and the server."""


# -- presets -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Preset:
    """A named starting point for a run's settings."""

    label: str
    """What the panel shows."""
    steps: int
    resolution: int
    """Render width and height in pixels."""
    description: str
    """One line on what it is for."""
    model: str = DEFAULT_MODEL
    """The model it is meant for (its cost is quoted for that one)."""


PRESETS: dict[str, Preset] = {
    "draft": Preset("Draft", 2000, 256, "2,000 steps at 256 px: a quick look"),
    "standard": Preset("Standard", 5000, 512, "5,000 steps at 512 px: most of the quality in half the time"),
    "paper": Preset("Paper", 10_000, 512, "The paper's 10,000 steps at 512 px"),
    "test": Preset("Test", 30, 64, "30 steps at 64 px, for checking an install with the tiny model", TINY),
    "toy": Preset(
        "Toy world",
        400,
        32,
        "400 steps at 32 px with the built-in toy world (model 'toyworld'): a known object",
        TOYWORLD,
    ),
}
DEFAULT_PRESET = "standard"
"""The CLI's and the server's preset when none is given."""


# -- what a run costs ------------------------------------------------------------------------
STEP_SECONDS: dict[tuple[str, str, str], tuple[float, str]] = {
    ("cpu", "test", TINY): (0.86, "measured, 2-core CPU (bench/results/cpu-step-2026-11-26.json)"),
    ("cpu", "toy", TOYWORLD): (0.22, "measured, 2-core CPU (bench/results/toy-world-2026-12-01.json)"),
    ("cuda", "paper", "stable-diffusion"): (0.71, "the paper's A6000 figure (119 min per 10,000 SDI steps)"),
}
"""Seconds per training step by (device kind, preset, model kind), with where the figure comes
from. Rows that are missing are unmeasured; GPU rows are filled in when a GPU run measures them."""


def model_kind(model: str) -> str:
    """``tiny``, ``toyworld``, or ``stable-diffusion`` for any other (hub id or folder)."""
    return model if model in BUILTIN_MODELS else "stable-diffusion"


def estimate(preset: str, device_kind: str, model: str, steps: int | None = None, detail: bool = True) -> str:
    """A run's estimated time in words, e.g. "about 2 min (0.22 s/step, measured, …)";
    without ``detail`` only the time ("about 2 min", "hours", "unmeasured")."""
    steps = PRESETS[preset].steps if steps is None else steps
    row = STEP_SECONDS.get((device_kind, preset, model_kind(model)))
    if row is not None:
        seconds, source = row
        took = f"about {_duration(seconds * steps)}"
        return f"{took} ({seconds:.2f} s/step, {source})" if detail else took
    if device_kind == "cpu" and model_kind(model) == "stable-diffusion":
        return "many hours on a CPU (unmeasured; Stable Diffusion wants a GPU)" if detail else "hours"
    return f"unmeasured for {PRESETS[preset].label} on {device_kind}" if detail else "unmeasured"


def _duration(seconds: float) -> str:
    if seconds < 5:
        return "a few seconds"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def preset_costs(name: str) -> str:
    """What a preset costs with its model, on a CPU and on a GPU, in one line."""
    model = PRESETS[name].model
    return f"CPU {estimate(name, 'cpu', model, detail=False)}, GPU {estimate(name, 'cuda', model, detail=False)}"
