"""The self-routing cluster of examples/cluster, with real processes on loopback.

Three cacheserver nodes and a counting origin (examples/cluster/run.py): every URL is fetched from the
origin once, by its owner; a stopped node's share (and only its share) moves to the others once their
probes mark it sick, and comes back when it is healthy again; PURGE and BAN reach the objects
wherever they live. The owners our shard director picks are varnishd 7.1's: checked against a table
recorded from varnishd (tests/data/shard_owners.json, tools/record_shard_owners.py), and against a
live varnishd when one is installed.
"""

from __future__ import annotations

import http.client
import importlib.util
import json
import os
import queue
import random
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from cacheserver.backends import set_admin_health
from vcl.compiler import compile_vcl
from vcl.runtime import Context, HttpMessage
from vmods.directors import Shard, _shard_add, hash_strands32

ROOT = Path(__file__).resolve().parent.parent


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


example = _load("cluster_example", ROOT / "examples" / "cluster" / "run.py")
recorder = _load("record_shard_owners", ROOT / "tools" / "record_shard_owners.py")
OWNERS_TABLE = ROOT / "tests" / "data" / "shard_owners.json"

HOST = "www.example.test"          # one site: every node hashes its objects alike
URLS = [f"/obj/{i}" for i in range(300)]
# a stopped node refuses connections at once, so the timeout can be generous (a loaded machine must
# not make a live node look sick) while the interval keeps detection fast: two failed polls of three
PROBE = {"probe_interval": "0.2s", "probe_timeout": "2s", "probe_window": 3, "probe_threshold": 2}


# -- helpers ------------------------------------------------------------------------------------

def _get(port: int, url: str, method: str = "GET", headers: dict[str, str] | None = None,
         source: str | None = None) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection(example.HOST, port, timeout=10,
                                      source_address=(source, 0) if source else None)
    try:
        conn.request(method, url, headers={"Host": HOST, **(headers or {})})
        resp = conn.getresponse()
        body = resp.read()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, body
    finally:
        conn.close()


def _through_random_nodes(cluster, urls: list[str], nodes: list[str], seed: int) -> dict[str, dict]:
    """GET each URL once through a random one of `nodes`, 12 at a time: url -> response headers
    (status as ':status')."""
    rnd = random.Random(seed)
    plan = [(url, cluster.nodes[rnd.choice(nodes)].port) for url in urls]

    def one(item: tuple[str, int]) -> tuple[str, dict]:
        url, port = item
        status, headers, _ = _get(port, url)
        return url, {**headers, ":status": status}

    with ThreadPoolExecutor(max_workers=12) as pool:
        return dict(pool.map(one, plan))


def _fetches(origin, urls: list[str]) -> dict[str, int]:
    counts = origin.fetches()
    return {u: counts[u] for u in urls}


def _health(node) -> dict[str, bool | None]:
    """This node's view of the cluster nodes, from `backend.list` on its admin CLI: True for healthy
    with a whole window of good polls (so real polls, not only `.initial`'s, say so), False for sick,
    None in between."""
    status, text = node.cli("backend.list")
    assert status == 200, text
    out: dict[str, bool | None] = {}
    for line in text.splitlines()[1:]:
        m = re.match(r"\S*?\.?(node\d+)\s+\S+\s+(\d+)/(\d+)\s+(healthy|sick)", line)
        if m:
            good, window, state = int(m.group(2)), int(m.group(3)), m.group(4)
            out[m.group(1)] = False if state == "sick" else True if good == window else None
    return out


def _backend_reqs(node) -> dict[str, int]:
    """VBE.<vcl>.<backend>.req from the node's counters: requests it sent to each backend."""
    status, text = node.cli("counters.list")
    assert status == 200, text
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^VBE\.[^.]+\.(\w+)\.req\s+(\d+)", text, re.M)}


def _all_up(cluster) -> None:
    """Every node running and seen healthy by every node (a test that failed may have left one down)."""
    for node in cluster.nodes.values():
        if not node.running:
            node.start()
    names = list(cluster.nodes)
    _wait_until("every node sees every node healthy", _views_are(cluster, names, {n: True for n in names}))


