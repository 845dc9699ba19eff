"""A shop-style configuration end to end, cacheserver against varnishd 7.1 (skipped without varnishd).

The VCL is written in the manner of the e-commerce ones people run (Magento's varnish7.vcl and the like:
vcl 4.0, std.querysort, std.collect, a purge ACL banning on tag headers, a hash on a vary cookie, ESI
for text, gzip for text and scripts, private responses uncacheable, debug headers in vcl_deliver). The
origin gzips when asked, as a PHP stack behind nginx does. Both servers get the same requests; their
responses must agree in status, the headers VCL sets or that gzip/ESI decide, and bodies.
"""

from __future__ import annotations

import gzip
import os
import re
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from polling import wait_for
from serverproc import ServerProcess
from varnishd_port import listen_port

VARNISHD = os.environ.get("VARNISHD", "/usr/sbin/varnishd")

VCL = """vcl 4.0;
import std;

backend default { .host = "127.0.0.1"; .port = "%(port)d"; .first_byte_timeout = 60s; }

acl purge { "127.0.0.1"; }

sub vcl_recv {
    if (req.method == "PURGE") {
        if (client.ip !~ purge) { return (synth(405, "Method not allowed")); }
        if (!req.http.X-Shop-Tags-Pattern) { return (synth(400, "X-Shop-Tags-Pattern required")); }
        ban("obj.http.X-Shop-Tags ~ " + req.http.X-Shop-Tags-Pattern);
        return (synth(200, "Purged"));
    }
    if (req.method != "GET" && req.method != "HEAD") { return (pass); }
    if (req.url ~ "/checkout") { return (pass); }
    if (req.url ~ "\\?.+&.+") { set req.url = std.querysort(req.url); }
    std.collect(req.http.Cookie);
    set req.http.grace = "none";
    return (hash);
}

sub vcl_hash {
    if (req.http.cookie ~ "X-Shop-Vary=") {
        hash_data(regsub(req.http.cookie, "^.*?X-Shop-Vary=([^;]+);*.*$", "\\1"));
    }
}

sub vcl_backend_response {
    if (beresp.status >= 500) {
        set beresp.uncacheable = true;
        set beresp.ttl = 120s;
        return (deliver);
    }
    set beresp.grace = 3d;
    if (beresp.http.content-type ~ "text") {
        set beresp.do_esi = true;
    }
    if (bereq.url ~ "\\.js$" || beresp.http.content-type ~ "text|javascript|json|css") {
        set beresp.do_gzip = true;
    }
    if (beresp.http.Cache-Control ~ "private") {
        set beresp.uncacheable = true;
        set beresp.ttl = 86400s;
        return (deliver);
    }
    if (beresp.ttl <= 0s || beresp.http.Cache-Control ~ "no-cache|no-store") {
        set beresp.ttl = 120s;
        set beresp.uncacheable = true;
    }
    return (deliver);
}

sub vcl_deliver {
    if (obj.uncacheable) {
        set resp.http.X-Shop-Cache-Debug = "UNCACHEABLE";
    } else if (obj.hits) {
        set resp.http.X-Shop-Cache-Debug = "HIT";
        set resp.http.Grace = req.http.grace;
    } else {
        set resp.http.X-Shop-Cache-Debug = "MISS";
    }
    set resp.http.X-Esi-Level = req.esi_level;
    if (resp.http.Cache-Control !~ "private" && req.url !~ "^/static/") {
        set resp.http.Pragma = "no-cache";
        set resp.http.Expires = "-1";
        set resp.http.Cache-Control = "no-store, no-cache, must-revalidate, max-age=0";
    }
    unset resp.http.Age;
    unset resp.http.X-Shop-Tags;
    unset resp.http.Server;
    unset resp.http.X-Varnish;
    unset resp.http.Via;
}
"""

