"""The local socket protocol between the Blender add-on (client) and the generation server.

Torch-free and bpy-free: both sides import it.

Transport: TCP; each message is one UTF-8 JSON object on one line (``\\n``-terminated), at
most :data:`MAX_MESSAGE_BYTES`. A connection starts with
``{"type": "hello", "token": ..., "protocol": PROTOCOL_VERSION}``; the server answers
``{"event": "hello", ...}`` or an ``error`` event (``unauthorized``) and closes.
Every request carries an ``id`` (string or integer) that the server echoes in the
replies to that request. Job events (``queued`` … ``done``) also carry ``job``.

Requests (``type``) and their fields are in :data:`REQUESTS`; events in :data:`EVENTS`;
error codes in :data:`ERROR_CODES` (a closed set).

Replies (with the request's ``id``): ``status`` → ``{event: status, version, protocol, device,
memory, model, queue, running}`` (``memory.free``: the device's free bytes on CUDA, absent on a
CPU); ``list_jobs`` → ``{event: jobs, jobs: [{job, kind, prompt,
status, step, total, created, error}]}``; ``cancel`` (``keep``: stop training now and export
what there is, the job ends done), ``delete_job``, ``subscribe`` (plus the job's list entry) and
``shutdown`` → ``{event: ok, ...}``; ``generate`` (``init_mesh_data``: a mesh whose inside the
density starts as), ``continue``, ``export`` and ``texture`` (paint the mesh ``mesh_data`` from the
prompt, keeping its geometry) → ``{event: queued, job, position}``
(jobs that run first, the running one included), and the connection is subscribed to that job.
A mesh travels in the request (:func:`mesh_data`: ``{format: obj|glb, gzip, base64}``, at most
:data:`MAX_MESH_BYTES` unpacked), so the server may be on another machine; the server writes it
into the job's folder. A loopback server also takes a path on its own machine instead (``mesh``,
``init_mesh``), as the CLI's user could name it. A refused request gets an
``error`` event with its ``id``; a ``too_large`` line also closes the connection.
Job events (``job`` but no ``id``): started(kind, device, model, preset, steps, resolution, run,
estimate: null for an export), loading(model), download(model, file, done, total: bytes, total
null when unknown), progress(step, total, t, loss, elapsed_s, eta_s), preview(step, png: base64),
proxy_mesh(step, vertices, faces, colours: the field's coarse mesh while it trains, base64 of
little-endian float32 [V, 3] positions in Blender's axes, int32 [F, 3] indices and uint8 [V, 3]
colours), export_stage(stage, fraction: of the export, null where unknown), exported(files:
{kind: path}, vertices, faces; and ``placement`` {centre, scale} for a run started from a mesh:
scale the mesh by it about the origin, then move it by centre, to put it back in that mesh's
frame), then exactly one of done(step), cancelled(step) or error(code, message, hint,
reason). ``reason`` refines a code for a client that words its own hints (see
:data:`ERROR_REASONS`; "" when none).
Job statuses: queued, running, done, cancelled, failed, interrupted.
"""

from __future__ import annotations

import base64
import binascii
import gzip
import json
import zlib
from typing import Any

PROTOCOL_VERSION = 1
MAX_MESSAGE_BYTES = 16 * 1024 * 1024

ERROR_CODES: dict[str, str] = {
    "bad_request": "the message is not valid JSON, not an object, or has missing, mistyped or out-of-range fields",
    "too_large": "the message is longer than 16 MiB",
    "unknown_type": "the request type is not one the server knows",
    "unauthorized": "the token is missing or wrong, or no hello came in time (the connection is closed)",
    "too_busy": "the server already has its maximum of connections (the connection is closed)",
    "not_found": "no such job",
    "conflict": "the job is in a state that does not allow the request (e.g. continuing a running job)",
    "model_unavailable": "the diffusion model is neither on disk nor downloadable",
    "out_of_memory": "the GPU ran out of memory; the job failed and memory was released",
    "diverged": "the loss became NaN or infinite; the job stopped at its last good checkpoint",
    "interrupted": "the server stopped while the job was running; continue resumes it",
    "mesh_too_large": "a mesh sent in a request is over 64 MiB unpacked (or too large to send in one message)",
    "bad_mesh_data": "a mesh sent in a request is not base64 (of gzip data, if so marked) or names an unknown format",
    "internal": "an unexpected server error (see the job log)",
}
"""Every ``code`` an ``error`` event from the server can carry, with its meaning."""

