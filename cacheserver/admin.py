"""The admin CLI in Varnish's protocol (varnish-cli(7), cli_protocol): -T listen, -M connect, -S auth.

Every response is `"%-3d %-8d\\n" % (status, len(body))`, the body, then "\\n". A session with a secret
starts with a 107 challenge; `auth <sha256(challenge \\n secret challenge \\n)>` unlocks it.
Commands are those of varnishd's CLI, plus `counters.list [-j] [GLOB...]`, which prints every counter
as "NAME VALUE" lines (varnishstat's names), for tools that cannot read Varnish's shared memory
(vtest's `varnish vN -expect`).
"""

from __future__ import annotations

import asyncio
import fnmatch
import hashlib
import json
import os
import platform
import re
import secrets
import socket
import stat
import string
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Status codes (include/vcli.h).
CLIS_SYNTAX = 100
CLIS_UNKNOWN = 101
CLIS_UNIMPL = 102
CLIS_TOOFEW = 104
CLIS_TOOMANY = 105
CLIS_PARAM = 106
CLIS_AUTH = 107
CLIS_OK = 200
CLIS_TRUNCATED = 201
CLIS_CANT = 300
CLIS_COMMS = 400
CLIS_CLOSE = 500

# Input bounds. varnishd 7.1 reads at most 80 bytes of a line before authentication (enough for
# "auth" and a 64-digit answer) and, measured, no bound after it (a 40 MB line is taken). Ours after
# auth: vcl.inline carries a whole VCL on one line, so a line or a here document may be 8 MiB.
PREAUTH_MAX_LINE = 80
MAX_LINE = 8 << 20
MAX_HEREDOC = 8 << 20
READER_LIMIT = 1 << 16  # a connection's StreamReader stops reading from the socket at twice this


class CliSyntaxError(ValueError):
    """A command line that cannot be split into arguments."""


def format_response(status: int, body: str) -> bytes:
    """One CLI response: status line (13 bytes), body, newline."""
    data = body.encode("utf-8", "surrogateescape")
    return b"%-3d %-8d\n" % (status, len(data)) + data + b"\n"


def auth_response(challenge: str, secret: bytes) -> str:
    """The answer to a 107 challenge, as varnish-cli(7) defines it."""
    h = hashlib.sha256()
    h.update(challenge.encode() + b"\n" + secret + challenge.encode() + b"\n")
    return h.hexdigest()


def _backslash(text: str, i: int) -> tuple[str, int]:
    """Decode the escape at text[i] == '\\\\' (VAV_BackSlash); returns (char, length)."""
    c = text[i + 1] if i + 1 < len(text) else ""
    simple = {"n": "\n", "r": "\r", "t": "\t", '"': '"', "\\": "\\"}
    if c in simple:
        return simple[c], 2
    if c == "x":
        digits = ""
        for ch in text[i + 2:i + 4]:
            if ch not in string.hexdigits:
                break
            digits += ch
        if digits:
            return chr(int(digits, 16)), 2 + len(digits)
        raise CliSyntaxError("Invalid backslash sequence")
    if c and c in "01234567":
        digits = ""
        for ch in text[i + 1:i + 4]:
            if ch not in "01234567":
                break
            digits += ch
        return chr(int(digits, 8)), 1 + len(digits)
    raise CliSyntaxError("Invalid backslash sequence")


_QUOTED_RUN = re.compile(r'[^"\\]+')
_WORD_RUN = re.compile(r'[^\s\\"]+')


def split_args(line: str) -> list[str]:
    """Split a command line as Varnish's VAV_Parse does: words, "quoted strings", backslash escapes."""
    out: list[str] = []
    i, n = 0, len(line)
    while i < n:
        if line[i].isspace():
            i += 1
            continue
        buf: list[str] = []
        if line[i] == '"':
            i += 1
            while True:
                if i >= n:
                    raise CliSyntaxError("Missing '\"'")
                c = line[i]
                if c == '"':
                    i += 1
                    break
                if c == "\\":
                    ch, used = _backslash(line, i)
                    buf.append(ch)
                    i += used
                else:
                    m = _QUOTED_RUN.match(line, i)  # a run without quote or backslash, in one step
                    buf.append(m.group())
                    i = m.end()
            if i < n and not line[i].isspace():
                raise CliSyntaxError("Missing separator between arguments")
        else:
            while i < n and not line[i].isspace():
                if line[i] == "\\":
                    ch, used = _backslash(line, i)
                    buf.append(ch)
                    i += used
                elif line[i] == '"':
                    raise CliSyntaxError("Invalid '\"'")     # a quote inside a word
                else:
                    m = _WORD_RUN.match(line, i)
                    buf.append(m.group())
                    i = m.end()
        out.append("".join(buf))
    return out


def heredoc_marker(line: str) -> tuple[str, str] | None:
    """`cmd args << TOKEN`: returns (the line before "<<", TOKEN) when the line opens a here document."""
    idx = line.rfind("<< ")
    if idx < 0:
        return None
    token = line[idx + 3:].strip()
    if not token or any(c.isspace() for c in token):
        return None
    if idx > 0 and not line[idx - 1].isspace():
        return None
    return line[:idx], token


@dataclass(frozen=True)
class CommandDef:
    name: str
    syntax: str
    doc: str
    min_args: int
    max_args: int  # -1: any number; a leading -j is not counted for commands that take it
    handler: str
    needs_auth: bool = True
    flags: str = ""      # varnishd's: "d" debug (listed by help -d / -a), "i" internal
    json: bool = False   # takes -j
    hidden: bool = False  # ours, not varnishd's: answered by `help NAME` but not listed
    child: bool = False   # varnishd's child answers it: unknown while the child is stopped


# varnishd 7.1's commands with its syntax lines, help texts and argument counts (`help -j`).
COMMANDS: list[CommandDef] = [
    CommandDef("auth", "auth <response>", "Authenticate.", 1, 1, "_auth", False),
    CommandDef("backend.list", "backend.list [-j] [-p] [<backend_pattern>]", "List backends.\n", 0, 2,
               "_backend_list", json=True, child=True),
    CommandDef("backend.set_health", "backend.set_health <backend_pattern> [auto|healthy|sick]",
               "Set health status of backend(s) matching <backend_pattern>.", 2, 2, "_backend_set_health", child=True),
    CommandDef("ban", "ban <field> <operator> <arg> [&& <field> <oper> <arg> ...]",
               "Mark obsolete all objects where all the conditions match.", 3, -1, "_ban", child=True),
    CommandDef("ban.list", "ban.list [-j]", "List the active bans.", 0, 0, "_ban_list", json=True, child=True),
    CommandDef("banner", "banner", "Print welcome banner.", 0, 0, "_banner"),
    CommandDef("counters.list", "counters.list [-j] [<glob>...]",
               "Print counters as 'NAME VALUE' lines (varnishstat names).", 0, -1, "_counters_list",
               json=True, hidden=True),
    CommandDef("debug.fragfetch", "debug.fragfetch", "Enable fetch fragmentation.", 1, 1, "_debug_fragfetch",
               flags="d", child=True),
    CommandDef("debug.listen_address", "debug.listen_address", "Report the actual listen address.",
               0, 0, "_debug_listen_address", flags="d", child=True),
    CommandDef("debug.panic.master", "debug.panic.master", "Panic the master process.", 0, 0,
               "_debug_panic_master", flags="d"),
    CommandDef("debug.panic.worker", "debug.panic.worker", "Panic the worker process.", 0, 0,
               "_debug_panic_worker", flags="d", child=True),
    CommandDef("debug.reqpool.fail", "debug.reqpool.fail", "Schedule req-pool failures.", 1, 1,
               "_debug_reqpool_fail", flags="d", child=True),
    CommandDef("debug.shutdown.delay", "debug.shutdown.delay", "Add a delay to the child process shutdown.",
               1, 1, "_debug_shutdown_delay", flags="d", child=True),
    CommandDef("debug.srandom", "debug.srandom", "Seed the random(3) function.", 0, 1, "_debug_srandom",
               flags="d", child=True),
    CommandDef("debug.vmod", "debug.vmod", "Show loaded vmods.", 0, 0, "_debug_vmod", flags="d", child=True),
    CommandDef("debug.xid", "debug.xid [<xid> [<cachesize>]]", "Examine or set XID. <cachesize> defaults to 1.",
               0, 2, "_debug_xid", flags="d", child=True),
    CommandDef("help", "help [-j|<command>]", "Show command/protocol help.", 0, 1, "_help", False,
               flags="i", json=True),
    CommandDef("panic.clear", "panic.clear [-z]",
               "Clear the last panic, if any, -z will clear related varnishstat counter(s)", 0, 1,
               "_panic_clear"),
    CommandDef("panic.show", "panic.show [-j]", "Return the last panic, if any.", 0, 0, "_panic_show",
               json=True),
    CommandDef("param.reset", "param.reset <param>", "Reset parameter to default value.", 1, 1,
               "_param_reset"),
    CommandDef("param.set", "param.set [-j] <param> <value>", "Set parameter value.", 2, 2, "_param_set",
               json=True),
    CommandDef("param.show", "param.show [-l|-j] [<param>|changed]", "Show parameters and their values.",
               0, 2, "_param_show", json=True),
    CommandDef("pid", "pid [-j]", "Show the pid of the master process, and the worker if it's running.",
               0, 0, "_pid", json=True),
    CommandDef("ping", "ping [-j] [<timestamp>]", "Keep connection alive.", 0, 1, "_ping", False,
               flags="i", json=True),
    CommandDef("quit", "quit", "Close connection.", 0, 0, "_quit", False),
    CommandDef("start", "start", "Start the Varnish cache process.", 0, 0, "_start"),
    CommandDef("status", "status [-j]", "Check status of Varnish cache process.", 0, 0, "_status", json=True),
    CommandDef("stop", "stop", "Stop the Varnish cache process.", 0, 0, "_stop"),
    CommandDef("storage.list", "storage.list [-j]", "List storage devices.", 0, 0, "_storage_list", json=True),
    CommandDef("vcl.deps", "vcl.deps [-j]", "List all loaded configuration and their dependencies.", 0, 0,
               "_vcl_deps", json=True),
    CommandDef("vcl.discard", "vcl.discard <name_pattern>...",
               "Unload the named configurations (when possible).", 1, -1, "_vcl_discard"),
    CommandDef("vcl.inline", "vcl.inline <configname> <quoted_VCLstring> [auto|cold|warm]",
               "Compile and load the VCL data under the name provided.", 2, 3, "_vcl_inline"),
    CommandDef("vcl.label", "vcl.label <label> <configname>", "Apply label to configuration.", 2, 2,
               "_vcl_label"),
    CommandDef("vcl.list", "vcl.list [-j]", "List all loaded configuration.", 0, 0, "_vcl_list", json=True),
    CommandDef("vcl.load", "vcl.load <configname> <filename> [auto|cold|warm]",
               "Compile and load the VCL file under the name provided.", 2, 3, "_vcl_load"),
    CommandDef("vcl.show", "vcl.show [-v] [<configname>]",
               "Display the source code for the specified configuration.", 0, 2, "_vcl_show"),
    CommandDef("vcl.state", "vcl.state <configname> [auto|cold|warm]",
               "  Force the state of the named configuration.", 2, 2, "_vcl_state"),
    CommandDef("vcl.symtab", "vcl.symtab", "Dump the VCL symbol-tables.", 0, 0, "_vcl_symtab", flags="d"),
    CommandDef("vcl.use", "vcl.use <configname|label>", "Switch to the named configuration immediately.",
               1, 1, "_vcl_use"),
]
_BY_NAME = {c.name: c for c in COMMANDS}

