"""The hash-grid interpolation of :mod:`.encoding` as fused Triton kernels (CUDA).

One kernel program takes a block of points at one level: it finds each point's voxel, hashes
(or densely indexes) its 8 corners, gathers their features and interpolates them, writing the
features and, when the positions need gradients, their Jacobian w.r.t. the positions; a second
kernel scatters the adjoint of both into the table with atomic adds. The pure-torch path of
:class:`~.encoding.HashGridEncoding` builds the same intermediates as several ``[3, L, N]``
tensors; here they stay in registers.

The level constants (resolution, table size, offset, per-axis multipliers: dense strides or
the hash primes) are the encoding's own buffers, so both paths index the table identically.
Position gradients, including the second-order path of analytic normals, go through
:class:`~.encoding._AttachJacobian` as in the torch path. With ``TRITON_INTERPRET=1`` (set
before triton is imported) the kernels run on CPU tensors, which is how they are tested.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import triton
import triton.language as tl
from torch import Tensor

if TYPE_CHECKING:
    from .encoding import HashGridEncoding

_BLOCK = 128
"""Points per kernel program."""


@triton.jit
def _voxel(x_ptr, offs, live, res):
    """Lowest voxel corner (int64) and fractions of the points ``offs`` of ``x [N, 3]``."""
    x = tl.load(x_ptr + offs * 3 + 0, mask=live, other=0.0)
    y = tl.load(x_ptr + offs * 3 + 1, mask=live, other=0.0)
    z = tl.load(x_ptr + offs * 3 + 2, mask=live, other=0.0)
    res_f = res.to(x.dtype)
    px, py, pz = x * res_f, y * res_f, z * res_f
    # As the torch path: floor, at least 0, at most res - 1 (points at 1.0 get fraction 1).
    cx = tl.minimum(tl.maximum(tl.floor(px), 0.0).to(tl.int64), res - 1)
    cy = tl.minimum(tl.maximum(tl.floor(py), 0.0).to(tl.int64), res - 1)
    cz = tl.minimum(tl.maximum(tl.floor(pz), 0.0).to(tl.int64), res - 1)
    return cx, cy, cz, px - cx.to(x.dtype), py - cy.to(x.dtype), pz - cz.to(x.dtype)


@triton.jit
def _corner(cx, cy, cz, mx, my, mz, hash_mask, offset, dense):
    """Table column of vertex ``(cx, cy, cz)``: ``Σ v_a·stride_a`` on dense levels, else
    ``⊕ (v_a·π_a mod T)`` (each term reduced first, as in ``HashGridEncoding.corner_index``)."""
    linear = cx * mx + cy * my + cz * mz
    hashed = ((cx * mx) & hash_mask) ^ ((cy * my) & hash_mask) ^ ((cz * mz) & hash_mask)
    return tl.where(dense, linear, hashed) + offset


@triton.jit
def _weights(t, bit: tl.constexpr):
    """Trilinear weight of a corner along one axis and its derivative w.r.t. the fraction."""
    if bit:
        return t, 1.0
    return 1.0 - t, -1.0


@triton.jit
def _level_constants(res_ptr, size_ptr, offset_ptr, mult_ptr, n_levels, n_dense, level):
    res = tl.load(res_ptr + level)
    mx = tl.load(mult_ptr + level)
    my = tl.load(mult_ptr + n_levels + level)
    mz = tl.load(mult_ptr + 2 * n_levels + level)
    return res, mx, my, mz, tl.load(size_ptr + level) - 1, tl.load(offset_ptr + level), level < n_dense


@triton.jit
def _forward_kernel(
    x_ptr, params_ptr, res_ptr, size_ptr, offset_ptr, mult_ptr, out_ptr, jac_ptr,
    n, table_stride, n_levels, n_dense,
    F: tl.constexpr, WITH_JAC: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    """``out [La·F, N]`` features and ``jac [3, La·F, N] = ∂out/∂x`` of one level's block."""
    level = tl.program_id(1)
    offs = (tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)).to(tl.int64)  # large N·L·F stay exact
    live = offs < n
    res, mx, my, mz, hash_mask, offset, dense = _level_constants(
        res_ptr, size_ptr, offset_ptr, mult_ptr, n_levels, n_dense, level
    )
    cx, cy, cz, tx, ty, tz = _voxel(x_ptr, offs, live, res)
    feat = tl.arange(0, F)[None, :]
    cols = feat * table_stride
    out = tl.zeros((BLOCK, F), dtype=tx.dtype)
    jx = tl.zeros((BLOCK, F), dtype=tx.dtype)
    jy = tl.zeros((BLOCK, F), dtype=tx.dtype)
    jz = tl.zeros((BLOCK, F), dtype=tx.dtype)
    for c in tl.static_range(8):
        wx, dx = _weights(tx, c & 1)
        wy, dy = _weights(ty, (c >> 1) & 1)
        wz, dz = _weights(tz, (c >> 2) & 1)
        idx = _corner(cx + (c & 1), cy + ((c >> 1) & 1), cz + (c >> 2), mx, my, mz, hash_mask, offset, dense)
        v = tl.load(params_ptr + cols + idx[:, None], mask=live[:, None], other=0.0).to(tx.dtype)
        out += (wx * wy * wz)[:, None] * v
        if WITH_JAC:
            jx += (dx * wy * wz)[:, None] * v
            jy += (wx * dy * wz)[:, None] * v
            jz += (wx * wy * dz)[:, None] * v
    rows = (level * F + feat).to(tl.int64) * n + offs[:, None]  # [BLOCK, F] into [La·F, N]
    tl.store(out_ptr + rows, out, mask=live[:, None])
    if WITH_JAC:
        res_f = res.to(tx.dtype)  # d(fraction)/dx = resolution
        plane = tl.num_programs(1).to(tl.int64) * F * n
        tl.store(jac_ptr + rows, jx * res_f, mask=live[:, None])
        tl.store(jac_ptr + plane + rows, jy * res_f, mask=live[:, None])
        tl.store(jac_ptr + 2 * plane + rows, jz * res_f, mask=live[:, None])


