"""Compiled VCL run on a Context: expressions, conversions, statements, subroutine calls, joining."""

from __future__ import annotations

import pytest

from vcl.compiler import compile_vcl
from vcl.errors import VCLError
from vcl.runtime import IP, Action, Context, Headers, HttpMessage, VCLFailure

HEAD = "vcl 4.1;\nimport std;\nbackend default none;\n"


def compile_(body: str):
    return compile_vcl(HEAD + body, "t.vcl")


def ctx_for(method: str, **extra) -> Context:
    req = HttpMessage("GET", "/path?b=2&a=1", "HTTP/1.1",
                      headers=Headers([["Host", "example.com"], ["X-In", "42"]]))
    ctx = Context(method=method, req=req, req_top=req, client_ip=IP("10.1.2.4", 5555),
                  server_ip=IP("127.0.0.1", 80), remote_ip=IP("10.1.2.4", 5555), local_ip=IP("127.0.0.1", 80),
                  xid=1001, hash_parts=[], req_time=1000.0, server_hostname="host1", server_identity="id1")
    ctx.resp = HttpMessage(status=200, reason="OK")
    ctx.bereq = HttpMessage("GET", "/b", "HTTP/1.1", headers=Headers([["Host", "example.com"]]))
    ctx.beresp = HttpMessage(status=200, reason="OK", headers=Headers([["Cache-Control", "max-age=60"]]))
    ctx.beresp_ttl = 60.0
    ctx.beresp_grace = 10.0
    ctx.beresp_keep = 0.0
    ctx.obj_hits = 3
    for k, v in extra.items():
        setattr(ctx, k, v)
    return ctx


def deliver_headers(body: str, **extra) -> tuple[Action, Headers]:
    """Run `body` in vcl_deliver and return the action and resp headers."""
    compiled = compile_("sub vcl_deliver {\n" + body + "\n}\n")
    ctx = ctx_for("vcl_deliver", **extra)
    action = compiled.subs["vcl_deliver"](ctx)
    return action, ctx.resp.headers


def h(body: str, name: str = "x", **extra) -> str | None:
    return deliver_headers(body, **extra)[1].get(name)


# ------------------------------------------------------------------ conversions to string

@pytest.mark.parametrize("expr, expected", [
    ('"a" + "b"', "ab"),
    ("1 + 2", "3"),
    ("1.5 + 2", "3.500"),
    ("3 / 2", "1"),
    ("-3 / 2", "-1"),
    ("7 % 3", "1"),
    ("1.0 * 3", "3.000"),
    ("10s", "10.000"),
    ("1m + 30s", "90.000"),
    ("1.5h", "5400.000"),
    ("100ms", "0.100"),
    ("true", "true"),
    ("1 == 1", "true"),
    ("1 > 2", "false"),
    ('"x" + 1 + 2', "x12"),
    ("1 + \"a\"", "1a"),
    ("req.http.nope", ""),
    ('req.http.nope + "x"', "x"),
    ("req.http.X-In", "42"),
    ("req.http.x-in", "42"),
    ("client.ip", "10.1.2.4"),
    ("obj.hits", "3"),
    ("std.port(client.ip)", "5555"),
    ("req.xid", "1001"),
    ('regsub("abc", "(b)", "[\\1\\0]")', "a[bb]c"),
    ('regsuball("a.b.c", "\\.", "-")', "a-b-c"),
    ('regsub("abc", "x", "y")', "abc"),
    ('regsub(req.http.nope, "^$", "empty")', "empty"),
    ('regsub("Host:80", ":[0-9]+$", "")', "Host"),
    ("{\"long \"quoted\" string\"}", 'long "quoted" string'),
    ('"""triple "x" """', 'triple "x" '),
    ("std.tolower(\"AbC\") + std.toupper(\"d\")", "abcD"),
    ("req.url.lower()", "/path?b=2&a=1"),
    ('"A" + req.http.Host.upper()', "AEXAMPLE.COM"),
    ("server.hostname + \"/\" + server.identity", "host1/id1"),
    ("1000000", "1000000"),
    ("-5", "-5"),
    ("2 * -3", "-6"),
    ("(1 + 2) * 3", "9"),
    ("1 + 2 * 3", "7"),
    ("now - now", "0.000"),
])
def test_expressions_in_string_context(expr, expected):
    assert h(f"set resp.http.x = {expr};") == expected