CLIENT_ERROR_CODES: dict[str, str] = {
    "unreachable": "the client could not connect to, or start, the server",
    "timeout": "the server did not answer a request in time",
    "disconnected": "the connection to the server was lost",
    "no_python": "the add-on has no usable server Python to start the server with",
}
"""Codes the client side raises itself; the server never sends them. With :data:`ERROR_CODES`
the closed set of every error an add-on or a client can see."""

ERROR_REASONS: dict[str, str] = {
    "offline": "model_unavailable: downloads were not allowed (allow_downloads false) and the model is not local",
    "model": "bad_request: the model name is neither a built-in, a folder nor a hub id",
    "export": "internal or out_of_memory: the mesh export failed",
}
"""The ``reason`` values an error event may carry, refining its code (a closed set)."""

EVENTS = (
    "hello",
    "status",
    "jobs",
    "ok",
    "queued",
    "started",
    "loading",
    "download",
    "progress",
    "preview",
    "proxy_mesh",
    "export_stage",
    "warning",
    "exported",
    "done",
    "cancelled",
    "error",
)
"""Every ``event`` the server sends."""

JOB_EVENT_FIELDS: dict[str, tuple[str, ...]] = {
    "started": ("kind", "device", "model", "preset", "steps", "resolution", "run", "estimate"),
    "loading": ("model",),
    "download": ("model", "file", "done", "total"),
    "progress": ("step", "total", "t", "loss", "elapsed_s", "eta_s"),
    "preview": ("step", "png"),
    "proxy_mesh": ("step", "vertices", "faces", "colours"),
    "export_stage": ("stage", "fraction"),
    "warning": ("step", "message"),  # what a job changed by itself (e.g. less memory after an OOM)
    "exported": ("files", "vertices", "faces"),
    "done": ("step",),
    "cancelled": ("step",),
    "error": ("code", "message", "hint"),  # and "reason", which an older server may leave out
}
"""Job events (each also carries ``job``) and the fields each always has."""

_STR, _INT, _NUM, _BOOL = str, int, (int, float), bool
# request type → {field: (type, required)}; numbers are range-checked in validate_request.
REQUESTS: dict[str, dict[str, tuple[Any, bool]]] = {
    "hello": {"token": (_STR, True), "protocol": (_INT, True)},
    "status": {},
    "generate": {
        "prompt": (_STR, True),
        "negative_prompt": (_STR, False),
        "method": (_STR, False),
        "preset": (_STR, False),
        "steps": (_INT, False),
        "resolution": (_INT, False),
        "seed": (_INT, False),
        "guidance_scale": (_NUM, False),
        "perp_neg": (_BOOL, False),
        "view_dependent": (_BOOL, False),
        "model": (_STR, False),
        "allow_downloads": (_BOOL, False),
        "preview_every": (_INT, False),
        "checkpoint_every": (_INT, False),
        "proxy_every": (_INT, False),
        "init_mesh": (_STR, False),
        "init_mesh_data": (dict, False),
        "export": (dict, False),
    },
    "cancel": {"job": (_STR, True), "keep": (_BOOL, False)},
    "subscribe": {"job": (_STR, True)},
    "export": {
        "job": (_STR, True),
        "resolution": (_INT, False),
        "threshold": (_NUM, False),
        "texture_size": (_INT, False),
        "faces": (_INT, False),
        "format": (_STR, False),
    },
    "continue": {
        "job": (_STR, True),
        "steps": (_INT, True),
        "prompt": (_STR, False),
        "allow_downloads": (_BOOL, False),
        "export": (dict, False),
    },
    "texture": {
        "prompt": (_STR, True),
        "mesh": (_STR, False),
        "mesh_data": (dict, False),
        "method": (_STR, False),
        "preset": (_STR, False),
        "steps": (_INT, False),
        "resolution": (_INT, False),
        "seed": (_INT, False),
        "model": (_STR, False),
        "allow_downloads": (_BOOL, False),
        "preview_every": (_INT, False),
        "texture_size": (_INT, False),
    },
    "list_jobs": {},
    "delete_job": {"job": (_STR, True)},
    "shutdown": {},
}

