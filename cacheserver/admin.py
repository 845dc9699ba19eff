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
_WORD_RUN = re.compile(r"[^\s\\]+")


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
    max_args: int  # -1: any number
    handler: str
    needs_auth: bool = True


COMMANDS: list[CommandDef] = [
    CommandDef("auth", "auth <response>", "Authenticate.", 1, 1, "_auth", False),
    CommandDef("backend.list", "backend.list [-j] [-p] [<backend_pattern>]", "List backends.", 0, 3,
               "_backend_list"),
    CommandDef("backend.set_health", "backend.set_health <backend_pattern> [auto|healthy|sick]",
               "Set health status of backend(s).", 2, 2, "_backend_set_health"),
    CommandDef("ban", "ban <field> <operator> <arg> [&& <field> <oper> <arg> ...]",
               "Mark obsolete all objects where all the conditions match.", 3, -1, "_ban"),
    CommandDef("ban.list", "ban.list [-j]", "List the active bans.", 0, 1, "_ban_list"),
    CommandDef("banner", "banner", "Print welcome banner.", 0, 0, "_banner"),
    CommandDef("counters.list", "counters.list [-j] [<glob>...]",
               "Print counters as 'NAME VALUE' lines (varnishstat names).", 0, -1, "_counters_list"),
    CommandDef("debug.listen_address", "debug.listen_address", "Report the actual listen address.",
               0, 0, "_debug_listen_address"),
    CommandDef("debug.xid", "debug.xid [<xid>]", "Examine or set XID.", 0, 1, "_debug_xid"),
    CommandDef("help", "help [-j|<command>]", "Show command/protocol help.", 0, 2, "_help", False),
    CommandDef("panic.clear", "panic.clear [-z]", "Clear the last panic, if any.", 0, 1, "_panic_clear"),
    CommandDef("panic.show", "panic.show [-j]", "Return the last panic, if any.", 0, 1, "_panic_show"),
    CommandDef("param.reset", "param.reset <param>", "Reset parameter to default value.", 1, 1,
               "_param_reset"),
    CommandDef("param.set", "param.set [-j] <param> <value>", "Set parameter value.", 2, 3, "_param_set"),
    CommandDef("param.show", "param.show [-l|-j] [<param>|changed]", "Show parameters and their values.",
               0, 3, "_param_show"),
    CommandDef("pid", "pid [-j]", "Show the pid of the master process, and the worker if it's running.",
               0, 1, "_pid"),
    CommandDef("ping", "ping [-j] [<timestamp>]", "Keep connection alive.", 0, 2, "_ping", False),
    CommandDef("quit", "quit", "Close connection.", 0, 0, "_quit", False),
    CommandDef("start", "start", "Start the Varnish cache process.", 0, 0, "_start"),
    CommandDef("status", "status [-j]", "Check status of Varnish cache process.", 0, 1, "_status"),
    CommandDef("stop", "stop", "Stop the Varnish cache process.", 0, 0, "_stop"),
    CommandDef("storage.list", "storage.list [-j]", "List storage devices.", 0, 1, "_storage_list"),
    CommandDef("vcl.discard", "vcl.discard <name_pattern>...", "Unload the named configurations.", 1, -1,
               "_vcl_discard"),
    CommandDef("vcl.inline", "vcl.inline <configname> <quoted_VCLstring> [auto|cold|warm]",
               "Compile and load the VCL data under the name provided.", 2, 3, "_vcl_inline"),
    CommandDef("vcl.label", "vcl.label <label> <configname>", "Apply label to configuration.", 2, 2,
               "_vcl_label"),
    CommandDef("vcl.list", "vcl.list [-j]", "List all loaded configuration.", 0, 1, "_vcl_list"),
    CommandDef("vcl.load", "vcl.load <configname> <filename> [auto|cold|warm]",
               "Compile and load the VCL file under the name provided.", 2, 3, "_vcl_load"),
    CommandDef("vcl.show", "vcl.show [-v] [<configname>]", "Display the source code for the specified "
               "configuration.", 0, 2, "_vcl_show"),
    CommandDef("vcl.state", "vcl.state <configname> [auto|cold|warm]", "Force the state of the named "
               "configuration.", 2, 2, "_vcl_state"),
    CommandDef("vcl.use", "vcl.use <configname|label>", "Switch to the named configuration immediately.", 1, 1,
               "_vcl_use"),
]
_BY_NAME = {c.name: c for c in COMMANDS}


