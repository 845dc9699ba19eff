"""`-p prometheus_listen=ADDR:PORT`: the counters at /metrics in Prometheus text format.

Metric names and labels are prometheus_varnish_exporter's (varnish_main_cache_hit,
varnish_backend_happy{backend,server}, varnish_sma_g_bytes{type}, varnish_main_fetch{type},
varnish_main_sessions{type}, varnish_up, varnish_version), so dashboards built on it work. Like the
exporter, every metric is typed as a gauge.
"""

from __future__ import annotations

from collections.abc import Iterator

from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from cacheserver import vsc

_GROUPS = (("VBE.", "backend"), ("SMA.", "sma"), ("MGT.", "mgt"), ("LCK.", "lck"), ("MEMPOOL.", "mempool"),
           ("MAIN.", "main"))
# The exporter's groupings: counters of one family under one name with a label, their total apart.
_GROUPINGS = (("main_fetch", "main_fetch", "main_s_fetch", "Number of fetches", "type"),
              ("main_sess", "main_sessions", "main_s_sess", "Number of sessions", "type"),
              ("main_n_wrk", "main_worker_threads", "main_n_wrk", "Number of worker threads", "type"),
              ("main_n_ban", "main_bans", "main_n_ban", "Number of bans", "action"))
VERSION = ("7", "1", "1")


def metric_of(name: str) -> tuple[str, str, dict[str, str]]:
    """A varnishstat counter's Prometheus name, help text and labels, as the exporter names it."""
    group, rest = "main", name
    for prefix, g in _GROUPS:
        if name.startswith(prefix):
            group, rest = g, name[len(prefix):]
            break
    labels: dict[str, str] = {}
    if group == "backend":
        # VBE.<vcl>.<backend>.<field>
        parts = rest.split(".")
        if len(parts) >= 3:
            labels = {"backend": ".".join(parts[1:-1]), "server": parts[0]}
            rest = parts[-1]
    elif group == "sma":
        ident, _, field = rest.partition(".")
        if field:
            labels = {"type": ident}
            rest = field
    fq = f"{group}_{rest.lower().replace('.', '_')}"
    help_text = vsc.description(name) or name
    for prefix, new, total, desc, key in _GROUPINGS:
        if fq == total:
            return f"varnish_{new}_total", desc, labels
        if fq.startswith(prefix + "_"):
            labels = dict(labels, **{key: fq[len(prefix) + 1:]})
            return f"varnish_{new}", desc, labels
    return f"varnish_{fq}", help_text, labels


class _Collector:
    def __init__(self, server) -> None:
        self.server = server

    def collect(self) -> Iterator[GaugeMetricFamily]:
        families: dict[str, GaugeMetricFamily] = {}
        for name, value in vsc.snapshot(self.server).items():
            metric, help_text, labels = metric_of(name)
            family = families.get(metric)
            if family is None:
                family = families[metric] = GaugeMetricFamily(metric, help_text, labels=sorted(labels))
            family.add_metric([labels[k] for k in sorted(labels)], value)
        up = GaugeMetricFamily("varnish_up", "Was the last scrape of varnish successful.")
        up.add_metric([], 1)
        version = GaugeMetricFamily("varnish_version", "Varnish version information",
                                    labels=["major", "minor", "patch", "version"])
        version.add_metric([*VERSION, ".".join(VERSION)], 1)
        yield up
        yield version
        yield from families.values()


def make_app(server) -> web.Application:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector(server))

    async def metrics(request: web.Request) -> web.Response:
        body = generate_latest(registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def index(request: web.Request) -> web.Response:
        return web.Response(text='<html><body><a href="/metrics">Metrics</a></body></html>',
                            content_type="text/html")

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/", index)
    return app


def parse_listen(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"prometheus_listen: expected ADDR:PORT, got {text!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


async def start(server, listen: str) -> web.AppRunner:
    """Serve /metrics on `listen` until the runner is cleaned up."""
    host, port = parse_listen(listen)
    runner = web.AppRunner(make_app(server), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    return runner


def bound_address(runner: web.AppRunner) -> str:
    for site in runner.sites:
        sockets = getattr(site._server, "sockets", None) or []   # aiohttp keeps the server there
        for sock in sockets:
            host, port = sock.getsockname()[:2]
            return f"{host}:{port}"
    return "?"
