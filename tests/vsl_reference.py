"""The log records varnishd 7.1 and cacheserver write for the same traffic: records and re-checks
tests/test_vsl_records.py.

A scenario is a VCL body (the backend `default` is prepended), what the origin answers per URL, and the
raw requests a client sends on one connection, each followed by reading its response. `records(scn,
server)` runs it against `"cacheserver"` (its ring, read with VslReader) or `"varnishd"` (its shared
memory log, read with `varnishlog -d -g raw`) and returns the transactions as
`[(vxid - first vxid, [(tag, text), ...]), ...]` in vxid order, texts normalised (`normalise`) so that
what changes from run to run (times, ports, file descriptors, dates) does not count.

`python tests/vsl_reference.py [NAME...]` prints varnishd's record of each scenario in the test file's
layout, to paste into RECORDED there.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from polling import wait_gone  # noqa: E402
from serverproc import ServerProcess  # noqa: E402
from varnishd_port import listen_port  # noqa: E402

VARNISHD = os.environ.get("VARNISHD", "/usr/sbin/varnishd")
VARNISHLOG = shutil.which("varnishlog") or "/usr/bin/varnishlog"
# Records that depend on the host or on varnishd's internals and say nothing about the traffic.
IGNORED_TAGS = frozenset({"Debug", "VSL", "CLI", "WorkThread", "Witness"})


def have_varnishd() -> bool:
    return os.access(VARNISHD, os.X_OK) and os.access(VARNISHLOG, os.X_OK)


@dataclass
class Scenario:
    vcl: str
    # url -> raw response bytes the origin sends (then it keeps the connection)
    origin: dict[str, bytes]
    # raw requests, sent one after the other on one client connection
    requests: list[bytes]
    params: tuple[str, ...] = ()
    # transactions expected in the log when the traffic is done (sessions, requests, fetches)
    transactions: int = 0
    extra: dict = field(default_factory=dict)


def response(body: bytes = b"", status: str = "200 OK", headers: tuple[str, ...] = ()) -> bytes:
    """A raw origin response with a Content-Length."""
    head = [f"HTTP/1.1 {status}", *headers, f"Content-Length: {len(body)}"]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


class Origin:
    """A threaded origin that answers each request by its URL from a table (404 for others)."""

    def __init__(self, pages: dict[str, bytes]) -> None:
        self.pages = pages
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.closed:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        conn.settimeout(10)
        buf = b""
        try:
            while True:
                while b"\r\n\r\n" not in buf:
                    data = conn.recv(65536)
                    if not data:
                        return
                    buf += data
                head, _, buf = buf.partition(b"\r\n\r\n")
                lines = head.split(b"\r\n")
                url = lines[0].split(b" ")[1].decode()
                clen = 0
                for line in lines[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        clen = int(value)
                while len(buf) < clen:
                    buf += conn.recv(65536)
                buf = buf[clen:]
                conn.sendall(self.pages.get(url, response(b"", "404 Not Found")))
        except OSError:
            return
        finally:
            conn.close()

    def close(self) -> None:
        self.closed = True
        self.sock.close()


# -- normalising ------------------------------------------------------------------------------------

_RULES: dict[str, list[tuple[re.Pattern, str]]] = {
    "Timestamp": [(re.compile(r"^(\w+): \S+ \S+ \S+$"), r"\1: T")],
    "SessOpen": [(re.compile(r"^(\S+) \d+ (\S+) (\S+) \d+ \S+ \d+$"), r"\1 PORT \2 \3 PORT T FD")],
    "ReqStart": [(re.compile(r"^(\S+) \d+ (\S+)$"), r"\1 PORT \2")],
    "SessClose": [(re.compile(r"^(\S+) \S+$"), r"\1 T")],
    "BackendOpen": [(re.compile(r"^\d+ (\S+) (\S+) \d+ (\S+) \d+ (\w+)$"), r"FD \1 \2 PORT \3 PORT \4")],
    "BackendClose": [(re.compile(r"^\d+ "), "FD ")],
    "BackendReuse": [(re.compile(r"^\d+ "), "FD ")],
    "TTL": [(re.compile(r"^(RFC|VCL|HFP|HFM) (.*)$"), None)],
    "Hit": [(re.compile(r"^(\d+) (\S+) (\S+) (\S+)$"), None)],
}
_DATE = re.compile(r"^(Date|Last-Modified|Expires): .*GMT$", re.I)
_TS = re.compile(r"^1\d{9}$")


def _ttl(text: str) -> str:
    # "RFC ttl grace keep now age [date expires max-age cacheable]": times since the epoch become T
    return " ".join("T" if _TS.match(w) else w for w in text.split(" "))


def normalise(tag: str, text: str, base: int) -> str:
    """What stays the same between two runs of the same traffic."""
    if tag in ("Link", "Begin"):
        parts = text.split(" ")
        if len(parts) >= 2 and parts[1].isdigit() and int(parts[1]) >= base:
            parts[1] = str(int(parts[1]) - base)
        return " ".join(parts)
    if tag in ("ReqHeader", "RespHeader", "BereqHeader", "BerespHeader", "ObjHeader"):
        if _DATE.match(text):
            return text.split(":")[0] + ": DATE"
        if text.lower().startswith("x-varnish:"):
            return "X-Varnish: " + " ".join(str(int(v) - base) for v in text.split(":", 1)[1].split())
        return text
    if tag == "TTL":
        return _ttl(text)
    if tag == "Hit":
        # "vxid ttl-left grace keep [fetched length]": what is left of the TTL to the second; the
        # last two only while the object is still being fetched, which depends on timing
        w = text.split(" ")
        return " ".join([str(int(w[0]) - base), "%.0f" % float(w[1]), *w[2:4]])
    for rx, repl in _RULES.get(tag, ()):
        if repl is not None:
            return rx.sub(repl, text)
    return text


def group(raw: list[tuple[int, str, str]]) -> list[tuple[int, list[tuple[str, str]]]]:
    """[(vxid, tag, text)] -> [(vxid - first, [(tag, normalised text)])] in vxid order."""
    vxids = sorted({v for v, _, _ in raw if v})
    if not vxids:
        return []
    base = vxids[0]
    by: dict[int, list[tuple[str, str]]] = {v: [] for v in vxids}
    # X-Varnish carries vxids, whose digits count in ReqAcct / BereqAcct: count them as normalised
    delta: dict[int, int] = {}
    for v, tag, text in raw:
        if not v or tag in IGNORED_TAGS:
            continue
        norm = normalise(tag, text, base)
        if text.lower().startswith("x-varnish:"):
            if tag in ("RespHeader", "BereqHeader"):
                delta[v] = len(norm) - len(text)
            elif tag in ("RespUnset", "BereqUnset"):
                delta[v] = 0
        elif tag in ("ReqAcct", "BereqAcct") and delta.get(v):
            f = [int(x) for x in text.split()]
            at = 3 if tag == "ReqAcct" else 0
            if f[at] == 0:
                by[v].append((tag, norm))      # no head was sent (an ESI include)
                continue
            f[at] += delta[v]
            f[at + 2] += delta[v]
            norm = " ".join(map(str, f))
        by[v].append((tag, norm))
    return [(v - base, by[v]) for v in vxids]


# -- running ----------------------------------------------------------------------------------------

def _vcl(scn: Scenario, port: int) -> str:
    return f'vcl 4.1;\nbackend default {{ .host = "127.0.0.1"; .port = "{port}"; }}\n{scn.vcl}\n'


def _read_chunked(sock: socket.socket, data: bytes) -> None:
    """Read a chunked body to its last chunk (read_response reads those to the close)."""
    while not re.search(rb"(^|\r\n)0\r\n\r\n$", data):
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed inside a chunked body")
        data += chunk


def _client(port: int, requests: list[bytes]) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        for req in requests:
            sock.sendall(req)
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = sock.recv(1)
                if not chunk:
                    raise ConnectionError("closed before a response")
                head += chunk
            if re.search(rb"\r\ntransfer-encoding:\s*chunked", head, re.I):
                _read_chunked(sock, b"")
            else:
                rest = head.partition(b"\r\n\r\n")[0]
                m = re.search(rb"\r\ncontent-length:\s*(\d+)", rest, re.I)
                want = int(m.group(1)) if m and not req.startswith(b"HEAD") else 0
                body = b""
                while len(body) < want:
                    chunk = sock.recv(want - len(body))
                    if not chunk:
                        raise ConnectionError("closed inside a body")
                    body += chunk


def _ends(raw: list[tuple[int, str, str]]) -> int:
    return sum(1 for v, tag, _ in raw if v and tag == "End")


def records(scn: Scenario, server: str) -> list[tuple[int, list[tuple[str, str]]]]:
    """Run the scenario against "cacheserver" or "varnishd"; its transactions, normalised."""
    origin = Origin(scn.origin)
    tmp = tempfile.mkdtemp(prefix="vsl-ref-")
    os.chmod(tmp, 0o755)             # varnishd drops to user varnish
    vcl = Path(tmp, "t.vcl")
    vcl.write_text(_vcl(scn, origin.port))
    os.chmod(vcl, 0o644)
    work = os.path.join(tmp, "n")
    try:
        if server == "cacheserver":
            return _run_ours(scn, vcl, work)
        return _run_varnishd(scn, vcl, work, tmp)
    finally:
        origin.close()
        shutil.rmtree(tmp, ignore_errors=True)


def _poll(read, want: int, timeout: float = 10.0) -> list[tuple[int, str, str]]:
    deadline = time.monotonic() + timeout
    raw: list[tuple[int, str, str]] = []
    while True:
        raw = read()
        if _ends(raw) >= want or time.monotonic() > deadline:
            return raw
        time.sleep(0.05)


def _run_ours(scn: Scenario, vcl: Path, work: str) -> list:
    from cacheserver.vsl import Record, VslReader

    params = [a for p in scn.params for a in ("-p", p)]
    srv = ServerProcess("-f", str(vcl), "-n", work, *params)
    try:
        _client(srv.port, scn.requests)

        def read() -> list[tuple[int, str, str]]:
            reader = VslReader(work)
            try:
                return [(r.vxid, r.tag, r.text) for r in reader.read() if isinstance(r, Record)]
            finally:
                reader.close()
        raw = _poll(read, scn.transactions)
    finally:
        srv.stop()
    return group(raw)


_RAW_LINE = re.compile(r"^\s*(\d+) (\S+)\s+(\S) ?(.*)$")


def _run_varnishd(scn: Scenario, vcl: Path, work: str, tmp: str) -> list:
    args = [VARNISHD, "-n", work, "-a", "127.0.0.1:0", "-f", str(vcl), "-P",
            os.path.join(tmp, "pid"), "-s", "malloc,64m", "-T", "127.0.0.1:0"]
    for p in scn.params:
        args += ["-p", p]
    subprocess.run(args, check=True, capture_output=True, timeout=60)
    try:
        port = listen_port(work)
        skip = _ends(_varnishlog(work))
        _client(port, scn.requests)
        raw = _poll(lambda: _varnishlog(work), skip + scn.transactions)
        # drop what ended before the client came (the first `skip` to end)
        done = 0
        dropped: set[int] = set()
        for v, tag, _ in raw:
            if done >= skip:
                break
            if v and tag == "End":
                done += 1
                dropped.add(v)
        raw = [r for r in raw if r[0] not in dropped]
    finally:
        pid = int(Path(tmp, "pid").read_text())
        os.kill(pid, 15)
        wait_gone(pid)                # before the caller removes its directory
    return group(raw)


def _varnishlog(work: str) -> list[tuple[int, str, str]]:
    out = subprocess.run([VARNISHLOG, "-d", "-g", "raw", "-n", work], capture_output=True, text=True,
                         timeout=10).stdout
    raw = []
    for line in out.splitlines():
        m = _RAW_LINE.match(line)
        if m:
            raw.append((int(m.group(1)), m.group(2), m.group(4)))
    return raw


def show(txns: list) -> str:
    """The layout RECORDED uses in the test file."""
    out = []
    for v, recs in txns:
        out.append(f"        ({v}, [")
        for tag, text in recs:
            out.append(f"            ({tag!r}, {text!r}),")
        out.append("        ]),")
    return "\n".join(out)


if __name__ == "__main__":
    from test_vsl_records import SCENARIOS

    which = sys.argv[1:] or list(SCENARIOS)
    server = os.environ.get("SERVER", "varnishd")
    for name in which:
        print(f"    {name!r}: [")
        print(show(records(SCENARIOS[name], server)))
        print("    ],")
