"""The multiresolution hash encoding of Instant-NGP (Müller et al., SIGGRAPH 2022, §3), in plain
torch (CPU and CUDA), with the progressive unlocking of levels that the official config uses
("ProgressiveBandHashGrid"), and the autograd functions that give it analytic normals.

On CUDA the interpolation runs as fused Triton kernels (:mod:`.hash_triton`) when triton is
installed; ``kernel`` forces either path. Any module satisfying :class:`Encoding` can replace
the whole encoding in the field.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from ...errors import UserError

# Instant-NGP §3: spatial hash h(x) = (⊕_i x_i·π_i) mod T with π = (1, 2654435761, 805459861).
_PRIMES = (1, 2654435761, 805459861)
# Points are interpolated in chunks of about this many (point, level) pairs, which bounds the
# temporaries (16 floats and 8 indices per pair). On CPU moderate chunks are also faster: the
# allocator recycles their memory instead of page-faulting fresh blocks (measured 15-30%);
# much smaller ones cost more in per-operation overhead.
_CHUNK = {"cpu": 2**18, "cuda": 2**22}
KERNELS = ("auto", "torch", "triton")
"""Hash-grid implementations: auto (Triton on CUDA when triton is installed, else torch)."""


@functools.cache
def _triton_imports() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def triton_runs_on(device: torch.device) -> bool:
    """Whether the Triton kernels can run on ``device``: CUDA, or any device in Triton's
    interpreter (``TRITON_INTERPRET=1``, the CPU tests), with triton importable."""
    return (device.type == "cuda" or os.environ.get("TRITON_INTERPRET") == "1") and _triton_imports()


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
    steps after ``start_step``, starting from ``start_level``). ``kernel`` (:data:`KERNELS`)
    picks the interpolation's implementation; both give the same values and gradients.
    """

    # Buffers registered in __init__ (declared for the type checker).
    resolution: Tensor
    table_size: Tensor
    offset: Tensor
    multiplier: Tensor
    corner_step: Tensor

    def __init__(
        self,
        n_levels: int = 16,
        n_features_per_level: int = 2,
        log2_hashmap_size: int = 19,
        base_resolution: int = 16,
        per_level_scale: float = 1.447269237440378,
        start_level: int = 8,
        start_step: int = 2000,
        update_steps: int = 500,
        kernel: str = "auto",
    ) -> None:
        super().__init__()
        if kernel not in KERNELS:
            raise UserError(f"unknown hash-grid kernel '{kernel}'", hint=f"choose one of {', '.join(KERNELS)}")
        self.kernel = kernel
        self.n_levels, self.n_features = n_levels, n_features_per_level
        self.start_level, self.start_step, self.update_steps = start_level, start_step, update_steps
        self.n_output_dims = n_levels * n_features_per_level
        res = [int(base_resolution * per_level_scale**level) for level in range(n_levels)]
        sizes = [min(2**log2_hashmap_size, (r + 1) ** 3) for r in res]
        dense = [(r + 1) ** 3 <= 2**log2_hashmap_size for r in res]
        self.n_dense = sum(dense)  # dense levels come first (the resolution grows with the level)
        # Per-level constants as (non-persistent) buffers, so they follow .to(device).
        buffer = lambda name, v: self.register_buffer(name, torch.tensor(v), persistent=False)  # noqa: E731
        buffer("resolution", res)
        buffer("table_size", sizes)
        buffer("offset", [sum(sizes[:level]) for level in range(n_levels)])
        # Per axis and level, the multiplier of a vertex coordinate: dense strides
        # (1, N+1, (N+1)^2) or the hash primes; [3, L].
        buffer("multiplier", [[(r + 1) ** a if d else _PRIMES[a] for r, d in zip(res, dense)] for a in range(3)])
        # Dense levels: index offset of each voxel corner (z, y, x) from its lowest corner.
        edge = [torch.arange(2)[:, None] * self.multiplier[a] for a in range(3)]
        self.register_buffer(
            "corner_step", edge[2][:, None, None] + edge[1][None, :, None] + edge[0][None, None, :], persistent=False
        )  # [2, 2, 2, L]
        # All tables concatenated along the last dim, feature-major ``[F, Σ_l T_l]`` (level l at
        # columns offset[l]...), initialised U(-1e-4, 1e-4) as in Instant-NGP §4.
        self.params = nn.Parameter(torch.empty(n_features_per_level, sum(sizes)).uniform_(-1e-4, 1e-4))
        self.active_levels = start_level

    def set_step(self, step: int) -> None:
        """Unlock levels: ``min(start_level + max(step - start_step, 0) // update_steps, n_levels)``."""
        unlocked = self.start_level + max(step - self.start_step, 0) // self.update_steps
        self.active_levels = min(unlocked, self.n_levels)

    def table(self, level: int) -> Tensor:
        """The feature table ``[T_l, F]`` of one level (a view into ``params``)."""
        start = int(self.offset[level])
        return self.params[:, start : start + int(self.table_size[level])].T

    def uses_triton(self, device: torch.device) -> bool:
        """Whether :meth:`forward` runs the Triton kernels for points on ``device``."""
        if self.kernel == "torch":
            return False
        if self.kernel == "auto":
            return device.type == "cuda" and _triton_imports()
        if not triton_runs_on(device):
            raise UserError(
                "the Triton hash-grid kernel needs triton and a CUDA device", hint="use the 'auto' or 'torch' kernel"
            )
        return True

    def forward(self, x01: Tensor) -> Tensor:
        """Features ``[N, n_levels · F]`` of points ``[N, 3]`` in ``[0, 1]`` (level-major)."""
        n, levels = x01.shape[0], max(0, min(self.active_levels, self.n_levels))
        if levels == 0:
            return x01.new_zeros(n, self.n_output_dims)
        # Locked levels are exactly zero, so they are not evaluated at all (same values and
        # gradients as multiplying them by a 0/1 mask, at a fraction of the cost).
        x = x01.to(self.params.dtype)
        if self.uses_triton(x.device):
            from .hash_triton import interpolate

            out = interpolate(self, x, levels)  # [N, L·F]
        else:
            out = self._interpolate_torch(x, levels).permute(2, 1, 0).reshape(n, -1)
        if levels < self.n_levels:
            out = torch.cat([out, out.new_zeros(n, (self.n_levels - levels) * self.n_features)], 1)
        return out

    def _interpolate_torch(self, x: Tensor, levels: int) -> Tensor:
        """Features ``[F, L, N]`` of the first ``levels`` levels at points ``x [N, 3]``."""
        # Layout: points are the last (contiguous) dimension of every tensor, so the
        # element-wise work vectorises; axes, corners, features and levels come first.
        res = self.resolution[:levels, None]  # [L, 1]
        pos = x.T[:, None, :] * res  # [3, L, N]
        # Voxel corner below the point; points at 1.0 use the last voxel with fraction 1.
        cell = torch.minimum(pos.detach().floor().clamp_(min=0).long(), res - 1)
        frac = pos - cell  # [3, L, N]
        with_jac = frac.requires_grad  # positions need gradients (e.g. for normals)
        out, jac = _HashInterpolation.apply(self.params, cell, frac.detach(), self.corner_index, with_jac)
        if with_jac:
            out = _AttachJacobian.apply(out, jac, frac)
        return out

    def corner_index(self, cell: Tensor) -> Tensor:
        """Table columns ``[2(z), 2(y), 2(x), L, N]`` of the corners of voxels ``cell [3, L, N]``.

        Dense levels: the lowest corner's ``Σ_a v_a·stride_a`` plus a per-corner constant.
        Hashed levels: ``⊕_a v_a·π_a mod T_l``; int64 products keep the low 32 bits of
        Instant-NGP's uint32 arithmetic, and T_l is a power of two, so each term can be
        reduced before the xor.
        """
        levels, n = cell.shape[1:]
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
        return idx


