"""Record which node varnishd's shard director picks for each key, for tests/data/shard_owners.json.

    python tools/record_shard_owners.py [--varnishd PATH] [--out tests/data/shard_owners.json]

Runs varnishd 7.1 on OWNERS_VCL (shard directors over node backends that need not be up: no probes,
so they count as healthy until `backend.set_health NAME sick`) and asks it, for every key URL and
every set of sick nodes in SICK_SETS, which node each director chooses (`.backend(by=URL)`, the
cluster example's call). tests/test_cluster.py checks our director against the stored table, and
against a live varnishd when one is installed.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "tests" / "data" / "shard_owners.json"

KEYS = [f"/obj/{i}" for i in range(295)] + ["/", "/index.html", "/static/app.js?v=3", "/a%20b", "/caf%C3%A9"]

# the example cluster's director (three nodes, 67 replicas) and two others: five nodes, and three
# nodes with an ident, a weight and another replica count
OWNERS_VCL = """vcl 4.1;
import directors;
backend node1 { .host = "127.0.0.1"; .port = "9"; }
backend node2 { .host = "127.0.0.1"; .port = "9"; }
backend node3 { .host = "127.0.0.1"; .port = "9"; }
backend node4 { .host = "127.0.0.1"; .port = "9"; }
backend node5 { .host = "127.0.0.1"; .port = "9"; }
sub vcl_init {
	new cluster = directors.shard();
	cluster.add_backend(node1);
	cluster.add_backend(node2);
	cluster.add_backend(node3);
	cluster.reconfigure();
	new five = directors.shard();
	five.add_backend(node1);
	five.add_backend(node2);
	five.add_backend(node3);
	five.add_backend(node4);
	five.add_backend(node5);
	five.reconfigure();
	new mixed = directors.shard();
	mixed.add_backend(node1, ident="cache-a");
	mixed.add_backend(node2, weight=2);
	mixed.add_backend(node3);
	mixed.reconfigure(replicas=101);
}
sub vcl_recv {
	return (synth(200));
}
sub vcl_synth {
	set resp.http.cluster = cluster.backend(by=URL);
	set resp.http.five = five.backend(by=URL);
	set resp.http.mixed = mixed.backend(by=URL);
	set resp.http.cluster-alt = cluster.backend(by=URL, alt=1);
}
"""
DIRECTORS = ("cluster", "five", "mixed", "cluster-alt")
SICK_SETS: list[list[str]] = [[], ["node2"], ["node2", "node4"]]


def find_varnishd() -> str | None:
    found = shutil.which("varnishd")
    if found:
        return found
    return "/usr/sbin/varnishd" if os.path.exists("/usr/sbin/varnishd") else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def record(varnishd: str, timeout: float = 60.0) -> dict:
    """varnishd's choices: per sick set, {"sick": [...], "owners": {director: [node per key]}}, the
    owners in the order of "keys"."""
    work = tempfile.mkdtemp(prefix="shardrec", dir="/tmp")
    os.chmod(work, 0o755)               # varnishd drops to its own user before reading the VCL
    vcl = os.path.join(work, "owners.vcl")
    with open(vcl, "w") as f:
        f.write(OWNERS_VCL)
    os.chmod(vcl, 0o644)
    port = _free_port()
    proc = subprocess.Popen([varnishd, "-F", "-n", work, "-a", f"127.0.0.1:{port}", "-f", vcl,
                             "-T", "127.0.0.1:0", "-s", "malloc,16m"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    adm = shutil.which("varnishadm") or "/usr/bin/varnishadm"
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if proc.poll() is not None:
                    raise RuntimeError("varnishd exited: " + proc.stderr.read().decode()) from None
                if time.monotonic() > deadline:
                    raise RuntimeError(f"varnishd did not listen within {timeout} s") from None
                time.sleep(0.1)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        tables = []
        for sick in SICK_SETS:
            for name in ("node1", "node2", "node3", "node4", "node5"):
                health = "sick" if name in sick else "auto"
                subprocess.run([adm, "-n", work, "backend.set_health", name, health], check=True,
                               capture_output=True, timeout=30)
            owners: dict[str, list[str]] = {d: [] for d in DIRECTORS}
            for key in KEYS:
                conn.request("GET", key)
                resp = conn.getresponse()
                resp.read()
                for d in DIRECTORS:
                    owners[d].append(resp.getheader(d))
            tables.append({"sick": sick, "owners": owners})
        version = subprocess.run([varnishd, "-V"], capture_output=True, text=True).stderr.splitlines()
        return {"recorded_with": version[0] if version else "varnishd", "vcl": OWNERS_VCL,
                "keys": KEYS, "tables": tables}
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        shutil.rmtree(work, ignore_errors=True)


def _dump(table: dict) -> str:
    """JSON with one line per key list and per director's owners (diffable, not one line a key)."""
    lines = ["{",
             f' "recorded_with": {json.dumps(table["recorded_with"])},',
             f' "vcl": {json.dumps(table["vcl"])},',
             f' "keys": {json.dumps(table["keys"])},',
             ' "tables": [']
    for i, t in enumerate(table["tables"]):
        lines.append(f'  {{"sick": {json.dumps(t["sick"])}, "owners": {{')
        lines += [f'   {json.dumps(d)}: {json.dumps(o)}{"," if j < len(t["owners"]) - 1 else ""}'
                  for j, (d, o) in enumerate(t["owners"].items())]
        lines.append("  }}" + ("," if i < len(table["tables"]) - 1 else ""))
    lines += [" ]", "}", ""]
    text = "\n".join(lines)
    assert json.loads(text) == table
    return text


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--varnishd", default=find_varnishd())
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = ap.parse_args(argv)
    if not args.varnishd:
        print("varnishd not found (--varnishd PATH)", file=sys.stderr)
        return 2
    table = record(args.varnishd)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(_dump(table))
    n = sum(len(o) for t in table["tables"] for o in t["owners"].values())
    print(f"{args.out}: {n} owners ({len(table['keys'])} keys, {len(table['tables'])} sick sets)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