def _json(argv: list[str], *payload: Any) -> str:
    """varnishd's JSON envelope: [version, argv, timestamp, payload...]."""
    return json.dumps([2, argv, round(time.time(), 3), *payload], indent=2)


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
        cmd = _BY_NAME.get(argv[0])
        if cmd is None:
            return CLIS_UNKNOWN, "Unknown request.\nType 'help' for more info.\n"
        args = argv[1:]
        if len(args) < cmd.min_args:
            return CLIS_TOOFEW, "Too few parameters\n"
        if cmd.max_args >= 0 and len(args) > cmd.max_args:
            return CLIS_TOOMANY, "Too many parameters\n"
        handler: Callable[[list[str], list[str]], Awaitable[str] | str] = getattr(self, cmd.handler)
        try:
            result = handler(argv, args)
            if asyncio.iscoroutine(result):
                result = await result
        except Reply as r:
            return r.status, r.body
        return CLIS_OK, result  # type: ignore[return-value]

    # ---- session-level commands (auth, quit and banner are handled by the session) --------------
    def _auth(self, argv: list[str], args: list[str]) -> str:
        raise Reply(CLIS_OK, "")  # already authenticated: nothing to do

    def _quit(self, argv: list[str], args: list[str]) -> str:
        raise Reply(CLIS_CLOSE, "Closing CLI connection")

    def _banner(self, argv: list[str], args: list[str]) -> str:
        return banner(self.server.running)

    def _help(self, argv: list[str], args: list[str]) -> str:
        as_json, rest = _split_j(args)
        if rest:
            cmd = _BY_NAME.get(rest[0])
            if cmd is None:
                raise Reply(CLIS_UNKNOWN, "Unknown request.\nType 'help' for more info.\n")
            return f"{cmd.syntax}\n{cmd.doc}\n"
        if as_json:
            return _json(argv, *[{"request": c.name, "syntax": c.syntax, "help": c.doc,
                                  "minarg": c.min_args, "maxarg": c.max_args, "flags": "",
                                  "json": True} for c in COMMANDS])
        return "".join(f"{c.syntax}\n" for c in COMMANDS)

    def _ping(self, argv: list[str], args: list[str]) -> str:
        as_json, _ = _split_j(args)
        now = int(time.time())
        if as_json:
            return _json(argv, "PONG", now, 1.0)
        return f"PONG {now} 1.0"

    # ---- child process ----------------------------------------------------------------------
    def _status(self, argv: list[str], args: list[str]) -> str:
        as_json, _ = _split_j(args)
        state = "running" if self.server.running else "stopped"
        return _json(argv, state) if as_json else f"Child in state {state}"

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
        await self.server.stop()
        return ""

    def _pid(self, argv: list[str], args: list[str]) -> str:
        as_json, _ = _split_j(args)
        pid = os.getpid()
        if as_json:
            payload: dict[str, int] = {"master": pid}
            if self.server.running:
                payload["worker"] = pid
            return _json(argv, payload)
        out = f"Master: {pid:10d}\n"
        if self.server.running:
            out += f"Worker: {pid:10d}\n"
        return out

    def _panic_show(self, argv: list[str], args: list[str]) -> str:
        panic = getattr(self.server, "panic", None)
        if not panic:
            raise Reply(CLIS_CANT, "Child has not panicked or panic has been cleared")
        as_json, _ = _split_j(args)
        return _json(argv, panic) if as_json else str(panic)

    def _panic_clear(self, argv: list[str], args: list[str]) -> str:
        if not getattr(self.server, "panic", None):
            raise Reply(CLIS_CANT, "No panic to clear")
        self.server.panic = None
        return ""

    def _debug_listen_address(self, argv: list[str], args: list[str]) -> str:
        return "".join(f"{name} {host} {port}\n" for name, host, port in self.server.listen_addresses())

    def _debug_xid(self, argv: list[str], args: list[str]) -> str:
        if args:
            try:
                value = int(args[0])
            except ValueError:
                raise Reply(CLIS_PARAM, f"Invalid XID {args[0]!r}") from None
            self.server.set_xid(value)
        return f"XID is {self.server._xid} chunk 1"

    # ---- parameters --------------------------------------------------------------------------
    def _param_show(self, argv: list[str], args: list[str]) -> str:
        as_json, rest = _split_j(args)
        long_form = "-l" in rest
        rest = [a for a in rest if a != "-l"]
        if as_json and long_form:
            raise Reply(CLIS_PARAM, "-l and -j are mutually exclusive")
        if len(rest) > 1:
            raise Reply(CLIS_TOOMANY, "Too many parameters\n")
        params = self.server.params
        defs = params.definitions()
        if rest and rest[0] != "changed":
            defs = [d for d in defs if d.name == rest[0]]
            if not defs:
                raise Reply(CLIS_PARAM, f"Unknown parameter \"{rest[0]}\".")
            long_form = True
        elif rest:
            defs = [d for d in defs if params.text(d.name) != d.default]
        defs.sort(key=lambda d: d.name)
        if as_json:
            return _json(argv, *[{"name": d.name, "implemented": True, "value": _json_value(params, d),
                                  "units": _UNITS.get(d.kind, ""), "default": d.default,
                                  "description": d.doc} for d in defs])
        if long_form:
            return "".join(_param_long(params, d) for d in defs)
        return "".join(f"{d.name:<30} {_show_value(params, d)}\n" for d in defs)

    def _param_set(self, argv: list[str], args: list[str]) -> str:
        as_json, rest = _split_j(args)
        if len(rest) != 2:
            raise Reply(CLIS_TOOFEW if len(rest) < 2 else CLIS_TOOMANY,
                        "Too few parameters\n" if len(rest) < 2 else "Too many parameters\n")
        name, value = rest
        if name in getattr(self.server, "readonly_params", ()):
            raise Reply(CLIS_AUTH, f"parameter \"{name}\" is protected.")
        value = _apply_flags(self.server.params, name, value)
        try:
            self.server.params.set(name, value)
        except ValueError as e:
            msg = str(e)
            if msg.startswith("Unknown parameter"):
                raise Reply(CLIS_PARAM, msg) from None
            raise Reply(CLIS_PARAM, f"{msg}\n\n(attempting to set param '{name}' to '{value}')") from None
        if as_json:
            d = next(d for d in self.server.params.definitions() if d.name == name)
            return _json(argv, {"name": name, "value": _json_value(self.server.params, d)})
        return ""

    def _param_reset(self, argv: list[str], args: list[str]) -> str:
        d = next((d for d in self.server.params.definitions() if d.name == args[0]), None)
        if d is None:
            raise Reply(CLIS_PARAM, f"Unknown parameter \"{args[0]}\".")
        self.server.params.set(d.name, d.default)
        return ""

    # ---- VCL ---------------------------------------------------------------------------------
    def _load(self, name: str, source: str, filename: str) -> str:
        _check_vcl_name(name)
        if name in self.server.vcls:
            raise Reply(CLIS_PARAM, f"Already a VCL named {name}")
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
        return "VCL compiled.\n"

    def _vcl_inline(self, argv: list[str], args: list[str]) -> str:
        return self._load(args[0], args[1], "<vcl.inline>")

    def _vcl_load(self, argv: list[str], args: list[str]) -> str:
        name, path = args[0], args[1]
        base = Path(str(self.server.params.text("vcl_dir")) if "/" not in path else "")
        full = Path(path) if Path(path).is_absolute() else base / path
        try:
            source = full.read_text(encoding="utf-8", errors="surrogateescape")
        except OSError as e:
            raise Reply(CLIS_PARAM, f"Message from VCC-compiler:\nCannot read file '{path}' ({e.strerror})\n"
                                    "Running VCC-compiler failed, exited with 2\nVCL compilation failed") \
                from None
        return self._load(name, source, str(full))

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
        try:
            self.server.vcl_use(target)
        except KeyError:
            raise Reply(CLIS_PARAM, f"No VCL named {name} known\n") from None
        self.active_label = name if name in labels else None
        return f"VCL '{name}' now active"

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
        kept = {k: self._label_target(k) for k in labels if k not in drop_labels}
        for name in names:
            if name == self.server.active_name and self.active_label is None:
                raise Reply(CLIS_CANT, f"Cannot discard active VCL program {name}\n")
            users = [k for k, t in kept.items() if t == name]
            if users:
                raise Reply(CLIS_CANT, f"Cannot discard labeled VCL program {name}:\n" +
                            "".join(f"\t{k}\n" for k in users))
        for label in drop_labels:
            del labels[label]  # discarding a label only removes the label
        for name in names:
            try:
                self.server.vcl_discard(name)
            except (KeyError, ValueError) as e:
                raise Reply(CLIS_CANT, str(e).strip("'\"")) from None
            self.sources.pop(name, None)
            self.states.pop(name, None)
        return ""

    def _vcl_label(self, argv: list[str], args: list[str]) -> str:
        label, target = args
        _check_vcl_name(label)
        labels = self._labels()
        if target in labels:
            raise Reply(CLIS_CANT, "VCL labels cannot point to labels")
        if target not in self.server.vcls:
            raise Reply(CLIS_PARAM, f"No VCL named {target} known\n")
        if label in self.server.vcls:
            raise Reply(CLIS_PARAM, f"{label} is not a label")
        self._check_label_loop(label, target)
        if callable(getattr(self.server, "vcl_label", None)):
            self.server.vcl_label(label, target)
        else:
            labels[label] = self.server.vcls[target]
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
                    raise Reply(CLIS_PARAM, f"VCL '{target}' uses label '{label}': this would create a loop")
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
                raise Reply(CLIS_CANT, "Cannot set a labeled VCL cold.")
        # Our VCLs hold no resources that cooling would release: the state is recorded and shown.
        self.states[name] = state
        return ""

    def _vcl_list(self, argv: list[str], args: list[str]) -> str:
        as_json, _ = _split_j(args)
        labels = self._labels()
        running = self.server.running
        active_vcl = None if self.active_label else self.server.active_name
        rows = []
        for name, _status, busy in self.server.vcl_list():
            state = self.states.get(name, "auto")
            temp = "cold" if state == "cold" else "warm"
            # The running server holds a reference to the VCL that takes the traffic.
            held = running and name == self.server.active_name
            users = [k for k in labels if self._label_target(k) == name]
            rows.append(("active" if name == active_vcl else "available", state, temp,
                         (busy + held) if running else None, name, users, None))
        for label in labels:
            rows.append(("active" if label == self.active_label else "available", "label", "warm",
                         0 if running else None, label, [], self._label_target(label)))
        if as_json:
            out = []
            for status, state, temp, busy, name, users, target in rows:
                item: dict[str, Any] = {"status": status, "state": state, "temperature": temp,
                                        "busy": busy if busy is not None else "-", "name": name}
                if users:
                    item["labels"] = len(users)
                if target is not None:
                    item["label"] = {"name": target}
                out.append(item)
            return _json(argv, *out)
        w_status = max(len(r[0]) for r in rows) + 3 if rows else 9
        w_state = max(len(r[1]) for r in rows) + 4 if rows else 8
        w_name = max(len(r[4]) for r in rows) + 4 if rows else 8
        lines = []
        for status, state, temp, busy, name, users, target in rows:
            line = f"{status:<{w_status}}{state:<{w_state}}{temp:<8}{'-' if busy is None else busy:>6}    "
            if target is not None:
                line += f"{name:<{w_name}}->    {target}"
            elif users:
                line += f"{name:<{w_name}}<-    ({len(users)} label{'s' if len(users) > 1 else ''})"
            else:
                line += name
            lines.append(line)
        return "\n".join(lines) + "\n"

    def _vcl_show(self, argv: list[str], args: list[str]) -> str:
        rest = [a for a in args if a != "-v"]
        name = rest[0] if rest else self.server.active_name
        if name in self._labels():
            name = self._label_target(name)
        if name is None or name not in self.server.vcls:
            raise Reply(CLIS_PARAM, f"No VCL named {name} known\n")
        source = self.sources.get(name)
        if source is None:
            filename = self.server.vcl_files.get(name, "")
            try:
                source = Path(filename).read_text(encoding="utf-8", errors="surrogateescape")
            except OSError:
                raise Reply(CLIS_CANT, f"Source of VCL {name} is not available\n") from None
        if "-v" in args:
            filename = self.server.vcl_files.get(name, "<vcl.inline>")
            return f"// VCL.SHOW 0 {len(source.encode())} {filename}\n{source}\n"
        return source

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
                if pattern is None or pattern == "*":
                    ok = True
                elif "." in pattern:
                    ok = fnmatch.fnmatchcase(full, pattern)
                else:
                    ok = vname == active and fnmatch.fnmatchcase(bname, pattern)
                if ok:
                    out.append((full, spec))
        return out

    def _backend_list(self, argv: list[str], args: list[str]) -> str:
        from cacheserver.backends import live

        as_json, rest = _split_j(args)
        details = "-p" in rest
        rest = [a for a in rest if a != "-p"]
        rows = []
        for full, spec in self._backends(rest[0] if rest else None):
            b = live(spec)
            probe = spec.probe
            good = getattr(b, "probe_good", None)
            if probe is not None:
                # "-" when the prober does not report how many probes of its window were good
                good_n = good if good is not None else "-"
                probe_txt = f"{good_n}/{probe.window}"
            else:
                good_n, probe_txt = 0, "0/0"
            health = "healthy" if b.healthy else "sick"
            admin = b.admin if b.admin != "auto" else ("probe" if probe is not None else health)
            # The prober may describe its window (varnishd's -p report); the server provides the text.
            report = getattr(b, "probe_report", None)
            extra = report() if details and probe is not None and callable(report) else ""
            rows.append((full, admin, probe_txt, health, b.changed, good_n, probe, extra))
        rows += self._director_rows(rest[0] if rest else None)
        if as_json:
            return _json(argv, {r[0]: {"type": "backend", "admin_health": r[1],
                                       "probe_message": [r[5], r[6].window if r[6] else 0, r[3]],
                                       "last_change": round(r[4], 3)} for r in rows})
        # Column widths as varnishd's: the name column gets 3 spaces of padding, the others 4.
        head = ("Backend name", "Admin", "Probe", "Health")
        widths = [max([len(head[i])] + [len(r[i]) for r in rows]) + (3 if i == 0 else 4) for i in range(4)]
        out = ["".join(f"{h:<{w}}" for h, w in zip(head, widths, strict=True)) + "Last change"]
        for r in rows:
            when = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(r[4]))
            out.append("".join(f"{c:<{w}}" for c, w in zip(r[:4], widths, strict=True)) + when)
            if r[7]:
                out.append(r[7].rstrip("\n"))
        return "\n".join(out) + "\n"

    def _director_rows(self, pattern: str | None) -> list[tuple]:
        """Directors (vcl_init `new` objects with members) are listed like backends, as varnishd does."""
        from cacheserver.backends import healthy, live

        rows: list[tuple] = []
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
                if pattern not in (None, "*") and not (
                        fnmatch.fnmatchcase(full, pattern) if "." in pattern
                        else vname == self.server.active_name and fnmatch.fnmatchcase(iname, pattern)):
                    continue
                good = sum(1 for b, _ in members if healthy(b))
                changed = max((live(b).changed for b, _ in members if hasattr(b, "live")),
                              default=self.server.started_at)
                state = "healthy" if obj.healthy(None) else "sick"
                rows.append((full, "probe", f"{good}/{len(members)}", state, changed, good, None, ""))
        return rows

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
            return _json(argv, *[{"time": round(b.t, 6), "refs": b.refs, "completed": b.completed,
                                  "spec": "" if b.completed else b.spec} for b in banlist.bans])
        return banlist.listing()

    # ---- storage and counters -------------------------------------------------------------------
    def _storage_list(self, argv: list[str], args: list[str]) -> str:
        as_json, _ = _split_j(args)
        devices = [("s0", "malloc"), ("Transient", "malloc")]
        if as_json:
            return _json(argv, *[{"name": n, "storage": k} for n, k in devices])
        return "Storage devices:\n" + "".join(f"\tstorage.{n} = {k}\n" for n, k in devices)

    def _counters_list(self, argv: list[str], args: list[str]) -> str:
        as_json, globs = _split_j(args)
        snap = self.server.counters.snapshot()
        if "MAIN.uptime" in snap:
            snap["MAIN.uptime"] = int(time.time() - self.server.started_at)
        if globs:
            snap = {k: v for k, v in snap.items()
                    if any(fnmatch.fnmatchcase(k, g if "." in g else "MAIN." + g) for g in globs)}
        if as_json:
            return json.dumps(snap, indent=2)
        return "".join(f"{k} {v}\n" for k, v in snap.items())