UNKNOWN_REQUEST = "Unknown request.\nType 'help' for more info.\n"


def _envelope(argv: list[str], version: int, body: str) -> str:
    """varnishd's JSON answer: "[ VERSION, ARGV, TIMESTAMP" then the command's own items, then "]"."""
    return f"[ {version}, {json.dumps(argv, ensure_ascii=False)}, {time.time():.3f}{body}\n]\n"


def _strtoul(text: str) -> int:
    """strtoul(text, NULL, 0) stored in an unsigned int: 0x hex, 0 octal, else decimal; the
    leading digits only, 0 when there are none; a '-' wraps around."""
    s = text.lstrip(" \t\n\r\f\v")
    neg = s[:1] == "-"
    s = s[1:] if s[:1] in "+-" else s
    base = 10
    if s[:2].lower() == "0x" and s[2:3] and s[2:3] in "0123456789abcdefABCDEF":
        base, s = 16, s[2:]
    elif s[:1] == "0":
        base = 8
    value = 0
    for ch in s:
        digit = int(ch, 16) if ch in "0123456789abcdefABCDEF" else base
        if digit >= base:
            break
        value = value * base + digit
    return (-value if neg else value) & 0xFFFFFFFF


def _split_j(args: list[str]) -> tuple[bool, list[str]]:
    return ("-j" in args), [a for a in args if a != "-j"]


class Reply(Exception):
    """Raised by a command to answer with a non-200 status."""

    def __init__(self, status: int, body: str) -> None:
        super().__init__(body)
        self.status = status
        self.body = body


