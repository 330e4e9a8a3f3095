"""The contract between the HTTP protocol and the application behind it.

``HttpProtocol`` (``gateway.server.protocol``) parses a request and calls
``await app(request, reply)`` in a task of its own. The app answers through
``reply``, exactly once: either ``send`` (a whole response) or ``start_stream``
followed by any number of ``write`` and one ``end`` (chunked transfer
encoding, used for SSE). Pipelined requests are answered in order: a reply for
a later request is held back until the earlier ones are done.

If the app raises, or returns without answering, the protocol answers 500 with
a canned body (never a traceback) and logs the error.

An app may also have an ``express`` attribute: ``express(request, reply) -> bool``,
called first, in the protocol's read callback. True means it took the request and
will answer ``reply`` later from callbacks of its own (no task); False means it
did nothing, and ``app(request, reply)`` runs as usual. If it raises, the
protocol answers 500.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

__all__ = ["App", "Reply", "Request", "TlsRequest"]


class Request:
    """One parsed HTTP request.

    ``headers`` maps lower-case names to values (repeated headers joined with
    ``", "``); ``body`` is complete (the protocol enforces the size limit
    before the app sees it).
    """

    __slots__ = ("method", "path", "query", "headers", "body", "client", "keep_alive")

    tls_subject: str | None = None
    """With mutual TLS (``[server] tls_client_ca_file``): the verified client certificate's
    subject as an RFC 4514 string (``CN=alice,O=Example``); None otherwise. A class attribute
    here, so a plain request costs nothing for it; a mutual-TLS connection makes
    ``TlsRequest``s, which carry it in a slot."""

    def __init__(
        self,
        method: str,
        path: str,
        query: str,
        headers: dict[str, str],
        body: bytes,
        client: tuple[str, int] | None = None,
        keep_alive: bool = True,
    ) -> None:
        self.method = method
        self.path = path
        self.query = query
        self.headers = headers
        self.body = body
        self.client = client
        self.keep_alive = keep_alive


class TlsRequest(Request):
    """A request on a mutual-TLS connection: ``tls_subject`` is the client certificate's subject."""

    __slots__ = ("tls_subject",)


class Reply(Protocol):
    """How the app answers one request (implemented by the protocol)."""

    @property
    def closed(self) -> bool:
        """True once the client disconnected (or the reply ended)."""

    def send(self, status: int, headers: Sequence[tuple[str, str]] | bytes, body: bytes) -> None:
        """Send a whole response; Content-Length is added by the protocol.

        ``headers`` may also be complete header lines already encoded
        (``b"content-type: application/json\\r\\n"``), for constant headers on the hot path.
        """

    def start_stream(self, status: int, headers: Sequence[tuple[str, str]]) -> None:
        """Send the status line and headers of a chunked (streamed) response."""

    def write(self, data: bytes) -> None:
        """Send one chunk of a streamed response (ignored after a disconnect)."""

    def end(self) -> None:
        """Finish a streamed response."""

    async def wait_closed(self) -> None:
        """Return when the client disconnects or the server shuts down (for GET streams)."""

    on_disconnect: Callable[[], None] | None
    """Set by the app: called once if the client disconnects before the reply ended."""


App = Callable[[Request, Reply], Awaitable[None]]