def _check_vcl_name(name: str) -> None:
    """VCL names are identifiers: a letter first, then letters, digits, '_' and '-' (as varnishd)."""
    if not name[:1].isascii() or not name[:1].isalpha():
        raise Reply(CLIS_PARAM, f"Illegal character in VCL name ('{name[:1]}')")
    for c in name:
        if not (c.isascii() and (c.isalnum() or c in "_-")):
            raise Reply(CLIS_PARAM, f"Illegal character in VCL name ('{c}')")


_UNITS = {"bytes": "bytes", "duration": "seconds", "bool": "bool", "uint": ""}


def _show_value(params: Any, d: Any) -> str:
    value = params.get(d.name)
    if d.kind == "duration":
        return f"{value:.3f} [seconds]"
    if d.kind == "bytes":
        return f"{params.text(d.name)} [bytes]"
    if d.kind == "bool":
        return f"{'on' if value else 'off'} [bool]"
    return str(params.text(d.name)) if d.kind == "string" else str(value)


def _json_value(params: Any, d: Any) -> Any:
    value = params.get(d.name)
    return value if isinstance(value, (int, float, bool)) else str(value)


def _param_long(params: Any, d: Any) -> str:
    is_default = params.text(d.name) == d.default
    lines = [d.name, f"        Value is: {_show_value(params, d)}" + (" (default)" if is_default else "")]
    if not is_default:
        lines.append(f"        Default is: {d.default}")
    if d.minimum is not None:
        lines.append(f"        Minimum is: {d.minimum:g}")
    lines += ["", f"        {d.doc}", "", ""]
    return "\n".join(lines) + "\n"


def _apply_flags(params: Any, name: str, value: str) -> str:
    """`param.set debug +flag,-flag`: flag lists change relative to the current value, as varnishd's."""
    if name not in ("debug", "feature", "vsl_mask") or not value or value[0] not in "+-":
        return value
    try:
        current = [f for f in str(params.text(name)).split(",") if f and f not in ("none", "default")]
    except KeyError:
        return value
    for item in value.split(","):
        flag = item.lstrip("+-")
        if item.startswith("-"):
            current = [f for f in current if f.lstrip("+-") != flag]
        elif flag not in current:
            current.append(flag)
    return ",".join(current) or "none"


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
                await self.send(CLIS_SYNTAX, f"Syntax Error: {e}")
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
        if self.authed or self.secret_file is None:
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
        host, port = _parse_hostport(listen)
        srv = await asyncio.start_server(spawn, host, port, limit=READER_LIMIT)
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