def test_time_converts_to_http_date():
    value = h("set resp.http.x = req.time;")
    assert value == "Thu, 01 Jan 1970 00:16:40 GMT"


def test_now_is_set_once_per_subroutine_and_is_current():
    import time
    before = time.time()
    compiled = compile_("sub vcl_deliver {\nset resp.http.a = now;\nset resp.http.b = now + 1s - now;\n}\n")
    ctx = ctx_for("vcl_deliver")
    compiled.subs["vcl_deliver"](ctx)
    assert ctx.now >= before
    assert ctx.resp.headers.get("b") == "1.000"


# ------------------------------------------------------------------ conditions

@pytest.mark.parametrize("cond, expected", [
    ("req.http.X-In", True),
    ("req.http.nope", False),
    ("!req.http.nope", True),
    ('req.http.X-In == "42"', True),
    ('req.http.nope == ""', False),      # VRT_strcmp: an unset string equals nothing
    ('req.http.nope != ""', True),
    ("req.http.nope == req.http.nope2", False),
    ('req.url ~ "^/path"', True),
    ('req.url !~ "^/path"', False),
    ('req.url ~ "(?i)^/PATH"', True),
    ('req.url ~ "^(?i)/PATH"', True),
    ('req.http.nope ~ "^$"', True),
    ('req.http.host ~ "[[:upper:]]"', False),
    ("obj.hits > 2 && obj.hits < 4", True),
    ("obj.hits == 1 || obj.hits == 3", True),
    ("!(obj.hits == 3)", False),
    ("obj.hits", True),
    ("obj.ttl", False),
    ("10s > 5s", True),
    ("1.5 >= 1.5", True),
    ('"abc" < "abd"', True),
    ('req.http.nope < "a"', False),
    ("client.ip == client.ip", True),
    ('client.ip == "10.1.2.4"', True),
    ('std.ip("10.1.2.4", "0.0.0.0") == client.ip', True),
    ("req.backend_hint", False),
    ('std.strstr(req.url, "b=")', True),
    ('std.strstr(req.url, "zz")', False),
])
def test_conditions(cond, expected):
    body = f"if ({cond}) {{ set resp.http.x = \"yes\"; }} else {{ set resp.http.x = \"no\"; }}"
    assert h(body, obj_ttl=-1.0) == ("yes" if expected else "no")


@pytest.mark.parametrize("kw", ["elseif", "elsif", "elif", "else if"])
def test_all_elseif_spellings(kw):
    body = f'if (obj.hits == 1) {{ set resp.http.x = "1"; }} {kw} (obj.hits == 3) {{ set resp.http.x = "3"; }}' \
           ' else { set resp.http.x = "else"; }'
    assert h(body) == "3"


# ------------------------------------------------------------------ ACLs

ACL_VCL = HEAD + """
acl local {
	"localhost";
	"10.0.0.0"/8;
	! "10.1.2.0"/24;
	"10.1.2.3";
	"2001:db8::"/32;
	! "2001:db8:dead::"/48;
	("no-such-host.invalid");
}
sub vcl_recv {
	if (client.ip ~ local) {
		return (synth(200));
	}
	if (client.ip !~ local) {
		return (synth(403));
	}
}
"""