def _wait_until(what: str, check: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        time.sleep(0.05)


def _views_are(cluster, watchers: list[str], healthy: dict[str, bool]) -> Callable[[], bool]:
    return lambda: all(
        {k: v for k, v in _health(cluster.nodes[w]).items() if k in healthy} == healthy for w in watchers)


def _expected_owner(names: list[str], sick: set[str]) -> Callable[[str], str]:
    """Our shard director, configured as cluster.vcl's, outside any server."""
    from vcl.runtime import BackendSpec
    specs = {n: BackendSpec(n, host="127.0.0.1", port="9") for n in names}
    shard = Shard()
    shard.vcl_name = "cluster"
    init = Context(method="vcl_init")
    for n in names:
        _shard_add(shard, init, specs[n])
    shard.reconfigure(init)
    for n in sick:
        set_admin_health(specs[n], "sick")
    return lambda url: shard.pick(Context(method="vcl_recv"), hash_strands32(url), 0, -1, True,
                                  "CHOSEN").name


@pytest.fixture(scope="module")
def cluster():
    c = example.Cluster(3, **PROBE)
    try:
        c.start()
        _all_up(c)
        yield c
    finally:
        c.stop()


# -- the cluster --------------------------------------------------------------------------------

def test_each_url_is_fetched_once_and_a_stopped_nodes_share_moves_and_comes_back(cluster):
    _all_up(cluster)
    names = list(cluster.nodes)
    origin = cluster.origin
    before = {n: _backend_reqs(cluster.nodes[n]) for n in names}

    # every URL through a random node: fetched once from the origin, by the owner our director names
    first = _through_random_nodes(cluster, URLS, names, seed=1)
    assert {r[":status"] for r in first.values()} == {200}
    owners = {url: r["x-cluster-owner"] for url, r in first.items()}
    assert owners == {url: _expected_owner(names, set())(url) for url in URLS}
    assert {r["x-cluster-fetched-by"] for r in first.values()} == set(names)
    assert all(r["x-cluster-fetched-by"] == owners[url] for url, r in first.items())
    assert _fetches(origin, URLS) == {url: 1 for url in URLS}
    # a node that owns the URL asked goes to the origin itself, never to itself as a peer; one that
    # does not sends it to the owner (one hop)
    after = {n: _backend_reqs(cluster.nodes[n]) for n in names}
    reqs = {n: {b: after[n][b] - before[n][b] for b in after[n]} for n in names}
    assert all(reqs[n][n] == 0 for n in names), reqs
    hops = sum(r["x-cluster-node"] != owners[u] for u, r in first.items())
    assert sum(reqs[n][p] for n in names for p in names) == hops and hops > 100
    shares = {n: {u for u in URLS if owners[u] == n} for n in names}
    assert all(len(s) > 50 for s in shares.values()), {n: len(s) for n, s in shares.items()}

    # again through other random nodes: all hits on the owners
    second = _through_random_nodes(cluster, URLS, names, seed=2)
    assert {(r[":status"], r["x-cache"]) for r in second.values()} == {(200, "HIT")}
    assert {url: r["x-cluster-owner"] for url, r in second.items()} == owners
    assert _fetches(origin, URLS) == {url: 1 for url in URLS}

    # node2 stops: once its peers' probes mark it sick, its share (only) moves and is fetched again
    victim = cluster.nodes["node2"]
    others = [n for n in names if n != victim.name]
    victim.stop()
    _wait_until("node1 and node3 see node2 sick",
                _views_are(cluster, others, {"node1": True, "node2": False, "node3": True}))
    third = _through_random_nodes(cluster, URLS, others, seed=3)
    assert {r[":status"] for r in third.values()} == {200}
    moved = {url: r["x-cluster-owner"] for url, r in third.items()}
    failover = _expected_owner(names, {"node2"})
    assert moved == {url: failover(url) for url in URLS}
    assert all(moved[u] == owners[u] for u in URLS if u not in shares["node2"])
    assert _fetches(origin, URLS) == {url: 2 if url in shares["node2"] else 1 for url in URLS}

    # node2 back: when its peers see it healthy, its share is its own again (fetched anew: it
    # restarted empty), the rest stays where it was
    victim.start()
    _wait_until("every node sees every node healthy",
                _views_are(cluster, names, {n: True for n in names}))
    fourth = _through_random_nodes(cluster, URLS, names, seed=4)
    assert {r[":status"] for r in fourth.values()} == {200}
    assert {url: r["x-cluster-owner"] for url, r in fourth.items()} == owners
    assert _fetches(origin, URLS) == {url: 3 if url in shares["node2"] else 1 for url in URLS}
    assert {url for url, r in fourth.items() if r["x-cache"] == "MISS"} == shares["node2"]


def test_a_stopped_owner_is_passed_over_before_its_peers_probes_notice():
    """Probes every 60 s: node2's peers still think it healthy, but a fetch from it fails and is
    retried on the next node on the ring, the one that will own those URLs once node2 is sick."""
    slow = example.Cluster(3, **{**PROBE, "probe_interval": "60s"})
    try:
        slow.start()
        names = list(slow.nodes)
        not_sick = lambda: all(False not in _health(slow.nodes[n]).values() for n in names)  # noqa: E731
        _wait_until("no node sees another sick", not_sick)
        slow.nodes["node2"].stop()
        owner, failover = _expected_owner(names, set()), _expected_owner(names, {"node2"})
        urls = URLS[:90]
        got = _through_random_nodes(slow, urls, ["node1", "node3"], seed=11)
        assert {r[":status"] for r in got.values()} == {200}
        assert {u: r["x-cluster-owner"] for u, r in got.items()} == {u: failover(u) for u in urls}
        assert any(owner(u) == "node2" for u in urls)
        assert _fetches(slow.origin, urls) == {u: 1 for u in urls}
        assert _health(slow.nodes["node1"])["node2"] is not False      # the probes had not noticed
    finally:
        slow.stop()


def test_requests_from_a_peer_go_to_the_origin_and_others_are_routed(cluster):
    """X-Cluster-Hop from inside the peers' ACL: served here; from outside it (127.0.0.2): ignored."""
    _all_up(cluster)
    names = list(cluster.nodes)
    url = "/hop/1"
    owner = _expected_owner(names, set())(url)
    other = cluster.nodes[next(n for n in names if n != owner)]
    status, h, _ = _get(other.port, url, headers={"X-Cluster-Hop": "node9"})
    assert (status, h["x-cluster-owner"]) == (200, other.name)            # trusted: no routing
    status, h, _ = _get(other.port, url, headers={"X-Cluster-Hop": "node9"}, source="127.0.0.2")
    assert (status, h["x-cluster-owner"], h["x-cluster-node"]) == (200, owner, other.name)


def test_purge_reaches_the_owner_and_bans_reach_every_node(cluster):
    _all_up(cluster)
    names = list(cluster.nodes)
    origin = cluster.origin
    urls = [f"/inv/{i}" for i in range(30)]
    _through_random_nodes(cluster, urls, names, seed=5)
    owner = {u: _expected_owner(names, set())(u) for u in urls}
    assert {u: origin.fetches()[u] for u in urls} == {u: 1 for u in urls}

    # PURGE through a node that does not own it: forwarded to the owner, which drops the object
    target = "/inv/0"
    entry = cluster.nodes[next(n for n in names if n != owner[target])]
    status, h, _ = _get(entry.port, target, method="PURGE")
    assert (status, h["x-cluster-owner"]) == (200, owner[target])
    status, h, _ = _get(entry.port, target)
    assert (status, h["x-cache"]) == (200, "MISS")
    assert origin.fetches()[target] == 2
    # not from outside the invalidators' ACL
    status, _, _ = _get(entry.port, target, method="PURGE", source="127.0.0.2")
    assert status == 405

    # BAN over HTTP, sent to every node: the objects matching go wherever they were
    for node in cluster.nodes.values():
        status, _, body = _get(node.port, "/", method="BAN", headers={"X-Ban-Url": "^/inv/1"})
        assert status == 200, body
        status, _, _ = _get(node.port, "/", method="BAN", headers={"X-Ban-Url": "^/inv/"},
                            source="127.0.0.2")
        assert status == 405
    # the same through each node's admin CLI
    for node in cluster.nodes.values():
        assert node.cli("ban obj.http.X-Url ~ ^/inv/2")[0] == 200
    again = _through_random_nodes(cluster, urls, names, seed=6)
    refetched = {u for u, r in again.items() if r["x-cache"] == "MISS"}
    banned = {u for u in urls if u.startswith(("/inv/1", "/inv/2"))}
    assert refetched == banned
    assert {u: origin.fetches()[u] for u in urls} == {
        u: 2 if u in banned or u == target else 1 for u in urls}


# -- key-to-node parity with varnishd ------------------------------------------------------------

def _ours(table: dict) -> list[dict]:
    """Our choices for the recorded VCL and sick sets, in the recorded layout."""
    out = []
    for t in table["tables"]:
        vcl = compile_vcl(table["vcl"], "owners.vcl")
        assert vcl.init(Context(method="vcl_init", vcl=vcl)).name == "ok"
        for name in t["sick"]:
            set_admin_health(vcl.backends[name], "sick")
        owners: dict[str, list[str]] = {d: [] for d in t["owners"]}
        for key in table["keys"]:
            req = HttpMessage("GET", key)
            ctx = Context(method="vcl_synth", req=req, req_top=req, vcl=vcl,
                          resp=HttpMessage("GET", key, status=200))
            vcl.subs["vcl_synth"](ctx)
            for d in owners:
                owners[d].append(ctx.resp.headers.get(d))
        out.append({"sick": t["sick"], "owners": owners})
    return out


def test_shard_owners_are_the_ones_varnishd_recorded():
    table = json.loads(OWNERS_TABLE.read_text())
    assert table["vcl"] == recorder.OWNERS_VCL and table["keys"] == recorder.KEYS, \
        "tests/data/shard_owners.json is stale: re-record it with tools/record_shard_owners.py"
    for ours, theirs in zip(_ours(table), table["tables"], strict=True):
        for d, want in theirs["owners"].items():
            diff = [k for k, a, b in zip(table["keys"], ours["owners"][d], want, strict=True) if a != b]
            assert not diff, f"{d} with {theirs['sick']} sick: {len(diff)} keys differ, e.g. {diff[:5]}"


def test_cluster_vcl_director_is_the_recorded_one():
    """The example's director is the table's `cluster`: same backends, same order, same replicas."""
    text = (ROOT / "examples" / "cluster" / "cluster.vcl").read_text()
    assert "new cluster = directors.shard();" in text and "cluster.reconfigure();" in text
    assert "cluster.backend(by=URL)" in text
    vcl = example.render_vcl({"node1": 1, "node2": 2, "node3": 3}, 4)
    assert re.findall(r"cluster\.add_backend\((\w+)\);", vcl) == ["node1", "node2", "node3"]
    assert re.findall(r"cluster\.add_backend\((\w+)\);", recorder.OWNERS_VCL) == ["node1", "node2", "node3"]


@pytest.mark.skipif(recorder.find_varnishd() is None, reason="varnishd not installed")
def test_shard_owners_are_the_ones_varnishd_chooses_live():
    live = recorder.record(recorder.find_varnishd())
    table = json.loads(OWNERS_TABLE.read_text())
    assert live["tables"] == table["tables"]
    assert _ours(live) == live["tables"]


# -- a mixed cluster: varnishd as one of the nodes ----------------------------------------------

class VarnishdNode:
    """varnishd 7.1 running cluster.vcl as one node (same interface as the example's Node)."""

    def __init__(self, name: str, port: int, vcl_text: str) -> None:
        self.name = name
        self.port = port
        self.dir = Path(tempfile.mkdtemp(prefix="clustervd", dir="/tmp"))
        os.chmod(self.dir, 0o755)          # varnishd drops to its own user before reading the VCL
        self.vcl = self.dir / "cluster.vcl"
        self.vcl.write_text(vcl_text)
        os.chmod(self.vcl, 0o644)
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.launch()
        self.wait_ready()

    def launch(self) -> None:
        self.proc = subprocess.Popen(
            [recorder.find_varnishd(), "-F", "-i", self.name, "-n", str(self.dir / "n"),
             "-a", f"{example.HOST}:{self.port}", "-f", str(self.vcl), "-T", "127.0.0.1:0",
             "-s", "malloc,32m"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Until it answers HTTP: its manager binds the port before the child can answer."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                if _get(self.port, "/.cluster/health")[0] == 200:
                    return
            except OSError:
                pass
            if self.proc.poll() is not None:
                raise RuntimeError("varnishd exited: " + self.proc.stderr.read().decode())
            if time.monotonic() > deadline:
                raise AssertionError("varnishd did not answer in time")
            time.sleep(0.1)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def cli(self, command: str) -> tuple[int, str]:
        adm = shutil.which("varnishadm") or "/usr/bin/varnishadm"
        out = subprocess.run([adm, "-n", str(self.dir / "n"), *shlex.split(command)], capture_output=True,
                             text=True, timeout=30)
        return (200 if out.returncode == 0 else 300), out.stdout

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(30)
            self.proc.stderr.close()
            self.proc = None
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.mark.skipif(recorder.find_varnishd() is None, reason="varnishd not installed")
def test_a_mixed_cluster_of_cacheserver_and_varnishd_nodes_agrees_on_owners():
    """node1 and node2 are cacheservers, node3 is varnishd, all on cluster.vcl: one origin fetch per
    URL whichever node is asked; with node2 stopped, both kinds move its share to the same nodes."""
    mixed = example.Cluster(3, **PROBE)
    theirs = mixed.nodes["node3"]
    mixed.nodes["node3"] = VarnishdNode("node3", theirs.port, mixed.vcl.read_text())
    try:
        mixed.start()
        _all_up(mixed)
        names = list(mixed.nodes)
        urls = URLS[:150]
        first = _through_random_nodes(mixed, urls, names, seed=7)
        owners = {u: r["x-cluster-owner"] for u, r in first.items()}
        want = {u: _expected_owner(names, set())(u) for u in urls}
        wrong = {u: (first[u].get("x-cluster-node"), owners[u], want[u]) for u in urls if owners[u] != want[u]}
        assert not wrong, (wrong, {n: _health(mixed.nodes[n]) for n in names},
                           {n: mixed.nodes[n].cli("backend.list -p")[1] for n in names})
        assert _fetches(mixed.origin, urls) == {u: 1 for u in urls}
        assert {r["x-cluster-node"] for r in first.values()} == set(names)
        # every entry node sent each URL to the same owner: a second round is all hits
        second = _through_random_nodes(mixed, urls, names, seed=8)
        assert {(r[":status"], r["x-cache"]) for r in second.values()} == {(200, "HIT")}

        mixed.nodes["node2"].stop()
        _wait_until("node1 and node3 see node2 sick",
                    _views_are(mixed, ["node1", "node3"], {"node1": True, "node2": False, "node3": True}))
        third = _through_random_nodes(mixed, urls, ["node1", "node3"], seed=9)
        failover = _expected_owner(names, {"node2"})
        assert {u: r["x-cluster-owner"] for u, r in third.items()} == {u: failover(u) for u in urls}
        assert _fetches(mixed.origin, urls) == {u: 2 if owners[u] == "node2" else 1 for u in urls}
    finally:
        mixed.stop()


def test_run_py_starts_takes_commands_and_stops_cleanly_on_ctrl_c():
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, str(ROOT / "examples" / "cluster" / "run.py")],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=env)
    workdir = None
    output: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [output.put(line) for line in proc.stdout], daemon=True).start()
    try:
        lines: list[str] = []

        def until(prefix: str, timeout: float = 30.0) -> str:
            deadline = time.monotonic() + timeout
            while (left := deadline - time.monotonic()) > 0:
                try:
                    line = output.get(timeout=left)
                except queue.Empty:
                    break
                lines.append(line)
                if line.startswith(prefix):
                    return line
            raise AssertionError(f"no line starting {prefix!r} in {timeout} s:\n" + "".join(lines))

        until("commands:")
        workdir = re.search(r"-S (/\S+)/secret", "".join(lines)).group(1)
        assert len(_processes_with(workdir)) == 3
        proc.stdin.write("stop node2\ncounts\n")
        proc.stdin.flush()
        until("node2 stopped")
        assert until("{") == "{}\n"
        assert len(_processes_with(workdir)) == 2
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 0
        assert until("stopping")
        assert _processes_with(workdir) == [] and not Path(workdir).exists()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pid in _processes_with(workdir) if workdir else []:     # nodes run.py left behind
            os.kill(pid, signal.SIGKILL)


def _processes_with(text: str) -> list[int]:
    """Processes whose command line mentions text."""
    found = []
    for pid in os.listdir("/proc"):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if text.encode() in f.read():
                    found.append(int(pid))
        except (OSError, ValueError):
            continue
    return found
