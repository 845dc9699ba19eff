"""The client/server specification language over one HTTP/1 connection (vtc_http.c semantics)."""
from __future__ import annotations

import gzip
import random
import re
import select
import socket
import time
import zlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .errors import IOFailure, TestFailure, TestSkip
from .log import EntityLog
from .parse import split_commands
from .pcre import pcre

if TYPE_CHECKING:
    from .context import TestContext

NL = b"\r\n"
# Spec commands vtest does not implement: the test is skipped, never half-run.
UNSUPPORTED_SPEC = {
    "stream": "HTTP/2 streams", "txpri": "HTTP/2", "rxpri": "HTTP/2", "settings": "HTTP/2",
    "shell": "shell commands", "rxpush": "HTTP/2",
}


def synth_body(length: int, rnd: bool = False) -> bytes:
    """The body -bodylen generates: 64-char lines of rotating printable characters."""
    if length <= 0:
        return b""
    out = bytearray(length)
    k = ll = ord("!")
    for j in range(length):
        if j % 64 == 63:
            out[j] = 10
            k += 1
            if k == ord("~"):
                k = ord("!")
            ll = k
        elif rnd:
            out[j] = random.randrange(95) + 32
        else:
            out[j] = ll
            ll += 1
            if ll == ord("~"):
                ll = ord("!")
    out[length - 1] = 10
    return bytes(out)


def _num(s: str) -> float:
    m = re.match(r"\s*[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?", s)
    if not m:
        return float("nan")
    return float(m.group(0))


_INT_OPS = frozenset({"-eq", "-ne", "-lt", "-gt", "-le", "-ge"})


def _strtoll(text: str) -> int:
    """strtoll(text, NULL, 0): the leading integer, 0 when there is none."""
    m = re.match(r"\s*([+-]?)(0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*)", text)
    if m is None:
        return 0
    sign, digits = m.groups()
    if digits[:2].lower() == "0x":
        value = int(digits, 16)
    elif digits.startswith("0"):
        value = int(digits, 8)
    else:
        value = int(digits)
    return -value if sign == "-" else value


def compare(lhs: str | None, op: str, rhs: str | None) -> bool | None:
    """expect's operators; None means the operator is unknown."""
    cl = "<undef>" if lhs is None else lhs
    cr = "<undef>" if rhs is None else rhs
    if op in ("~", "!~"):
        try:
            hit = pcre(cr).search(cl) is not None
        except re.error as e:
            raise TestFailure(f"Regexp error: {e} in {cr!r}") from e
        return hit if op == "~" else not hit
    if op == "==":
        return cl == cr
    if op == "!=":
        return cl != cr
    if op in _INT_OPS:
        # varnishtest's integer comparisons: both sides read by strtoll(.., 0) (0x.. hex, 0.. octal)
        if lhs is None or rhs is None:
            return False
        a, b = _strtoll(cl), _strtoll(cr)
        return {"-eq": a == b, "-ne": a != b, "-lt": a < b, "-gt": a > b, "-le": a <= b, "-ge": a >= b}[op]
    if op not in ("<", ">", "<=", ">="):
        return None
    if lhs is None or rhs is None:
        return False
    a, b = _num(cl), _num(cr)
    return {"<": a < b, ">": a > b, "<=": a <= b, ">=": a >= b}[op]