def _chunks(n: int, levels: int, device: torch.device) -> list[slice]:
    size = max(1, _CHUNK.get(device.type, 2**22) // levels)
    return [slice(s, min(s + size, n)) for s in range(0, n, size)]


class _HashInterpolation(torch.autograd.Function):
    """Gather the 8 corner features of each (point, level) and interpolate them trilinearly.

    Inputs: the table ``params [F, T]``, voxels ``cell [3, L, N]`` (int), fractions ``t [3, L, N]``
    (constants), the corner-index function and whether to return the Jacobian. Outputs
    ``out [F, L, N]`` and ``jac [3, F, L, N] = ∂out/∂t`` (empty unless ``with_jac``). Both are
    linear in the table, so the backward pass is the adjoint of the interpolation followed by
    one ``index_add`` per chunk; corner indices are recomputed rather than stored.
    """

    @staticmethod
    def forward(
        ctx,
        params: Tensor,
        cell: Tensor,
        t: Tensor,
        corner_index: Callable[[Tensor], Tensor],
        with_jac: bool,
    ) -> tuple[Tensor, Tensor]:
        ctx.save_for_backward(cell, t)
        ctx.corner_index, ctx.with_jac, ctx.table_shape = corner_index, with_jac, params.shape
        n_f, (_, n_l, n) = params.shape[0], t.shape
        out = t.new_empty(n_f, n_l, n)
        jac = t.new_empty((3, n_f, n_l, n) if with_jac else (0,))
        for s in _chunks(n, n_l, t.device):
            idx = corner_index(cell[..., s]).reshape(-1)
            f = params.index_select(1, idx).reshape(n_f, 2, 2, 2, n_l, -1)
            _lerp3(f, t[..., s], out[..., s], jac[..., s] if with_jac else None)
        return out, jac

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(
        ctx,
        g_out: Tensor,
        g_jac: Tensor,
    ) -> tuple[Tensor, None, None, None, None]:
        cell, t = ctx.saved_tensors
        g_out, g_jac = g_out.contiguous(), g_jac.contiguous()
        grad = g_out.new_zeros(ctx.table_shape)
        for s in _chunks(t.shape[2], t.shape[1], t.device):
            g_f = _lerp3_adjoint(g_out[..., s], g_jac[..., s] if ctx.with_jac else None, t[..., s])
            # index_add with int64 indices: far faster on CPU than embedding's backward.
            grad.index_add_(1, ctx.corner_index(cell[..., s]).reshape(-1), g_f.reshape(grad.shape[0], -1))
        return grad, None, None, None, None


def _lerp3(f: Tensor, t: Tensor, out: Tensor, jac: Tensor | None) -> None:
    """Trilinear interpolation of ``f [F, 2(z), 2(y), 2(x), L, n]`` at ``t [3, L, n]`` into ``out``
    ``[F, L, n]``, and ``∂out/∂t`` into ``jac [3, F, L, n]`` if given: lerps along x, y, z."""
    tx, ty, tz = t.unbind(0)
    dx = f[:, :, :, 1] - f[:, :, :, 0]  # x-edges: [F, 2, 2, L, n]
    ax = torch.addcmul(f[:, :, :, 0], tx, dx)  # lerp along x
    dy = ax[:, :, 1] - ax[:, :, 0]  # y-edges: [F, 2, L, n]
    ay = torch.addcmul(ax[:, :, 0], ty, dy)  # lerp along y
    dz = ay[:, 1] - ay[:, 0] if jac is None else torch.sub(ay[:, 1], ay[:, 0], out=jac[2])
    torch.addcmul(ay[:, 0], tz, dz, out=out)  # lerp along z
    if jac is not None:  # ∂/∂t_x: the x-edges lerped along y and z; ∂/∂t_y: the y-edges along z
        dxy = torch.addcmul(dx[:, :, 0], ty, dx[:, :, 1] - dx[:, :, 0])
        torch.addcmul(dxy[:, 0], tz, dxy[:, 1] - dxy[:, 0], out=jac[0])
        torch.addcmul(dy[:, 0], tz, dy[:, 1] - dy[:, 0], out=jac[1])


def _lerp3_adjoint(g_out: Tensor, g_jac: Tensor | None, t: Tensor) -> Tensor:
    """Gradient ``[F, 2, 2, 2, L, n]`` w.r.t. the corners of :func:`_lerp3`'s outputs."""
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

    g_ay, g_ax, g_f = new(n_f, 2, n_l, n), new(n_f, 2, 2, n_l, n), new(n_f, 2, 2, 2, n_l, n)
    if g_jac is None:
        return split(split(split(g_out, tz, g_ay), ty, g_ax), tx, g_f)
    g_jx, g_jy, g_jz = g_jac.unbind(0)
    g_dy = split(g_jy, tz, new(n_f, 2, n_l, n))  # jy lerps the y-edges along z
    g_dxy = split(g_jx, tz, new(n_f, 2, n_l, n))  # jx lerps dxy along z,
    g_dx = split(g_dxy, ty, new(n_f, 2, 2, n_l, n))  # which lerps the x-edges along y
    split(g_out, tz, g_ay, g_jz)
    split(g_ay, ty, g_ax, g_dy)
    return split(g_ax, tx, g_f, g_dx)


class _AttachJacobian(torch.autograd.Function):
    """``out [K, ...]`` as a function of ``t [3, ...]`` with derivative ``jac [3, K, ...]``:
    value ``out``, ``∂/∂t = Σ_k g_k · jac_k`` (torch path: ``K = F`` over ``t [3, L, N]``;
    Triton path: ``K = L·F`` over the positions ``[3, N]``).

    The backward pass is plain (differentiable) torch, so ``autograd.grad(...,
    create_graph=True)`` w.r.t. positions yields ``Σ_f g_f · jac_f``, which backpropagates into
    ``jac`` and hence the table: exact gradients of normals w.r.t. the parameters. Only the
    second derivative w.r.t. the positions themselves is left out (nothing needs it).
    """

    @staticmethod
    def forward(ctx, out: Tensor, jac: Tensor, t: Tensor) -> Tensor:
        ctx.save_for_backward(jac)
        return out.clone()

    @staticmethod
    def backward(ctx, g: Tensor) -> tuple[Tensor, None, Tensor]:
        (jac,) = ctx.saved_tensors
        g = g.contiguous()  # it arrives permuted from the [N, L·F] output
        return g, None, (g * jac).sum(1)
