"""cachencsa: varnishncsa for cacheserver's shared log (Apache/NCSA access-log lines, same -F formats)."""

from __future__ import annotations

import argparse
import base64
import re
import sys
import time
from collections.abc import Callable

from cacheserver.cachelog import common_args, open_source
from cacheserver.vsl import LogError
from cacheserver.vslq import Query, QueryError, Txn, groups_of

DEFAULT_FORMAT = '%h %l %u %t "%r" %s %b "%{Referer}i" "%{User-agent}i"'

_SPEC = re.compile(r"%(?:\{([^}]*)\})?([a-zA-Z%])")


class Fields:
    """What one transaction says, gathered once from its records (as varnishncsa's dispatch)."""

    def __init__(self, txn: Txn, backend: bool) -> None:
        pre = "Bereq" if backend else "Req"
        resp = "Beresp" if backend else "Resp"
        self.backend = backend
        self.vxid = txn.vxid
        self.host = "-"
        self.method = self.url = self.proto = None
        self.status = None
        self.req_headers: list[str] = []
        self.resp_headers: list[str] = []
        self.t_start = self.t_end = self.t_first = None
        self.acct: list[int] = []
        self.handling = "-"
        self.hitmiss = "-"
        self.vcl_log: list[str] = []
        self.records = txn.records
        for rec in txn.records:
            tag, text = rec.tag, rec.text
            if tag == pre + "Method" and self.method is None:
                self.method = text
            elif tag == pre + "URL" and self.url is None:
                self.url = text
            elif tag == pre + "Protocol" and self.proto is None:
                self.proto = text
            elif tag == pre + "Header":
                self.req_headers.append(text)
            elif tag == pre + "Unset":
                if text in self.req_headers:
                    self.req_headers.remove(text)
            elif tag == resp + "Status":
                self.status = text
            elif tag == resp + "Header":
                self.resp_headers.append(text)
            elif tag == resp + "Unset":
                if text in self.resp_headers:
                    self.resp_headers.remove(text)
            elif tag == "ReqStart" and not backend:
                self.host = text.split(" ", 1)[0]
            elif tag == "BackendOpen" and backend:
                parts = text.split()
                if len(parts) > 2:
                    self.host = parts[2]
            elif tag == "Timestamp":
                event, _, rest = text.partition(": ")
                parts = rest.split()
                if not parts:
                    continue
                when = float(parts[0])
                if event == "Start":
                    self.t_start = when
                elif event in ("Resp", "BerespBody", "Retry", "Error", "PipeSess"):
                    self.t_end = when
                elif event in ("Process", "Beresp", "Fetch") and self.t_first is None and len(parts) > 1:
                    self.t_first = float(parts[1])
            elif tag in ("ReqAcct", "BereqAcct"):
                self.acct = [int(x) for x in text.split() if x.isdigit()]
            elif tag == "Hit":
                self.handling, self.hitmiss = "hit", "hit"
            elif tag == "HitPass":
                self.handling, self.hitmiss = "pass", "miss"
            elif tag == "HitMiss":
                self.handling, self.hitmiss = "miss", "miss"
            elif tag == "VCL_call" and text in ("MISS", "PASS", "PIPE", "SYNTH") and self.handling == "-":
                self.handling = text.lower()
                self.hitmiss = "miss" if text in ("MISS", "PASS") else "-"
            elif tag == "VCL_return" and text == "synth":
                self.handling = "synth"
            elif tag == "VCL_Log":
                self.vcl_log.append(text)

    @staticmethod
    def header(headers: list[str], name: str) -> str | None:
        name = name.lower()
        for h in reversed(headers):     # the last value set wins, as varnishncsa
            n, sep, v = h.partition(":")
            if sep and n.strip().lower() == name:
                return v.strip()
        return None


def _bytes(n: int | None, dash: bool) -> str:
    if n is None or (dash and n == 0):
        return "-"
    return str(n)


def compile_format(fmt: str) -> Callable[[Fields], str]:
    """A -F format as a function of a transaction's fields; raises ValueError on an unknown directive."""
    parts: list[Callable[[Fields], str] | str] = []
    pos = 0
    for m in _SPEC.finditer(fmt):
        if m.start() > pos:
            parts.append(fmt[pos:m.start()])
        pos = m.end()
        parts.append(_directive(m.group(1), m.group(2)))
    if pos < len(fmt):
        parts.append(fmt[pos:])
    if "%" in "".join(p for p in parts if isinstance(p, str)).replace("%%", ""):
        raise ValueError(f"Unknown format specifier in {fmt!r}")

    def render(f: Fields) -> str:
        return "".join(p if isinstance(p, str) else p(f) for p in parts)
    return render


