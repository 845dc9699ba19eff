"""What the real varnishd 7.1 makes of ESI bodies: used to record and re-check tests/test_esi_parse.py.

`varnishd_pages(cases)` starts varnishd (as root it drops to user `varnish`, so its files
live in a world-readable directory under /tmp) in front of a small origin that serves each case's body
at its URL with `beresp.do_esi` on, and answers every other URL (the includes) with `{HOST URL}`. It
returns, per case, the delivered body and the esi_errors / esi_warnings it counted.

`python tests/esi_reference.py` prints the table the test file holds.
"""

from __future__ import annotations

import http.client
import http.server
import os
import select
import shutil
import subprocess
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

from polling import wait_gone
from varnishd_port import VARNISHADM, listen_port

VARNISHD = os.environ.get("VARNISHD", "/usr/sbin/varnishd")
VARNISHSTAT = shutil.which("varnishstat") or "/usr/bin/varnishstat"
VARNISHLOG = shutil.which("varnishlog") or "/usr/bin/varnishlog"
CLIENT_HOST = "ref.test"


def have_varnishd() -> bool:
    return all(os.access(tool, os.X_OK) for tool in (VARNISHD, VARNISHSTAT, VARNISHLOG, VARNISHADM))


def fragment_body(host: str, url: str) -> bytes:
    """What the origin answers for any URL that is not a case: `{HOST URL}` (status 503 for /fail*)."""
    return ("{" + host + " " + url + "}").encode("latin-1")


class _Origin(http.server.ThreadingHTTPServer):
    daemon_threads = True
    pages: dict[str, bytes]


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        body = self.server.pages.get(self.path)
        status = 200
        if body is None:
            body = fragment_body(self.headers.get("Host", ""), self.path)
            if self.path.startswith("/fail"):
                status = 503        # a failing fragment
            elif self.path.startswith("/trunc"):
                # a fragment whose body breaks off: half of what Content-Length announced
                self.send_response(200)
                self.send_header("Content-Length", str(2 * len(body)))
                self.end_headers()
                self.wfile.write(body)
                self.close_connection = True
                return
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def _counters(workdir: str) -> tuple[int, int]:
    out = subprocess.run([VARNISHSTAT, "-n", workdir, "-1", "-f", "MAIN.esi_errors",
                          "-f", "MAIN.esi_warnings"], capture_output=True, text=True, timeout=10).stdout
    vals = {line.split()[0]: int(line.split()[1]) for line in out.splitlines() if line.strip()}
    return vals.get("MAIN.esi_errors", 0), vals.get("MAIN.esi_warnings", 0)


class _FetchEnds:
    """Which backend fetches have ended, from a `varnishlog` that follows the log. The ESI parser
    counts errors and warnings in the fetch, which can still run after the client has its response:
    a case's counters are read once its fetch's End record is out."""

    def __init__(self, workdir: str) -> None:
        self._proc = subprocess.Popen([VARNISHLOG, "-n", workdir, "-b", "-g", "vxid", "-u",
                                       "-i", "BereqURL,End"], stdout=subprocess.PIPE)
        self._pending = b""
        self._url = ""
        self.ended: set[str] = set()

    def wait(self, url: str, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while url not in self.ended:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._proc.stdout], [], [], left)[0]:
                return False
            chunk = os.read(self._proc.stdout.fileno(), 65536)
            if not chunk:
                return False
            *lines, self._pending = (self._pending + chunk).split(b"\n")
            for line in lines:
                fields = line.decode("latin-1").split()
                if fields[1:2] == ["BereqURL"]:
                    self._url = fields[2] if len(fields) > 2 else ""
                elif fields[1:2] == ["End"]:
                    self.ended.add(self._url)
        return True

    def close(self) -> None:
        self._proc.kill()
        self._proc.wait()
        self._proc.stdout.close()


def varnishd_pages(cases: dict[str, tuple[bytes, str, str]], params: tuple[str, ...] = (),
                   extra_vcl: str = "") -> dict[str, tuple[bytes, int, int]]:
    """{name: (body, url, features)} -> {name: (delivered, esi_errors, esi_warnings)}, through one real
    varnishd; `features` ("+esi_remove_bom", ...) is set with param.set before the case's request."""
    origin = _Origin(("127.0.0.1", 0), _Handler)
    origin.pages = {url: body for body, url, _ in cases.values()}
    threading.Thread(target=origin.serve_forever, daemon=True).start()
    tmp = tempfile.mkdtemp(prefix="esi-ref-")
    os.chmod(tmp, 0o755)
    vcl = Path(tmp, "ref.vcl")
    vcl.write_text(f"""vcl 4.1;
backend default {{ .host = "127.0.0.1"; .port = "{origin.server_address[1]}"; }}
sub vcl_recv {{ return (pass); }}
sub vcl_backend_response {{ if (bereq.url ~ "^/p/") {{ set beresp.do_esi = true; }} }}
{extra_vcl}
""")
    os.chmod(vcl, 0o644)
    workdir = os.path.join(tmp, "n")
    args = [VARNISHD, "-n", workdir, "-a", "127.0.0.1:0", "-f", str(vcl), "-P",
            os.path.join(tmp, "pid"), "-s", "malloc,64m", "-T", "127.0.0.1:0"]
    for param in params:
        args += ["-p", param]
    subprocess.run(args, check=True, capture_output=True, timeout=60)
    results: dict[str, tuple[bytes, int, int]] = {}
    fetches: _FetchEnds | None = None
    try:
        port = listen_port(workdir)
        fetches = _FetchEnds(workdir)
        for n in range(100):        # until the log reader is attached: it sees this fetch end
            ready = f"/ready/{n}"
            urllib.request.urlopen(f"http://127.0.0.1:{port}{ready}", timeout=10).read()
            if fetches.wait(ready, 0.2):
                break
        else:
            raise AssertionError("varnishlog did not show a fetch")
        errs, warns = _counters(workdir)
        features = None
        for name, (_, url, feats) in sorted(cases.items(), key=lambda case: case[1][2]):
            if feats != features:
                for value in ("none", feats) if feats else ("none",):    # none: the default set
                    subprocess.run([VARNISHADM, "-n", workdir, "param.set", "feature", value], check=True,
                                   capture_output=True, timeout=30)
                features = feats
            req = urllib.request.Request(f"http://127.0.0.1:{port}{url}", headers={"Host": CLIENT_HOST})
            try:
                with urllib.request.urlopen(req, timeout=10) as resp:
                    got = resp.read()
            except http.client.IncompleteRead as exc:
                got = b"INCOMPLETE:" + exc.partial
            assert fetches.wait(url, 30), f"varnishd's fetch of {url} did not end within 30 s"
            e2, w2 = _counters(workdir)
            results[name] = (got, e2 - errs, w2 - warns)
            errs, warns = e2, w2
    finally:
        if fetches is not None:
            fetches.close()
        pid = int(Path(tmp, "pid").read_text())
        os.kill(pid, 15)
        origin.shutdown()
        wait_gone(pid)                # before its directory goes
        shutil.rmtree(tmp, ignore_errors=True)
    return results


if __name__ == "__main__":
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from test_esi_parse import CASES  # noqa: E402

    live = varnishd_pages(CASES)
    for name in CASES:
        got, e, w = live[name]
        print(f"    {name!r}: ({got!r}, {e}, {w}),")
