"""The admin CLI against a live varnishd 7.1 (skipped without it): the same status and the same
text for each command in turn.

- param.set/param.show/param.reset of every parameter with odd values: those where varnishd's
  parsers (mgt_param_tweak.c, vnum.c) have rules of their own (digit limits, strtoul's bases and
  wrap-around, 32-bit storage, empty values, trailing text, units).
- The other commands with wrong, missing and odd arguments, both servers started alike
  (`-b 127.0.0.1:9 -S none`), timestamps and ports masked.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time

import pytest
from serverproc import ServerProcess
from test_cli_reference import commands

from cacheserver.admin import split_args
from cacheserver.params import EXTRA, Params

VARNISHD = shutil.which("varnishd") or ("/usr/sbin/varnishd" if os.path.exists("/usr/sbin/varnishd") else None)

VALUES = ["", "abc", "-1", "0", "1", "0.5", "99999999999999", "1k", "1m", "on", "true", "10ms", "1x", "010",
          "0x10", "5 ", "2.0001k", "8192.0", "1234567890123", "1234567890123456", "-.5", ".", "unlimited"]

EXTRA_LINES = [
    "param.set default_ttl 0.1239", "param.show default_ttl", "param.set default_ttl 999999999999.9999",
    "param.show default_ttl", "param.set acceptor_sleep_decay 0.12399", "param.show acceptor_sleep_decay",
    "param.set gzip_buffer 2.001k", "param.show gzip_buffer", "param.set ban_cutoff -4294967295",
    "param.show ban_cutoff", "param.set ban_cutoff 18446744073709551616", "param.show ban_cutoff",
    "param.set pool_req 1,2,3,4", "param.show pool_req", "param.set pool_req 10,1,3", "param.set pool_req a,b,c",
    'param.set pool_req "1, 2, 3"', "param.show pool_req", "param.set pool_req 1,2,2000000",
    "param.set pool_req 1,2,-1", "param.set pool_req 1,2", "param.set debug \" \"", "param.set feature \"\"",
    "param.set vsl_mask \"\"", "param.set h2_rxbuf_storage s0", "param.show h2_rxbuf_storage",
    "param.set h2_rxbuf_storage nosuch", "param.reset h2_rxbuf_storage", "param.set thread_pool_reserve 1000",
    "param.set sigsegv_handler on", "param.reset sigsegv_handler", "param.reset cc_command",
    "param.set workspace_client 5G", "param.show workspace_client",
]


def lines() -> list[str]:
    ours = {d.name for d in EXTRA}
    out = []
    for d in Params().definitions():
        if d.name in ours:
            continue
        for value in VALUES:
            out.append(f'param.set {d.name} "{value}"' if not value or " " in value else
                       f"param.set {d.name} {value}")
            out.append(f"param.show {d.name}")
        out.append(f"param.reset {d.name}")
    return out + EXTRA_LINES


class Cli:
    """varnishd's CLI protocol without authentication (-S none): "STATUS LENGTH\\n" + body + "\\n"."""

    def __init__(self, port: int, deadline: float) -> None:
        while True:
            try:
                self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        self.file = self.sock.makefile("rb")
        self.read()                                  # the banner

    def read(self) -> tuple[int, str]:
        status, length = self.file.readline().split()
        return int(status), self.file.read(int(length) + 1)[:-1].decode()

    def ask(self, line: str) -> tuple[int, str]:
        self.sock.sendall(line.encode() + b"\n")
        return self.read()


