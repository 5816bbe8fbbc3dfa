"""The wire protocol: framing and request validation (no server needed)."""

from __future__ import annotations

import base64
import gzip
import json
import os

import pytest

from sdi_blender.protocol import (
    ERROR_CODES,
    EVENTS,
    MAX_MESSAGE_BYTES,
    REQUESTS,
    ProtocolError,
    decode,
    encode,
    error_event,
    validate_request,
)


def test_messages_are_single_json_lines():
    line = encode({"type": "status", "id": 1, "text": "a\nb ünï"})
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert decode(line) == {"type": "status", "id": 1, "text": "a\nb ünï"}


@pytest.mark.parametrize(
    "line, code",
    [
        (b"{not json", "bad_request"),
        (b"\xff\xfe", "bad_request"),
        (b"[1, 2]", "bad_request"),
        (b'"hello"', "bad_request"),
        (b"x" * (MAX_MESSAGE_BYTES + 1), "too_large"),
    ],
)
def test_decode_rejects_what_is_not_an_object(line, code):
    with pytest.raises(ProtocolError) as info:
        decode(line)
    assert info.value.code == code


@pytest.mark.parametrize(
    "message, code",
    [
        ({"id": 1}, "bad_request"),
        ({"type": 5, "id": 1}, "bad_request"),
        ({"type": "fly", "id": 1}, "unknown_type"),
        ({"type": "status"}, "bad_request"),
        ({"type": "status", "id": True}, "bad_request"),
        ({"type": "status", "id": "x" * 200}, "bad_request"),
        ({"type": "generate", "id": 1}, "bad_request"),
        ({"type": "generate", "id": 1, "prompt": 3}, "bad_request"),
        ({"type": "generate", "id": 1, "prompt": "x" * 5000}, "bad_request"),
        ({"type": "generate", "id": 1, "prompt": "x", "steps": 0}, "bad_request"),
        ({"type": "generate", "id": 1, "prompt": "x", "steps": True}, "bad_request"),
        ({"type": "generate", "id": 1, "prompt": "x", "guidance_scale": float("nan")}, "bad_request"),
        ({"type": "generate", "id": 1, "prompt": "x", "colour": "red"}, "bad_request"),
        ({"type": "export", "id": 1, "job": "j", "texture_size": 10**6}, "bad_request"),
        ({"type": "continue", "id": 1, "job": "j"}, "bad_request"),
    ],
)
def test_invalid_requests_get_the_right_code(message, code):
    with pytest.raises(ProtocolError) as info:
        validate_request(message)
    assert info.value.code == code and info.value.code in ERROR_CODES


def test_valid_requests_pass_unchanged():
    for message in [
        {"type": "hello", "token": "t", "protocol": 1},
        {"type": "status", "id": "a"},
        {
            "type": "generate",
            "id": 2,
            "prompt": "a ripe strawberry",
            "steps": 100,
            "guidance_scale": 7.5,
            "perp_neg": False,
            "export": {"texture_size": 512},
        },
        {"type": "continue", "id": 3, "job": "j1", "steps": 500, "prompt": "new"},
    ]:
        assert validate_request(dict(message)) == message
    assert set(REQUESTS) == {
        "hello",
        "status",
        "generate",
        "cancel",
        "subscribe",
        "export",
        "continue",
        "texture",
        "list_jobs",
        "delete_job",
        "shutdown",
    }


def test_error_events_use_the_closed_set():
    event = error_event("not_found", "no job 'x'", "list_jobs shows them", request_id=4, job="x")
    assert json.loads(encode(event)) == {
        "event": "error",
        "code": "not_found",
        "message": "no job 'x'",
        "hint": "list_jobs shows them",
        "reason": "",
        "id": 4,
        "job": "x",
    }
    with pytest.raises(ValueError):
        ProtocolError("made_up", "x")
    assert error_event("model_unavailable", "m", reason="offline")["reason"] == "offline"
    with pytest.raises(ValueError):
        error_event("model_unavailable", "m", reason="made_up")


def test_generate_and_continue_may_forbid_downloads():
    for request in (
        {"type": "generate", "id": 1, "prompt": "x", "allow_downloads": False},
        {"type": "continue", "id": 1, "job": "j", "steps": 3, "allow_downloads": True},
    ):
        assert validate_request(request) is request
    with pytest.raises(ProtocolError, match="wrong type"):
        validate_request({"type": "generate", "id": 1, "prompt": "x", "allow_downloads": "no"})


# --- event shapes and the closed code set -------------------------------------------------


def test_job_events_are_built_with_every_promised_field() -> None:
    from sdi_blender.protocol import JOB_EVENT_FIELDS, job_event, malformed

    event = job_event("exported", "J1", files={"mesh": "m.glb"}, vertices=3, faces=1)
    assert event == {"event": "exported", "job": "J1", "files": {"mesh": "m.glb"}, "vertices": 3, "faces": 1}
    assert malformed(event) is None
    with pytest.raises(ValueError, match="without files"):
        job_event("exported", "J1", vertices=3, faces=1)
    assert malformed({"event": "progress", "job": "J1", "total": 3}) == (
        "'progress' event without step, t, loss, elapsed_s, eta_s"
    )
    assert set(JOB_EVENT_FIELDS) <= set(EVENTS)


