"""The generation server: a local TCP service that the Blender add-on drives (``sdi-blender serve``).

:class:`Server` answers each connection's requests, keeps the job subscriptions and
broadcasts job events to them; the transport under it (a reader and a writer thread per
connection, the hello's deadline) is :mod:`.connection`, and starting it from the command
line is :mod:`.launch`. Jobs run one at a time in :class:`~sdi_blender.server.service.jobs.JobManager`,
or with ``--ray`` in parallel on a Ray cluster's GPUs (:mod:`~sdi_blender.server.service.ray_pool`).

Security: every connection must first present the token that the server wrote, readable by
the user only, to its token file.
"""

from __future__ import annotations

import hmac
import logging
import socket
import socketserver
import threading
from typing import Any

from ... import __version__
from ...errors import UserError
from ...protocol import ERROR_CODES, PROTOCOL_VERSION, ProtocolError, error_event
from .connection import Connection, Handler, with_id

log = logging.getLogger("sdi_blender.server")


class Server(socketserver.ThreadingTCPServer):
    """The listening socket, the connections and their job subscriptions; ``manager`` runs jobs."""

    daemon_threads = True  # a hung client must not keep the process alive at exit
    allow_reuse_address = True
    max_connections = 64
    """Open connections at once; one more is refused with ``too_busy``."""

    def __init__(self, address: tuple[str, int], token: str, device: Any) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, Handler)
        self.token, self.device = token, device
        self.manager: Any = None  # a JobManager, set once its emit can reach this server
        self._lock = threading.Lock()
        self._subscribers: dict[str, set[Connection]] = {}
        self._connections: set[Connection] = set()
        self._stopping = threading.Event()

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.exception("connection %s failed", client_address)  # to the log file, not stderr

    # -- connections and events ---------------------------------------------------------
    def check_hello(self, message: dict[str, Any]) -> None:
        """Raise ProtocolError unless ``message`` is a hello with our protocol and token."""
        if message["type"] != "hello":
            raise ProtocolError("unauthorized", "the first message must be hello")
        if message["protocol"] != PROTOCOL_VERSION:
            raise ProtocolError(
                "unauthorized",
                f"protocol {message['protocol']} is not supported",
                hint=f"this server speaks protocol {PROTOCOL_VERSION}; update the add-on",
            )
        if not hmac.compare_digest(message["token"].encode(), self.token.encode()):
            raise ProtocolError("unauthorized", "wrong token", hint="read the server's token file again")

    def track(self, conn: Connection, open_: bool) -> bool:
        """Register a new connection (False: too many already), or forget a closed one and its subscriptions."""
        with self._lock:
            if open_:
                if len(self._connections) >= self.max_connections:
                    return False
                self._connections.add(conn)
                return True
            self._connections.discard(conn)
            for conns in self._subscribers.values():
                conns.discard(conn)
            return True

    def close_connections(self) -> None:
        """Flush every connection's last messages (e.g. shutdown's ok), then break it."""
        with self._lock:
            conns = list(self._connections)
        for conn in conns:
            conn.close(timeout=2.0)
            conn.abort()

    def subscribe(self, conn: Connection, job: str) -> None:
        with self._lock:
            self._subscribers.setdefault(job, set()).add(conn)

    def broadcast(self, job: str, event: dict[str, Any]) -> None:
        """Send a job event to the connections subscribed to ``job`` (never blocks)."""
        with self._lock:
            conns = list(self._subscribers.get(job, ()))
        for conn in conns:
            conn.send(event)

    # -- requests -----------------------------------------------------------------------
    def dispatch(self, conn: Connection, message: dict[str, Any]) -> None:
        """Answer one valid request; a failure becomes an error event, never a dead connection."""
        rid = message["id"]
        try:
            reply = getattr(self, f"_do_{message['type']}")(conn, message)
        except UserError as exc:
            code = exc.code if exc.code in ERROR_CODES else "bad_request"
            reply = error_event(code, exc.message, exc.hint, reason=getattr(exc, "reason", ""))
        except ProtocolError as exc:  # e.g. a sent mesh that does not unpack
            reply = error_event(exc.code, exc.message, exc.hint)
        except Exception as exc:
            log.exception("request %s failed", message["type"])
            reply = error_event("internal", f"{type(exc).__name__}: {exc}", "see the server's log")
        if reply is not None:
            conn.send(with_id(reply, rid))

    def _do_hello(self, conn: Connection, message: dict[str, Any]) -> dict[str, Any]:
        return error_event("bad_request", "this connection is already authenticated")

    def _do_status(self, conn: Connection, message: dict[str, Any]) -> dict[str, Any]:
        waiting, running, model = self.manager.snapshot()
        return {
            "event": "status",
            "version": __version__,
            "protocol": PROTOCOL_VERSION,
            "device": str(self.device),
            "memory": memory_info(self.device),
            "model": model,
            "queue": waiting,
            "running": running,
        }

    def _do_list_jobs(self, conn: Connection, message: dict[str, Any]) -> dict[str, Any]:
        return {"event": "jobs", "jobs": self.manager.list()}

    def _do_subscribe(self, conn: Connection, message: dict[str, Any]) -> dict[str, Any]:
        job = self.manager.get(message["job"])
        self.subscribe(conn, job.id)
        return {"event": "ok", **job.summary()}  # where the job is, to catch up from

    def _do_cancel(self, conn: Connection, message: dict[str, Any]) -> dict[str, Any]:
        result = self.manager.cancel(message["job"], keep=message.get("keep", False))
        return {"event": "ok", "job": message["job"], "result": result}

    def _do_delete_job(self, conn: Connection, message: dict[str, Any]) -> dict[str, Any]:
        self.manager.delete(message["job"])
        with self._lock:
            self._subscribers.pop(message["job"], None)
        return {"event": "ok", "job": message["job"], "result": "deleted"}

    def _do_shutdown(self, conn: Connection, message: dict[str, Any]) -> None:
        conn.send({"event": "ok", "id": message["id"], "result": "shutting down"})
        threading.Thread(target=self.stop, name="shutdown", daemon=True).start()

    def _submit(self, conn: Connection, message: dict[str, Any]) -> None:
        def queued(job: str, position: int) -> None:  # before the worker can start it
            self.subscribe(conn, job)
            conn.send({"event": "queued", "id": message["id"], "job": job, "position": position})

        request = {k: v for k, v in message.items() if k not in ("type", "id")}
        self.manager.submit(message["type"], request, queued)

    _do_generate = _do_continue = _do_export = _do_texture = _submit

    # -- lifetime -----------------------------------------------------------------------
    def stop(self) -> None:
        """Cancel the jobs (the running one checkpoints) and leave serve_forever; idempotent."""
        if self._stopping.is_set():
            return
        self._stopping.set()
        log.info("shutting down")
        self.manager.shutdown()
        self.shutdown()


def memory_info(device: Any) -> dict[str, Any]:
    """GPU memory on CUDA (``free``: what the driver says is free now, for every process), else
    the process's resident memory, in bytes."""
    if getattr(device, "type", "") == "cuda":
        import torch

        free, total = torch.cuda.mem_get_info(device)
        return {
            "kind": "cuda",
            "allocated": torch.cuda.memory_allocated(device),
            "reserved": torch.cuda.memory_reserved(device),
            "free": free,
            "total": total,
        }
    import psutil

    return {"kind": "process", "rss": psutil.Process().memory_info().rss}