class AdminCommands:
    """The commands, against the server API of docs/ARCHITECTURE.md; one instance per server."""

    def __init__(self, server: Any) -> None:
        self.server = server
        self.sources: dict[str, str] = {}  # VCL source by name, for vcl.show
        self.states: dict[str, str] = {}   # vcl.state, shown by vcl.list
        # temperature (mgt_vcl.c): the cold VCLs, and the auto ones cooling down since (monotonic)
        self.cold: set[str] = set()
        self.go_cold: dict[str, float] = {}
        self.active_label: str | None = None

    # ---- dispatch --------------------------------------------------------------------------
    async def execute(self, argv: list[str]) -> tuple[int, str]:
        """Run one command; the shared log gets it and its answer as varnishd's CLI records (vxid 0)."""
        vsl = self.server.vsl
        load = argv[0] in ("vcl.load", "vcl.inline") and len(argv) > 1
        if load:
            # what varnishd's child is told for either, and answers (the source stays out of the log)
            so = f"vcl_{argv[1]}.{int(time.time())}"
            rd = f'Rd vcl.load "{argv[1]}" {so} 1auto'
        else:
            rd = "Rd " + " ".join(argv)
        vsl.write(0, "-", [("CLI", rd)])
        status, body = await self._execute(argv)
        wr = f'Loaded "{so}" as "{argv[1]}"' if load and status == CLIS_OK else body
        vsl.write(0, "-", [("CLI", f"Wr {status} {len(wr)} {wr}")])
        return status, body

    async def _execute(self, argv: list[str]) -> tuple[int, str]:
        if argv[0].startswith("-"):
            # varnishd's "-" prefix: the command's failure is not fatal to a CLI script (-I);
            # the command itself runs as without it
            argv = [argv[0][1:]] + argv[1:]
            if not argv[0]:
                return CLIS_SYNTAX, UNKNOWN_REQUEST + "Empty CLI command.\n"
        cmd = _BY_NAME.get(argv[0])
        if cmd is None:
            if argv[0][:1].isupper():
                return CLIS_UNKNOWN, UNKNOWN_REQUEST + "all commands are in lower-case.\n"
            return CLIS_UNKNOWN, UNKNOWN_REQUEST
        if cmd.child and not self.server.running:
            return CLIS_UNKNOWN, "Unknown request in manager process (child not running).\nType 'help' for more info."
        if cmd.child:
            # the manager hands these to the child re-quoted, and an empty argument quotes to
            # nothing: the child never sees it
            argv = [a for a in argv if a]
        args = argv[1:]
        if args[:1] == ["-j"] and not cmd.json:
            return CLIS_UNIMPL, "JSON unimplemented\n"     # (cls_dispatch: before the count)
        counted = len(args) - (1 if cmd.json and args[:1] == ["-j"] else 0)
        if counted < cmd.min_args:
            return CLIS_TOOFEW, "Too few parameters\n"
        if cmd.max_args >= 0 and counted > cmd.max_args:
            return CLIS_TOOMANY, "Too many parameters\n"
        handler: Callable[[list[str], list[str]], Awaitable[str] | str] = getattr(self, cmd.handler)
        try:
            result = handler(argv, args)
            if asyncio.iscoroutine(result):
                result = await result
        except Reply as r:
            return r.status, r.body
        return self._limit(cmd.name, result)  # type: ignore[arg-type]

    def _limit(self, name: str, body: str) -> tuple[int, str]:
        """cli_limit: a longer answer is cut to cli_limit - 1 bytes and answered with 201, as
        varnishd's. counters.list (ours, what vtest reads) is never cut."""
        limit = int(getattr(self.server.params, "cli_limit", 0) or 0)
        if name == "counters.list" or limit <= 0:
            return CLIS_OK, body
        data = body.encode("utf-8", "surrogateescape")
        if len(data) <= limit:
            return CLIS_OK, body
        return CLIS_TRUNCATED, data[:limit - 1].decode("utf-8", "surrogateescape")

    # ---- session-level commands (auth, quit and banner are handled by the session) --------------
    def _auth(self, argv: list[str], args: list[str]) -> str:
        raise Reply(CLIS_OK, "")  # already authenticated: nothing to do

    def _quit(self, argv: list[str], args: list[str]) -> str:
        raise Reply(CLIS_CLOSE, "Closing CLI connection")

    def _banner(self, argv: list[str], args: list[str]) -> str:
        return banner(self.server.running)

    def _help(self, argv: list[str], args: list[str]) -> str:
        # the child's commands are known only while it runs
        known = [c for c in COMMANDS if self.server.running or not c.child]
        if args and args[0] == "-j":
            items = []
            for c in known:
                if c.hidden:
                    continue
                items.append(",\n  {\n" + ",\n".join([
                    f'    "request": "{c.name}"', f'    "syntax": {json.dumps(c.syntax)}',
                    f'    "help": {json.dumps(c.doc)}', f'    "minarg": {c.min_args}',
                    f'    "maxarg": {c.max_args}', f'    "flags": "{c.flags}"',
                    f'    "json": {"true" if c.json else "false"}']) + "\n  }")
            return _envelope(argv, 2, "".join(items))
        if args and args[0] in ("-a", "-d"):
            shown = [c for c in known if not c.hidden and (args[0] == "-a" or "d" in c.flags)]
            return "".join(f"{c.syntax}\n" for c in shown)
        if args:
            cmd = _BY_NAME.get(args[0])
            if cmd is None or cmd not in known:
                raise Reply(CLIS_UNKNOWN, "Unknown request.\nType 'help' for more info.\n")
            return f"{cmd.syntax}\n{cmd.doc}\n"
        return "".join(f"{c.syntax}\n" for c in known if not c.hidden and "d" not in c.flags)

    def _ping(self, argv: list[str], args: list[str]) -> str:
        as_json, _ = _split_j(args)
        now = int(time.time())
        if as_json:
            return _envelope(argv, 2, ', "PONG"\n')
        return f"PONG {now} 1.0"

    # ---- child process ----------------------------------------------------------------------
    def _status(self, argv: list[str], args: list[str]) -> str:
        as_json, _ = _split_j(args)
        state = "running" if self.server.running else "stopped"
        return _envelope(argv, 2, f', "{state}"') if as_json else f"Child in state {state}"

    async def _start(self, argv: list[str], args: list[str]) -> str:
        if self.server.running:
            raise Reply(CLIS_CANT, "Child in state running")
        if self.server.active_vcl is None:
            raise Reply(CLIS_CANT, "No VCL available")
        try:
            await self.server.start()
        except (RuntimeError, OSError) as e:
            raise Reply(CLIS_CANT, f"Could not start: {e}") from None
        return ""

    async def _stop(self, argv: list[str], args: list[str]) -> str:
        if not self.server.running:
            raise Reply(CLIS_CANT, "Child in state stopped")
        delay = getattr(self, "shutdown_delay", 0)
        if delay:
            await asyncio.sleep(delay)      # debug.shutdown.delay
        await self.server.stop()
        self.server.counters.mgt_child_exit += 1
        return ""

    def _pid(self, argv: list[str], args: list[str]) -> str:
        as_json, _ = _split_j(args)
        pid = os.getpid()
        if as_json:
            worker = f', "worker": {pid}' if self.server.running else ""
            return _envelope(argv, 2, f',\n  {{"master": {pid}{worker}}}')
        out = f"Master: {pid:10d}\n"
        if self.server.running:
            out += f"Worker: {pid:10d}\n"
        return out

    def _panic_show(self, argv: list[str], args: list[str]) -> str:
        panic = getattr(self.server, "panic", None)
        if not panic:
            raise Reply(CLIS_CANT, "Child has not panicked or panic has been cleared")
        as_json, _ = _split_j(args)
        return _envelope(argv, 2, ",\n  " + json.dumps(panic)) if as_json else str(panic)

    def _panic_clear(self, argv: list[str], args: list[str]) -> str:
        counters = self.server.counters
        if args and args[0] == "-z":
            counters.mgt_child_panic = 0        # -z: clear the counter(s) too, panic or not
            self.server.panic = None
            return ""
        if args:
            raise Reply(CLIS_PARAM, "Unknown parameter \"" + args[0] + "\".")
        if not getattr(self.server, "panic", None):
            raise Reply(CLIS_CANT, "No panic to clear")
        self.server.panic = None
        return ""

    async def _debug_panic_worker(self, argv: list[str], args: list[str]) -> str:
        """varnishd's worker asserts and dies: the manager keeps the panic for panic.show and, with
        auto_restart, starts a fresh worker (an empty cache). The CLI sees the worker go away."""
        server = self.server
        if not server.running:
            raise Reply(CLIS_CANT, "Cache process not started")
        now = time.time()
        server.panic = (
            f"Panic at: {time.strftime('%a, %d %b %Y %H:%M:%S GMT', time.gmtime(now))}\n"
            "Assert error in ccf_panic(), debug.panic.worker:\n"
            "  Condition(You asked for it) not true.\n"
            "version = cacheserver (varnishd 7.1 compatible)\n"
            f"now = {time.monotonic():f} (mono), {now:f} (real)\n")
        counters = server.counters
        counters.mgt_child_panic += 1
        counters.mgt_child_died += 1
        await server.stop()
        if server.params.auto_restart:
            await server.start()
        raise Reply(CLIS_COMMS, "CLI communication error (hdr)")

    def _debug_panic_master(self, argv: list[str], args: list[str]) -> str:
        """varnishd's manager asserts and aborts (exit status 134); its CLI gets no answer."""
        sys.stderr.write('Assert error in mcf_panic(), mgt/mgt_cli.c line 112:\n'
                         '  Condition((strcmp("", "You asked for it")) == 0) not true.\n')
        sys.stderr.flush()
        os.abort()

    def _debug_reqpool_fail(self, argv: list[str], args: list[str]) -> str:
        # read left to right, 'F' or 'f' fails that attempt: bit i is the i-th request task from now
        bits = 0
        for i, char in enumerate(args[0][:64]):      # varnishd's uintmax_t holds 64 attempts
            if char in "Ff":
                bits |= 1 << i
        self.server.reqpool_fail = bits
        return ""

    def _debug_shutdown_delay(self, argv: list[str], args: list[str]) -> str:
        try:
            self.shutdown_delay = max(0, int(args[0]))
        except ValueError:
            self.shutdown_delay = 0          # strtoul: no digits is 0
        return ""

    def _debug_srandom(self, argv: list[str], args: list[str]) -> str:
        from vmods.vrnd import TESTABLE

        # the random director, std.random() and the shard director's dice draw from this generator
        TESTABLE.seed(_strtoul(args[0]) if args else 1)
        return ""

    def _debug_vmod(self, argv: list[str], args: list[str]) -> str:
        import vmods

        refs: dict[str, int] = {}
        for vcl in self.server.vcls.values():
            for name in sorted(getattr(vcl, "uses", ())):
                refs[name] = refs.get(name, 0) + 1
        out = []
        for name, n in refs.items():
            module = sys.modules.get(f"vmods.{name}")
            path = getattr(module, "__file__", None) or f"{os.path.dirname(vmods.__file__)}/{name}.py"
            out.append(f"{n:5d} {name} ({path})\n")
        return "".join(out)

    def _debug_listen_address(self, argv: list[str], args: list[str]) -> str:
        return "".join(f"{name} {host} {port}\n" for name, host, port in self.server.listen_addresses())

    def _debug_fragfetch(self, argv: list[str], args: list[str]) -> str:
        # varnishd's strtoul(av[2], NULL, 0): what does not parse is 0 (fragmentation off)
        m = re.match(r"\s*(0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*)", args[0])
        try:
            self.server.storage.fetchfrag = int(m.group(1), 0) if m else 0
        except ValueError:
            self.server.storage.fetchfrag = 0
        return ""

    def _debug_xid(self, argv: list[str], args: list[str]) -> str:
        if args:
            try:
                value = int(args[0], 0)
                chunk = int(args[1], 0) if len(args) > 1 else 1
            except ValueError:
                raise Reply(CLIS_PARAM, f"Invalid XID {args[0]!r}") from None
            self.server.set_xid(value)
            self.xid_chunk = max(chunk, 1)
        return f"XID is {self.server._xid} chunk {getattr(self, 'xid_chunk', 32768)}"

    # ---- parameters --------------------------------------------------------------------------
    def _param_show(self, argv: list[str], args: list[str]) -> str:
        from cacheserver import param_show

        as_json = bool(args) and args[0] == "-j"
        rest = args[1:] if as_json else list(args)
        long_form = changed = False
        name: str | None = None
        for arg in rest:
            if arg == "-l" and as_json:
                raise Reply(CLIS_PARAM, "-l not permitted with param.show -j")
            if arg == "-l" and name is None and not changed:
                long_form = True
            elif arg == "changed" and name is None and not changed:
                changed = True
            elif name is not None or changed:
                raise Reply(CLIS_TOOMANY, "Too many parameters")
            else:
                name = arg
        params = self.server.params
        protected = getattr(self.server, "readonly_params", set())
        defs = sorted(params.definitions(), key=lambda d: d.name)
        if name is not None:
            defs = [d for d in defs if d.name == name]
            if not defs:
                raise Reply(CLIS_PARAM, f"Unknown parameter \"{name}\".")
            long_form = True
        if changed:
            defs = [d for d in defs if d.kind != "na" and not params.is_default(d.name)]
        if as_json:
            # varnishd opens the list with ",\n" even when nothing follows (param.show -j changed)
            return _envelope(argv, 2, ",\n" + ",\n".join(param_show.json_item(params, d, d.name in protected)
                                                         for d in defs))
        if long_form:
            return "".join(param_show.long(params, d, d.name in protected) for d in defs)
        return "".join(param_show.short(params, d) for d in defs)

    def _param_set(self, argv: list[str], args: list[str]) -> str:
        from cacheserver import param_show
        from cacheserver.params import NotAvailable

        as_json = bool(args) and args[0] == "-j"
        rest = args[1:] if as_json else list(args)
        if len(rest) != 2:
            raise Reply(CLIS_TOOFEW if len(rest) < 2 else CLIS_TOOMANY,
                        "Too few parameters\n" if len(rest) < 2 else "Too many parameters\n")
        name, value = rest
        params = self.server.params
        d = params.definition(name)
        if d is None:
            raise Reply(CLIS_PARAM, f"Unknown parameter \"{name}\".")
        if name in getattr(self.server, "readonly_params", ()):
            raise Reply(CLIS_AUTH, f"parameter \"{name}\" is protected.")
        attempt = f"(attempting to set param '{name}' to '{value}')"
        if name == "h2_rxbuf_storage" and value != "Transient" and value not in self._stevedore_names():
            # tweak_storage: Transient or a configured store; its message has no newline of its own
            raise Reply(CLIS_PARAM, f"unknown storage backend '{value}'\n{attempt}")
        try:
            params.set(name, value)
            if name == "vsl_mask":
                self.server.apply_vcl_trace()
            elif name in ("ban_lurker_age", "ban_lurker_sleep"):
                self.server.storage.kick_lurker()
        except NotAvailable as e:
            raise Reply(CLIS_CANT, str(e)) from None
        except ValueError as e:
            raise Reply(CLIS_PARAM, f"{e}\n\n{attempt}") from None
        note = self._change_note(d)
        if as_json:
            # varnishd answers with param.show -j of the parameter (its argv without the value)
            return _envelope(argv[:-1], 2, ",\n" + param_show.json_item(params, d))
        return note

    def _change_note(self, d) -> str:
        """What varnishd adds after setting a parameter that acts only after a restart or reload."""
        if "must_restart" in d.flags and self.server.running:
            return "\nChange will take effect when child is restarted"
        if "must_reload" in d.flags:
            return "\nChange will take effect when VCL script is reloaded"
        return ""

    def _stevedore_names(self) -> list[str]:
        return list(getattr(getattr(self.server, "storage", None), "stevedores", None) or ("s0", "Transient"))

    def _param_reset(self, argv: list[str], args: list[str]) -> str:
        params = self.server.params
        d = params.definition(args[0])
        if d is None:
            raise Reply(CLIS_PARAM, f"Unknown parameter \"{args[0]}\".")
        if d.name in getattr(self.server, "readonly_params", ()):
            raise Reply(CLIS_AUTH, f"parameter \"{d.name}\" is protected.")
        if d.kind == "na":
            raise Reply(CLIS_CANT, f"parameter \"{d.name}\" is not available on this platform.")
        try:
            params.reset(d.name)
        except ValueError as e:   # a linked bound (thread_pool_min above a lowered thread_pool_max)
            raise Reply(CLIS_PARAM, f"{e}\n\n(attempting to set param '{d.name}' to '{d.default}')") from None
        return self._change_note(d)

    # ---- VCL ---------------------------------------------------------------------------------
    def _check_load(self, name: str, state: str = "auto") -> None:
        """What varnishd checks before it reads or compiles anything."""
        _check_vcl_name(name)
        if name in self.server.vcls or name in self._labels():
            raise Reply(CLIS_PARAM, f"Already a VCL named {name}")
        if state not in ("auto", "cold", "warm"):
            raise Reply(CLIS_PARAM, "State must be one of auto, cold or warm.")

    def _load(self, name: str, source: str, filename: str, state: str = "auto") -> str:
        self._check_load(name, state)
        params = self.server.params
        loaded = len(self.server.vcls)
        if params.max_vcl_handling == 2 and loaded >= params.max_vcl:
            raise Reply(CLIS_CANT, f"Too many ({loaded}) VCLs already loaded\n"
                                   "(See max_vcl and max_vcl_handling parameters)")
        try:
            self.server.vcl_load(name, source, filename)
        except Exception as e:  # VCLLoadError and anything the compiler raises: report, keep serving
            text = str(e)
            status = CLIS_CANT if "Failed initialization" in text else CLIS_PARAM
            if status == CLIS_PARAM:
                text = f"Message from VCC-compiler:\n{text}\nRunning VCC-compiler failed, exited with 2\n" \
                       "VCL compilation failed"
            raise Reply(status, text) from None
        self.sources[name] = source
        self._created(name)
        if state != "auto" and name != self.server.active_name:
            self.states[name] = state
        if self.states.get(name) == "cold":
            self.cold.add(name)
        self._set_cooldown(name)
        loaded = len(self.server.vcls)
        if params.max_vcl_handling == 1 and loaded > params.max_vcl:
            return (f"{loaded} VCLs loaded\nRemember to vcl.discard the old/unused VCLs.\n"
                    "(See max_vcl and max_vcl_handling parameters)")
        return ""

    def _vcl_inline(self, argv: list[str], args: list[str]) -> str:
        return self._load(args[0], args[1], "<vcl.inline>", *args[2:])

    def _vcl_load(self, argv: list[str], args: list[str]) -> str:
        name, path = args[0], args[1]
        self._check_load(name, *args[2:])
        full = Path(path)
        if not full.is_absolute() and not full.exists():
            # varnishd looks relative names up in vcl_path; we try the working directory first
            for base in str(self.server.params.text("vcl_path")).split(":"):
                if base and (Path(base) / path).is_file():
                    full = Path(base) / path
                    break
        try:
            source = full.read_text(encoding="utf-8", errors="surrogateescape")
        except OSError as e:
            raise Reply(CLIS_PARAM, f"Message from VCC-compiler:\nCannot read file '{path}' ({e.strerror})\n"
                                    "Running VCC-compiler failed, exited with 2\nVCL compilation failed") \
                from None
        return self._load(name, source, str(full), *args[2:])

    def _created(self, name: str) -> None:
        """Remember load/label order: vcl.list and vcl.deps list in it, as varnishd."""
        order = self.__dict__.setdefault("order", [])
        if name in order:
            order.remove(name)
        order.append(name)

    def _ordered(self) -> list[str]:
        """Loaded VCLs and labels, oldest first (a VCL loaded at start-up precedes the CLI's)."""
        order: list[str] = self.__dict__.setdefault("order", [])
        names = list(self.server.vcls) + list(self._labels())
        return sorted(names, key=lambda n: order.index(n) if n in order else -1)

    def _users(self, label: str) -> list[str]:
        """VCLs whose return (vcl(LABEL)) goes through this label."""
        return [n for n, v in self.server.vcls.items() if label in getattr(v, "labels", ())]

    # Labels: server.vcl_labels maps a label to the CompiledVCL it points at; the admin keeps which
    # label (if any) is the active one, so relabelling it moves the traffic.
    def _labels(self) -> dict[str, Any]:
        labels = getattr(self.server, "vcl_labels", None)
        if labels is None:
            labels = self.server.vcl_labels = {}
        return labels

    def _label_target(self, label: str) -> str:
        return getattr(self._labels()[label], "name", "")

    def _vcl_use(self, argv: list[str], args: list[str]) -> str:
        name = args[0]
        labels = self._labels()
        target = self._label_target(name) if name in labels else name
        if target not in self.server.vcls:
            raise Reply(CLIS_PARAM, f"No VCL named {name} known\n")
        if self.states.get(target) == "cold":
            raise Reply(CLIS_CANT, f"VCL '{name}' is cold - set to auto or warm first")
        new_label = name if name in labels else None
        if target == self.server.active_name and new_label == self.active_label:
            return ""                           # already the active one: varnishd says nothing
        old = self.server.active_name
        self._warm_up(target)
        self.server.vcl_use(target)
        self.active_label = new_label
        self._set_cooldown(target)
        if old is not None and old != target:
            self._set_cooldown(old)             # the one replaced starts cooling down (if auto)
        return f"VCL '{name}' now active"

    def _is_warm(self, name: str) -> bool:
        """The VCL's temperature; an auto VCL unused for vcl_cooldown has gone cold (varnishd's
        poker does this on a timer; asking is when it matters here)."""
        start = self.go_cold.get(name)
        if start is not None and time.monotonic() - start >= self.server.params.vcl_cooldown:
            del self.go_cold[name]
            self.cold.add(name)
        return name not in self.cold

    def _warm_up(self, name: str) -> None:
        self.cold.discard(name)
        self.go_cold.pop(name, None)

    def _set_cooldown(self, name: str) -> None:
        """mgt_vcl_set_cooldown: a warm auto VCL that is not active, labelled or a return(vcl) user
        starts its cooldown now; any other has none."""
        labels = self._labels()
        tied = any(self._label_target(k) == name or name in self._users(k) for k in labels)
        if (name == self.server.active_name or self.states.get(name, "auto") != "auto"
                or not self._is_warm(name) or tied):
            self.go_cold.pop(name, None)
        else:
            self.go_cold[name] = time.monotonic()

    def _vcl_discard(self, argv: list[str], args: list[str]) -> str:
        labels = self._labels()
        names: list[str] = []
        drop_labels: list[str] = []
        for pattern in args:
            hits = [n for n in self.server.vcls if fnmatch.fnmatchcase(n, pattern)]
            label_hits = [n for n in labels if fnmatch.fnmatchcase(n, pattern)]
            if not hits and not label_hits:
                raise Reply(CLIS_PARAM, f"No VCL name matches {pattern}\n")
            names += hits
            drop_labels += label_hits
        for label in drop_labels:
            if label == self.active_label:
                raise Reply(CLIS_CANT, f"Cannot discard active VCL program {label}\n")
            users = [u for u in self._users(label) if u not in names]
            if users:
                raise Reply(CLIS_CANT, f"Cannot discard VCL label {label}, other VCLs depend on it:\n" +
                            "".join(f"\t{u}\n" for u in users))
        kept = {k: self._label_target(k) for k in labels if k not in drop_labels}
        for name in names:
            if name == self.server.active_name and self.active_label is None:
                raise Reply(CLIS_CANT, f"Cannot discard active VCL program {name}\n")
            users = [k for k, t in kept.items() if t == name]
            if users:
                raise Reply(CLIS_CANT, f"Cannot discard labeled VCL program {name}:\n" +
                            "".join(f"\t{k}\n" for k in users))
        unlabelled = {self._label_target(k) for k in drop_labels}
        for label in drop_labels:
            del labels[label]  # discarding a label only removes the label
        for name in names:
            try:
                self.server.vcl_discard(name)
            except (KeyError, ValueError) as e:
                raise Reply(CLIS_CANT, str(e).strip("'\"")) from None
            self.sources.pop(name, None)
            self.states.pop(name, None)
            self.cold.discard(name)
            self.go_cold.pop(name, None)
        for target in unlabelled:
            if target in self.server.vcls:
                self._set_cooldown(target)      # no longer labelled: may cool down
        return ""

    def _vcl_label(self, argv: list[str], args: list[str]) -> str:
        label, target = args
        _check_vcl_name(label)
        labels = self._labels()
        if label in self.server.vcls:
            raise Reply(CLIS_PARAM, f"{label} is not a label")
        if target in labels:
            raise Reply(CLIS_CANT, "VCL labels cannot point to labels")
        if target not in self.server.vcls:
            raise Reply(CLIS_PARAM, f"No VCL named {target} known\n")
        self._check_label_loop(label, target)
        if target in self.server.vcls and self.states.get(target) == "cold":
            raise Reply(CLIS_CANT, f"VCL '{target}' is cold - set to auto or warm first")
        if label not in labels:
            self._created(label)
        old_target = self._label_target(label) if label in labels else None
        self._warm_up(target)                   # a label's VCL is kept warm
        if callable(getattr(self.server, "vcl_label", None)):
            self.server.vcl_label(label, target)
        else:
            labels[label] = self.server.vcls[target]
        self._set_cooldown(target)
        if old_target and old_target != target and old_target in self.server.vcls:
            self._set_cooldown(old_target)
        if label == self.active_label:
            self.server.vcl_use(target)  # the active label now leads elsewhere
        return ""

    def _check_label_loop(self, label: str, target: str) -> None:
        """Refuse a label whose VCL jumps, through return (vcl(...)), back to the same label."""
        labels = self._labels()
        seen: set[str] = set()
        todo = [target]
        while todo:
            name = todo.pop()
            if name in seen:
                continue
            seen.add(name)
            for jump in getattr(self.server.vcls.get(name), "labels", ()):
                if jump == label:
                    raise Reply(CLIS_PARAM, f"Vcl {name} uses Label {label}\n"
                                            f"Pointing label {label} at {target} would create a loop")
                if jump in labels:
                    todo.append(self._label_target(jump))

    def _vcl_state(self, argv: list[str], args: list[str]) -> str:
        name, state = args
        if name in self._labels():
            raise Reply(CLIS_PARAM, "Labels are always warm")
        if name not in self.server.vcls:
            raise Reply(CLIS_PARAM, f"No VCL named {name} known\n")
        if state not in ("auto", "cold", "warm"):
            raise Reply(CLIS_PARAM, "State must be one of auto, cold or warm.")
        if state == "cold":
            if name == self.server.active_name:
                raise Reply(CLIS_CANT, "Cannot set the active VCL cold.")
            if any(self._label_target(k) == name for k in self._labels()):
                raise Reply(CLIS_CANT, "A labeled VCL cannot be set cold")
        # mgt_vcl_setstate: the active VCL stays warm; auto keeps the temperature it has
        if self.states.get(name, "auto") == state:
            return ""
        warm = self._is_warm(name)
        self.states[name] = state
        if name == self.server.active_name or state == "warm" or (state == "auto" and warm):
            self._warm_up(name)
        else:
            self.go_cold.pop(name, None)
            self.cold.add(name)
        self._set_cooldown(name)
        return ""

    def _vcl_rows(self) -> list[dict[str, Any]]:
        """vcl.list's rows, in varnishd's order: status, state, temperature, busy, name, labels."""
        labels = self._labels()
        rows = []
        for name in self._ordered():
            if name in labels:
                rows.append({"status": "active" if name == self.active_label else "available",
                             "state": "label", "temperature": "warm", "name": name,
                             "target": self._label_target(name), "refs": len(self._users(name))})
                continue
            state = self.states.get(name, "auto")
            active = name == self.server.active_name and self.active_label is None
            rows.append({"status": "active" if active else "available", "state": state,
                         "temperature": "warm" if self._is_warm(name) else "cold", "name": name,
                         "labels": sum(1 for k in labels if self._label_target(k) == name)})
        return rows

    def _vcl_list(self, argv: list[str], args: list[str]) -> str:
        as_json, _ = _split_j(args)
        rows = self._vcl_rows()
        busy = "0" if self.server.running else "-"   # requests in flight are not counted per VCL here
        if as_json:
            items = []
            for r in rows:
                lines = [f'"status": "{r["status"]}"', f'"state": "{r["state"]}"',
                         f'"temperature": "{r["temperature"]}"',
                         f'"busy": {busy if busy != "-" else json.dumps(busy)}', f'"name": "{r["name"]}"']
                if "target" in r:
                    refs = f',\n"refs": {r["refs"]}' if r["refs"] else ""
                    lines.append(f'"label": {{\n      "name": "{r["target"]}"{refs}\n      }}')
                elif r["labels"]:
                    lines.append(f'"labels": {r["labels"]}')
                items.append(",\n  {\n" + ",\n".join("    " + x for x in lines) + "\n}")
            return _envelope(argv, 2, "".join(items))
        table = []
        for r in rows:
            fields = [r["status"], r["state"], r["temperature"], f"{busy:>6}", r["name"]]
            if "target" in r:
                n = r["refs"]
                fields += ["->", r["target"] + (f" ({n} return(vcl){'' if n == 1 else chr(39) + 's'})"
                                                if n else "")]
            elif r["labels"]:
                fields += ["<-", f"({r['labels']} label{'s' if r['labels'] > 1 else ''})"]
            table.append(fields)
        return elastic(table)

    def _vcl_deps(self, argv: list[str], args: list[str]) -> str:
        as_json, _ = _split_j(args)
        labels = self._labels()
        deps: list[tuple[str, list[str]]] = []
        for name in self._ordered():
            if name in labels:
                deps.append((name, [self._label_target(name)]))
            else:
                used = getattr(self.server.vcls[name], "labels", ())
                deps.append((name, [lb for lb in self._ordered() if lb in used]))
        if as_json:
            items = []
            for name, ds in deps:
                inner = "[]" if not ds else "[\n" + ",\n".join(f'      "{d}"' for d in ds) + "\n    ]"
                items.append(f',\n  {{\n    "name": "{name}",\n    "deps": {inner}\n  }}')
            return _envelope(argv, 1, "".join(items))
        table = []
        for name, ds in deps:
            table += [[name, d] for d in ds] if ds else [[name]]
        return elastic(table)

    def _vcl_symtab(self, argv: list[str], args: list[str]) -> str:
        """Each VCL's imports, as varnishd dumps the vgc.sym file VCC writes (a JSON array); our vmods
        are Python modules, named by their file and a digest of it where varnishd names a .so's copy."""
        import vmods

        out = []
        for name, vcl in self.server.vcls.items():
            out.append(f"Vcl: {name}\n  symtab:\n    {{array}}\n      {{object}}\n"
                       "        [\"version\"]: {number} <0>\n")
            for vmod in vcl.imports:
                module = sys.modules.get(f"vmods.{vmod}")
                path = getattr(module, "__file__", None) or f"{os.path.dirname(vmods.__file__)}/{vmod}.py"
                try:
                    with open(path, "rb") as f:
                        digest = hashlib.sha256(f.read()).hexdigest()
                except OSError:
                    digest = "0" * 64
                fields = (("dir", "import"), ("type", "$VMOD"), ("name", vmod), ("file", path),
                          ("dst", f"./vmod_cache/_vmod_{vmod}.{digest}"))
                out.append("      {object}\n" + "".join(f'        ["{k}"]: {{string}} <{v}>\n'
                                                       for k, v in fields))
        return "".join(out)

    def _vcl_show(self, argv: list[str], args: list[str]) -> str:
        verbose = bool(args) and args[0] == "-v"
        rest = args[1:] if verbose else args
        if len(rest) > 1:
            raise Reply(CLIS_PARAM, f"Too many parameters: '{rest[1]}'")
        name = rest[0] if rest else self.server.active_name
        if name in self._labels():
            name = self._label_target(name)
        if name is None or name not in self.server.vcls:
            raise Reply(CLIS_PARAM, f"No VCL named '{name}'")
        source = self.sources.get(name)
        if source is None:
            filename = self.server.vcl_files.get(name, "")
            try:
                source = Path(filename).read_text(encoding="utf-8", errors="surrogateescape")
            except OSError:
                raise Reply(CLIS_CANT, f"Source of VCL {name} is not available\n") from None
        if not verbose:
            return source
        # -v: every source with its "// VCL.SHOW n size name" line; the built-in VCL is ours
        from vcl.compiler import BUILTIN_PATH

        filename = self.server.vcl_files.get(name, "<vcl.inline>")
        builtin = BUILTIN_PATH.read_text(encoding="utf-8")
        return "".join(f"// VCL.SHOW {i} {len(text.encode('utf-8', 'surrogateescape'))} {fname}\n{text}\n"
                       for i, (fname, text) in enumerate([(filename, source), ("<builtin>", builtin)]))

    # ---- backends ------------------------------------------------------------------------------
    def _backends(self, pattern: str | None) -> list[tuple[str, Any]]:
        """(vclname.backend, BackendSpec) matching a backend.list / set_health pattern."""
        out = []
        active = self.server.active_name
        for vname, vcl in self.server.vcls.items():
            for bname, spec in vcl.backends.items():
                if getattr(spec, "host", None) is None and getattr(spec, "path", None) is None:
                    continue  # `backend x none;`
                full = f"{vname}.{bname}"
                # varnishd: a pattern without a dot (none is "*") looks in the active VCL only
                if "." in (pattern or "*"):
                    ok = fnmatch.fnmatchcase(full, pattern)
                else:
                    ok = vname == active and fnmatch.fnmatchcase(bname, pattern or "*")
                if ok:
                    out.append((full, spec))
        return out

    def _backend_list(self, argv: list[str], args: list[str]) -> str:
        from cacheserver.backends import live

        # Leading arguments that start with '-' are flag letters, combinable ("-pj"); after the
        # first other argument (the pattern) nothing is a flag any more.
        as_json = details = False
        i = 0
        while i < len(args) and args[i].startswith("-"):
            for flag in args[i][1:]:
                if flag not in "jp":
                    raise Reply(CLIS_PARAM, f"Invalid flag {flag}")
                as_json |= flag == "j"
                details |= flag == "p"
            i += 1
        rest = args[i:]
        if len(rest) > 1:
            raise Reply(CLIS_PARAM, "Too many arguments")
        pattern = rest[0] if rest else None
        entries = []   # (name, type, admin, good, window, health, changed, text details, json details)
        for full, spec in self._backends(pattern):
            b = live(spec)
            probe = spec.probe
            good = (b.probe_good or 0) if probe is not None else 0
            window = probe.window if probe is not None else 0
            # Health is what probes say; the admin column says whether backend.set_health overrides it
            health = "healthy" if b.probe_healthy else "sick"
            admin = b.admin if b.admin != "auto" else ("probe" if probe is not None else "healthy")
            text, info = ([], "{}")
            if probe is not None:
                text, info = _probe_report(b, probe)
            entries.append((full, "backend", admin, good, window, health, b.changed, text, info))
        entries += self._director_entries(pattern)
        if as_json:
            items = []
            for name, kind, admin, good, window, health, changed, _, info in entries:
                rows = [f'"type": "{kind}"', f'"admin_health": "{admin}"',
                        f'"probe_message": [{good}, {window}, "{health}"]']
                if details:
                    rows.append(f'"probe_details": {info}')
                rows.append(f'"last_change": {changed:.3f}')
                items.append(f'    "{name}": {{\n' + ",\n".join("      " + r for r in rows) + "\n    }")
            # varnishd's empty object keeps its indented blank line
            return _envelope(argv, 3, ",\n  {\n" + (",\n".join(items) + "\n" if items else "  \n") + "  }")
        table: list[list[str] | str] = [["Backend name", "Admin", "Probe", "Health", "Last change"]]
        for name, _, admin, good, window, health, changed, text, _ in entries:
            when = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(changed))
            table.append([name, admin, f"{good}/{window}", health, when])
            if details:
                table += text
        return elastic(table)

    def _director_entries(self, pattern: str | None) -> list[tuple]:
        """Directors (vcl_init `new` objects with members) are listed like backends, as varnishd does."""
        from cacheserver.backends import healthy, live

        out: list[tuple] = []
        for vname, vcl in self.server.vcls.items():
            try:
                instances = vcl.instances
            except (KeyError, AttributeError, TypeError):
                continue
            for iname, obj in instances.items():
                members = getattr(obj, "members", None)
                if members is None or not callable(getattr(obj, "healthy", None)):
                    continue
                full = f"{vname}.{iname}"
                if not (fnmatch.fnmatchcase(full, pattern) if "." in (pattern or "*")
                        else vname == self.server.active_name and fnmatch.fnmatchcase(iname, pattern or "*")):
                    continue
                kind = str(getattr(obj, "kind", "director")).replace("_", "-")
                good = sum(1 for b, _ in members if healthy(b))
                changed = max((live(b).changed for b, _ in members if hasattr(b, "live")),
                              default=self.server.started_at)
                state = "healthy" if obj.healthy(None) else "sick"
                text, info = _director_report(obj, kind, members)
                out.append((full, kind, "probe", good, len(members), state, changed, text, info))
        return out

    def _backend_set_health(self, argv: list[str], args: list[str]) -> str:
        from cacheserver.backends import set_admin_health

        state = args[1].lower()
        if state not in ("auto", "healthy", "sick"):
            raise Reply(CLIS_PARAM, f"Invalid state {args[1]}")
        hits = self._backends(args[0])
        if not hits:
            raise Reply(CLIS_PARAM, "No Backends matches")
        for _, spec in hits:
            set_admin_health(spec, state)
        return ""

    # ---- bans ---------------------------------------------------------------------------------
    def _banlist(self) -> Any:
        """The server's BanList (cacheserver.bans): where `ban` adds and `ban.list` reads."""
        banlist = getattr(getattr(self.server, "storage", None), "bans", None)
        if banlist is None:
            raise Reply(CLIS_UNIMPL, "Bans are not implemented by this server")
        return banlist

    def _ban(self, argv: list[str], args: list[str]) -> str:
        from cacheserver.bans import BanError

        try:
            # Server.ban() (docs/ARCHITECTURE.md) when the server offers it, else its BanList directly.
            if callable(getattr(self.server, "ban", None)):
                self.server.ban(args)
            else:
                self._banlist().add(args)
        except BanError as e:
            raise Reply(e.status, str(e)) from None
        return ""

    def _ban_list(self, argv: list[str], args: list[str]) -> str:
        as_json, _ = _split_j(args)
        banlist = self._banlist()
        if as_json:
            return _envelope(argv, 2, "".join(
                f',\n  {{\n    "time": {b.t:.6f},\n    "refs": {b.refs},\n    "completed": '
                f'{"true" if b.completed else "false"},\n    "spec": {json.dumps("" if b.completed else b.spec)}\n}}'
                for b in banlist.bans))
        return banlist.listing()

    # ---- storage and counters -------------------------------------------------------------------
    def _storage_list(self, argv: list[str], args: list[str]) -> str:
        as_json, _ = _split_j(args)
        devices = [(n, "malloc") for n in self._stevedore_names()]
        if as_json:
            return _envelope(argv, 2, "".join(f',\n  {{\n    "name": "{n}",\n    "storage": "{k}"\n}}'
                                              for n, k in devices))
        return "Storage devices:\n" + "".join(f"\tstorage.{n} = {k}\n" for n, k in devices)

    def _vbe_counters(self) -> dict[str, int]:
        """VBE.<vcl>.<backend>.* for the backends of every VCL that is not cold (varnishd keeps
        counters only for warm VCLs), and MAIN.n_backend, the number of those backends."""
        from cacheserver.backends import vbe_counters

        out: dict[str, int] = {}
        n = 0
        for vname, vcl in self.server.vcls.items():
            if not self._is_warm(vname):
                continue
            for bname, spec in getattr(vcl, "backends", {}).items():
                if getattr(spec, "host", None) is None:
                    continue
                n += 1
                out.update(vbe_counters(f"VBE.{vname}.{bname}.", spec))
        out["MAIN.n_backend"] = n
        return out

    def _counters_list(self, argv: list[str], args: list[str]) -> str:
        as_json, globs = _split_j(args)
        snap = self.server.counters.snapshot()
        now = time.time()
        if "MAIN.uptime" in snap:
            snap["MAIN.uptime"] = int(now - getattr(self.server, "child_started_at", self.server.started_at))
        if "MGT.uptime" in snap:
            snap["MGT.uptime"] = int(now - self.server.started_at)
        if "MAIN.vmods" in snap:
            snap["MAIN.vmods"] = len({m for v in self.server.vcls.values() for m in getattr(v, "uses", ())})
        snap.update(self._vbe_counters())
        if globs:
            snap = {k: v for k, v in snap.items()
                    if any(fnmatch.fnmatchcase(k, g if "." in g else "MAIN." + g) for g in globs)}
        if as_json:
            return json.dumps(snap, indent=2)
        return "".join(f"{k} {v}\n" for k, v in snap.items())


