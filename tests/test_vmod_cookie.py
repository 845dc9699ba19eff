"""vmod cookie: every function, with the answers varnishd 7.1.1 gave for the same VCL."""

from __future__ import annotations

import pytest

from vcl.compiler import compile_vcl
from vcl.errors import VCLError
from vcl.runtime import Context, HttpMessage

SYNTH = """vcl 4.1;
import cookie;
import std;
backend b none;
sub vcl_recv { return (synth(200)); }
sub vcl_synth {
%s
}
"""


def run_synth(body: str, headers: dict[str, str] | None = None) -> Context:
    vcl = compile_vcl(SYNTH % body, "t.vcl")
    req = HttpMessage("GET", "/")
    for k, v in (headers or {}).items():
        req.headers.set(k, v)
    ctx = Context(method="vcl_synth", req=req, req_top=req, resp=HttpMessage("GET", "/", status=200), vcl=vcl,
                  now=0.0)
    vcl.subs["vcl_synth"](ctx)
    return ctx


def test_parse_filter_keep_and_format_as_varnishd():
    # recorded from varnishd 7.1.1 with the same VCL and request
    ctx = run_synth("""
        cookie.parse(req.http.c);
        set resp.http.s1 = cookie.get_string();
        set resp.http.g = cookie.get("a; b");
        cookie.parse("");
        set resp.http.s2 = cookie.get_string();
        cookie.set("z", "");
        cookie.set("b", "9");
        set resp.http.s3 = cookie.get_string();
        cookie.filter(" e,b ,x");
        set resp.http.s4 = cookie.get_string();
        cookie.keep_re("^[ae]");
        set resp.http.s5 = cookie.get_string();
        cookie.clean();
        set resp.http.s6 = cookie.get_string();
        set resp.http.s7 = cookie.isset("");
        set resp.http.d = cookie.format_rfc1123(std.real2time(86400, now), 1d);
    """, {"c": "a; b=1;  c=; =d; e=5;b=7; f"})
    h = ctx.resp.headers
    assert h.get("s1") == "a; b=1; e=5; b=7;"      # a name runs to the next '='
    assert h.get("g") == "1"
    assert h.get("s2") == h.get("s1")              # parsing nothing keeps the list
    assert h.get("s3") == "a; b=1; e=5; b=9;"      # set() replaces in place, ignores empty values
    assert h.get("s4") == "a; b=1; b=9;"           # "b " is not "b"
    assert h.get("s5") == "a; b=1;"
    assert h.get("s6") == "" and h.get("s7") == "false"
    assert h.get("d") == "Sat, 03 Jan 1970 00:00:00 GMT"
    assert ("Debug", "cookie: parsed 5 cookies.") in ctx.log
    assert ("Debug", "cookie: nothing to parse") in ctx.log
    assert ("Debug", "Removing cookie b (value: 9)") in ctx.log


def test_get_re_isset_delete_keep_filter_re():
    ctx = run_synth("""
        cookie.parse("foo=1; bar=2; baz=3; qux=4");
        set resp.http.re = cookie.get_re("^ba");
        set resp.http.none = cookie.get_re("^zz");
        set resp.http.isset = cookie.isset("bar");
        cookie.delete("bar");
        set resp.http.after = cookie.isset("bar");
        cookie.filter_re("^q");
        set resp.http.f = cookie.get_string();
        cookie.keep("baz,nope");
        set resp.http.k = cookie.get_string();
        set resp.http.missing = cookie.get("nope");
    """)
    h = ctx.resp.headers
    assert h.get("re") == "2" and h.get("none") == ""      # unset -> an empty header
    assert h.get("isset") == "true" and h.get("after") == "false"
    assert h.get("f") == "foo=1; baz=3;"
    assert h.get("k") == "baz=3;"
    assert h.get("missing") == ""


def test_cookies_are_per_task():
    vcl = compile_vcl(SYNTH % 'set resp.http.x = cookie.get_string(); cookie.set("a", "1");', "t.vcl")
    for _ in range(2):
        req = HttpMessage("GET", "/")
        ctx = Context(method="vcl_synth", req=req, req_top=req, resp=HttpMessage("GET", "/", status=200),
                      vcl=vcl)
        vcl.subs["vcl_synth"](ctx)
        assert ctx.resp.headers.get("x") == ""


def test_regex_arguments_must_be_constant_and_valid():
    with pytest.raises(VCLError, match="expected REGEX"):
        compile_vcl(SYNTH % "cookie.filter_re(req.url);", "t.vcl")
    with pytest.raises(VCLError, match="Regexp compilation error"):
        compile_vcl(SYNTH % 'cookie.keep_re("(");', "t.vcl")
    with pytest.raises(VCLError, match="Argument 'timedelta' missing"):
        compile_vcl(SYNTH % "set resp.http.d = cookie.format_date(now);", "t.vcl")