PAGES = {
    "/": ("text/html", "public, max-age=86400", "cat_1,home",
          b"<html><head><title>Shop</title></head><body>\n"
          b'<esi:include src="/block/header"/>\n<main>Welcome</main>\n'
          b'<esi:include src="/block/cart"/>\n<esi:include src="/block/footer"/>\n</body></html>\n'),
    "/block/header": ("text/html", "public, max-age=86400", "block_header",
                      b"<header>Header <esi:include src=\"/block/menu\"/></header>"),
    "/block/menu": ("text/html", "public, max-age=86400", "block_menu", b"<nav>" + b"menu " * 200 + b"</nav>"),
    "/block/cart": ("text/html", "private, max-age=0", "", b"<div>cart: 0 items</div>"),
    "/block/footer": ("text/html", "public, max-age=86400", "block_footer", b"<footer>Footer</footer>"),
    "/static/app.js": ("application/javascript", "public, max-age=86400", "", b"var x = 1;\n" * 300),
    "/product?a=1&b=2": ("text/html", "public, max-age=86400", "product_7",
                         b"<html><p>product</p><esi:include src=\"/block/footer\"/></html>"),
}


class _Origin(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    tag_header = "X-Shop-Tags"
    probes_answered: list[str]          # per _compare: a client line per health check answered

    def do_GET(self) -> None:
        if self.path.endswith("/health_check.php"):
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")
            self.wfile.flush()
            self.probes_answered.append(self.client_address[0])
            return
        page = PAGES.get(self.path)
        if page is None:
            body, ctype, cc, tags = b"not found", "text/plain", "no-cache", ""
            self.send_response(404)
        else:
            ctype, cc, tags, body = page
            self.send_response(200)
        self.send_header("Content-Type", ctype)
        self.send_header("Cache-Control", cc)
        if tags:
            self.send_header(self.tag_header, tags)
        if "gzip" in self.headers.get("Accept-Encoding", ""):
            body = gzip.compress(body, mtime=0)
            self.send_header("Content-Encoding", "gzip")
            self.send_header("Vary", "Accept-Encoding")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


REQUESTS = [
    ("GET", "/", {"Accept-Encoding": "gzip"}),
    ("GET", "/", {}),
    ("GET", "/", {"Accept-Encoding": "gzip, deflate"}),
    ("GET", "/block/header", {}),
    ("GET", "/static/app.js", {"Accept-Encoding": "gzip"}),
    ("GET", "/static/app.js", {}),
    ("GET", "/product?b=2&a=1", {}),
    ("GET", "/product?a=1&b=2", {"Accept-Encoding": "gzip"}),
    ("PURGE", "/", {"X-Shop-Tags-Pattern": "block_footer"}),
    ("GET", "/", {}),
    ("GET", "/missing", {}),
    ("GET", "/", {"Cookie": "X-Shop-Vary=abc; other=1"}),
]

COMPARED = ("x-shop-cache-debug", "x-magento-cache-debug", "content-encoding", "cache-control", "pragma", "expires", "vary",
            "x-esi-level", "grace", "content-type", "transfer-encoding")


def _exchange(port: int, method: str, url: str, headers: dict[str, str]) -> tuple[int, dict, bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        head = f"{method} {url} HTTP/1.1\r\nHost: shop.example\r\nConnection: close\r\n"
        head += "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        sock.sendall(head.encode() + b"\r\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    raw_head, _, body = data.partition(b"\r\n\r\n")
    lines = raw_head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    hdrs = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        hdrs[k.strip().lower()] = v.strip()
    if hdrs.get("transfer-encoding") == "chunked":
        out, rest = b"", body
        while True:
            size_line, _, rest = rest.partition(b"\r\n")
            size = int(size_line, 16)
            if size == 0:
                break
            out, rest = out + rest[:size], rest[size + 2:]
        body = out
    if hdrs.get("content-encoding") == "gzip" and body:
        body = gzip.decompress(body)
    body = re.sub(rb"XID: \d+", b"XID: n", body)          # synthetic pages name their transaction
    return status, {k: hdrs.get(k) for k in COMPARED}, body


def _run(port: int, requests: list) -> list[tuple[int, dict, bytes]]:
    out = []
    for method, url, headers in requests:
        out.append(_exchange(port, method, url, headers))
        time.sleep(0.05)
    return out


def _compare(vcl_text: str, tag_header: str, requests: list) -> None:
    """Run `requests` through cacheserver, then through varnishd, with the same VCL and origin."""
    answered: list[str] = []
    handler = type("Origin", (_Origin,), {"tag_header": tag_header, "probes_answered": answered})
    probed = ".probe" in vcl_text

    def first_probe_answered() -> None:
        """A probe's first answer makes the backend healthy (.initial is threshold - 1): wait for it."""
        if probed:
            wait_for(lambda: answered, what="the backend probe's first answer")

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    tmp = tempfile.mkdtemp(prefix="esi-shop-")
    os.chmod(tmp, 0o755)                      # varnishd drops to user varnish
    try:
        vcl = Path(tmp, "shop.vcl")
        vcl.write_text(vcl_text.replace("%(port)d", str(httpd.server_address[1])))
        os.chmod(vcl, 0o644)
        ours = ServerProcess("-f", str(vcl))
        try:
            first_probe_answered()
            got = _run(ours.port, requests)
        finally:
            ours.stop()
        answered.clear()                      # (ours is stopped: its probes are over)
        subprocess.run([VARNISHD, "-n", os.path.join(tmp, "n"), "-a", "127.0.0.1:0", "-f", str(vcl),
                        "-P", os.path.join(tmp, "pid"), "-T", "127.0.0.1:0"], check=True, capture_output=True,
                       timeout=60)
        try:
            port = listen_port(os.path.join(tmp, "n"))
            first_probe_answered()
            want = _run(port, requests)
        finally:
            os.kill(int(Path(tmp, "pid").read_text()), 15)
    finally:
        httpd.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)
    for (method, url, headers), g, w in zip(requests, got, want, strict=True):
        assert g == w, (method, url, headers)


@pytest.mark.skipif(not os.access(VARNISHD, os.X_OK), reason="varnishd is not installed")
def test_shop_configuration_agrees_with_varnishd() -> None:
    _compare(VCL, "X-Shop-Tags", REQUESTS)


MAGENTO_VCL = os.environ.get("MAGENTO_VARNISH7_VCL", "")


@pytest.mark.skipif(not os.access(VARNISHD, os.X_OK) or not os.path.isfile(MAGENTO_VCL),
                    reason="needs varnishd and MAGENTO_VARNISH7_VCL (the path of Magento 2's published "
                           "app/code/Magento/PageCache/etc/varnish7.vcl, not shipped here)")
def test_magento_varnish7_vcl_agrees_with_varnishd() -> None:
    """Magento 2's own varnish7.vcl, its template placeholders filled as Magento's exporter does."""
    text = Path(MAGENTO_VCL).read_text()
    for placeholder, value in (("/* {{ host }} */", "127.0.0.1"), ("/* {{ port }} */", "%(port)d"),
                               ("/* {{ ips }} */", '    "127.0.0.1";'),
                               ("/* {{ ssl_offloaded_header }} */", "X-Forwarded-Proto"),
                               ("/* {{ grace_period }} */", "300"), ("/* {{ design_exceptions_code }} */", "")):
        text = text.replace(placeholder, value)
    requests = [(m, u, {("X-Magento-Tags-Pattern" if k == "X-Shop-Tags-Pattern" else k):
                        (v.replace("X-Shop-Vary", "X-Magento-Vary")) for k, v in h.items()})
                for m, u, h in REQUESTS]
    requests.append(("GET", "/?utm_source=x&b=1", {"Accept-Encoding": "gzip"}))
    _compare(text, "X-Magento-Tags", requests)
