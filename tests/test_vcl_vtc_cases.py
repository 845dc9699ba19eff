"""Fixes found by running Varnish's own test cases: each test pins one behaviour those cases need."""

from __future__ import annotations

import pytest

from vcl.compiler import compile_vcl
from vcl.errors import VCLError
from vcl.runtime import Context, Headers, HttpMessage

HEAD = "vcl 4.1;\nimport std;\nbackend default none;\n"


def compile_(body: str):
    return compile_vcl(HEAD + body, "t.vcl")


def backend_ctx(method: str, **extra) -> Context:
    ctx = Context(method=method, hash_parts=[])
    ctx.bereq = HttpMessage("GET", "/", "HTTP/1.1", headers=Headers([]))
    ctx.beresp = HttpMessage(status=200, reason="OK", headers=Headers([]))
    for k, v in extra.items():
        setattr(ctx, k, v)
    return ctx


def test_beresp_was_304_reads_the_fetch_flag():
    vcl = compile_("sub vcl_backend_response { set beresp.http.w = beresp.was_304; }")
    for flag, text in ((True, "true"), (False, "false")):
        ctx = backend_ctx("vcl_backend_response", was_304=flag)
        vcl.subs["vcl_backend_response"](ctx)
        assert ctx.beresp.headers.get("w") == text


def test_return_arguments_that_are_variables_are_read_per_request():
    # Used to be hoisted into a load-time constant, which referenced ctx outside any function.
    vcl = compile_("sub vcl_deliver { return (synth(resp.status, resp.reason)); }")
    ctx = Context(method="vcl_deliver", hash_parts=[])
    ctx.resp = HttpMessage(status=500, reason="VCL", headers=Headers([]))
    action = vcl.subs["vcl_deliver"](ctx)
    assert (action.name, tuple(action.args)) == ("synth", (500, "VCL"))


def test_backend_none_takes_the_capitalised_spelling_vcc_takes():
    assert compile_vcl("vcl 4.1;\nbackend bad None;\n", "t.vcl").default_backend is None
    with pytest.raises(VCLError):
        compile_vcl("vcl 4.1;\nbackend bad NONE;\n", "t.vcl")


@pytest.mark.parametrize("const, addr, port", [
    ("1.2.3.4", "1.2.3.4", "80"),
    ("1.2.3.4:8000", "1.2.3.4", "8000"),
    ("1.2.3.4 8000", "1.2.3.4", "8000"),
    ("[::1]", "::1", "80"),
    ("[::1]:8000", "::1", "8000"),
])
def test_ip_constants_may_carry_a_port(const, addr, port):
    vcl = compile_(f'sub vcl_deliver {{ set resp.http.a = std.ip("..", "{const}");'
                   f' set resp.http.p = std.port("{const}"); }}')
    ctx = Context(method="vcl_deliver", hash_parts=[])
    ctx.resp = HttpMessage(status=200, reason="OK", headers=Headers([]))
    vcl.subs["vcl_deliver"](ctx)
    assert (ctx.resp.headers.get("a"), ctx.resp.headers.get("p")) == (addr, port)


@pytest.mark.parametrize("const", ["::1::2", "1.2.3.4::80"])
def test_bad_ip_constants_are_load_errors(const):
    with pytest.raises(VCLError, match="could not be resolved to an IP address"):
        compile_(f'sub vcl_deliver {{ set resp.http.a = std.ip("..", "{const}"); }}')


def test_stevedores_convert_to_their_symbol_and_compare_by_name():
    vcl = compile_("sub vcl_backend_response {\n set beresp.http.s = storage.s0;\n"
                   " set beresp.http.d = beresp.storage;\n"
                   " if (beresp.storage == storage.Transient) { set beresp.http.t = \"yes\"; }\n}")
    # A name built at run time (not an interned literal) still compares equal.
    ctx = backend_ctx("vcl_backend_response", beresp_storage="".join(["Trans", "ient"]))
    vcl.subs["vcl_backend_response"](ctx)
    got = [ctx.beresp.headers.get(n) for n in ("s", "d", "t")]
    assert got == ["storage.s0", "storage.Transient", "yes"]


def test_storage_symbols_come_from_the_servers_storages():
    body = "sub vcl_backend_response { set beresp.storage = storage.big; }"
    compile_vcl(HEAD + body, "t.vcl", storages=["big"])
    with pytest.raises(VCLError, match="Symbol not found: 'storage.big'"):
        compile_(body)
    with pytest.raises(VCLError, match="Symbol not found: 'storage.s0'"):
        compile_vcl(HEAD + body.replace("big", "s0"), "t.vcl", storages=["big"])
    # Transient always exists.
    compile_vcl(HEAD + body.replace("big", "Transient"), "t.vcl", storages=["big"])
