"""The Triton hash grid against the torch one, in Triton's CPU interpreter.

``TRITON_INTERPRET=1`` must be set before triton is imported, so the comparisons run once, in a
subprocess (this file run as a script), and each test reads one of their results: values,
gradients w.r.t. the table and the positions, and the normals' gradients (double backward) of
the field, at random points and points exactly on cell borders, on all 16 levels of a table
small enough that the hashed levels collide.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable

import pytest

torch = pytest.importorskip("torch")

from sdi_blender.errors import UserError  # noqa: E402
from sdi_blender.server.scene.encoding import HashGridEncoding  # noqa: E402
from sdi_blender.server.training.config import make_config  # noqa: E402

SMALL = dict(n_levels=16, log2_hashmap_size=8, base_resolution=2, per_level_scale=1.3, start_level=16)
"""All 16 levels: 5 dense ones, then resolutions up to 102 hashed into 256 entries."""
PAPER = dict(log2_hashmap_size=12, start_level=16)
"""The paper's resolutions (16 to 4096: the largest hash products) in a small table."""


def _points(n: int, enc: HashGridEncoding, seed: int) -> torch.Tensor:
    """Random points, then the cube's corners and points exactly on some levels' cell borders."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, generator=gen)
    x[:8] = torch.tensor([[i & 1, (i >> 1) & 1, i >> 2] for i in range(8)], dtype=torch.float32)
    for k, level in enumerate((0, 5, 9, enc.n_levels - 1)):  # dense and hashed levels
        res = int(enc.resolution[level])
        x[8 + 12 * k : 20 + 12 * k] = torch.randint(0, res + 1, (12, 3), generator=gen) / res
    return x


def _pair(seed: int, **kw: object) -> tuple[HashGridEncoding, HashGridEncoding]:
    torch.manual_seed(seed)
    ref, fused = HashGridEncoding(**kw, kernel="torch"), HashGridEncoding(**kw, kernel="triton")  # type: ignore[arg-type]
    with torch.no_grad():  # features of order 1, so that disagreements show
        ref.params.uniform_(-1.0, 1.0)
    fused.load_state_dict(ref.state_dict())
    return ref, fused


def _close(a: torch.Tensor, b: torch.Tensor, rtol: float = 1e-5) -> None:
    # fp32 sums in another order: tolerance relative to the values' scale.
    torch.testing.assert_close(a, b, rtol=rtol, atol=rtol * float(b.detach().abs().max()))


def _values_and_gradients(kw: dict, n: int) -> None:
    ref, fused = _pair(0, **kw)
    x = _points(n, ref, 1)
    xs = [x.clone().requires_grad_(True) for _ in range(2)]
    outs = [fused(xs[0]), ref(xs[1])]
    _close(*outs)
    g = torch.randn(outs[0].shape, generator=torch.Generator().manual_seed(2))
    fast = torch.autograd.grad((outs[0] * g).sum(), [xs[0], fused.params])
    slow = torch.autograd.grad((outs[1] * g).sum(), [xs[1], ref.params])
    for a, b in zip(fast, slow):
        _close(a, b, 1e-4)
    with torch.no_grad():  # and without the Jacobian
        _close(fused(x), ref(x))
    empty = torch.empty(0, 3, requires_grad=True)  # e.g. a chunk of rays that all miss
    fused(empty).sum().backward()
    assert fused(empty).shape == (0, fused.n_output_dims) and empty.grad is not None


def check_values_and_gradients() -> None:
    _values_and_gradients(SMALL, 250)


def check_paper_resolutions() -> None:
    _values_and_gradients(PAPER, 120)


def check_locked_levels() -> None:
    _values_and_gradients({**SMALL, "start_level": 11}, 120)


def check_normals_double_backward() -> None:
    """The field's analytic normals and their gradients w.r.t. every parameter."""
    from sdi_blender.server.scene.field import FieldConfig, ImplicitVolume

    config = FieldConfig(radius=1.0, **{k: v for k, v in SMALL.items()}, mlp_hidden=16)
    fields = {}
    for kernel in ("triton", "torch"):
        torch.manual_seed(0)
        fields[kernel] = ImplicitVolume(config, hash_kernel=kernel)
        with torch.no_grad():
            fields[kernel].encoding.params.uniform_(-1.0, 1.0)
    x = _points(120, fields["torch"].encoding, 3) * 2 - 1  # world positions in [-1, 1]
    light = torch.tensor([0.3, -0.5, 0.8])
    grads = {}
    for kernel, field in fields.items():
        out = field(x, with_normals=True)
        loss = (out.normal @ light).square().sum() + out.density.sum() + out.albedo.sum()
        grads[kernel] = (out.normal.detach(), *torch.autograd.grad(loss, list(field.parameters())))
    for a, b in zip(grads["triton"], grads["torch"]):
        _close(a, b, 1e-4)


CHECKS: dict[str, Callable[[], None]] = {
    name.removeprefix("check_"): fn for name, fn in dict(globals()).items() if name.startswith("check_")
}


@pytest.fixture(scope="module")
def results() -> dict[str, str]:
    """Each check's outcome ("ok" or its error), from one interpreter subprocess."""
    proc = subprocess.run(
        [sys.executable, __file__],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "TRITON_INTERPRET": "1"},
    )
    if proc.returncode == 3:
        pytest.skip(proc.stdout.strip())
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.splitlines()[-1])


@pytest.mark.parametrize("name", sorted(CHECKS))
def test_the_triton_grid_matches_the_torch_grid(results: dict[str, str], name: str) -> None:
    assert results[name] == "ok", results[name]


def test_the_small_table_collides_and_has_dense_and_hashed_levels() -> None:
    enc = HashGridEncoding(**SMALL)  # type: ignore[arg-type]
    assert 0 < enc.n_dense < enc.n_levels and enc.active_levels == 16
    assert int(((enc.resolution + 1) ** 3 > enc.table_size).sum()) == enc.n_levels - enc.n_dense


def test_the_kernel_is_chosen_by_device_and_can_be_forced() -> None:
    cpu = torch.device("cpu")
    assert not HashGridEncoding(log2_hashmap_size=8).uses_triton(cpu)  # auto: torch off CUDA
    assert not HashGridEncoding(log2_hashmap_size=8, kernel="torch").uses_triton(torch.device("cuda"))
    if os.environ.get("TRITON_INTERPRET") != "1":
        with pytest.raises(UserError, match="needs triton and a CUDA device"):
            HashGridEncoding(log2_hashmap_size=8, kernel="triton").uses_triton(cpu)
    with pytest.raises(UserError, match="unknown hash-grid kernel"):
        HashGridEncoding(kernel="cuda")
    with pytest.raises(UserError, match="unknown hash-grid kernel 'fast'"):
        make_config("a red apple", "test", **{"renderer.hash_kernel": "fast"}).validate()


def _run_checks() -> int:
    """Run every check (in the interpreter) and print their outcomes as one JSON line."""
    try:
        import triton  # noqa: F401
    except ImportError as exc:
        print(f"triton is not importable here: {exc}")
        return 3
    outcomes = {}
    for name, fn in CHECKS.items():
        try:
            fn()
            outcomes[name] = "ok"
        except Exception as exc:  # report every check, not only the first failure
            outcomes[name] = f"{type(exc).__name__}: {exc}"
    print(json.dumps(outcomes))
    return 0


if __name__ == "__main__":
    sys.exit(_run_checks())
