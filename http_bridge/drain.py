"""Stopping the bridge without cutting requests short (SIGTERM).

aiohttp's own shutdown (`BaseRunner.cleanup`) marks every connection closing before it
waits for the handlers, and a closing connection ignores what arrives: a request whose
body was still arriving waited out the body timeout and got 408, and answers sent
meanwhile still invited the client to reuse a connection about to close. So the bridge
drains first and leaves aiohttp only what is still there past the grace:

1. the listening sockets close: new connections are refused;
2. every answer from then on carries `Connection: close` (the edge middleware, through
   `Drain.active`) and its connection closes once it is written;
3. connections waiting for their next request are closed, once what had already come
   in is parsed (POLL_S) and then whenever one turns idle; a request in progress, its
   body included, keeps being read and is answered normally;
4. once no connection is left, or the grace has run out, `runner.cleanup()` runs
   aiohttp's shutdown, which cuts off what is left (`AFTER_GRACE_S`).

A request whose headers had arrived by the time its connection was looked at is
served within the grace rather than refused with 503: the core is still up, so storing
it costs less than a retry, and its answer closing the connection bounds the drain to
one request per connection (requests pipelined behind it go unanswered, and clients
retry them, RFC 9112 9.3.2). A connection with no complete request yet counts as idle
(as for aiohttp's keep-alive timer): a request whose headers were still arriving is
cut with it, unanswered, as on any keep-alive connection a server closes.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Final

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

log = logging.getLogger(__name__)

#: How often the drain looks for connections that are gone or have turned idle.
POLL_S: Final = 0.02

#: What aiohttp's shutdown still finds after the drain (only past the grace) gets this
#: long to finish, then is cancelled; 0 would mean no limit to aiohttp.
AFTER_GRACE_S: Final = 0.1


class Drain:
    """Whether the bridge is draining; the edge middleware reads it for every answer."""

    __slots__ = ("active",)

    def __init__(self) -> None:
        self.active = False


def idle(connection: RequestHandler) -> bool:
    """Waiting for a request's headers: the test aiohttp's keep-alive timer makes
    before it closes a connection (`RequestHandler._process_keepalive`)."""
    waiter = connection._waiter
    return waiter is not None and not waiter.done()


async def drain(runner: web.AppRunner, state: Drain, grace_s: float) -> int:
    """Stop accepting and wait, up to `grace_s`, for the requests in progress to be
    answered and their connections closed; the number still open past the grace."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + grace_s
    state.active = True
    for site in runner.sites:
        await site.stop()
    server = runner.server
    if server is None:  # never started
        return 0
    log.info("draining %d connection(s), %g s grace", len(server.connections), grace_s)
    while True:
        # Sleeping first lets bytes that came in before the sockets closed be parsed:
        # a complete request among them is served, not cut as idle.
        await asyncio.sleep(min(POLL_S, max(deadline - loop.time(), 0)))
        for connection in server.connections:
            if idle(connection):
                connection.force_close()  # the client sees it end, as on a keep-alive timeout
        if not server.connections or loop.time() >= deadline:
            break
    left = sum(connection.transport is not None for connection in server.connections)
    if left:
        log.warning("%d request(s) still in progress after the %g s grace: cut off", left, grace_s)
    return left
