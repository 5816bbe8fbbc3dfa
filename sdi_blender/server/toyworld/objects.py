"""The toy world's objects: coloured primitives whose right answer is known (torch-free).

Each object is a union of spheres and axis-aligned boxes in the trainer's world frame
(Z up, the object's front facing +X, its own right side toward −Y), about a metre across
like the initial density blob (radius ≲ 0.6, inside the training cameras' view). None is rotationally
symmetric about Z, and one is mirror-asymmetric, so a sign, axis or orientation bug
anywhere between the renderer and the exported mesh shows up as a wrong object.

Torch-free so that a run's config can be checked (``check_toy_prompt``) before anything
heavy loads; :mod:`~sdi_blender.server.toyworld.render` draws them and
:mod:`~sdi_blender.server.toyworld.prior` turns their pictures into a diffusion prior.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypedDict

from ...catalog import TOYWORLD
from ...errors import UserError


@dataclass(frozen=True)
class Part:
    """One coloured primitive of a toy object."""

    name: str
    """What the prompt calls it ("box", "ball", …)."""
    kind: str
    """"sphere" or "box" (axis-aligned)."""
    centre: tuple[float, float, float]
    """Centre in world units (front +X, Z up)."""
    size: tuple[float, float, float]
    """Sphere: (radius, radius, radius); box: half-extents along X, Y, Z."""
    colour: tuple[float, float, float]
    """Albedo, RGB in [0, 1]."""


@dataclass(frozen=True)
class ToyObject:
    """A prompt and the primitives that answer it."""

    prompt: str
    parts: tuple[Part, ...]
    feature: str
    """The name of the part that gives the object its orientation (e.g. the ball on its front)."""
    feature_direction: tuple[float, float, float]
    """Where that part sits seen from the object's centre, as a world direction."""


ORANGE, BLUE, RED, YELLOW = (1.0, 0.5, 0.05), (0.1, 0.3, 0.9), (0.85, 0.1, 0.1), (0.95, 0.85, 0.1)
GREEN, PURPLE = (0.1, 0.65, 0.2), (0.55, 0.15, 0.75)

TOY_OBJECTS: tuple[ToyObject, ...] = (
    ToyObject(
        "an orange box with a blue ball on its front",
        (
            Part("box", "box", (-0.08, 0.0, 0.0), (0.32, 0.4, 0.28), ORANGE),
            Part("ball", "sphere", (0.38, 0.0, 0.0), (0.2,) * 3, BLUE),
        ),
        "ball",
        (1.0, 0.0, 0.0),
    ),
    ToyObject(
        "a red ball with a yellow box on its front",
        (
            Part("ball", "sphere", (-0.1, 0.0, 0.0), (0.4,) * 3, RED),
            Part("box", "box", (0.4, 0.0, -0.05), (0.14, 0.2, 0.2), YELLOW),
        ),
        "box",
        (1.0, 0.0, 0.0),
    ),
    ToyObject(
        "a green pillar with a purple box on its back",
        (
            Part("pillar", "box", (0.08, 0.0, 0.0), (0.18, 0.18, 0.52), GREEN),
            Part("box", "box", (-0.28, 0.0, 0.1), (0.18, 0.18, 0.18), PURPLE),
        ),
        "box",
        (-1.0, 0.0, 0.0),
    ),
    ToyObject(
        "a blue slab with a yellow ball on its right side",
        (
            Part("slab", "box", (0.0, 0.12, 0.0), (0.34, 0.32, 0.16), BLUE),
            Part("ball", "sphere", (0.0, -0.38, 0.05), (0.2,) * 3, YELLOW),
        ),
        "ball",
        (0.0, -1.0, 0.0),
    ),
)
TOY_PROMPTS: tuple[str, ...] = tuple(o.prompt for o in TOY_OBJECTS)


class ToyCameras(TypedDict):
    """The ``CameraConfig`` fields the toy world sets."""

    distance_range: tuple[float, float]
    fovy_range: tuple[float, float]
    camera_perturb: float
    center_perturb: float
    up_perturb: float


TOY_CAMERAS: ToyCameras = {
    "distance_range": (2.0, 2.0),
    "fovy_range": (50.0, 50.0),
    "camera_perturb": 0.0,
    "center_perturb": 0.0,
    "up_perturb": 0.0,
}
"""The toy world's training cameras (``CameraConfig`` fields; the rest keep the official
values): every elevation and azimuth of the official ranges, at one distance and field of
view, unjittered. An exact denoiser of finitely many pictures can only return pictures it
has, so its cameras must cover the training cameras densely: over these two angles 512
views lie about 6° apart, while over the official nine camera dimensions (distance,
field of view, jitter of position, look-at and up) the nearest picture would show the
object shifted and rescaled, and each step would pull toward a different one. The ``toy``
preset trains with these cameras and the pictures are drawn from them."""


def toy_object(prompt: str) -> ToyObject:
    """The toy object a prompt names; an unknown prompt is a one-line error listing them."""
    for obj in TOY_OBJECTS:
        if obj.prompt == prompt.strip():
            return obj
    raise UserError(
        f"the toy world has no object '{prompt}'", hint="use one of: " + "; ".join(f'"{p}"' for p in TOY_PROMPTS)
    )


def check_toy_prompt(model: str, prompt: str, negative_prompt: str = "") -> None:
    """For ``model == toyworld``: the prompt must be a toy prompt and the negative prompt empty."""
    if model != TOYWORLD:
        return
    toy_object(prompt)
    if negative_prompt.strip():
        raise UserError(
            "the toy world has no negative prompts", hint="leave the negative prompt empty with the toyworld model"
        )
