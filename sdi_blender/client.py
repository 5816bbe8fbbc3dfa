"""Client of the generation server: what the Blender add-on (and scripts) use.

Torch-free and bpy-free. A :class:`Client` holds one connection: requests wait for the
reply carrying their ``id``; every job event (``progress``, ``preview``, ``done`` …) is
put on :attr:`Client.events` by a background reader thread, so a UI polls it without
blocking. :class:`LocalServer` starts a server process and reads its ``listening`` line.
"""

from __future__ import annotations

import itertools
import json
import os
import queue
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

from .protocol import (
    CLIENT_ERROR_CODES,
    ERROR_CODES,
    ERROR_REASONS,
    MAX_MESSAGE_BYTES,
    PROTOCOL_VERSION,
    decode,
    encode,
    error_event,
)


class ServerError(Exception):
    """An ``error`` event in reply to a request, or a broken connection."""

    def __init__(self, code: str, message: str, hint: str = "", reason: str = "") -> None:
        if code not in ERROR_CODES and code not in CLIENT_ERROR_CODES:
            raise ValueError(f"'{code}' is not a protocol error code")
        super().__init__(f"{message}; {hint}" if hint else message)
        self.code, self.message, self.hint = code, message, hint
        self.reason = reason if reason in ERROR_REASONS else ""
        """What refines ``code`` (:data:`~sdi_blender.protocol.ERROR_REASONS`), "" for none."""

    @classmethod
    def from_event(cls, event: dict[str, Any]) -> ServerError:
        """The error an ``error`` event reports (a code this client does not know reads as internal)."""
        code = event.get("code")
        known = code if isinstance(code, str) and code in ERROR_CODES else "internal"
        return cls(known, str(event.get("message", "")), str(event.get("hint", "")), str(event.get("reason") or ""))


JOB_REQUESTS = ("generate", "continue", "export", "texture")
"""Requests that queue a job: one whose reply comes too late is cancelled, never orphaned."""


class Client:
    """One authenticated connection to a server."""

    def __init__(self, host: str, port: int, token: str, timeout: float = 10.0) -> None:
        self.timeout = timeout
        self.events: queue.Queue[dict[str, Any]] = queue.Queue()
        self._ids = itertools.count(1)
        self._waiting: dict[Any, queue.Queue[dict[str, Any]]] = {}
        self._abandoned: set[Any] = set()  # job requests given up on: a late "queued" is cancelled
        self._lock = threading.Lock()
        try:
            self._sock = socket.create_connection((host, port), timeout=timeout)
        except OSError as exc:
            raise ServerError("unreachable", f"cannot reach the server at {host}:{port}: {exc}") from exc
        self._sock.settimeout(None)
        self._file = self._sock.makefile("rb")
        self._reader = threading.Thread(target=self._read_loop, daemon=True, name="sdi-client")
        self._reader.start()
        self.hello = self.request("hello", token=token, protocol=PROTOCOL_VERSION)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def request(self, kind: str, timeout: float | None = None, **fields: Any) -> dict[str, Any]:
        """Send a request and return its first reply; an ``error`` reply raises ServerError."""
        rid = next(self._ids)
        box: queue.Queue[dict[str, Any]] = queue.Queue(maxsize=1)
        with self._lock:
            self._waiting[rid] = box
        try:
            self._send({"type": kind, "id": rid, **fields})
            try:
                reply = box.get(timeout=timeout or self.timeout)
            except queue.Empty:
                if kind in JOB_REQUESTS:  # reported failed here, so it must not run there
                    with self._lock:
                        self._abandoned.add(rid)
                raise ServerError("timeout", f"no reply to '{kind}' within {timeout or self.timeout} s") from None
        finally:
            with self._lock:
                self._waiting.pop(rid, None)
        if reply.get("event") == "error":
            raise ServerError.from_event(reply)
        return reply

    def close(self) -> None:
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._sock.close()

    def _send(self, message: dict[str, Any]) -> None:
        try:
            with self._lock:
                self._sock.sendall(encode(message))
        except OSError as exc:
            raise ServerError("disconnected", f"the connection to the server is lost: {exc}") from exc

    def _read_loop(self) -> None:
        try:
            while line := self._file.readline(MAX_MESSAGE_BYTES + 1):
                message = decode(line)
                if self._cancel_abandoned(message):
                    continue
                with self._lock:
                    box = self._waiting.get(message.get("id"))
                if box is not None and box.empty():
                    box.put(message)
                if "job" in message or box is None:
                    self.events.put(message)
        except Exception as exc:
            self.events.put(error_event("disconnected", str(exc)))
            return
        self._fail_waiting("the server closed the connection")

    def _cancel_abandoned(self, message: dict[str, Any]) -> bool:
        """Cancel the job of a request that timed out here; True if ``message`` was that late reply."""
        with self._lock:
            late = message.get("id") in self._abandoned
            self._abandoned.discard(message.get("id"))
        if not late or message.get("event") != "queued":
            return late
        job = message.get("job")
        try:
            self._send({"type": "cancel", "id": f"abandoned-{message['id']}", "job": job})
        except ServerError:
            return True  # the connection is going: its reader reports that
        self.events.put({"event": "notice", "message": f"cancelled job {job}: its request had timed out here"})
        return True

    def _fail_waiting(self, why: str) -> None:
        event = error_event("disconnected", why)
        with self._lock:
            for box in self._waiting.values():
                if box.empty():
                    box.put(event)
        self.events.put(event)


class LocalServer:
    """A server process on this machine, started with ``python -m sdi_blender.server``."""

    def __init__(
        self,
        jobs_dir: Path,
        python: str = sys.executable,
        model: str | None = None,
        device: str = "auto",
        timeout: float = 120.0,
    ) -> None:
        token_file = Path(jobs_dir) / "server.token"
        args = [
            python,
            "-m",
            "sdi_blender.server",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--jobs-dir",
            str(jobs_dir),
            "--token-file",
            str(token_file),
        ]
        if model:
            args += ["--model", model]
        args += ["--device", device]
        # stderr goes to a file: a pipe nobody reads would block the server once full.
        self.stderr_path = Path(jobs_dir) / "server.stderr"
        Path(jobs_dir).mkdir(parents=True, exist_ok=True)
        try:
            with open(self.stderr_path, "wb") as stderr:
                self.process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=stderr, env=os.environ.copy())
        except OSError as exc:
            raise ServerError("unreachable", f"cannot start the server with {python}: {exc}") from exc
        self.info = self._read_listening(timeout)
        self.host, self.port = self.info["host"], int(self.info["port"])
        self.token = token_file.read_text(encoding="utf-8").strip()

    def _read_listening(self, timeout: float) -> dict[str, Any]:
        result: dict[str, Any] = {}

        def read() -> None:
            assert self.process.stdout is not None  # started with stdout=PIPE
            line = self.process.stdout.readline()
            if line:
                result.update(json.loads(line))

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        reader.join(timeout)
        if result.get("event") != "listening":
            self.process.kill()
            self.process.wait()
            err = self.stderr_path.read_text(errors="replace").strip().splitlines()
            raise ServerError("unreachable", "the server did not start: " + (err[-1] if err else "no output"))
        return result

    def connect(self, timeout: float = 10.0) -> Client:
        return Client(self.host, self.port, self.token, timeout)

    def stop(self, timeout: float = 30.0) -> None:
        """Ask the server to shut down; kill it if it does not."""
        if self.process.poll() is None:
            try:
                with self.connect() as client:
                    client.request("shutdown")
                self.process.wait(timeout)
            except (ServerError, subprocess.TimeoutExpired):
                self.process.kill()
                self.process.wait()
