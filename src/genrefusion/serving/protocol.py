"""The connection layer: uvicorn's h11 protocol with the limits uvicorn 0.54 does not have.

uvicorn offers `timeout_keep_alive` (an idle connection *between* requests), `h11_max_incomplete_event_size`
(the size of a request's headers) and `limit_concurrency` (a plain-text 503 once connections or tasks reach a
number, decided only after a request's headers arrived). It has no timeout for a request's headers or body: a
client that sends one header byte a minute holds its socket forever, and 800 such sockets hold 800 connections.
`guarded_protocol(limits)` adds, on the h11 protocol:
- a header deadline: a request's headers must be complete `header_timeout_s` after its first byte (or after
  the connection opened), else 408 and the connection is closed;
- a body deadline: the whole body must arrive within `body_timeout_s` of the headers, else 408 (or, when the
  answer was already sent, e.g. a 413, the rest of the body is not waited for) and the connection is closed;
- a connection limit: past `max_connections` open sockets a new one is answered 503 + Retry-After at once;
- the error body of errors.py for all of these and for uvicorn's own 400 (broken HTTP).
"""
from __future__ import annotations

import asyncio

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from .errors import raw_response
from .limits import Limits

LINGER_S = 2.0  # how long a refused connection's input is still read (and dropped) before the socket is closed


class GuardedH11Protocol(H11Protocol):
    limits: Limits = Limits()

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._header_timer: asyncio.TimerHandle | None = None
        self._body_timer: asyncio.TimerHandle | None = None
        self._timed_cycle = None  # the request whose body deadline is armed
        self._refused = False

    # -- connection limit ------------------------------------------------------------------------------------
    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        if len(self.connections) > self.limits.max_connections:
            self._refuse(503, "Service Unavailable",
                         f"the server has {self.limits.max_connections} connections open; retry in "
                         f"{self.limits.retry_after_s} s", {"retry-after": str(self.limits.retry_after_s)})
            return
        self._arm_header_timer()

    # -- deadlines -------------------------------------------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        if self._refused:
            return  # answered and closing: what still arrives is dropped
        super().data_received(data)
        self._update_timers()
        if self._waiting_for_headers() and self._header_timer is None and not self.transport.is_closing():
            self._arm_header_timer()  # the first bytes of the next request on a kept-alive connection

    def on_response_complete(self) -> None:
        super().on_response_complete()  # may start a pipelined request
        self._update_timers()

    def _waiting_for_headers(self) -> bool:
        return self.cycle is None or self.cycle.response_complete

    def _update_timers(self) -> None:
        cycle = self.cycle
        if cycle is None or cycle is self._timed_cycle:
            if cycle is not None and not cycle.more_body:
                self._cancel_body_timer()  # the body is complete
            return
        # A new request: its headers are complete, so its body deadline starts now.
        self._cancel_header_timer()
        self._cancel_body_timer()
        self._timed_cycle = cycle
        if cycle.more_body:
            self._body_timer = self.loop.call_later(self.limits.body_timeout_s, self._body_timeout)

    def _arm_header_timer(self) -> None:
        self._cancel_header_timer()
        self._header_timer = self.loop.call_later(self.limits.header_timeout_s, self._header_timeout)

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _cancel_body_timer(self) -> None:
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None

    def _header_timeout(self) -> None:
        self._header_timer = None
        if not self._waiting_for_headers() or self.transport.is_closing():
            return
        if self.conn.their_state is h11.IDLE and not self.conn.trailing_data[0] and self.cycle is not None:
            return  # nothing of a next request arrived: the keep-alive timeout closes idle connections
        self._refuse(408, "Request Timeout",
                     f"request headers not complete within {self.limits.header_timeout_s:g} s")

    def _body_timeout(self) -> None:
        self._body_timer = None
        cycle = self.cycle
        if cycle is None or not cycle.more_body or self.transport.is_closing():
            return
        started = cycle.response_started
        # The application may be waiting for the rest of the body: it sees a disconnect, and anything it still
        # sends is dropped (the cycle's send() ignores a disconnected client).
        cycle.disconnected = True
        cycle.message_event.set()
        if started:  # answered already (a 413, say); only the rest of the body was being waited for
            self.transport.close()
        else:
            self._refuse(408, "Request Timeout",
                         f"request body not complete within {self.limits.body_timeout_s:g} s of its headers")

    def _refuse(self, status: int, reason: str, message: str, headers: dict[str, str] | None = None) -> None:
        """Answer and end the connection. Closing a socket with unread input makes the kernel send a reset, which
        can reach the client before the answer does; so the answer goes out with a FIN, input is read and dropped
        until the client closes or LINGER_S passes, and only then is the socket closed."""
        self._cancel_header_timer()
        self._cancel_body_timer()
        self._refused = True
        self.transport.write(raw_response(status, reason, message, headers))
        if self.transport.can_write_eof():
            self.transport.write_eof()
            self.loop.call_later(LINGER_S, self.transport.close)
        else:
            self.transport.close()

    def connection_lost(self, exc) -> None:
        self._cancel_header_timer()
        self._cancel_body_timer()
        super().connection_lost(exc)

    # -- uvicorn's own 400 for broken HTTP, with the error body ----------------------------------------------
    def send_400_response(self, msg: str) -> None:
        self._refuse(400, "Bad Request", f"not a valid HTTP request ({msg.rstrip('.')})")


def guarded_protocol(limits: Limits) -> type[GuardedH11Protocol]:
    """The protocol class to give uvicorn.Config(http=...), with these limits."""
    return type("GuardedH11Protocol", (GuardedH11Protocol,), {"limits": limits})


def uvicorn_config(app, host: str, port: int, limits: Limits, **kwargs):
    """uvicorn.Config with every connection limit set (uvicorn's own ones and guarded_protocol's)."""
    import uvicorn

    return uvicorn.Config(app, host=host, port=port, http=guarded_protocol(limits),
                          timeout_keep_alive=limits.keep_alive_s,
                          h11_max_incomplete_event_size=limits.max_header_bytes, **kwargs)
