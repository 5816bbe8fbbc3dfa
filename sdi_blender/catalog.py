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
TEXTURE_JOB = "texture.json"
"""A texture run's source mesh and how it sits in the scene box (``sdi-blender texture``)."""
TEXTURE_IMAGE = "albedo.png"
"""The baked texture, beside a texture run's ``export/mesh.glb`` (which embeds it too)."""

# -- variations: one run per seed in one folder ----------------------------------------------
VARIATIONS_SHEET = "variations.png"
"""The contact sheet of a variations folder: each seed's turntable, labelled."""
MAX_VARIATIONS = 16
"""The most seeds one ``generate --seeds`` trains."""


def variation_folder(seed: int) -> str:
    """The run folder of one seed inside a variations folder, e.g. ``seed-2``."""
    return f"seed-{seed}"


def parse_seeds(text: str, limit: int = MAX_VARIATIONS) -> list[int]:
    """Seeds from "0-3" (inclusive), "0,2,5" or "7", at most ``limit``; ValueError says what is
    wrong, in one line."""
    seeds: list[int] = []
    for part in text.split(","):
        lo, sep, hi = part.strip().partition("-")
        if not (lo.isdigit() and (hi.isdigit() or not sep)):
            raise ValueError(f"seeds must look like 0-3, 0,2,5 or 7, got '{text}'")
        first, last = int(lo), int(hi) if sep else int(lo)
        if last < first:
            raise ValueError(f"the seed range {part.strip()} runs backwards; write {last}-{first}")
        seeds += range(first, min(last, first + limit) + 1)
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds '{text}' name a seed twice")
    if len(seeds) > limit:
        raise ValueError(f"at most {limit} seeds at once, got {text}")
    return seeds


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
MODELS: dict[str, tuple[str, str]] = {
    DEFAULT_MODEL: ("Stable Diffusion 2.1 base", "The paper's model (downloaded once, about 5 GB; wants a GPU)"),
    TOYWORLD: ("Toy world", "Built in: a handful of known objects, for seeing the method work on a CPU"),
    TINY: ("Tiny (install check)", "Built in: random weights, only to check that everything runs"),
}
"""The models a menu offers (id → label, description); any other hub id or folder works too."""
MODEL_HELP = f"hub id (default {DEFAULT_MODEL}), local diffusers directory, '{TINY}' or '{TOYWORLD}' (built in)"
"""``--model``'s help, the same for every command that takes it."""

METHODS: dict[str, str] = {
    "sdi": "Noise by DDIM inversion of the render (the paper): sharper",
    "sds": "Score Distillation Sampling with random noise: the classic baseline",
}
"""Score-distillation methods and what each does; the first is the default."""
DEFAULT_METHOD = "sdi"

DEVICES: dict[str, tuple[str, str]] = {
    "auto": ("Auto", "CUDA if available, else the CPU"),
    "cuda": ("CUDA", "The (first) NVIDIA GPU"),
    "cpu": ("CPU", "The processor: fine for the toy world and the tiny model, hours for Stable Diffusion"),
}
"""The devices a menu offers (name → label, description); ``--device`` also takes ``cuda:N``."""
DEVICE_HELP = "auto (CUDA if available), cpu, cuda or cuda:N"
"""What ``--device`` accepts, in every command and the server (the :data:`DEVICES` and ``cuda:N``)."""


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
    "paper": Preset("Paper", 10_000, 512, "The paper's 10,000 steps at 512 px: its full quality"),
    "test": Preset(
        "Install check (tiny model)", 30, 64, "30 steps at 64 px with the tiny model: checks the install only", TINY
    ),
    "toy": Preset(
        "Toy world",
        600,
        32,
        "600 steps at 32 px with the built-in toy world (model 'toyworld'): a known object",
        TOYWORLD,
    ),
}
DEFAULT_PRESET = "standard"
"""The CLI's and the server's preset when none is given."""


# -- what a run costs ------------------------------------------------------------------------
STEP_SECONDS: dict[tuple[str, str, str], tuple[float, str]] = {
    ("cpu", "test", TINY): (0.16, "measured, 2-core CPU (bench/results/cpu-step-2026-12-02.json)"),
    ("cpu", "toy", TOYWORLD): (0.043, "measured, 1 thread of a 2-core CPU (bench/results/toy-world-2026-12-02.json)"),
    ("cuda", "paper", "stable-diffusion"): (0.71, "the paper's A6000 figure (119 min per 10,000 SDI steps)"),
}
"""Seconds per training step by (device kind, preset, model kind), with where the figure comes
from. Rows that are missing are unmeasured; GPU rows are filled in when a GPU run measures them."""


PEAK_VRAM_GB: dict[str, tuple[float, str]] = {
    "paper": (39.2, "estimate: the paper's SDI figure (Table 1, A6000) at these settings"),
    "standard": (39.2, "estimate: the paper's per-step settings, so its figure"),
    "draft": (12.0, "estimate: the paper's figure scaled by a quarter of the pixels, plus the models"),
    "test": (1.0, "estimate: the tiny model at 64 px"),
    "toy": (1.0, "estimate: the toy world at 32 px"),
}
"""Estimated peak GPU memory of one SDI training step per preset in GB, with where the figure
comes from; estimates until ``bench/gpu_step.py`` measures them (its ``sdi.peak_vram_gb``)."""


def suggest_preset(free_gb: float, wanted: str) -> str | None:
    """``None`` when ``wanted`` fits in ``free_gb`` of GPU memory, else the preset for the same
    model with the largest estimated peak that fits; when none fits, the smallest for that model
    (``wanted`` itself if it is the smallest; the trainer then lowers its render chunk and
    samples per ray on out-of-memory)."""
    if PEAK_VRAM_GB[wanted][0] <= free_gb:
        return None
    same_model = sorted(
        (PEAK_VRAM_GB[name][0], name) for name in PEAK_VRAM_GB if PRESETS[name].model == PRESETS[wanted].model
    )
    fitting = [name for need, name in same_model if need <= free_gb]
    return fitting[-1] if fitting else same_model[0][1]


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
