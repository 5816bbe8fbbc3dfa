"""Watch it grow: the trainer hands its field over every ``proxy_every`` steps, and a server job
sends it as compact ``proxy_mesh`` events (decoded here as the add-on decodes them)."""

from __future__ import annotations

import base64

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from sdi_blender.protocol import MAX_MESSAGE_BYTES, encode, job_event, malformed  # noqa: E402
from sdi_blender.server.scene.field import FieldConfig, ImplicitVolume  # noqa: E402
from sdi_blender.server.service.proxy import ProxyCallbacks, proxy_arrays  # noqa: E402
from sdi_blender.server.training.trainer import TrainerCallbacks  # noqa: E402


def _field() -> ImplicitVolume:
    torch.manual_seed(0)
    return ImplicitVolume(FieldConfig(radius=1.0, log2_hashmap_size=12))


def test_a_proxy_is_the_blob_as_compact_arrays_in_blenders_axes() -> None:
    arrays = proxy_arrays(_field(), bounds=1.0, resolution=32)
    assert arrays is not None
    verts = np.frombuffer(base64.b64decode(arrays["vertices"]), "<f4").reshape(-1, 3)
    faces = np.frombuffer(base64.b64decode(arrays["faces"]), "<i4").reshape(-1, 3)
    colours = np.frombuffer(base64.b64decode(arrays["colours"]), np.uint8).reshape(-1, 3)
    assert len(colours) == len(verts) and faces.max() < len(verts) and len(faces) > 100
    radius = np.linalg.norm(verts, axis=1)
    assert 0.2 < radius.mean() < 0.6  # the blob's level set, centred on the origin
    event = job_event("proxy_mesh", "j", step=10, **arrays)
    assert malformed(event) is None and len(encode(event)) < MAX_MESSAGE_BYTES // 16


def test_an_empty_field_sends_no_proxy() -> None:
    field = ImplicitVolume(FieldConfig(radius=1.0, log2_hashmap_size=12, density_blob_scale=0.0))
    with torch.no_grad():
        for p in field.density_mlp.parameters():
            p.zero_()  # a constant density: no level gives a surface
    assert proxy_arrays(field, bounds=1.0, resolution=16) is None


def test_the_callbacks_send_one_proxy_per_request_and_forward_the_rest() -> None:
    sent: list[dict] = []
    seen: list[int] = []

    class Inner(TrainerCallbacks):
        def on_preview(self, step: int, png: bytes) -> None:
            seen.append(step)

    placement = {"centre": [0.0, 1.0, 0.0], "scale": 2.0}
    with ProxyCallbacks(Inner(), "j", lambda job, e: sent.append(e), 1.0, placement, resolution=16) as proxies:
        proxies.on_field(5, _field())
        proxies.on_preview(5, b"")
    assert seen == [5] and [e["step"] for e in sent] == [5] and sent[0]["placement"] == placement


def test_the_trainer_calls_on_field_every_tenth_of_the_run_but_not_at_its_end(prior, tmp_path) -> None:
    from sdi_blender.server.training import run_dir
    from sdi_blender.server.training.config import make_config
    from sdi_blender.server.training.trainer import Trainer

    steps: list[int] = []

    class Watch(TrainerCallbacks):
        def on_field(self, step: int, field) -> None:
            steps.append(step)

    config = make_config(
        "a red apple",
        "test",
        model="tiny",
        steps=3,
        resolution=32,
        **{"renderer.num_samples_per_ray": 8, "field.log2_hashmap_size": 12, "turntable_views": 1, "preview_size": 16},
    )
    assert config.proxy_every is None  # the default: every tenth
    run_dir.prepare_new_run(tmp_path / "run", overwrite=False)
    Trainer(config, tmp_path / "run", prior=prior, callbacks=Watch()).run()
    assert steps == [1, 2]