@pytest.mark.parametrize("addr, status", [
    ("127.0.0.1", 200), ("10.9.9.9", 200), ("10.1.2.4", 403), ("10.1.2.3", 200), ("11.0.0.1", 403),
    ("2001:db8::1", 200), ("2001:db8:dead::1", 403), ("2001:db9::1", 403), ("::ffff:10.9.9.9", 200),
])
def test_acl_most_specific_entry_wins(addr, status):
    compiled = compile_vcl(ACL_VCL, "acl.vcl")
    ctx = ctx_for("vcl_recv", client_ip=IP(addr))
    assert compiled.subs["vcl_recv"](ctx) == Action("synth", (status, ""))


# ------------------------------------------------------------------ statements

def test_set_unset_headers_and_fields():
    compiled = compile_("""
sub vcl_recv {
	set req.http.X-New = "v";
	set req.http.X-New += "w";
	unset req.http.X-In;
	set req.url = "/new";
	set req.method = "HEAD";
	set req.ttl = 5s;
	set req.ttl += 5s;
	set req.grace = 2m;
	set req.hash_always_miss = true;
	set req.http.X-Int = 7;
	set req.http.X-Copy = req.http.nope;
	set client.identity = "me";
	return (hash);
}
""")
    ctx = ctx_for("vcl_recv")
    assert compiled.subs["vcl_recv"](ctx) == Action("hash")
    assert ctx.req.headers.get("x-new") == "vw"
    assert ctx.req.headers.get("X-In") is None
    assert (ctx.req.url, ctx.req.method, ctx.req_ttl, ctx.req_grace) == ("/new", "HEAD", 10.0, 120.0)
    assert ctx.hash_always_miss is True
    assert ctx.req.headers.get("X-Int") == "7"
    assert ctx.req.headers.get("X-Copy") == ""
    assert ctx.client_identity == "me"


def test_beresp_fields_and_return_with_arguments():
    compiled = compile_("""
sub vcl_backend_response {
	set beresp.ttl = 1h;
	set beresp.grace = beresp.ttl / 2;
	set beresp.keep = 1m * 3;
	set beresp.status = 299;
	set beresp.reason = "Fine";
	set beresp.do_gzip = true;
	set beresp.http.X-TTL = beresp.ttl;
	if (bereq.url == "/b") {
		return (pass(10s));
	}
}
""")
    ctx = ctx_for("vcl_backend_response")
    assert compiled.subs["vcl_backend_response"](ctx) == Action("pass", (10.0,))
    assert (ctx.beresp_ttl, ctx.beresp_grace, ctx.beresp_keep) == (3600.0, 1800.0, 180.0)
    assert (ctx.beresp.status, ctx.beresp.reason, ctx.do_gzip) == (299, "Fine", True)
    assert ctx.beresp.headers.get("X-TTL") == "3600.000"


def test_user_sub_return_ends_the_builtin_sub_and_bare_return_does_not():
    compiled = compile_("""
sub check {
	if (req.http.X-In == "42") {
		return (synth(742, "Answer"));
	}
}
sub mark {
	set req.http.X-Mark = "1";
	return;
	set req.http.X-Mark = "2";
}
sub vcl_recv {
	call mark;
	call check;
	set req.http.X-After = "yes";
}
""")
    ctx = ctx_for("vcl_recv")
    assert compiled.subs["vcl_recv"](ctx) == Action("synth", (742, "Answer"))
    assert ctx.req.headers.get("X-Mark") == "1"
    assert ctx.req.headers.get("X-After") is None
    ctx = ctx_for("vcl_recv")
    ctx.req.headers.set("X-In", "0")
    assert compiled.subs["vcl_recv"](ctx) == Action("hash")
    assert ctx.req.headers.get("X-After") == "yes"


def test_several_definitions_are_joined_in_order_before_the_builtin():
    compiled = compile_("""
sub vcl_deliver {
	set resp.http.X-Order = "1";
}
sub vcl_deliver {
	set resp.http.X-Order += "2";
}
""")
    ctx = ctx_for("vcl_deliver")
    assert compiled.subs["vcl_deliver"](ctx) == Action("deliver")
    assert ctx.resp.headers.get("X-Order") == "12"


