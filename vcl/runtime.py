"""What compiled VCL runs against: HTTP messages, headers, actions and the per-task context.

This module holds no I/O. The server fills a Context, calls the compiled subroutines with it and
acts on the Action they return.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass


class VCLFailure(Exception):
    """A runtime VCL failure (Varnish's VRT_fail): the task goes to vcl_synth with 503."""


class Workspace:
    """What is modelled of a varnishd workspace (a request's req->ws, a fetch's bo->ws): the header
    slots http_max_hdr leaves each message on it (`hdr_cap`), and whether it overflowed. Bytes are
    not counted. A request or fetch holds one (its `ws`); nothing in it points back at the task, so a
    finished request is freed by reference counting, not left to the cyclic GC.

    A field that does not fit is lost as varnishd's http_SetHeader / http_PrintfHeader lose it: a
    LostHeader and an Error record (in that order for a plain set, the other way round for the
    headers varnishd prints: X-Varnish, Age, Content-Length, ...), MAIN.losthdr, and the workspace
    marked overflowed, which its owner acts on (a bare 500 at delivery, ws_*_overflow). A printed
    header is also lost once the workspace overflowed (WS_VSB_new refuses an overflowed workspace).
    """

    __slots__ = ("ws_id", "hdr_cap", "overflowed", "ws_counters", "ws_pending")

    def __init__(self, ws_id: str, hdr_cap: int, counters=None) -> None:
        self.ws_id = ws_id
        self.hdr_cap = hdr_cap
        self.overflowed = False
        self.ws_counters = counters     # MAIN counters (losthdr)
        self.ws_pending = None          # the records of losses made while the message logged nowhere yet

    def lose(self, headers: Headers, text: str, printf: bool) -> None:
        self.overflowed = True
        if self.ws_counters is not None:
            self.ws_counters.losthdr += 1
        if headers.vsl is not None:
            records = headers.vsl[0]
        else:
            records = self.ws_pending
            if records is None:
                records = self.ws_pending = []
        err = ("Error", "out of workspace (%s)" % self.ws_id)
        records += ((err, ("LostHeader", text)) if printf else (("LostHeader", text), err))


class Headers:
    """HTTP header fields in arrival order, looked up case-insensitively, as VCL sees them.

    Each field is [name, value, lowercased name]: the wire spelling survives and lookups compare
    without lowering every field on every call (the hit path does a dozen lookups per request).
    """

    # vsl: while a task logs this message's changes, (records, "ReqHeader", "ReqUnset") - the shared
    # log's per-task list (cacheserver/vsl.py) and the tags varnishd logs a set/unset under.
    # ws: the Workspace whose header slots bound this message (None: unbounded, as obj.http).
    __slots__ = ("_fields", "vsl", "ws")

    def __init__(self, fields: list | None = None) -> None:
        self._fields: list[list[str]] = [[f[0], f[1], f[0].lower()] for f in fields] if fields else []
        self.vsl = None
        self.ws = None

    @classmethod
    def adopt(cls, triples: list[list[str]]) -> Headers:
        """Wrap a list of [name, value, lowercased name] without copying (the parser builds it)."""
        headers = cls.__new__(cls)
        headers._fields = triples
        headers.vsl = None
        headers.ws = None
        return headers

    def log_to(self, records: list, header_tag: str, unset_tag: str) -> None:
        """Log every field now, and every later change, into a task's records (as varnishd)."""
        if self._fields:
            # one pre-joined run of records (cacheserver/vsl.py): cheaper than a tuple per field
            records.append((header_tag, ("\0" + header_tag + " ").join([f[0] + ": " + f[1] for f in self._fields])))
        self.vsl = (records, header_tag, unset_tag)

    def get(self, name: str) -> str | None:
        """The first field called `name`, as Varnish's req.http.NAME reads it."""
        lname = name.lower()
        for field in self._fields:
            if field[2] == lname:
                return field[1]
        return None

    def get_lower(self, lname: str) -> str | None:
        """get() for a name already lowercased (generated code lowers its names at compile time)."""
        for field in self._fields:
            if field[2] == lname:
                return field[1]
        return None

    def get_all(self, name: str) -> list[str]:
        lname = name.lower()
        return [f[1] for f in self._fields if f[2] == lname]

    def __contains__(self, name: str) -> bool:
        return self.get(name) is not None

    def has_none(self, lnames: frozenset[str]) -> bool:
        """No field has one of these (lowercased) names: one scan for several lookups."""
        for field in self._fields:
            if field[2] in lnames:
                return False
        return True

    def count(self, lname: str) -> int:
        """How many fields are called `lname` (lowercased)."""
        n = 0
        for field in self._fields:
            if field[2] == lname:
                n += 1
        return n

    def set(self, name: str, value: str) -> None:
        """Replace every field called `name` by one, at the place of the first (VCL `set`)."""
        lname = name.lower()
        fields = self._fields
        ws = self.ws
        if ws is not None and len(fields) >= ws.hdr_cap and not any(f[2] == lname for f in fields):
            ws.lose(self, name + ": " + value, False)
            return
        if self.vsl is not None:
            self._log_change(lname, name, value)
        for i, field in enumerate(fields):
            if field[2] == lname:
                field[1] = value
                rest = fields[i + 1:]
                if any(f[2] == lname for f in rest):
                    self._fields = fields[: i + 1] + [f for f in rest if f[2] != lname]
                return
        fields.append([name, value, lname])

    def add(self, name: str, value: str, printf: bool = False) -> None:
        """Append a field; printf: one varnishd prints into the workspace (http_PrintfHeader)."""
        ws = self.ws
        if ws is not None and (len(self._fields) >= ws.hdr_cap or (printf and ws.overflowed)):
            ws.lose(self, name + ": " + value, printf)
            return
        self._fields.append([name, value, name.lower()])
        if self.vsl is not None:
            self.vsl[0].append((self.vsl[1], name + ": " + value))

    def unset(self, name: str) -> None:
        lname = name.lower()
        fields = self._fields
        for field in fields:
            if field[2] == lname:
                if self.vsl is not None:
                    self._log_change(lname, None, None)
                self._fields = [f for f in fields if f[2] != lname]
                return

    def _log_change(self, lname: str, name: str | None, value: str | None) -> None:
        records, header_tag, unset_tag = self.vsl
        for f in self._fields:
            if f[2] == lname:
                records.append((unset_tag, f[0] + ": " + f[1]))
        if name is not None:
            records.append((header_tag, name + ": " + value))

    def items(self) -> list[tuple[str, str]]:
        return [(f[0], f[1]) for f in self._fields]

    def copy(self) -> Headers:
        return Headers.adopt([[f[0], f[1], f[2]] for f in self._fields])

    def __len__(self) -> int:
        return len(self._fields)

    def __repr__(self) -> str:
        return f"Headers({self.items()!r})"


class HttpMessage:
    """A request or response as VCL sees it (req, bereq, beresp, resp, obj)."""

    __slots__ = ("method", "url", "proto", "status", "reason", "headers")

    def __init__(
        self,
        method: str = "",
        url: str = "",
        proto: str = "HTTP/1.1",
        status: int = 0,
        reason: str = "",
        headers: Headers | None = None,
    ) -> None:
        self.method = method
        self.url = url
        self.proto = proto
        self.status = status
        self.reason = reason
        self.headers = headers if headers is not None else Headers()

    def copy(self) -> HttpMessage:
        return HttpMessage(self.method, self.url, self.proto, self.status, self.reason, self.headers.copy())


@dataclass(slots=True)
class Action:
    """What a subroutine returned: `return (name(args...))`.

    name is the action keyword (synth, pass, lookup, deliver, ...); args are its evaluated arguments,
    e.g. (status, reason) for synth, (ttl,) for pass(DURATION), (label,) for vcl(label).
    """

    name: str
    args: tuple = ()


class IP:
    """VCL's IP type: an address and a port. Converts to a string as the bare address."""

    __slots__ = ("addr", "port")

    def __init__(self, addr: str, port: int = 0) -> None:
        self.addr = addr
        self.port = port

    def __str__(self) -> str:
        return self.addr

    def __eq__(self, other: object) -> bool:
        return isinstance(other, IP) and other.addr == self.addr

    def __hash__(self) -> int:
        return hash(self.addr)

    def __repr__(self) -> str:
        return f"IP({self.addr!r}, {self.port})"


def parse_ip(s: str, default_port: str = "80", resolve: bool = True) -> IP | None:
    """"ADDR", "ADDR:PORT", "ADDR PORT", "[ADDR]:PORT" (or a name when resolve) -> IP; None if invalid.
    Shared by std.ip() and VCL IP constants, which VCC resolves the same way (default port 80)."""
    s = s.strip()
    host, port_ = s, default_port
    if s.startswith("["):
        end = s.find("]")
        if end < 0:
            return None
        host, rest = s[1:end], s[end + 1:].strip()
        if rest:
            port_ = rest.lstrip(":").strip()
    elif " " in s:
        host, port_ = s.split(None, 1)
    elif s.count(":") == 1:
        host, port_ = s.split(":")
    flags = 0 if resolve else (socket.AI_NUMERICHOST | socket.AI_NUMERICSERV)
    try:
        infos = socket.getaddrinfo(host, port_, 0, socket.SOCK_STREAM, 0, flags)
    except (OSError, UnicodeError):
        return None
    if not infos:
        return None
    addr = infos[0][4]
    host = addr[0]
    if host.startswith("::ffff:") and "." in host:
        host = host[7:]      # an IPv4-mapped address is that IPv4 address, as varnishd prints it
    return IP(host, int(addr[1]))


@dataclass(slots=True)
class BackendSpec:
    """A `backend NAME { ... }` declaration: pure data; the server turns it into a connection pool."""

    name: str
    host: str | None = None          # None for `backend NAME none;`
    port: str = "80"
    host_header: str | None = None
    connect_timeout: float | None = None        # None: use the parameter
    first_byte_timeout: float | None = None
    between_bytes_timeout: float | None = None
    max_connections: int = 0
    probe: object = None             # a ProbeSpec, or None
    # Filled by the server once it has built the live backend (health, pool, counters).
    live: object = None
    path: str | None = None          # .path: a Unix domain socket instead of host/port
    proxy_header: int = 0            # .proxy_header: PROXY protocol version to send (0: none)
    preamble: bytes = b""            # .preamble: sent first on every new connection

    def __str__(self) -> str:
        return self.name


@dataclass(slots=True)
class ProbeSpec:
    """A `probe NAME { ... }` declaration (or a backend's inline probe): pure data."""

    name: str
    url: str = "/"
    request: list[str] | None = None   # .request lines; used instead of .url when given
    expected_response: int = 200
    timeout: float = 2.0
    interval: float = 5.0
    initial: int | None = None         # None: threshold - 1, as Varnish
    window: int = 8
    threshold: int = 3


class HeaderRef:
    """A HEADER argument to a vmod function (e.g. std.collect(req.http.X)): the message and name."""

    __slots__ = ("message", "name")

    def __init__(self, message: HttpMessage, name: str) -> None:
        self.message = message
        self.name = name

    def __repr__(self) -> str:
        return f"HeaderRef({self.name!r})"


class Context:
    """Everything one task (client request or backend fetch) shows to VCL.

    The server creates one per request; the compiled subroutines read and write its fields. Fields a
    subroutine may not touch are rejected at compile time by vcl.checker, not here.
    """

    FIELDS = (
        # which built-in subroutine is running now, e.g. "recv"; vmods with restrictions check it
        "method",
        # HTTP messages; None where the state has none
        "req", "req_top", "bereq", "beresp", "resp", "obj",
        # addresses (IP objects)
        "client_ip", "server_ip", "local_ip", "remote_ip", "local_endpoint", "local_socket",
        "client_identity", "server_hostname", "server_identity",
        # client-side request state
        "xid", "restarts", "esi_level", "req_ttl", "req_grace", "hash_always_miss", "hash_ignore_busy",
        "backend_hint", "can_gzip", "is_hitmiss", "is_hitpass", "req_time", "hash_parts", "hash",
        # backend-side state
        "bereq_xid", "retries", "bereq_backend", "bereq_uncacheable", "is_bgfetch",
        "connect_timeout", "first_byte_timeout", "between_bytes_timeout",
        "beresp_ttl", "beresp_grace", "beresp_keep", "beresp_uncacheable", "do_stream", "do_gzip",
        "do_gunzip", "do_esi", "was_304", "beresp_age", "beresp_backend",
        # object (cache hit) state
        "obj_ttl", "obj_grace", "obj_keep", "obj_hits", "obj_age", "obj_uncacheable",
        # synthetic body being built by synthetic() / set resp.body / set beresp.body: a list of str
        # chunks (the server joins them); None when nothing was written
        "synth_body",
        # the server's handle on the client connection, for vmods such as tinykvm.steal()
        "session",
        # the loaded VCL (vmod object instances, backends); the server's shared state
        "vcl", "server",
        # VSL-style log lines produced by std.log() and friends
        "log",
        # free per-task storage for vmods
        "priv_task",
        # a weak reference to the server's task (client request or fetch): vsl_timestamp(label)
        # for std.timestamp
        "task",
        # Added for vcl/ (see the variable table in vcl/symbols.py):
        # `now`, set by each compiled built-in subroutine that reads it, on entry
        "now",
        # req.hash_ignore_vary, req.storage, req.transport ("HTTP/1"), req.esi (VCL 4.0)
        "hash_ignore_vary", "req_storage", "transport", "esi",
        # unset bereq.body sets this to None (the server drops the request body)
        "bereq_body",
        # bereq.time, beresp.time, beresp.storage, beresp.filters
        "bereq_time", "beresp_time", "beresp_storage", "beresp_filters",
        # obj.time, obj.can_esi, obj.storage
        "obj_time", "obj_can_esi", "obj_storage",
        # resp.do_esi, resp.filters, resp.is_streaming, resp.time
        "resp_do_esi", "resp_filters", "resp_is_streaming", "resp_time",
        # what the server's default filter lists are computed from (beresp.filters, resp.filters):
        # a function of ctx, the object being delivered, HEAD-ness, the backend body's framing, and
        # ESI being off for this request
        "filters_default", "obj_oc", "head_request", "beresp_body", "disable_esi",
        # sess.xid and the per-session timeouts VCL may change
        "sess_xid", "sess_timeout_idle", "sess_timeout_linger", "sess_send_timeout", "sess_idle_send_timeout",
    )

    # Plain class attributes are the defaults: a request sets only what it uses, so creating a
    # Context costs one dict update instead of ~90 setattr calls.
    restarts = 0
    retries = 0
    esi_level = 0

    def __init__(self, **fields: object) -> None:
        self.log = []
        self.__dict__.update(fields)

    @classmethod
    def starting_with(cls, fields: dict) -> Context:
        """A Context with a copy of `fields` (shared ones, made once): one dict copy costs a
        fraction of passing them as keyword arguments."""
        ctx = cls.__new__(cls)
        ctx.__dict__ = fields.copy()
        ctx.log = []
        return ctx


for _name in Context.FIELDS:
    if not hasattr(Context, _name):
        setattr(Context, _name, None)
del _name
