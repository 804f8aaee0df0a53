"""Unary gRPC calls over a unix socket, on the `h2` HTTP/2 state machine: the only gRPC the agent makes
(the kubelet's podresources API) without grpcio's C core, its threads and its 9 MiB (BENCHMARKS.md,
"Beside the real peer").

The wire is gRPC's HTTP/2 protocol (grpc/doc/PROTOCOL-HTTP2.md): a POST to `/package.Service/Method` with
`content-type: application/grpc` and `te: trailers`, the request as one length-prefixed message, the
answer as one length-prefixed message and a `grpc-status` in the trailers (or in the headers, for a
trailers-only answer). One connection per `calls()` block: the socket's owner may restart between reads,
and a connection made for each read carries no state from a dead one. Messages are bytes here; the caller
(de)serializes them with its generated protobuf classes.
"""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import unquote

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings

# grpc/include/grpc/impl/codegen/status.h: the codes a caller may tell apart.
STATUS_NAMES = {
    0: "OK", 1: "CANCELLED", 2: "UNKNOWN", 3: "INVALID_ARGUMENT", 4: "DEADLINE_EXCEEDED", 5: "NOT_FOUND",
    6: "ALREADY_EXISTS", 7: "PERMISSION_DENIED", 8: "RESOURCE_EXHAUSTED", 9: "FAILED_PRECONDITION",
    10: "ABORTED", 11: "OUT_OF_RANGE", 12: "UNIMPLEMENTED", 13: "INTERNAL", 14: "UNAVAILABLE", 15: "DATA_LOSS",
    16: "UNAUTHENTICATED",
}  # fmt: skip
UNAVAILABLE, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED, INTERNAL, UNIMPLEMENTED = 14, 4, 8, 13, 12
READ_BYTES = 64 * 1024
WINDOW_BYTES = 1 << 24  # the whole of a large answer may be in flight: no round trip per 64 KiB


class RpcError(Exception):
    """A call that did not answer OK: the gRPC status code and the server's (or our) description."""

    def __init__(self, code: int, details: str) -> None:
        super().__init__(f"{STATUS_NAMES.get(code, str(code))}: {details}")
        self.code, self.details = code, details

    @property
    def name(self) -> str:
        return STATUS_NAMES.get(self.code, str(self.code))


