"""The generation server: a local TCP service that the Blender add-on drives (``sdi-blender serve``).

One thread per connection reads requests (:mod:`sdi_blender.protocol`: JSON lines), and
one writer thread per connection sends its replies and job events from a bounded queue,
so a client that stops reading can never block the job worker or other clients; it is
dropped instead. Jobs run one at a time in :class:`~sdi_blender.server.service.jobs.JobManager`,
or with ``--ray`` in parallel on a Ray cluster's GPUs (:mod:`~sdi_blender.server.service.ray_pool`).

Security: the server listens on loopback unless told otherwise, and every connection
must first present the token that the server wrote, readable by the user only, to
its token file.
"""

from __future__ import annotations

import argparse
import hmac
import ipaddress
import json
import logging
import os
import queue
import secrets
import signal
import socket
import socketserver
import threading
from pathlib import Path
from typing import Any

from ... import __version__
from ...catalog import DEFAULT_MODEL, DEVICE_HELP
from ...errors import UserError, run_command
from ...protocol import (
    ERROR_CODES,
    MAX_MESSAGE_BYTES,
    PROTOCOL_VERSION,
    ProtocolError,
    decode,
    encode,
    error_event,
    validate_request,
)
from .lock import JobsFolderLock

log = logging.getLogger("sdi_blender.server")
HELLO_TIMEOUT_S = 30.0
"""An unauthenticated connection has this long in all to present its hello."""
HELLO_MAX_BYTES = 4096
"""The longest hello read before the token check (a hello is ~100 bytes)."""
OUTBOX_LIMIT = 4096
"""Queued outgoing messages before a non-reading client is dropped."""
OUTBOX_BYTES = 64 * 1024 * 1024
"""Queued outgoing bytes before a non-reading client is dropped (previews are the big ones)."""
MAX_CONNECTIONS = 64
"""Open connections at once; one more is refused with ``too_busy``."""


class Connection:
    """One client's socket with its outgoing queue and writer thread."""

    def __init__(self, sock: socket.socket, name: str) -> None:
        self.sock, self.name = sock, name
        self._outbox: queue.Queue[bytes | None] = queue.Queue(OUTBOX_LIMIT)
        self._queued_bytes, self._bytes_lock = 0, threading.Lock()
        self._writer = threading.Thread(target=self._write, name=f"send-{name}", daemon=True)
        self._writer.start()

    def send(self, message: dict[str, Any]) -> None:
        """Queue a message; never blocks (a client too slow to keep up is disconnected)."""
        data = encode(message)
        with self._bytes_lock:
            full = self._queued_bytes + len(data) > OUTBOX_BYTES
            if not full:
                self._queued_bytes += len(data)
        try:
            if full:
                raise queue.Full
            self._outbox.put_nowait(data)
        except queue.Full:
            log.warning("%s: not reading its messages; disconnecting", self.name)
            self.abort()

    def close(self, timeout: float = 5.0) -> None:
        """Send what is queued, then stop the writer."""
        try:
            self._outbox.put(None, timeout=timeout)
        except queue.Full:
            self.abort()
        self._writer.join(timeout)

    def abort(self) -> None:
        """Break the connection now (unblocks both its reader and its writer)."""
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _write(self) -> None:
        while (data := self._outbox.get()) is not None:
            try:
                self.sock.sendall(data)
            except OSError:  # the client went away; drain silently until closed
                pass
            with self._bytes_lock:
                self._queued_bytes -= len(data)


