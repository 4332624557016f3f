"""Shared machinery for the local provider API servers (standard library only).

A :class:`ProviderServer` runs a :class:`http.server.ThreadingHTTPServer` on
``127.0.0.1`` (port 0, so the OS picks a free port) in a background thread.
Every request is recorded as a :class:`RecordedRequest`; what the server answers
is decided by the provider subclass, which consumes one scripted
:class:`Outcome` per (authenticated, routed) request and falls back to success
when the script is empty.

Connections are one-shot: every response carries ``Connection: close``, so no
keep-alive socket outlives a request and :meth:`ProviderServer.stop` can join
every handler thread deterministically.
"""

from __future__ import annotations

import collections
import contextlib
import json
import socket
import threading
import time
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any, ClassVar, Literal, Self

PAYLOADS_DIR = Path(__file__).resolve().parent.parent / "payloads"

OutcomeKind = Literal["success", "reply", "hang", "disconnect"]


def load_payload(name: str) -> Any:
    """Return the parsed JSON of ``tests/payloads/<name>`` (a fresh copy each call)."""
    with (PAYLOADS_DIR / name).open(encoding="utf-8") as fh:
        return json.load(fh)


@dataclass(frozen=True)
class Reply:
    """A complete HTTP answer: status, headers and raw body bytes."""

    status: int
    body: bytes = b""
    headers: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def json(cls, status: int, payload: Any, headers: Mapping[str, str] | None = None) -> Reply:
        return cls(
            status=status,
            body=json.dumps(payload).encode("utf-8"),
            headers=dict(headers or {}),
        )

    def json_body(self) -> Any:
        return json.loads(self.body.decode("utf-8")) if self.body else None


@dataclass(frozen=True)
class Outcome:
    """One scripted outcome, consumed by exactly one request.

    kind:
      * ``"success"``: the provider's normal success answer, built from the
        request (``overrides`` are merged into the success resource where the
        provider supports it);
      * ``"reply"``: answer exactly ``reply``;
      * ``"hang"``: accept the request, read it, and never answer until the
        server stops (the client's read timeout fires);
      * ``"disconnect"``: read the request and close the socket without
        answering (the client sees "remote end closed connection").
    """

    kind: OutcomeKind
    reply: Reply | None = None
    label: str = ""
    overrides: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if (self.kind == "reply") != (self.reply is not None):
            raise ValueError("a 'reply' outcome needs a Reply, other kinds must not have one")


HANG = Outcome("hang", label="hang")
DISCONNECT = Outcome("disconnect", label="disconnect")


