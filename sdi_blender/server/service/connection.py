"""One client connection of the server: the transport under :class:`~.server.Server`.

A reader thread per connection (:class:`Handler`) checks the hello within one deadline,
then reads requests (:mod:`sdi_blender.protocol`: JSON lines) and hands each valid one to
its server; a writer thread per :class:`Connection` sends the replies and job events from
a bounded queue, so a client that stops reading can never block the job worker or other
clients; it is dropped instead.
"""

from __future__ import annotations

import logging
import queue
import socket
import socketserver
import threading
from typing import Any, Protocol, cast

from ... import __version__
from ...protocol import (
    MAX_MESSAGE_BYTES,
    PROTOCOL_VERSION,
    ProtocolError,
    decode,
    encode,
    error_event,
    validate_request,
)

log = logging.getLogger("sdi_blender.server")
HELLO_TIMEOUT_S = 30.0
"""An unauthenticated connection has this long in all to present its hello."""
HELLO_MAX_BYTES = 4096
"""The longest hello read before the token check (a hello is ~100 bytes)."""
OUTBOX_LIMIT = 4096
"""Queued outgoing messages before a non-reading client is dropped."""
OUTBOX_BYTES = 64 * 1024 * 1024
"""Queued outgoing bytes before a non-reading client is dropped (previews are the big ones)."""


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


class Endpoint(Protocol):
    """What a connection needs of its server (:class:`~.server.Server`)."""

    max_connections: int

    def track(self, conn: Connection, open_: bool) -> bool: ...

    def check_hello(self, message: dict[str, Any]) -> None: ...

    def dispatch(self, conn: Connection, message: dict[str, Any]) -> None: ...


class Handler(socketserver.StreamRequestHandler):
    """One connection's reader: the hello, then each request to the server's ``dispatch``."""

    @property
    def endpoint(self) -> Endpoint:
        return cast(Endpoint, self.server)

    def handle(self) -> None:
        conn = Connection(self.request, f"{self.client_address[0]}:{self.client_address[1]}")
        if not self.endpoint.track(conn, True):
            conn.send(error_event("too_busy", f"the server already has {self.endpoint.max_connections} connections"))
            conn.close()
            return
        try:
            if self._hello(conn):
                self._serve(conn)
        except OSError:
            pass  # reset or aborted: the client is gone
        finally:
            self.endpoint.track(conn, False)
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
                self.endpoint.check_hello(message)
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
            with_id({"event": "hello", "protocol": PROTOCOL_VERSION, "version": __version__}, _request_id(message))
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
            self.endpoint.dispatch(conn, message)


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


def with_id(event: dict[str, Any], rid: Any) -> dict[str, Any]:
    """``event`` answering the request ``rid`` (unchanged when there is no id to echo)."""
    return {**event, "id": rid} if rid is not None else event