def varnishd_answers(cmds: list[str], *args: str) -> list[tuple[int, str]]:
    with tempfile.TemporaryDirectory(dir="/tmp") as tmp:
        os.chmod(tmp, 0o755)
        for _ in range(3):                            # a port picked beforehand may be taken meanwhile
            probe = socket.socket()
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
            probe.close()
            proc = subprocess.Popen([VARNISHD, "-F", "-n", f"{tmp}/n", "-a", "127.0.0.1:0", "-T",
                                     f"127.0.0.1:{port}", "-S", "none", "-b", "127.0.0.1:9", *args],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                cli = Cli(port, time.monotonic() + 30)
                return [cli.ask(line) for line in cmds]
            except OSError:
                continue
            finally:
                proc.terminate()
                proc.wait(30)
    raise AssertionError("varnishd's CLI did not answer")


@pytest.mark.skipif(VARNISHD is None, reason="varnishd not installed")
def test_every_parameter_with_odd_values_answers_as_varnishd():
    cmds = lines()
    theirs = varnishd_answers(cmds)
    server = commands()

    async def ask_all() -> list[tuple[int, str]]:
        return [await server.execute(split_args(line)) for line in cmds]

    ours = asyncio.run(ask_all())
    differ = [(line, t, o) for line, t, o in zip(cmds, theirs, ours, strict=True) if t != o]
    assert not differ, f"{len(differ)} of {len(cmds)} differ, first: {differ[:5]}"


INLINE_B = 'vcl.inline {} "vcl 4.1; backend {} {{ .host = \\"127.0.0.1\\"; .port = \\"9\\"; }}"{}'
COMMANDS = [
    "ban", "ban req.url", "ban req.url ~", 'ban req.url ~ "["', 'ban req.url ~ "(a"', "ban req.url == /foo",
    'ban req.url == "/foo" && obj.status == 200', "ban obj.status == abc", "ban obj.status > 200",
    "ban obj.status ~ 200", "ban obj.ttl > 1x", "ban obj.ttl > 1s", "ban obj.ttl > 1", "ban obj.age < 1m",
    "ban obj.http.foo ~ bar", "ban obj.http ~ bar", "ban req.http.host === example.com", "ban nosuch == x",
    "ban req.url == x &&", "ban req.url == x && req.url", "ban req.url == x || req.url == y",
    "ban obj.status == 2.5", 'ban obj.http.x-foo != ""', 'ban req.url == "" && req.url == x',
    'ban req.url !~ "[x"', "ban.list x", "vcl.list", "vcl.list -j", "vcl.list x", "vcl.load", "vcl.load foo",
    "vcl.load foo /nonexistent", "vcl.load 1foo /nonexistent", "vcl.load foo/bar /nonexistent", "vcl.inline",
    "vcl.inline foo", INLINE_B.format("foo", "fb", ""), INLINE_B.format("foo", "fb", ""),
    INLINE_B.format("bar", "bb", " cold"), INLINE_B.format("baz", "zb", " warm"),
    INLINE_B.format("qux", "qb", " hot"), "vcl.list", "vcl.state", "vcl.state foo", "vcl.state foo hot",
    "vcl.state foo warm", "vcl.state foo cold", "vcl.state foo auto", "vcl.state foo nosuch",
    "vcl.state nosuch cold", "vcl.use", "vcl.use nosuch", "vcl.use bar", "vcl.use foo", "vcl.label",
    "vcl.label lab", "vcl.label lab foo", "vcl.label lab nosuch", "vcl.label lab2 lab", "vcl.label foo lab",
    "vcl.label 1lab foo", "vcl.list", "vcl.deps", "vcl.deps -j", "backend.list", "backend.list *",
    "backend.list *.*", "backend.list bar.*", "backend.list *.zb", "backend.list zb", "backend.list -j zb",
    "backend.list -p", "backend.list -x", "backend.set_health", "backend.set_health fb",
    "backend.set_health fb sick", "backend.set_health baz.zb sick", "backend.set_health fb nosuch",
    "backend.list *.*", "vcl.discard", "vcl.discard nosuch", "vcl.discard foo", "vcl.discard lab",
    "vcl.discard lab", "vcl.discard boot", "vcl.show", "vcl.show nosuch", "vcl.show bar x", "vcl.list",
    "storage.list", "storage.list -j", "storage.list x", "help nosuch", "help ban", "ping x y", "status",
    "status -j", "status x", "panic.show", "panic.clear", "panic.clear -z", "param.show -l default_ttl",
    "param.show changed", "param.show -j changed", "quit x", "banner x", "auth", "auth x", "start", "stop x",
    "debug.xid 5", "debug.xid", "debug.srandom", "debug.fragfetch", "debug.fragfetch 1",
]


def masked_answer(answer: tuple[int, str]) -> tuple[int, str]:
    status, text = answer
    text = re.sub(r"\b1\d{9}(\.\d+)?", "T", text)                         # epoch times
    text = re.sub(r"\w{3}, \d\d \w{3} \d{4} [\d:]{8} GMT", "DATE", text)
    return status, text


@pytest.mark.skipif(VARNISHD is None, reason="varnishd not installed")
def test_commands_with_odd_arguments_answer_as_varnishd():
    theirs = varnishd_answers(COMMANDS)
    proc = ServerProcess("-b", "127.0.0.1:9", "-T", "127.0.0.1:0", "-S", "none")
    try:
        line = proc.wait_for_output(r"Admin CLI on ")
        cli = Cli(int(line.split("Admin CLI on ")[1].split()[1]), time.monotonic() + 30)
        ours = [cli.ask(line) for line in COMMANDS]
    finally:
        proc.stop()
    differ = [(line, t, o) for line, t, o in zip(COMMANDS, map(masked_answer, theirs), map(masked_answer, ours),
                                                 strict=True) if t != o]
    assert not differ, f"{len(differ)} of {len(COMMANDS)} differ: {differ}"
