"""The wire protocol: framing and request validation (no server needed)."""

from __future__ import annotations

import json

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
