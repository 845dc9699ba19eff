"""vmod std, called from compiled VCL (so the type descriptions are exercised too)."""

from __future__ import annotations

import time

import pytest

from vcl.compiler import compile_vcl
from vcl.errors import VCLError
from vcl.runtime import IP, Context, Headers, HttpMessage, VCLFailure

HEAD = "vcl 4.1;\nimport std;\nbackend default none;\n"


def run(stmts: str, **headers: str) -> Context:
    compiled = compile_vcl(HEAD + "sub vcl_recv {\n" + stmts + "\n}\n", "std.vcl")
    req = HttpMessage("GET", "/p?c=3&a=1&b=2", "HTTP/1.1",
                      headers=Headers([["Host", "h"]] + [[k.replace("_", "-"), v] for k, v in headers.items()]))
    ctx = Context(method="vcl_recv", req=req, client_ip=IP("192.0.2.1", 4321), hash_parts=[], req_time=time.time())
    compiled.subs["vcl_recv"](ctx)
    return ctx


def x(expr: str, **headers: str) -> str | None:
    return run(f"set req.http.x = {expr};", **headers).req.headers.get("x")


@pytest.mark.parametrize("expr, expected", [
    ('std.integer("42", 0)', "42"),
    ('std.integer(" -7 ", 0)', "-7"),
    ('std.integer("4x", 9)', "9"),
    ("std.integer(req.http.nope, 5)", "5"),
    ("std.integer(bool=true)", "1"),
    ("std.integer(real=126.42/3)", "42"),
    ("std.integer(duration=90.9s)", "90"),
    ('std.integer(bytes=std.bytes("2k"))', "2048"),
    ('std.real("1.5", 0.0) * 2', "3.000"),
    ('std.real("x", 0.25)', "0.250"),
    ("std.real(integer=3)", "3.000"),
    ('std.duration("1w", 0s)', "604800.000"),
    ('std.duration("10ms", 0s)', "0.010"),
    ('std.duration("10", 1s)', "1.000"),
    ("std.duration(real=1.5)", "1.500"),
    ("std.duration(integer=10)", "10.000"),
    ('std.bytes("10KB", 0B)', "10240"),
    ('std.bytes("1m", 0B)', "1048576"),
    ('std.bytes("512", 0B)', "512"),
    ('std.bytes("lots", 1KB)', "1024"),
    ('std.time("Sun, 06 Nov 1994 08:49:37 GMT", now)', "Sun, 06 Nov 1994 08:49:37 GMT"),
    ('std.time("Sunday, 06-Nov-94 08:49:37 GMT", now)', "Sun, 06 Nov 1994 08:49:37 GMT"),
    ('std.time("Sun Nov  6 08:49:37 1994", now)', "Sun, 06 Nov 1994 08:49:37 GMT"),
    ('std.time("1994-11-06T08:49:37", now)', "Sun, 06 Nov 1994 08:49:37 GMT"),
    ('std.time("784111777", now)', "Sun, 06 Nov 1994 08:49:37 GMT"),
    ("std.time(integer=784111777)", "Sun, 06 Nov 1994 08:49:37 GMT"),
    ('std.strftime(std.time("784111777", now), "%Y%m%dT%H%M%SZ")', "19941106T084937Z"),
    ('std.ip("10.0.0.1", "0.0.0.0")', "10.0.0.1"),
    ('std.ip("nonsense..", "0.0.0.0")', "0.0.0.0"),
    ('std.port(std.ip("10.0.0.1:8080", "0.0.0.0"))', "8080"),
    ('std.port(std.ip("[::1]:81", "0.0.0.0"))', "81"),
    ('std.port(std.ip("10.0.0.1", "0.0.0.0", p="99"))', "99"),
    ("std.port(client.ip)", "4321"),
    ('std.tolower("MiXeD")', "mixed"),
    ('std.toupper("MiXeD" + req.http.nope)', "MIXED"),
    ('std.strstr("foobar", "ob")', "obar"),
    ('std.strstr("foobar", "zz")', ""),
    ("std.querysort(req.url)", "/p?a=1&b=2&c=3"),
    ('std.querysort("/p")', "/p"),
    ('std.querysort("/p?")', "/p?"),   # varnishd keeps the '?'
    ('std.querysort("/p?b&&a")', "/p?a&b"),
    ("std.round(2.5)", "3.000"),
    ("std.round(-2.5)", "-3.000"),
    ('std.fnmatch("/foo/*", "/foo/bar")', "true"),
    ('std.fnmatch("/foo/*", "/foo/bar/baz")', "false"),
    ('std.fnmatch("/foo/*", "/foo/bar/baz", pathname=false)', "true"),
    ('std.fnmatch("/foo/[!0-9]", "/foo/a")', "true"),
    ('std.fnmatch("*", ".hidden", period=true)', "false"),
    ('std.file_exists("/")', "true"),
    ('std.file_exists("/no/such/file")', "false"),
    ("std.syntax(4.0)", "true"),
    ("std.syntax(4.2)", "false"),
])
def test_std_functions(expr, expected):
    assert x(expr) == expected


def test_random_is_in_range():
    for _ in range(20):
        value = float(x("std.random(1, 2)"))
        assert 1.0 <= value <= 2.0


def test_conversion_without_fallback_fails_the_task():
    for expr in ('std.integer("nope")', 'std.duration("10")', 'std.ip("nonsense..")', 'std.time("x")',
                 'std.bytes("-1")', 'std.real("x")'):
        with pytest.raises(VCLFailure):
            x(expr)


