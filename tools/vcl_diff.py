"""Run published VCL files through cacheserver and varnishd 7.1 and report where the responses differ.

    python tools/vcl_diff.py [--report FILE] [--keep] MAIN.vcl [MAIN.vcl ...]

Each VCL file (and the files beside it, for includes) is copied to a world-readable scratch directory
(varnishd drops to user `varnish`) with every backend's `.host`/`.port` pointed at one origin on
127.0.0.1. The origin behaves like the applications such VCL fronts (PHP shops, CMSs, APIs): cache
headers of every kind, Set-Cookie, Vary, ESI with Surrogate-Control, gzip when asked, tag headers,
304s to conditional requests, errors, slow pages. The same scripted requests go to each server, one
server at a time, each against a fresh origin. Compared, per request: status, the headers that do
not vary by run (Date and the X-Varnish ids left out, Age as zero or not), the body as sent and
decoded; and, per run, what the origin was asked (method, URL, the request headers that VCL shapes).
"""

from __future__ import annotations

import argparse
import gzip
import http.client
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from dataclasses import dataclass, field
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VARNISHD = os.environ.get("VARNISHD", "/usr/sbin/varnishd")
VARNISHADM = shutil.which("varnishadm") or "/usr/bin/varnishadm"
HOST = "shop.example"
TAGS = "cat_p_1,home_tag,product_7"
LAST_MODIFIED = "Tue, 01 Nov 2022 10:00:00 GMT"

# ---------------------------------------------------------------- origin

ESI_PAGE = (b"<html><head><title>Home</title></head><body>\n"
            b'<esi:include src="/esi/header"/>\n<main>' + b"Welcome to the shop. " * 40 + b"</main>\n"
            b'<esi:include src="/esi/cart"/>\n</body></html>\n')
PAGE = b"<html><body><h1>Page</h1>" + b"<p>Lorem ipsum dolor sit amet.</p>" * 60 + b"</body></html>\n"