def test_builtin_recv_logic():
    compiled = compile_("")
    cases = [("GET", {}, "hash"), ("POST", {}, "pass"), ("FOO", {}, "pipe"), ("PRI", {}, "synth"),
             ("GET", {"Cookie": "a=b"}, "pass"), ("GET", {"Authorization": "x"}, "pass")]
    for method, headers, expected in cases:
        ctx = ctx_for("vcl_recv")
        ctx.req.method = method
        for k, v in headers.items():
            ctx.req.headers.set(k, v)
        assert compiled.subs["vcl_recv"](ctx).name == expected, (method, headers)
    ctx = ctx_for("vcl_recv")
    ctx.req.headers.unset("host")
    assert compiled.subs["vcl_recv"](ctx) == Action("synth", (400, ""))
    ctx = ctx_for("vcl_recv")
    ctx.req.headers.set("Host", "EXAMPLE.com")
    compiled.subs["vcl_recv"](ctx)
    assert ctx.req.headers.get("host") == "example.com"


def test_builtin_backend_response_marks_hit_for_miss():
    compiled = compile_("")
    for headers, ttl, uncacheable in [({}, 60.0, None), ({"Set-Cookie": "a"}, 120.0, True),
                                      ({"Cache-Control": "private"}, 120.0, True),
                                      ({"Vary": "*"}, 120.0, True),
                                      ({"Surrogate-Control": "no-store"}, 120.0, True)]:
        ctx = ctx_for("vcl_backend_response")
        ctx.beresp.headers = Headers([[k, v] for k, v in headers.items()])
        assert compiled.subs["vcl_backend_response"](ctx) == Action("deliver")
        assert (ctx.beresp_ttl, ctx.beresp_uncacheable) == (ttl, uncacheable), headers


def test_builtin_hash_and_hash_data():
    compiled = compile_("sub vcl_hash {\n\thash_data(req.http.X-In);\n\thash_data(req.http.nope);\n}\n")
    ctx = ctx_for("vcl_hash")
    assert compiled.subs["vcl_hash"](ctx) == Action("lookup")
    # an unset string still hashes: a NUL byte (varnishd's HSH_AddString(NULL)), then its separator
    assert ctx.hash_parts == ["42", "\0", "/path?b=2&a=1", "example.com"]
    ctx = ctx_for("vcl_hash")
    ctx.req.headers.unset("host")
    compiled.subs["vcl_hash"](ctx)
    assert ctx.hash_parts == ["42", "\0", "/path?b=2&a=1", "127.0.0.1"]


def test_synthetic_appends_and_resp_body_replaces():
    compiled = compile_("""
sub vcl_synth {
	synthetic("a");
	synthetic("b");
	set resp.body = "c";
	set resp.body += "d";
	synthetic("e");
	return (deliver);
}
""")
    ctx = ctx_for("vcl_synth", synth_body=[])
    assert compiled.subs["vcl_synth"](ctx) == Action("deliver")
    assert "".join(ctx.synth_body) == "cde"


def test_backend_error_synthetic_body():
    compiled = compile_("sub vcl_backend_error {\n\tsynthetic(\"down \" + beresp.status);\n"
                        "\treturn (deliver);\n}\n")
    ctx = ctx_for("vcl_backend_error", synth_body=None)
    ctx.beresp.status = 503
    assert compiled.subs["vcl_backend_error"](ctx) == Action("deliver")
    assert ctx.synth_body == ["down 503"]


