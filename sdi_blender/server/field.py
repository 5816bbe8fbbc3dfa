"""The radiance field of the official SDI config: a hash-grid "implicit volume" and its background.

* :class:`HashGridEncoding` — the multiresolution hash encoding of Instant-NGP (Müller et al.,
  SIGGRAPH 2022, §3), in plain torch (CPU and CUDA), with the progressive unlocking of levels
  that the official config uses ("ProgressiveBandHashGrid").
* :class:`ImplicitVolume` — encoding → small MLPs → density (softplus, with Magic3D's blob bias)
  and albedo (sigmoid); normals are the analytic, normalised negative density gradient.
* :class:`EnvironmentBackground` — the "neural environment map": an MLP of the view direction's
  real spherical harmonics, sigmoid colour.

Any module satisfying :class:`Encoding` can replace the hash grid (e.g. a fused GPU kernel).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# Instant-NGP §3: spatial hash h(x) = (⊕_i x_i·π_i) mod T with π = (1, 2654435761, 805459861).
_PRIMES = (1, 2654435761, 805459861)


@runtime_checkable
class Encoding(Protocol):
    """A positional encoding of points in the unit cube, as the field uses it."""

    n_output_dims: int

    def set_step(self, step: int) -> None:
        """Tell the encoding the training step (for progressive schedules)."""

    def __call__(self, x01: Tensor) -> Tensor:
        """Encode points ``[N, 3]`` in ``[0, 1]`` to features ``[N, n_output_dims]``."""


class HashGridEncoding(nn.Module):
    """Multiresolution hash encoding (Instant-NGP) with progressive level unlocking.

    Level ``l`` is a grid of resolution ``N_l = floor(base · scale^l)`` (vertices ``0..N_l`` per
    axis) whose vertex features live in a table of ``T_l = min(2^log2, (N_l + 1)^3)`` entries:
    coarse levels whose grid fits are indexed densely, finer ones through the spatial hash.
    A point's feature per level is the trilinear interpolation of its voxel's 8 corners.
    Levels ``>= active_levels`` output zeros (they are unlocked one every ``update_steps``
    steps after ``start_step``, starting from ``start_level``).
    """

    def __init__(self, n_levels: int = 16, n_features_per_level: int = 2, log2_hashmap_size: int = 19,
                 base_resolution: int = 16, per_level_scale: float = 1.447269237440378,
                 start_level: int = 8, start_step: int = 2000, update_steps: int = 500) -> None:
        super().__init__()
        self.n_levels, self.n_features = n_levels, n_features_per_level
        self.start_level, self.start_step, self.update_steps = start_level, start_step, update_steps
        self.n_output_dims = n_levels * n_features_per_level
        res = [int(base_resolution * per_level_scale ** level) for level in range(n_levels)]
        sizes = [min(2 ** log2_hashmap_size, (r + 1) ** 3) for r in res]
        offsets = [sum(sizes[:level]) for level in range(n_levels)]
        dense = [(r + 1) ** 3 <= 2 ** log2_hashmap_size for r in res]
        # Per-level constants as (non-persistent) buffers, so they follow .to(device).
        self.register_buffer("resolution", torch.tensor(res, dtype=torch.int64), persistent=False)
        self.register_buffer("table_size", torch.tensor(sizes, dtype=torch.int64), persistent=False)
        self.register_buffer("offset", torch.tensor(offsets, dtype=torch.int64), persistent=False)
        self.register_buffer("dense", torch.tensor(dense), persistent=False)
        # Per level and axis, the multiplier of the vertex coordinate: dense strides
        # (1, N+1, (N+1)^2) or the hash primes; [3, L].
        mult = [[1, r + 1, (r + 1) ** 2] if d else list(_PRIMES) for r, d in zip(res, dense)]
        self.register_buffer("multiplier", torch.tensor(mult, dtype=torch.int64).T.contiguous(),
                             persistent=False)
        # Dense levels: index offset of each voxel corner (z, y, x) from its lowest corner.
        corner = torch.arange(2)
        step = [c[:, None] * self.multiplier[a] for a, c in enumerate((corner, corner, corner))]
        self.register_buffer("corner_step", step[2][:, None, None] + step[1][None, :, None]
                             + step[0][None, None, :], persistent=False)          # [2, 2, 2, L]
        self.n_dense = sum(dense)  # dense levels come first (resolution grows with the level)
        # All tables concatenated along the last dim, feature-major ``[F, Σ_l T_l]`` (level l at
        # columns offset[l]...), initialised U(-1e-4, 1e-4) as in Instant-NGP §4.
        self.params = nn.Parameter(torch.empty(n_features_per_level, sum(sizes)).uniform_(-1e-4, 1e-4))
        self.active_levels = start_level

    def set_step(self, step: int) -> None:
        """Unlock levels: ``min(start_level + max(step - start_step, 0) // update_steps, n_levels)``."""
        unlocked = self.start_level + max(step - self.start_step, 0) // self.update_steps
        self.active_levels = min(unlocked, self.n_levels)

    def forward(self, x01: Tensor) -> Tensor:
        """Features ``[N, n_levels · F]`` of points ``[N, 3]`` in ``[0, 1]`` (level-major)."""
        n, levels = x01.shape[0], max(0, min(self.active_levels, self.n_levels))
        if levels == 0:
            return x01.new_zeros(n, self.n_output_dims)
        # Locked levels are exactly zero, so they are not evaluated at all (same values and
        # gradients as multiplying them by a 0/1 mask, at a fraction of the cost).
        # Layout: points are the last (contiguous) dimension of every tensor, so the
        # element-wise work vectorises; axes, corners, features and levels come first.
        res = self.resolution[:levels, None]                                      # [L, 1]
        pos = x01.to(self.params.dtype).T[:, None, :] * res                       # [3, L, N]
        # Voxel corner below the point; points at 1.0 use the last voxel with fraction 1.
        cell = torch.minimum(pos.detach().floor().clamp_(min=0).long(), res - 1)
        frac = pos - cell                                                         # [3, L, N]
        # Table index of each voxel corner, [2(z), 2(y), 2(x), L, N]. Dense levels: the lowest
        # corner's Σ_a v_a·stride_a plus a per-corner constant. Hashed levels (Instant-NGP):
        # ⊕_a v_a·π_a mod T_l; int64 products keep the low 32 bits of Instant-NGP's uint32
        # arithmetic, and T_l is a power of two, so each term can be masked before the xor.
        nd = min(self.n_dense, levels)
        idx = cell.new_empty((2, 2, 2, levels, n))
        if nd:
            base = (cell[:, :nd] * self.multiplier[:, :nd, None]).sum(0) + self.offset[:nd, None]
            torch.add(base, self.corner_step[..., :nd, None], out=idx[..., :nd, :])
        if nd < levels:
            vert = cell[:, None, nd:] + torch.arange(2, device=cell.device)[:, None, None]
            mask = self.table_size[nd:levels, None] - 1
            tx, ty, tz = (vert * self.multiplier[:, None, nd:levels, None]) & mask  # [2, Lh, N] each
            hashed = idx[..., nd:, :]
            torch.bitwise_xor(tz[:, None, None] ^ ty[None, :, None], tx[None, None, :], out=hashed)
            hashed += self.offset[nd:levels, None]
        # One gather for all corners and levels; its backward is an index_add (fast on CPU with
        # int64 indices, unlike embedding's or advanced indexing's backward).
        corners = self.params.index_select(1, idx.reshape(-1))
        out = _trilinear(corners.reshape(self.n_features, 2, 2, 2, levels, n), frac)  # [F, L, N]
        out = out.permute(2, 1, 0)                                                # [N, L, F]
        if levels < self.n_levels:
            out = torch.cat([out, out.new_zeros(n, self.n_levels - levels, self.n_features)], 1)
        return out.reshape(n, self.n_output_dims)

    def table(self, level: int) -> Tensor:
        """The feature table ``[T_l, F]`` of one level (a view into ``params``)."""
        start = int(self.offset[level])
        return self.params[:, start:start + int(self.table_size[level])].T


class _Trilinear(torch.autograd.Function):
    """Trilinear interpolation and (optionally) its Jacobian w.r.t. the fractional position.

    Inputs: corner values ``f [F, 2(z), 2(y), 2(x), L, N]`` and fractions ``t [3(x, y, z), L, N]``
    (constants). Outputs ``out [F, L, N]`` and ``jac [3, F, L, N] = ∂out/∂t`` (empty unless
    ``with_jac``). Both are linear in ``f``: three lerps (x, then y, then z) and their edge
    differences. The backward pass is their adjoint, written out by hand with each result
    stored in place, which keeps the normal computation's graph and CPU time small.
    """

    @staticmethod
    def forward(ctx, f: Tensor, t: Tensor, with_jac: bool) -> tuple[Tensor, Tensor]:  # type: ignore[override]
        ctx.save_for_backward(t)
        ctx.with_jac = with_jac
        tx, ty, tz = t.unbind(0)                                 # [L, N] each
        n_f, _, _, _, n_l, n = f.shape
        out = f.new_empty(n_f, n_l, n)
        jac = f.new_empty((3, n_f, n_l, n) if with_jac else (0,))
        dx = f[:, :, :, 1] - f[:, :, :, 0]                       # x-edges: [F, 2, 2, L, N]
        ax = torch.addcmul(f[:, :, :, 0], tx, dx)                # lerp along x
        dy = ax[:, :, 1] - ax[:, :, 0]                           # y-edges: [F, 2, L, N]
        ay = torch.addcmul(ax[:, :, 0], ty, dy)                  # lerp along y
        dz = torch.sub(ay[:, 1], ay[:, 0], out=jac[2]) if with_jac else ay[:, 1] - ay[:, 0]
        torch.addcmul(ay[:, 0], tz, dz, out=out)                 # lerp along z
        if with_jac:  # ∂/∂t_x: the x-edges lerped along y and z; ∂/∂t_y: the y-edges along z
            dxy = torch.addcmul(dx[:, :, 0], ty, dx[:, :, 1] - dx[:, :, 0])
            torch.addcmul(dxy[:, 0], tz, dxy[:, 1] - dxy[:, 0], out=jac[0])
            torch.addcmul(dy[:, 0], tz, dy[:, 1] - dy[:, 0], out=jac[1])
        return out, jac

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g_out: Tensor, g_jac: Tensor) -> tuple[Tensor, None, None]:  # type: ignore[override]
        (t,) = ctx.saved_tensors
        tx, ty, tz = t.unbind(0)
        n_f, n_l, n = g_out.shape
        new = g_out.new_empty

        def split(g: Tensor, w: Tensor, into: Tensor, edge: Tensor | None = None) -> Tensor:
            # Adjoint of a lerp a0 + w·(a1 - a0) (plus an edge a1 - a0 with gradient ``edge``):
            # g_a1 = w·g + edge, g_a0 = g - g_a1, written into the halves of ``into``.
            hi, lo = into.select(-3, 1), into.select(-3, 0)
            torch.mul(w, g, out=hi) if edge is None else torch.addcmul(edge, w, g, out=hi)
            torch.sub(g, hi, out=lo)
            return into

        g_ay, g_ax = new(n_f, 2, n_l, n), new(n_f, 2, 2, n_l, n)
        g_f = new(n_f, 2, 2, 2, n_l, n)
        if not ctx.with_jac:
            split(g_out, tz, g_ay)
            split(g_ay, ty, g_ax)
            return split(g_ax, tx, g_f), None, None
        g_jx, g_jy, g_jz = g_jac.unbind(0)
        split(g_out, tz, g_ay, g_jz)
        g_dy = split(g_jy, tz, new(n_f, 2, n_l, n))              # jy lerps the y-edges along z
        g_dxy = split(g_jx, tz, new(n_f, 2, n_l, n))             # jx lerps dxy along z ...
        g_dx = split(g_dxy, ty, new(n_f, 2, 2, n_l, n))          # ... which lerps the x-edges along y
        split(g_ay, ty, g_ax, g_dy)
        return split(g_ax, tx, g_f, g_dx), None, None