def test_error_codes_are_a_closed_set_on_both_sides() -> None:
    from sdi_blender.client import ServerError
    from sdi_blender.protocol import CLIENT_ERROR_CODES

    assert not set(CLIENT_ERROR_CODES) & set(ERROR_CODES)
    with pytest.raises(ValueError, match="not a protocol error code"):
        error_event("oops", "x")
    with pytest.raises(ValueError, match="not a protocol error code"):
        ServerError("oops", "x")
    assert ServerError("timeout", "slow").code == "timeout"
    # A code from a newer server reads as internal, keeping its message.
    err = ServerError.from_event({"event": "error", "code": "brand_new", "message": "m", "hint": "h"})
    assert (err.code, err.message, err.hint, err.reason) == ("internal", "m", "h", "")
    # A reason this client knows is kept (the add-on words its hint by it); an unknown one is dropped.
    known = ServerError.from_event({"event": "error", "code": "model_unavailable", "message": "m", "reason": "offline"})
    unknown = ServerError.from_event({"event": "error", "code": "internal", "message": "m", "reason": "brand_new"})
    assert (known.reason, unknown.reason) == ("offline", "")


# --- meshes sent in requests ------------------------------------------------------------------


def test_a_sent_mesh_packs_and_unpacks_to_its_bytes() -> None:
    from sdi_blender.protocol import mesh_data, read_mesh_data

    raw = b"v 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 3\n" * 1000
    sent = mesh_data(raw, "obj")
    assert sent["format"] == "obj" and sent["gzip"] and len(sent["base64"]) < len(raw) // 10
    assert read_mesh_data(sent) == raw
    plain = {"format": "glb", "base64": base64.b64encode(b"glTF").decode()}
    assert read_mesh_data(plain) == b"glTF"
    for kind, field in (("texture", "mesh_data"), ("generate", "init_mesh_data")):
        message = {"type": kind, "id": 1, "prompt": "x", field: sent}
        assert validate_request(message) is message


@pytest.mark.parametrize(
    "value, code",
    [
        ({"format": "obj", "base64": "not base64!"}, "bad_mesh_data"),
        ({"format": "obj", "base64": "AAAA", "gzip": True}, "bad_mesh_data"),  # not gzip
        (
            {"format": "obj", "base64": base64.b64encode(gzip.compress(b"v 0 0 0\n" * 99)[:-9]).decode(), "gzip": True},
            "bad_mesh_data",
        ),
        (
            {"format": "obj", "base64": base64.b64encode(gzip.compress(bytes(65 * 2**20))).decode(), "gzip": True},
            "mesh_too_large",
        ),
    ],
    ids=["bad-base64", "not-gzip", "cut-short", "zip-bomb"],
)
def test_a_sent_mesh_that_does_not_unpack_gets_its_code(value, code) -> None:
    from sdi_blender.protocol import read_mesh_data

    message = {"type": "texture", "id": 1, "prompt": "x", "mesh_data": value}
    assert validate_request(message) is message  # the shape is right; the contents are not
    with pytest.raises(ProtocolError) as info:
        read_mesh_data(value)
    assert info.value.code == code and code in ERROR_CODES


@pytest.mark.parametrize(
    "fields, code",
    [
        ({}, "bad_request"),  # a texture needs a mesh
        ({"mesh": "/m.obj", "mesh_data": {"format": "obj", "base64": ""}}, "bad_request"),  # not both
        ({"mesh_data": {"format": "stl", "base64": ""}}, "bad_mesh_data"),
        ({"mesh_data": {"format": "obj"}}, "bad_mesh_data"),
        ({"mesh_data": {"format": "obj", "base64": "", "name": "x"}}, "bad_mesh_data"),
        ({"mesh_data": {"format": "obj", "base64": "", "gzip": "yes"}}, "bad_mesh_data"),
        ({"mesh_data": "AAAA"}, "bad_request"),
    ],
)
def test_a_texture_request_names_one_well_formed_mesh(fields, code) -> None:
    with pytest.raises(ProtocolError) as info:
        validate_request({"type": "texture", "id": 1, "prompt": "x", **fields})
    assert info.value.code == code


def test_a_mesh_too_large_to_send_is_refused_before_it_is_sent() -> None:
    from sdi_blender.protocol import MAX_MESH_BYTES, mesh_data

    with pytest.raises(ProtocolError) as info:
        mesh_data(bytes(MAX_MESH_BYTES + 1), "obj")
    assert info.value.code == "mesh_too_large" and "64.0 MiB" in info.value.message
    with pytest.raises(ProtocolError) as info:  # fits unpacked, not in one message once packed
        mesh_data(os.urandom(13 * 2**20), "glb")
    assert info.value.code == "mesh_too_large"