def test_only_one_source_argument():
    with pytest.raises(VCLFailure):
        x('std.integer(s="1", bool=true)')


def test_log_and_timestamp_go_to_the_task_log():
    ctx = run('std.log("hello " + req.url);\nstd.timestamp("mark");')
    assert ctx.log[0] == ("VCL_Log", "hello /p?c=3&a=1&b=2")
    assert ctx.log[1][0] == "Timestamp" and ctx.log[1][1].startswith("mark: ")


def test_collect_joins_repeated_headers():
    compiled = compile_vcl(HEAD + 'sub vcl_recv {\n\tstd.collect(req.http.Accept);\n'
                           '\tstd.collect(req.http.Cookie, "; ");\n}\n', "c.vcl")
    req = HttpMessage("GET", "/", headers=Headers([["Accept", "a"], ["Host", "h"], ["accept", "b"],
                                                  ["Cookie", "x=1"], ["Cookie", "y=2"]]))
    ctx = Context(method="vcl_recv", req=req, hash_parts=[])
    compiled.subs["vcl_recv"](ctx)
    assert req.headers.items() == [("Accept", "a, b"), ("Host", "h"), ("Cookie", "x=1; y=2")]


def test_fileread_reads_once(tmp_path):
    path = tmp_path / "f.txt"
    path.write_text("first\n")
    # (a header cannot hold the newline: regsub takes it off, as std_b00000 does)
    assert x(f'regsub(std.fileread("{path}"), "\\n$", "")') == "first"
    path.write_text("second\n")
    assert x(f'regsub(std.fileread("{path}"), "\\n$", "")') == "first"   # cached, as Varnish does
    assert x(f'std.fileread("{tmp_path}/missing") + "|"') == "|"


def test_getenv(monkeypatch):
    monkeypatch.setenv("VCL_TEST_ENV", "value")
    assert x('std.getenv("VCL_TEST_ENV")') == "value"
    assert x('std.getenv("VCL_TEST_ENV_UNSET") + "|"') == "|"


def test_healthy_backend_hooks():
    compiled = compile_vcl("vcl 4.1;\nimport std;\nbackend default { .host = \"127.0.0.1\"; }\n"
                           "sub vcl_recv {\n\tset req.http.h = std.healthy(req.backend_hint);\n}\n", "h.vcl")

    class Live:
        healthy = False

    ctx = Context(method="vcl_recv", req=HttpMessage("GET", "/"), backend_hint=compiled.default_backend)
    compiled.subs["vcl_recv"](ctx)
    assert ctx.req.headers.get("h") == "true"
    compiled.default_backend.live = Live()
    compiled.subs["vcl_recv"](ctx)
    assert ctx.req.headers.get("h") == "false"
    ctx.backend_hint = None
    compiled.subs["vcl_recv"](ctx)
    assert ctx.req.headers.get("h") == "false"


def test_cache_req_body_only_in_vcl_recv():
    compile_vcl(HEAD + "sub vcl_recv {\n\tif (std.cache_req_body(1KB)) {}\n}\n", "c.vcl")
    with pytest.raises(VCLError) as info:
        compile_vcl(HEAD + "sub vcl_deliver {\n\tif (std.cache_req_body(1KB)) {}\n}\n", "c.vcl")
    assert str(info.value).startswith("c.vcl:5:6: Not available in subroutine 'vcl_deliver'.")


def test_ban_reports_through_ban_error():
    compiled = compile_vcl(HEAD + 'sub vcl_recv {\n\tif (!std.ban("req.url ~ /x")) {\n'
                           '\t\tset req.http.err = std.ban_error();\n\t}\n}\n', "b.vcl")

    class Server:
        bans: list = []

        def ban(self, spec):
            self.bans.append(spec)
            return "bad" if "bad" in spec else None

    server = Server()
    ctx = Context(method="vcl_recv", req=HttpMessage("GET", "/"), server=server)
    compiled.subs["vcl_recv"](ctx)
    assert server.bans == [["req.url", "~", "/x"]] and ctx.req.headers.get("err") is None
    ctx = Context(method="vcl_recv", req=HttpMessage("GET", "/"), server=None)
    compiled.subs["vcl_recv"](ctx)
    assert ctx.req.headers.get("err") == "no server to add the ban to"


def test_rollback_and_storage_go_through_task_and_server_hooks():
    compiled = compile_vcl(HEAD + """sub vcl_recv {
	std.rollback(req);
	set req.http.free = storage.s0.free_space;
	set req.http.happy = storage.Transient.happy;
	set req.storage = storage.Transient;
	set req.http.st = req.storage;
}
""", "s.vcl")

    class Task:
        def vcl_rollback(self, message):
            message.headers.set("rolled", "1")

    class Server:
        def storage_var(self, name, field):
            return {"free_space": 1024.0, "happy": False}[field]

    task = Task()
    ctx = Context(method="vcl_recv", req=HttpMessage("GET", "/", headers=Headers([["Host", "h"]])),
                  server=Server(), task=lambda: task, hash_parts=[])
    compiled.subs["vcl_recv"](ctx)
    h = ctx.req.headers
    assert (h.get("rolled"), h.get("free"), h.get("happy"), h.get("st")) == ("1", "1024", "false", "storage.Transient")
    assert ctx.req_storage == "Transient"
    with pytest.raises(VCLFailure):
        compiled.subs["vcl_recv"](Context(method="vcl_recv", req=HttpMessage("GET", "/"), server=None))