def elastic(rows: list[list[str] | str], width: int = 80) -> str:
    """Rows of fields in columns, as varnishd's VTE: each column as wide as its widest field
    (past the first, plus one), then 1 to 3 spaces, fewer as the widest line nears `width`.
    A row given as a string (empty, or starting with a space) is printed as it is."""
    table = [r for r in rows if isinstance(r, list)]
    if not table:
        return "".join(f"{r}\n" for r in rows)
    ncols = max(len(r) for r in table)
    widths = [0] * ncols
    for r in table:
        for i, f in enumerate(r):
            widths[i] = max(widths[i], len(f) + (1 if i else 0))   # VTE counts the tab with the field
    longest = max(sum(len(f) for f in r) + len(r) - 1 for r in table)
    gaps = ncols - 1
    sep = min(max(int((width - longest) / gaps) if gaps else 3, 1), 3)
    out = []
    for r in rows:
        if isinstance(r, str):
            out.append(r + "\n")
            continue
        line = "".join(f + " " * (widths[i] + sep - len(f)) for i, f in enumerate(r[:-1]))
        out.append(line + r[-1] + "\n")
    return "".join(out)


_PROBE_BITS = (("4", "Good IPv4"), ("6", "Good IPv6"), ("U", "Good UNIX"), ("x", "Error Xmit"),
               ("X", "Good Xmit"), ("r", "Error Recv"), ("R", "Good Recv"), ("H", "Happy"))