class _Handler(socketserver.StreamRequestHandler):
    server: Server

    def handle(self) -> None:
        conn = Connection(self.request, f"{self.client_address[0]}:{self.client_address[1]}")
        if not self.server.track(conn, True):
            conn.send(error_event("too_busy", f"the server already has {MAX_CONNECTIONS} connections"))
            conn.close()
            return
        try:
            if self._hello(conn):
                self._serve(conn)
        except OSError:
            pass  # reset or aborted: the client is gone
        finally:
            self.server.track(conn, False)
            conn.close()

    def _read(self, limit: int = MAX_MESSAGE_BYTES) -> dict[str, Any] | None:
        """The next message; None at end of stream. Raises ProtocolError for a bad line."""
        line = self.rfile.readline(limit + 1)
        if not line:
            return None
        if len(line) > limit and not line.endswith(b"\n"):
            raise ProtocolError(
                "too_large",
                f"message longer than {limit} bytes",
                hint="the connection is closed: the stream cannot be resynchronised",
            )
        return decode(line.rstrip(b"\r\n"))

    def _hello(self, conn: Connection) -> bool:
        """Check the first message; on failure send ``unauthorized`` (or ``too_large``)."""
        self.request.settimeout(HELLO_TIMEOUT_S)
        # One deadline for the whole hello: a client trickling a byte at a time gets no longer.
        expired = threading.Event()

        def expire() -> None:
            expired.set()
            _shut_read(self.request)

        deadline = threading.Timer(HELLO_TIMEOUT_S, expire)
        deadline.daemon = True
        deadline.start()
        message: Any = None
        try:
            message = self._read(HELLO_MAX_BYTES)
            if message is None and not expired.is_set():
                return False
            if not expired.is_set():
                validate_request(message)
                self.server.check_hello(message)
        except ProtocolError as exc:
            if not expired.is_set():  # a line cut short by the deadline is the deadline's fault
                code = "too_large" if exc.code == "too_large" else "unauthorized"
                conn.send(error_event(code, exc.message, exc.hint, _request_id(message)))
                return False
        except TimeoutError:
            expired.set()
        finally:
            deadline.cancel()
        if expired.is_set():
            conn.send(error_event("unauthorized", f"no hello within {HELLO_TIMEOUT_S:.0f} s"))
            return False
        self.request.settimeout(None)
        conn.send(
            _with_id({"event": "hello", "protocol": PROTOCOL_VERSION, "version": __version__}, _request_id(message))
        )
        return True

    def _serve(self, conn: Connection) -> None:
        while True:
            message: Any = None
            try:
                message = self._read()
                if message is None:
                    return
                validate_request(message)
            except ProtocolError as exc:
                conn.send(error_event(exc.code, exc.message, exc.hint, _request_id(message)))
                if exc.code == "too_large":
                    return  # the rest of that line would be read as garbage
                continue
            self.server.dispatch(conn, message)


def _shut_read(sock: socket.socket) -> None:
    """Stop reading ``sock`` (a blocked read returns at once); its replies can still be sent."""
    try:
        sock.shutdown(socket.SHUT_RD)
    except OSError:
        pass


def _request_id(message: Any) -> Any:
    """The message's id if it is one the protocol allows (so it can be echoed), else None."""
    rid = message.get("id") if isinstance(message, dict) else None
    if isinstance(rid, int) and not isinstance(rid, bool) or isinstance(rid, str) and len(rid) <= 128:
        return rid
    return None


def _with_id(event: dict[str, Any], rid: Any) -> dict[str, Any]:
    return {**event, "id": rid} if rid is not None else event


class Server(socketserver.ThreadingTCPServer):
    """The listening socket, the connections and their job subscriptions; ``manager`` runs jobs."""

    daemon_threads = True  # a hung client must not keep the process alive at exit
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], token: str, device: Any) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, _Handler)
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
                if len(self._connections) >= MAX_CONNECTIONS:
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
            conn.send(_with_id(reply, rid))

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


def check_host(host: str, allow_remote: bool) -> None:
    """Refuse a non-loopback address unless ``allow_remote``: the token travels in clear text."""
    if host == "localhost" or allow_remote:
        return
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise UserError(
            f"refusing to listen on non-loopback address '{host}'",
            hint="use 127.0.0.1, or pass --allow-remote if the network is trusted",
        )


def write_token(path: Path, token: str) -> None:
    """Write ``token`` to a fresh file readable by the user only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)  # O_CREAT's mode only applies to a new file
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(token + "\n")


def _log_to(path: Path) -> None:
    """Log to a file: a parent that never reads our stderr pipe must not block the worker."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(threadName)s %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)


def serve(
    *,
    host: str,
    port: int,
    token_file: Path | None,
    jobs_dir: Path | None,
    model: str | None,
    device: str,
    allow_remote: bool,
    model_roots: tuple[Path, ...] = (),
    ray: str | None = None,
    ray_cpus: float = 1.0,
) -> int:
    """Run the server until a shutdown request or SIGINT/SIGTERM; returns the exit code.

    ``ray``: None runs the jobs here, one at a time; ``auto`` or a cluster's address runs them
    on Ray (:mod:`.ray_pool`), one per GPU, or per ``ray_cpus`` CPUs on a cluster without GPUs."""
    check_host(host, allow_remote)
    if ray is not None:
        from ..util.ray_cluster import host_port, ray_module

        ray_module("serve --ray")  # missing: one line, before anything starts
        if ray != "auto":
            host_port(ray)
    from ..diffusion.model_source import check_model_name
    from ..util.cache import cache_root
    from ..util.devices import resolve_device
    from .jobs import JobManager  # torch: only once the arguments are known to be sound

    model = model or DEFAULT_MODEL
    check_model_name(model)
    dev = resolve_device(device)
    jobs_dir = (jobs_dir or cache_root() / "jobs").expanduser()
    if ray is not None:
        jobs_dir = jobs_dir.resolve()  # the actors' working folders are not ours
    token_file = (token_file or jobs_dir / "server.token").expanduser()
    token = secrets.token_urlsafe(32)
    lock = JobsFolderLock(jobs_dir)
    try:
        lock.acquire()  # before the token and the jobs: a second server must touch neither
    except OSError as exc:
        raise UserError(f"cannot use the jobs folder '{jobs_dir}': {exc.strerror or exc}") from exc
    try:
        backend, started_ray = _backend(ray, device, ray_cpus)  # a bad address fails here, before listening
    except BaseException:
        lock.release()
        raise
    try:
        server = Server((host, port), token, dev)
    except OSError as exc:
        _stop_ray(started_ray)
        lock.release()
        raise UserError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
    try:
        _log_to(jobs_dir / "server.log")
        roots = tuple(r.expanduser() for r in model_roots) if allow_remote else None
        server.manager = JobManager(
            jobs_dir, server.broadcast, device=dev, model=model, model_roots=roots, backend=backend
        )
        write_token(token_file, token)
    except OSError as exc:
        server.server_close()
        _stop_ray(started_ray)
        lock.release()
        raise UserError(f"cannot use '{exc.filename or jobs_dir}': {exc.strerror or exc}") from exc
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: threading.Thread(target=server.stop, daemon=True).start())
    bound_host, bound_port = server.server_address[:2]
    print(
        json.dumps(
            {
                "event": "listening",
                "host": bound_host,
                "port": bound_port,
                "pid": os.getpid(),
                "protocol": PROTOCOL_VERSION,
            }
        ),
        flush=True,
    )
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.close_connections()
        server.server_close()
        token_file.unlink(missing_ok=True)
        _stop_ray(started_ray)
        lock.release()
    return 0


