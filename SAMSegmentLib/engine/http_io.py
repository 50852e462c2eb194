"""Non-blocking HTTP/1.1 exchanges over plain or TLS sockets, driven by the caller's polls.

Why not an ordinary HTTP client: inside Slicer the main thread holds the GIL while it idles in the Qt event loop, so
no Python thread (as every blocking client needs) gets to run; and the main thread must never block for more than a
few milliseconds. So the engine client owns non-blocking sockets and moves them along from the effect's timer:
``pump(deadline)`` sends what the socket takes, reads what has arrived, and returns. HTTP framing is h11 (a kept,
sans-I/O HTTP/1.1 library, the one uvicorn uses); TLS is the standard library's ``ssl.SSLObject`` over memory BIOs.
"""

from __future__ import annotations

import errno
import logging
import select
import socket
import ssl
import time
from collections.abc import Callable, Iterator

import h11

log = logging.getLogger(__name__)

__all__ = ["Connection", "Exchange", "TransportError"]

READ_BYTES = 1 << 18
LOW_WATER = 1 << 18  # produce more request body once fewer bytes than this wait to be sent


class TransportError(ConnectionError):
    """The connection failed or broke (refused, reset, closed mid-response, protocol error)."""


class Exchange:
    """One request and its response. ``body`` is bytes, an iterator of byte chunks (sent chunked, produced one
    chunk per step so that each step stays short), or None. Callbacks run inside ``Connection.pump``:
    ``on_response(status, headers)``, ``on_data(bytes)``, ``on_end()``, ``on_error(TransportError)``."""

    def __init__(self, method: str, target: str, headers: list[tuple[str, str]],
                 body: bytes | Iterator[bytes] | None = None,
                 on_response: Callable[[int, dict[str, str]], None] | None = None,
                 on_data: Callable[[bytes], None] | None = None,
                 on_end: Callable[[], None] | None = None,
                 on_error: Callable[[TransportError], None] | None = None) -> None:
        self.method, self.target, self.headers, self.body = method, target, headers, body
        self.on_response, self.on_data, self.on_end, self.on_error = on_response, on_data, on_end, on_error
        self.status: int | None = None
        self.finished = False
        self.abandoned = False  # the caller no longer wants the answer (the connection is closed instead)
        self.reused_connection = False  # sent on a connection that had carried earlier exchanges
        # Asked just before sending: True drops the exchange unsent (on_skip runs instead), e.g. a cancelled preview
        self.skip: Callable[[], bool] | None = None
        self.on_skip: Callable[[], None] | None = None

    def _fail(self, exc: BaseException) -> None:
        if not self.finished:
            self.finished = True
            if self.on_error is not None and not self.abandoned:
                self.on_error(exc)


MAX_IDLE_S = 15.0  # an idle keep-alive connection older than this is closed instead of reused