class _AttachJacobian(torch.autograd.Function):
    """``out`` as a function of ``t`` with derivative ``jac``: value ``out``, ``∂/∂t = jac``.

    The backward pass is plain (differentiable) torch, so ``autograd.grad(...,
    create_graph=True)`` w.r.t. positions yields ``Σ_f g_f · jac_f``, which backpropagates into
    ``jac`` and hence the table. Only the second derivative w.r.t. positions is left out.
    """

    @staticmethod
    def forward(ctx, out: Tensor, jac: Tensor, t: Tensor) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(jac)
        return out.clone()

    @staticmethod
    def backward(ctx, g: Tensor) -> tuple[Tensor, None, Tensor]:  # type: ignore[override]
        (jac,) = ctx.saved_tensors
        return g, None, (g * jac).sum(1)


def _trilinear(f: Tensor, t: Tensor) -> Tensor:
    """Trilinear interpolation ``[F, L, N]`` of corner values ``f`` at fractions ``t``, whose
    gradient w.r.t. ``t`` is a differentiable function of ``f`` (see the two classes above)."""
    if not t.requires_grad:  # no position gradient wanted: skip the Jacobian
        return _Trilinear.apply(f, t, False)[0]
    out, jac = _Trilinear.apply(f, t.detach(), True)
    return _AttachJacobian.apply(out, jac, t)