def _backend(ray: str | None, device: str, ray_cpus: float) -> tuple[Any, bool]:
    """The jobs' backend factory (given the manager), and whether Ray was started here."""
    from .runner import LocalWorker

    if ray is None:
        return LocalWorker, False
    from functools import partial

    from ..util.ray_cluster import connect
    from .ray_pool import NAMESPACE, RayPool

    started = connect(ray, "serve --ray", namespace=NAMESPACE)
    return partial(RayPool, device=device, cpus=ray_cpus), started


def _stop_ray(started: bool) -> None:
    if started:
        import ray

        ray.shutdown()


DESCRIPTION = (
    "Serve generate/continue/export jobs over a local TCP socket (JSON lines). "
    'Prints one JSON line {"event": "listening", ...} when ready.'
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The server's options, for ``sdi-blender serve`` and ``python -m sdi_blender.server`` alike."""
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=0, help="port (default 0: any free port)")
    p.add_argument("--token-file", type=Path, help="where to write the access token (default JOBS_DIR/server.token)")
    p.add_argument("--jobs-dir", type=Path, help="job folders (default ~/.cache/sdi-blender/jobs)")
    p.add_argument(
        "--model",
        help=f"default model of generate jobs: hub id (default {DEFAULT_MODEL}), local diffusers directory or 'tiny'",
    )
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.add_argument(
        "--allow-remote", action="store_true", help="allow a non-loopback --host (the token is sent in clear text)"
    )
    p.add_argument(
        "--model-root",
        type=Path,
        action="append",
        default=[],
        metavar="DIR",
        help="with --allow-remote: a folder whose model folders clients may name (repeatable; "
        "otherwise remote clients get hub ids and built-in models only)",
    )
    p.add_argument(
        "--ray",
        nargs="?",
        const="auto",
        metavar="auto|ADDRESS",
        help="run the jobs in parallel on Ray, one per GPU: auto (or no value): a local Ray, or the cluster "
        "RAY_ADDRESS names; HOST:PORT: that cluster's head (JOBS_DIR must be a path every node sees)",
    )
    p.add_argument(
        "--ray-cpus",
        type=float,
        default=1.0,
        metavar="N",
        help="with --ray on a cluster without GPUs (or --device cpu): CPUs per job (default 1)",
    )


def run_from_args(args: argparse.Namespace) -> int:
    """Serve with parsed :func:`add_arguments` options."""
    if not 0 <= args.port <= 65535:
        raise UserError(f"port must be between 0 and 65535, got {args.port}")
    if args.ray_cpus <= 0:
        raise UserError(f"--ray-cpus must be positive, got {args.ray_cpus}")
    return serve(
        host=args.host,
        port=args.port,
        token_file=args.token_file,
        jobs_dir=args.jobs_dir,
        model=args.model,
        device=args.device,
        allow_remote=args.allow_remote,
        model_roots=tuple(args.model_root),
        ray=args.ray,
        ray_cpus=args.ray_cpus,
    )


def main(argv: list[str] | None = None) -> int:
    """``python -m sdi_blender.server``: the server alone, without the CLI's other commands."""
    parser = argparse.ArgumentParser(prog="python -m sdi_blender.server", description=DESCRIPTION)
    add_arguments(parser)
    args = parser.parse_args(argv)
    return run_command(parser.prog, lambda: run_from_args(args))