@triton.jit
def _backward_kernel(
    x_ptr, g_out_ptr, g_jac_ptr, grad_ptr, res_ptr, size_ptr, offset_ptr, mult_ptr,
    n, table_stride, n_levels, n_dense,
    F: tl.constexpr, WITH_JAC: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    """Scatter the adjoint of ``out`` (and ``jac``) of one level's block into the table."""
    level = tl.program_id(1)
    offs = (tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)).to(tl.int64)  # large N·L·F stay exact
    live = offs < n
    res, mx, my, mz, hash_mask, offset, dense = _level_constants(
        res_ptr, size_ptr, offset_ptr, mult_ptr, n_levels, n_dense, level
    )
    cx, cy, cz, tx, ty, tz = _voxel(x_ptr, offs, live, res)
    feat = tl.arange(0, F)[None, :]
    cols = feat * table_stride
    rows = (level * F + feat).to(tl.int64) * n + offs[:, None]  # [BLOCK, F] into [La·F, N]
    g = tl.load(g_out_ptr + rows, mask=live[:, None], other=0.0).to(tx.dtype)
    if WITH_JAC:
        res_f = res.to(tx.dtype)
        plane = tl.num_programs(1).to(tl.int64) * F * n
        gx = tl.load(g_jac_ptr + rows, mask=live[:, None], other=0.0).to(tx.dtype) * res_f
        gy = tl.load(g_jac_ptr + plane + rows, mask=live[:, None], other=0.0).to(tx.dtype) * res_f
        gz = tl.load(g_jac_ptr + 2 * plane + rows, mask=live[:, None], other=0.0).to(tx.dtype) * res_f
    for c in tl.static_range(8):
        wx, dx = _weights(tx, c & 1)
        wy, dy = _weights(ty, (c >> 1) & 1)
        wz, dz = _weights(tz, (c >> 2) & 1)
        idx = _corner(cx + (c & 1), cy + ((c >> 1) & 1), cz + (c >> 2), mx, my, mz, hash_mask, offset, dense)
        contrib = (wx * wy * wz)[:, None] * g
        if WITH_JAC:
            contrib += (dx * wy * wz)[:, None] * gx + (wx * dy * wz)[:, None] * gy + (wx * wy * dz)[:, None] * gz
        tl.atomic_add(grad_ptr + cols + idx[:, None], contrib, mask=live[:, None])