def _route(path: str) -> tuple[int, dict[str, str], bytes]:
    """Status, headers and plain body for a URL; the origin adds gzip, counts and 304s."""
    base = path.split("?", 1)[0]
    html = {"Content-Type": "text/html; charset=UTF-8"}
    public = dict(html, **{"Cache-Control": "public, max-age=600"})
    if base in ("/health_check.php", "/status.php"):
        return 200, {"Content-Type": "text/plain", "Cache-Control": "no-cache"}, b"OK"
    if base == "/":
        return 200, dict(public, **{"Surrogate-Control": 'content="ESI/1.0"', "X-Magento-Tags": TAGS,
                                    "X-Cache-Tags": TAGS, "Cache-Tags": TAGS, "Link": "</a.css>; rel=preload"}), ESI_PAGE
    if base == "/esi/header":
        return 200, dict(public, **{"X-Magento-Tags": "block_header"}), b"<header>Header</header>"
    if base == "/esi/cart":
        return 200, dict(html, **{"Cache-Control": "private, max-age=0"}), b"<div>cart: 0 items</div>"
    if base.startswith("/page/") or base in ("/product", "/customer/account", "/checkout", "/wp-admin/",
                                              "/admin", "/user/login", "/api/item", "/form"):
        return 200, dict(public, **{"X-Magento-Tags": "page", "X-Cache-Tags": "page", "Cache-Tags": "page",
                                    "X-Powered-By": "PHP/8.1"}), PAGE
    if base.endswith(".js") or base.endswith(".css"):
        ctype = "application/javascript" if base.endswith(".js") else "text/css"
        return 200, {"Content-Type": ctype, "Cache-Control": "public, max-age=31536000",
                     "Set-Cookie": "static=1; path=/"}, b"var shop = {};\n" * 200
    if base.endswith(".png"):
        return 200, {"Content-Type": "image/png", "Cache-Control": "max-age=86400"}, bytes(range(256)) * 8
    if base == "/private":
        return 200, dict(html, **{"Cache-Control": "private, no-cache"}), b"<p>private</p>"
    if base == "/nocache":
        return 200, dict(html, **{"Cache-Control": "no-cache, no-store, must-revalidate", "Pragma": "no-cache"}), b"<p>nc</p>"
    if base == "/cookie":
        return 200, dict(public, **{"Set-Cookie": "X-Magento-Vary=abc123; path=/; HttpOnly"}), b"<p>cookie</p>"
    if base == "/expires":
        return 200, dict(html, **{"Expires": formatdate(time.time() + 3600, usegmt=True)}), b"<p>expires</p>"
    if base == "/smaxage":
        return 200, dict(html, **{"Cache-Control": "public, max-age=10, s-maxage=300"}), b"<p>smaxage</p>"
    if base == "/vary-ua":
        return 200, dict(public, **{"Vary": "User-Agent, Accept-Encoding"}), b"<p>vary ua</p>"
    if base == "/vary-star":
        return 200, dict(public, **{"Vary": "*"}), b"<p>vary star</p>"
    if base == "/short":
        return 200, dict(html, **{"Cache-Control": "public, max-age=1"}), b"<p>short</p>"
    if base == "/slow":
        time.sleep(0.4)
        return 200, public, b"<p>slow</p>"
    if base == "/ttl-header":
        return 200, dict(public, **{"X-Reverse-Proxy-TTL": "30", "Cache-Control": "max-age=0"}), b"<p>ttl</p>"
    if base == "/redirect":
        return 301, {"Location": "http://shop.example:8080/new", "Content-Type": "text/html"}, b"moved"
    if base == "/error500":
        return 500, dict(html, **{"Cache-Control": "no-cache"}), b"<h1>Internal error</h1>"
    if base == "/error503":
        return 503, dict(html, **{"Retry-After": "5"}), b"<h1>Maintenance</h1>"
    if base == "/esi-xheader":
        return 200, dict(public, **{"X-ESI": "1"}), b'<p>a</p><esi:include src="/esi/header"/><p>b</p>'
    if base == "/esi-mix":
        return 200, dict(public, **{"Surrogate-Control": 'content="ESI/1.0"', "X-ESI": "1"}), (
                    b'<div><esi:remove>no esi here</esi:remove><!--esi <p>esi on</p> -->'
                     b'<esi:include src="http://shop.example/esi/header"/><esi:include src="/nothing-here"/>'
                     b'<esi:include src="/esi/broken" onerror="continue"/></div>')
    if base == "/esi/broken":
        return 500, html, b"<p>fragment failed</p>"
    if base == "/aged":
        return 200, dict(html, **{"Cache-Control": "public, max-age=600", "Age": "30"}), b"<p>aged</p>"
    if base == "/swr":
        return 200, dict(html, **{"Cache-Control": "public, max-age=1, stale-while-revalidate=30"}), b"<p>swr</p>"
    if base == "/big":
        return 200, dict(public, **{"Content-Type": "text/plain"}), b"".join(b"line %06d of a long text\n" % i
                                                                             for i in range(40000))
    if base == "/json":
        return 200, {"Content-Type": "application/json", "Cache-Control": "public, max-age=60",
                     "Cache-Tags": "/api/item/1"}, b'{"items": [' + b'{"id": 1},' * 50 + b'{"id": 2}]}'
    return 404, dict(html, **{"Cache-Control": "max-age=60"}), b"<h1>Not found</h1>"


SEEN_HEADERS = ("accept-encoding", "cookie", "x-forwarded-for", "surrogate-capability", "host", "if-none-match",
                "if-modified-since", "x-forwarded-port", "x-ua-device", "authorization", "range", "x-forwarded-proto",
                "content-length", "user-agent", "connection", "via", "forwarded", "proxy", "cache-control")


