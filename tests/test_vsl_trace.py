"""VCL_trace: VCC's block numbering, records only from the traced subroutines, switched by vsl_mask.

The numbering (number, source, line, column) is VCC's: checked against what `varnishd -C` 7.1 put in
its VGC_ref table for the same files (recorded below, re-checked live when varnishd is installed).
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import tempfile
from pathlib import Path

import pytest

from cacheserver.admin import auth_response, start_admin
from cacheserver.server import ListenSpec, Server
from vcl.compiler import compile_vcl
from vcl.runtime import IP, Context, Headers, HttpMessage
from vcl.trace import vcc_column

VARNISHD = "/usr/sbin/varnishd"

MAIN = """vcl 4.1;
backend b { .host = "127.0.0.1"; .port = "8080"; }
sub vcl_recv {
\tinclude "INC2";
\tif (req.http.x) {}
\t{
\tset req.http.y = "1"; }
}
include "INC";
sub vcl_deliver { }
sub foo {
\tif (req.http.a) {
\t\tset req.http.b = "1";
\t} elsif (req.http.c) {
\t\treturn (pass);
\t} else {
\t\tcall bar;
\t}
}
sub bar { set req.http.w = "\u00e9"; { unset req.http.v; } }
sub vcl_miss { call foo; }
"""
INC = "sub vcl_hit {\n\treturn (deliver);\n}\n"
INC2 = '\t\tset req.http.i = "1";\n'

# varnishd -C's VGC_ref entries for the three user files (source, line, column), in order
VARNISHD_REFS = ["1.1.17", "0.5.26", "0.6.9", "0.7.9", "2.2.9", "0.10.19", "0.12.9", "0.13.17",
                 "0.15.17", "0.17.17", "0.20.11", "0.20.36", "0.21.16"]


def _files(tmp_path: Path) -> Path:
    os.chmod(tmp_path, 0o755)
    (tmp_path / "inc.vcl").write_text(INC)
    (tmp_path / "inc2.vcl").write_text(INC2)
    main = tmp_path / "main.vcl"
    main.write_text(MAIN.replace('"INC2"', f'"{tmp_path}/inc2.vcl"').replace('"INC"', f'"{tmp_path}/inc.vcl"'))
    return main


def _ours(main: Path) -> list[str]:
    compiled = compile_vcl(main.read_text(), str(main))
    compiled.set_trace(True, "v")
    return [ref.split(" ", 1)[1] for ref in compiled._trace_refs[1:]]


def test_vcc_columns_expand_tabs_and_count_bytes():
    assert vcc_column("\tset", 2) == 9
    assert vcc_column("\t\tset", 3) == 17
    assert vcc_column("\t{ set", 4) == 11
    assert vcc_column("  \tx", 4) == 9
    assert vcc_column("\u00e9x", 2) == 3


def test_numbering_is_vccs(tmp_path):
    refs = _ours(_files(tmp_path))
    assert refs[:len(VARNISHD_REFS)] == VARNISHD_REFS
    assert all(r.startswith("3.") for r in refs[len(VARNISHD_REFS):])     # the built-in VCL last


@pytest.mark.skipif(not os.access(VARNISHD, os.X_OK), reason="varnishd 7.1 not installed")
def test_numbering_matches_varnishd_live():
    # varnishd's compiler runs as its own user: the files go where it can read them
    with tempfile.TemporaryDirectory() as tmp:
        main = _files(Path(tmp))
        r = subprocess.run([VARNISHD, "-C", "-f", str(main), "-n", f"{tmp}/n"],
                           capture_output=True, text=True, timeout=60)
    out = r.stdout + r.stderr                       # -C prints the C source on stderr
    theirs = [f"{s}.{line}.{pos}" for s, line, pos in
              re.findall(r"\[\s*\d+\] = \{ (\d+),\s+\d+,\s+(\d+),\s+(\d+),", out)]
    assert theirs, out[-2000:]
    assert [r for r in theirs if not r.startswith("3.")] == VARNISHD_REFS


def _ctx(compiled) -> Context:
    ctx = Context(method="vcl_recv", vcl=compiled)
    ctx.req = HttpMessage("GET", "/", headers=Headers())
    ctx.client_ip = ctx.remote_ip = ctx.server_ip = ctx.local_ip = IP("127.0.0.1", 1)
    ctx.log = []
    return ctx


VCL = """vcl 4.1;
backend b none;
sub vcl_recv {
\tif (req.url == "/") {
\t\tset req.http.x = "1";
\t}
}
"""


def test_plain_subs_have_no_trace_cost_and_traced_ones_log_each_block():
    compiled = compile_vcl(VCL, "t.vcl")
    plain = compiled.subs["vcl_recv"]
    assert "TRACE" not in plain.__code__.co_names       # nothing to pay with tracing off
    ctx = _ctx(compiled)
    compiled.subs["vcl_recv"](ctx)
    assert not [r for r in ctx.log if r[0] == "VCL_trace"]

    compiled.set_trace(True, "vclA")
    ctx = _ctx(compiled)
    compiled.subs["vcl_recv"](ctx)
    traces = [text for tag, text in ctx.log if tag == "VCL_trace"]
    # the sub's block, the if's, the count after an if with no else (at the sub's `}`: varnishd -C)
    assert traces[:3] == ["vclA 1 0.4.9", "vclA 2 0.5.17", "vclA 3 0.7.1"]
    assert traces[3].startswith("vclA 4 1.")             # on into the built-in vcl_recv

    compiled.set_trace(False, "vclA")
    assert compiled.subs["vcl_recv"] is plain


def test_vsl_mask_switches_every_loaded_vcl(tmp_path):
    async def body() -> None:
        server = Server(work_dir=tmp_path)
        server.listen_specs = [ListenSpec.parse("127.0.0.1:0", 0)]
        server.vcl_load("boot", VCL, "<boot>")
        secret = tmp_path / "secret"
        secret.write_bytes(b"s\n")
        addrs = await start_admin(server, listen="127.0.0.1:0", connect=None, secret_file=str(secret))
        host, port = addrs[0].split()
        reader, writer = await asyncio.open_connection(host, int(port))

        async def result() -> tuple[int, str]:
            head = await asyncio.wait_for(reader.readexactly(13), 10)
            data = await reader.readexactly(int(head[4:12]) + 1)
            return int(head[:3]), data[:-1].decode()

        async def ask(line: str) -> int:
            writer.write(line.encode() + b"\n")
            return (await result())[0]

        try:
            _, challenge = await result()
            assert await ask("auth " + auth_response(challenge[:32], b"s\n")) == 200
            assert not server.vcls["boot"].traced
            assert await ask("param.set vsl_mask +VCL_trace") == 200
            assert server.vcls["boot"].traced
            server.vcl_load("later", VCL, "<later>")        # loaded while tracing: traced at once
            assert server.vcls["later"].traced
            assert "TRACE" in server.vcls["later"].subs["vcl_recv"].__code__.co_names
            assert await ask("param.set vsl_mask -VCL_trace") == 200
            assert not server.vcls["boot"].traced and not server.vcls["later"].traced
        finally:
            writer.close()
            server._admin_server.close()
            await server.close()

    asyncio.run(asyncio.wait_for(body(), 60))
