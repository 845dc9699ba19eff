"""The scenarios: each a function of a Bench that returns table rows. They run the servers under test
in alternation (A B A B ...), every round, and keep the median of each figure.

Every scenario first checks that each server gives the right answer (status and body bytes), so a
fast wrong answer is never measured; with --short that check, and a brief load, is all it does.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bench import client, origin
from bench.common import ROOT
from bench.load import have_wrk, wrk
from bench.procs import PeakRSS, cpu_seconds, rss_mb
from bench.servers import SYNTH_BODY, Bare, Cacheserver, Process, Varnishd, Workspace
from bench.tiny_http import BODY, GZ_PAGE, PAGE

BIG_BYTES = 1 << 30              # the streamed pass body (--short: SHORT_BIG_BYTES)
SHORT_BIG_BYTES = 16 << 20
STREAM_GROWTH_TARGET_MB = 64
OBJECT_COUNTS = (10, 1_000, 100_000)      # --short: SHORT_OBJECT_COUNTS
SHORT_OBJECT_COUNTS = (10, 100, 1_000)
MISS_URLS = 1_000
HELLO = b"Hello World!\n"


@dataclass
class Options:
    rounds: int = 3
    duration: float = 5.0
    connections: int = 16
    short: bool = False
    varnishd: str | None = None               # None: not compared
    compare_roots: list[Path] = field(default_factory=list)


@dataclass
class Row:
    """One line of the table: a scenario's figures for one server (medians over the rounds)."""

    scenario: str
    server: str
    rate: float | None = None
    unit: str = "req/s"
    p50_ms: float | None = None
    p99_ms: float | None = None
    peak_rss_mb: float | None = None
    cpu_us: float | None = None               # server CPU time per request
    ratio: float | None = None                # rate / the reference server's rate
    reference: str = ""
    note: str = ""
    rates: list[float] = field(default_factory=list)     # every round's rate


class WrongAnswer(AssertionError):
    pass


def expect(server: Process, path: str, body: bytes | None = None, status: int = 200,
           headers: dict[str, str] | None = None, absent: tuple[str, ...] = ()) -> None:
    """GET path from server twice (a miss, then usually a hit) and check status, body and headers."""
    for _ in range(2):
        got_status, got_headers, got_body = client.get(server.port, path, headers)
        if got_status != status:
            raise WrongAnswer(f"{server.label} {path}: status {got_status}, expected {status}")
        if body is not None and got_body != body:
            raise WrongAnswer(f"{server.label} {path}: body of {len(got_body)} bytes differs from the "
                              f"expected {len(body)} bytes")
        for name in absent:
            if name in got_headers:
                raise WrongAnswer(f"{server.label} {path}: unexpected {name}: {got_headers[name]}")


class Bench:
    """What every scenario shares: options, the origin, the VCL, and the servers to compare."""

    def __init__(self, options: Options, workspace: Workspace, origin_port: int) -> None:
        self.options = options
        self.workspace = workspace
        self.origin_port = origin_port
        self.vcl = workspace.write_vcl(origin_port)

    @property
    def rounds(self) -> int:
        return 1 if self.options.short else self.options.rounds

    @property
    def duration(self) -> float:
        return 1.0 if self.options.short else self.options.duration

    def cacheservers(self, vcl: Path | None = None) -> list[Process]:
        servers: list[Process] = [Cacheserver(self.workspace, vcl or self.vcl)]
        for root in self.options.compare_roots:
            servers.append(Cacheserver(self.workspace, vcl or self.vcl, root.resolve(),
                                       label=f"cacheserver@{root.name}"))
        return servers

    def servers(self) -> list[Process]:
        """cacheserver (and --compare-root checkouts), then varnishd when compared: the reference last."""
        servers = self.cacheservers()
        if self.options.varnishd:
            servers.append(Varnishd(self.workspace, self.vcl, self.options.varnishd))
        return servers

    def url(self, server: Process, path: str) -> str:
        return f"http://127.0.0.1:{server.port}{path}"

    def origin_count(self) -> int:
        """How many requests the origin has answered so far."""
        return int(client.get(self.origin_port, origin.COUNT_PATH.decode())[2])

    def measure(self, server: Process, path: str, **wrk_args: object) -> dict:
        """One wrk run against server, with its peak RSS, CPU time per request, and the share of its
        requests that reached the origin."""
        pids = server.pids()
        cpu_before = cpu_seconds(pids)
        fetched_before = self.origin_count()
        with PeakRSS(server.pid) as peak:
            result = wrk(self.url(server, path), self.duration, self.options.connections, **wrk_args)
        requests = max(result["requests"], 1)
        result["cpu_us"] = (cpu_seconds(server.pids()) - cpu_before) / requests * 1e6
        result["fetch_share"] = (self.origin_count() - fetched_before) / requests
        result["peak_rss_mb"] = peak.peak
        if self.options.short and result["errors"]:
            raise WrongAnswer(f"{server.label} {path}: wrk counted {result['errors']} errors")
        return result

    def wrk_scenario(self, scenario: str, path: str, check: Callable[[Process], None],
                     servers: list[Process] | None = None, **wrk_args: object) -> list[Row]:
        """Start the servers, check their answers, then run wrk on each in alternation for the rounds."""
        servers = servers if servers is not None else self.servers()
        started: list[Process] = []
        try:
            for server in servers:
                server.start()
                started.append(server)
                check(server)
            if not have_wrk():
                return [Row(scenario, s.label, note="answers checked; wrk not installed") for s in servers]
            if not self.options.short:
                for server in servers:          # warm-up: connections, caches, the programs
                    wrk(self.url(server, path), 1, self.options.connections, **wrk_args)
            runs: dict[str, list[dict]] = {s.label: [] for s in servers}
            for _ in range(self.rounds):
                for server in servers:
                    runs[server.label].append(self.measure(server, path, **wrk_args))
        finally:
            for server in started:
                server.stop()
        return with_ratios([summarize(scenario, label, r) for label, r in runs.items()])


