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
- connection limits that idle sockets cannot use up: at most `max_connections` open sockets, of which one client
  address holds at most `max_client_connections`. A newcomer past either limit takes the place of an idle
  connection (one waiting for a request's headers: just opened, a partial request, or kept alive between
  requests), the longest-waiting of its own address or, for the server's limit, of the address holding the most
  connections; that one is answered 408 (or, kept alive and silent, just closed). Only when every connection is
  busy with a request is a newcomer answered 503 + Retry-After at once;
- a reserve for /health past those limits: up to HEALTH_RESERVE more connections, each allowed
  HEALTH_HEADER_S for its request line, which must be `GET /health` (or HEAD); anything else gets the 503, and
  the connection is closed after its answer. So a load balancer sees a live server while every slot is busy;
- the error body of errors.py for all of these and for uvicorn's own 400 (broken HTTP).

Measured with 120 idle sockets open on loopback (tests/test_serve_limits.py): /health answered 200 (before: 503
for the whole header timeout, 10 s, and again as soon as the sockets were reopened) and /predict 200.
"""
from __future__ import annotations

import asyncio
import re

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from .errors import raw_response
from .limits import Limits

LINGER_S = 2.0  # how long a refused connection's input is still read (and dropped) before the socket is closed
HEALTH_RESERVE = 8  # connections past the limits that may ask for /health
HEALTH_HEADER_S = 1.0  # how long such a connection has for its request line
HEALTH_LINE = re.compile(rb"(GET|HEAD) /health(\?[^ ]*)? HTTP/1\.[01]\r?")


class ConnectionTable:
    """The connections one server counts against its limits (not those refused or in the /health reserve), by
    client address."""

    def __init__(self):
        self.by_client: dict[str, set[GuardedH11Protocol]] = {}
        self.reserve = 0

    def __len__(self) -> int:
        return sum(map(len, self.by_client.values()))

    def count(self, client: str) -> int:
        return len(self.by_client.get(client, ()))

    def add(self, conn: GuardedH11Protocol) -> None:
        self.by_client.setdefault(conn.client_key, set()).add(conn)

    def discard(self, conn: GuardedH11Protocol) -> None:
        conns = self.by_client.get(conn.client_key)
        if conns is not None and conn in conns:
            conns.discard(conn)
            if not conns:
                del self.by_client[conn.client_key]

    def idle(self, client: str | None = None) -> GuardedH11Protocol | None:
        """The idle connection to close for a newcomer: the longest-waiting one of `client`, or with None, of the
        address holding the most connections (among those with an idle one). None when every one is busy."""
        clients = [client] if client is not None else list(self.by_client)
        found = [(-len(self.by_client[c]), conn.idle_since, conn) for c in clients if c in self.by_client
                 for conn in self.by_client[c] if conn.is_idle()]
        return min(found, key=lambda t: t[:2])[2] if found else None


class GuardedH11Protocol(H11Protocol):
    limits: Limits = Limits()
    table: ConnectionTable = ConnectionTable()  # one per server: guarded_protocol

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._header_timer: asyncio.TimerHandle | None = None
        self._body_timer: asyncio.TimerHandle | None = None
        self._timed_cycle = None  # the request whose body deadline is armed
        self._refused = False
        self._reserved = False  # in the /health reserve
        self._full = ""  # why a reserved connection did not fit (its 503 for anything but /health)
        self._head = b""  # a reserved connection's first bytes, until its request line is complete
        self.client_key = ""
        self.idle_since = 0.0  # when it began waiting for a request's headers

    # -- connection limits -----------------------------------------------------------------------------------
    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self.client_key = self.client[0] if self.client else ""
        self.idle_since = self.loop.time()
        full = self._make_room()
        if full is None:
            self.table.add(self)
            self._arm_header_timer()
        elif self.table.reserve < HEALTH_RESERVE:
            self._reserved, self._full = True, full
            self.table.reserve += 1
            self._arm_header_timer(min(HEALTH_HEADER_S, self.limits.header_timeout_s))
        else:
            self._refuse_busy(full)

    def _make_room(self) -> str | None:
        """Close idle connections until this one fits; None when it does, else why it does not."""
        lim, table = self.limits, self.table
        if table.count(self.client_key) >= lim.max_client_connections:
            victim = table.idle(self.client_key)
            if victim is None:
                return f"this client has {lim.max_client_connections} connections open"
            victim.evict()
        if len(table) >= lim.max_connections:
            victim = table.idle()
            if victim is None:
                return f"the server has {lim.max_connections} connections open"
            victim.evict()
        return None

    def _refuse_busy(self, why: str) -> None:
        retry = self.limits.retry_after_s
        self._refuse(503, "Service Unavailable", f"{why}; retry in {retry} s", {"retry-after": str(retry)})

    def is_idle(self) -> bool:
        return self._waiting_for_headers() and not self._refused and not self.transport.is_closing()

    def evict(self) -> None:
        """Make room for a newcomer: a partial request is answered 408, a silent kept-alive connection closed."""
        self.table.discard(self)
        if self.cycle is not None and not self._request_started():
            self._cancel_header_timer()
            self.transport.close()  # between requests: what the keep-alive timeout does
        else:
            self._refuse(408, "Request Timeout", "request headers not complete; the connection was closed to "
                                                 "make room for other clients")

    def _request_started(self) -> bool:
        return self.conn.their_state is not h11.IDLE or bool(self.conn.trailing_data[0])

    # -- deadlines -------------------------------------------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        if self._refused:
            return  # answered and closing: what still arrives is dropped
        if self._reserved and self._head is not None:
            self._head += data
            line, crlf, _ = self._head.partition(b"\n")
            if not crlf and len(self._head) < 1024:
                return  # the request line is not complete yet
            if not (crlf and HEALTH_LINE.fullmatch(line)):
                self._refuse_busy(self._full)  # past the limits only /health is answered
                return
            data, self._head = self._head, None
        super().data_received(data)
        self._update_timers()
        if self._waiting_for_headers() and self._header_timer is None and not self.transport.is_closing():
            self._arm_header_timer()  # the first bytes of the next request on a kept-alive connection

    def on_response_complete(self) -> None:
        if self._reserved:  # one answer per reserved connection
            self.transport.close()
            return
        super().on_response_complete()  # may start a pipelined request
        self.idle_since = self.loop.time()
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

    def _arm_header_timer(self, seconds: float | None = None) -> None:
        self._cancel_header_timer()
        self._header_timer = self.loop.call_later(seconds or self.limits.header_timeout_s, self._header_timeout)

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
        if not self._request_started() and self.cycle is not None:
            return  # nothing of a next request arrived: the keep-alive timeout closes idle connections
        seconds = min(HEALTH_HEADER_S, self.limits.header_timeout_s) if self._reserved else \
            self.limits.header_timeout_s
        self._refuse(408, "Request Timeout", f"request headers not complete within {seconds:g} s")

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
        self._leave()  # a refused connection no longer holds a place, nor one of the reserve's
        self.transport.write(raw_response(status, reason, message, headers))
        if self.transport.can_write_eof():
            self.transport.write_eof()
            self.loop.call_later(LINGER_S, self.transport.close)
        else:
            self.transport.close()

    def _leave(self) -> None:
        self.table.discard(self)
        if self._reserved:
            self._reserved = False
            self.table.reserve -= 1

    def connection_lost(self, exc) -> None:
        self._cancel_header_timer()
        self._cancel_body_timer()
        self._leave()
        super().connection_lost(exc)

    # -- uvicorn's own 400 for broken HTTP, with the error body ----------------------------------------------
    def send_400_response(self, msg: str) -> None:
        self._refuse(400, "Bad Request", f"not a valid HTTP request ({msg.rstrip('.')})")


def guarded_protocol(limits: Limits) -> type[GuardedH11Protocol]:
    """The protocol class to give uvicorn.Config(http=...), with these limits."""
    return type("GuardedH11Protocol", (GuardedH11Protocol,), {"limits": limits, "table": ConnectionTable()})


def uvicorn_config(app, host: str, port: int, limits: Limits, **kwargs):
    """uvicorn.Config with every connection limit set (uvicorn's own ones and guarded_protocol's)."""
    import uvicorn

    return uvicorn.Config(app, host=host, port=port, http=guarded_protocol(limits),
                          timeout_keep_alive=limits.keep_alive_s,
                          h11_max_incomplete_event_size=limits.max_header_bytes, **kwargs)