def _mlp(n_in: int, n_out: int, hidden: int, layers: int) -> nn.Sequential:
    """Linear–ReLU ×layers, then Linear; no biases, as the fused MLPs of the official config."""
    dims = [n_in] + [hidden] * layers
    mods: list[nn.Module] = []
    for a, b in zip(dims[:-1], dims[1:]):
        mods += [nn.Linear(a, b, bias=False), nn.ReLU()]
    mods.append(nn.Linear(dims[-1], n_out, bias=False))
    return nn.Sequential(*mods)


@dataclass
class FieldConfig:
    """The official "implicit-volume" geometry (configs/sdi.yaml)."""

    radius: float = 2.0
    """Half-size of the scene box ``[-radius, radius]^3``; the encoding sees ``(x + r) / (2r)``."""
    n_levels: int = 16
    """Hash-grid levels."""
    n_features_per_level: int = 2
    """Features stored per grid vertex and level."""
    log2_hashmap_size: int = 19
    """log2 of the largest table size ``T`` per level."""
    base_resolution: int = 16
    """Resolution of the coarsest level."""
    per_level_scale: float = 1.447269237440378
    """Growth factor of the resolution per level (16 levels from 16 to ≈ 4096)."""
    start_level: int = 8
    """Levels active at the start of training."""
    start_step: int = 2000
    """Step after which further levels are unlocked."""
    update_steps: int = 500
    """Steps between two unlocked levels."""
    mlp_hidden: int = 64
    """Width of the density and albedo MLPs."""
    mlp_layers: int = 1
    """Hidden layers of the density and albedo MLPs."""
    density_blob_scale: float = 10.0
    """Magic3D blob bias: peak value added to the raw density at the origin."""
    density_blob_std: float = 0.5
    """Magic3D blob bias: radius at which the bias crosses zero."""


