"""Start an origin and a self-routing cluster of cacheserver nodes on loopback; Ctrl-C stops them.

    python examples/cluster/run.py [--nodes 3] [--probe-interval 1s] [--print-vcl]

Then type `stop node2`, `start node2`, `counts` on its stdin; Ctrl-C stops everything.

Every node runs cluster.vcl (filled in here with the ports) with its own name as identity (-i). The
origin counts the fetches it answers per URL; `GET /.origin/counts` on it shows them as JSON.
tests/test_cluster.py drives the same classes.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import select
import shutil
import signal
import socket
import string
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
TEMPLATE = HERE / "cluster.vcl"
HOST = "127.0.0.1"


def free_port() -> int:
    """A port nothing listens on now (the kernel's pick for port 0)."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def render_vcl(nodes: dict[str, int], origin_port: int, *, probe_interval: str = "1s",
               probe_timeout: str = "0.5s", probe_window: int = 3, probe_threshold: int = 2) -> str:
    """cluster.vcl with the nodes (name -> port on HOST), the origin and the probe timings filled in."""
    for name in nodes:
        if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", name):
            raise ValueError(f"node name {name!r} is not a VCL identifier")
    backends = "\n".join(
        f'backend {name} {{\n    .host = "{HOST}";\n    .port = "{port}";\n    .probe = peer;\n}}'
        for name, port in nodes.items())
    return string.Template(TEMPLATE.read_text()).substitute(
        probe_interval=probe_interval, probe_timeout=probe_timeout, probe_window=probe_window,
        probe_threshold=probe_threshold, origin_host=HOST, origin_port=origin_port,
        node_backends=backends, peer_acl=f'    "{HOST}";', invalidator_acl=f'    "{HOST}";',
        add_backends="\n".join(f"    cluster.add_backend({name});" for name in nodes))


