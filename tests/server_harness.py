"""A real server subprocess and a minimal raw-protocol client, for tests that talk to a server.

Imported by tests/conftest.py (the shared session server) and by the tests that start a server
of their own (one they stop, kill or restart).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

TERMINAL = ("done", "cancelled", "error")


class Server:
    """A server subprocess and what its listening line said."""

    def __init__(self, jobs_dir: Path, args: tuple[str, ...] = ()) -> None:
        """``args``: more server options (e.g. ``--ray ADDRESS``)."""
        self.jobs_dir = jobs_dir
        self.log = open(jobs_dir.parent / f"{jobs_dir.name}-server.log", "ab")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "sdi_blender.server",
                "--model",
                "tiny",
                "--device",
                "cpu",
                "--jobs-dir",
                str(jobs_dir),
                *args,
            ],
            stdout=subprocess.PIPE,
            stderr=self.log,
            env=os.environ.copy(),
        )
        line = self.proc.stdout.readline()
        assert line, f"the server exited: {self.proc.wait()}"
        self.listening = json.loads(line)
        self.host, self.port = self.listening["host"], self.listening["port"]
        self.token = (jobs_dir / "server.token").read_text().strip()

    def client(self) -> Client:
        return Client(self.port, self.token)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self.log.close()


class Client:
    """A minimal protocol client: JSON lines over a socket; job events are kept in ``backlog``."""

    def __init__(self, port: int, token: str | None = None) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=60)
        self.file = self.sock.makefile("rb")
        self.backlog: list[dict[str, Any]] = []
        self.next_id = 0
        if token is not None:
            assert self.ask({"type": "hello", "token": token, "protocol": 1})["event"] == "hello"

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def recv(self) -> dict[str, Any] | None:
        line = self.file.readline()
        return json.loads(line) if line else None

    def ask(self, message: dict[str, Any]) -> dict[str, Any]:
        """Send a request and return its reply (the first message echoing its id)."""
        self.next_id += 1
        self.send_raw((json.dumps({**message, "id": self.next_id}) + "\n").encode())
        while (event := self.recv()) is not None and event.get("id") != self.next_id:
            self.backlog.append(event)
        assert event is not None, "connection closed"
        return event

    def events(self, job: str) -> list[dict[str, Any]]:
        """The job's events until its terminal one (from the backlog first)."""
        events = [e for e in self.backlog if e.get("job") == job]
        self.backlog = [e for e in self.backlog if e.get("job") != job]
        while not events or events[-1]["event"] not in TERMINAL:
            event = self.recv()
            assert event is not None, f"connection closed after {events}"
            events.append(event)
        return events

    def close(self) -> None:
        self.file.close()
        self.sock.close()
