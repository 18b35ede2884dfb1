"""uvicorn settings for the policy server: bounded header time, idle time and header size.

uvicorn closes a keep-alive connection that stays idle between requests (``timeout_keep_alive``)
and h11 refuses headers above ``h11_max_incomplete_event_size`` with a 400, but nothing bounds the
time a client takes to *send* its headers: a connection that opens and then trickles (or never
sends) its request line would be held for ever. :class:`TimedH11Protocol` answers 408 and closes
such a connection ``header_timeout_s`` after it opened (or after the first byte of a later request
on a kept-alive connection). Body time is bounded in the app (``ServerConfig.body_timeout_s``).
"""

from __future__ import annotations

import json

from uvicorn.protocols.http.h11_impl import H11Protocol

HEADER_TIMEOUT_S = 10.0
KEEP_ALIVE_S = 5.0
MAX_HEADER_BYTES = 16 << 10


class TimedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a deadline for the request line and headers."""

    header_timeout_s = HEADER_TIMEOUT_S

    def connection_made(self, transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._header_timer = None
        self._arm_header_timer()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self._in_request():
            self._cancel_header_timer()
        elif self._header_timer is None:  # the first bytes of a later request on a kept-alive connection
            self._arm_header_timer()

    def connection_lost(self, exc) -> None:
        self._cancel_header_timer()
        super().connection_lost(exc)

    def on_response_complete(self) -> None:
        super().on_response_complete()  # arms uvicorn's keep-alive timer for the idle wait that follows
        if self._in_request():  # a pipelined request was already waiting
            self._cancel_header_timer()

    def _in_request(self) -> bool:
        return self.cycle is not None and not self.cycle.response_complete

    def _arm_header_timer(self) -> None:
        self._header_timer = self.loop.call_later(self.header_timeout_s, self._header_timeout)

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_timeout(self) -> None:
        self._header_timer = None
        if self.transport.is_closing() or self._in_request():
            return
        body = json.dumps({"error": f"request line and headers not received within {self.header_timeout_s:g} s",
                           "expected": "a complete HTTP request sent without pauses"}).encode()
        self.transport.write(b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\nconnection: close\r\n"
                             b"content-length: %d\r\n\r\n%s" % (len(body), body))
        self.transport.close()


def protocol_class(header_timeout_s: float) -> type[TimedH11Protocol]:
    """A :class:`TimedH11Protocol` subclass with the given header deadline (uvicorn takes a class)."""
    if not header_timeout_s > 0:
        raise ValueError(f"header_timeout_s must be positive, got {header_timeout_s!r}")
    return type("TimedH11Protocol", (TimedH11Protocol,), {"header_timeout_s": float(header_timeout_s)})


def uvicorn_config(app, header_timeout_s: float = HEADER_TIMEOUT_S, **kw):
    """``uvicorn.Config`` for the server: h11 with the header deadline, keep-alive and header-size limits."""
    import uvicorn

    kw.setdefault("timeout_keep_alive", KEEP_ALIVE_S)
    kw.setdefault("h11_max_incomplete_event_size", MAX_HEADER_BYTES)
    return uvicorn.Config(app, http=protocol_class(header_timeout_s), ws="none", lifespan="on", **kw)