class Origin:
    """The origin: answers every GET with a small page and counts the fetches per URL."""

    def __init__(self, port: int = 0) -> None:
        self.counts: Counter[str] = Counter()
        self.lock = threading.Lock()
        origin = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                if self.path == "/.origin/counts":
                    with origin.lock:
                        body = json.dumps(dict(origin.counts), indent=1).encode()
                else:
                    with origin.lock:
                        origin.counts[self.path] += 1
                        n = origin.counts[self.path]
                    body = f"{self.path} from the origin (fetch {n})\n".encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "max-age=3600")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:    # quiet
                pass

        self.httpd = ThreadingHTTPServer((HOST, port), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="origin", daemon=True)
        self.thread.start()

    def fetches(self) -> Counter[str]:
        with self.lock:
            return Counter(self.counts)

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class Node:
    """One cacheserver process: `-i NAME -a HOST:PORT -T HOST:ADMIN -S SECRET -n WORKDIR -f VCL`."""

    def __init__(self, name: str, port: int, vcl: Path, workdir: Path) -> None:
        self.name = name
        self.port = port
        self.admin_port = 0
        self.vcl = vcl
        self.workdir = workdir / name
        self.secret = workdir / "secret"
        self.proc: subprocess.Popen | None = None
        self.output: list[str] = []
        self._drainer: threading.Thread | None = None

    def start(self, timeout: float = 30.0) -> None:
        """Start the process and wait until it accepts clients."""
        self.launch()
        self.wait_ready(timeout)

    def launch(self) -> None:
        """Start the process (wait_ready() waits for it)."""
        self.admin_port = free_port()
        self.workdir.mkdir(mode=0o700, exist_ok=True)
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
        self.output = []
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cacheserver", "-i", self.name, "-a", f"{HOST}:{self.port}",
             "-T", f"{HOST}:{self.admin_port}", "-S", str(self.secret), "-n", str(self.workdir),
             "-f", str(self.vcl)],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
            start_new_session=True)      # Ctrl-C goes to run.py, which stops the nodes in order

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Wait until the process says it accepts clients (stopping it if it does not)."""
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        pending = b""
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.proc.stdout], [], [], max(deadline - time.monotonic(), 0))
            chunk = os.read(self.proc.stdout.fileno(), 65536) if ready else b""
            if not chunk:
                break
            pending += chunk
            *lines, pending = pending.split(b"\n")
            self.output += [ln.decode("utf-8", "replace") for ln in lines]
            if any(ln.startswith("Child launched OK") for ln in self.output):
                # keep draining its output so a chatty node never blocks on a full pipe
                self._drainer = threading.Thread(target=self._drain, args=(self.proc,), daemon=True)
                self._drainer.start()
                return
        self.stop()
        raise RuntimeError(f"{self.name} did not start:\n" + "\n".join(self.output))

    def _drain(self, proc: subprocess.Popen) -> None:
        for line in proc.stdout:
            self.output.append(line.decode("utf-8", "replace").rstrip("\n"))

    def cli(self, command: str, timeout: float = 5.0) -> tuple[int, str]:
        """One admin CLI command (varnish-cli(7): answer the 107 challenge, then ask): status, text."""
        with socket.create_connection((HOST, self.admin_port), timeout=timeout) as sock:
            reader = sock.makefile("rb")

            def answer() -> tuple[int, str]:
                status, length = reader.readline().split()
                body = reader.read(int(length) + 1)
                return int(status), body[:-1].decode("utf-8", "replace")

            status, challenge = answer()
            if status == 107:
                salt = challenge[:32].encode()
                digest = hashlib.sha256(salt + b"\n" + self.secret.read_bytes() + salt + b"\n").hexdigest()
                sock.sendall(f"auth {digest}\n".encode())
                status, text = answer()
                if status != 200:
                    return status, text
            sock.sendall(command.encode() + b"\n")
            return answer()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 10 s."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._drainer is not None:
            self._drainer.join(5)      # it ends at the pipe's end of file
            self._drainer = None
        self.proc.stdout.close()
        self.proc = None


class Cluster:
    """An origin and N nodes on free loopback ports, sharing one rendered cluster.vcl."""

    def __init__(self, n_nodes: int = 3, workdir: Path | None = None, **probe: object) -> None:
        if n_nodes < 1:
            raise ValueError("a cluster needs at least one node")
        self._tmp = None if workdir is not None else tempfile.mkdtemp(prefix="cluster-")
        self.workdir = Path(workdir or self._tmp)
        self.origin = Origin()
        names = [f"node{i + 1}" for i in range(n_nodes)]
        ports = {name: free_port() for name in names}
        self.vcl = self.workdir / "cluster.vcl"
        self.vcl.write_text(render_vcl(ports, self.origin.port, **probe))
        (self.workdir / "secret").write_bytes(os.urandom(32).hex().encode() + b"\n")
        os.chmod(self.workdir / "secret", 0o600)
        self.nodes = {name: Node(name, port, self.vcl, self.workdir) for name, port in ports.items()}

    def start(self) -> None:
        """Start all nodes at once and wait until each accepts clients."""
        try:
            for node in self.nodes.values():
                node.launch()
            for node in self.nodes.values():
                node.wait_ready()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        for node in self.nodes.values():
            node.stop()
        self.origin.stop()
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)


def _instructions(cluster: Cluster) -> str:
    n = list(cluster.nodes.values())
    first, ports = n[0], " ".join(str(x.port) for x in n)
    adm = f"varnishadm -T {HOST}:{first.admin_port} -S {cluster.workdir / 'secret'}"
    return "\n".join([
        f"origin  http://{HOST}:{cluster.origin.port}/  (fetch counts: /.origin/counts)",
        *(f"{x.name:7} http://{HOST}:{x.port}/  (admin CLI {HOST}:{x.admin_port})" for x in n),
        "",
        "Ask any node (with one Host, as behind a load balancer: the Host is part of the cache key);",
        "X-Cluster-Node is the node you asked, X-Cluster-Owner the node holding the object, X-Cache",
        "its HIT or MISS there, X-Cluster-Fetched-By the node that went to the origin:",
        f"  for p in {ports}; do curl -si -H 'Host: example.com' http://{HOST}:$p/hello | grep -i '^x-c'; done",
        "Purge: any node forwards a PURGE to the owner, which drops the object:",
        f"  curl -si -X PURGE -H 'Host: example.com' http://{HOST}:{first.port}/hello",
        "Ban: bans are per node, so send the same ban to every node, over HTTP ...",
        f"  for p in {ports}; do curl -s -X BAN -H 'X-Ban-Url: ^/hel' http://{HOST}:$p/ "
        "-o /dev/null -w '%{http_code}\\n'; done",
        "... or through each node's admin CLI:",
        f"  {adm} ban 'obj.http.X-Url ~ ^/hel'",
        "Type `stop node2` / `start node2` here to see a node's share move away and back;",
        "Ctrl-C stops everything.",
    ])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", type=int, default=3)
    ap.add_argument("--probe-interval", default="1s", help="VCL duration between probes (default 1s)")
    ap.add_argument("--print-vcl", action="store_true", help="print the filled-in VCL and exit")
    args = ap.parse_args(argv)
    if args.print_vcl:
        ports = {f"node{i + 1}": 6081 + i for i in range(args.nodes)}
        print(render_vcl(ports, 8080, probe_interval=args.probe_interval))
        return 0
    cluster = Cluster(args.nodes, probe_interval=args.probe_interval)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    signal.signal(signal.SIGINT, signal.default_int_handler)     # even where a shell ignored it
    try:
        cluster.start()
        print(_instructions(cluster), flush=True)
        _commands(cluster)
    except KeyboardInterrupt:
        pass
    finally:
        print("stopping", flush=True)
        cluster.stop()
    return 0


def _commands(cluster: Cluster) -> None:
    """Lines on stdin: `stop NAME`, `start NAME`, `cli NAME COMMAND`, `counts`; at end of input,
    wait for Ctrl-C."""
    usage = "commands: stop NAME | start NAME | cli NAME COMMAND | counts"
    print(usage, flush=True)
    for line in sys.stdin:
        cmd, _, rest = line.strip().partition(" ")
        name, _, command = rest.strip().partition(" ")
        node = cluster.nodes.get(name)
        if cmd == "counts":
            print(json.dumps(dict(cluster.origin.fetches())), flush=True)
        elif cmd in ("stop", "start", "cli") and node is None:
            print(f"no node {name!r} (nodes: {' '.join(cluster.nodes)})", flush=True)
        elif cmd == "stop":
            node.stop()
            print(f"{node.name} stopped; its peers' probes take it out of the ring", flush=True)
        elif cmd == "start":
            if not node.running:
                node.start()
            print(f"{node.name} running on port {node.port}", flush=True)
        elif cmd == "cli" and not node.running:
            print(f"{node.name} is not running", flush=True)
        elif cmd == "cli":
            status, text = node.cli(command)
            print(status, text, sep="\n", flush=True)
        elif cmd:
            print(usage, flush=True)
    threading.Event().wait()


if __name__ == "__main__":
    sys.exit(main())