def _probe_report(b: Any, probe: Any) -> tuple[list[list[str] | str], str]:
    """backend.list -p for a probed backend: varnishd's text lines and its JSON object."""
    bits = b.probe_bits
    lines: list[list[str] | str] = [
        f" Current states  good: {b.probe_good or 0:2d} threshold: {probe.threshold:2d} window: {probe.window:2d}",
        f"  Average response time of good probes: {b.probe_avg:.6f}",
        "  Oldest ================================================== Newest"]
    for bit, label in _PROBE_BITS:
        if bits.get(bit):
            lines.append("  " + "".join(bit if bits[bit] >> (63 - i) & 1 else "-" for i in range(64)) + f" {label}")
    lines.append("")
    info = ["\n".join(f'        "bits_{bit}": {bits.get(bit, 0)},' for bit, _ in _PROBE_BITS),
            f'        "good": {b.probe_good or 0},', f'        "threshold": {probe.threshold},',
            f'        "window": {probe.window}']
    return lines, "{\n" + "\n".join(info) + "\n      }"


def _director_report(obj: Any, kind: str, members: list[tuple[Any, float]]) -> tuple[list[list[str] | str], str]:
    """backend.list -p for the directors whose report varnishd defines (round-robin, fallback, random)."""
    from cacheserver.backends import healthy

    names = [(getattr(m, "name", "?"), w, "healthy" if healthy(m) else "sick") for m, w in members]
    if kind == "round-robin":
        rows = [["", name, "-", h] for name, _, h in names]
        head = ["", "Backend", "Weight", "Health"]
        js = [f'          "{n}": {{\n            "health": "{h}"\n          }}' for n, _, h in names]
        extra = ""
    elif kind == "fallback":
        current = obj.cur              # the member the last resolution stopped at
        rows = [["", name, "*" if i == current else "", h] for i, (name, _, h) in enumerate(names)]
        head = ["", "Backend", "Current", "Health"]
        js = [f'          "{n}": {{\n            "current": {"true" if i == current else "false"},\n'
              f'            "health": "{h}"\n          }}' for i, (n, _, h) in enumerate(names)]
        extra = f'        "sticky": {"true" if getattr(obj, "sticky", False) else "false"},\n'
    elif kind == "random":
        total = sum(w for _, w, _ in names) or 1.0
        rows = [["", name, f"{100 * w / total:6.2f}%", h] for name, w, h in names]
        head = ["", "Backend", "Weight", "Health"]
        js = [f'          "{n}": {{\n            "weight": {w:f},\n            "health": "{h}"\n          }}'
              for n, w, h in names]
        extra = f'        "total_weight": {sum(w for _, w, _ in names):f},\n'
    elif kind == "shard":
        shard = obj.report(time.time())
        # (varnishd prints rampup and what remains of it as one field)
        rows = [["", name, ident, "healthy" if ok else "sick", f"{100 * done:6.2f}% {left:8.3f}s"]
                for name, ident, ok, done, left in shard]
        head = ["", "Backend", "Ident", "Health", "Rampup  Remaining"]
        js = [f'          "{name}": {{\n            "ident": "{ident}",\n'
              f'            "health": "{"healthy" if ok else "sick"}",\n            "rampup": {done:f},\n'
              f'            "rampup_remaining": {left:.3f}\n          }}' for name, ident, ok, done, left in shard]
        extra = (f'        "warmup": {obj.warmup:f},\n'
                 f'        "rampup_duration": {obj.rampup_duration:f},\n')
    else:
        return [], "{}"
    text: list[list[str] | str] = ["", head, *rows, ""]
    return text, "{\n" + extra + '        "backends": {\n' + ",\n".join(js) + "\n        }\n      }"