class Connection:
    """One HTTP/2 connection to a unix socket; `call()` one unary method at a time."""

    def __init__(self, sock: socket.socket, *, max_message_bytes: int, user_agent: str) -> None:
        self._sock = sock
        self._max = max_message_bytes
        self._user_agent = user_agent
        self._h2 = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
        self._h2.local_settings = h2.settings.Settings(
            client=True,
            initial_values={
                h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: WINDOW_BYTES,
                h2.settings.SettingCodes.ENABLE_PUSH: 0,
                h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: 64 * 1024,
            },
        )
        self._h2.initiate_connection()
        self._h2.increment_flow_control_window(WINDOW_BYTES)

    def call(self, method: str, request: bytes, *, timeout: float) -> bytes:
        """The answer's message bytes; raises RpcError (UNAVAILABLE for a connection that fails or closes,
        DEADLINE_EXCEEDED past `timeout`, RESOURCE_EXHAUSTED for an answer over the size limit, INTERNAL for
        an answer that breaks the protocol)."""
        deadline = time.monotonic() + timeout
        stream = self._h2.get_next_available_stream_id()
        headers = [
            (":method", "POST"), (":scheme", "http"), (":path", method), (":authority", "localhost"),
            ("content-type", "application/grpc"), ("te", "trailers"), ("user-agent", self._user_agent),
            ("grpc-timeout", f"{max(1, int(timeout * 1000))}m"),
        ]  # fmt: skip
        try:
            self._h2.send_headers(stream, headers)
            self._h2.send_data(stream, struct.pack(">BI", 0, len(request)) + request, end_stream=True)
            self.flush(deadline)
            return self._answer(stream, deadline)
        except h2.exceptions.ProtocolError as exc:
            raise RpcError(INTERNAL, f"HTTP/2 protocol error: {exc}") from None

    def _answer(self, stream: int, deadline: float) -> bytes:
        body = bytearray()
        status: int | None = None
        details = ""
        http_status = ""
        while True:
            for event in self._receive(deadline):
                if isinstance(event, h2.events.ResponseReceived | h2.events.TrailersReceived):
                    if event.stream_id != stream:
                        continue
                    fields = {_text(name): _text(value) for name, value in event.headers or []}
                    http_status = fields.get(":status", http_status)
                    if "grpc-status" in fields:
                        status = _status_code(fields["grpc-status"])
                        details = unquote(fields.get("grpc-message", ""))
                elif isinstance(event, h2.events.DataReceived) and event.stream_id == stream:
                    body += event.data
                    self._h2.acknowledge_received_data(event.flow_controlled_length, stream)
                    if len(body) > self._max + 5:
                        self._cancel(stream, deadline)
                        raise RpcError(RESOURCE_EXHAUSTED, f"answer larger than {self._max} bytes")
                elif isinstance(event, h2.events.StreamReset) and event.stream_id == stream:
                    raise RpcError(UNAVAILABLE if status is None else status, f"stream reset ({event.error_code!r})")
                elif isinstance(event, h2.events.ConnectionTerminated):
                    raise RpcError(UNAVAILABLE, f"the server closed the connection ({event.error_code!r})")
                elif isinstance(event, h2.events.StreamEnded) and event.stream_id == stream:
                    return _message(body, status, details, http_status)
            self.flush(deadline)

    def _cancel(self, stream: int, deadline: float) -> None:
        """Reset a stream whose answer is refused (no more of it sent); one the server already ended is left."""
        try:
            self._h2.reset_stream(stream, error_code=h2.errors.ErrorCodes.CANCEL)
        except h2.exceptions.ProtocolError:
            return
        self.flush(deadline)

    def _receive(self, deadline: float) -> list[h2.events.Event]:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise RpcError(DEADLINE_EXCEEDED, "deadline exceeded")
        self._sock.settimeout(remaining)
        try:
            data = self._sock.recv(READ_BYTES)
        except TimeoutError:
            raise RpcError(DEADLINE_EXCEEDED, "deadline exceeded") from None
        except OSError as exc:
            raise RpcError(UNAVAILABLE, f"receive failed: {exc.strerror or exc}") from None
        if not data:
            raise RpcError(UNAVAILABLE, "the server closed the connection")
        return self._h2.receive_data(data)

    def flush(self, deadline: float) -> None:
        data = self._h2.data_to_send()
        if not data:
            return
        self._sock.settimeout(max(0.001, deadline - time.monotonic()))
        try:
            self._sock.sendall(data)
        except TimeoutError:
            raise RpcError(DEADLINE_EXCEEDED, "deadline exceeded") from None
        except OSError as exc:
            raise RpcError(UNAVAILABLE, f"send failed: {exc.strerror or exc}") from None


def _text(value: str | bytes) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def _status_code(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        return 2  # UNKNOWN, as grpc-go reads an unparsable status


def _message(body: bytearray, status: int | None, details: str, http_status: str) -> bytes:
    if status is None:
        # No grpc-status: gRPC maps the HTTP status (grpc/doc/http-grpc-status-mapping.md).
        code = UNAVAILABLE if http_status in ("429", "502", "503", "504") else INTERNAL
        raise RpcError(code, f"answer without a gRPC status (HTTP {http_status or 'none'})")
    if status != 0:
        raise RpcError(status, details or STATUS_NAMES.get(status, "error"))
    if len(body) < 5:
        raise RpcError(INTERNAL, "an OK answer without a message")
    compressed, length = struct.unpack(">BI", bytes(body[:5]))
    if compressed:
        raise RpcError(INTERNAL, "a compressed answer, and none was asked for")
    if length != len(body) - 5:
        raise RpcError(INTERNAL, f"the answer's message is {len(body) - 5} bytes, its prefix says {length}")
    return bytes(body[5:])


@contextmanager
def connect(path: str, *, timeout: float, max_message_bytes: int, user_agent: str) -> Iterator[Connection]:
    """A connection to the unix socket at `path`, closed on leaving. connect(2)'s OSError is raised as
    it is: the caller tells a missing socket from a refused one."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        sock.connect(path)
        connection = Connection(sock, max_message_bytes=max_message_bytes, user_agent=user_agent)
        connection.flush(time.monotonic() + timeout)
        yield connection
    finally:
        sock.close()
