"""The user's documented VCL (tcp-example.md) compiles verbatim, with exactly the expected warnings,
and behaves as written; a complete equivalent VCL compiles the same with no warnings."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest

from vcl.compiler import compile_vcl
from vcl.errors import VCLError
from vcl.runtime import IP, Action, Context, Headers, HttpMessage
from vmods import Param, Vmod

# ../shared beside the checkout (as in CI), else the workplace's copy
DOC = next((p for p in (Path(__file__).resolve().parents[2] / "shared" / "mission" / "tcp-example.md",
                        Path("/work/shared/mission/tcp-example.md")) if p.exists()),
           Path("/work/shared/mission/tcp-example.md"))

DOC_VCL = """\
sub vcl_recv {
\tif (req.url == "/tcp") {
\t\tif (tinykvm.steal("hello", req.url)) {
\t\t\treturn (synth(123));
\t\t}
\t\treturn (synth(500));
\t}
}
"""

COMPLETE_VCL = "vcl 4.1;\nimport tinykvm;\nbackend default none;\n" + DOC_VCL


def fake_tinykvm(results: dict[str, bool], calls: list) -> Vmod:
    """A tinykvm stand-in with the same description as vmods/tinykvm.py."""
    vmod = Vmod("tinykvm")

    @vmod.func("steal", "BOOL", [Param("program", "STRING"), Param("argument", "STRING", "", optional=True)],
               restrict={"vcl_recv"}, is_async=True)
    async def steal(ctx, program, argument=""):
        calls.append((ctx.method, program, argument))
        return results.get(program, False)

    return vmod


def make_ctx(url: str, host: str = "example.com") -> Context:
    req = HttpMessage("GET", url, "HTTP/1.1", headers=Headers([["Host", host]]))
    return Context(method="vcl_recv", req=req, req_top=req, server_ip=IP("127.0.0.1"), hash_parts=[])


def doc_vcl_from_markdown() -> str:
    text = DOC.read_text()
    m = re.search(r"```vcl\n(.*?)```", text, re.S)
    assert m, "the doc has a vcl block"
    return m.group(1)


@pytest.mark.skipif(not DOC.exists(), reason="mission doc not present")
def test_doc_block_is_the_tested_vcl():
    assert doc_vcl_from_markdown() == DOC_VCL


def test_doc_vcl_compiles_with_exactly_the_expected_warnings():
    compiled = compile_vcl(DOC_VCL, "tcp.vcl")
    assert compiled.warnings == [
        "tcp.vcl: no 'vcl 4.1;' line, assuming VCL 4.1",
        "tcp.vcl: no backend declared, assuming 'backend default none;'",
        "tcp.vcl: 'tinykvm' used without 'import tinykvm;', importing it",
    ]
    assert compiled.default_backend is None
    assert compiled.async_subs == {"vcl_recv"}
    assert compiled.uses == {"tinykvm"}


def test_complete_vcl_compiles_the_same_without_warnings():
    doc = compile_vcl(DOC_VCL, "tcp.vcl")
    full = compile_vcl(COMPLETE_VCL, "tcp.vcl")
    assert full.warnings == []
    assert full.async_subs == doc.async_subs
    assert full.default_backend is None and doc.default_backend is None
    assert set(full.backends) == set(doc.backends) == {"default"}
    assert set(full.subs) == set(doc.subs)


def test_every_builtin_sub_is_present_and_returns_an_action():
    compiled = compile_vcl(COMPLETE_VCL, "tcp.vcl")
    assert set(compiled.subs) == {
        "vcl_recv", "vcl_pipe", "vcl_pass", "vcl_hash", "vcl_purge", "vcl_miss", "vcl_hit", "vcl_deliver",
        "vcl_synth", "vcl_backend_fetch", "vcl_backend_response", "vcl_backend_error", "vcl_init",
        "vcl_fini"}


@pytest.mark.parametrize("program_ok, expected", [(True, Action("synth", (123, ""))),
                                                  (False, Action("synth", (500, "")))])
def test_doc_vcl_runs_steal_only_for_tcp(program_ok, expected):
    calls: list = []
    vmod = fake_tinykvm({"hello": program_ok}, calls)
    compiled = compile_vcl(DOC_VCL, "tcp.vcl", extra_vmods={"tinykvm": vmod})
    action = asyncio.run(compiled.subs["vcl_recv"](make_ctx("/tcp")))
    assert action == expected
    assert calls == [("vcl_recv", "hello", "/tcp")]


def test_doc_vcl_other_urls_fall_through_to_builtin():
    calls: list = []
    compiled = compile_vcl(DOC_VCL, "tcp.vcl", extra_vmods={"tinykvm": fake_tinykvm({}, calls)})
    assert asyncio.run(compiled.subs["vcl_recv"](make_ctx("/other"))) == Action("hash")
    ctx = make_ctx("/other")
    ctx.req.method = "POST"
    assert asyncio.run(compiled.subs["vcl_recv"](ctx)) == Action("pass")
    assert calls == []


def test_real_tinykvm_vmod_description_is_accepted():
    compiled = compile_vcl(COMPLETE_VCL, "tcp.vcl")
    assert asyncio.iscoroutinefunction(compiled.subs["vcl_recv"])
    assert not asyncio.iscoroutinefunction(compiled.subs["vcl_deliver"])


def test_restricted_function_outside_vcl_recv_is_an_error_with_position():
    src = "vcl 4.1;\nbackend default none;\nsub vcl_deliver {\n\tif (tinykvm.steal(\"hello\")) {}\n}\n"
    with pytest.raises(VCLError) as info:
        compile_vcl(src, "d.vcl", extra_vmods={"tinykvm": fake_tinykvm({}, [])})
    err = info.value
    assert (err.line, err.col) == (4, 6)
    assert "Not available in subroutine 'vcl_deliver'." in str(err)
    assert str(err).startswith("d.vcl:4:6: Not available in subroutine 'vcl_deliver'.")


def test_restricted_function_reached_through_a_sub_from_two_methods():
    src = ("vcl 4.1;\nbackend default none;\nsub steal_it {\n\tif (tinykvm.steal(\"hello\")) {}\n}\n"
           "sub vcl_recv {\n\tcall steal_it;\n}\nsub vcl_hit {\n\tcall steal_it;\n}\n")
    with pytest.raises(VCLError) as info:
        compile_vcl(src, "d.vcl", extra_vmods={"tinykvm": fake_tinykvm({}, [])})
    report = str(info.value)
    assert report.splitlines()[0] == "d.vcl:4:6: Not available in subroutine 'vcl_hit'."
    assert '...called from "vcl_hit"' in report


def test_async_propagates_through_user_subs():
    src = ("vcl 4.1;\nbackend default none;\nsub steal_it {\n\tif (tinykvm.steal(\"hello\")) {\n"
           "\t\treturn (synth(123));\n\t}\n}\nsub vcl_recv {\n\tcall steal_it;\n}\n")
    calls: list = []
    compiled = compile_vcl(src, "d.vcl", extra_vmods={"tinykvm": fake_tinykvm({"hello": True}, calls)})
    assert compiled.async_subs == {"vcl_recv"}
    assert asyncio.run(compiled.subs["vcl_recv"](make_ctx("/"))) == Action("synth", (123, ""))


def test_synth_builds_the_guru_meditation_page():
    compiled = compile_vcl(COMPLETE_VCL, "tcp.vcl")
    ctx = make_ctx("/")
    ctx.method = "vcl_synth"
    ctx.xid = 1001
    ctx.resp = HttpMessage(status=500, reason="Internal Server Error")
    ctx.synth_body = []
    assert compiled.subs["vcl_synth"](ctx) == Action("deliver")
    body = "".join(ctx.synth_body)
    assert "<title>500 Internal Server Error</title>" in body
    assert "<h3>Guru Meditation:</h3>" in body
    assert "<p>XID: 1001</p>" in body
    assert ctx.resp.headers.get("Content-Type") == "text/html; charset=utf-8"
    assert ctx.resp.headers.get("Retry-After") == "5"
