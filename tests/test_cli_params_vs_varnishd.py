"""param.set/param.show/param.reset of every parameter with odd values, cacheserver against a live
varnishd 7.1 (skipped without it): the same status and the same text for each command in turn.

The values are those where varnishd's parsers (mgt_param_tweak.c, vnum.c) have rules of their own:
digit limits, strtoul's bases and wrap-around, 32-bit storage, empty values, trailing text, units.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import tempfile
import time

import pytest
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


def varnishd_answers(cmds: list[str]) -> list[tuple[int, str]]:
    with tempfile.TemporaryDirectory(dir="/tmp") as tmp:
        os.chmod(tmp, 0o755)
        for _ in range(3):                            # a port picked beforehand may be taken meanwhile
            probe = socket.socket()
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
            probe.close()
            proc = subprocess.Popen([VARNISHD, "-F", "-n", f"{tmp}/n", "-a", "127.0.0.1:0", "-T",
                                     f"127.0.0.1:{port}", "-S", "none", "-b", "127.0.0.1:9"],
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