class Http:
    """One connection driven by a spec; `is_client` selects which commands make sense."""

    def __init__(self, ctx: TestContext, log: EntityLog, sock: socket.socket, *, is_client: bool,
                 entity: Any = None, timeout: float | None = None) -> None:
        self.ctx = ctx
        self.log = log
        self.sock: socket.socket | None = sock
        self.is_client = is_client
        self.entity = entity
        self.timeout = timeout if timeout is not None else max(ctx.timeout / 2, 1.0)
        self.rxbuf = bytearray()
        self.req: list[str] = []
        self.resp: list[str] = []
        self.req_hdrs: list[tuple[str, str]] = []
        self.resp_hdrs: list[tuple[str, str]] = []
        self.body = b""
        self.bodylen: int | None = None  # None until a body was read: expect sees <undef>
        self.chunklen = 0
        self.head_method = False
        self.non_fatal = False  # per connection, like vtc_http's hp->fatal
        self.gzip_level = 0      # varnishtest gzips at level 0 (stored blocks) unless -gziplevel
        self.gzip_residual = -1
        self.commands: dict[str, Callable[[list[str]], None]] = {
            "txreq": self.cmd_txreq, "txresp": self.cmd_txresp,
            "rxreq": self.cmd_rxreq, "rxreqhdrs": self.cmd_rxreqhdrs, "rxreqbody": self.cmd_rxreqbody,
            "rxresp": self.cmd_rxresp, "rxresphdrs": self.cmd_rxresphdrs,
            "rxrespbody": self.cmd_rxrespbody, "rxchunk": self.cmd_rxchunk,
            "expect": self.cmd_expect, "send": self.cmd_send, "send_n": self.cmd_send_n,
            "send_urgent": self.cmd_send_urgent, "sendhex": self.cmd_sendhex, "recv": self.cmd_recv,
            "chunked": self.cmd_chunked, "chunkedlen": self.cmd_chunkedlen, "timeout": self.cmd_timeout,
            "expect_close": self.cmd_expect_close, "expect_pattern": self.cmd_expect_pattern,
            "close": self.cmd_close, "accept": self.cmd_accept, "loop": self.cmd_loop,
            "fatal": self.cmd_fatal, "non_fatal": self.cmd_non_fatal, "write_body": self.cmd_write_body,
            "gunzip": self.cmd_gunzip, "barrier": self.cmd_barrier, "delay": self.cmd_delay,
            "rxrespdata": self.cmd_rxrespbody,
        }

    # ---- running a spec -------------------------------------------------
    def run(self, spec: str) -> None:
        for cmd in split_commands(spec):
            toks = [self.ctx.macros.expand(t) for t in cmd.tokens]
            name = toks[0]
            fn = self.commands.get(name)
            if fn is None:
                if name in UNSUPPORTED_SPEC:
                    raise TestSkip(f"unsupported spec command '{name}' ({UNSUPPORTED_SPEC[name]})")
                raise TestFailure(f"Unknown http spec: {name}")
            self.log(2, "=== " + " ".join(_short(t, 80) for t in toks))
            try:
                fn(toks[1:])
            except IOFailure as e:
                # vtc_http: I/O errors are logged at the entity's fatality level; non_fatal goes on.
                if not self.non_fatal:
                    raise
                self.log(1, f"{e} (non-fatal, continuing)")

    # ---- low level I/O ----------------------------------------------------
    def _need_sock(self) -> socket.socket:
        if self.sock is None:
            raise IOFailure("no connection (closed)")
        return self.sock

    def write(self, data: bytes, what: str) -> None:
        sock = self._need_sock()
        self.log.dump(4, what, data)
        try:
            sock.settimeout(self.timeout)
            sock.sendall(data)
        except OSError as e:
            raise IOFailure(f"Write failed: ({e})") from e

    def _fill(self, eof_ok: bool = False) -> bool:
        """Read more into rxbuf; False on EOF (fatal unless eof_ok)."""
        sock = self._need_sock()
        sock.settimeout(self.timeout)
        try:
            data = sock.recv(65536)
        except socket.timeout as e:
            raise IOFailure(f"HTTP rx timeout ({self.timeout * 1000:.0f} ms)") from e
        except OSError as e:
            if eof_ok:
                return False
            raise IOFailure(f"HTTP rx failed ({e})") from e
        if not data:
            if eof_ok:
                return False
            raise IOFailure("HTTP rx EOF")
        self.rxbuf += data
        return True

    def rx_bytes(self, n: int) -> bytes:
        while len(self.rxbuf) < n:
            self._fill()
        out = bytes(self.rxbuf[:n])
        del self.rxbuf[:n]
        return out

    def rx_line(self) -> bytes:
        while True:
            i = self.rxbuf.find(b"\n")
            if i >= 0:
                out = bytes(self.rxbuf[:i + 1])
                del self.rxbuf[:i + 1]
                return out
            self._fill()

    def rx_until_eof(self) -> bytes:
        while self._fill(eof_ok=True):
            pass
        out = bytes(self.rxbuf)
        self.rxbuf.clear()
        return out

    # ---- parsing ----------------------------------------------------------
    def rx_head(self) -> tuple[list[str], list[tuple[str, str]]]:
        """Read a start line and headers (bare LF accepted)."""
        while True:
            # Leading empty lines are skipped, as lenient HTTP/1 readers do.
            while self.rxbuf[:1] in (b"\r", b"\n") and self.rxbuf:
                del self.rxbuf[:1]
            m = re.search(rb"\r?\n\r?\n", self.rxbuf)
            if m:
                raw = bytes(self.rxbuf[:m.end()])
                del self.rxbuf[:m.end()]
                break
            self._fill()
        self.log.dump(4, "rxhdr", raw)
        text = raw.decode("latin-1")
        lines = [ln.rstrip("\r") for ln in text.split("\n")]
        lines = [ln for ln in lines if ln != ""]
        first = lines[0].split(" ", 2)
        while len(first) < 3:
            first.append("")
        hdrs: list[tuple[str, str]] = []
        for ln in lines[1:]:
            if ln[:1] in (" ", "\t") and hdrs:
                name, val = hdrs[-1]
                hdrs[-1] = (name, val + " " + ln.strip())
                continue
            name, sep, val = ln.partition(":")
            hdrs.append((name.strip(), val.strip() if sep else ""))
        self.log(4, f"rxhdrlen = {len(raw)}")
        return first, hdrs

    @staticmethod
    def find_header(hdrs: list[tuple[str, str]], name: str) -> str | None:
        lname = name.lower()
        for k, v in hdrs:
            if k.lower() == lname:
                return v
        return None

    def rx_chunk(self) -> int:
        """One chunk appended to body; returns its size (0 at the last chunk)."""
        line = self.rx_line().decode("latin-1").strip()
        try:
            size = int(line.split(";")[0].strip(), 16)
        except ValueError as e:
            raise IOFailure(f"chunked fail: bad length {line!r}") from e
        data = self.rx_bytes(size) if size else b""
        crlf = self.rx_line()
        if crlf.strip():
            raise IOFailure(f"chunked fail: missing CRLF after chunk, got {crlf!r}")
        self.body += data
        self.chunklen = size
        self.log(4, f"chunk len {size}")
        return size

    def swallow_body(self, hdrs: list[tuple[str, str]], until_eof: bool, max_len: int = 0) -> None:
        te = self.find_header(hdrs, "transfer-encoding")
        if te is not None and te.lower() == "chunked":
            while self.rx_chunk() != 0:
                if max_len and len(self.body) >= max_len:
                    break
        else:
            cl = self.find_header(hdrs, "content-length")
            if cl is not None:
                try:
                    n = int(cl)
                except ValueError as e:
                    raise TestFailure(f"Bad Content-Length: {cl!r}") from e
                n = max(n - len(self.body), 0)        # what an earlier "-max" read left
                if max_len:
                    n = min(n, max_len)
                self.body += self.rx_bytes(n)
            elif until_eof:
                self.body += self.rx_until_eof()
        self.bodylen = len(self.body)
        self.log(4, f"bodylen = {self.bodylen}")
        if self.body:
            self.log.dump(4, "body", self.body[:1024])

    # ---- tx ---------------------------------------------------------------
    def _tx_args(self, av: list[str], head: bytes, nohost: bool, body: bytes | None) -> bytes:
        """Common -hdr/-body handling of txreq and txresp (http_tx_parse_args)."""
        out = bytearray(head)
        nolen = False
        i = 0
        while i < len(av):
            a = av[i]
            if a == "-nolen":
                nolen = True
            elif a == "-nohost":
                nohost = True
            elif a in ("-nodate", "-noserver", "-nouseragent"):
                pass  # varnishtest 7.1 adds no Date/Server/User-Agent headers: nothing to leave out
            elif a == "-hdr":
                h = self._arg(av, i, a)
                if h.lower().startswith("host:"):
                    nohost = True
                out += h.encode("latin-1") + NL
                i += 1
            elif a == "-hdrlen":
                name = self._arg(av, i, a)
                n = int(self._arg(av, i + 1, a))
                out += name.encode("latin-1") + b": " + bytes((48 + (k % 10)) for k in range(n - 1, -1, -1)) + NL
                i += 2
            else:
                break
            i += 1
        encoding_gzip = False
        while i < len(av):
            a = av[i]
            if a == "-body":
                raw = self._arg(av, i, a)
                body = raw.replace("\\0", "\0").encode("latin-1")
                i += 1
            elif a == "-bodyfrom":
                path = self._arg(av, i, a)
                try:
                    with open(path, "rb") as f:
                        body = f.read()
                except OSError as e:
                    raise TestFailure(f"Cannot read {path}: {e}") from e
                i += 1
            elif a == "-bodylen":
                body = synth_body(int(self._arg(av, i, a), 0))
                i += 1
            elif a == "-gziplevel":
                self.gzip_level = int(self._arg(av, i, a))
                i += 1
            elif a == "-gzipresidual":
                self.gzip_residual = int(self._arg(av, i, a))
                i += 1
            elif a == "-gzipbody":
                body = self._gzip(self._arg(av, i, a).encode("latin-1"))
                encoding_gzip = True
                i += 1
            elif a == "-gziplen":
                body = self._gzip(synth_body(int(self._arg(av, i, a)), True))
                encoding_gzip = True
                i += 1
            else:
                break
            i += 1
        if i < len(av):
            raise TestFailure(f"Unknown http tx spec: {av[i]}")
        if encoding_gzip:
            out += b"Content-Encoding: gzip" + NL
        if not nohost:
            out += b"Host: " + (self.ctx.macros.get("localhost") or "127.0.0.1").encode() + NL
        if body is not None and not nolen:
            out += f"Content-Length: {len(body)}".encode() + NL
        out += NL
        if body is not None:
            out += body
        return bytes(out)

    def _gzip(self, data: bytes) -> bytes:
        co = zlib.compressobj(self.gzip_level, zlib.DEFLATED, 31, 9)
        return co.compress(data) + co.flush()

    @staticmethod
    def _arg(av: list[str], i: int, opt: str) -> str:
        if i + 1 >= len(av):
            raise TestFailure(f"Missing argument to {opt}")
        return av[i + 1]

    def cmd_txreq(self, av: list[str]) -> None:
        if not self.is_client:
            raise TestFailure("txreq only works on client side")
        method, url, proto = "GET", "/", "HTTP/1.1"
        i = 0
        while i < len(av):
            if av[i] == "-url":
                url = self._arg(av, i, "-url")
            elif av[i] == "-proto":
                proto = self._arg(av, i, "-proto")
            elif av[i] in ("-method", "-req"):
                method = self._arg(av, i, av[i])
            elif av[i] == "-up":
                raise TestSkip("HTTP/2 upgrade (-up) is not supported")
            else:
                break
            i += 2
        self.head_method = method == "HEAD"
        head = f"{method} {url} {proto}".encode("latin-1") + NL
        # No default Host: on an HTTP/1.0 request (HTTP/1.0 has no mandatory Host).
        self.write(self._tx_args(av[i:], head, proto == "HTTP/1.0", None), "txreq")

    def cmd_txresp(self, av: list[str]) -> None:
        if self.is_client:
            raise TestFailure("txresp only works on server side")
        proto, status, reason = "HTTP/1.1", "200", None
        i = 0
        while i < len(av):
            if av[i] == "-proto":
                proto = self._arg(av, i, "-proto")
            elif av[i] == "-status":
                status = self._arg(av, i, "-status")
            elif av[i] in ("-reason", "-msg"):
                reason = self._arg(av, i, av[i])
            else:
                break
            i += 2
        if reason is None:
            reason = "OK"  # varnishtest's default whatever the status
        head = f"{proto} {status} {reason}".encode("latin-1") + NL
        # A response with no body option still says Content-Length: 0 (varnishtest's "nullbody").
        self.write(self._tx_args(av[i:], head, True, b""), "txresp")

    # ---- rx ---------------------------------------------------------------
    def cmd_rxreq(self, av: list[str]) -> None:
        self._server_only("rxreq")
        self._no_args(av, "rxreq")
        self.cmd_rxreqhdrs([])
        self.swallow_body(self.req_hdrs, False)

    def cmd_rxreqhdrs(self, av: list[str]) -> None:
        self._server_only("rxreqhdrs")
        self._no_args(av, "rxreqhdrs")
        self.req, self.req_hdrs = self.rx_head()
        self.body = b""
        self.bodylen = None

    def cmd_rxreqbody(self, av: list[str]) -> None:
        self._server_only("rxreqbody")
        self._no_args(av, "rxreqbody")
        self.body = b""
        self.swallow_body(self.req_hdrs, False)

    def _resp_has_body_until_eof(self) -> bool:
        # varnishtest reads to EOF only for 200 responses without framing.
        return self.resp[1] == "200"

    def cmd_rxresp(self, av: list[str]) -> None:
        self._client_only("rxresp")
        has_obj = True
        for a in av:
            if a == "-no_obj":
                has_obj = False
            else:
                raise TestFailure(f"Unknown http rxresp spec: {a}")
        self.resp, self.resp_hdrs = self.rx_head()
        self.body = b""
        self.bodylen = None
        self.chunklen = 0
        if not has_obj or self.head_method:
            return
        self.swallow_body(self.resp_hdrs, self._resp_has_body_until_eof())

    def cmd_rxresphdrs(self, av: list[str]) -> None:
        self._client_only("rxresphdrs")
        self._no_args(av, "rxresphdrs")
        self.resp, self.resp_hdrs = self.rx_head()
        self.body = b""
        self.bodylen = None

    def cmd_rxrespbody(self, av: list[str]) -> None:
        self._client_only("rxrespbody")
        max_len = 0
        i = 0
        while i < len(av):
            if av[i] == "-max":
                max_len = int(self._arg(av, i, "-max"))
                i += 2
            else:
                raise TestFailure(f"Unknown http rxrespbody spec: {av[i]}")
        # The body read so far stays (vtc_http.c): after "rxrespbody -max N", a plain rxrespbody
        # reads the rest and resp.bodylen counts all of it.
        self.swallow_body(self.resp_hdrs, self._resp_has_body_until_eof(), max_len)

    def cmd_rxchunk(self, av: list[str]) -> None:
        self._no_args(av, "rxchunk")
        self.rx_chunk()

    # ---- expect -----------------------------------------------------------
    def resolve(self, spec: str) -> str | None:
        """expect operands: known names resolve to fields, anything else is a literal."""
        simple = {
            "remote.ip": lambda: self._peer()[0], "remote.port": lambda: self._peer()[1],
            "remote.path": lambda: None,
            "req.method": lambda: self._field(self.req, 0), "req.url": lambda: self._field(self.req, 1),
            "req.proto": lambda: self._field(self.req, 2),
            "resp.proto": lambda: self._field(self.resp, 0), "resp.status": lambda: self._field(self.resp, 1),
            "resp.reason": lambda: self._field(self.resp, 2), "resp.msg": lambda: self._field(self.resp, 2),
            "resp.chunklen": lambda: str(self.chunklen),
            "req.bodylen": self._bodylen, "resp.bodylen": self._bodylen,
            "req.body": lambda: self.body.decode("latin-1"), "resp.body": lambda: self.body.decode("latin-1"),
        }
        if spec in simple:
            return simple[spec]()
        if spec.startswith("req.http."):
            return self.find_header(self.req_hdrs, spec[9:])
        if spec.startswith("resp.http."):
            return self.find_header(self.resp_hdrs, spec[10:])
        return spec

    def _bodylen(self) -> str | None:
        return None if self.bodylen is None else str(self.bodylen)

    @staticmethod
    def _field(parts: list[str], i: int) -> str | None:
        return parts[i] if len(parts) > i else None

    def _peer(self) -> tuple[str, str]:
        try:
            host, port = self._need_sock().getpeername()[:2]
        except OSError:
            return ("", "")
        return str(host), str(port)

    def cmd_expect(self, av: list[str]) -> None:
        if len(av) != 3:
            raise TestFailure(f"expect needs 3 arguments, got {len(av)}")
        lhs, rhs = self.resolve(av[0]), self.resolve(av[2])
        ok = compare(lhs, av[1], rhs)
        cl = "<undef>" if lhs is None else lhs
        cr = "<undef>" if rhs is None else rhs
        if ok is None:
            raise TestFailure(f"EXPECT {av[0]} ({cl}) {av[1]} {av[2]} ({cr}) test not implemented")
        if not ok:
            raise TestFailure(f'EXPECT {av[0]} ({_short(cl)}) {av[1]} "{_short(cr)}" failed')
        self.log(4, f'EXPECT {av[0]} ({_short(cl)}) {av[1]} "{_short(cr)}" match')

    # ---- raw I/O commands --------------------------------------------------
    def cmd_send(self, av: list[str]) -> None:
        self._n_args(av, 1, "send")
        self.write(av[0].encode("latin-1"), "send")

    def cmd_send_n(self, av: list[str]) -> None:
        self._n_args(av, 2, "send_n")
        self.write(av[1].encode("latin-1") * int(av[0]), "send_n")

    def cmd_send_urgent(self, av: list[str]) -> None:
        self._n_args(av, 1, "send_urgent")
        try:
            self._need_sock().send(av[0].encode("latin-1"), socket.MSG_OOB)
        except OSError as e:
            raise IOFailure(f"Write failed: ({e})") from e

    def cmd_sendhex(self, av: list[str]) -> None:
        self._n_args(av, 1, "sendhex")
        hexs = re.sub(r"\s+", "", av[0])
        try:
            data = bytes.fromhex(hexs)
        except ValueError as e:
            raise TestFailure(f"Illegal hex string: {av[0]!r}") from e
        self.write(data, "sendhex")

    def cmd_recv(self, av: list[str]) -> None:
        self._n_args(av, 1, "recv")
        data = self.rx_bytes(int(av[0]))
        self.log.dump(4, "recv", data)

    def cmd_chunked(self, av: list[str]) -> None:
        self._n_args(av, 1, "chunked")
        data = av[0].encode("latin-1")
        self.write(f"{len(data):x}".encode() + NL + data + NL, "chunked")

    def cmd_chunkedlen(self, av: list[str]) -> None:
        self._n_args(av, 1, "chunkedlen")
        n = int(av[0])
        if n == 0:
            self.write(b"0" + NL + NL, "chunked")
            return
        data = bytes(48 + (k & 7) for k in range(n))
        self.write(f"{n:x}".encode() + NL + data + NL, "chunked")

    def cmd_timeout(self, av: list[str]) -> None:
        self._n_args(av, 1, "timeout")
        try:
            self.timeout = float(av[0])
        except ValueError as e:
            raise TestFailure(f"timeout is not a number ({av[0]})") from e

    def cmd_expect_close(self, av: list[str]) -> None:
        self._no_args(av, "expect_close")
        if self.rxbuf:
            raise TestFailure(f"Expecting close: pending data {bytes(self.rxbuf[:32])!r}")
        if self.sock is None:
            self.log(3, "connection already closed, as expected")
            return
        sock = self.sock
        deadline = time.monotonic() + self.timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise IOFailure("Expected close: timeout")
            r, _, _ = select.select([sock], [], [], left)
            if not r:
                continue
            try:
                data = sock.recv(1)
            except OSError:
                data = b""
            if data:
                raise IOFailure(f"Expecting close: read = 1, c = 0x{data[0]:02x}")
            self.log(3, "EOF, as expected")
            return

    def cmd_expect_pattern(self, av: list[str]) -> None:
        self._no_args(av, "expect_pattern")
        for j, b in enumerate(self.body):
            if b != 48 + (j & 7):
                raise TestFailure(f"EXPECT PATTERN FAIL @{j} should 0x{48 + (j & 7):02x} is 0x{b:02x}")
        self.log(4, f"EXPECT PATTERN SUCCESS ({len(self.body)} bytes)")

    def cmd_close(self, av: list[str]) -> None:
        self._server_only("close")
        self._no_args(av, "close")
        if self.sock is not None:
            _close(self.sock)
            self.sock = None
        self.rxbuf.clear()

    def cmd_accept(self, av: list[str]) -> None:
        self._server_only("accept")
        self._no_args(av, "accept")
        if self.sock is not None:
            _close(self.sock)
            self.sock = None
        self.rxbuf.clear()
        self.sock = self.entity.accept_one()

    def cmd_loop(self, av: list[str]) -> None:
        self._n_args(av, 2, "loop")
        for _ in range(int(av[0])):
            self.run(av[1])

    def cmd_fatal(self, av: list[str]) -> None:
        self.non_fatal = False

    def cmd_non_fatal(self, av: list[str]) -> None:
        self.non_fatal = True

    def cmd_write_body(self, av: list[str]) -> None:
        self._n_args(av, 1, "write_body")
        with open(av[0], "wb") as f:
            f.write(self.body)

    def cmd_gunzip(self, av: list[str]) -> None:
        self._no_args(av, "gunzip")
        try:
            self.body = gzip.decompress(self.body)
        except (OSError, EOFError, zlib.error) as e:
            raise TestFailure(f"Gunzip error: {e}") from e
        self.bodylen = len(self.body)
        self.log(4, f"gunzip {len(self.body)} bytes")

    def cmd_barrier(self, av: list[str]) -> None:
        from .barrier import cmd_barrier
        cmd_barrier(self.ctx, self.log, av)

    def cmd_delay(self, av: list[str]) -> None:
        from .runner import cmd_delay
        cmd_delay(self.ctx, self.log, av)

    # ---- argument checks ----------------------------------------------------
    def _client_only(self, what: str) -> None:
        if not self.is_client:
            raise TestFailure(f"{what} only works on client side")

    def _server_only(self, what: str) -> None:
        if self.is_client:
            raise TestFailure(f"{what} only works on server side")

    @staticmethod
    def _no_args(av: list[str], what: str) -> None:
        if av:
            raise TestFailure(f"Unknown http {what} spec: {av[0]}")

    @staticmethod
    def _n_args(av: list[str], n: int, what: str) -> None:
        if len(av) != n:
            raise TestFailure(f"{what} takes {n} argument(s), got {len(av)}")


def _close(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()


def _short(s: str, n: int = 200) -> str:
    s = s.replace("\n", "\\n")
    return s if len(s) <= n else s[:n] + "..."