class _TritonInterpolation(torch.autograd.Function):
    """Triton counterpart of :class:`~.encoding._HashInterpolation`, from positions.

    Inputs: the table ``params [F, T]``, points ``x [N, 3]`` in ``[0, 1]`` (constants), the
    encoding (its level buffers), the active levels ``La`` and whether to return the Jacobian.
    Outputs ``out [La·F, N]`` and ``jac [3, La·F, N] = ∂out/∂x`` (empty unless asked for).
    """

    @staticmethod
    def forward(ctx, params: Tensor, x: Tensor, enc: HashGridEncoding, levels: int, with_jac: bool):
        x = x.contiguous()
        ctx.save_for_backward(x)
        ctx.enc, ctx.levels, ctx.with_jac, ctx.table_shape = enc, levels, with_jac, params.shape
        n_f, n = params.shape[0], x.shape[0]
        out = x.new_empty(levels * n_f, n)
        jac = x.new_empty((3, levels * n_f, n) if with_jac else (0,))
        if n == 0:  # e.g. a chunk whose rays all miss the occupancy grid: no kernel to launch
            return out, jac
        _forward_kernel[(triton.cdiv(n, _BLOCK), levels)](
            x, params, *_buffers(enc), out, jac if with_jac else out, n, params.stride(0), enc.n_levels, enc.n_dense,
            F=n_f, WITH_JAC=with_jac, BLOCK=_BLOCK,
        )  # fmt: skip
        return out, jac

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g_out: Tensor, g_jac: Tensor) -> tuple[Tensor, None, None, None, None]:
        (x,) = ctx.saved_tensors
        enc, n_f, n = ctx.enc, ctx.table_shape[0], x.shape[0]
        grad = g_out.new_zeros(ctx.table_shape)
        if n == 0:
            return grad, None, None, None, None
        g_jac = g_jac.contiguous() if ctx.with_jac else g_out  # placeholder pointer when unused
        _backward_kernel[(triton.cdiv(n, _BLOCK), ctx.levels)](
            x, g_out.contiguous(), g_jac, grad, *_buffers(enc), n, grad.stride(0), enc.n_levels, enc.n_dense,
            F=n_f, WITH_JAC=ctx.with_jac, BLOCK=_BLOCK,
        )  # fmt: skip
        return grad, None, None, None, None


def _buffers(enc: HashGridEncoding) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    return enc.resolution, enc.table_size, enc.offset, enc.multiplier.contiguous()


def interpolate(enc: HashGridEncoding, x01: Tensor, levels: int) -> Tensor:
    """Features ``[N, levels · F]`` (level-major) of points ``[N, 3]`` in ``[0, 1]``, with the
    gradients of the torch path: table, positions and, through the Jacobian, normals."""
    from .encoding import _AttachJacobian

    if enc.n_features & (enc.n_features - 1):
        raise ValueError(f"the Triton hash grid needs a power-of-two feature count, got {enc.n_features}")
    with_jac = x01.requires_grad
    out, jac = _TritonInterpolation.apply(enc.params, x01.detach(), enc, levels, with_jac)
    if with_jac:  # ∂/∂x01ᵀ [3, N] = Σ_k g_k · jac_k
        out = _AttachJacobian.apply(out, jac, x01.T)
    return out.T
