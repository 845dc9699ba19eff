"""`new` objects in vcl_init, their methods, director-style BACKEND objects, and vcl_init/vcl_fini."""

from __future__ import annotations

import pytest

from vcl.compiler import compile_vcl
from vcl.errors import VCLError
from vcl.runtime import Action, Context, HttpMessage
from vmods import Func, ObjectType, Param, Vmod


class RoundRobin:
    """A director: a BACKEND value the server resolves with resolve(ctx)."""

    def __init__(self, ctx, label):
        self.label = label
        self.backends = []
        self.next = 0

    def resolve(self, ctx):
        backend = self.backends[self.next % len(self.backends)]
        self.next += 1
        return backend


def make_vmod() -> Vmod:
    vmod = Vmod("dirs")

    def ctor(ctx, name="rr"):
        return RoundRobin(ctx, name)

    def add_backend(obj, ctx, backend, weight=1.0):
        obj.backends.append((backend, weight))

    def backend(obj, ctx):
        return obj

    def count(obj, ctx):
        return len(obj.backends)

    vmod.objects["round_robin"] = ObjectType(
        "round_robin",
        Func("round_robin", ctor, "INSTANCE", [Param("name", "STRING", "rr", optional=True)]),
        {
            "add_backend": Func("add_backend", add_backend, "VOID",
                                [Param("backend", "BACKEND"), Param("weight", "REAL", 1.0, optional=True)]),
            "backend": Func("backend", backend, "BACKEND", []),
            "count": Func("count", count, "INT", []),
        },
    )
    return vmod


VCL = """vcl 4.1;
import dirs;
backend a { .host = "10.0.0.1"; }
backend b { .host = "10.0.0.2"; }
sub vcl_init {
	new rr = dirs.round_robin(name = "cluster");
	rr.add_backend(a);
	rr.add_backend(b, 2);
}
sub vcl_recv {
	set req.backend_hint = rr.backend();
	set req.http.X-Dir = req.backend_hint;
	set req.http.X-Count = rr.count();
}
"""


def test_objects_are_created_in_vcl_init_and_used_later():
    compiled = compile_vcl(VCL, "o.vcl", extra_vmods={"dirs": make_vmod()})
    assert compiled.init(Context()) == Action("ok")
    rr = compiled.instances["rr"]
    assert isinstance(rr, RoundRobin) and rr.label == "cluster" and rr.vcl_name == "rr"
    assert rr.backends == [(compiled.backends["a"], 1.0), (compiled.backends["b"], 2.0)]
    ctx = Context(method="vcl_recv", req=HttpMessage("GET", "/", headers=None), hash_parts=[])
    ctx.req.headers.set("Host", "x")
    compiled.subs["vcl_recv"](ctx)
    assert ctx.backend_hint is rr
    assert ctx.req.headers.get("X-Dir") == "rr"
    assert ctx.req.headers.get("X-Count") == "2"
    assert rr.resolve(ctx) == (compiled.backends["a"], 1.0)


def test_new_outside_vcl_init_is_rejected():
    src = VCL.replace("sub vcl_recv {\n", "sub vcl_recv {\n\tnew other = dirs.round_robin();\n")
    with pytest.raises(VCLError) as info:
        compile_vcl(src, "o.vcl", extra_vmods={"dirs": make_vmod()})
    assert str(info.value).startswith("o.vcl:11:2: Not a valid action in subroutine 'vcl_recv'.")


def test_unknown_method_and_duplicate_object():
    with pytest.raises(VCLError) as info:
        compile_vcl(VCL.replace("rr.count()", "rr.nope()"), "o.vcl", extra_vmods={"dirs": make_vmod()})
    assert "Unknown property 'nope' for type dirs.round_robin" in str(info.value)     # VCC's words
    dup = VCL.replace("\trr.add_backend(a);\n", "\tnew rr = dirs.round_robin();\n\trr.add_backend(a);\n")
    with pytest.raises(VCLError) as info:
        compile_vcl(dup, "o.vcl", extra_vmods={"dirs": make_vmod()})
    assert str(info.value).startswith("o.vcl:7:6: Instance 'rr' redefined.")


