"""Top-level vtc commands and the run of one test file, inside a worker process."""
from __future__ import annotations

import grp
import os
import platform
import pwd
import socket
import subprocess
import time

from .barrier import cmd_barrier
from .context import TestContext
from .entities import Client, Server
from .errors import TestFailure, TestSkip
from .http import UNSUPPORTED_SPEC
from .log import EntityLog
from .logexpect import LogExpect, cmd_logexpect
from .parse import split_commands
from .tunnel import Tunnel
from .varnish import Varnish

# Top-level commands vtest does not implement: a test using them is skipped with this reason.
UNSUPPORTED_TOP = {
    "process": "process (terminal emulation)",
    "shell": "shell commands", "haproxy": "haproxy instances", "syslog": "syslog instances",
}


def _headline(tokens: list[str]) -> str:
    """A command as the log shows it: words up to the first multi-line block, shown as "{"."""
    words: list[str] = []
    for t in tokens:
        if "\n" in t:
            words.append("{")
            break
        words.append(t)
    line = " ".join(words)
    return line if len(line) <= 70 else line[:67] + "..."


def cmd_delay(ctx: TestContext, log: EntityLog, av: list[str]) -> None:
    if len(av) != 1:
        raise TestFailure("delay takes one argument")
    try:
        secs = float(av[0])
    except ValueError as e:
        raise TestFailure(f"delay: not a number: {av[0]}") from e
    log(3, f"delaying {secs} second(s)")
    time.sleep(secs)


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False


def _group_exists(name: str) -> bool:
    try:
        grp.getgrnam(name)
        return True
    except KeyError:
        return False


def _ipv6_works() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


