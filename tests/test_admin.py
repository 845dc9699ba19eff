"""The admin CLI against a real cacheserver Server: framing, argument splitting, auth, -T and -M, commands."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from cacheserver.admin import (
    CliSyntaxError,
    auth_response,
    format_response,
    heredoc_marker,
    split_args,
    start_admin,
)
from cacheserver.server import ListenSpec, Server

VCL = 'vcl 4.1;\nbackend s1 { .host = "127.0.0.1"; .port = "9"; }\n'


# ---- pure parts ---------------------------------------------------------------------------------

def test_response_framing():
    assert format_response(200, "PONG") == b"200 4       \nPONG\n"
    assert format_response(107, "") == b"107 0       \n\n"
    assert len(format_response(500, "x")[:13]) == 13


def test_auth_response_is_the_documented_sha256():
    challenge, secret = "a" * 32, b"secret\n"
    want = hashlib.sha256(challenge.encode() + b"\n" + secret + challenge.encode() + b"\n").hexdigest()
    assert auth_response(challenge, secret) == want


@pytest.mark.parametrize("line,want", [
    ("vcl.use  boot ", ["vcl.use", "boot"]),
    ('vcl.inline x "vcl 4.1; backend b { .host = \\"h\\"; }"', ["vcl.inline", "x", 'vcl 4.1; backend b { .host = "h"; }']),
    (r'ban req.http.x ~ "a\tb\x41\101"', ["ban", "req.http.x", "~", "a\tbAA"]),
    (r"param.set a\x20b", ["param.set", "a b"]),
    ("", []),
])
def test_split_args(line, want):
    assert split_args(line) == want


@pytest.mark.parametrize("line", ['vcl.inline x "unterminated', 'a "b"c', r"a \q", r"a\ b"])
def test_split_args_errors(line):
    with pytest.raises(CliSyntaxError):
        split_args(line)


def test_heredoc_marker():
    assert heredoc_marker("vcl.inline v1 << EOF") == ("vcl.inline v1 ", "EOF")
    assert heredoc_marker("vcl.inline v1 << %XJEIFLH|)Xspa8P") == ("vcl.inline v1 ", "%XJEIFLH|)Xspa8P")
    assert heredoc_marker("vcl.inline v1 x<< EOF") is None
    assert heredoc_marker("ban req.url ~ a") is None


# ---- a real server with the CLI on a socket ----------------------------------------------------------

class Cli:
    """A varnishadm-like client."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    async def result(self) -> tuple[int, str]:
        head = await asyncio.wait_for(self.reader.readexactly(13), 10)
        status, length = int(head[:3]), int(head[4:12])
        body = await self.reader.readexactly(length + 1)
        assert body.endswith(b"\n")
        return status, body[:-1].decode()

    async def ask(self, line: str) -> tuple[int, str]:
        self.writer.write(line.encode() + b"\n")
        await self.writer.drain()
        return await self.result()

    async def login(self, secret: bytes) -> None:
        status, challenge = await self.result()
        assert status == 107
        status, banner = await self.ask("auth " + auth_response(challenge[:32], secret))
        assert status == 200 and "Varnish Cache CLI 1.0" in banner


def make_server(tmp_path: Path) -> Server:
    server = Server(work_dir=tmp_path)
    server.listen_specs = [ListenSpec.parse("127.0.0.1:0", 0)]
    server.vcl_load("boot", VCL, "<boot>")
    return server


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 60))


@pytest.fixture
def secret_file(tmp_path: Path) -> Path:
    p = tmp_path / "secret"
    p.write_bytes(b"s3cr3t\n")
    return p


async def _session(tmp_path: Path, secret_file: Path, body) -> None:
    server = make_server(tmp_path)
    addrs = await start_admin(server, listen="127.0.0.1:0", connect=None, secret_file=str(secret_file))
    host, port = addrs[0].split()
    cli = Cli(*await asyncio.open_connection(host, int(port)))
    await cli.login(secret_file.read_bytes())
    try:
        await body(server, cli)
    finally:
        cli.writer.close()
        server._admin_server.close()
        await server.close()


def test_commands_need_auth_and_a_wrong_answer_is_refused(tmp_path, secret_file):
    async def body() -> None:
        server = make_server(tmp_path)
        addrs = await start_admin(server, listen="127.0.0.1:0", connect=None, secret_file=str(secret_file))
        host, port = addrs[0].split()
        # as varnishd 7.1: before auth, a refused request or a wrong answer is answered, then closed
        for line, want in (("status", 101), ("auth " + "0" * 64, 500), ("quit", 500)):
            cli = Cli(*await asyncio.open_connection(host, int(port)))
            status, challenge = await cli.result()
            assert status == 107 and len(challenge.split("\n")[0]) == 32
            assert (await cli.ask(line))[0] == want
            assert await asyncio.wait_for(cli.reader.read(), 10) == b""
            cli.writer.close()
        server._admin_server.close()
        await server.close()
    run(body())


