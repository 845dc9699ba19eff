"""std conversions by their typed arguments (vmod_std 7.1: `std.real(bool=true)` is 1.0, and so on),
the paths the mutation run found without a test. Values as VCL prints them (REAL/DURATION: 3 decimals).
"""

from __future__ import annotations

import re

import pytest
from inproc import inproc_cache_factory, wait_for
from real_varnishtest import VARNISHTEST, run_varnishtest
from test_cache_support import read_message

from vcl.compiler import compile_vcl
from vcl.runtime import IP, Context, Headers, HttpMessage, VCLFailure


def value(expr: str) -> str | None:
    src = f"vcl 4.1;\nimport std;\nbackend default none;\nsub vcl_recv {{\n\tset req.http.x = {expr};\n}}\n"
    compiled = compile_vcl(src, "std.vcl")
    req = HttpMessage("GET", "/")
    action = compiled.subs["vcl_recv"](Context(method="vcl_recv", req=req, vcl=compiled))
    if action.name == "fail":
        raise VCLFailure("failed")
    return req.headers.get("x")


@pytest.mark.parametrize("expr, want", [
    ("std.real(bool=true)", "1.000"), ("std.real(bool=false)", "0.000"), ("std.real(integer=3)", "3.000"),
    ("std.real(bytes=1KB)", "1024.000"), ("std.real(duration=1.5s)", "1.500"),
    ("std.real(time=std.time(integer=12))", "12.000"), ("std.real(s=\"2.5\")", "2.500"),
    ("std.real(s=\"x\", fallback=7.25)", "7.250"),
    ("std.duration(real=1.5)", "1.500"), ("std.duration(integer=2)", "2.000"),
    ("std.duration(s=\"3m\")", "180.000"), ("std.duration(s=\"x\", fallback=4s)", "4.000"),
    ("std.bytes(real=1.9)", "1"), ("std.bytes(integer=5)", "5"), ("std.bytes(s=\"2k\")", "2048"),
    ("std.bytes(real=-1, fallback=9B)", "9"), ("std.bytes(integer=-1, fallback=8B)", "8"),
    ("std.integer(bool=true)", "1"), ("std.integer(real=2.9)", "2"), ("std.integer(real=-2.9)", "-2"),
    ("std.time(real=86400.5)", "Fri, 02 Jan 1970 00:00:00 GMT"),
    ("std.time(s=\"x\", fallback=std.time(integer=60))", "Thu, 01 Jan 1970 00:01:00 GMT"),
    ("std.time(s=\"120\")", "Thu, 01 Jan 1970 00:02:00 GMT"),
    ("std.time(s=\"-5\", fallback=std.time(integer=1))", "Thu, 01 Jan 1970 00:00:01 GMT"),
    ("std.real2integer(2.5, 0)", "3"), ("std.real2integer(std.real(integer=999999999999999), 7)", "7"),
    ("std.time2integer(std.time(real=10.4), 0)", "10"),
    ("std.real2time(5.0, std.time(integer=1))", "Thu, 01 Jan 1970 00:00:05 GMT"),
    ("std.time2real(std.time(integer=3), 0.0)", "3.000"),
    ("std.strftime(std.time(integer=0), \"%Y-%m-%d\")", "1970-01-01"),
    # "-0" is -0.0, and C prints it with its sign (varnishd 7.1.1)
    ("std.real(\"-0\")", "-0.000"), ("std.real(\"-.0\")", "-0.000"), ("std.duration(\"-0s\")", "-0.000"),
    ("std.integer(\"-0\")", "0"),
])
def test_conversion(expr, want):
    assert value(expr) == want


@pytest.mark.parametrize("expr", ["std.duration(s=\"x\")", "std.bytes(s=\"x\")", "std.time(s=\"x\")",
                                  "std.real(s=\"x\")", "std.ip(\"not an ip\", resolve=false)"])
def test_conversion_without_fallback_fails(expr):
    with pytest.raises(VCLFailure):
        value(expr)


