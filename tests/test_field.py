"""The hash-grid implicit volume and the environment-map background (sdi_blender.server.scene.field)."""

from __future__ import annotations

import math
import time

import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional

from sdi_blender.server.scene.background import BackgroundConfig, EnvironmentBackground  # noqa: E402
from sdi_blender.server.scene.encoding import HashGridEncoding  # noqa: E402
from sdi_blender.server.scene.field import FieldConfig, ImplicitVolume  # noqa: E402

# A small grid: resolutions 2, 4, 8, 16 with 2^8-entry tables, so levels 0–1 are dense
# ((N+1)^3 = 27, 125 ≤ 256) and levels 2–3 hashed (729, 4913 > 256).
SMALL = dict(
    n_levels=4, n_features_per_level=2, log2_hashmap_size=8, base_resolution=2, per_level_scale=2.0, start_level=4
)
PRIMES = (1, 2654435761, 805459861)


def reference_encoding(enc: HashGridEncoding, x01: torch.Tensor) -> torch.Tensor:
    """Instant-NGP's encoding, point by point, level by level, corner by corner."""
    cfg_levels, fdim = enc.n_levels, enc.n_features
    out = torch.zeros(x01.shape[0], cfg_levels * fdim, dtype=torch.float64)
    for p, point in enumerate(x01.tolist()):
        for level in range(min(enc.active_levels, cfg_levels)):
            res = math.floor(SMALL["base_resolution"] * SMALL["per_level_scale"] ** level)
            size = min(2 ** SMALL["log2_hashmap_size"], (res + 1) ** 3)
            table = enc.table(level).double()
            assert table.shape == (size, fdim)
            pos = [c * res for c in point]
            base = [min(max(math.floor(c), 0), res - 1) for c in pos]
            frac = [c - b for c, b in zip(pos, base)]
            for corner in range(8):
                offs = [(corner >> a) & 1 for a in range(3)]
                v = [b + o for b, o in zip(base, offs)]
                if (res + 1) ** 3 <= size:
                    index = v[0] + v[1] * (res + 1) + v[2] * (res + 1) ** 2
                else:
                    h = 0
                    for coord, prime in zip(v, PRIMES):
                        h ^= (coord * prime) & 0xFFFFFFFF  # uint32 arithmetic
                    index = h % size
                w = math.prod(f if o else 1.0 - f for f, o in zip(frac, offs))
                out[p, level * fdim : (level + 1) * fdim] += w * table[index]
    return out


def small_encoding(seed: int = 0) -> HashGridEncoding:
    torch.manual_seed(seed)
    enc = HashGridEncoding(**SMALL)
    with torch.no_grad():  # features of order 1, so that errors are visible
        enc.params.uniform_(-1.0, 1.0)
    return enc


def test_encoding_matches_reference_dense_and_hashed_levels():
    enc = small_encoding()
    assert enc.n_dense == 2
    torch.manual_seed(1)
    x = torch.cat([torch.rand(40, 3), torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0], [1.0, 0.5, 0.0]])])
    got = enc(x).double()
    assert got.shape == (43, enc.n_output_dims) == (43, 8)
    torch.testing.assert_close(got, reference_encoding(enc, x), atol=1e-6, rtol=0)


def test_points_on_the_upper_faces_stay_in_their_table():
    """x = 1 lies in the last voxel (fraction 1), not past the grid, even for a dense last level."""
    enc = HashGridEncoding(n_levels=2, log2_hashmap_size=12, base_resolution=3, per_level_scale=2.0, start_level=2)
    assert enc.n_dense == 2  # (3+1)^3, (6+1)^3 ≤ 4096: the last table ends the parameter array
    with torch.no_grad():
        enc.params.uniform_(-1, 1)
    corner = enc(torch.ones(1, 3)).reshape(2, 2)
    for level, res in enumerate((3, 6)):
        torch.testing.assert_close(corner[level], enc.table(level)[(res + 1) ** 3 - 1])