class Connection:
    """A keep-alive HTTP/1.1 connection carrying one exchange at a time."""

    def __init__(self, host: str, port: int, ssl_context: ssl.SSLContext | None = None,
                 server_hostname: str | None = None) -> None:
        self.host, self.port = host, port
        self.h11 = h11.Connection(our_role=h11.CLIENT)
        self.exchange: Exchange | None = None
        self.closed = False
        self.last_used = time.monotonic()
        self._plain_out = bytearray()  # h11 output not yet handed to TLS / the socket
        self._wire_out = bytearray()  # bytes for the socket
        self._body_iter: Iterator[bytes] | None = None
        self._connected = False
        self.exchanges = 0  # exchanges started on this connection
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.setblocking(False)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        code = self.sock.connect_ex((host, port))
        if code not in (0, errno.EINPROGRESS, errno.EWOULDBLOCK, errno.EAGAIN, getattr(errno, "WSAEWOULDBLOCK", -1)):
            self.sock.close()
            self.closed = True
            raise TransportError(f"cannot connect to {host}:{port}: {errno.errorcode.get(code, code)}")
        self._tls: ssl.SSLObject | None = None
        self._handshaken = ssl_context is None
        if ssl_context is not None:
            self._tls_in, self._tls_out = ssl.MemoryBIO(), ssl.MemoryBIO()
            self._tls = ssl_context.wrap_bio(self._tls_in, self._tls_out, server_hostname=server_hostname or host)

    # ------------------------------------------------------------------------------------------------ state

    def fileno(self) -> int:
        return self.sock.fileno()

    @property
    def idle(self) -> bool:
        return not self.closed and self.exchange is None

    @property
    def wants_write(self) -> bool:
        return not self._connected or bool(self._wire_out or self._plain_out) or self._body_iter is not None

    def start(self, exchange: Exchange) -> None:
        if self.exchange is not None or self.closed:
            raise RuntimeError("connection busy or closed")
        self.exchange = exchange
        exchange.reused_connection = self.exchanges > 0
        self.exchanges += 1
        headers = list(exchange.headers)
        names = {k.lower() for k, _ in headers}
        if "host" not in names:
            headers.append(("Host", f"{self.host}:{self.port}"))
        body = exchange.body
        if isinstance(body, (bytes, bytearray)):
            headers.append(("Content-Length", str(len(body))))
        elif body is not None:
            headers.append(("Transfer-Encoding", "chunked"))
        elif exchange.method in ("POST", "PUT"):
            headers.append(("Content-Length", "0"))
        self._plain_out += self.h11.send(h11.Request(method=exchange.method, target=exchange.target, headers=headers))
        if isinstance(body, (bytes, bytearray)):
            if body:
                self._plain_out += self.h11.send(h11.Data(data=bytes(body)))
            self._plain_out += self.h11.send(h11.EndOfMessage())
        elif body is not None:
            self._body_iter = iter(body)
        else:
            self._plain_out += self.h11.send(h11.EndOfMessage())
        self.last_used = time.monotonic()

    def stale(self) -> bool:
        """True when an idle keep-alive connection was closed by the server (it would fail the next request), or
        has been idle for ``MAX_IDLE_S``: reusing it would race the server's keep-alive timeout (30 s), whose close
        may never reach us when another process holds the server's end of the socket."""
        if self.closed:
            return True
        if not self._connected or self.exchange is not None:
            return False
        if time.monotonic() - self.last_used > MAX_IDLE_S:
            return True
        try:
            readable, _, _ = select.select([self.sock], [], [], 0)
            if not readable:
                return False
            return self.sock.recv(1, socket.MSG_PEEK) == b""
        except (BlockingIOError, InterruptedError):
            return False
        except OSError:
            return True

    def abandon(self) -> None:
        """Drop the current exchange without waiting for its answer: the connection closes."""
        if self.exchange is not None:
            self.exchange.abandoned = True
        self.close()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            try:
                self.sock.close()
            except OSError:
                pass
            if self.exchange is not None:
                self.exchange._fail(TransportError("the connection was closed"))
                self.exchange = None

    # ------------------------------------------------------------------------------------------------ I/O

    def pump(self, deadline: float) -> None:
        """Send and receive what the socket allows now; stop producing request body at ``deadline``
        (time.monotonic()). Errors end the exchange through its ``on_error``."""
        if self.closed:
            return
        try:
            if not self._connected and not self._check_connected():
                return
            if not self._handshaken and not self._handshake():
                return
            self._send(deadline)
            self._receive()
        except TransportError as exc:
            self._break(exc)
        except (h11.ProtocolError, ssl.SSLError) as exc:
            self._break(TransportError(f"the engine's answer could not be read: {exc}"))
        except OSError as exc:
            self._break(TransportError(f"the connection to the engine broke: {exc.strerror or exc}"))

    def _break(self, exc: TransportError) -> None:
        exchange, self.exchange = self.exchange, None
        self.close()
        if exchange is not None:
            exchange._fail(exc)

    def _check_connected(self) -> bool:
        code = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if code:
            raise TransportError(f"cannot connect to the engine at {self.host}:{self.port}: {errno.errorcode.get(code, code)}")
        try:
            self.sock.getpeername()
        except OSError:
            return False  # still connecting
        self._connected = True
        return True

    def _handshake(self) -> bool:
        """Advance the TLS handshake with what the socket allows now; True once it is complete."""
        assert self._tls is not None
        for attempt in range(2):
            try:
                self._tls.do_handshake()
                self._handshaken = True
            except ssl.SSLWantReadError:
                pass
            self._flush_tls()
            self._write_socket()
            if self._handshaken or attempt:
                break
            self._read_socket_into_tls()  # then try once more with what has arrived
        return self._handshaken

    def _flush_tls(self) -> None:
        if self._tls is not None:
            data = self._tls_out.read()
            if data:
                self._wire_out += data

    def _send(self, deadline: float) -> None:
        while True:
            if self._body_iter is not None and len(self._plain_out) + len(self._wire_out) < LOW_WATER:
                if time.monotonic() < deadline:
                    try:
                        chunk = next(self._body_iter)
                        if chunk:
                            self._plain_out += self.h11.send(h11.Data(data=chunk))
                    except StopIteration:
                        self._body_iter = None
                        self._plain_out += self.h11.send(h11.EndOfMessage())
            if self._plain_out:
                if self._tls is not None:
                    self._tls.write(bytes(self._plain_out))
                    self._flush_tls()
                else:
                    self._wire_out += self._plain_out
                self._plain_out.clear()
            sent = self._write_socket()
            if not (sent and self._body_iter is not None and time.monotonic() < deadline):
                return

    def _write_socket(self) -> int:
        total = 0
        while self._wire_out:
            try:
                n = self.sock.send(self._wire_out)
            except (BlockingIOError, InterruptedError):
                break
            if n <= 0:
                break
            del self._wire_out[:n]
            total += n
        return total

    def _read_socket_into_tls(self) -> bool:
        """Move arrived ciphertext into the TLS object; False at EOF."""
        while True:
            try:
                data = self.sock.recv(READ_BYTES)
            except (BlockingIOError, InterruptedError):
                return True
            if not data:
                self._tls_in.write_eof()
                return False
            self._tls_in.write(data)

    def _receive(self) -> None:
        while True:
            if self._tls is not None:
                open_ = self._read_socket_into_tls()
                chunks = []
                while True:
                    try:
                        piece = self._tls.read(READ_BYTES)
                    except ssl.SSLWantReadError:
                        break
                    except ssl.SSLZeroReturnError:
                        open_ = False
                        break
                    if not piece:
                        break
                    chunks.append(piece)
                data = b"".join(chunks)
                if data:
                    self.h11.receive_data(data)
                if not open_:
                    self.h11.receive_data(b"")
                if not data and open_:
                    self._process_events()
                    return
            else:
                try:
                    data = self.sock.recv(READ_BYTES)
                except (BlockingIOError, InterruptedError):
                    self._process_events()
                    return
                self.h11.receive_data(data)
                if not data:
                    self._process_events()
                    if self.exchange is not None:
                        raise TransportError("the engine closed the connection before answering")
                    self.close()
                    return
            self._process_events()
            if self.closed:
                return

    def _process_events(self) -> None:
        while True:
            event = self.h11.next_event()
            if event is h11.NEED_DATA or event is h11.PAUSED:
                return
            exchange = self.exchange
            if isinstance(event, h11.InformationalResponse):
                continue
            if isinstance(event, h11.Response):
                if exchange is not None:
                    exchange.status = event.status_code
                    headers = {k.decode().lower(): v.decode() for k, v in event.headers}
                    if exchange.on_response is not None and not exchange.abandoned:
                        exchange.on_response(event.status_code, headers)
            elif isinstance(event, h11.Data):
                if exchange is not None and exchange.on_data is not None and not exchange.abandoned:
                    exchange.on_data(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                self.exchange = None
                self.last_used = time.monotonic()
                if exchange is not None:
                    exchange.finished = True
                    if exchange.on_end is not None and not exchange.abandoned:
                        exchange.on_end()
                if self.h11.our_state is h11.DONE and self.h11.their_state is h11.DONE:
                    self.h11.start_next_cycle()
                else:
                    self.close()
                return
            elif isinstance(event, h11.ConnectionClosed):
                if exchange is not None:
                    raise TransportError("the engine closed the connection before answering")
                self.close()
                return