def test_start_stop_status_and_listen_address(tmp_path, secret_file):
    async def body(server: Server, cli: Cli) -> None:
        assert await cli.ask("status") == (200, "Child in state stopped")
        assert (await cli.ask("stop"))[0] == 300
        assert (await cli.ask("start"))[0] == 200
        assert await cli.ask("status") == (200, "Child in state running")
        assert (await cli.ask("start"))[0] == 300
        status, text = await cli.ask("debug.listen_address")
        name, host, port = text.split()
        assert (status, name, host) == (200, "a0", "127.0.0.1")
        with socket.create_connection((host, int(port)), timeout=5):
            pass
        status, text = await cli.ask("status -j")
        assert json.loads(text)[3] == "running"
        assert (await cli.ask("stop"))[0] == 200
        assert not server.running
    run(_session(tmp_path, secret_file, body))


def test_vcl_commands_with_heredoc_and_quoted_inline(tmp_path, secret_file):
    async def body(server: Server, cli: Cli) -> None:
        assert await cli.ask("vcl.list") == (200, "active   auto    warm         -    boot\n")  # stopped: "-"
        cli.writer.write(b"vcl.inline v2 << EOF\nvcl 4.1;\nbackend b { .host = \"127.0.0.1\"; }\nEOF\n")
        assert (await cli.result())[0] == 200
        assert "v2" in server.vcls
        status, _ = await cli.ask('vcl.inline v3 "vcl 4.1; backend b { .host = \\"127.0.0.1\\"; }"')
        assert status == 200
        status, text = await cli.ask("vcl.inline bad \"vcl 4.1; backend b { .hst = 1; }\"")
        assert status == 106 and "VCL compilation failed" in text
        assert await cli.ask("vcl.use v2") == (200, "VCL 'v2' now active")
        assert server.active_name == "v2"
        status, listing = await cli.ask("vcl.list")
        assert status == 200 and any(line.startswith("active") and line.endswith("v2")
                                     for line in listing.splitlines())
        assert json.loads((await cli.ask("vcl.list -j"))[1])[3]["name"] == "boot"
        assert (await cli.ask("vcl.show v2"))[1].startswith("vcl 4.1;")
        assert (await cli.ask("vcl.discard v2"))[0] == 300
        assert (await cli.ask("vcl.discard v3"))[0] == 200
        assert "v3" not in server.vcls
        assert (await cli.ask("vcl.use v3"))[0] == 106
        assert (await cli.ask("vcl.inline 1x \"vcl 4.1; backend b none;\""))[0] == 106
        vcl_file = tmp_path / "f.vcl"
        vcl_file.write_text(VCL)
        assert (await cli.ask(f"vcl.load fromfile {vcl_file}"))[0] == 200
        assert (await cli.ask(f"vcl.load other {tmp_path}/missing.vcl"))[0] == 106
    run(_session(tmp_path, secret_file, body))


def test_params(tmp_path, secret_file):
    async def body(server: Server, cli: Cli) -> None:
        status, text = await cli.ask("param.show default_ttl")
        assert status == 200 and "Value is: 120.000 [seconds] (default)" in text
        assert (await cli.ask("param.set default_ttl 30"))[0] == 200
        assert server.params.default_ttl == 30.0
        assert "default_ttl" in (await cli.ask("param.show changed"))[1]
        assert (await cli.ask("param.set default_ttl abc"))[0] == 106
        assert (await cli.ask("param.set nosuch 1"))[0] == 106
        assert (await cli.ask("param.set default_ttl"))[0] == 104
        assert (await cli.ask("param.show a b"))[0] == 105
        assert (await cli.ask("param.show -j -l"))[0] == 106
        assert (await cli.ask("param.reset default_ttl"))[0] == 200
        assert server.params.default_ttl == 120.0
        assert json.loads((await cli.ask("param.show -j default_ttl"))[1])[3]["name"] == "default_ttl"
        assert (await cli.ask("param.set debug +vtc_mode"))[0] == 200
        assert (await cli.ask("param.set debug +flush_head"))[0] == 200
        assert server.params.text("debug") == "+flush_head,+vtc_mode"   # varnishd: bit order
    run(_session(tmp_path, secret_file, body))


