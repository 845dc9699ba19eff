"""The shared log from a running server, cachencsa, cachestat and the Prometheus page."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request

import pytest
from serverproc import ServerProcess, read_response

from cacheserver import cachelog, cachencsa, cachestat, prometheus, vsc, vsl
from cacheserver.counters import Counters
from cacheserver.vsl import VslReader, VslWriter
from cacheserver.vslq import groups_of

VCL = """vcl 4.1;
import std;
backend default none;
sub vcl_recv {
    std.log("key: value");
    set req.http.X-Set = "1";
    if (req.url == "/restart" && req.restarts == 0) { return (restart); }
    return (synth(200, "Hi"));
}
sub vcl_synth { set resp.http.X-Synth = "yes"; }
"""


@pytest.fixture
def server(tmp_path):
    vcl = tmp_path / "t.vcl"
    vcl.write_text(VCL)
    work = tmp_path / "work"
    proc = ServerProcess("-f", str(vcl), "-n", str(work))
    yield proc, work
    proc.stop()


def _get(proc, path: str, headers: str = "") -> bytes:
    with proc.connect() as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: h\r\n{headers}\r\n".encode())
        head, _ = read_response(sock)
    return head


def _wait_groups(work, grouping, want, timeout=10.0):
    deadline = time.monotonic() + timeout
    while True:
        groups = list(groups_of(VslReader(work).read(), grouping, flush=False))   # whole groups only
        if len(groups) >= want or time.monotonic() > deadline:
            return groups
        time.sleep(0.05)


def test_a_running_server_logs_linked_transactions(server):
    proc, work = server
    _get(proc, "/a", "User-Agent: t\r\n")
    _get(proc, "/restart")
    groups = _wait_groups(work, "session", 2)
    assert len(groups) == 2
    sess, req = groups[0][0], groups[0][1]
    assert sess.type == "sess" and req.type == "req" and req.parent == sess.vxid
    tags = [(r.tag, r.text) for r in req.records]
    assert ("ReqURL", "/a") in tags and ("ReqHeader", "User-Agent: t") in tags
    assert ("VCL_call", "RECV") in tags and ("VCL_Log", "key: value") in tags
    assert ("ReqHeader", "X-Set: 1") in tags                     # a VCL change is logged as it happens
    assert ("VCL_return", "synth") in tags and ("RespStatus", "200") in tags
    assert ("RespHeader", "X-Synth: yes") in tags
    assert tags[0] == ("Begin", f"req {sess.vxid} rxreq") and tags[-1] == ("End", "")
    assert any(t == "ReqAcct" for t, _ in tags)
    assert [r.tag for r in sess.records][:2] == ["Begin", "SessOpen"]
    assert any(r.tag == "SessClose" for r in sess.records)
    # the restart: the first request ends linking to the second, which begins from it
    restarted = [t for t in groups[1] if t.type == "req"]
    assert len(restarted) == 2
    first, second = restarted
    assert ("Link", f"req {second.vxid} restart") in [(r.tag, r.text) for r in first.records]
    assert second.records[0].text == f"req {first.vxid} restart" and second.level == 3


def test_cachelog_reads_a_running_server_and_refuses_a_stopped_one(server, capsys):
    proc, work = server
    _get(proc, "/x")
    _wait_groups(work, "request", 1)
    assert cachelog.main(["-n", str(work), "-d", "-g", "request", "-i", "ReqURL"]) == 0
    out = capsys.readouterr().out
    assert "-   ReqURL         /x" in out
    reader = VslReader(work)
    proc.stop()
    assert "stopped" in reader.stale()


def test_cachencsa_formats(tmp_path, capsys):
    w = VslWriter(tmp_path / vsl.FILE_NAME, size=1 << 20)
    w.write(2, "c", [("Begin", "req 1 rxreq"), ("Timestamp", "Start: 1700000000.000000 0.000000 0.000000"),
                     ("ReqStart", "10.0.0.9 5555 a0"), ("ReqMethod", "GET"), ("ReqURL", "/p?q=1"),
                     ("ReqProtocol", "HTTP/1.1"), ("ReqHeader", "Host: example.com"),
                     ("ReqHeader", "Referer: http://r/"), ("ReqHeader", "User-Agent: ua"),
                     ("ReqHeader", "Authorization: Basic dXNlcjpwdw=="), ("VCL_call", "RECV"),
                     ("VCL_Log", "key: value"), ("Hit", "3 10.0 0 0"), ("RespStatus", "200"),
                     ("RespHeader", "X-Varnish: 2 3"),
                     ("Timestamp", "Process: 1700000000.000100 0.000100 0.000100"),
                     ("Timestamp", "Resp: 1700000001.500000 1.500000 1.499900"),
                     ("ReqAcct", "50 0 50 200 1234 1434"), ("End", "")])
    w.write(3, "b", [("Begin", "bereq 2 fetch"), ("BereqMethod", "GET"), ("BereqURL", "/p?q=1"),
                     ("BereqProtocol", "HTTP/1.1"), ("BackendOpen", "7 default 192.0.2.1 80 127.0.0.1 4000 connect"),
                     ("BerespStatus", "404"), ("End", "")])
    w.close()

    def run(*argv):
        rc = cachencsa.main(["-n", str(tmp_path), "-d", *argv])
        return rc, capsys.readouterr()

    rc, out = run()
    assert rc == 0
    line = out.out.splitlines()[0]
    assert line.startswith('10.0.0.9 - user [')
    assert line.endswith('] "GET http://example.com/p?q=1 HTTP/1.1" 200 1234 "http://r/" "ua"')
    _, out = run("-F", "%m %U %q %H %s %b %B %I %O %D %T %{X-Varnish}o %{Varnish:hitmiss}x "
                       "%{Varnish:handling}x %{Varnish:side}x %{Varnish:vxid}x %{VCL_Log:key}x "
                       "%{VSL:ReqAcct[5]}x %{Varnish:time_firstbyte}x %% %l")
    assert out.out.splitlines() == ["GET /p ?q=1 HTTP/1.1 200 1234 1234 50 1434 1500000 1 2 3 hit hit c 2 "
                                    "value 1234 0.000100 % -"]
    _, out = run("-b", "-F", "%h %m %s %{Varnish:side}x")
    assert out.out.splitlines() == ["192.0.2.1 GET 404 b"]
    _, out = run("-b", "-c", "-F", "%{Varnish:side}x")
    assert out.out.splitlines() == ["c", "b"]
    _, out = run("-q", "ReqURL ~ nothing", "-F", "%s")
    assert out.out == ""
    _, out = run("-F", "%{%Y}t")
    assert out.out.strip() == time.strftime("%Y", time.localtime(1700000000))
    rc, out = run("-F", "%Z")
    assert rc == 1 and "Unknown format specifier" in out.err


class _FakeServer:
    def __init__(self) -> None:
        self.counters = Counters()
        self.started_at = time.time() - 10
        self.counters.cache_hit = 40
        self.counters.n_object = 3
        self.counters.s_fetch = 7
        self.counters.fetch_length = 5
        self.counters.extra.update({"SMA.s0.g_bytes": 1000, "VBE.boot.default.req": 9,
                                    "VBE.boot.default.happy": 1})


def test_cachestat_flags(tmp_path, capsys):
    vsc.write(_FakeServer(), tmp_path)
    assert cachestat.main(["-n", str(tmp_path), "-1", "-f", "MAIN.cache_hit", "-f", "MAIN.n_object"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["MAIN.cache_hit", "40", "4.00", "Cache", "hits"]
    assert lines[0].index("40 ") + 2 == 30        # varnishstat: name and value in 17 + 1 + 12 columns
    assert lines[1].split()[:3] == ["MAIN.n_object", "3", "."]           # a gauge has no rate
    cachestat.main(["-n", str(tmp_path), "-j", "-f", "MAIN.cache_*", "-f", "^*grace"])
    data = json.loads(capsys.readouterr().out)
    assert data["version"] == 1 and "timestamp" in data
    assert data["counters"]["MAIN.cache_hit"] == {"description": "Cache hits", "flag": "c", "format": "i",
                                                  "value": 40}
    assert "MAIN.cache_hit_grace" not in data["counters"] and "MAIN.cache_miss" in data["counters"]
    cachestat.main(["-n", str(tmp_path), "-l", "-f", "VBE.*"])
    assert capsys.readouterr().out.split() == ["VBE.boot.default.req", "VBE.boot.default.happy"]


def test_cachestat_missing_and_stale(tmp_path, capsys):
    assert cachestat.main(["-n", str(tmp_path / "none"), "-1"]) == 1
    assert "does not exist" in capsys.readouterr().err
    assert cachestat.main(["-n", str(tmp_path), "-1"]) == 1
    assert "missing" in capsys.readouterr().err
    vsc.write(_FakeServer(), tmp_path, stopped=True)
    assert cachestat.main(["-n", str(tmp_path), "-1", "-f", "MAIN.cache_hit"]) == 0
    captured = capsys.readouterr()
    assert "has stopped" in captured.err and "MAIN.cache_hit" in captured.out


@pytest.mark.parametrize("name,metric,labels", [
    ("MAIN.cache_hit", "varnish_main_cache_hit", {}),
    ("MAIN.fetch_length", "varnish_main_fetch", {"type": "length"}),
    ("MAIN.s_fetch", "varnish_main_fetch_total", {}),
    ("MAIN.sess_conn", "varnish_main_sessions", {"type": "conn"}),
    ("MAIN.s_sess", "varnish_main_sessions_total", {}),
    ("SMA.s0.g_bytes", "varnish_sma_g_bytes", {"type": "s0"}),
    ("VBE.boot.default.happy", "varnish_backend_happy", {"backend": "default", "server": "boot"}),
])
def test_prometheus_names_are_the_exporters(name, metric, labels):
    got, _, got_labels = prometheus.metric_of(name)
    assert (got, got_labels) == (metric, labels)


def test_prometheus_page():
    from aiohttp.test_utils import TestClient, TestServer

    async def scrape() -> tuple[int, str, str]:
        async with TestClient(TestServer(prometheus.make_app(_FakeServer()))) as client:
            resp = await client.get("/metrics")
            return resp.status, resp.headers["Content-Type"], await resp.text()

    status, ctype, text = asyncio.run(scrape())
    assert status == 200 and ctype.startswith("text/plain")
    lines = text.splitlines()
    assert "varnish_up 1.0" in lines
    assert "varnish_main_cache_hit 40.0" in lines
    assert 'varnish_main_fetch{type="length"} 5.0' in lines
    assert "varnish_main_fetch_total 7.0" in lines
    assert 'varnish_backend_req{backend="default",server="boot"} 9.0' in lines
    assert 'varnish_sma_g_bytes{type="s0"} 1000.0' in lines
    assert "# TYPE varnish_main_cache_hit gauge" in lines
    assert "# HELP varnish_main_cache_hit Cache hits" in lines


def test_prometheus_listen_param(tmp_path):
    proc = ServerProcess("-b", "127.0.0.1:9", "-n", str(tmp_path / "w"), "-p", "prometheus_listen=127.0.0.1:0")
    try:
        line = proc.wait_for_output(r"Prometheus metrics on http://\S+/metrics")
        url = line.split("on ", 1)[1].strip()
        body = urllib.request.urlopen(url, timeout=5).read().decode()
        assert "varnish_main_uptime" in body and "varnish_up 1.0" in body
    finally:
        proc.stop()