def summarize(scenario: str, server: str, runs: list[dict]) -> Row:
    def median(key: str) -> float | None:
        values = [r[key] for r in runs if key in r]
        return statistics.median(values) if values else None

    errors = sum(r["errors"] for r in runs)
    notes = [f"{errors} errors"] if errors else []
    fetches = median("fetch_share")
    if fetches is not None and fetches >= 0.0005:
        notes.append(f"{fetches:.1%} of requests fetched")
    return Row(scenario, server, rate=median("rps"), p50_ms=median("p50_ms"), p99_ms=median("p99_ms"),
               peak_rss_mb=max(r["peak_rss_mb"] for r in runs), cpu_us=median("cpu_us"),
               note="; ".join(notes), rates=[r["rps"] for r in runs])


def with_ratios(rows: list[Row]) -> list[Row]:
    """The last row is the reference (varnishd, or the bare server); the others get rate / its rate."""
    if len(rows) < 2 or not rows[-1].rate:
        return rows
    ref = rows[-1]
    for row in rows[:-1]:
        if row.rate is not None:
            row.ratio = row.rate / ref.rate
            row.reference = ref.server
    return rows


# ---------------------------------------------------------------------------------------------------
# The scenarios.

def hit(b: Bench) -> list[Row]:
    """Cache hits of a 1 KiB object."""
    return b.wrk_scenario("hit 1 KiB", "/obj", lambda s: expect(s, "/obj", BODY))


def hit100k(b: Bench) -> list[Row]:
    """Cache hits of a 100 KiB object."""
    return b.wrk_scenario("hit 100 KiB", "/obj100k", lambda s: expect(s, "/obj100k", origin.BODY_100K))


def miss(b: Bench) -> list[Row]:
    """A miss storm: 1,000 URLs with a TTL of 1 s (no grace), wrk's Lua script picking one at random."""
    return b.wrk_scenario(f"miss storm (TTL 1s, {MISS_URLS:,} URLs)", "/miss/1",
                          lambda s: expect(s, "/miss/1", BODY),
                          script="random_url.lua", script_args=("/miss/", str(MISS_URLS)))


def pass_(b: Bench) -> list[Row]:
    """Pass (VCL return (pass)): every request a backend fetch of 1 KiB."""
    return b.wrk_scenario("pass 1 KiB", "/pass/obj", lambda s: expect(s, "/pass/obj", BODY))


def synth(b: Bench) -> list[Row]:
    """A synthetic answer made in vcl_synth, no backend."""
    return b.wrk_scenario("synth from VCL", "/synth", lambda s: expect(s, "/synth", SYNTH_BODY.encode()))


def esi(b: Bench) -> list[Row]:
    """An ESI page of 10 includes, page and fragments all cached, assembled on every delivery."""
    page = origin.esi_assembled()
    return b.wrk_scenario(f"ESI page ({origin.ESI_FRAGMENTS} includes)", "/esi/page",
                          lambda s: expect(s, "/esi/page", page))


def gzip(b: Bench) -> list[Row]:
    """A cached gzipped 16 KiB page delivered to a client without gzip (gunzipped on every delivery)."""
    return b.wrk_scenario("gzip page to non-gzip client", "/gzip",
                          lambda s: expect(s, "/gzip", PAGE, absent=("content-encoding",)))


def gzipclient(b: Bench) -> list[Row]:
    """The same gzipped page to a client that takes gzip (sent as stored)."""
    def check(server: Process) -> None:
        expect(server, "/gzip", GZ_PAGE, headers={"Accept-Encoding": "gzip"})

    return b.wrk_scenario("gzip page to gzip client", "/gzip", check, headers=("Accept-Encoding: gzip",))


