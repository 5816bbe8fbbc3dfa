"""The text-to-3D run's configuration: one dataclass tree, quality presets, JSON round trip.

Defaults are the official SDI configuration (``docs/algorithm.md``).
Schedules (ambient-only shading, progressive hash-grid levels, the regulariser ramps)
are written for the paper's 10,000 steps and stretched to a run's ``schedule_steps``,
so a short preset passes through the same phases.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass
from typing import Any

from ... import catalog
from ...catalog import DEFAULT_MODEL
from ...errors import UserError
from ..diffusion.prior import SpeedConfig
from ..scene.background import BackgroundConfig
from ..scene.cameras import CameraConfig
from ..scene.encoding import KERNELS
from ..scene.field import FieldConfig
from ..scene.renderer import RendererConfig
from ..scene.shading import ShadingConfig
from ..toyworld.objects import TOY_CAMERAS, check_toy_prompt
from .init_mesh import InitMesh
from .regularizers import LossWeights

PAPER_STEPS = 10_000
"""The length of the official run; every schedule is defined in its steps."""


def _shared(name: str) -> dict[str, int]:
    """A preset's steps and resolution, which the add-on shows too (:data:`sdi_blender.catalog.PRESETS`)."""
    return {"steps": catalog.PRESETS[name].steps, "resolution": catalog.PRESETS[name].resolution}


TOY_GUIDANCE_WEIGHT = (7.5 + 1) / (0.0 + 1)
"""λ of the toy preset's guidance loss: the paper's effective CFG weight over the toy's (8.5)."""

PRESETS: dict[str, dict[str, Any]] = {
    # ~30 steps at 64×64, for tests and checking an install (with --model tiny).
    "test": {
        **_shared("test"),
        "renderer.num_samples_per_ray": 32,
        "field.log2_hashmap_size": 16,
        "preview_every": 10,
        "checkpoint_every": 10,
        "preview_size": 64,
        "turntable_views": 4,
    },
    # The built-in toy world (an exact denoiser of known objects) at its 32×32 pictures: the
    # end-to-end proof that a prompt comes out as the right object, on a CPU in under a minute.
    # Its prior is exact, so CFG 0 (the conditional alone) and no Perp-Neg, and SDI's inversion
    # guidance mirrors that about the unconditional model, as the paper's 7.5 / −7.5 do with
    # Perp-Neg: −2 in the plain convention is ε_u − (ε_c − ε_u); its cameras are the
    # ones its pictures cover (TOY_CAMERAS); its objects fit a box of radius 1 (half the samples
    # of the official radius 2 at the same spacing); see docs/toy-world.md.
    "toy": {
        "model": "toyworld",
        **_shared("toy"),
        "renderer.num_samples_per_ray": 32,
        "field.radius": 1.0,
        "field.log2_hashmap_size": 16,
        "preview_every": 100,
        "checkpoint_every": 200,
        "preview_size": 64,
        "turntable_views": 4,
        "guidance_scale": 0.0,
        "inversion_guidance_scale": -2.0,
        # The paper's regulariser weights are balanced against guidance that weighs ε_c − ε_u by
        # 8.5 (7.5 in the plain convention); the toy guidance weighs it by 1, so the guidance
        # loss is weighted 8.5 to keep that balance (docs/toy-world.md).
        "losses.guidance": TOY_GUIDANCE_WEIGHT,
        "perp_neg": False,
        **{f"cameras.{k}": v for k, v in TOY_CAMERAS.items()},
    },
    # A quick look: a fifth of the paper's steps at half its resolution.
    "draft": {**_shared("draft"), "renderer.num_samples_per_ray": 256},
    # Half the paper's steps at full resolution: most of the quality in half the time.
    "standard": {**_shared("standard"), "renderer.num_samples_per_ray": 512},
    # The paper: 10,000 steps at 512×512 with 512 samples per ray.
    "paper": {**_shared("paper"), "renderer.num_samples_per_ray": 512},
}
DEFAULT_PRESET = catalog.DEFAULT_PRESET