def test_vcl_init_can_fail_and_fini_runs():
    src = """vcl 4.1;
backend default none;
sub vcl_init {
	if (server.identity == "bad") {
		return (fail);
	}
}
sub vcl_fini {
	return (ok);
}
"""
    compiled = compile_vcl(src, "i.vcl")
    assert compiled.init(Context(server_identity="bad")) == Action("fail")
    assert compiled.init(Context(server_identity="good")) == Action("ok")
    assert compiled.fini(Context()) == Action("ok")


def test_vcl_40_allows_writing_req_proto():
    src = 'vcl 4.0;\nbackend default none;\nsub vcl_recv {\n\tset req.proto = "HTTP/1.0";\n}\n'
    compiled = compile_vcl(src, "v.vcl")
    ctx = Context(method="vcl_recv", req=HttpMessage("GET", "/", "HTTP/1.1"), hash_parts=[])
    compiled.subs["vcl_recv"](ctx)
    assert ctx.req.proto == "HTTP/1.0"
    with pytest.raises(VCLError):
        compile_vcl(src.replace("vcl 4.0;", "vcl 4.1;"), "v.vcl")


def test_resolve_backend_follows_directors():
    from vcl.rtlib import resolve_backend

    compiled = compile_vcl(VCL, "o.vcl", extra_vmods={"dirs": make_vmod()})
    compiled.init(Context())
    rr = compiled.instances["rr"]
    rr.backends = [compiled.backends["b"]]
    assert resolve_backend(rr, Context()) is compiled.backends["b"]
    assert resolve_backend(compiled.backends["a"], Context()) is compiled.backends["a"]
    assert resolve_backend(None, Context()) is None
    assert compiled.version == 4.1


def test_async_vmod_function_not_allowed_in_vcl_init():
    vmod = Vmod("slow")

    @vmod.func("wait", "BOOL", [], is_async=True)
    async def wait(ctx):
        return True

    src = "vcl 4.1;\nimport slow;\nbackend default none;\nsub helper {\n\tif (slow.wait()) {}\n}\n" \
          "sub vcl_init {\n\tcall helper;\n}\n"
    with pytest.raises(VCLError) as info:
        compile_vcl(src, "a.vcl", extra_vmods={"slow": vmod})
    assert str(info.value).startswith(
        "a.vcl:5:6: Asynchronous vmod functions are not available in subroutine 'vcl_init'.")


def test_unexpected_exceptions_become_vcl_failures():
    from vcl.runtime import VCLFailure

    vmod = Vmod("buggy")

    @vmod.func("boom", "STRING", [])
    def boom(ctx):
        raise KeyError("oops")

    compiled = compile_vcl("vcl 4.1;\nimport buggy;\nbackend default none;\n"
                           "sub vcl_recv {\n\tset req.http.x = buggy.boom();\n}\n", "b.vcl",
                           extra_vmods={"buggy": vmod})
    with pytest.raises(VCLFailure, match="vcl_recv: KeyError"):
        compiled.subs["vcl_recv"](Context(method="vcl_recv", req=HttpMessage("GET", "/"), hash_parts=[]))


def test_vcl_init_runtime_failure_is_a_fail_action():
    src = 'vcl 4.1;\nimport std;\nbackend default none;\nsub vcl_init {\n\tstd.log("n=" + std.integer("x"));\n}\n'
    compiled = compile_vcl(src, "f.vcl")
    ctx = Context()
    assert compiled.init(ctx) == Action("fail")
    assert ctx.log and ctx.log[-1] == ("VCL_Error", "std.integer: conversion failed: Invalid number")   # varnishd's text