def _check_vcl_name(name: str) -> None:
    """VCL names are identifiers: a letter first, then letters, digits, '_' and '-' (as varnishd)."""
    if not name[:1].isascii() or not name[:1].isalpha():
        raise Reply(CLIS_PARAM, f"Illegal character in VCL name ('{name[:1]}')")
    for c in name:
        if not (c.isascii() and (c.isalnum() or c in "_-")):
            raise Reply(CLIS_PARAM, f"Illegal character in VCL name ('{c}')")


def banner(running: bool = True) -> str:
    return ("-----------------------------\n"
            "Varnish Cache CLI 1.0\n"
            "-----------------------------\n"
            f"{platform.system()},{platform.release()},{platform.machine()},-smalloc,-hcritbit\n"
            "cacheserver (Python, varnishd 7.1 compatible CLI)\n\n"
            "Type 'help' for command list.\n"
            "Type 'quit' to close CLI session.\n"
            + ("" if running else "Type 'start' to launch worker process.\n"))


class _Overflow(Exception):
    """A line or here document longer than the session allows: the connection is closed."""


class _LineReader:
    """Lines from a StreamReader, each bounded; the reader itself buffers at most 2 * READER_LIMIT."""

    def __init__(self, reader: asyncio.StreamReader) -> None:
        self.reader = reader
        self.buf = bytearray()

    async def readline(self, limit: int, idle: float | None, partial: float | None) -> str | None:
        """The next line without its CR/LF; None at EOF. Waits at most `idle` seconds for a line to
        start and `partial` seconds for each further read once it has; raises _Overflow past `limit`
        bytes and TimeoutError on a timeout."""
        scanned = 0
        while True:
            i = self.buf.find(b"\n", scanned)
            if i >= 0:
                if i > limit + 1:
                    raise _Overflow
                end = i - 1 if i and self.buf[i - 1] == 13 else i   # without a CR before the LF
                line = self.buf[:end].decode("utf-8", "surrogateescape")
                del self.buf[:i + 1]
                return line
            if len(self.buf) > limit + 1:   # + 1: a CR before the LF
                raise _Overflow
            scanned = len(self.buf)
            timeout = partial if self.buf else idle
            chunk = await asyncio.wait_for(self.reader.read(READER_LIMIT), timeout)
            if not chunk:
                return None
            self.buf += chunk