def test_backend_references_and_backend_hint():
    compiled = compile_vcl("""vcl 4.1;
backend default { .host = "127.0.0.1"; .port = "8080"; }
backend other { .host = "[::1]:9090"; .connect_timeout = 1.5s; }
sub vcl_recv {
	if (req.http.X-In == "42") {
		set req.backend_hint = other;
	}
	set req.http.X-Backend = req.backend_hint;
}
sub vcl_backend_fetch {
	set bereq.backend = default;
	set bereq.http.X-B = bereq.backend;
}
""", "b.vcl")
    assert compiled.default_backend is compiled.backends["default"]
    other = compiled.backends["other"]
    assert (other.host, other.port, other.connect_timeout) == ("::1", "9090", 1.5)
    assert compiled.backends["default"].port == "8080"
    ctx = ctx_for("vcl_recv", backend_hint=compiled.default_backend)
    compiled.subs["vcl_recv"](ctx)
    assert ctx.backend_hint is other
    assert ctx.req.headers.get("X-Backend") == "other"
    ctx = ctx_for("vcl_backend_fetch")
    assert compiled.subs["vcl_backend_fetch"](ctx) == Action("fetch")
    assert ctx.bereq_backend is compiled.backends["default"]
    assert ctx.bereq.headers.get("X-B") == "default"


def test_probe_declarations():
    compiled = compile_vcl("""vcl 4.1;
probe hc { .url = "/health"; .timeout = 1s; .interval = 2s; .window = 4; .threshold = 2; }
backend default { .host = "127.0.0.1"; .probe = hc; }
backend b2 {
	.host = "127.0.0.2";
	.probe = {
		.request = "GET / HTTP/1.1" "Host: x" "Connection: close";
		.expected_response = 204;
	}
}
sub vcl_recv { set req.backend_hint = b2; }
""", "p.vcl")
    hc = compiled.probes["hc"]
    assert (hc.url, hc.timeout, hc.interval, hc.window, hc.threshold) == ("/health", 1.0, 2.0, 4, 2)
    assert compiled.backends["default"].probe is hc
    inline = compiled.backends["b2"].probe
    assert inline.request == ["GET / HTTP/1.1", "Host: x", "Connection: close"]
    assert inline.expected_response == 204


def test_runtime_errors_raise_vclfailure():
    compiled = compile_("sub vcl_deliver {\n\tset resp.http.x = std.integer(req.http.X-Bad);\n}\n")
    ctx = ctx_for("vcl_deliver")
    ctx.req.headers.set("X-Bad", "nope")
    with pytest.raises(VCLFailure):
        compiled.subs["vcl_deliver"](ctx)
    compiled = compile_("sub vcl_deliver {\n\tset resp.http.x = obj.hits / (obj.hits - 3);\n}\n")
    with pytest.raises(VCLFailure):
        compiled.subs["vcl_deliver"](ctx_for("vcl_deliver"))


def test_includes(tmp_path):
    (tmp_path / "inc").mkdir()
    (tmp_path / "inc" / "part.vcl").write_text('sub vcl_deliver {\n\tset resp.http.X-Inc = "yes";\n}\n')
    (tmp_path / "main.vcl").write_text(HEAD + 'include "part.vcl";\n')
    compiled = compile_vcl((tmp_path / "main.vcl").read_text(), str(tmp_path / "main.vcl"),
                           include_dirs=[str(tmp_path / "inc")])
    ctx = ctx_for("vcl_deliver")
    compiled.subs["vcl_deliver"](ctx)
    assert ctx.resp.headers.get("X-Inc") == "yes"


def test_generated_source_is_valid_python_that_runs_the_vcl():
    """The printed source (cacheserver -C) is Python that behaves as the compiled VCL does.

    Asserts on behaviour, not on the generated text, so that the code generator may change.
    """
    compiled = compile_('sub vcl_recv {\n\tif (req.url ~ "^/a") {\n\t\treturn (pass);\n\t}\n}\n')
    compile(compiled.python_source, "gen", "exec")
    for url, action in (("/a", "pass"), ("/abc", "pass"), ("/b/a", "hash"), ("/", "hash")):
        ctx = ctx_for("vcl_recv")
        ctx.req.url = url
        assert compiled.subs["vcl_recv"](ctx).name == action, url


