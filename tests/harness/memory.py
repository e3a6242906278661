"""The fake upstream without a socket: an aiohttp connector whose connections are in-memory pipes to the fake
upstream's own app (fake_upstream.make_app) on the gateway's loop, the way httpx's MockTransport stands in for the
network. The gateway's aiohttp client and the fake's aiohttp server still speak HTTP/1.1 to each other, so
scripted statuses, streams, a stream cut mid-way (`cut_stream`), a dropped connection (`drop`) and a client that
leaves (`cancelled`) behave as over TCP. Any host but the fake's is refused, as a closed port would be."""

from __future__ import annotations

import asyncio
import errno
from typing import Any

import aiohttp
from aiohttp import web
from aiohttp.client_proto import ResponseHandler

from tests.harness.fake_upstream import Members, make_app

HOST = "fake-upstream.test"
"""The host name members of the in-process fake upstream are reached at."""


class _Pipe(asyncio.Transport):
    """The end of an in-memory connection that `protocol` owns: what it writes reaches the other end's protocol on
    the loop's next turn."""

    def __init__(self, loop: asyncio.AbstractEventLoop, protocol: asyncio.Protocol) -> None:
        super().__init__()
        self._loop = loop
        self._protocol = protocol
        self.peer: _Pipe | None = None
        self._closing = False
        self._paused = False
        self._pending: list[bytes] = []
        self._hang_up_when_drained = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 0), "sockname": ("127.0.0.1", 0)}.get(name, default)

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._protocol

    def is_closing(self) -> bool:
        return self._closing

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if data and not self._closing and self.peer is not None:
            self._loop.call_soon(self.peer._receive, bytes(data))

    def writelines(self, chunks: Any) -> None:
        self.write(b"".join(chunks))

    def can_write_eof(self) -> bool:
        return False

    def get_write_buffer_size(self) -> int:
        return 0

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        return None

    def is_reading(self) -> bool:
        return not self._paused

    def pause_reading(self) -> None:
        self._paused = True

    def resume_reading(self) -> None:
        self._paused = False
        while self._pending and not self._paused and not self._closing:
            self._protocol.data_received(self._pending.pop(0))
        if self._hang_up_when_drained and not self._pending:
            self._hang_up()

    def _receive(self, data: bytes) -> None:
        if self._closing:
            return
        if self._paused:
            self._pending.append(data)
        else:
            self._protocol.data_received(data)

    def close(self) -> None:
        """Close this end; the other end reads what was written before, then sees the connection lost."""
        if self._closing:
            return
        self._closing = True
        self._loop.call_soon(self._protocol.connection_lost, None)
        if self.peer is not None:
            self._loop.call_soon(self.peer._hang_up)

    def abort(self) -> None:
        self.close()

    def _hang_up(self) -> None:
        if self._closing:
            return
        if self._pending:
            self._hang_up_when_drained = True
            return
        self._closing = True
        self._protocol.connection_lost(None)


class InMemoryConnector(aiohttp.BaseConnector):
    """Connects `HOST` to the fake upstream's app serving `members`, inside this event loop."""

    def __init__(self, members: Members) -> None:
        super().__init__(limit=0, limit_per_host=0, keepalive_timeout=60)
        self._members = members
        self._server: web.Server | None = None

    async def _create_connection(self, req: Any, traces: Any, timeout: Any) -> ResponseHandler:
        if req.url.host != HOST:
            refused = ConnectionRefusedError(errno.ECONNREFUSED, f"only {HOST} answers in memory")
            raise aiohttp.ClientConnectorError(req.connection_key, refused)
        if self._server is None:
            runner = web.AppRunner(make_app(self._members), access_log=None)
            await runner.setup()
            self._server = runner.server
        client = ResponseHandler(loop=self._loop)
        server = self._server()
        server_end, client_end = _Pipe(self._loop, server), _Pipe(self._loop, client)
        server_end.peer, client_end.peer = client_end, server_end
        server.connection_made(server_end)
        client.connection_made(client_end)
        return client