class CliSession:
    """One CLI connection: challenge, auth, then read-execute-answer until quit, EOF or a limit.

    As varnishd 7.1: before authentication only auth, help, ping and quit are served, a line is at
    most PREAUTH_MAX_LINE bytes, here documents are not recognised, and any answer other than 200
    closes the connection (so does a wrong `auth` at any time). After it, a line is at most MAX_LINE
    bytes and a here document at most MAX_HEREDOC bytes; beyond that the connection is closed.
    With `timeouts` (network sessions), reads and writes wait at most cli_timeout: the session must
    authenticate within cli_timeout of connecting, and a command once started must keep arriving;
    an authenticated session may stay idle between commands, as varnishd's.
    """

    PREAUTH = frozenset({"auth", "help", "ping", "quit"})

    def __init__(self, commands: AdminCommands, secret_file: str | None,
                 reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, timeouts: bool = True) -> None:
        self.commands = commands
        self.secret_file = secret_file
        self.lines = _LineReader(reader)
        self.writer = writer
        self.timeouts = timeouts
        self.authed = secret_file is None
        self.challenge = ""
        self.deadline = 0.0

    def _cli_timeout(self) -> float | None:
        if not self.timeouts:
            return None
        value = float(getattr(self.commands.server.params, "cli_timeout", 60.0))
        return value if value > 0 else None

    async def send(self, status: int, body: str) -> None:
        self.writer.write(format_response(status, body))
        await asyncio.wait_for(self.writer.drain(), self._cli_timeout())

    def _new_challenge(self) -> str:
        self.challenge = "".join(secrets.choice(string.ascii_lowercase) for _ in range(32))
        return f"{self.challenge}\n\nAuthentication required.\n"

    async def _readline(self, limit: int) -> str | None:
        timeout = self._cli_timeout()
        idle = partial = timeout
        if self.authed:
            idle = None                         # between commands an authenticated session may idle
        elif timeout is not None:
            left = self.deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError      # also when pipelined lines kept it busy without reading
            idle = partial = left
        return await self.lines.readline(limit, idle, partial)

    async def _read_command(self) -> list[str] | None:
        """The next command's argv; after auth, a here document (`<< TOKEN`) becomes the last argument."""
        while True:
            line = await self._readline(MAX_LINE if self.authed else PREAUTH_MAX_LINE)
            if line is None:
                return None
            marker = heredoc_marker(line) if self.authed else None
            if marker is not None:
                head, token = marker
                body: list[str] = []
                size = 0
                while True:
                    more = await self._heredoc_line()
                    if more is None:
                        return None
                    if more == token:
                        break
                    size += len(more.encode("utf-8", "surrogateescape")) + 1
                    if size > MAX_HEREDOC:
                        raise _Overflow
                    body.append(more)
                line, extra = head, ["\n".join(body) + "\n"]
            else:
                extra = []
            try:
                argv = split_args(line)
            except CliSyntaxError as e:
                await self.send(CLIS_SYNTAX, f"{UNKNOWN_REQUEST}Syntax Error: {e}\n")
                if not self.authed:
                    return None
                continue
            if argv or extra:
                return argv + extra

    async def _heredoc_line(self) -> str | None:
        timeout = self._cli_timeout()
        return await self.lines.readline(MAX_LINE, timeout, timeout)

    async def _auth(self, argv: list[str]) -> tuple[int, str]:
        """`auth RESPONSE`; the secret file is read at each attempt, as varnishd does."""
        if self.secret_file is None:             # -S none: nothing to authenticate against
            return CLIS_CANT, "Secret file not configured\n"
        if self.authed:
            return CLIS_CLOSE, ""               # varnishd: the challenge is gone once authenticated
        try:
            with open(self.secret_file, "rb") as f:
                secret = f.read()
        except OSError as e:
            return CLIS_CANT, f"Cannot open secret file ({e.strerror})\n"
        want = auth_response(self.challenge, secret)
        if not secrets.compare_digest(argv[1].lower().encode("utf-8", "surrogateescape"), want.encode()):
            return CLIS_CLOSE, ""
        self.authed = True
        self.challenge = ""
        return CLIS_OK, banner(self.commands.server.running)

    async def _execute(self, argv: list[str]) -> tuple[int, str]:
        if not self.authed and argv[0] not in self.PREAUTH:
            return CLIS_UNKNOWN, "Unknown request.\nType 'help' for more info.\n"
        if argv[0] == "auth" and len(argv) == 2:
            return await self._auth(argv)
        try:
            return await self.commands.execute(argv)
        except Exception as e:  # a bug in one command must not kill the CLI
            return CLIS_CANT, f"Internal error: {type(e).__name__}: {e}"

    async def run(self) -> None:
        try:
            if self.authed:
                await self.send(CLIS_OK, banner(self.commands.server.running))
            else:
                timeout = self._cli_timeout()
                self.deadline = time.monotonic() + (timeout or 0.0)
                await self.send(CLIS_AUTH, self._new_challenge())
            while True:
                argv = await self._read_command()
                if argv is None:
                    break
                was_authed = self.authed
                status, body = await self._execute(argv)
                await self.send(status, body)
                if status == CLIS_CLOSE or (not was_authed and status != CLIS_OK):
                    break
        except _Overflow:
            try:
                self.writer.write(format_response(CLIS_COMMS, "Request too long, closing CLI connection"))
            except (ConnectionError, OSError, RuntimeError):
                pass
            self._abort_later()
        except (asyncio.TimeoutError, TimeoutError, ConnectionError, OSError):
            self._abort_later(0)                # unsent answers must not keep the connection
        finally:
            try:
                self.writer.close()
            except (OSError, RuntimeError):
                pass

    def _abort_later(self, delay: float | None = None) -> None:
        """Drop the connection even if what is left to send never leaves (a client that does not read)."""
        transport = getattr(self.writer, "transport", None)
        if transport is None:
            return
        if delay is None:
            delay = self._cli_timeout() or 5.0
        if delay <= 0:
            transport.abort()
        else:
            asyncio.get_running_loop().call_later(delay, transport.abort)