@dataclass
class TrainConfig:
    """Everything that defines a text-to-3D run; saved as ``config.json`` in the run folder."""

    prompt: str
    """What the object should be."""
    negative_prompt: str = ""
    """CFG's unconditional prompt."""
    method: str = "sdi"
    """"sdi" (noise by DDIM inversion of the render, the paper) or "sds" (i.i.d. noise)."""
    model: str = DEFAULT_MODEL
    """Diffusion model: hub id, local diffusers directory, "tiny" (random weights, plumbing
    checks) or "toyworld" (an exact denoiser of known objects: the prompt must be a toy prompt)."""
    preset: str = DEFAULT_PRESET
    """The preset the settings started from (test, draft, standard, paper)."""
    steps: int = PAPER_STEPS
    """Optimisation steps to train in total."""
    schedule_steps: int = PAPER_STEPS
    """Length of the schedules (t annealing and the paper's phases); steps past it stay at
    the schedules' final values, which is how a continued run refines."""
    resolution: int = 512
    """Render width and height in pixels (a multiple of 8); resized to the model's native size."""
    batch_size: int = 1
    """Cameras rendered per step."""
    seed: int = 0
    """Seeds the field's initialisation and every random draw of the run."""
    guidance_scale: float = 7.5
    """CFG scale of the denoising prediction."""
    inversion_guidance_scale: float = -7.5
    """CFG scale of SDI's DDIM inversion."""
    inversion_step: int = 100
    """Stride of SDI's inversion grid (10 steps over T = 1000)."""
    inversion_eta: float = 0.3
    """Fresh noise added at each inversion hop, as a fraction of DDIM's σ."""
    t_max: float = 0.98
    """Timestep fraction at the first step."""
    t_min: float = 0.25
    """Timestep fraction at the end of the schedule (linear annealing, paper Sec. 5)."""
    view_dependent: bool = True
    """Append "front/side/back/overhead view" to the prompt by camera."""
    perp_neg: bool = True
    """Perp-Neg between the view prompts."""
    lr: float = 0.01
    """Adam learning rate of the field (hash grid and MLPs)."""
    background_lr: float = 0.001
    """Adam learning rate of the environment-map background."""
    betas: tuple[float, float] = (0.9, 0.99)
    """Adam betas."""
    eps: float = 1e-15
    """Adam epsilon."""
    preview_every: int = 50
    """Steps between preview images."""
    preview_size: int = 128
    """Side of the preview image in pixels."""
    checkpoint_every: int = 500
    """Steps between checkpoints (one is also written at the end and on cancel)."""
    turntable_views: int = 8
    """Views in the final turntable strip."""
    proxy_every: int | None = None
    """Steps between the coarse meshes a server job sends while it trains (the panel's live
    proxy); None: every tenth of the run, 0: none."""
    init_mesh: InitMesh = dataclasses.field(default_factory=InitMesh)
    """Start the density from a mesh's inside instead of the default blob (``--init-mesh``)."""
    field: FieldConfig = dataclasses.field(default_factory=FieldConfig)
    """The hash-grid radiance field."""
    background: BackgroundConfig = dataclasses.field(default_factory=BackgroundConfig)
    """The environment-map background."""
    cameras: CameraConfig = dataclasses.field(default_factory=CameraConfig)
    """Random training cameras and the evaluation camera."""
    shading: ShadingConfig = dataclasses.field(default_factory=ShadingConfig)
    """Point-light shading and its augmentations."""
    renderer: RendererConfig = dataclasses.field(default_factory=RendererConfig)
    """Ray sampling and batching."""
    losses: LossWeights = dataclasses.field(default_factory=LossWeights)
    """Weights of the guidance loss and the regularisers."""
    speed: SpeedConfig = dataclasses.field(default_factory=SpeedConfig)
    """How the diffusion model runs on the GPU (memory format, torch.compile, VAE
    checkpointing); may change when a run is resumed."""

    def paper_step(self, step: int) -> int:
        """``step`` of this run in the paper's schedule time."""
        return round(min(step, self.schedule_steps) * PAPER_STEPS / max(self.schedule_steps, 1))

    def validate(self) -> None:
        """Raise :class:`UserError` naming the first invalid setting."""
        if not self.prompt.strip():
            raise UserError("the prompt is empty", hint="describe the object to generate")
        check_toy_prompt(self.model, self.prompt, self.negative_prompt)
        if self.method not in catalog.METHODS:
            raise UserError(f"unknown method '{self.method}'", hint=f"choose one of {', '.join(catalog.METHODS)}")
        if self.steps <= 0:
            raise UserError(f"steps must be positive, got {self.steps}")
        if self.resolution <= 0 or self.resolution % 8:
            raise UserError(f"resolution must be a positive multiple of 8, got {self.resolution}")
        if self.batch_size <= 0:
            raise UserError(f"batch size must be positive, got {self.batch_size}")
        if not 0 < self.t_min <= self.t_max < 1:
            raise UserError(f"need 0 < t_min ({self.t_min}) <= t_max ({self.t_max}) < 1")
        for name in ("preview_every", "checkpoint_every", "preview_size", "turntable_views", "schedule_steps"):
            if getattr(self, name) <= 0:
                raise UserError(f"{name.replace('_', ' ')} must be positive, got {getattr(self, name)}")
        if self.renderer.num_samples_per_ray <= 0:
            raise UserError("samples per ray must be positive")
        if self.renderer.hash_kernel not in KERNELS:
            raise UserError(
                f"unknown hash-grid kernel '{self.renderer.hash_kernel}'", hint=f"choose one of {', '.join(KERNELS)}"
            )
        self.speed.validate()

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str) -> TrainConfig:
        """Inverse of :meth:`to_json`; unknown or mistyped keys raise :class:`UserError`."""
        try:
            return _from_dict(cls, json.loads(text))
        except (TypeError, ValueError, KeyError) as exc:
            raise UserError(f"config is not a valid sdi-blender run config: {exc}") from exc