@dataclass
class RecordedRequest:
    """One request as the server received it, plus what it answered."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes
    form: dict[str, list[str]] | None = None
    json: Any = None
    outcome: str = ""
    response: Reply | None = None
    received_at: float = field(default_factory=time.monotonic)

    def header(self, name: str) -> str | None:
        """Case-insensitive header lookup."""
        lowered = name.lower()
        for key, value in self.headers.items():
            if key.lower() == lowered:
                return value
        return None

    def form_value(self, name: str) -> str | None:
        """First value of a form field (``None`` if absent or not a form body)."""
        if self.form is None:
            return None
        values = self.form.get(name)
        return values[0] if values else None


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _HTTPServer

    def version_string(self) -> str:
        return "nginx"

    def do_GET(self) -> None:
        self.server.provider._dispatch(self)

    do_POST = do_PUT = do_PATCH = do_DELETE = do_GET

    def setup(self) -> None:
        super().setup()
        self.server.provider._track(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.provider._untrack(self.connection)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _HTTPServer(ThreadingHTTPServer):
    # Non-daemon handler threads + block_on_close: server_close() joins them all.
    daemon_threads = False
    block_on_close = True

    def __init__(self, address: tuple[str, int], provider: ProviderServer) -> None:
        self.provider = provider
        super().__init__(address, _Handler)


class ProviderServer:
    """Base class: lifecycle, request recording and outcome scripting.

    Subclasses implement :meth:`_respond` and :meth:`_resolve_name`.
    """

    name: ClassVar[str] = "provider"

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self._address = (host, port)
        self._lock = threading.Lock()
        self._requests: list[RecordedRequest] = []
        self._script: collections.deque[Outcome] = collections.deque()
        self._errors: list[BaseException] = []
        self._stopping = threading.Event()
        self._connections: set[socket.socket] = set()
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._request_arrived = threading.Condition(self._lock)

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> Self:
        if self._httpd is not None:
            raise RuntimeError(f"{self.name} server already started")
        self._stopping.clear()
        self._httpd = _HTTPServer(self._address, self)
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.01},
            name=f"{self.name}-api-server",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, release hanging requests, close sockets, join threads."""
        httpd, thread = self._httpd, self._thread
        if httpd is None or thread is None:
            return
        httpd.shutdown()
        self._stopping.set()
        with self._lock:
            connections = list(self._connections)
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        httpd.server_close()
        thread.join()
        self._httpd = None
        self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self._httpd is not None

    @property
    def port(self) -> int:
        if self._httpd is None:
            raise RuntimeError(f"{self.name} server is not running")
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:54321`` (no trailing slash)."""
        return f"http://{self._address[0]}:{self.port}"

    # ------------------------------------------------------------------ scripting
    def enqueue(self, *outcomes: Outcome | str) -> Self:
        """Append outcomes (objects or provider-specific names) to the script."""
        resolved = [o if isinstance(o, Outcome) else self._resolve_name(o) for o in outcomes]
        with self._lock:
            self._script.extend(resolved)
        return self

    @property
    def pending(self) -> list[Outcome]:
        """Scripted outcomes not consumed yet."""
        with self._lock:
            return list(self._script)

    def reset(self) -> None:
        """Forget recorded requests, errors and any unconsumed script."""
        with self._lock:
            self._requests.clear()
            self._script.clear()
            self._errors.clear()

    def _next_outcome(self) -> Outcome:
        with self._lock:
            return self._script.popleft() if self._script else Outcome("success", label="success")

    # ------------------------------------------------------------------ recording
    @property
    def requests(self) -> list[RecordedRequest]:
        """Snapshot (a new list) of every request received so far, in order."""
        with self._lock:
            return list(self._requests)

    @property
    def errors(self) -> list[BaseException]:
        """Exceptions raised inside the server while handling requests (should stay empty)."""
        with self._lock:
            return list(self._errors)

    def wait_for_requests(self, count: int, timeout: float = 2.0) -> list[RecordedRequest]:
        """Block until at least ``count`` requests were recorded; return the snapshot."""
        deadline = time.monotonic() + timeout
        with self._request_arrived:
            while len(self._requests) < count:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(
                        f"{self.name}: expected {count} requests, got {len(self._requests)}"
                    )
                self._request_arrived.wait(remaining)
            return list(self._requests)

    # ------------------------------------------------------------------ internals
    def _track(self, conn: socket.socket) -> None:
        with self._lock:
            self._connections.add(conn)

    def _untrack(self, conn: socket.socket) -> None:
        with self._lock:
            self._connections.discard(conn)

    def _resolve_name(self, name: str) -> Outcome:
        raise KeyError(f"{self.name}: unknown outcome name {name!r}")

    def _respond(self, request: RecordedRequest) -> Outcome | Reply:
        raise NotImplementedError

    def _dispatch(self, handler: _Handler) -> None:
        try:
            request = self._read_request(handler)
        except (OSError, ValueError):
            handler.close_connection = True
            return
        with self._request_arrived:
            self._requests.append(request)
            self._request_arrived.notify_all()
        try:
            decided = self._respond(request)
        except Exception as exc:  # a bug in the fake must not look like a provider answer
            with self._lock:
                self._errors.append(exc)
            decided = Reply.json(599, {"fake_server_error": repr(exc)})
        handler.close_connection = True
        if isinstance(decided, Reply):
            request.outcome = request.outcome or f"reply {decided.status}"
            request.response = decided
            self._write(handler, decided)
        elif decided.kind == "hang":
            request.outcome = decided.label or "hang"
            self._stopping.wait()
        elif decided.kind == "disconnect":
            request.outcome = decided.label or "disconnect"
        else:  # pragma: no cover - providers turn success/reply into a Reply
            raise AssertionError(f"unresolved outcome {decided!r}")

    @staticmethod
    def _read_request(handler: _Handler) -> RecordedRequest:
        length = int(handler.headers.get("Content-Length") or 0)
        body = handler.rfile.read(length) if length else b""
        split = urllib.parse.urlsplit(handler.path)
        headers = {k: v for k, v in handler.headers.items()}
        content_type = (handler.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        request = RecordedRequest(
            method=handler.command,
            path=split.path,
            query=urllib.parse.parse_qs(split.query, keep_blank_values=True),
            headers=headers,
            body=body,
        )
        if content_type == "application/x-www-form-urlencoded":
            request.form = urllib.parse.parse_qs(
                body.decode("utf-8"), keep_blank_values=True, strict_parsing=False
            )
        elif content_type == "application/json" and body:
            try:
                request.json = json.loads(body.decode("utf-8"))
            except ValueError:
                request.json = None
        return request

    @staticmethod
    def _write(handler: _Handler, reply: Reply) -> None:
        try:
            handler.send_response(reply.status)
            for key, value in reply.headers.items():
                handler.send_header(key, value)
            handler.send_header("Content-Length", str(len(reply.body)))
            handler.send_header("Connection", "close")
            handler.end_headers()
            if reply.body:
                handler.wfile.write(reply.body)
            handler.wfile.flush()
        except OSError:
            # The client gave up (e.g. its timeout fired) before we answered.
            pass


class ConnectTimeoutListener:
    """A local port whose accept backlog is full, so new connections never complete.

    The client's *connect* timeout fires (not the read timeout). Relies on the
    Linux behaviour of silently dropping SYNs when the backlog is full.
    """

    def __init__(self, host: str = "127.0.0.1") -> None:
        self._host = host
        self._listener: socket.socket | None = None
        self._fillers: list[socket.socket] = []

    def start(self) -> Self:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.bind((self._host, 0))
        listener.listen(0)
        self._listener = listener
        port = listener.getsockname()[1]
        for _ in range(3):  # fill the accept queue (and then some)
            filler = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            filler.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                filler.connect((self._host, port))
            self._fillers.append(filler)
        time.sleep(0.05)
        return self

    def stop(self) -> None:
        for filler in self._fillers:
            filler.close()
        self._fillers.clear()
        if self._listener is not None:
            self._listener.close()
            self._listener = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def url(self) -> str:
        if self._listener is None:
            raise RuntimeError("listener is not running")
        return f"http://{self._host}:{self._listener.getsockname()[1]}"
