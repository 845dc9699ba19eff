"""The VCL variable table: type, where each variable may be read/set/unset, and the Context field it
maps to. Facts from Varnish 7.1's vcl-var(7); the `get`/`set` columns are the Python the generated
code uses, with `ctx` the vcl.runtime.Context and `{v}` the new value.

Context field mapping (what the server must fill before calling a subroutine, and act on after):

| VCL                                  | Python (ctx = vcl.runtime.Context)                          |
| ------------------------------------ | ----------------------------------------------------------- |
| req.method/url/proto, req.http.*     | ctx.req.method / .url / .proto / .headers (HttpMessage)     |
| req_top.*                            | ctx.req_top (the request itself when None)                  |
| bereq.method/url/proto, bereq.http.* | ctx.bereq (HttpMessage; also in vcl_pipe)                   |
| beresp.status/reason/proto/http.*    | ctx.beresp (HttpMessage)                                    |
| obj.status/reason/proto/http.*       | ctx.obj (HttpMessage, vcl_hit)                              |
| resp.status/reason/proto/http.*      | ctx.resp (HttpMessage)                                      |
| resp.body, beresp.body, synthetic()  | ctx.synth_body: list of str chunks (= replaces, += and      |
|                                      | synthetic() append); the server joins them                  |
| hash_data()                          | ctx.hash_parts.append(str) (an unset string hashes a NUL)   |
| std.log(), std.timestamp()           | ctx.log.append((tag, text)) with tag "VCL_Log"/"Timestamp"  |
| req.xid / bereq.xid / sess.xid       | str(ctx.xid) / str(ctx.bereq_xid) / str(ctx.sess_xid)       |
| req.restarts, req.esi_level          | ctx.restarts, ctx.esi_level (INT)                           |
| bereq.retries                        | ctx.retries                                                 |
| req.ttl, req.grace                   | ctx.req_ttl, ctx.req_grace (DURATION: float seconds)        |
| req.hash_always_miss/ignore_busy/... | ctx.hash_always_miss, ctx.hash_ignore_busy, ...             |
| req.backend_hint                     | ctx.backend_hint: BackendSpec, a director (resolve(ctx)),   |
|                                      | or None; vcl.rtlib.resolve_backend() gives the BackendSpec  |
| bereq.backend / beresp.backend       | ctx.bereq_backend / ctx.beresp_backend                      |
| bereq.*_timeout                      | ctx.connect_timeout, ctx.first_byte_timeout, ...            |
| bereq.uncacheable, bereq.is_bgfetch  | ctx.bereq_uncacheable, ctx.is_bgfetch                       |
| unset bereq.body                     | ctx.bereq_body = None                                       |
| beresp.ttl/grace/keep/age            | ctx.beresp_ttl / beresp_grace / beresp_keep / beresp_age    |
| beresp.uncacheable, beresp.do_*      | ctx.beresp_uncacheable, ctx.do_stream/do_gzip/do_gunzip/... |
| beresp.was_304                       | ctx.was_304                                                 |
| obj.ttl/grace/keep/hits/age          | ctx.obj_ttl / obj_grace / obj_keep / obj_hits / obj_age     |
| obj.uncacheable                      | ctx.obj_uncacheable                                         |
| client.ip, server.ip, remote.ip,     | ctx.client_ip, ctx.server_ip, ctx.remote_ip, ctx.local_ip   |
| local.ip                             | (vcl.runtime.IP)                                            |
| client.identity                      | ctx.client_identity (str(client.ip) when None)              |
| server.hostname / server.identity    | ctx.server_hostname / ctx.server_identity                   |
| local.endpoint / local.socket        | ctx.local_endpoint / ctx.local_socket                       |
| now                                  | ctx.now, set on entry by each compiled built-in subroutine  |
|                                      | that reads it (float epoch seconds)                         |
| req.time, bereq.time, beresp.time,   | ctx.req_time, ctx.bereq_time, ctx.beresp_time,              |
| obj.time, resp.time                  | ctx.obj_time, ctx.resp_time (TIME: float epoch seconds)     |
| storage.NAME.free_space/used_space/  | vcl.rtlib.storage_var(ctx, NAME, field), which asks         |
| happy                                | ctx.server.storage_var(NAME, field) when the server has it  |

Every variable is listed in VARIABLES below (header variables are made by lookup()).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

CLIENT = frozenset({"vcl_recv", "vcl_pipe", "vcl_pass", "vcl_hash", "vcl_purge", "vcl_miss", "vcl_hit",
                    "vcl_deliver", "vcl_synth"})
BACKEND = frozenset({"vcl_backend_fetch", "vcl_backend_response", "vcl_backend_error"})
HOUSEKEEPING = frozenset({"vcl_init", "vcl_fini"})
ALL = CLIENT | BACKEND | HOUSEKEEPING
METHODS = ("vcl_recv", "vcl_pipe", "vcl_pass", "vcl_hash", "vcl_purge", "vcl_miss", "vcl_hit", "vcl_deliver",
           "vcl_synth", "vcl_backend_fetch", "vcl_backend_response", "vcl_backend_error", "vcl_init",
           "vcl_fini")

# Legal return actions per built-in subroutine (Varnish 7.1).
RETURNS: dict[str, frozenset[str]] = {
    "vcl_recv": frozenset({"fail", "hash", "pass", "pipe", "purge", "restart", "synth", "vcl"}),
    "vcl_pipe": frozenset({"fail", "pipe", "synth"}),
    "vcl_pass": frozenset({"fail", "fetch", "restart", "synth"}),
    "vcl_hash": frozenset({"fail", "lookup"}),
    "vcl_purge": frozenset({"fail", "restart", "synth"}),
    "vcl_miss": frozenset({"fail", "fetch", "pass", "restart", "synth"}),
    "vcl_hit": frozenset({"deliver", "fail", "pass", "restart", "synth"}),
    "vcl_deliver": frozenset({"deliver", "fail", "restart", "synth"}),
    "vcl_synth": frozenset({"deliver", "fail", "restart"}),
    "vcl_backend_fetch": frozenset({"abandon", "error", "fail", "fetch"}),
    "vcl_backend_response": frozenset({"abandon", "deliver", "error", "fail", "pass", "retry"}),
    "vcl_backend_error": frozenset({"abandon", "deliver", "fail", "retry"}),
    "vcl_init": frozenset({"fail", "ok"}),
    "vcl_fini": frozenset({"ok"}),
}

ACTIONS = frozenset().union(*RETURNS.values()) | {"lookup"}

# Names VCC has in its symbol table before any VCL is read, with their kind: none can be declared as
# an acl, backend, probe or sub (varnishd 7.1: "Name ban must have type 'action'.").
BUILTIN_SYMBOLS = {
    **dict.fromkeys(("ban", "call", "hash_data", "if", "new", "return", "set", "synthetic", "unset"), "action"),
    **dict.fromkeys(("acl", "backend", "import", "probe", "sub", "vcl"), "reserved"),
    **dict.fromkeys(("regsub", "regsuball", "true", "false"), "func"),
    **dict.fromkeys(("now", "req", "bereq", "beresp", "resp"), "var"),
}

# Arguments an action takes: (type, optional) per argument.
ACTION_ARGS: dict[str, tuple[tuple[str, bool], ...]] = {
    "synth": (("INT", False), ("STRING", True)),
    "error": (("INT", True), ("STRING", True)),
    "pass": (("DURATION", True),),
    "vcl": (("VCL", False),),
    "fail": (("STRING", True),),     # the reason, logged as VCL_Error (VRT_fail)
}


def expand_methods(names) -> frozenset[str]:
    """Built-in subroutine names, with the vmod-description groups "client", "backend",
    "housekeeping" and "all" expanded (as in a vmod's $Restrict)."""
    out: set[str] = set()
    for name in names:
        if name == "housekeeping":
            out |= HOUSEKEEPING
        else:
            out |= _set(name)
    return frozenset(out)


def _set(*names: str) -> frozenset[str]:
    out: set[str] = set()
    for name in names:
        if name == "client":
            out |= CLIENT
        elif name == "backend":
            out |= BACKEND
        elif name == "all":
            out |= ALL
        else:
            out.add(name)
    return frozenset(out)


@dataclass(frozen=True, slots=True)
class Variable:
    name: str
    type: str
    read: frozenset[str]
    write: frozenset[str]
    unset: frozenset[str]
    get: str            # Python expression reading the value
    set: str | None     # Python statement with {v}, or None
    unset_code: str | None = None
    min_version: float = 4.0
    max_version: float = 4.1
    # True for *.http.* entries: the last name component is a header name
    header: bool = False


_PLAIN_FIELD = re.compile(r"ctx\.[a-z_]+")
_ZERO = {"INT": "0", "REAL": "0.0", "DURATION": "0.0", "TIME": "0.0", "BYTES": "0.0"}


def _v(name, type_, read, write=(), unset=(), get="", set_=None, unset_code=None, lo=4.0, hi=4.1):
    if type_ in _ZERO and _PLAIN_FIELD.fullmatch(get):
        # A number the server has not filled in (None) reads as 0, never as a TypeError later.
        get = f"({get} or {_ZERO[type_]})"
    return Variable(name, type_, _set(*read), _set(*write), _set(*unset), get, set_, unset_code, lo, hi)


_LINE_TAGS = {"req": "Req", "bereq": "Bereq", "beresp": "Beresp", "resp": "Resp",
              "url": "URL", "method": "Method", "proto": "Protocol", "reason": "Reason"}


def _line1(name: str) -> str:
    """The setter of a request/response line field, which may not be set empty and is logged."""
    msg, field = name.split(".")
    tag = _LINE_TAGS[msg] + _LINE_TAGS[field]
    return f"rt.set_line1(ctx, ctx.{msg}, {field!r}, {{v}}, {name!r}, {tag!r})"


def _status(msg: str) -> str:
    return f"rt.set_status(ctx, ctx.{msg}, {{v}}, '{msg}.status', {_LINE_TAGS[msg]!r})"


_BR = ("vcl_backend_response", "vcl_backend_error")
_PB = ("vcl_pipe", "backend")
_DS = ("vcl_deliver", "vcl_synth")
_HD = ("vcl_hit", "vcl_deliver")

VARIABLES: dict[str, Variable] = {v.name: v for v in [
    _v("client.identity", "STRING", ["client", "backend"], ["client"],
       get="(ctx.client_identity if ctx.client_identity is not None else str(ctx.client_ip))",
       set_="ctx.client_identity = {v}"),
    _v("client.ip", "IP", ["client", "backend"], get="ctx.client_ip"),
    _v("server.hostname", "STRING", ["all"], get="ctx.server_hostname"),
    _v("server.identity", "STRING", ["all"], get="ctx.server_identity"),
    _v("server.ip", "IP", ["client", "backend"], get="ctx.server_ip"),
    _v("remote.ip", "IP", ["client", "backend"], get="ctx.remote_ip"),
    _v("local.ip", "IP", ["client", "backend"], get="ctx.local_ip"),
    _v("local.endpoint", "STRING", ["client", "backend"], get="ctx.local_endpoint", lo=4.1),
    _v("local.socket", "STRING", ["client", "backend"], get="ctx.local_socket", lo=4.1),
    # req
    _v("req", "HTTP", ["client"], get="ctx.req"),
    _v("req.backend_hint", "BACKEND", ["client"], ["client"], get="ctx.backend_hint",
       set_="ctx.backend_hint = {v}"),
    _v("req.can_gzip", "BOOL", ["client"], get="rt.req_gzip(ctx.req.headers.get('Accept-Encoding'))"),
    # req.esi (4.0) and resp.do_esi (4.1) are one flag, varnishd's req->disable_esi inverted
    _v("req.esi", "BOOL", ["client"], ["client"], get="(ctx.esi is not False)", set_="rt.set_req_esi(ctx, {v})",
       hi=4.0),
    _v("req.esi_level", "INT", ["client"], get="ctx.esi_level"),
    _v("req.grace", "DURATION", ["client"], ["client"], get="ctx.req_grace", set_="ctx.req_grace = {v}"),
    _v("req.hash", "BLOB", ["vcl_hit", "vcl_miss", "vcl_pass", "vcl_purge", "vcl_deliver"], get="ctx.hash"),
    _v("req.hash_always_miss", "BOOL", ["client"], ["client"], get="ctx.hash_always_miss",
       set_="ctx.hash_always_miss = {v}"),
    _v("req.hash_ignore_busy", "BOOL", ["client"], ["client"], get="ctx.hash_ignore_busy",
       set_="ctx.hash_ignore_busy = {v}"),
    _v("req.hash_ignore_vary", "BOOL", ["client"], ["client"], get="ctx.hash_ignore_vary",
       set_="ctx.hash_ignore_vary = {v}"),
    _v("req.is_hitmiss", "BOOL", ["client"], get="ctx.is_hitmiss"),
    _v("req.is_hitpass", "BOOL", ["client"], get="ctx.is_hitpass"),
    _v("req.method", "STRING", ["client"], ["client"], get="ctx.req.method", set_=_line1("req.method")),
    _v("req.proto", "STRING", ["client"], ["client"], get="ctx.req.proto", set_=_line1("req.proto"), hi=4.0),
    _v("req.proto", "STRING", ["client"], get="ctx.req.proto", lo=4.1),
    _v("req.restarts", "INT", ["client"], get="ctx.restarts"),
    _v("req.storage", "STEVEDORE", ["client"], ["client"], get="ctx.req_storage",
       set_="ctx.req_storage = {v}"),
    _v("req.time", "TIME", ["client"], get="ctx.req_time"),
    # HTTP/1 is the only transport the server speaks.
    _v("req.transport", "STRING", ["client"], get="(ctx.transport or 'HTTP/1')"),
    _v("req.ttl", "DURATION", ["client"], ["client"], get="ctx.req_ttl", set_="ctx.req_ttl = {v}"),
    _v("req.url", "STRING", ["client"], ["client"], get="ctx.req.url", set_=_line1("req.url")),
    _v("req.xid", "STRING", ["client"], get="str(ctx.xid)"),
    # req_top: the top-level request of an ESI tree; the request itself when there is none
    _v("req_top.method", "STRING", ["client"], get="(ctx.req_top or ctx.req).method"),
    _v("req_top.proto", "STRING", ["client"], get="(ctx.req_top or ctx.req).proto"),
    _v("req_top.time", "TIME", ["client"], get="ctx.req_time"),
    _v("req_top.url", "STRING", ["client"], get="(ctx.req_top or ctx.req).url"),
    # bereq
    _v("bereq", "HTTP", ["backend"], get="ctx.bereq"),
    _v("bereq.backend", "BACKEND", _PB, _PB, get="ctx.bereq_backend", set_="ctx.bereq_backend = {v}"),
    _v("bereq.between_bytes_timeout", "DURATION", ["backend"], ["backend"], get="ctx.between_bytes_timeout",
       set_="ctx.between_bytes_timeout = {v}"),
    _v("bereq.body", "BODY", [], [], ["vcl_backend_fetch"], get="None", unset_code="ctx.bereq_body = None"),
    _v("bereq.connect_timeout", "DURATION", _PB, _PB, get="ctx.connect_timeout",
       set_="ctx.connect_timeout = {v}"),
    _v("bereq.first_byte_timeout", "DURATION", ["backend"], ["backend"], get="ctx.first_byte_timeout",
       set_="ctx.first_byte_timeout = {v}"),
    _v("bereq.hash", "BLOB", _PB, get="ctx.hash"),
    _v("bereq.is_bgfetch", "BOOL", ["backend"], get="bool(ctx.is_bgfetch)"),
    _v("bereq.is_hitmiss", "BOOL", ["backend"], get="bool(ctx.is_hitmiss)"),
    _v("bereq.is_hitpass", "BOOL", ["backend"], get="bool(ctx.is_hitpass)"),
    _v("bereq.method", "STRING", _PB, _PB, get="ctx.bereq.method", set_=_line1("bereq.method")),
    _v("bereq.proto", "STRING", _PB, _PB, get="ctx.bereq.proto", set_=_line1("bereq.proto"), hi=4.0),
    _v("bereq.proto", "STRING", _PB, get="ctx.bereq.proto", lo=4.1),
    _v("bereq.retries", "INT", ["backend"], get="ctx.retries"),
    _v("bereq.time", "TIME", _PB, get="ctx.bereq_time"),
    _v("bereq.uncacheable", "BOOL", ["backend"], get="bool(ctx.bereq_uncacheable)"),
    _v("bereq.url", "STRING", _PB, _PB, get="ctx.bereq.url", set_=_line1("bereq.url")),
    _v("bereq.xid", "STRING", _PB, get="str(ctx.bereq_xid)"),
    # beresp
    _v("beresp", "HTTP", _BR, get="ctx.beresp"),
    _v("beresp.age", "DURATION", _BR, get="ctx.beresp_age"),
    _v("beresp.backend", "BACKEND", _BR, get="ctx.beresp_backend"),
    _v("beresp.backend.ip", "IP", ["vcl_backend_response"], get="rt.backend_ip(ctx.beresp_backend)", hi=4.0),
    _v("beresp.backend.name", "STRING", _BR, get="rt.backend_name(ctx.beresp_backend)"),
    _v("beresp.body", "BODY", [], ["vcl_backend_error"], get="None", set_="rt.body_set(ctx, {v})"),
    _v("beresp.do_esi", "BOOL", _BR, _BR, get="bool(ctx.do_esi)",
       set_="rt.set_beresp_vfp_flag(ctx, 'do_esi', {v})"),
    _v("beresp.do_gunzip", "BOOL", _BR, _BR, get="bool(ctx.do_gunzip)",
       set_="rt.set_beresp_vfp_flag(ctx, 'do_gunzip', {v})"),
    _v("beresp.do_gzip", "BOOL", _BR, _BR, get="bool(ctx.do_gzip)",
       set_="rt.set_beresp_vfp_flag(ctx, 'do_gzip', {v})"),
    _v("beresp.do_stream", "BOOL", _BR, _BR, get="bool(ctx.do_stream)", set_="ctx.do_stream = {v}"),
    _v("beresp.filters", "STRING", ["vcl_backend_response"], ["vcl_backend_response"],
       get="(ctx.beresp_filters if ctx.beresp_filters is not None else ctx.filters_default(ctx))",
       set_="ctx.beresp_filters = {v}"),
    _v("beresp.grace", "DURATION", _BR, _BR, get="ctx.beresp_grace", set_="rt.beresp_timer_set(ctx, 'beresp_grace', {v})"),
    _v("beresp.keep", "DURATION", _BR, _BR, get="ctx.beresp_keep", set_="rt.beresp_timer_set(ctx, 'beresp_keep', {v})"),
    _v("beresp.proto", "STRING", _BR, _BR, get="ctx.beresp.proto", set_=_line1("beresp.proto"), hi=4.0),
    _v("beresp.proto", "STRING", _BR, get="ctx.beresp.proto", lo=4.1),
    _v("beresp.reason", "STRING", _BR, _BR, get="ctx.beresp.reason", set_=_line1("beresp.reason")),
    _v("beresp.status", "INT", _BR, _BR, get="ctx.beresp.status", set_=_status("beresp")),
    _v("beresp.storage", "STEVEDORE", _BR, _BR, get="ctx.beresp_storage", set_="ctx.beresp_storage = {v}"),
    _v("beresp.storage_hint", "STRING", _BR, _BR, get="ctx.beresp_storage",
       set_="ctx.beresp_storage = {v}", hi=4.0),
    _v("beresp.time", "TIME", _BR, get="ctx.beresp_time"),
    _v("beresp.ttl", "DURATION", _BR, _BR, get="ctx.beresp_ttl", set_="rt.beresp_timer_set(ctx, 'beresp_ttl', {v})"),
    _v("beresp.uncacheable", "BOOL", _BR, _BR, get="bool(ctx.beresp_uncacheable)",
       set_="rt.beresp_uncacheable_set(ctx, {v})"),
    # True when the backend answered 304 and beresp is the revalidated stale object.
    _v("beresp.was_304", "BOOL", _BR, get="bool(ctx.was_304)"),
    # obj
    _v("obj.age", "DURATION", _HD, get="ctx.obj_age"),
    _v("obj.can_esi", "BOOL", _HD, get="bool(ctx.obj_can_esi)"),
    _v("obj.grace", "DURATION", _HD, get="ctx.obj_grace"),
    _v("obj.hits", "INT", _HD, get="ctx.obj_hits"),
    _v("obj.keep", "DURATION", _HD, get="ctx.obj_keep"),
    _v("obj.proto", "STRING", ["vcl_hit"], get="ctx.obj.proto"),
    _v("obj.reason", "STRING", ["vcl_hit"], get="ctx.obj.reason"),
    _v("obj.status", "INT", ["vcl_hit"], get="ctx.obj.status"),
    _v("obj.storage", "STEVEDORE", _HD, get="ctx.obj_storage"),
    _v("obj.time", "TIME", _HD, get="ctx.obj_time"),
    _v("obj.ttl", "DURATION", _HD, get="ctx.obj_ttl"),
    _v("obj.uncacheable", "BOOL", ["vcl_deliver"], get="bool(ctx.obj_uncacheable)"),
    # resp
    _v("resp", "HTTP", _DS, get="ctx.resp"),
    _v("resp.body", "BODY", [], ["vcl_synth"], get="None", set_="rt.body_set(ctx, {v})"),
    _v("resp.do_esi", "BOOL", _DS, _DS, get="(ctx.esi is not False)", set_="rt.set_resp_do_esi(ctx, {v})",
       lo=4.1),
    _v("resp.filters", "STRING", _DS, _DS,
       get="(ctx.resp_filters if ctx.resp_filters is not None else ctx.filters_default(ctx))",
       set_="ctx.resp_filters = {v}"),
    _v("resp.is_streaming", "BOOL", _DS, get="bool(ctx.resp_is_streaming)"),
    _v("resp.proto", "STRING", _DS, _DS, get="ctx.resp.proto", set_=_line1("resp.proto"), hi=4.0),
    _v("resp.proto", "STRING", _DS, get="ctx.resp.proto", lo=4.1),
    _v("resp.reason", "STRING", _DS, _DS, get="ctx.resp.reason", set_=_line1("resp.reason")),
    _v("resp.status", "INT", _DS, _DS, get="ctx.resp.status", set_=_status("resp")),
    _v("resp.time", "TIME", _DS, get="ctx.resp_time"),
    # misc
    _v("now", "TIME", ["all"], get="ctx.now"),
    _v("sess.idle_send_timeout", "DURATION", ["client"], ["client"], get="ctx.sess_idle_send_timeout",
       set_="ctx.sess_idle_send_timeout = {v}"),
    _v("sess.send_timeout", "DURATION", ["client"], ["client"], get="ctx.sess_send_timeout",
       set_="ctx.sess_send_timeout = {v}"),
    _v("sess.timeout_idle", "DURATION", ["client"], ["client"], get="ctx.sess_timeout_idle",
       set_="ctx.sess_timeout_idle = {v}"),
    _v("sess.timeout_linger", "DURATION", ["client"], ["client"], get="ctx.sess_timeout_linger",
       set_="ctx.sess_timeout_linger = {v}"),
    _v("sess.xid", "STRING", ["client", "backend"], get="str(ctx.sess_xid)", lo=4.1),
] if not (v.max_version < 4.1 and v.name in ("req.proto", "bereq.proto", "beresp.proto", "resp.proto"))}

# Variables whose meaning depends on the VCL version: {name: [(version range) Variable]}
_VERSIONED: dict[str, list[Variable]] = {}
for _name in ("req.proto", "bereq.proto", "beresp.proto", "resp.proto"):
    _VERSIONED[_name] = [
        Variable(_name, "STRING", VARIABLES[_name].read, VARIABLES[_name].read, frozenset(),
                 VARIABLES[_name].get, _line1(_name), None, 4.0, 4.0),
        VARIABLES[_name],
    ]

# *.http.NAME: (HttpMessage expression, read, write, unset)
HEADER_SCOPES: dict[str, tuple[str, frozenset[str], frozenset[str], frozenset[str]]] = {
    "req": ("ctx.req", _set("client"), _set("client"), _set("client")),
    "req_top": ("(ctx.req_top or ctx.req)", _set("client"), frozenset(), frozenset()),
    "bereq": ("ctx.bereq", _set(*_PB), _set(*_PB), _set(*_PB)),
    "beresp": ("ctx.beresp", _set(*_BR), _set(*_BR), _set(*_BR)),
    "obj": ("ctx.obj", _set("vcl_hit"), frozenset(), frozenset()),
    "resp": ("ctx.resp", _set(*_DS), _set(*_DS), _set(*_DS)),
}

# storage.NAME.FIELD
STORAGE_FIELDS = {"free_space": "BYTES", "used_space": "BYTES", "happy": "BOOL"}
# varnishd's stevedores when no -s is given; the server passes its own list to compile_vcl().
STORAGE_NAMES = ("s0", "Transient")


def _header(scope: str, header: str) -> Variable | None:
    """SCOPE.http.HEADER; None for an unknown scope."""
    scope = scope.lower()
    if scope not in HEADER_SCOPES:
        return None
    msg, read, write, unset = HEADER_SCOPES[scope]
    lname = header.lower()
    return Variable(f"{scope}.http.{header}", "HEADER", read, write, unset,
                    get=f"{msg}.headers.get_lower({lname!r})",
                    set=f"rt.set_hdr({msg}.headers, {header!r}, {{v}})",
                    unset_code=f"{msg}.headers.unset({lname!r})", header=True)


def lookup(name: str, version: float = 4.1, storages: tuple[str, ...] = STORAGE_NAMES) -> Variable | None:
    """The variable `name`, header variables included; None if unknown.
    `storages` are the stevedore names that make storage.NAME symbols.

    Like VCC, names match case-insensitively (REQ.URL is req.url); a header name keeps its
    spelling, since `set` sends it on the wire that way.
    """
    if name.endswith(('"', '"}')):
        return _quoted_header(name, version)
    parts = name.split(".")
    if len(parts) >= 3 and parts[1].lower() == "http":
        if len(parts) != 3:
            return None
        return _header(parts[0], parts[2])
    key = name.lower()
    if key in _VERSIONED:
        for var in _VERSIONED[key]:
            if var.min_version <= version <= var.max_version:
                return var
        return None
    var = VARIABLES.get(key)
    if var is not None:
        if var.min_version <= version <= var.max_version:
            return var
        return None
    if parts[0].lower() == "storage" and len(parts) in (2, 3):
        stevedore = next((s for s in storages if s.lower() == parts[1].lower()), None)
        if stevedore is None:
            return None
        if len(parts) == 2:
            # A stevedore is represented by its name; the server maps it to its storage.
            # readable everywhere, vcl_init and vcl_fini too (varnishd's storage symbols)
            return Variable(f"storage.{stevedore}", "STEVEDORE", _set("all"), frozenset(),
                            frozenset(), get=repr(stevedore), set=None)
        field = parts[2].lower()
        if field in STORAGE_FIELDS:
            return Variable(f"storage.{stevedore}.{field}", STORAGE_FIELDS[field], _set("all"),
                            frozenset(), frozenset(), get=f"rt.storage_var(ctx, {stevedore!r}, {field!r})",
                            set=None)
    return None


class BadHeaderName(ValueError):
    """A quoted header name that VCC refuses; str() is VCC's message, `at` where in the name it
    points (the quoted part), None where it gives no place."""

    def __init__(self, message: str, at: int | None = None) -> None:
        super().__init__(message)
        self.at = at


_TCHAR = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
_ESCAPES = {"\n": "\\n", "\t": "\\t", "\r": "\\r"}


def _quoted_header(name: str, version: float) -> Variable | None:
    """SCOPE.http."NAME" (also {"NAME"} and the triple-quoted form): any header name, checked as
    VCC does; raises BadHeaderName."""
    scope, _, quoted = name.partition(".")
    quoted = quoted[5:]    # after "http."
    if version < 4.1:
        raise BadHeaderName("Quoted headers are available for VCL >= 4.1.", len(scope) + 6)
    if quoted.startswith('"""'):
        header = quoted[3:-3]
    elif quoted.startswith('{"'):
        header = quoted[2:-2]
    else:
        header = quoted[1:-1]
    if not header:
        return None
    for ch in header:
        if ch not in _TCHAR:
            shown = f"\\{ch.encode()[0]:03o}" if ord(ch) > 126 else _ESCAPES.get(ch, ch)
            raise BadHeaderName(f"Invalid character '{shown}' in header name.")
    return _header(scope, header)


# BUILTIN_SYMBOLS by kind: actions (vcc_action.c), reserved words, the built-in "functions"
VCC_ACTIONS = frozenset(k for k, kind in BUILTIN_SYMBOLS.items() if kind == "action")
VCC_RESERVED = frozenset(k for k, kind in BUILTIN_SYMBOLS.items() if kind == "reserved")
# `default` is one too, but a backend may take its name, so BUILTIN_SYMBOLS leaves it out
VCC_FUNCS = frozenset(k for k, kind in BUILTIN_SYMBOLS.items() if kind == "func") | {"default"}


def is_variable_prefix(name: str) -> bool:
    """True when `name` is a namespace of variables (req, req.http, storage.s0 ...)."""
    if name in HEADER_SCOPES or name in ("client", "server", "remote", "local", "sess", "storage"):
        return True
    if name.endswith(".http") and name[:-5] in HEADER_SCOPES:
        return True
    return any(v.startswith(name + ".") for v in VARIABLES)