def test_vcl_names_with_dashes_do_not_collide_in_python():
    compiled = compile_vcl("vcl 4.1;\nbackend default none;\n"
                           'sub foo-bar {\n\tset req.http.a = "dash";\n}\n'
                           'sub foo_bar {\n\tset req.http.b = "under";\n}\n'
                           "sub vcl_recv {\n\tcall foo-bar;\n\tcall foo_bar;\n\treturn (synth(200));\n}\n", "d.vcl")
    ctx = ctx_for("vcl_recv")
    compiled.subs["vcl_recv"](ctx)
    assert (ctx.req.headers.get("a"), ctx.req.headers.get("b")) == ("dash", "under")


def test_numbers_the_server_left_unset_read_as_zero():
    compiled = compile_("sub vcl_recv {\n\tset req.ttl += 5s;\n\tset req.http.g = req.grace;\n"
                        "\tset req.http.r = req.restarts;\n}\n")
    ctx = Context(method="vcl_recv", req=HttpMessage("GET", "/", headers=Headers([["Host", "h"]])),
                  hash_parts=[])
    compiled.subs["vcl_recv"](ctx)
    assert ctx.req_ttl == 5.0
    assert (ctx.req.headers.get("g"), ctx.req.headers.get("r")) == ("0.000", "0")


def test_include_inside_a_subroutine(tmp_path):
    (tmp_path / "recv.vcl").write_text('set req.http.X-Inc = "1";\nif (req.url == "/x") {\n'
                                       '\tinclude "deeper.vcl";\n}\n')
    (tmp_path / "deeper.vcl").write_text("return (synth(299));\n")
    main = tmp_path / "main.vcl"
    main.write_text(HEAD + 'sub vcl_recv {\n\tinclude "recv.vcl";\n\tset req.http.X-After = "1";\n}\n')
    compiled = compile_vcl(main.read_text(), str(main))
    ctx = ctx_for("vcl_recv")
    ctx.req.url = "/x"
    assert compiled.subs["vcl_recv"](ctx) == Action("synth", (299, ""))
    assert ctx.req.headers.get("X-Inc") == "1" and ctx.req.headers.get("X-After") is None


def test_recursive_include_is_an_error(tmp_path):
    (tmp_path / "loop.vcl").write_text('include "loop.vcl";\n')
    main = tmp_path / "main.vcl"
    main.write_text(HEAD + 'sub vcl_recv {\n\tinclude "loop.vcl";\n}\n')
    with pytest.raises(VCLError) as info:
        compile_vcl(main.read_text(), str(main))
    assert 'Recursive include of "loop.vcl"' in str(info.value).splitlines()[0]


def test_acl_log_flag_records_the_match():
    compiled = compile_vcl(HEAD + 'acl a +log {\n\t"10.0.0.0"/8;\n}\n'
                           "sub vcl_recv {\n\tif (client.ip ~ a) {\n\t\treturn (synth(200));\n\t}\n}\n", "l.vcl")
    ctx = ctx_for("vcl_recv")
    assert compiled.subs["vcl_recv"](ctx) == Action("synth", (200, ""))
    assert ctx.log == [("VCL_acl", 'MATCH a "10.0.0.0"/8')]    # the entry as written, as varnishd logs it
    ctx = ctx_for("vcl_recv", client_ip=IP("192.0.2.1"))
    compiled.subs["vcl_recv"](ctx)
    assert ctx.log == [("VCL_acl", "NO_MATCH a")]


def test_empty_user_definition_of_a_builtin_helper_sub():
    # Both definitions of vcl_builtin_pipe are empty: the joined Python function must still be valid.
    compiled = compile_("sub vcl_builtin_pipe {\n}\n")
    assert compiled.subs["vcl_pipe"](ctx_for("vcl_pipe")) == Action("pipe")


def test_headers_has_none_looks_at_every_field_caselessly():
    h = Headers([("Host", "a"), ("RANGE", "bytes=0-1")])
    assert not h.has_none(frozenset(("if-none-match", "range")))
    assert h.has_none(frozenset(("if-none-match", "if-modified-since")))
    h.unset("Range")
    assert h.has_none(frozenset(("range",)))
    assert Headers().has_none(frozenset(("range",)))