class Origin(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    counts: dict[str, int]
    log: list[str]
    lock: threading.Lock

    def _serve(self) -> None:
        body_in = b""
        if self.headers.get("Content-Length"):
            body_in = self.rfile.read(int(self.headers["Content-Length"]))
        client = self.headers.get("X-Forwarded-For") is not None      # probes carry none
        key = f"{self.command} {self.path}"
        with self.lock:
            if client:
                self.counts[key] = self.counts.get(key, 0) + 1
                seen = " ".join(f"{h}={self.headers[h]!r}" for h in SEEN_HEADERS if h in self.headers)
                self.log.append(f"{key} len={len(body_in)} {seen}")
            count = self.counts.get(key, 0)
        base = self.path.split("?", 1)[0]
        if base == "/reset":
            self.close_connection = True          # no response at all: a backend fetch failure
            return
        status, headers, body = _route(self.path)
        headers = dict(headers, **{"X-Origin-Count": str(count)})
        if base in ("/chunked", "/eof"):
            self._special(base, count)
            return
        if status == 200 and self.command in ("GET", "HEAD"):
            etag = f'"v1-{zlib.crc32(self.path.encode()):08x}"'
            headers["ETag"] = etag
            headers["Last-Modified"] = LAST_MODIFIED
            if self.headers.get("If-None-Match") == etag or self.headers.get("If-Modified-Since") == LAST_MODIFIED:
                status, body = 304, b""
        if body and "gzip" in self.headers.get("Accept-Encoding", "") and not headers.get("Content-Type", "").startswith("image"):
            body = gzip.compress(body, mtime=0)
            headers["Content-Encoding"] = "gzip"
            headers["Vary"] = headers.get("Vary", "Accept-Encoding")
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        if status != 304:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD" and status != 304:
            self.wfile.write(body)

    def _special(self, base: str, count: int) -> None:
        body = b"<p>" + b"streamed body " * 300 + b"</p>"
        if base == "/chunked":
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Cache-Control", "max-age=300")
            self.send_header("X-Origin-Count", str(count))
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            if self.command != "HEAD":
                for i in range(0, len(body), 1000):
                    piece = body[i:i + 1000]
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                self.wfile.write(b"0\r\n\r\n")
            return
        self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nCache-Control: max-age=300\r\n"
                         b"X-Origin-Count: %d\r\nConnection: close\r\n\r\n" % count)
        if self.command != "HEAD":
            self.wfile.write(body)
        self.close_connection = True

    do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = do_PURGE = do_BAN = do_FOO = _serve

    def version_string(self) -> str:
        return "origin/1"

    def log_message(self, *args) -> None:
        pass


def start_origin() -> tuple[ThreadingHTTPServer, type[Origin]]:
    handler = type("OriginRun", (Origin,), {"counts": {}, "log": [], "lock": threading.Lock()})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd, handler

# ---------------------------------------------------------------- requests

GZ = {"Accept-Encoding": "gzip, deflate, br"}
INVALIDATE = {"X-Magento-Tags-Pattern": "home_tag", "X-Cache-Tags": "home_tag", "ApiPlatform-Ban-Regex": "home_tag",
              "X-Host": ".*", "X-Url": ".*", "X-Content-Type": ".*"}