def test_chunked_interpolation_matches_unchunked(monkeypatch):
    """Points are processed in chunks; values and both kinds of gradient must not depend on it."""
    from sdi_blender.server.scene import encoding as field_module

    torch.manual_seed(0)
    field = ImplicitVolume(FieldConfig(radius=1.0, **SMALL))
    with torch.no_grad():
        field.encoding.params.uniform_(-1, 1)
    x = torch.rand(301, 3) * 1.6 - 0.8

    def run() -> list[torch.Tensor]:
        field.zero_grad()
        out = field(x, with_normals=True)
        (out.density.sum() + out.albedo.sum() + out.normal[:, 0].sum()).backward()
        return [out.density, out.normal, field.encoding.params.grad.clone()]

    whole = run()
    monkeypatch.setattr(field_module, "_CHUNK", {"cpu": 4 * 37})  # 37 points per chunk
    chunked = run()
    for a, b in zip(whole, chunked):
        torch.testing.assert_close(a, b)


def test_official_defaults_shape_and_levels():
    enc = HashGridEncoding()
    assert enc.n_output_dims == 32
    assert enc.resolution[0] == 16 and 4000 < enc.resolution[-1] <= 4096
    assert enc.table(15).shape == (2**19, 2)
    assert enc.table(0).shape == (17**3, 2)  # dense
    assert 1e-4 * 0.99 < enc.params.abs().max() <= 1e-4
    out = enc(torch.rand(5, 3))
    assert out.shape == (5, 32)


@pytest.mark.parametrize("step,levels", [(0, 8), (2000, 8), (2499, 8), (2500, 9), (3000, 10), (6000, 16), (10000, 16)])
def test_progressive_schedule(step: int, levels: int):
    enc = HashGridEncoding(log2_hashmap_size=10)
    enc.set_step(step)
    assert enc.active_levels == levels
    with torch.no_grad():
        enc.params.uniform_(-1.0, 1.0)
    out = enc(torch.rand(20, 3)).reshape(20, 16, 2)
    assert (out[:, levels:] == 0).all()
    assert (out[:, :levels].abs().sum(-1) > 0).all()


def test_locked_levels_get_no_gradient_and_unlock():
    enc = small_encoding()
    enc.start_level, enc.start_step, enc.update_steps = 2, 0, 10
    enc.set_step(0)
    x = torch.rand(30, 3)
    enc(x).square().sum().backward()
    grad = enc.params.grad
    assert grad[:, int(enc.offset[2]) :].abs().sum() == 0
    assert grad[:, : int(enc.offset[2])].abs().sum() > 0
    enc.set_step(15)
    assert enc.active_levels == 3
    assert (enc(x).reshape(30, 4, 2)[:, 2].abs().sum(-1) > 0).all()


def test_gradients_w_r_t_table_and_position_are_exact():
    enc = small_encoding().double()
    torch.manual_seed(2)
    x = torch.rand(6, 3, dtype=torch.float64).clamp(0.05, 0.95).requires_grad_()
    torch.autograd.gradcheck(enc, (x,))
    params = enc.params.detach().clone().requires_grad_()
    fn = lambda p: torch.func.functional_call(enc, {"params": p}, (x.detach(),))  # noqa: E731
    torch.autograd.gradcheck(fn, (params,))


def test_position_gradient_backpropagates_into_table():
    """∂(features)/∂x built with create_graph reaches the table (what analytic normals need)."""
    enc = small_encoding().double()
    params = enc.params.detach().clone().requires_grad_()
    x = torch.rand(5, 3, dtype=torch.float64).clamp(0.05, 0.95)

    def grad_x(p: torch.Tensor) -> torch.Tensor:
        xg = x.clone().requires_grad_()
        y = torch.func.functional_call(enc, {"params": p}, (xg,))
        (g,) = torch.autograd.grad((y * torch.linspace(-1, 1, 8, dtype=y.dtype)).sum(), xg, create_graph=True)
        return g

    torch.autograd.gradcheck(grad_x, (params,))