_RANGES: dict[str, tuple[float, float]] = {
    "steps": (1, 1_000_000),
    "resolution": (8, 4096),
    "seed": (0, 2**63 - 1),
    "guidance_scale": (-100.0, 100.0),
    "texture_size": (16, 8192),
    "faces": (4, 50_000_000),
    "threshold": (-1e12, 1e12),
    "protocol": (0, 1_000_000),
    "preview_every": (1, 1_000_000),
    "checkpoint_every": (1, 1_000_000),
    "proxy_every": (0, 1_000_000),
}
_MAX_TEXT = 4096  # prompts and ids longer than this are refused

MAX_MESH_BYTES = 64 * 1024 * 1024
"""A sent mesh file's size, unpacked (200,000 faces as OBJ with UVs: about 25 MB)."""
MESH_FORMATS = ("obj", "glb")
"""The file formats a sent mesh may have (a .gltf may name other files: send it as .glb)."""
MESH_FIELDS = {"generate": ("init_mesh", "init_mesh_data"), "texture": ("mesh", "mesh_data")}
"""Per request type, its mesh as a path on the server and as sent contents (one of them)."""
_MAX_MESH_TEXT = MAX_MESSAGE_BYTES - 64 * 1024  # the base64, leaving room for the other fields


class ProtocolError(Exception):
    """A request the server refuses (or a client finds it would); becomes an ``error`` event with ``code``."""

    def __init__(self, code: str, message: str, hint: str = "") -> None:
        _check_code(code, ERROR_CODES)
        super().__init__(message)
        self.code, self.message, self.hint = code, message, hint


def encode(message: dict[str, Any]) -> bytes:
    """One message as a JSON line; it cannot fail on text (a lone surrogate is sent escaped)."""
    text = json.dumps(message, separators=(",", ":"), ensure_ascii=False)
    try:
        return text.encode("utf-8") + b"\n"
    except UnicodeEncodeError:  # only \u escapes can carry what UTF-8 cannot
        return json.dumps(message, separators=(",", ":"), ensure_ascii=True).encode("ascii") + b"\n"


def encodable(value: Any) -> bool:
    """Whether every string in ``value`` (nested in lists and dicts) is valid Unicode text."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return False
        return True
    if isinstance(value, dict):
        return all(encodable(k) and encodable(v) for k, v in value.items())
    if isinstance(value, list):
        return all(encodable(v) for v in value)
    return True


def decode(line: bytes) -> dict[str, Any]:
    """Parse one line into a message object, or raise :class:`ProtocolError`."""
    if len(line) > MAX_MESSAGE_BYTES:
        raise ProtocolError("too_large", f"message of {len(line)} bytes exceeds {MAX_MESSAGE_BYTES}")
    try:
        message = json.loads(line.decode("utf-8"), object_pairs_hook=_unique_keys)
    except (UnicodeDecodeError, ValueError) as exc:
        raise ProtocolError("bad_request", f"not valid UTF-8 JSON: {exc}") from None
    except RecursionError:  # e.g. "[[[[…" nested deeper than the parser's stack
        raise ProtocolError("bad_request", "JSON nested too deeply") from None
    if not isinstance(message, dict):
        raise ProtocolError("bad_request", f"a message must be a JSON object, not {type(message).__name__}")
    if not encodable(message):  # valid JSON ("\ud800") but not text: it could never be stored or echoed
        raise ProtocolError("bad_request", "the message holds a lone surrogate (\\uD800–\\uDFFF), which is not text")
    return message


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object whose keys appear once: with two, which one counts would be a guess."""
    seen: set[str] = set()
    for key, _ in pairs:
        if key in seen:
            raise ValueError(f"duplicate key {key[:64]!r}")
        seen.add(key)
    return dict(pairs)