def tcp(b: Bench) -> list[Row]:
    """The docs' /tcp (default.vcl: tinykvm.steal into programs/hello.py) against a bare asyncio server
    answering the same bytes (varnishd has no steal)."""
    servers = [*b.cacheservers(ROOT / "default.vcl"), Bare(b.workspace)]
    return b.wrk_scenario("/tcp steal (vs bare asyncio)", "/tcp", lambda s: expect(s, "/tcp", HELLO), servers)


def stream(b: Bench) -> list[Row]:
    """A 1 GiB body through pass, streamed: throughput, and RSS growth (target < 64 MB)."""
    size = SHORT_BIG_BYTES if b.options.short else BIG_BYTES
    path = f"/pass/big?bytes={size}"
    scenario = f"{size >> 30} GiB streamed pass" if size >= 1 << 30 else f"{size >> 20} MiB streamed pass"
    servers = b.servers()
    runs: dict[str, list[tuple[float, float, float]]] = {s.label: [] for s in servers}
    started: list[Process] = []
    try:
        for server in servers:
            server.start()
            started.append(server)
            expect(server, "/pass/obj", BODY)       # warm: backend connection open
        for _ in range(b.rounds):
            for server in servers:
                before = rss_mb(server.pids())
                with PeakRSS(server.pid) as peak:
                    status, got, seconds = client.stream(server.port, path)
                if status != 200 or got != size:
                    raise WrongAnswer(f"{server.label} {path}: status {status}, {got} of {size} bytes")
                runs[server.label].append((got / seconds / 1e6, peak.peak, peak.peak - before))
    finally:
        for server in started:
            server.stop()
    rows = []
    for label, r in runs.items():
        growth = max(g for _, _, g in r)
        verdict = ""            # the target is cacheserver's; varnishd buffers what the client has not read
        if label.startswith("cacheserver") and not b.options.short:
            verdict = " (target < 64)" if growth < STREAM_GROWTH_TARGET_MB else " (over the 64 MB target)"
        rows.append(Row(scenario, label, rate=statistics.median(x for x, _, _ in r), unit="MB/s",
                        peak_rss_mb=max(p for _, p, _ in r), rates=[x for x, _, _ in r],
                        note=f"RSS growth {growth:.1f} MB{verdict}"))
    return with_ratios(rows)


def objects(b: Bench) -> list[Row]:
    """Memory after filling 100k 1 KiB objects, and the hit rate at 10, 1,000 and 100,000 cached
    objects (a fresh server each round, filled step by step; hits spread at random over the objects)."""
    counts = SHORT_OBJECT_COUNTS if b.options.short else OBJECT_COUNTS
    total = counts[-1]
    labels = [s.label for s in b.servers()]
    fills: dict[str, list[tuple[float, float, float]]] = {label: [] for label in labels}
    hits: dict[tuple[int, str], list[dict]] = {(n, label): [] for n in counts for label in labels}
    for _ in range(b.rounds):
        for server in b.servers():      # fresh instances, so every round fills an empty cache
            with server:
                expect(server, "/obj", BODY)
                before = rss_mb(server.pids())
                filled, fill_seconds = 0, 0.0
                for n in counts:
                    start = time.monotonic()
                    failed = client.fill(server.port, [f"/o/{i}" for i in range(filled + 1, n + 1)])
                    fill_seconds += time.monotonic() - start
                    if failed:
                        raise WrongAnswer(f"{server.label}: {failed} fills were not 200")
                    filled = n
                    expect(server, f"/o/{n}", BODY)
                    if have_wrk():
                        hits[(n, server.label)].append(b.measure(server, "/o/1", script="random_url.lua",
                                                                 script_args=("/o/", str(n))))
                after = rss_mb(server.pids())
                fills[server.label].append((total / fill_seconds, after - before, after))
    rows = []
    payload = total * len(BODY) / (1 << 20)
    growths = {label: statistics.median(g for _, g, _ in r) for label, r in fills.items()}
    reference_growth = growths[labels[-1]] if len(labels) > 1 else None
    for label, r in fills.items():
        note = f"RSS growth {growths[label]:.0f} MB for {payload:.0f} MB of payload"
        if reference_growth and label != labels[-1]:
            note += f" ({growths[label] / reference_growth:.2f}x {labels[-1]}'s)"
        rows.append(Row(f"{total:,} objects: fill (8 conns, Python client)", label,
                        rate=statistics.median(x for x, _, _ in r), peak_rss_mb=max(a for _, _, a in r),
                        rates=[x for x, _, _ in r], note=note))
    rows = with_ratios(rows)
    if have_wrk():
        for n in counts:
            rows += with_ratios([summarize(f"hits spread over {n:,} objects", label, hits[(n, label)])
                                 for label in labels])
    return rows


SCENARIOS: dict[str, Callable[[Bench], list[Row]]] = {
    "hit": hit,
    "hit100k": hit100k,
    "miss": miss,
    "pass": pass_,
    "synth": synth,
    "esi": esi,
    "gzip": gzip,
    "gzipclient": gzipclient,
    "tcp": tcp,
    "stream": stream,
    "objects": objects,
}