def test_blob_initialisation_is_a_centred_ball():
    torch.manual_seed(0)
    field = ImplicitVolume(FieldConfig(log2_hashmap_size=12))
    with torch.no_grad():
        centre = field.density(torch.zeros(1, 3))
        far = field.density(torch.tensor([[1.5, 0.0, 0.0], [0.0, -1.5, 0.0], [0.9, 0.9, 0.9]]))
        edge = field.density(torch.tensor([[0.5, 0.0, 0.0]]))
    assert abs(centre.item() - F.softplus(torch.tensor(10.0)).item()) < 0.5
    assert (far < 1e-3).all()
    assert 0.2 < edge.item() < 1.5  # softplus(≈0) at the blob's rim


def sphere_points(n: int, radius: float) -> torch.Tensor:
    torch.manual_seed(3)
    return F.normalize(torch.randn(n, 3), dim=-1) * radius


def test_analytic_normals_point_outward_and_train():
    torch.manual_seed(0)
    field = ImplicitVolume(FieldConfig(log2_hashmap_size=12))
    x = sphere_points(64, 0.5)
    out = field(x, with_normals=True)
    assert out.density.shape == (64,) and out.albedo.shape == (64, 3) and out.normal.shape == (64, 3)
    assert ((out.albedo > 0) & (out.albedo < 1)).all()
    torch.testing.assert_close(out.normal.norm(dim=-1), torch.ones(64))
    assert ((out.normal * F.normalize(x, dim=-1)).sum(-1) > 0.9).all()
    # A loss on the normals alone trains the table and the density MLP.
    out.normal[:, 0].sum().backward()
    assert field.encoding.params.grad.abs().sum() > 0
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in field.density_mlp.parameters())


def test_normals_are_detached_under_no_grad_and_match():
    torch.manual_seed(0)
    field = ImplicitVolume(FieldConfig(log2_hashmap_size=12))
    x = sphere_points(16, 0.7)
    with torch.no_grad():
        out = field(x, with_normals=True)
    assert out.normal is not None
    assert not out.normal.requires_grad and not out.density.requires_grad and not out.albedo.requires_grad
    live = field(x, with_normals=True)
    assert live.normal.requires_grad
    torch.testing.assert_close(out.normal, live.normal.detach())
    plain = field(x)
    assert plain.normal is None
    torch.testing.assert_close(plain.density, live.density)


def test_normals_equal_negative_density_gradient():
    torch.manual_seed(0)
    field = ImplicitVolume(FieldConfig(radius=1.0, **SMALL)).double()
    with torch.no_grad():  # a non-trivial field, not just the blob
        field.encoding.params.uniform_(-1, 1)
    x = sphere_points(8, 0.6).double()
    eps = 1e-6
    fd = torch.stack(
        [(field.density(x + eps * e) - field.density(x - eps * e)) / (2 * eps) for e in torch.eye(3, dtype=x.dtype)],
        dim=-1,
    )
    normal = field(x, with_normals=True).normal
    torch.testing.assert_close(normal, F.normalize(-fd, dim=-1), atol=1e-6, rtol=0)


def test_normal_gradient_w_r_t_parameters_is_exact():
    torch.manual_seed(0)
    field = ImplicitVolume(FieldConfig(radius=1.0, **SMALL, mlp_hidden=8)).double()
    with torch.no_grad():
        field.encoding.params.uniform_(-1, 1)
    x = sphere_points(4, 0.4).double()
    names = ["encoding.params", "density_mlp.0.weight"]
    tensors = [dict(field.named_parameters())[n].detach().clone().requires_grad_() for n in names]

    def fn(*ps):
        return torch.func.functional_call(field, dict(zip(names, ps)), (x,), {"with_normals": True}).normal

    torch.autograd.gradcheck(fn, tuple(tensors))


