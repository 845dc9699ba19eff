"""ESI page assembly: a page of 10 includes (page and fragments all cached), cacheserver against the real
varnishd (when installed), same origin, same VCL, same wrk settings, in the same run.

    python bench/esi_bench.py [--seconds 5] [--connections 16] [--fragments 10] [--varnishd PATH]

The page is 2 KiB of markup around the includes; each fragment is 1 KiB. Prints both rates, their
ratio, and checks first that both servers assemble the same page.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

from common import cacheserver_cmd, free_port, stop, wait_port, wrk

VCL = """vcl 4.1;
backend default { .host = "127.0.0.1"; .port = "%d"; }
sub vcl_backend_response {
    if (bereq.url == "/page") {
        set beresp.do_esi = true;
    }
    set beresp.ttl = 1h;
}
"""


def page(fragments: int) -> bytes:
    body = b"<html><body>\n" + b"<p>" + b"p" * 1000 + b"</p>\n"
    for i in range(fragments):
        body += b'<div><esi:include src="/frag/%d"/></div>\n' % i
    return body + b"<p>" + b"q" * 1000 + b"</p>\n</body></html>\n"


def origin_main(port: int, fragments: int) -> None:
    """The origin: /page (ESI) and /frag/N (1 KiB each), cacheable, keep-alive."""
    pg = page(fragments)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                url = head.split(b" ", 2)[1]
                body = pg if url == b"/page" else (b"<b>%s</b>" % url).ljust(1024, b".")
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nCache-Control: max-age=3600\r\n\r\n"
                             % len(body) + body)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    async def serve() -> None:
        server = await asyncio.start_server(handle, "127.0.0.1", port)
        async with server:
            await server.serve_forever()

    asyncio.run(serve())


def fetch(port: int) -> bytes:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/page", timeout=10) as resp:
        return resp.read()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--connections", type=int, default=16)
    ap.add_argument("--fragments", type=int, default=10)
    ap.add_argument("--varnishd", default=shutil.which("varnishd") or "/usr/sbin/varnishd")
    ap.add_argument("--origin", nargs=2, type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.origin:
        origin_main(*args.origin)
        return

    origin_port = free_port()
    origin = subprocess.Popen([sys.executable, __file__, "--origin", str(origin_port), str(args.fragments)])
    wait_port(origin_port)
    workdir = tempfile.mkdtemp(prefix="bench-esi-")
    os.chmod(workdir, 0o755)         # varnishd drops to user varnish
    vcl = Path(workdir, "esi.vcl")
    vcl.write_text(VCL % origin_port)
    os.chmod(vcl, 0o644)
    results = {}
    pages = {}
    try:
        port = free_port()
        proc = subprocess.Popen(cacheserver_cmd(port, "-f", str(vcl), "-n", os.path.join(workdir, "cs")),
                                cwd=Path(__file__).resolve().parent.parent,
                                env=dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent)),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_port(port)
            pages["cacheserver"] = fetch(port)
            wrk(f"http://127.0.0.1:{port}/page", 1, args.connections)
            results["cacheserver"] = wrk(f"http://127.0.0.1:{port}/page", args.seconds, args.connections)
        finally:
            stop(proc)
        if os.path.exists(args.varnishd):
            port = free_port()
            proc = subprocess.Popen([args.varnishd, "-F", "-n", os.path.join(workdir, "v"), "-a",
                                     f"127.0.0.1:{port}", "-f", str(vcl), "-s", "malloc,256m"],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                wait_port(port)
                pages["varnishd"] = fetch(port)
                wrk(f"http://127.0.0.1:{port}/page", 1, args.connections)
                results["varnishd"] = wrk(f"http://127.0.0.1:{port}/page", args.seconds, args.connections)
            finally:
                stop(proc)
    finally:
        stop(origin)
        shutil.rmtree(workdir, ignore_errors=True)
    size = len(pages["cacheserver"])
    print(f"page: {size} bytes, {args.fragments} fragments")
    if "varnishd" in pages and pages["varnishd"] != pages["cacheserver"]:
        print("PAGES DIFFER between cacheserver and varnishd")
    for name, r in results.items():
        print(f"{name:20s} {r['rps']:10.0f} pages/s  errors {r['errors']}")
    if "varnishd" in results:
        print(f"{'ratio ours/varnishd':20s} {results['cacheserver']['rps'] / results['varnishd']['rps']:10.2f}")
    else:
        print("varnishd not installed: no ratio")


if __name__ == "__main__":
    main()