# (method, url, headers, body) or ("SLEEP", seconds)
SCRIPT: list = [
    ("GET", "/", GZ), ("GET", "/", GZ), ("GET", "/", {}), ("HEAD", "/", GZ),
    ("GET", "/product?b=2&a=1", {}), ("GET", "/product?a=1&b=2", GZ),
    ("GET", "/product?utm_source=news&id=5&gclid=x1", {}), ("GET", "/product?id=5", {}),
    ("GET", "/page/1", {"Cookie": "has_js=1; _ga=GA1.2.3; __utma=1"}), ("GET", "/page/1", {"Cookie": "_gat=1"}),
    ("GET", "/page/1", {"Cookie": "SESSabc=1; PHPSESSID=2"}), ("GET", "/page/1", {"Cookie": "wordpress_logged_in_x=1"}),
    ("GET", "/page/2", {"Cookie": "X-Magento-Vary=abc; other=1", **GZ}), ("GET", "/page/2", {"Cookie": "X-Magento-Vary=abc"}),
    ("GET", "/page/2", {"Cookie": "sw-cache-hash=h1; sw-states=logged-in"}),
    ("GET", "/static/app.js", GZ), ("GET", "/static/app.js", {}), ("GET", "/media/logo.png", {"Cookie": "a=1"}),
    ("GET", "/media/logo.png", {}), ("GET", "/style.css?ver=1", GZ), ("GET", "/style.css?ver=1", GZ),
    ("GET", "/private", {}), ("GET", "/private", {}), ("GET", "/nocache", {}), ("GET", "/nocache", {}),
    ("GET", "/cookie", {}), ("GET", "/cookie", {}), ("GET", "/expires", {}), ("GET", "/expires", {}),
    ("GET", "/smaxage", {}), ("GET", "/smaxage", {}),
    ("GET", "/vary-ua", {"User-Agent": "Mozilla/5.0 (iPhone; CPU iPhone OS 15_0 like Mac OS X) Mobile"}),
    ("GET", "/vary-ua", {"User-Agent": "Mozilla/5.0 (Windows NT 10.0; Win64; x64)"}),
    ("GET", "/vary-ua", {"User-Agent": "Mozilla/5.0 (iPhone; CPU iPhone OS 15_0 like Mac OS X) Mobile"}),
    ("GET", "/vary-star", {}), ("GET", "/vary-star", {}),
    ("GET", "/esi-xheader", {}), ("GET", "/json", GZ), ("GET", "/json", {}),
    ("GET", "/product", {"If-None-Match": '"v1-00000000"'}), ("GET", "/product", {}),
    ("GET", "/product", {"If-None-Match": f'"v1-{zlib.crc32(b"/product"):08x}"'}),
    ("GET", "/product", {"If-Modified-Since": LAST_MODIFIED}),
    ("GET", "/error500", {}), ("GET", "/error500", {}), ("GET", "/error503", {}), ("GET", "/error503", {}),
    ("GET", "/slow", {}), ("GET", "/slow", {}),
    ("POST", "/form", {"Content-Type": "application/x-www-form-urlencoded"}, b"a=1&b=2"), ("POST", "/form", {}, b"x"),
    ("PUT", "/api/item", {"Content-Type": "application/json"}, b'{"a": 1}'), ("OPTIONS", "/", {}),
    ("DELETE", "/api/item", {}), ("PATCH", "/api/item", {}, b"{}"),
    ("GET", "/redirect", {}), ("GET", "/ttl-header", {}), ("GET", "/ttl-header", {}),
    ("GET", "/nothing-here", {}), ("GET", "/nothing-here", {}),
    ("GET", "/wp-admin/", {}), ("GET", "/customer/account", {}), ("GET", "/checkout", {}), ("GET", "/admin", {}),
    ("GET", "/user/login", {}), ("GET", "/health_check.php", {}), ("GET", "/status.php", {}),
    ("GET", "/", {"Authorization": "Basic dTpw"}), ("GET", "/", {"Cache-Control": "no-cache"}),
    ("GET", "/", {"X-Forwarded-Proto": "https"}), ("GET", "/", {"X-Forwarded-Proto": "https"}),
    ("GET", "/product", {"Range": "bytes=0-9"}), ("GET", "/product", {"Host": "shop.example:8080"}),
    ("GET", "/", {"X-Requested-With": "XMLHttpRequest"}),
    ("PURGE", "/", {"X-Magento-Tags-Pattern": "home_tag", "_from": "127.0.0.2"}),
    ("BAN", "/", {**INVALIDATE, "_from": "127.0.0.2"}), ("GET", "/", {"_from": "127.0.0.2"}),
    ("PURGE", "/", {"X-Magento-Tags-Pattern": "home_tag"}), ("PURGE", "/", {}), ("GET", "/", GZ),
    ("PURGE", "/product?a=1&b=2", {}), ("GET", "/product?a=1&b=2", GZ),
    ("BAN", "/", INVALIDATE), ("BAN", "/", {}), ("GET", "/", {}), ("GET", "/page/1", {}),
    ("GET", "/esi-mix", GZ), ("GET", "/esi-mix", {}), ("GET", "/aged", {}), ("GET", "/aged", {}),
    ("GET", "/big", GZ), ("GET", "/big", {}), ("GET", "/big", {"Range": "bytes=100-199"}),
    ("GET", "/big", {"Range": "bytes=-50", **GZ}), ("HEAD", "/big", {}),
    ("GET", "/chunked", {}), ("GET", "/chunked", GZ), ("GET", "/eof", {}), ("GET", "/eof", {}),
    ("GET", "/reset", {}), ("GET", "/reset", {}),
    ("GET", "http://shop.example/product?a=1&b=2", {}), ("GET", "/product", {"Cookie": "a=1", "X-Forwarded-For": "10.0.0.9"}),
    ("GET", "/product", {"If-Modified-Since": "Wed, 01 Nov 2023 10:00:00 GMT"}),
    ("GET", "/product", {"If-None-Match": "*"}),
    ("PURGE", "/", {"X-Magento-Tags-Pattern": "(unclosed"}), ("BAN", "/", {"X-Cache-Tags": "(", "ApiPlatform-Ban-Regex": "("}),
    ("GET", "/ws", {"Upgrade": "websocket", "Connection": "Upgrade"}), ("GET", "/product", {"Host": "other.example"}),
    ("GET", "/product", {"Referer": "https://t.co/abc"}), ("GET", "/page/3", {"Accept-Encoding": "deflate"}),
    ("GET", "/page/3", {"Accept-Encoding": "gzip;q=0"}), ("GET", "/page/3", {"Accept-Encoding": "x-gzip"}),
    ("HEAD", "/page/4", {}), ("GET", "/page/4", {}), ("GET", "/page/5?", {}), ("GET", "/page/5?#frag", {}),
    ("GET", "/swr", {}), ("GET", "/short", {}), ("GET", "/short", {}), ("SLEEP", 2.5), ("GET", "/swr", {}), ("GET", "/short", {}), ("SLEEP", 0.5),
    ("GET", "/short", {}),
]