@dataclass
class FieldOutput:
    """Per-point field values."""

    density: Tensor
    """``[N]`` volume density (≥ 0)."""
    albedo: Tensor
    """``[N, 3]`` diffuse colour in (0, 1)."""
    normal: Tensor | None = None
    """``[N, 3]`` unit normals ``-∇density / ‖∇density‖``, or None if not requested."""


class ImplicitVolume(nn.Module):
    """Density and albedo from a shared encoding of the normalised position."""

    def __init__(self, config: FieldConfig | None = None, encoding: Encoding | None = None) -> None:
        super().__init__()
        self.config = c = config or FieldConfig()
        self.encoding = encoding if encoding is not None else HashGridEncoding(
            c.n_levels, c.n_features_per_level, c.log2_hashmap_size, c.base_resolution,
            c.per_level_scale, c.start_level, c.start_step, c.update_steps)
        n_enc = self.encoding.n_output_dims
        self.density_mlp = _mlp(n_enc, 1, c.mlp_hidden, c.mlp_layers)
        self.albedo_mlp = _mlp(n_enc, 3, c.mlp_hidden, c.mlp_layers)

    def set_step(self, step: int) -> None:
        """Forward the training step to the encoding (progressive levels)."""
        self.encoding.set_step(step)

    def _blob(self, x: Tensor) -> Tensor:
        # Magic3D's density bias: scale · (1 - ‖x‖ / std), on world positions.
        r = torch.linalg.vector_norm(x, dim=-1)  # its gradient at the origin is 0, not NaN
        return self.config.density_blob_scale * (1.0 - r / self.config.density_blob_std)

    def _features(self, x: Tensor) -> Tensor:
        r = self.config.radius
        return self.encoding(((x + r) / (2 * r)).clamp(0.0, 1.0))

    def density(self, x: Tensor) -> Tensor:
        """Density ``[N]`` at world positions ``[N, 3]``."""
        raw = self.density_mlp(self._features(x))[..., 0]
        return F.softplus(raw + self._blob(x))

    def forward(self, x: Tensor, with_normals: bool = False) -> FieldOutput:
        """Density, albedo and optionally analytic normals at world positions ``[N, 3]``.

        Normals are differentiable (for the orientation loss and shading) when the caller has
        gradients enabled, and computed but detached under ``torch.no_grad()``.
        """
        if not with_normals:
            h = self._features(x)
            density = F.softplus(self.density_mlp(h)[..., 0] + self._blob(x))
            return FieldOutput(density, torch.sigmoid(self.albedo_mlp(h)))
        grad_on = torch.is_grad_enabled()
        with torch.enable_grad():
            xg = x if (grad_on and x.requires_grad) else x.detach().requires_grad_(True)
            h = self._features(xg)
            density = F.softplus(self.density_mlp(h)[..., 0] + self._blob(xg))
            albedo = torch.sigmoid(self.albedo_mlp(h))
            (grad,) = torch.autograd.grad(density, xg, torch.ones_like(density), create_graph=grad_on)
        normal = F.normalize(-grad, dim=-1, eps=1e-12)
        if not grad_on:
            density, albedo, normal = density.detach(), albedo.detach(), normal.detach()
        return FieldOutput(density, albedo, normal)