def test_backends_bans_counters_and_misc(tmp_path, secret_file):
    async def body(server: Server, cli: Cli) -> None:
        # backends and bans are the child's: unknown until it runs, as in varnishd
        assert (await cli.ask("backend.list"))[0] == 101
        assert (await cli.ask("start"))[0] == 200
        status, text = await cli.ask("backend.list")
        lines = text.splitlines()
        # the layout varnishd 7.1 prints for a backend without a probe
        assert lines[0] == "Backend name   Admin      Probe    Health     Last change"
        assert lines[1].startswith("boot.s1        healthy    0/0      healthy    ") and lines[1].endswith("GMT")
        assert (await cli.ask("backend.set_health s1 sick"))[0] == 200
        assert "sick" in (await cli.ask("backend.list s1"))[1]
        assert (await cli.ask("backend.set_health nope sick"))[0] == 106
        assert (await cli.ask("backend.set_health s1 bogus"))[0] == 106
        assert (await cli.ask("ban req.url ~ ^/x"))[0] == 200
        assert "req.url ~ ^/x" in (await cli.ask("ban.list"))[1]
        assert (await cli.ask("ban req.url"))[0] == 104
        assert (await cli.ask("ban nosuch ~ x"))[0] == 106
        status, text = await cli.ask("counters.list")
        counters = dict(line.split() for line in text.splitlines())
        # the initial ban counts as added, as in varnishd
        assert status == 200 and counters["MAIN.bans_added"] == "2"
        assert (await cli.ask("counters.list bans_added"))[1] == "MAIN.bans_added 2\n"
        assert (await cli.ask("ping"))[1].startswith("PONG ")
        assert (await cli.ask("no.such"))[0] == 101
        assert (await cli.ask("vcl.use"))[0] == 104
        assert (await cli.ask("vcl.use a b"))[0] == 105
        assert (await cli.ask('vcl.use "unterminated'))[0] == 100
        assert (await cli.ask("panic.show"))[0] == 300
        assert "storage.Transient" in (await cli.ask("storage.list"))[1]
        assert (await cli.ask("debug.xid 999"))[0] == 200
        assert server.next_xid() == 1000
        assert "vcl.inline" in (await cli.ask("help"))[1]
        assert (await cli.ask("quit"))[0] == 500
    run(_session(tmp_path, secret_file, body))


def test_connect_mode_and_generated_secret(tmp_path):
    """-M: the server connects out; without -S a WORKDIR/_.secret is made, as varnishd does."""
    async def body() -> None:
        accepted: asyncio.Queue = asyncio.Queue()

        async def on_conn(reader, writer) -> None:
            await accepted.put((reader, writer))
        lsrv = await asyncio.start_server(on_conn, "127.0.0.1", 0)
        port = lsrv.sockets[0].getsockname()[1]
        server = make_server(tmp_path)
        await start_admin(server, listen=None, connect=f"127.0.0.1 {port}", secret_file=None)
        cli = Cli(*await asyncio.wait_for(accepted.get(), 10))
        await cli.login((tmp_path / "_.secret").read_bytes())
        assert await cli.ask("status") == (200, "Child in state stopped")
        cli.writer.close()
        lsrv.close()
        await server.close()
    run(body())


