"""The client subs the server runs itself when the VCL leaves them to the built-in code (fsm.call):
which ones the compiler allows, and that the server's run hashes and logs as the compiled code does."""

from __future__ import annotations

import pytest

from cacheserver import fsm
from vcl.compiler import compile_vcl
from vcl.runtime import IP, Context, HttpMessage

BACKEND = 'vcl 4.1;\nbackend default { .host = "127.0.0.1"; .port = "9"; }\n'


@pytest.mark.parametrize("user, left", [
    ("", {"vcl_hash", "vcl_hit", "vcl_miss", "vcl_pass", "vcl_deliver"}),
    ("sub vcl_hit { }\nsub vcl_builtin_miss { }\n", {"vcl_hash", "vcl_pass", "vcl_deliver"}),
    ('sub vcl_builtin_hash { hash_data("x"); }\nsub vcl_recv { }\n', {"vcl_hit", "vcl_miss", "vcl_pass",
                                                                      "vcl_deliver"}),
])
def test_only_subs_the_user_left_alone_are_run_by_the_server(user, left):
    assert set(compile_vcl(BACKEND + user, "t.vcl").builtin_only) == left


@pytest.mark.parametrize("host", ["example.com", "", None])
def test_the_servers_vcl_hash_is_the_builtins(host):
    vcl = compile_vcl(BACKEND, "t.vcl")
    parts = []
    for run in ("compiled", "server"):
        req = HttpMessage("GET", "/a?b", "HTTP/1.1")
        if host is not None:
            req.headers.add("Host", host)
        ctx = Context(req=req, server_ip=IP("192.0.2.1", 80), hash_parts=[])
        if run == "compiled":
            assert vcl.subs["vcl_hash"](ctx).name == "lookup"
        else:
            fsm._builtin_hash(ctx)
        parts.append(ctx.hash_parts)
    assert parts[0] == parts[1]
    assert parts[1] == ["/a?b", host if host is not None else "192.0.2.1"]


def test_the_servers_run_logs_the_calls_and_returns_the_builtins_action():
    vcl = compile_vcl(BACKEND, "t.vcl")

    class Request(fsm.ClientRequest):
        def __init__(self):        # only what call() reads
            self.vcl = vcl
            self.ctx = Context(req=HttpMessage("GET", "/", "HTTP/1.1"), server_ip=IP("192.0.2.1", 80),
                               hash_parts=[])

    for sub, returned in [("vcl_hit", "deliver"), ("vcl_miss", "fetch"), ("vcl_pass", "fetch"),
                          ("vcl_deliver", "deliver"), ("vcl_hash", "lookup")]:
        request = Request()
        assert request.call(sub).name == returned == vcl.subs[sub](request.ctx).name
        assert request.ctx.method == sub
        text = "\0".join(map(" ".join, request.ctx.log))
        assert text == f"VCL_call {sub[4:].upper()}\0VCL_return {returned}"