# ---------------------------------------------------------------- servers


@dataclass
class Reply:
    status: int
    reason: str
    headers: list[tuple[str, str]]
    raw: bytes
    error: str = ""
    body: bytes = field(default=b"")


def ask(port: int, method: str, url: str, headers: dict[str, str], body: bytes | None) -> Reply:
    headers = dict(headers)
    source = headers.pop("_from", None)       # another loopback address: a client no ACL lists
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=15,
                                      source_address=(source, 0) if source else None)
    try:
        conn.putrequest(method, url, skip_host=True, skip_accept_encoding=True)
        hdrs = {"Host": HOST, "User-Agent": "vcl-diff/1", **headers}
        for k, v in hdrs.items():
            conn.putheader(k, v)
        if body is not None:
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        resp = conn.getresponse()
        raw = resp.read()
        return Reply(resp.status, resp.reason, resp.getheaders(), raw)
    except (OSError, http.client.HTTPException) as exc:
        return Reply(0, "", [], b"", error=type(exc).__name__)
    finally:
        conn.close()


def prepare(vcl: Path, origin_port: int, scratch: Path) -> Path:
    """Copy the VCL's directory into scratch with each backend aimed at the origin; the main file's path."""
    dest = scratch / "vcl"
    shutil.copytree(vcl.parent, dest)
    for f in dest.rglob("*.vcl"):
        text = f.read_text()
        text = re.sub(r'(\.host\s*=\s*)"[^"]*"', r'\1"127.0.0.1"', text)
        text = re.sub(r'(\.port\s*=\s*)"[^"]*"', rf'\1"{origin_port}"', text)
        f.write_text(text)
    for p in [scratch, *scratch.rglob("*")]:
        os.chmod(p, 0o755 if p.is_dir() else 0o644)
    return dest / vcl.name