def test_stdin_session_answers_and_ends_on_eof(tmp_path):
    """varnishd -d: CLI on stdin/stdout; closing stdin calls the callback (main.py stops there)."""
    script = (
        "import asyncio, sys\n"
        "from pathlib import Path\n"
        "from cacheserver.admin import serve_stdin\n"
        "from cacheserver.server import ListenSpec, Server\n"
        "async def main():\n"
        f"    server = Server(work_dir=Path({str(tmp_path)!r}))\n"
        "    stop = asyncio.Event()\n"
        "    await serve_stdin(server, stop.set)\n"
        "    await asyncio.wait_for(stop.wait(), 5)\n"
        "    print('stopped', flush=True)\n"
        "asyncio.run(main())\n")
    root = Path(__file__).resolve().parent.parent
    env = dict(os.environ, PYTHONPATH=str(root) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    r = subprocess.run([sys.executable, "-c", script], input=b"ping\nstatus\nvcl.use\n", env=env,
                       capture_output=True, timeout=60)
    out = r.stdout.decode()
    assert r.returncode == 0, r.stderr.decode()
    assert out.startswith("200 ")                      # the banner, no auth on stdin
    assert "\nPONG " in out
    assert "200 22      \nChild in state stopped\n" in out
    assert "104 19      \nToo few parameters\n\n" in out
    assert out.endswith("stopped\n")


def test_vcl_labels_and_states(tmp_path, secret_file):
    async def body(server: Server, cli: Cli) -> None:
        assert (await cli.ask('vcl.inline v2 "vcl 4.1; backend b none;"'))[0] == 200
        assert (await cli.ask("vcl.label foo nosuch"))[0] == 106
        assert (await cli.ask("vcl.label foo v2"))[0] == 200
        assert (await cli.ask("vcl.label bar foo")) == (300, "VCL labels cannot point to labels")
        assert (await cli.ask("vcl.label boot v2")) == (106, "boot is not a label")
        assert (await cli.ask("vcl.state foo cold")) == (106, "Labels are always warm")
        assert (await cli.ask("vcl.state v2 cold"))[0] == 300          # labelled
        assert (await cli.ask("vcl.state boot cold"))[0] == 300        # active
        assert (await cli.ask("vcl.state boot hot"))[0] == 106
        assert (await cli.ask("vcl.state boot warm"))[0] == 200
        assert (await cli.ask("vcl.state boot auto"))[0] == 200
        status, text = await cli.ask("vcl.list")
        assert text.splitlines() == [
            "active      auto     warm         -    boot",
            "available   auto     warm         -    v2      <-    (1 label)",
            "available   label    warm         -    foo     ->    v2",
        ]
        assert (await cli.ask("vcl.discard v2"))[0] == 300
        assert await cli.ask("vcl.use foo") == (200, "VCL 'foo' now active")
        assert server.active_name == "v2"
        assert (await cli.ask("vcl.discard foo"))[0] == 300             # the active label
        assert (await cli.ask("vcl.label foo boot"))[0] == 200          # relabel moves the traffic
        assert server.active_name == "boot"
        assert (await cli.ask("vcl.use v2"))[0] == 200
        assert (await cli.ask("vcl.discard foo"))[0] == 200
        assert (await cli.ask("vcl.discard foo"))[0] == 106
        assert (await cli.ask("vcl.discard boot"))[0] == 200
        assert "boot" not in server.vcls
    run(_session(tmp_path, secret_file, body))


def test_backend_list_shows_directors(tmp_path, secret_file):
    async def body(server: Server, cli: Cli) -> None:
        cli.writer.write(b"vcl.inline dv << EOF\nvcl 4.1;\nimport directors;\n"
                         b"backend a { .host = \"127.0.0.1\"; .port = \"9\"; }\n"
                         b"backend b { .host = \"127.0.0.1\"; .port = \"10\"; }\n"
                         b"sub vcl_init { new rr = directors.round_robin(); rr.add_backend(a); rr.add_backend(b); }\n"
                         b"EOF\n")
        status, text = await cli.result()
        assert status == 200, text
        assert (await cli.ask("vcl.use dv"))[0] == 200
        assert (await cli.ask("start"))[0] == 200
        assert (await cli.ask("backend.set_health a sick"))[0] == 200
        lines = (await cli.ask("backend.list"))[1].splitlines()
        rr = next(line for line in lines if line.startswith("dv.rr "))
        assert rr.split()[1:4] == ["probe", "1/2", "healthy"]
        assert (await cli.ask("backend.set_health b sick"))[0] == 200
        rr = next(line for line in (await cli.ask("backend.list rr"))[1].splitlines() if line.startswith("dv.rr"))
        assert rr.split()[1:4] == ["probe", "0/2", "sick"]
    run(_session(tmp_path, secret_file, body))


def test_vcl_label_refuses_a_loop_and_vcl_jumps_need_a_label(tmp_path, secret_file):
    async def body(server: Server, cli: Cli) -> None:
        jump = 'vcl.inline {name} "vcl 4.1; backend b none; sub vcl_recv {{ return (vcl({label})); }}"'
        assert (await cli.ask(jump.format(name="early", label="nolabel")))[0] == 106   # no such label
        assert (await cli.ask('vcl.inline v3 "vcl 4.1; backend b none;"'))[0] == 200
        assert (await cli.ask("vcl.label lblA v3"))[0] == 200
        assert (await cli.ask(jump.format(name="v4", label="lblA")))[0] == 200
        assert (await cli.ask("vcl.label lblB v4"))[0] == 200
        assert (await cli.ask(jump.format(name="v5", label="lblB")))[0] == 200
        status, text = await cli.ask("vcl.label lblA v5")          # v5 -> lblB -> v4 -> lblA
        assert status == 106 and "would create a loop" in text
        assert (await cli.ask("vcl.label lblA v3"))[0] == 200       # no loop: fine

    run(_session(tmp_path, secret_file, body))