# Real spherical harmonics up to degree 2 (9 functions) of a unit vector (x, y, z).
_SH_C0 = 0.28209479177387814   # 1 / (2√π)
_SH_C1 = 0.4886025119029199    # √3 / (2√π)
_SH_C2 = (1.0925484305920792, 0.31539156525252005, 0.5462742152960396)  # √15/(2√π), √5/(4√π), √15/(4√π)


def spherical_harmonics_deg2(d: Tensor) -> Tensor:
    """The 9 real spherical harmonics ``Y_l^m`` (l ≤ 2) of unit vectors ``[..., 3]``."""
    x, y, z = d.unbind(-1)
    a, b, c = _SH_C2
    return torch.stack([
        torch.full_like(x, _SH_C0),
        -_SH_C1 * y, _SH_C1 * z, -_SH_C1 * x,
        a * x * y, -a * y * z, b * (3 * z * z - 1), -a * x * z, c * (x * x - y * y),
    ], dim=-1)


@dataclass
class BackgroundConfig:
    """The official "neural-environment-map-background"."""

    mlp_hidden: int = 16
    """Width of the background MLP."""
    mlp_layers: int = 2
    """Hidden layers of the background MLP."""


class EnvironmentBackground(nn.Module):
    """Colour in (0, 1) as an MLP of the view direction's spherical harmonics (degree ≤ 2)."""

    def __init__(self, config: BackgroundConfig | None = None) -> None:
        super().__init__()
        self.config = c = config or BackgroundConfig()
        self.mlp = _mlp(9, 3, c.mlp_hidden, c.mlp_layers)

    def forward(self, dirs: Tensor) -> Tensor:
        """Colours ``[..., 3]`` for view directions ``[..., 3]`` (normalised here)."""
        return torch.sigmoid(self.mlp(spherical_harmonics_deg2(F.normalize(dirs, dim=-1))))