class Ours:
    name = "cacheserver"

    def __init__(self, vcl: Path, scratch: Path) -> None:
        env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=str(ROOT))
        self.proc = subprocess.Popen([sys.executable, "-m", "cacheserver", "-a", "127.0.0.1:0", "-f", str(vcl),
                                      "-n", str(scratch / "ours")], stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, cwd=ROOT, env=env, text=True)
        self.port = 0
        self.output = ""
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            self.output += line
            m = re.match(r"Listening on [^ ]+:(\d+)", line)
            if m:
                self.port = int(m.group(1))
            if line.startswith("Child launched OK"):
                threading.Thread(target=self.proc.stdout.read, daemon=True).start()
                return
        self.stop()
        raise RuntimeError(f"cacheserver did not start:\n{self.output}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()


class Theirs:
    name = "varnishd"

    def __init__(self, vcl: Path, scratch: Path) -> None:
        self.workdir = str(scratch / "n")
        self.pidfile = scratch / "varnishd.pid"
        done = subprocess.run([VARNISHD, "-n", self.workdir, "-a", "127.0.0.1:0", "-f", str(vcl), "-P",
                               str(self.pidfile), "-T", "127.0.0.1:0", "-s", "malloc,256m"],
                              capture_output=True, text=True, timeout=60)
        if done.returncode:
            raise RuntimeError(f"varnishd did not start:\n{done.stdout}{done.stderr}")
        deadline = time.monotonic() + 60
        while True:
            out = subprocess.run([VARNISHADM, "-n", self.workdir, "-t", "5", "debug.listen_address"],
                                 capture_output=True, text=True, timeout=30).stdout.split()
            if len(out) >= 3 and out[2].isdigit():
                self.port = int(out[2])
                return
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("varnishd gave no listen address")
            time.sleep(0.1)

    def stop(self) -> None:
        try:
            os.kill(int(self.pidfile.read_text()), signal.SIGTERM)
        except (OSError, ValueError):
            pass


def compiles(server: type, vcl: Path, scratch: Path) -> str:
    """'' if the VCL compiles on that server, else its first error line."""
    if server is Theirs:
        done = subprocess.run([VARNISHD, "-C", "-f", str(vcl), "-n", str(scratch / "c")], capture_output=True,
                              text=True, timeout=60)
    else:
        done = subprocess.run([sys.executable, "-m", "cacheserver", "-C", "-f", str(vcl)], capture_output=True,
                              text=True, timeout=60, cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    if done.returncode == 0:
        return ""
    lines = [ln for ln in (done.stderr + done.stdout).splitlines() if ln.strip() and "Could not delete" not in ln]
    return " / ".join(lines[:3]) or f"exit {done.returncode}"


def run(server: type, vcl: Path) -> tuple[list[Reply], list[str], str]:
    scratch = Path(tempfile.mkdtemp(prefix="vcldiff-", dir="/tmp"))
    os.chmod(scratch, 0o755)
    httpd, handler = start_origin()
    try:
        main = prepare(vcl, httpd.server_address[1], scratch)
        err = compiles(server, main, scratch)
        if err:
            return [], [], err
        srv = server(main, scratch)
        try:
            time.sleep(0.5)                    # a probe has had its first answer
            replies = []
            for step in SCRIPT:
                if step[0] == "SLEEP":
                    time.sleep(step[1])
                    continue
                method, url, headers, *body = step
                replies.append(ask(srv.port, method, url, headers, body[0] if body else None))
                time.sleep(0.05)               # background fetches settle as a client's pace lets them
        finally:
            srv.stop()
        time.sleep(0.2)
        return replies, list(handler.log), ""
    finally:
        httpd.shutdown()
        shutil.rmtree(scratch, ignore_errors=True)

# ---------------------------------------------------------------- comparison

# Date and the ids vary by run; Content-Length or chunked depends on whether the fetch had finished
# when delivery began, a race on varnishd too (the bodies are compared instead)
SKIP = {"date", "x-varnish", "content-length", "transfer-encoding"}


def decoded(reply: Reply) -> bytes:
    enc = dict((k.lower(), v) for k, v in reply.headers).get("content-encoding", "")
    if "gzip" in enc and reply.raw:
        try:
            return gzip.decompress(reply.raw)
        except (OSError, EOFError, zlib.error):
            return b"<bad gzip>"
    return reply.raw


def norm_headers(reply: Reply) -> list[tuple[str, str]]:
    out = []
    for k, v in reply.headers:
        k = k.lower()
        if k in SKIP:
            continue
        if k == "age":
            v = "0" if v == "0" else "N"
        if k == "expires" and v not in ("-1", "0"):
            v = "<date>"
        out.append((k, v))
    return sorted(out)


def norm_body(body: bytes) -> bytes:
    return re.sub(rb"XID: \d+", b"XID: n", body)


def describe(step: tuple) -> str:
    method, url, headers, *_ = step
    extra = ", ".join(f"{k}: {v}" for k, v in headers.items())
    return f"{method} {url}" + (f" [{extra}]" if extra else "")


def compare(ours: list[Reply], theirs: list[Reply]) -> list[str]:
    steps = [s for s in SCRIPT if s[0] != "SLEEP"]
    diffs = []
    for i, (step, a, b) in enumerate(zip(steps, ours, theirs, strict=True)):
        out = []
        if (a.status, a.error) != (b.status, b.error):
            out.append(f"status ours {a.status}{a.error} varnishd {b.status}{b.error}")
        ha, hb = norm_headers(a), norm_headers(b)
        if ha != hb:
            only_a = [h for h in ha if h not in hb]
            only_b = [h for h in hb if h not in ha]
            out.append(f"headers only ours {only_a} only varnishd {only_b}")
        if norm_body(decoded(a)) != norm_body(decoded(b)):
            out.append(f"body ours {norm_body(decoded(a))[:120]!r} varnishd {norm_body(decoded(b))[:120]!r}")
        elif norm_body(a.raw) != norm_body(b.raw):
            out.append(f"raw body differs (decoded same): ours {len(a.raw)} bytes, varnishd {len(b.raw)}")
        if out:
            diffs.append(f"  #{i} {describe(step)}\n    " + "\n    ".join(out))
    return diffs


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("vcl", nargs="+", type=Path)
    ap.add_argument("--report", type=Path, help="also write the report here")
    args = ap.parse_args()
    lines, agree_files, total_req, agree_req = [], 0, 0, 0
    for vcl in args.vcl:
        vcl = vcl.resolve()
        ours, ours_log, ours_err = run(Ours, vcl)
        theirs, theirs_log, theirs_err = run(Theirs, vcl)
        lines.append(f"== {vcl.name}")
        if ours_err or theirs_err:
            same = bool(ours_err) == bool(theirs_err)
            lines.append(f"  compile: ours {'refused' if ours_err else 'ok'}, varnishd {'refused' if theirs_err else 'ok'}"
                         f"{'' if same else '  <-- DIFFERS'}\n    ours: {ours_err}\n    varnishd: {theirs_err}")
            agree_files += same
            continue
        diffs = compare(ours, theirs)
        total_req += len(ours)
        agree_req += len(ours) - len(diffs)
        if ours_log != theirs_log:
            import difflib
            delta = [d for d in difflib.unified_diff(theirs_log, ours_log, "varnishd-origin", "ours-origin", n=0, lineterm="")]
            diffs.append("  origin saw (- varnishd, + ours):\n    " + "\n    ".join(delta[2:60]))
        agree_files += not diffs
        lines.append(f"  {len(ours) - len([d for d in diffs if d.startswith('  #')])}/{len(ours)} requests agree")
        lines.extend(diffs)
    lines.append(f"\nfiles agreeing: {agree_files}/{len(args.vcl)}; requests agreeing: {agree_req}/{total_req}")
    text = "\n".join(lines)
    print(text)
    if args.report:
        args.report.write_text(text + "\n")
    return 0 if agree_files == len(args.vcl) else 1


if __name__ == "__main__":
    sys.exit(main())
