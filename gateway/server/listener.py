"""The serving event loop: uvloop, taking every waiting connection at each turn instead of one.

Why: libuv accepts one connection per loop turn (libuv#3696). When the gateway's CPU is full a turn
lasts tens of milliseconds, so new connections queue in the kernel's backlog at a few hundred a
second, their requests wait there for seconds, the backlog fills, SYNs are dropped and clients time
out, however fast the gateway would refuse them (issue 20: 44% of requests hit the client's 15 s
timeout, none got a 429). Accepting all that are waiting (up to `MAX_ACCEPTS_PER_TURN`, as asyncio's
own loop does) lets admission see them at once and refuse the excess in milliseconds.
`crowd-gateway serve` passes this loop to uvicorn (`loop="gateway.server.listener:GreedyLoop"`), in every worker.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable
from typing import Any

import uvloop

MAX_ACCEPTS_PER_TURN = 1024
"""Enough for thousands of connections a second at a busy loop's turn; other workers sharing the socket get the rest."""
RETRY_ACCEPT_S = 0.5
"""Pause after accept() itself failed (out of file descriptors), instead of spinning on it."""
log = logging.getLogger("crowd_gateway")


class Listener:
    """What `create_server` returns here: enough of asyncio.Server for uvicorn (its sockets, close)."""

    def __init__(self, loop: GreedyLoop, sock: socket.socket, factory: Callable[[], Any]) -> None:
        self.loop = loop
        self.sock = sock
        self.sockets = [sock]
        self.factory = factory
        sock.setblocking(False)
        loop.add_reader(sock.fileno(), self._accept)

    def _accept(self) -> None:
        for _ in range(MAX_ACCEPTS_PER_TURN):
            try:
                conn, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # EMFILE, ENFILE, ENOBUFS: the connections wait in the backlog meanwhile
                log.error("accepting a connection failed: %s; retrying in %gs", exc, RETRY_ACCEPT_S)
                self.loop.remove_reader(self.sock.fileno())
                self.loop.call_later(RETRY_ACCEPT_S, self._resume)
                return
            conn.setblocking(False)
            self.loop.create_task(self._serve(conn))

    async def _serve(self, conn: socket.socket) -> None:
        try:
            await self.loop.connect_accepted_socket(self.factory, conn)
        except OSError:  # the client left between accept() and here
            conn.close()

    def _resume(self) -> None:
        if self.sock.fileno() != -1:
            self.loop.add_reader(self.sock.fileno(), self._accept)

    def close(self) -> None:
        if self.sock.fileno() != -1:
            self.loop.remove_reader(self.sock.fileno())
            self.sock.close()

    async def wait_closed(self) -> None:
        return None


class GreedyLoop(uvloop.Loop):  # type: ignore[misc]
    async def create_server(self, protocol_factory: Callable[[], Any], host: str | None = None,  # type: ignore[override]
                            port: int | None = None, *, sock: socket.socket | None = None, backlog: int = 2048,
                            ssl: Any = None, **kwargs: Any) -> Any:
        """A plain-TCP server that accepts greedily; with TLS, uvloop's own."""
        if ssl is not None or kwargs:
            return await super().create_server(protocol_factory, host, port, sock=sock, backlog=backlog, ssl=ssl,
                                               **kwargs)
        if sock is None:
            family = socket.AF_INET6 if host and ":" in host else socket.AF_INET
            sock = socket.create_server((host or "0.0.0.0", port or 0), family=family)
        sock.listen(backlog)  # uvicorn's workers get a socket that is bound, not yet listening
        return Listener(self, sock, protocol_factory)