class Runner:
    """Executes a parsed test's top-level commands in order."""

    def __init__(self, ctx: TestContext) -> None:
        self.ctx = ctx
        self.log = ctx.top
        self.table = {
            "varnishtest": self.cmd_title, "vtest": self.cmd_title, "feature": self.cmd_feature,
            "delay": lambda av: cmd_delay(ctx, self.log, av),
            "barrier": lambda av: cmd_barrier(ctx, self.log, av),
            "server": self.cmd_server, "client": self.cmd_client, "varnish": self.cmd_varnish,
            "setenv": self.cmd_setenv, "tunnel": self.cmd_tunnel,
            "logexpect": lambda av: cmd_logexpect(ctx, self.logexpects, av),
        }
        self.logexpects: dict[str, LogExpect] = {}
        self.tunnels: dict[str, Tunnel] = {}

    # ---- pre-flight -------------------------------------------------------------
    @staticmethod
    def unsupported(text: str) -> str | None:
        """Why this script needs something vtest lacks, found without running anything."""
        for cmd in split_commands(text):
            name = cmd.tokens[0]
            if name in UNSUPPORTED_TOP:
                return f"unsupported command '{name}' ({UNSUPPORTED_TOP[name]})"
            if name in ("client", "server"):
                for tok in cmd.tokens[1:]:
                    if not tok.startswith("-"):
                        why = Runner._unsupported_spec(tok)
                        if why:
                            return why
        return None

    @staticmethod
    def _unsupported_spec(spec: str) -> str | None:
        try:
            cmds = split_commands(spec)
        except TestFailure:
            return None
        for cmd in cmds:
            name = cmd.tokens[0]
            if name in UNSUPPORTED_SPEC:
                return f"unsupported spec command '{name}' ({UNSUPPORTED_SPEC[name]})"
            if name == "loop" and len(cmd.tokens) == 3:
                why = Runner._unsupported_spec(cmd.tokens[2])
                if why:
                    return why
        return None

    # ---- execution --------------------------------------------------------------
    def run(self, text: str) -> None:
        for cmd in split_commands(text):
            self.log(2, "=== " + _headline(cmd.tokens))
            toks = [self.ctx.macros.expand(t) for t in cmd.tokens]
            name = toks[0]
            fn = self.table.get(name)
            if fn is None:
                if name in UNSUPPORTED_TOP:
                    raise TestSkip(f"unsupported command '{name}' ({UNSUPPORTED_TOP[name]})")
                raise TestFailure(f"Unknown command: \"{name}\" (line {cmd.line})")
            fn(toks[1:])
        self.end()

    def end(self) -> None:
        """End of script: wait for clients, stop servers, stop and reap every varnishd."""
        for c in list(self.ctx.clients.values()):
            if c.thread is not None:
                c.wait()
        for s in list(self.ctx.servers.values()):
            s.cancel()
        for t in list(self.tunnels.values()):
            t.cancel()
        for le in self.logexpects.values():
            le.cancelled = True          # as varnishtest: a logexpect still running is stopped
        for v in list(self.ctx.varnishes.values()):
            v.wait()

    def cmd_title(self, av: list[str]) -> None:
        if len(av) != 1:
            raise TestFailure("varnishtest/vtest takes exactly one argument")
        self.log(1, f"TEST {av[0]}")

    def cmd_setenv(self, av: list[str]) -> None:
        ifunset = av[:1] == ["-ifunset"]
        if ifunset:
            av = av[1:]
        if len(av) != 2:
            raise TestFailure("setenv takes NAME VALUE")
        if not (ifunset and av[0] in os.environ):
            os.environ[av[0]] = av[1]

    def cmd_feature(self, av: list[str]) -> None:
        i = 0
        while i < len(av):
            feat = av[i]
            neg = feat.startswith("!")
            name = feat[1:] if neg else feat
            if name == "cmd":
                if i + 1 >= len(av):
                    raise TestFailure("feature cmd needs a command line")
                line = av[i + 1]
                have = subprocess.run(["/bin/sh", "-c", line], capture_output=True).returncode == 0
                i += 2
                what = f"cmd {line}"
            else:
                i += 1
                what = name
                if name == "ignore_unknown_macro":
                    self.ctx.macros.ignore_unknown = True
                    continue
                have = self._have(name)
            if have == neg:
                raise TestSkip(f"feature {'!' if neg else ''}{what} {'present' if neg else 'not available'}")
            self.log(2, f"feature {feat} ok")

    def _have(self, name: str) -> bool:
        checks = {
            "64bit": lambda: platform.architecture()[0] == "64bit",
            "ipv4": lambda: True,
            "ipv6": _ipv6_works,
            "dns": lambda: False,  # no network beyond loopback here
            "topbuild": lambda: False,
            "root": lambda: os.geteuid() == 0,
            "user_varnish": lambda: _user_exists("varnish"),
            "user_vcache": lambda: _user_exists("vcache"),
            "group_varnish": lambda: _group_exists("varnish"),
            "persistent_storage": lambda: False,
            "coverage": lambda: False, "asan": lambda: False, "msan": lambda: False,
            "tsan": lambda: False, "ubsan": lambda: False, "sanitizer": lambda: False,
            "workspace_emulator": lambda: False, "SO_RCVTIMEO_WORKS": lambda: True,
            "disable_aslr": lambda: False,
        }
        fn = checks.get(name)
        if fn is None:
            raise TestFailure(f"FAIL test, unknown feature: {name}")
        return fn()

    # ---- entities -----------------------------------------------------------------
    def cmd_server(self, av: list[str]) -> None:
        if not av:
            raise TestFailure("server: missing name")
        s = self.ctx.servers.get(av[0])
        if s is None:
            s = self.ctx.servers[av[0]] = Server(self.ctx, av[0])
        i = 1
        while i < len(av):
            a = av[i]
            if a == "-wait":
                if s.thread is None:
                    raise TestFailure(f"Server {s.name} not -started")
                s.wait()
                i += 1
                continue
            if a == "-break":
                s.break_()
                i += 1
                continue
            # Changing a running server first waits for it, as varnishtest does.
            if s.thread is not None:
                s.wait()
            if a == "-repeat":
                s.repeat = int(self._arg(av, i))
                i += 2
            elif a == "-keepalive":
                s.keepalive = True
                i += 1
            elif a == "-listen":
                if s.lsock is not None:
                    s.lsock.close()
                    s.lsock = None
                s.listen_spec = self._arg(av, i)
                i += 2
            elif a == "-dispatch":
                s.dispatch = True
                s.start()
                i += 1
            elif a == "-start":
                s.start()
                i += 1
            elif a.startswith("-"):
                raise TestFailure(f"Unknown server argument: {a}")
            else:
                s.spec = a
                i += 1
        # varnishtest binds a server when it is declared, so -vcl+backend can name it before -start.
        s.bind()

    def cmd_client(self, av: list[str]) -> None:
        if not av:
            raise TestFailure("client: missing name")
        c = self.ctx.clients.get(av[0])
        if c is None:
            c = self.ctx.clients[av[0]] = Client(self.ctx, av[0])
        i = 1
        while i < len(av):
            a = av[i]
            if a == "-wait":
                c.wait()
                i += 1
                continue
            if c.thread is not None:
                c.wait()
            if a == "-connect":
                c.connect_spec = self._arg(av, i)
                i += 2
            elif a == "-repeat":
                c.repeat = int(self._arg(av, i))
                i += 2
            elif a == "-keepalive":
                c.keepalive = True
                i += 1
            elif a in ("-proxy1", "-proxy2"):
                c.proxy = (int(a[-1]), self._arg(av, i))
                i += 2
            elif a == "-start":
                c.start()
                i += 1
            elif a == "-run":
                c.start()
                c.wait()
                i += 1
            elif a.startswith("-"):
                raise TestFailure(f"Unknown client argument: {a}")
            else:
                c.spec = a
                i += 1

    def cmd_tunnel(self, av: list[str]) -> None:
        if not av:
            raise TestFailure("tunnel: missing name")
        t = self.tunnels.get(av[0])
        if t is None:
            t = self.tunnels[av[0]] = Tunnel(self.ctx, av[0])
        i = 1
        while i < len(av):
            a = av[i]
            if a == "-wait":
                t.wait()
                i += 1
                continue
            if t.thread is not None:
                t.wait()
            if a == "-connect":
                t.connect_spec = self._arg(av, i)
                i += 2
            elif a == "-listen":
                t.listen_spec = self._arg(av, i)
                i += 2
            elif a in ("-start", "-start+pause"):
                t.start(paused=a == "-start+pause")
                i += 1
            elif a.startswith("-"):
                raise TestFailure(f"Unknown tunnel argument: {a}")
            else:
                t.spec = a
                i += 1

    def cmd_varnish(self, av: list[str]) -> None:
        if not av:
            raise TestFailure("varnish: missing name")
        v = self.ctx.varnishes.get(av[0])
        if v is None:
            v = self.ctx.varnishes[av[0]] = Varnish(self.ctx, av[0])
        v.syntax = 4.1  # -syntax applies to the command line it appears on
        v.command(av[1:])

    @staticmethod
    def _arg(av: list[str], i: int) -> str:
        if i + 1 >= len(av):
            raise TestFailure(f"Missing argument to {av[i]}")
        return av[i + 1]
