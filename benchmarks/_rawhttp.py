"""A minimal keep-alive HTTP/1.1 client for the loopback load generator (benchmarks only).

Why not httpx: on this 2-core machine the load generator shares the CPU with the server it
measures, and httpx's AsyncClient spends ~1 ms of CPU per request (pure-Python h11 parsing,
anyio, a pool with many features). This client parses responses with ``httptools`` (the C
parser uvicorn itself uses; installed with ``uvicorn[standard]``) on a plain asyncio protocol:
one request at a time per connection, up to ``max_connections`` per client (a browser tab's 6),
``Content-Length`` bodies only (what cxrlabel sends), a timeout per request. Loopback only: the
load generator refuses other hosts before it builds one.
"""

from __future__ import annotations

import asyncio
import json as jsonlib
from typing import Any
from urllib.parse import urlsplit

import httptools


class RawHTTPError(Exception):
    """Connection closed, refused or unparseable."""


class RawTimeout(RawHTTPError):
    """No complete response within the timeout."""


class RawResponse:
    __slots__ = ("content", "headers", "status_code")

    def __init__(
        self, status_code: int, headers: list[tuple[bytes, bytes]], content: bytes
    ) -> None:
        self.status_code, self.headers, self.content = status_code, headers, content

    def json(self) -> Any:
        return jsonlib.loads(self.content)


class _Connection(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.waiter: asyncio.Future | None = None
        self.usable = True
        self._headers: list[tuple[bytes, bytes]] = []
        self._body: list[bytes] = []

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(RawHTTPError(f"bad response: {exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.usable = False
        self._fail(RawHTTPError("connection closed"))

    # httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name.lower(), value))

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        response = RawResponse(self.parser.get_status_code(), self._headers, b"".join(self._body))
        self._headers, self._body = [], []
        if not self.parser.should_keep_alive():
            self.usable = False
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(response)

    def _fail(self, exc: Exception) -> None:
        self.usable = False
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)

    def send(self, raw: bytes) -> asyncio.Future:
        assert self.transport is not None and self.waiter is None
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(raw)
        return self.waiter

    def close(self) -> None:
        self.usable = False
        if self.transport is not None:
            self.transport.close()


class RawClient:
    """``await client.request("GET", "/path", json=...)`` -> ``RawResponse``."""

    def __init__(
        self,
        base_url: str,
        *,
        headers: dict[str, str] | None = None,
        timeout: float = 30.0,
        max_connections: int = 6,
    ) -> None:
        parts = urlsplit(base_url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError("RawClient speaks plain http to loopback only")
        self.host, self.port = parts.hostname, parts.port or 80
        self.timeout = timeout
        fixed = {"Host": f"{self.host}:{self.port}", "Accept": "*/*", **(headers or {})}
        self._fixed = "".join(f"{k}: {v}\r\n" for k, v in fixed.items())
        self._idle: list[_Connection] = []
        self._all: set[_Connection] = set()
        self._slots = asyncio.Semaphore(max_connections)

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        _transport, conn = await loop.create_connection(_Connection, self.host, self.port)
        self._all.add(conn)
        return conn

    async def request(
        self, method: str, path: str, *, json: Any = None, headers: dict[str, str] | None = None
    ) -> RawResponse:
        extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        if json is not None:
            body = jsonlib.dumps(json, separators=(",", ":")).encode()
            extra += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        else:
            body = b""
            if method in ("POST", "PUT", "PATCH"):
                extra += "Content-Length: 0\r\n"
        raw = f"{method} {path} HTTP/1.1\r\n{self._fixed}{extra}\r\n".encode("latin-1") + body
        async with self._slots:
            conn = None
            while self._idle and conn is None:
                candidate = self._idle.pop()
                conn = candidate if candidate.usable else None
            try:
                if conn is None:
                    conn = await asyncio.wait_for(self._connect(), self.timeout)
                waiter = conn.send(raw)
                timer = asyncio.get_running_loop().call_later(self.timeout, _expire, waiter)
                try:
                    response = await waiter
                finally:
                    timer.cancel()
            except OSError as exc:  # refused, reset; TimeoutError (connect) is an OSError
                if conn is not None:
                    conn.close()
                if isinstance(exc, TimeoutError):
                    raise RawTimeout("connect timeout") from exc
                raise RawHTTPError(str(exc)) from exc
            except RawHTTPError:
                if conn is not None:
                    conn.close()
                raise
            if conn.usable:
                self._idle.append(conn)
            else:
                conn.close()
            return response

    async def aclose(self) -> None:
        for conn in self._all:
            conn.close()
        self._all.clear()
        self._idle.clear()


def _expire(waiter: asyncio.Future) -> None:
    if not waiter.done():
        waiter.set_exception(RawTimeout("no response within the timeout"))