def _from_dict(cls: type, data: dict) -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise KeyError(f"unknown keys {sorted(unknown)} in {cls.__name__}")
    kwargs = {}
    for key, value in data.items():
        kind = hints[key]
        if isinstance(kind, type) and dataclasses.is_dataclass(kind):  # a nested config's class
            value = _from_dict(kind, value)
        elif typing.get_origin(kind) is tuple:
            value = tuple(value)
        kwargs[key] = value
    return cls(**kwargs)


def make_config(prompt: str, preset: str = DEFAULT_PRESET, **overrides: Any) -> TrainConfig:
    """A config from a preset plus explicit settings (``None`` values are ignored).

    Keys with a dot address nested settings, e.g. ``renderer.num_samples_per_ray``.
    """
    if preset not in PRESETS:
        raise UserError(f"unknown preset '{preset}'", hint=f"choose one of {', '.join(PRESETS)}")
    config = TrainConfig(prompt=prompt, preset=preset)
    settings = {**PRESETS[preset], **{k: v for k, v in overrides.items() if v is not None}}
    for key, value in settings.items():
        set_setting(config, key, value)
    if "schedule_steps" not in overrides or overrides["schedule_steps"] is None:
        config.schedule_steps = config.steps
    return config


def set_setting(config: TrainConfig, key: str, value: Any) -> None:
    """Set ``key`` (dotted for nested settings) on ``config``."""
    *path, name = key.split(".")
    target: Any = config
    for part in path:
        target = getattr(target, part)
    if name not in {f.name for f in dataclasses.fields(target)}:
        raise UserError(f"unknown setting '{key}'")
    setattr(target, name, value)


ARCHITECTURE_KEYS = ("model", "field", "background")
"""Settings a checkpoint's tensors depend on: a resumed run may not change them."""


def incompatibilities(saved: dict, current: TrainConfig) -> list[str]:
    """Architecture settings in which a checkpoint's config differs from ``current``."""
    now = dataclasses.asdict(current)
    return [k for k in ARCHITECTURE_KEYS if json.dumps(saved.get(k)) != json.dumps(now[k])]
