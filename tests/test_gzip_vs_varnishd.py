"""The gzip bytes a client gets, against varnishd 7.1.1's for the same backend input.

Recorded from varnishd 7.1.1 (these run without it): what `beresp.do_gzip` makes of a body under
several gzip_level / gzip_memlevel settings, with its `Gzip` record; and an ESI page, stored gzipped,
that includes eight backend-gzipped fragments (one for each bit position where a fragment's deflate
data can stop, so each of ved_gzgz's paddings is used) and a plain one. The last test runs both
servers on the same origin and compares the bytes (skipped without varnishd).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import zlib
from pathlib import Path

import pytest
from serverproc import ServerProcess
from varnishd_port import listen_port

from cacheserver.counters import Counters
from cacheserver.filters import FetchCtx, open_chain, stack
from cacheserver.params import Params
from cacheserver.storage import ObjCore
from vcl.runtime import HttpMessage

VARNISHD = os.environ.get("VARNISHD", "/usr/sbin/varnishd")

HTML = b"<html><body>" + b"<p>Hello, world!</p>\n" * 200 + b"</body></html>\n"

# (gzip_level, gzip_memlevel, body, varnishd's stored bytes, its "G F -" record)
DO_GZIP = [
    (6, 8, b"FOOOOOOBAR", "1f8b080000000000000373f3070327c72000ee2e38cb0a000000", "G F - 10 26 80 80 142"),
    (6, 8, b"FOOOOOOBAR" * 3 + b"\n", "1f8b080000000000000373f3070327c720372c2c2e00e9245bb71f000000",
     "G F - 31 30 80 80 174"),
    (6, 8, HTML, "1f8b0800000000000003edd8b10980301040d13e53682fdc02c7d5ce2111529c5c9040707b21d920f56fdf084f4b"
     "7bdcf48afc99563b6ff738b61eafe75da55a0241100441100441100441105c4199dd20e31ed20fc637cbd683100000",
     "G F - 4227 93 80 80 676"),
    (9, 1, b"FOOOOOOBAR", "1f8b080000000000020373f3070327c72000ee2e38cb0a000000", "G F - 10 26 80 80 142"),
    (0, 8, b"FOOOOOOBAR", "1f8b0800000000000403010a00f5ff464f4f4f4f4f4f424152ee2e38cb0a000000",
     "G F - 10 33 80 80 200"),
    (1, 9, HTML, "1f8b0800000000000403b3c928c9cdb1b349ca4fa9b4b329b0f348cdc9c9d75128cf2fca4951b4d12fb0e31a151c0d"
     "90d1c4309a11464b86d15271b44618ad0d476bc3d1da70b4361cad0d476bc3d1da70b4361cad0dc9a90df521c30dfae0b107"
     "2e00c637cbd683100000", "G F - 4227 107 80 80 790"),
]


@pytest.mark.parametrize("level, memlevel, body, want, record", DO_GZIP,
                         ids=[f"level{c[0]}-mem{c[1]}-{len(c[2])}B" for c in DO_GZIP])
def test_do_gzip_makes_varnishds_bytes_and_record(level, memlevel, body, want, record) -> None:
    params = Params()
    params.set("gzip_level", str(level))
    params.set("gzip_memlevel", str(memlevel))
    resp = HttpMessage()
    resp.status = 200
    log: list = []
    oc = ObjCore()
    oc.private = False                        # an object for the cache (a pass is not scanned)
    chain = open_chain(stack("vfp", "gzip"), FetchCtx(resp, oc, params, Counters(), None, log))
    half = len(body) // 2
    out = b"".join([*chain.push(body[:half]), *chain.push(body[half:]), *chain.end()])
    chain.close()
    assert out.hex() == want
    assert log == [("Gzip", record)]


# Eight backend-gzipped fragments (zlib level 6), whose deflate data stop at bit 0..7 of a byte.
FRAGMENTS = {
    "/f0": "1f8b08000000000000034b2b4a4c5730524843a1003160762b15000000",
    "/f1": "1f8b08000000000000034b2b4a4c57305648c3460100de6b2ae31c000000",
    "/f2": "1f8b08000000000000034b2b4a4c5730500000f7cb26ed07000000",
    "/f3": "1f8b08000000000000034b2b4a4c573034305148238201003162d88f2d000000",
    "/f4": "1f8b08000000000000034b2b4a4c573004028534380b00d58f3f2f14000000",
    "/f5": "1f8b08000000000000034b2b4a4c5730340002438534243600c9d7916918000000",
    "/f6": "1f8b08000000000000034b2b4a4c5730020285342c2c004c4702241e000000",
    "/f7": "1f8b08000000000000034b2b4a4c57305448835000944724530e000000",
}
PAGE = (b"<html>" + b"".join(b'<p>%d</p><esi:include src="/f%d"/>' % (i, i) for i in range(8))
        + b'<esi:include src="/plain"/><esi:remove>gone</esi:remove>end</html>\n')
# varnishd 7.1.1's answer for PAGE with Accept-Encoding: gzip (the page stored gzipped: do_esi on a
# backend gzip, or do_esi + do_gzip on a plain one)
PAGE_GZ = (
    "1f8b0800000000000203b2c928c9cdb1b329b033b0d12fb003000000ffff4a2b4a4c5730524843a100b229b033b4d12fb003"
    "000000ffff4a2b4a4c57305648c34601000000ffffb229b033b2d12fb003000000ffff4a2b4a4c5730500008208000b229b0"
    "33b6d12fb003000000ffff4a2b4a4c573034305148238201000000ffffb229b033b1d12fb003000000ffff4a2b4a4c573004"
    "028534380b208000b229b033b5d12fb003000000ffff4a2b4a4c57303400024385342436000000ffffb229b033b3d12fb003"
    "000000ffff4a2b4a4c5730020285342c2c8000b229b033b7d12fb003000000ffff4a2b4a4c57305448835000000000ffff00"
    "0f00f0ff706c61696e20667261676d656e740a4acd4bb1d1cf28c9cdb1e302000000ffff010000ffff86aef1fd1d010000")

VCL = """vcl 4.1;
backend default { .host = "127.0.0.1"; .port = "%(port)d"; }
sub vcl_backend_response {
    if (bereq.url ~ "^/esi") { set beresp.do_esi = true; }
    if (bereq.url ~ "dogzip") { set beresp.do_gzip = true; }
}
"""


class _Origin:
    """A keep-alive HTTP/1.1 origin answering each path with fixed headers and body."""

    def __init__(self, pages: dict[str, tuple[dict[str, str], bytes]]) -> None:
        self.pages = pages
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        conn.settimeout(30)
        with conn, conn.makefile("rb") as f:
            while line := f.readline():
                path = line.split()[1].decode()
                while f.readline() not in (b"\r\n", b"\n", b""):
                    pass
                headers, body = self.pages.get(path, ({}, b"missing"))
                head = "HTTP/1.1 200 OK\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
                conn.sendall(f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body)

    def close(self) -> None:
        self.sock.close()


def _get(port: int, path: str, gzip: bool) -> bytes:
    """The body as it came on the wire (de-chunked, not decoded)."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        ae = "Accept-Encoding: gzip\r\n" if gzip else ""
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n{ae}Connection: close\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    if b"transfer-encoding: chunked" in head.lower():
        out = b""
        while True:
            size, _, body = body.partition(b"\r\n")
            n = int(size, 16)
            if n == 0:
                return out
            out, body = out + body[:n], body[n + 2:]
    return body