def validate_request(message: dict[str, Any]) -> dict[str, Any]:
    """Check a request's type, id and fields; returns it unchanged or raises ProtocolError."""
    kind = message.get("type")
    if not isinstance(kind, str):
        raise ProtocolError("bad_request", "missing or non-string 'type'")
    if kind not in REQUESTS:
        raise ProtocolError("unknown_type", f"unknown request type '{kind[:64]}'", hint=f"one of {', '.join(REQUESTS)}")
    rid = message.get("id")
    if kind != "hello" and (
        isinstance(rid, bool) or not isinstance(rid, (str, int)) or (isinstance(rid, str) and len(rid) > 128)
    ):
        raise ProtocolError("bad_request", "every request needs an 'id' (a string ≤ 128 chars or an integer)")
    schema = REQUESTS[kind]
    unknown = set(message) - set(schema) - {"type", "id"}
    if unknown:
        raise ProtocolError("bad_request", f"unknown field(s) {sorted(unknown)[:5]} for '{kind}'")
    _check_fields(kind, message, schema)
    if kind in ("generate", "continue") and "export" in message:
        # the optional export object (export afterwards) takes export's settings (all but "job").
        settings = {k: v for k, v in REQUESTS["export"].items() if k != "job"}
        unknown = set(message["export"]) - set(settings)
        if unknown:
            raise ProtocolError("bad_request", f"unknown field(s) {sorted(unknown)[:5]} in 'export'")
        _check_fields(f"{kind}.export", message["export"], settings)
    if kind in MESH_FIELDS:
        _check_mesh_fields(kind, message)
    return message


def _check_mesh_fields(kind: str, message: dict[str, Any]) -> None:
    """One mesh at most (texture: exactly one), as a path or as a well-formed ``mesh_data``."""
    path, data = MESH_FIELDS[kind]
    if path in message and data in message:
        raise ProtocolError("bad_request", f"'{kind}' takes '{path}' or '{data}', not both")
    if kind == "texture" and path not in message and data not in message:
        raise ProtocolError("bad_request", f"'texture' needs the field '{data}' (or '{path}')")
    value = message.get(data)
    if value is None:
        return
    if set(value) - {"format", "gzip", "base64"} or not isinstance(value.get("base64"), str):
        raise ProtocolError("bad_mesh_data", f"'{data}' must be an object {{format, gzip, base64}}")
    if value.get("format") not in MESH_FORMATS or not isinstance(value.get("gzip", False), bool):
        raise ProtocolError("bad_mesh_data", f"'{data}' format must be one of {', '.join(MESH_FORMATS)}")


def mesh_data(raw: bytes, fmt: str) -> dict[str, Any]:
    """A mesh file's bytes as a request's ``mesh_data``/``init_mesh_data`` (gzip, then base64);
    raises ``mesh_too_large`` where the server would refuse it or it cannot fit in a message."""
    if fmt not in MESH_FORMATS:
        raise ValueError(f"'{fmt}' is not one of {MESH_FORMATS}")
    if len(raw) > MAX_MESH_BYTES:
        raise ProtocolError("mesh_too_large", f"the mesh is {_mib(len(raw))} as {fmt}, over {_mib(MAX_MESH_BYTES)}")
    text = base64.b64encode(gzip.compress(raw, compresslevel=6, mtime=0)).decode("ascii")
    if len(text) > _MAX_MESH_TEXT:
        raise ProtocolError("mesh_too_large", f"the mesh is {_mib(len(text))} packed, over {_mib(_MAX_MESH_TEXT)}")
    return {"format": fmt, "gzip": True, "base64": text}