# (expression, value) as varnishd 7.1.1 set them in vcl_synth (a .vtc; re-run live below)
INF = " * ".join(["999999999999.0"] * 27)      # 1e324: infinite as a double
RECORDED = [
    ('std.strstr("abcabc", "c")', "cabc"), ('std.strstr("abc", "a")', "abc"),
    ('"" + std.strstr("abc", req.http.unset)', ""), ('"" + std.strstr(req.http.unset, "a")', ""),
    ('std.strstr("", "")', ""),
    ('std.fnmatch("*", "a/b")', "false"), ('std.fnmatch("*", ".a")', "true"), ('std.fnmatch("\\*", "*")', "true"),
    ('std.fnmatch("\\*", "*", noescape=true)', "false"), ('std.fnmatch("*", ".a", period=true)', "false"),
    ("std.real2integer(999999999999.999, 7)", "1000000000000"),
    ("std.real2integer(-999999999999.999, 7)", "-1000000000000"),
    # INT results beyond VRT_INTEGER_MAX (999999999999999) are the fallback
    ("std.time2integer(std.real2time(999999999999999, now), 7)", "999999999999999"),
    ("std.time2integer(std.real2time(999999999999999 + 1, now), 7)", "7"),
    ("std.time2integer(std.real2time(-999999999999999 - 1, now), 7)", "7"),
    ("std.time2integer(std.real2time(900719925474099 * 10 + 1, now), 7)", "7"),
    ("std.time2integer(std.real2time(999999999999.5, now), 7)", "1000000000000"),
    ("std.integer(real=999999999999.0 * 1000.0 + 1000, fallback=7)", "7"),
    ("std.integer(real=999999999999.0 * 1000.0 + 999, fallback=7)", "999999999999999"),
    ("std.integer(duration=999999999999s * 1000 + 1000s, fallback=7)", "7"),
    ("std.integer(time=std.real2time(999999999999.0 * 1000.0 + 1000, now), fallback=7)", "7"),
    # BYTES go on to 2**53
    ("std.bytes(real=999999999999.0 * 1000.0 + 999, fallback=7B) - 999999999999000B", "999"),
    ("std.bytes(integer=999999999999999 + 1, fallback=7B) - 999999999999000B", "1000"),
    ('std.querysort("?b&a")', "?a&b"), ('std.querysort("/p?b&a?c&a")', "/p?a?c&a&b"),
    ('std.querysort("/a&b?c")', "/a&b?c"), ('std.querysort("/p")', "/p"),
    ("std.integer(bool=false)", "0"), ("std.real(bool=false)", "0.000"),
    ("std.bytes(real=0, fallback=7B)", "0"), ("std.bytes(integer=0, fallback=7B)", "0"),
    ("std.bytes(real=0.5, fallback=7B)", "0"), ('std.time(s="1", fallback=now)', "Thu, 01 Jan 1970 00:00:01 GMT"),
    ('"" + std.strftime(std.time(integer=0), "")', ""),
    ('std.ip("localhost", std.ip("9.9.9.9", client.ip), true)', "127.0.0.1"),
    ('std.ip("localhost", std.ip("9.9.9.9", client.ip), false)', "9.9.9.9"),
    # the ends of the ranges: INT to -VRT_INTEGER_MAX, BYTES from a REAL to 2**53 - 1 (7B: the fallback)
    ("std.integer(real=-999999999999.0 * 1000.0 - 999, fallback=7)", "-999999999999999"),
    ("std.integer(real=-999999999999.0 * 1000.0 - 1000, fallback=7)", "7"),
    ('(std.bytes(s="9007199254740991", fallback=7B) == 7B)', "true"),
    ("(std.bytes(real=9007199254.0 * 1000000.0 + 740991, fallback=7B) == 7B)", "false"),
    ("(std.bytes(real=9007199254.0 * 1000000.0 + 740992, fallback=7B) == 7B)", "true"),
    ("std.syntax(4.1)", "true"), ("std.syntax(4.0)", "true"), ("std.syntax(4.2)", "false"),
    ("std.getenv(req.http.unset)", ""), ('std.getenv("")', ""), ("std.ban_error()", ""),
    ('(std.ban_error() == "")', "true"), ("(std.ban_error() == req.http.unset)", "false"),
    # fnmatch(3) in the C locale: one byte per '?', ASCII classes; blanks are pattern characters
    ('std.fnmatch("?", "\u00e9")', "false"), ('std.fnmatch("[[:alpha:]]", "\u00e9")', "false"),
    ('std.fnmatch("??", "\u00e9")', "true"), ('std.fnmatch("a b", "a")', "false"), ('std.fnmatch(" ", " ")', "true"),
    ('std.fnmatch("", "")', "true"),
    ('std.querysort("/?ab&a")', "/?ab&a"), ('std.querysort("/a&b&")', "/a&b&"),
    ('std.querysort("/?\u00e9&a&z")', "/?\u00e9&a&z"),
    ('std.port(std.ip("1.2.3.4", client.ip, p="0"))', "0"), ('std.port(std.ip("1.2.3.4", client.ip))', "80"),
    ('std.strftime(std.real2time(999999999999.0 * 999999999999.0, now), "%Y")', ""),
    # a TIME that is no finite number (a REAL product past the double's range): the fallbacks
    (f"std.time2real(std.time(real={INF}), 1.5)", "1.500"), (f"std.time2integer(std.time(real={INF}), 7)", "7"),
    (f"std.time2real(std.real2time({INF}, std.time(integer=3)), 0.0)", "3.000"),
    (f"(std.bytes(real={INF}, fallback=7B) == 7B)", "true"),
]
# (statement, the task's VCL_Error) as varnishd 7.1.1 logged them
FAILURES = [
    ("std.integer(req.http.unset)", "std.integer: conversion failed"),
    ('std.duration(s="1s", real=1.0)', "std.duration: too many arguments"),
    ("std.bytes()", "std.bytes: not enough arguments"),
    ('std.time(s="1", real=1.0)', "std.time: too many arguments"),
    ('std.integer(s="1", bool=true)', "std.integer: too many arguments"),
]
# in two responses (varnishtest's client takes 64 header lines), chosen by req.http.part
SYNTH = "".join(f'\tif (req.http.part == "{part}") {{\n'
                + "".join(f"\t\tset resp.http.x{i} = {expr};\n" for i, (expr, _) in enumerate(RECORDED) if i // 40 == part)
                + "\t}\n" for part in (0, 1))


def test_values_varnishd_gave():
    compiled = compile_vcl(f"vcl 4.1;\nimport std;\nbackend default none;\nsub vcl_synth {{\n{SYNTH}}}\n", "v.vcl")
    got = {}
    for part in ("0", "1"):
        req = HttpMessage("GET", "/", headers=Headers([("part", part)]))
        ctx = Context(method="vcl_synth", req=req, req_top=req, resp=HttpMessage(status=200), vcl=compiled,
                      now=1000.0, client_ip=IP("192.0.2.1", 1234))
        compiled.subs["vcl_synth"](ctx)
        got.update((name, value) for name, value in ctx.resp.headers.items() if name.startswith("x"))
    assert [(expr, got.get(f"x{i}")) for i, (expr, _) in enumerate(RECORDED)] == RECORDED


@pytest.mark.parametrize("sep, joined", [('""', "a, b"), ("req.http.unset", "a, b"), ('"-"', "a-b"), (None, "a, b")])
def test_collect_separator(sep, joined):
    """An empty or unset separator is ", " (varnishd 7.1.1)."""
    call = "std.collect(req.http.x)" if sep is None else f"std.collect(req.http.x, {sep})"
    compiled = compile_vcl(f"vcl 4.1;\nimport std;\nbackend default none;\nsub vcl_recv {{\n\t{call};\n}}\n", "c.vcl")
    req = HttpMessage("GET", "/", headers=Headers([("x", "a"), ("x", "b")]))
    compiled.subs["vcl_recv"](Context(method="vcl_recv", req=req, vcl=compiled))
    assert req.headers.get("x") == joined


@pytest.mark.parametrize("expr, message", FAILURES)
def test_failures_varnishd_logged(expr, message):
    with pytest.raises(VCLFailure) as info:
        value(expr)
    assert str(info.value) == message




def vtc_text(shown: str) -> str:
    """A header value as varnishtest -v shows it (bytes outside ASCII as \\xNN), as our strings hold it."""
    raw = re.sub(rb"\\x([0-9a-f]{2})", lambda m: bytes([int(m.group(1), 16)]), shown.encode())
    return raw.decode("utf-8", "surrogateescape")


@pytest.mark.skipif(VARNISHTEST is None, reason="varnishtest not installed")
def test_recorded_values_are_varnishds():
    vtc = ('varnishtest "std"\nvarnish v1 -vcl {\n\timport std;\n\tbackend default none;\n'
           "\tsub vcl_recv { return (synth(200)); }\n\tsub vcl_synth {\n" + SYNTH + "\t}\n} -start\n"
           'client c1 {\n\ttxreq -hdr "part: 0"\n\trxresp\n} -run\n')
    # each failure in a request of its own (vxid 1003, 1005, ...): the task fails with a VCL_Error
    vtc = vtc.replace("\tsub vcl_recv { return (synth(200)); }",
                      "\tsub vcl_recv {\n" + "".join(f'\t\tif (req.url == "/{i}") {{ set req.http.x = {expr}; }}\n'
                                                   for i, (expr, _) in enumerate(FAILURES, start=1))
                      + "\t\treturn (synth(200));\n\t}")
    vtc += "".join(f"client c{i + 1} {{\n\ttxreq -url /{i}\n\trxresp\n}} -run\n" for i in range(1, len(FAILURES) + 1))
    vtc += 'client c99 {\n\ttxreq -hdr "part: 1"\n\trxresp\n} -run\n'
    out = run_varnishtest(vtc, "std")
    got = {i: vtc_text(v) for i, v in re.findall(r"c(?:1|99) +rxhdr\|x(\d+): (.*?)\\r$", out, re.M)}
    assert [(expr, got.get(str(i))) for i, (expr, _) in enumerate(RECORDED)] == RECORDED
    errors = dict(re.findall(r"vsl\| +(\d+) VCL_Error +c (.*)$", out, re.M))
    assert [(expr, errors.get(str(1001 + 2 * i))) for i, (expr, _) in enumerate(FAILURES, start=1)] == FAILURES


# std on headers as they came from the wire: raw bytes (our strings hold them surrogate-escaped), and
# std.collect, which varnishd does in place: the first field keeps its place and spelling, and nothing is
# logged (no BereqUnset / BereqHeader records)
WIRE_BERESP = [("Q", "/p?b\\xff&\\x80a&~z&a~&ab&a"), ("S", "\\xe9t\\xff"), ("One", "1"), ("After", "2")]
WIRE_BEREQ = [("x-A", "1"), ("Foo", "2"), ("X-A", "3"), ("Bar", "4")]
WIRE_VCL = """
	sub vcl_backend_fetch { std.collect(bereq.http.X-a); set bereq.http.after = "1"; }
	sub vcl_backend_response {
		std.collect(beresp.http.one);
		set beresp.http.q2 = std.querysort(beresp.http.Q);
		set beresp.http.f1 = std.fnmatch("??t?", beresp.http.S);
		set beresp.http.f2 = std.fnmatch("?t?", beresp.http.S);
		set beresp.http.f3 = std.fnmatch("*", beresp.http.S);
		set beresp.http.f4 = std.fnmatch(beresp.http.S, beresp.http.S);
	}
"""
# varnishd 7.1.1: what the backend received, and the response's headers after the first four
WIRE_SENT = [("x-A", "1, 3"), ("Foo", "2"), ("Bar", "4"), ("after", "1")]
WIRE_ANSWERS = [("q2", "/p?\\x80a&ab&a~&a&b\\xff&~z"), ("f1", "false"), ("f2", "true"), ("f3", "true"), ("f4", "true")]


def test_std_on_wire_headers():
    vcl = compile_vcl("vcl 4.1;\nimport std;\nbackend default none;\n" + WIRE_VCL, "wire.vcl")
    bereq = HttpMessage("GET", "/", headers=Headers(WIRE_BEREQ))
    records: list = []
    bereq.headers.log_to(records, "BereqHeader", "BereqUnset")
    beresp = HttpMessage(status=200, headers=Headers([(k, vtc_text(v)) for k, v in WIRE_BERESP]))
    beresp.headers.log_to(records, "BerespHeader", "BerespUnset")
    logged = len(records)
    ctx = Context(method="vcl_backend_fetch", bereq=bereq, vcl=vcl)
    vcl.subs["vcl_backend_fetch"](ctx)
    assert bereq.headers.items() == WIRE_SENT
    ctx = Context(method="vcl_backend_response", bereq=bereq, beresp=beresp, vcl=vcl)
    vcl.subs["vcl_backend_response"](ctx)
    assert beresp.headers.items()[:4] == [(k, vtc_text(v)) for k, v in WIRE_BERESP]
    assert beresp.headers.items()[4:] == [(k, vtc_text(v)) for k, v in WIRE_ANSWERS]
    assert records[logged:logged + 1] == [("BereqHeader", "after: 1")]       # logging goes on after collect
    assert [tag for tag, _ in records[logged + 1:]] == ["BerespHeader"] * len(WIRE_ANSWERS)


@pytest.mark.skipif(VARNISHTEST is None, reason="varnishtest not installed")
def test_std_on_wire_headers_is_varnishds():
    resp = " ".join(f'-hdr "{k}: {v}"' for k, v in WIRE_BERESP)
    req = " ".join(f'-hdr "{k}: {v}"' for k, v in WIRE_BEREQ)
    vtc = (f'varnishtest "std wire"\nserver s1 {{\n\trxreq\n\ttxresp {resp}\n}} -start\n'
           f"varnish v1 -vcl+backend {{\n\timport std;\n{WIRE_VCL}}} -start\n"
           f"client c1 {{\n\ttxreq {req}\n\trxresp\n}} -run\n")
    out = run_varnishtest(vtc, "wire")
    sent = re.findall(r"s1 +rxhdr\|([\w-]+): (.*?)\\r$", out, re.M)
    assert [field for field in sent if field[0] in dict(WIRE_SENT)] == WIRE_SENT
    answers = re.findall(r"c1 +rxhdr\|([\w-]+): (.*?)\\r$", out, re.M)
    assert answers[:4] == WIRE_BERESP
    assert [(k, v) for k, v in answers if k in dict(WIRE_ANSWERS)] == WIRE_ANSWERS
    fetch_log = re.findall(r"vsl\| +1002 (Bereq\w+|Beresp\w+) +b (.*)$", out, re.M)
    assert [rec for rec in fetch_log if rec[0] in ("BereqUnset", "BerespUnset")] == []
    assert [rec[1] for rec in fetch_log if rec[0] == "BereqHeader"][:4] == [f"{k}: {v}" for k, v in WIRE_BEREQ]
    assert ("BereqHeader", "after: 1") in fetch_log


# std.healthy() of a backend (host, Unix socket, none) and of directors over them, as the admin health
# changes (backend.set_health): varnishd 7.1.1's answers, one row per state
HEALTH_VCL = """
	import std;
	import directors;
	backend h { .host = "127.0.0.1"; .port = "9"; }
	backend u { .path = "/tmp/nosuch.sock"; }
	backend n none;
	sub vcl_init {
		new rh = directors.round_robin();
		rh.add_backend(h);
		new ru = directors.round_robin();
		ru.add_backend(u);
		new fb = directors.fallback();
		fb.add_backend(h);
		fb.add_backend(u);
		new sh = directors.shard();
		sh.add_backend(h);
		sh.reconfigure();
	}
	sub vcl_recv { return (synth(200)); }
	sub vcl_synth {
		set resp.http.h = std.healthy(h);
		set resp.http.u = std.healthy(u);
		set resp.http.n = std.healthy(n);
		set resp.http.rh = std.healthy(rh.backend());
		set resp.http.ru = std.healthy(ru.backend());
		set resp.http.ru2 = ru.backend().resolve();
		set resp.http.fb = fb.backend().resolve();
		set resp.http.sh = std.healthy(sh.backend(resolve=LAZY));
	}
"""
HEALTH_STEPS = [((), "true true false true true u h true"),
                ((("h", "sick"),), "false true false false true u u false"),
                ((("u", "sick"), ("h", "healthy")), "true false false true false  h true")]
HEALTH_COLUMNS = ("h", "u", "n", "rh", "ru", "ru2", "fb", "sh")


def test_healthy_backends_and_directors():
    from cacheserver.backends import set_admin_health

    vcl = compile_vcl("vcl 4.1;\n" + HEALTH_VCL, "healthy.vcl")
    assert vcl.init(Context(method="vcl_init", vcl=vcl)).name == "ok"
    for changes, want in HEALTH_STEPS:
        for name, state in changes:
            set_admin_health(vcl.backends[name], state)
        req = HttpMessage("GET", "/")
        ctx = Context(method="vcl_synth", req=req, req_top=req, resp=HttpMessage(status=200), vcl=vcl)
        vcl.subs["vcl_synth"](ctx)
        assert " ".join(ctx.resp.headers.get(c) or "" for c in HEALTH_COLUMNS) == want


@pytest.mark.skipif(VARNISHTEST is None, reason="varnishtest not installed")
def test_healthy_answers_are_varnishds():
    vtc = f'varnishtest "healthy"\nvarnish v1 -vcl {{{HEALTH_VCL}}} -start\n'
    for changes, _ in HEALTH_STEPS:
        vtc += "".join(f'varnish v1 -cliok "backend.set_health {name} {state}"\n' for name, state in changes)
        vtc += "client c1 {\n\ttxreq\n\trxresp\n} -run\n"
    out = run_varnishtest(vtc, "healthy")
    values = [v for k, v in re.findall(r"c1 +rxhdr\|(\w+): (.*?)\\r$", out, re.M) if k in HEALTH_COLUMNS]
    n = len(HEALTH_COLUMNS)
    assert [" ".join(values[i:i + n]) for i in range(0, len(values), n)] == [want for _, want in HEALTH_STEPS]


make = pytest.fixture(inproc_cache_factory)

# std.ban() and std.ban_error() in one task: the last ban's error, "" when it was added (varnishd 7.1.1)
BAN_SYNTH = """
	set resp.http.x0 = std.ban_error();
	set resp.http.x1 = std.ban("obj.status == 200") + ":" + std.ban_error();
	set resp.http.x2 = std.ban("nosuch == 1") + ":" + std.ban_error();
	set resp.http.x3 = std.ban("req.url == /x") + ":" + std.ban_error();
	set resp.http.x4 = std.ban_error();
"""
BAN_ANSWERS = {"x0": "", "x1": "true:", "x2": 'false:Unknown or unsupported field "nosuch"', "x3": "true:",
               "x4": ""}
BAN_VCL = "\timport std;\n\tsub vcl_recv { return (synth(200)); }\n\tsub vcl_synth {" + BAN_SYNTH + "\t}\n"


def test_ban_and_ban_error(make):
    cache, _ = make("vcl 4.1;\nBACKEND\n" + BAN_VCL)
    status, headers, _ = cache.get("/")
    assert status == 200
    assert {k: headers.get(k) for k in BAN_ANSWERS} == BAN_ANSWERS


def test_ban_keeps_the_tasks_other_private_data():
    """std.ban()'s answer lives in std's own PRIV_TASK: another vmod's task state stays (here a
    shard.clear() in vcl_recv, which applies when the task ends: varnishd 7.1.1, test_vmod_directors)."""
    from test_vmod_directors import _ctx, _shard

    from vcl.rtlib import end_task
    from vmods import std
    from vmods.directors import _shard_backend, _shard_clear

    sh, _ = _shard(1)
    ctx = _ctx()
    _shard_clear(sh, ctx)
    std.ban(ctx, "obj.status == 999")
    end_task(ctx)
    assert _shard_backend(sh, _ctx(), by="KEY", key=1) is None


@pytest.mark.skipif(VARNISHTEST is None, reason="varnishtest not installed")
def test_ban_answers_are_varnishds():
    vtc = ('varnishtest "ban"\nvarnish v1 -vcl {\n\tbackend default none;\n' + BAN_VCL + "} -start\n"
           "client c1 {\n\ttxreq\n\trxresp\n} -run\n")
    answers = dict(re.findall(r"c1 +rxhdr\|(x\d): (.*?)\\r$", run_varnishtest(vtc, "ban"), re.M))
    assert answers == BAN_ANSWERS


def test_late_100_continue_holds_the_interim_response(make):
    """std.late_100_continue(true): no 100 Continue after vcl_recv; (false) takes it back."""
    cache, _ = make('vcl 4.1;\nimport std;\nBACKEND\nsub vcl_recv {\n std.late_100_continue(true);\n'
                    ' if (req.url == "/early") { std.late_100_continue(false); }\n return (synth(403)); }\n')
    with cache.proc.connect() as sock:
        sock.sendall(b"POST /late HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
        head, _ = read_message(sock)
    assert head.startswith(b"HTTP/1.1 403 ")
    with cache.proc.connect() as sock:
        sock.sendall(b"POST /early HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
        head, _ = read_message(sock)
    assert head == b"HTTP/1.1 100 Continue\r\n\r\n"


class _Transport:
    def __init__(self, sock) -> None:
        self.sock = sock

    def get_extra_info(self, name: str):
        return self.sock if name == "socket" else None


class _Session:
    def __init__(self, sock) -> None:
        self.transport = _Transport(sock) if sock is not None else None


@pytest.mark.parametrize("family", ["AF_INET", "AF_INET6", "AF_UNIX", None])
def test_set_ip_tos_on_the_client_socket(family):
    """IP_TOS on IPv4, IPV6_TCLASS on IPv6 (vmod_std.c); nothing on another socket or without one."""
    import socket

    vcl = compile_vcl("vcl 4.1;\nimport std;\nbackend b none;\nsub vcl_recv { std.set_ip_tos(40); }\n", "t.vcl")
    sock = socket.socket(getattr(socket, family), socket.SOCK_STREAM) if family else None
    try:
        vcl.subs["vcl_recv"](Context(method="vcl_recv", req=HttpMessage("GET", "/"), session=_Session(sock)))
        if family == "AF_INET":
            assert sock.getsockopt(socket.IPPROTO_IP, socket.IP_TOS) == 40
        elif family == "AF_INET6":
            assert sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_TCLASS) == 40
            assert sock.getsockopt(socket.IPPROTO_IP, socket.IP_TOS) == 0
    finally:
        if sock is not None:
            sock.close()


def test_timestamp_records(monkeypatch):
    """std.timestamp(LABEL): "LABEL: now since-the-task's-start since-the-last-timestamp"; "" logs nothing."""
    from vmods import std

    clock = iter([1000.5, 1002.25, 1003.0])
    monkeypatch.setattr(std, "_time", type("Clock", (), {"time": staticmethod(lambda: next(clock))}))
    vcl = compile_vcl('vcl 4.1;\nimport std;\nbackend b none;\nsub vcl_recv { std.timestamp("a"); '
                      'std.timestamp(""); std.timestamp("b"); }\nsub vcl_backend_fetch { std.timestamp("c"); }\n',
                      "ts.vcl")
    ctx = Context(method="vcl_recv", req=HttpMessage("GET", "/"), vcl=vcl, req_time=1000.0)
    ctx.log = []
    vcl.subs["vcl_recv"](ctx)
    assert ctx.log == [("Timestamp", "a: 1000.500000 0.500000 0.500000"),
                       ("Timestamp", "b: 1002.250000 2.250000 1.750000")]
    ctx = Context(method="vcl_backend_fetch", bereq=HttpMessage("GET", "/"), vcl=vcl, bereq_time=1001.0)
    ctx.log = []
    vcl.subs["vcl_backend_fetch"](ctx)
    assert ctx.log == [("Timestamp", "c: 1003.000000 2.000000 2.000000")]


def test_timestamp_in_a_task_is_the_tasks_last_timestamp(make):
    """In a request, std.timestamp() is one of the task's Timestamp records (VSLb_ts_req): the next
    one's since-the-last field counts from it."""
    cache, _ = make('vcl 4.1;\nimport std;\nBACKEND\nsub vcl_recv { std.timestamp("mark"); return (synth(200)); }\n')
    assert cache.get("/")[0] == 200

    def stamps() -> list[list[str]]:
        found = [text.split() for _, tag, text in list(cache.proc.log.records) if tag == "Timestamp"]
        at = next((i for i, f in enumerate(found) if f[0] == "mark:"), None)
        return found[at - 1:at + 2] if at is not None and len(found) > at + 1 else []

    wait_for(lambda: stamps(), what="the request's Timestamp records")
    before, mark, after = ([float(x) for x in f[1:]] for f in stamps())
    assert mark[2] == pytest.approx(mark[0] - before[0], abs=2e-6)
    assert after[2] == pytest.approx(after[0] - mark[0], abs=2e-6)


def test_fileread_keeps_the_files_bytes(tmp_path):
    """std.fileread(): the file as it is, bytes that are no UTF-8 included (a C string in varnishd)."""
    path = tmp_path / "f.txt"
    path.write_bytes(b"a\xffb\xc3\xa9")
    vcl = compile_vcl(f'vcl 4.1;\nimport std;\nbackend b none;\nsub vcl_recv {{ set req.http.x = std.fileread("{path}"); }}\n',
                      "f.vcl")
    req = HttpMessage("GET", "/")
    vcl.subs["vcl_recv"](Context(method="vcl_recv", req=req, vcl=vcl))
    assert req.headers.get("x").encode("utf-8", "surrogateescape") == b"a\xffb\xc3\xa9"


def test_syslog_passes_priority_and_text(monkeypatch):
    """std.syslog(priority, s): syslog(3) with that priority (LOG_USER|LOG_NOTICE = 13 here) and text."""
    from vmods import std

    sent = []
    monkeypatch.setattr(std._syslog, "syslog", lambda *args: sent.append(args))
    vcl = compile_vcl('vcl 4.1;\nimport std;\nbackend b none;\nsub vcl_recv { std.syslog(13, "a" + req.url); }\n',
                      "s.vcl")
    vcl.subs["vcl_recv"](Context(method="vcl_recv", req=HttpMessage("GET", "/x"), vcl=vcl))
    assert sent == [(13, "a/x")]


SYNTAX_40 = ("\timport std;\n\tbackend default none;\n\tsub vcl_recv { return (synth(200)); }\n"
             "\tsub vcl_synth { set resp.http.a = std.syntax(4.0) + \":\" + std.syntax(4.1) + \":\" + std.syntax(3.9); }\n")


def test_syntax_in_a_vcl_40():
    """std.syntax() compares with the VCL file's version: 4.1 is more than a `vcl 4.0;` file has."""
    vcl = compile_vcl("vcl 4.0;\n" + SYNTAX_40, "s40.vcl")
    req = HttpMessage("GET", "/")
    ctx = Context(method="vcl_synth", req=req, req_top=req, resp=HttpMessage(status=200), vcl=vcl)
    vcl.subs["vcl_synth"](ctx)
    assert ctx.resp.headers.get("a") == "true:false:true"          # varnishd 7.1.1


@pytest.mark.skipif(VARNISHTEST is None, reason="varnishtest not installed")
def test_syntax_in_a_vcl_40_is_varnishds():
    vtc = ('varnishtest "syntax 4.0"\nvarnish v1 -syntax 4.0 -vcl {\n' + SYNTAX_40 + "} -start\n"
           "client c1 {\n\ttxreq\n\trxresp\n\texpect resp.http.a == \"true:false:true\"\n} -run\n")
    assert re.search(r"^#    top  TEST .* passed", run_varnishtest(vtc, "syntax"), re.M)


def test_collect_of_the_cached_object_fails_the_task():
    """std.collect(obj.http.x) in vcl_hit: VCC takes it, the task fails (varnishd 7.1.1: 503, this VCL_Error)."""
    vcl = compile_vcl("vcl 4.1;\nimport std;\nbackend b none;\nsub vcl_hit { std.collect(obj.http.x); }\n", "h.vcl")
    obj = HttpMessage(status=200, headers=Headers([("x", "a"), ("x", "b")]))
    with pytest.raises(VCLFailure, match=r"^std\.collect\(\): header argument can not be used here$"):
        vcl.subs["vcl_hit"](Context(method="vcl_hit", req=HttpMessage("GET", "/"), obj=obj, vcl=vcl))
    req = HttpMessage("GET", "/", headers=Headers([("x", "a"), ("x", "b")]))
    vcl = compile_vcl("vcl 4.1;\nimport std;\nbackend b none;\nsub vcl_hit { std.collect(req.http.x); }\n", "h.vcl")
    vcl.subs["vcl_hit"](Context(method="vcl_hit", req=req, obj=obj, vcl=vcl))
    assert req.headers.items() == [("x", "a, b")] and obj.headers.items() == [("x", "a"), ("x", "b")]


@pytest.mark.skipif(VARNISHTEST is None, reason="varnishtest not installed")
def test_collect_of_the_cached_object_is_varnishds():
    vtc = ('varnishtest "collect obj"\nserver s1 {\n\trxreq\n\ttxresp -hdr "x: a" -hdr "x: b"\n} -start\n'
           "varnish v1 -vcl+backend {\n\timport std;\n\tsub vcl_hit { std.collect(obj.http.x); }\n} -start\n"
           "client c1 {\n\ttxreq\n\trxresp\n\ttxreq\n\trxresp\n\texpect resp.status == 503\n} -run\n")
    out = run_varnishtest(vtc, "cobj")
    assert re.findall(r"vsl\| +\d+ VCL_Error +c (.*)$", out, re.M) == ["std.collect(): header argument can not be used here"]


def test_fnmatch_leaves_the_threads_locale_as_it_was():
    """std.fnmatch switches the thread to the C locale for the match only (uselocale(NULL) reads it)."""
    from vmods import std

    before = std._libc.uselocale(None)
    assert std.fnmatch(None, "?", "\u00e9", True, False, False) is False
    assert std._libc.uselocale(None) == before


BLOBREAD_VCL = ("\timport std;\n\timport blob;\n\tbackend default none;\n\tsub vcl_recv { return (synth(200)); }\n"
                "\tsub vcl_synth {\n"
                '\t\tif (req.url == "/a") { set resp.http.a = blob.encode(blob=std.blobread("/nonexistent/x")); }\n'
                '\t\tif (req.url == "/b") { set resp.http.b = blob.encode(blob=std.blobread(req.http.unset)); }\n\t}\n')


@pytest.mark.parametrize("url, name", [("/a", "a"), ("/b", "b")])
def test_blobread_without_a_file_is_an_empty_blob(url, name):
    """No file, or no file name: no blob, and the task goes on (varnishd 7.1.1: an empty header, 200)."""
    vcl = compile_vcl("vcl 4.1;\n" + BLOBREAD_VCL, "br.vcl")
    req = HttpMessage("GET", url)
    ctx = Context(method="vcl_synth", req=req, req_top=req, resp=HttpMessage(status=200), vcl=vcl)
    vcl.subs["vcl_synth"](ctx)
    assert ctx.resp.headers.get(name) == ""


@pytest.mark.skipif(VARNISHTEST is None, reason="varnishtest not installed")
def test_blobread_without_a_file_is_varnishds():
    vtc = ('varnishtest "blobread"\nvarnish v1 -vcl {\n' + BLOBREAD_VCL + "} -start\n"
           'client c1 {\n\ttxreq -url /a\n\trxresp\n\texpect resp.status == 200\n\texpect resp.http.a == ""\n} -run\n'
           'client c2 {\n\ttxreq -url /b\n\trxresp\n\texpect resp.status == 200\n\texpect resp.http.b == ""\n} -run\n')
    assert re.search(r"^#    top  TEST .* passed", run_varnishtest(vtc, "blobread"), re.M)


def test_random_stays_between_its_bounds():
    """std.random(lo, hi): a number from lo up to hi (vmod_std's docs), whatever the width."""
    from vmods import std

    for lo, hi in ((0.0, 0.5), (5.0, 9.0), (-3.0, -2.75)):
        draws = [std.random(None, lo, hi) for _ in range(200)]
        assert all(lo <= x < hi for x in draws)
        assert max(draws) - min(draws) > (hi - lo) / 2        # spread over the range, not a corner


def test_argument_helpers_build_what_they_are_given():
    """_opt and _conv run at import for the real functions (a mutation run sees them only here): an
    optional argument with its default; a conversion's argument left out is UNSET (valid_NAME false)."""
    from vmods import std

    assert [(p.name, p.type, p.default, p.optional) for p in (std._opt("sep", "STRING", ", "), std._opt("x", "INT"))] \
        == [("sep", "STRING", ", ", True), ("x", "INT", None, True)]
    p = std._conv("fallback", "REAL")
    assert (p.name, p.type, p.default, p.optional) == ("fallback", "REAL", std.UNSET, True)