def _pages() -> dict[str, tuple[dict[str, str], bytes]]:
    gz = {"Content-Encoding": "gzip"}
    pages = {k: (gz, bytes.fromhex(v)) for k, v in FRAGMENTS.items()}
    pages["/plain"] = ({}, b"plain fragment\n")
    pages["/esi-dogzip"] = ({}, PAGE)
    pages["/esi-gz"] = (gz, zlib.compress(PAGE, 6, wbits=31))
    return pages


def _ours(pages, requests: list[tuple[str, bool]], *args: str) -> list[bytes]:
    origin = _Origin(pages)
    tmp = tempfile.mkdtemp(prefix="gzip-vs-")
    try:
        vcl = Path(tmp, "t.vcl")
        vcl.write_text(VCL % {"port": origin.port})
        server = ServerProcess("-f", str(vcl), *args)
        try:
            return [_get(server.port, path, gz) for path, gz in requests]
        finally:
            server.stop()
    finally:
        origin.close()
        shutil.rmtree(tmp, ignore_errors=True)


def test_esi_page_with_gzipped_fragments_is_varnishds_bytes() -> None:
    """The first request fetches every fragment while the page is delivered (each spliced once its
    fetch is complete); the second finds them all cached; a client without gzip gets the plain page."""
    got = _ours(_pages(), [("/esi-dogzip", True), ("/esi-dogzip", True), ("/esi-gz", True),
                           ("/esi-gz", False)])
    assert got[0].hex() == PAGE_GZ
    assert got[1].hex() == PAGE_GZ
    assert got[2].hex() == PAGE_GZ
    assert got[3] == zlib.decompress(bytes.fromhex(PAGE_GZ), 31)