def default_work_dir() -> Path:
    """Where the secret goes without -n: varnishd uses /var/lib/varnish/HOSTNAME.

    $XDG_RUNTIME_DIR/cacheserver/HOSTNAME when XDG_RUNTIME_DIR is set (a per-user 0700 directory),
    else /var/lib/cacheserver/HOSTNAME as root, else ~/.cache/cacheserver/HOSTNAME.
    """
    host = socket.gethostname().replace("/", "_") or "localhost"
    runtime = os.environ.get("XDG_RUNTIME_DIR", "")
    if runtime and os.path.isabs(runtime) and os.path.isdir(runtime):
        return Path(runtime) / "cacheserver" / host
    if os.geteuid() == 0:
        return Path("/var/lib/cacheserver") / host
    return Path.home() / ".cache" / "cacheserver" / host


def _check_work_dir(path: Path) -> None:
    """A secret may only live in a directory nobody else can write to (or a sticky one)."""
    st = os.stat(path)
    if not stat.S_ISDIR(st.st_mode):
        raise ValueError(f"work directory {path} is not a directory")
    if st.st_mode & 0o022 and not st.st_mode & stat.S_ISVTX:
        raise ValueError(f"work directory {path} is writable by others (mode {stat.S_IMODE(st.st_mode):o})")


def make_secret(work_dir: Path) -> str:
    """WORKDIR/_.secret made afresh, as varnishd does without -S: 256 random bytes, mode 0600.

    The directory is created 0700 if missing. An existing _.secret (or anything planted there) is
    removed first and the new file is created exclusively, never through a symbolic link.
    """
    if not work_dir.exists():
        work_dir.mkdir(mode=0o700, parents=True)
    _check_work_dir(work_dir)
    path = work_dir / "_.secret"
    try:
        path.unlink()
    except FileNotFoundError:
        pass
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, secrets.token_bytes(256))
    finally:
        os.close(fd)
    return str(path)


def check_secret_file(path: str) -> None:
    """-S FILE must be readable and not empty (varnishd refuses to start otherwise)."""
    try:
        with open(path, "rb") as f:
            first = f.read(1)
    except OSError as e:
        raise ValueError(f"Cannot open -S file ({path}): {e.strerror}") from None
    if not first:
        raise ValueError(f"Empty secret-file \"{path}\"")


def resolve_secret(secret_file: str | None, work_dir: Path | None) -> str | None:
    """The secret file the CLI checks `auth` against, or None for `-S none` (no authentication).

    -S FILE: that file. No -S: a fresh WORKDIR/_.secret (-n DIR, else default_work_dir()).
    """
    if secret_file == "none":
        return None
    if secret_file is not None:
        check_secret_file(secret_file)
        return secret_file
    return make_secret(work_dir if work_dir is not None else default_work_dir())


def _parse_hostport(text: str) -> tuple[str, int]:
    """'ADDR PORT' (varnishd -M) or 'ADDR:PORT' / '[v6]:PORT' (-T)."""
    parts = text.split()
    if len(parts) == 2:
        host, port = parts
    else:
        host, sep, port = text.strip().rpartition(":")
        if not sep:
            raise ValueError(f"Bad address {text!r}: expected ADDR:PORT")
    return host.strip("[]") or "0.0.0.0", int(port)


class _StdoutWriter:
    """The writer side of a CliSession on the process's stdout (varnishd -d)."""

    def write(self, data: bytes) -> None:
        sys.stdout.buffer.write(data)

    async def drain(self) -> None:
        sys.stdout.buffer.flush()

    def close(self) -> None:
        sys.stdout.buffer.flush()


async def serve_stdin(server: Any, on_eof: Callable[[], None]) -> None:
    """varnishd -d: a CLI session on stdin/stdout, without auth; `on_eof` runs when stdin closes.

    varnishtest keeps the debug stdin open and closes it to make varnishd exit: main.py passes a
    callback that stops the server.
    """
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=READER_LIMIT)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    commands = getattr(server, "admin_commands", None) or AdminCommands(server)
    server.admin_commands = commands
    try:
        session = CliSession(commands, None, reader, _StdoutWriter(), timeouts=False)  # type: ignore[arg-type]
        await session.run()
    finally:
        on_eof()


async def start_admin(server: Any, *, listen: str | None, connect: str | None,
                      secret_file: str | None) -> list[str]:
    """Start the CLI (-T listen and/or -M connect); returns the addresses in use ("ADDR PORT").

    `secret_file` as -S: a file, "none" (no authentication), or None for a fresh WORKDIR/_.secret
    (see resolve_secret()).
    """
    secret = resolve_secret(secret_file, getattr(server, "work_dir", None))
    server.admin_secret_file = secret
    commands = getattr(server, "admin_commands", None)
    if commands is None:
        commands = AdminCommands(server)
        server.admin_commands = commands
    addresses: list[str] = []
    tasks: set[asyncio.Task[None]] = getattr(server, "_admin_tasks", set())
    server._admin_tasks = tasks

    def spawn(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.ensure_future(CliSession(commands, secret, reader, writer).run())
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    if listen:
        try:
            host, port = _parse_hostport(listen)
            srv = await asyncio.start_server(spawn, host, port, limit=READER_LIMIT)
        except (ValueError, socket.gaierror) as exc:    # varnishd's words for a -T it cannot use
            raise OSError(f"Could not resolve -T argument to address\n\t{exc}") from None
        server._admin_server = srv
        for sock in srv.sockets:
            h, p = sock.getsockname()[:2]
            addresses.append(f"{h} {p}")
    if connect:
        host, port = _parse_hostport(connect)
        reader, writer = await asyncio.open_connection(host, port, limit=READER_LIMIT)
        h, p = writer.get_extra_info("peername")[:2]
        addresses.append(f"{h} {p}")
        spawn(reader, writer)
    return addresses