def test_deterministic_initialisation():
    def make():
        torch.manual_seed(7)
        return ImplicitVolume(FieldConfig(log2_hashmap_size=10)), EnvironmentBackground()

    (f1, b1), (f2, b2) = make(), make()
    for a, b in zip(
        [*f1.state_dict().values(), *b1.state_dict().values()], [*f2.state_dict().values(), *b2.state_dict().values()]
    ):
        assert torch.equal(a, b)
    torch.manual_seed(8)
    other = ImplicitVolume(FieldConfig(log2_hashmap_size=10))
    assert not torch.equal(other.encoding.params, f1.encoding.params)


def test_background_colours_and_gradients():
    torch.manual_seed(0)
    bg = EnvironmentBackground(BackgroundConfig())
    dirs = torch.randn(2, 5, 7, 3)
    rgb = bg(dirs)
    assert rgb.shape == (2, 5, 7, 3)
    assert ((rgb > 0) & (rgb < 1)).all()
    torch.testing.assert_close(bg(dirs * 3.0), rgb)  # only the direction matters
    rgb.sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in bg.parameters())
    n_hidden = sum(isinstance(m, torch.nn.Linear) for m in bg.mlp) - 1
    assert n_hidden == 2 and bg.mlp[0].in_features == 9 and bg.mlp[0].out_features == 16


def test_spherical_harmonics_are_orthonormal():
    from sdi_blender.server.scene.background import spherical_harmonics_deg2

    torch.manual_seed(0)
    d = F.normalize(torch.randn(400_000, 3, dtype=torch.float64), dim=-1)
    y = spherical_harmonics_deg2(d)
    gram = 4 * math.pi * (y.T @ y) / d.shape[0]  # Monte-Carlo ∫ Y_i Y_j dω
    torch.testing.assert_close(gram, torch.eye(9, dtype=torch.float64), atol=0.03, rtol=0)


def test_any_encoding_can_back_the_field():
    """The field only needs the Encoding protocol (so a fused GPU kernel can replace the grid)."""
    from sdi_blender.server.scene.encoding import Encoding

    class Fourier(torch.nn.Module):
        n_output_dims = 6

        def __init__(self) -> None:
            super().__init__()
            self.steps: list[int] = []

        def set_step(self, step: int) -> None:
            self.steps.append(step)

        def forward(self, x01: torch.Tensor) -> torch.Tensor:
            return torch.cat([torch.sin(6 * x01), torch.cos(6 * x01)], -1)

    assert isinstance(HashGridEncoding(log2_hashmap_size=8), Encoding)
    enc = Fourier()
    field = ImplicitVolume(FieldConfig(), encoding=enc)
    field.set_step(123)
    assert enc.steps == [123]
    out = field(sphere_points(10, 0.5), with_normals=True)
    assert out.normal.shape == (10, 3) and torch.isfinite(out.normal).all()
    out.normal.sum().backward()
    assert field.density_mlp[0].weight.grad.abs().sum() > 0


def test_timing_forward_backward_with_normals(capsys):
    """Prints (does not assert) the CPU time of one 64×64×32-sample field evaluation."""
    torch.manual_seed(0)
    field = ImplicitVolume(FieldConfig())
    x = (torch.rand(64 * 64 * 32, 3) * 2 - 1) * 1.2
    for step in (0, 10_000):
        field.set_step(step)
        field.zero_grad()
        start = time.perf_counter()
        out = field(x, with_normals=True)
        (out.density.mean() + out.albedo.mean() + out.normal[:, 0].mean()).backward()
        seconds = time.perf_counter() - start
        with capsys.disabled():
            print(
                f"\n[field] {x.shape[0]} points, {field.encoding.active_levels} levels, "
                f"{torch.get_num_threads()} threads: forward+backward with normals {seconds:.2f} s"
            )
        grad = field.encoding.params.grad
        assert torch.isfinite(grad).all() and grad.abs().sum() > 0