@pytest.mark.skipif(not os.access(VARNISHD, os.X_OK), reason="varnishd is not installed")
def test_same_bytes_as_varnishd_for_the_same_origin() -> None:
    """Fragments of every zlib level and flush pattern, bigger pages, do_gzip under other settings."""
    pages = _pages()
    text = b"".join(b"<li>item %d %s</li>\n" % (i, b"ab" * (i % 17)) for i in range(4000))
    includes = b""
    for level in (1, 6, 9):
        pages[f"/big{level}"] = ({"Content-Encoding": "gzip"}, zlib.compress(text, level, wbits=31))
        includes += b'<esi:include src="/big%d"/>' % level
    z = zlib.compressobj(6, zlib.DEFLATED, 31)
    pages["/synced"] = ({"Content-Encoding": "gzip"},
                        b"".join(z.compress(text[i:i + 999]) + z.flush(zlib.Z_SYNC_FLUSH)
                                 for i in range(0, len(text), 999)) + z.flush())
    includes += b'<esi:include src="/synced"/>'
    # a page stored gzipped (fragments spliced) and one stored plain (fragments gunzipped into it)
    pages["/esi-big-dogzip"] = pages["/esi-big"] = ({}, b"<html>" + includes + PAGE + b"</html>")
    pages["/dogzip-text"] = ({}, text)
    requests = [("/esi-big-dogzip", True), ("/esi-big-dogzip", True), ("/esi-big-dogzip", False),
                ("/esi-big", True), ("/dogzip-text", True), ("/dogzip-text", False), ("/big9", True),
                ("/big9", False)]
    params = ("-p", "gzip_level=3", "-p", "gzip_memlevel=5", "-p", "feature=+esi_disable_xml_check")
    got = _ours(pages, requests, *params)

    origin = _Origin(pages)
    tmp = tempfile.mkdtemp(prefix="gzip-vs-v-")
    os.chmod(tmp, 0o755)                      # varnishd drops to user varnish
    try:
        vcl = Path(tmp, "t.vcl")
        vcl.write_text(VCL % {"port": origin.port})
        os.chmod(vcl, 0o644)
        subprocess.run([VARNISHD, "-n", f"{tmp}/n", "-a", "127.0.0.1:0", "-f", str(vcl), "-P", f"{tmp}/pid",
                        "-T", "127.0.0.1:0", *params], check=True, capture_output=True, timeout=60)
        try:
            port = listen_port(f"{tmp}/n")
            want = [_get(port, path, gz) for path, gz in requests]
        finally:
            os.kill(int(Path(tmp, "pid").read_text()), 15)
    finally:
        origin.close()
        shutil.rmtree(tmp, ignore_errors=True)
    for (path, gz), g, w in zip(requests, got, want, strict=True):
        assert g == w, (path, gz, len(g), len(w))


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