def read_mesh_data(value: dict[str, Any]) -> bytes:
    """The file bytes of a validated ``mesh_data``; raises ``bad_mesh_data`` or ``mesh_too_large``."""
    try:
        packed = base64.b64decode(value["base64"], validate=True)
    except (binascii.Error, ValueError):
        raise ProtocolError("bad_mesh_data", "the sent mesh is not valid base64") from None
    if not value.get("gzip", False):
        return packed  # under MAX_MESH_BYTES: its message is at most 16 MiB
    unpack = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)  # gzip; the limit stops a zip bomb
    try:
        raw = unpack.decompress(packed, MAX_MESH_BYTES + 1)
    except zlib.error as exc:
        raise ProtocolError("bad_mesh_data", f"the sent mesh is not valid gzip data: {exc}") from None
    if len(raw) > MAX_MESH_BYTES:
        raise ProtocolError("mesh_too_large", f"the sent mesh is over {_mib(MAX_MESH_BYTES)} unpacked")
    if not unpack.eof or unpack.unused_data:
        raise ProtocolError("bad_mesh_data", "the sent mesh's gzip data is cut short or followed by more")
    return raw


def _mib(size: int) -> str:
    return f"{size / 2**20:.1f} MiB"


def _check_fields(kind: str, message: dict[str, Any], schema: dict[str, tuple[Any, bool]]) -> None:
    for name, (typ, required) in schema.items():
        if name not in message:
            if required:
                raise ProtocolError("bad_request", f"'{kind}' needs the field '{name}'")
            continue
        _check_field(kind, name, message[name], typ)


def _check_field(kind: str, name: str, value: Any, typ: Any) -> None:
    # bool is an int in Python; the protocol keeps them apart.
    if isinstance(value, bool) and typ is not _BOOL or not isinstance(value, typ):
        raise ProtocolError("bad_request", f"'{name}' of '{kind}' has the wrong type")
    if isinstance(value, str) and len(value) > _MAX_TEXT:
        raise ProtocolError("bad_request", f"'{name}' is longer than {_MAX_TEXT} characters")
    if name in _RANGES and not isinstance(value, (str, dict)):
        lo, hi = _RANGES[name]
        if not lo <= value <= hi or value != value:  # value != value: NaN
            raise ProtocolError("bad_request", f"'{name}' = {value} is out of range [{lo}, {hi}]")


def _check_code(code: str, codes: dict[str, str]) -> None:
    if code not in codes:
        raise ValueError(f"'{code}' is not a protocol error code")


def error_event(
    code: str, message: str, hint: str = "", request_id: Any = None, job: str | None = None, reason: str = ""
) -> dict[str, Any]:
    """An ``error`` event; ``code`` must be one of :data:`ERROR_CODES` or :data:`CLIENT_ERROR_CODES`,
    ``reason`` "" or one of :data:`ERROR_REASONS`."""
    _check_code(code, {**ERROR_CODES, **CLIENT_ERROR_CODES})
    if reason:
        _check_code(reason, ERROR_REASONS)
    event: dict[str, Any] = {"event": "error", "code": code, "message": message, "hint": hint, "reason": reason}
    if request_id is not None:
        event["id"] = request_id
    if job is not None:
        event["job"] = job
    return event


def job_event(event: str, job: str, **fields: Any) -> dict[str, Any]:
    """A job event with every field :data:`JOB_EVENT_FIELDS` requires (extra fields allowed)."""
    missing = [f for f in JOB_EVENT_FIELDS[event] if f not in fields]
    if missing:
        raise ValueError(f"'{event}' event without {', '.join(missing)}")
    return {"event": event, "job": job, **fields}


def malformed(message: dict[str, Any]) -> str | None:
    """Why a received job event lacks what :data:`JOB_EVENT_FIELDS` promises, or None if it is whole."""
    kind = message.get("event")
    if kind not in JOB_EVENT_FIELDS or "id" in message:
        return None  # a reply, or an event without a fixed shape
    missing = [f for f in JOB_EVENT_FIELDS[kind] if f not in message]
    return f"'{kind}' event without {', '.join(missing)}" if missing else None