def _directive(arg: str | None, code: str) -> Callable[[Fields], str]:
    if code == "%":
        return lambda f: "%"
    if code == "b":
        return lambda f: _bytes(f.acct[4] if len(f.acct) > 4 else None, True)
    if code == "B":
        return lambda f: _bytes(f.acct[4] if len(f.acct) > 4 else None, False)
    if code == "O":
        return lambda f: _bytes(f.acct[5] if len(f.acct) > 5 else None, False)
    if code == "I":
        return lambda f: _bytes(f.acct[2] if len(f.acct) > 2 else None, False)
    if code == "D":
        return lambda f: "-" if f.t_start is None or f.t_end is None else str(int((f.t_end - f.t_start) * 1e6))
    if code == "T":
        return lambda f: "-" if f.t_start is None or f.t_end is None else str(int(f.t_end - f.t_start))
    if code == "H":
        return lambda f: f.proto or "-"
    if code == "h":
        return lambda f: f.host
    if code == "l":
        return lambda f: "-"
    if code == "m":
        return lambda f: f.method or "-"
    if code == "q":
        return lambda f: ("?" + f.url.split("?", 1)[1]) if f.url and "?" in f.url else ""
    if code == "U":
        return lambda f: (f.url or "-").split("?", 1)[0]
    if code == "s":
        return lambda f: f.status or "-"
    if code == "u":
        return _user
    if code == "r":
        return _first_line
    if code == "t":
        pattern = arg or "[%d/%b/%Y:%T %z]"
        return lambda f: "-" if f.t_start is None else time.strftime(pattern, time.localtime(f.t_start))
    if code == "i":
        if not arg:
            raise ValueError("%i needs a header name: %{Name}i")
        return lambda f: Fields.header(f.req_headers, arg) or "-"
    if code == "o":
        if not arg:
            raise ValueError("%o needs a header name: %{Name}o")
        return lambda f: Fields.header(f.resp_headers, arg) or "-"
    if code == "x":
        return _extended(arg or "")
    raise ValueError(f"Unknown format specifier '%{code}'")


def _user(f: Fields) -> str:
    auth = Fields.header(f.req_headers, "Authorization")
    if auth and auth.lower().startswith("basic "):
        try:
            return base64.b64decode(auth[6:].strip()).decode("utf-8", "replace").split(":", 1)[0] or "-"
        except ValueError:
            return "-"
    return "-"


def _first_line(f: Fields) -> str:
    host = Fields.header(f.req_headers, "Host")
    url = f.url or "-"
    if host and not url.startswith("http"):
        url = f"http://{host}{url}"
    return f"{f.method or '-'} {url} {f.proto or '-'}"


def _extended(arg: str) -> Callable[[Fields], str]:
    if arg == "Varnish:time_firstbyte":
        return lambda f: "-" if f.t_first is None else "%f" % f.t_first
    if arg == "Varnish:hitmiss":
        return lambda f: f.hitmiss
    if arg == "Varnish:handling":
        return lambda f: f.handling
    if arg == "Varnish:side":
        return lambda f: "b" if f.backend else "c"
    if arg == "Varnish:vxid":
        return lambda f: str(f.vxid)
    if arg.startswith("VCL_Log:"):
        key = arg[len("VCL_Log:"):]

        def vcl_log(f: Fields) -> str:
            for line in f.vcl_log:
                k, sep, v = line.partition(":")
                if sep and k == key:
                    return v.strip()
            return "-"
        return vcl_log
    if arg.startswith("VSL:"):
        m = re.fullmatch(r"VSL:(\w+)(?:\[(\d+)\])?", arg)
        if m is None:
            raise ValueError(f"Bad %{{{arg}}}x")
        tag, field = m.group(1), int(m.group(2)) if m.group(2) else None

        def vsl(f: Fields) -> str:
            for rec in f.records:
                if rec.tag == tag:
                    if field is None:
                        return rec.text
                    parts = rec.text.split()
                    return parts[field - 1] if 0 < field <= len(parts) else "-"
            return "-"
        return vsl
    raise ValueError(f"Unknown formatting extension: {arg}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="cachencsa", description="Access log lines from cacheserver's shared log.")
    common_args(p)
    p.add_argument("-F", dest="format", help="log format (default: NCSA combined)")
    p.add_argument("-f", dest="format_file", help="read the format from a file")
    p.add_argument("-g", dest="grouping", default="vxid", choices=("vxid", "request"))
    p.add_argument("-w", dest="write", help="append the lines to this file")
    args = p.parse_args(argv)
    fmt = args.format or DEFAULT_FORMAT
    if args.format_file:
        with open(args.format_file) as f:
            fmt = f.readline().rstrip("\n")
    try:
        render = compile_format(fmt)
    except ValueError as exc:
        print(f"cachencsa: {exc}", file=sys.stderr)
        return 1
    try:
        query = Query(args.query, args.caseless) if args.query else None
    except QueryError as exc:
        print(exc, file=sys.stderr)
        return 1
    backend = args.backend and not args.client
    both = args.backend and args.client
    out = open(args.write, "a") if args.write else sys.stdout
    count = 0
    try:
        for group in groups_of(open_source(args), args.grouping, query):
            for txn in group:
                if txn.type == "req" and (not backend or both):
                    line = render(Fields(txn, False))
                elif txn.type == "bereq" and (backend or both):
                    line = render(Fields(txn, True))
                else:
                    continue
                out.write(line + "\n")
                out.flush()
                count += 1
                if args.limit and count >= args.limit:
                    return 0
    except LogError as exc:
        print(f"cachencsa: {exc}", file=sys.stderr)
        return 1
    except (BrokenPipeError, KeyboardInterrupt):
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
