"""tinykvm's VCL API beyond steal(), end to end: a real cacheserver, real program processes.

program() as a backend (cached like any other), chain(), to_string(), synth(), library(),
configure(), start(), main_arguments(), invalidate_programs(), stats(), live_update() and
live_update_file(); and each function refused at compile time outside its subroutines.
"""

from __future__ import annotations

import http.client
import json
import time

import pytest
from serverproc import ServerProcess

from cacheserver.server import Server, VCLLoadError
from vcl.compiler import compile_vcl
from vcl.errors import VCLError

LIBRARY = """{
    // groups and programs, as libvmod-tinykvm's docs/glossary.md has them
    "small": { "concurrency": 1, "max_request_time": 5.0 /* seconds */ },
    "counter": { "group": "small", "filename": "counter.py" },
    "liveprog": { "filename": "v1.py", "key": "sesame" }
}
"""

COUNTER = '''import itertools
from kvm_api import set_backend_get, wait_for_requests
n = itertools.count(1)
set_backend_get(lambda url, arg: (200, "text/plain", f"{next(n)} {url}\\n", {"Cache-Control": "max-age=60"}))
wait_for_requests()
'''
STREAM = '''from kvm_api import backend_response, set_backend_get, wait_for_requests

def pieces(n):
    for i in range(n):
        yield b"%05d" % i + b"x" * 65531

def on_get(url, arg):
    backend_response(200, "application/octet-stream", pieces(int(arg)))

set_backend_get(on_get)
wait_for_requests()
'''
STATUS = '''from kvm_api import set_backend_get, wait_for_requests
set_backend_get(lambda url, arg: (int(arg), "text/plain", "status %s from %s" % (arg, url)))
wait_for_requests()
'''
UPPER = '''from kvm_api import request, set_backend_post, wait_for_requests

def on_post(url, arg, ctype, body):
    return 200, "text/x-upper", body.upper() + b" (" + ctype.encode() + b", " + request().method.encode() + b")"

set_backend_post(on_post)
wait_for_requests()
'''
ARGV = '''import os, sys
from kvm_api import set_backend_get, wait_for_requests
set_backend_get(lambda url, arg: (200, "text/plain", " ".join(sys.argv[1:]) + " DEMO=" + os.environ.get("DEMO", "-")))
wait_for_requests()
'''
V1 = '''from kvm_api import set_backend_get, wait_for_requests
set_backend_get(lambda url, arg: (200, "text/plain", "version 1"))
wait_for_requests()
'''
V2 = V1.replace("version 1", "version 2")
BROKEN = 'raise RuntimeError("this version does not load")\n'

VCL = """vcl 4.1;
import tinykvm;
backend default none;

sub vcl_init {
    tinykvm.library("lib.json");
    tinykvm.configure("argv", {"{ "environment": ["DEMO=42"] }"});
    tinykvm.main_arguments("argv", "one two");
    tinykvm.start("counter", async = false);
}

sub vcl_recv {
    if (req.url ~ "^/(tostring|synth|stats|invalidate|livefile|badstring)") {
        return (synth(700));
    }
    if (req.method == "POST" || req.url ~ "^/pass") {
        return (pass);
    }
}

sub vcl_backend_fetch {
    if (bereq.url ~ "^/beerr") {
        return (error(500));
    }
    if (bereq.method == "POST" && bereq.http.X-Live-Key) {
        set bereq.backend = tinykvm.live_update("liveprog", bereq.http.X-Live-Key, 1KB);
    } else if (bereq.url ~ "/counter") {
        set bereq.backend = tinykvm.program("counter");
    } else if (bereq.url ~ "^/stream/") {
        set bereq.backend = tinykvm.program("stream", regsub(bereq.url, "^/stream/", ""));
    } else if (bereq.url ~ "^/chain/ok") {
        tinykvm.chain("status", "200");
        set bereq.backend = tinykvm.program("upper");
    } else if (bereq.url ~ "^/chain/stop") {
        tinykvm.chain("status", "404", error_treshold = 400);
        set bereq.backend = tinykvm.program("upper");
    } else if (bereq.url ~ "^/chain/bad") {
        tinykvm.chain("status", "200");
        set bereq.backend = tinykvm.program("status", "42");
    } else if (bereq.url ~ "^/argv") {
        set bereq.backend = tinykvm.program("argv");
    } else if (bereq.url ~ "/live") {
        set bereq.backend = tinykvm.program("liveprog");
    } else if (bereq.url ~ "^/hello") {
        set bereq.backend = tinykvm.program("hello");
    } else {
        set bereq.backend = tinykvm.program("json_api", "v1");
    }
}

sub vcl_backend_error {
    set beresp.http.X-Result = tinykvm.synth(0, "status", bereq.url, "418");
    return (deliver);
}

sub vcl_backend_response {
    set beresp.http.X-Backend = beresp.backend.name;
}

sub vcl_synth {
    if (req.url ~ "^/tostring") {
        set resp.body = "[" + tinykvm.to_string("status", req.url, "201", "failed") + "]";
    } else if (req.url ~ "^/badstring") {
        set resp.body = "[" + tinykvm.to_string("status", req.url, "500", on_error = "failed") + "]";
    } else if (req.url ~ "^/synth") {
        set resp.http.X-Result = tinykvm.synth(0, "status", req.url, "203");
    } else if (req.url ~ "^/stats") {
        set resp.body = tinykvm.stats(req.http.X-Pattern);
    } else if (req.url ~ "^/invalidate") {
        set resp.body = "unloaded " + tinykvm.invalidate_programs(req.http.X-Pattern);
    } else if (req.url ~ "^/livefile") {
        set resp.body = "swapped " + tinykvm.live_update_file("liveprog", req.http.X-File);
    }
    return (deliver);
}
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    d = tmp_path_factory.mktemp("tkb")
    files = {"lib.json": LIBRARY, "counter.py": COUNTER, "stream.py": STREAM, "status.py": STATUS,
             "upper.py": UPPER, "argv.py": ARGV, "v1.py": V1, "v2.py": V2, "broken.py": BROKEN, "t.vcl": VCL}
    for name, text in files.items():
        (d / name).write_text(text)
    srv = ServerProcess("-f", str(d / "t.vcl"))
    srv.dir = d
    yield srv
    srv.stop()


def fetch(srv: ServerProcess, url: str, method: str = "GET", body: bytes | None = None,
          headers: dict | None = None) -> tuple[int, dict, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=10)
    try:
        conn.request(method, url, body=body, headers=headers or {})
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        conn.close()


def stats(srv: ServerProcess, pattern: str = "") -> dict:
    status, _, body = fetch(srv, "/stats", headers={"X-Pattern": pattern})
    assert status == 700
    return json.loads(body)


def test_start_in_vcl_init_runs_the_program_before_any_request(server):
    """start("counter", async = false): its process runs before the server serves."""
    s = stats(server, "^counter$")["counter"]
    assert (s["starts"], s["requests"]) == (1, 0) and s["memory"] > 0


def test_json_api_answers_from_the_request(server):
    status, headers, body = fetch(server, "/api/v1?q=1", headers={"X-Demo": "yes"})
    assert status == 200 and headers["content-type"] == "application/json"
    got = json.loads(body)
    assert got["method"] == "GET" and got["url"] == "/api/v1?q=1" and got["arg"] == "v1"
    assert got["headers"]["x-demo"] == "yes" and got["body_length"] == 0
    assert headers["x-backend"] == "tinykvm.json_api"
    status, _, body = fetch(server, "/pass/post", "POST", b"12345", {"Content-Type": "text/plain"})
    got = json.loads(body)
    assert (status, got["method"], got["body_length"], got["headers"]["content-type"]) == (
        200, "POST", 5, "text/plain")


def test_hello_on_get_is_a_backend(server):
    status, headers, body = fetch(server, "/hello")
    assert (status, headers["content-type"], body) == (200, "text/plain", b"Hello World!\n")


def test_program_response_is_cached_with_its_ttl(server):
    """The first request fetches (counter 1), the second is a hit from the cache (still 1); a pass
    goes to the program again. counter was started by start(async=false) in vcl_init."""
    _, h1, b1 = fetch(server, "/counter/a")
    _, h2, b2 = fetch(server, "/counter/a")
    assert b1 == b2 and b1.endswith(b" /counter/a\n")
    assert h2["age"] is not None and len(h2["x-varnish"].split()) == 2      # a hit
    _, _, b3 = fetch(server, "/pass/counter")
    assert b3.endswith(b" /pass/counter\n") and b3.split()[0] != b1.split()[0]
    assert stats(server, "^counter$")["counter"]["starts"] >= 1


def test_a_streamed_body_arrives_whole(server):
    status, headers, body = fetch(server, "/stream/40")                      # 40 pieces of 64 KiB
    assert status == 200 and len(body) == 40 * 65536
    assert [body[i * 65536:i * 65536 + 5] for i in (0, 39)] == [b"00000", b"00039"]


def test_chain_feeds_each_output_to_the_next_and_stops_at_the_threshold(server):
    status, headers, body = fetch(server, "/chain/ok")
    assert (status, body) == (200, b"STATUS 200 FROM /CHAIN/OK (text/plain, POST)")
    status, _, body = fetch(server, "/chain/stop")
    assert (status, body) == (404, b"status 404 from /chain/stop")


def test_a_status_that_is_not_http_fails_the_fetch(server):
    """Status 42 from the program: vcl_backend_error (which this VCL answers with a 418)."""
    status, _, body = fetch(server, "/chain/bad")
    assert (status, body) == (418, b"status 418 from /chain/bad")


def test_to_string_and_its_error_string(server):
    assert fetch(server, "/tostring")[2] == b"[status 201 from /tostring]"
    assert fetch(server, "/badstring")[2] == b"[failed]"


def test_synth_makes_the_synthetic_response(server):
    status, headers, body = fetch(server, "/synth")
    assert (status, body, headers["x-result"], headers["content-type"]) == (
        203, b"status 203 from /synth", "203", "text/plain")


def test_synth_in_vcl_backend_error(server):
    status, headers, body = fetch(server, "/beerr")
    assert (status, body, headers["x-result"]) == (418, b"status 418 from /beerr", "418")


def test_main_arguments_and_environment(server):
    assert fetch(server, "/argv")[2] == b"argv  one two DEMO=42"


def test_stats_counts_requests_and_invalidate_unloads(server):
    fetch(server, "/pass/json")
    s = stats(server, "json_api")
    assert list(s) == ["json_api"]
    js = s["json_api"]
    assert js["requests"] >= 1 and js["failures"] == {} and js["memory"] > 0
    assert set(js["steal"]) == {"started", "accepted", "refused", "failed", "closed", "held"}
    assert fetch(server, "/invalidate", headers={"X-Pattern": "^json_api$"})[2] == b"unloaded 1"
    assert stats(server, "json_api")["json_api"]["memory"] == 0                # no process left
    assert fetch(server, "/pass/json")[0] == 200                             # started again
    assert stats(server, "json_api")["json_api"]["starts"] == js["starts"] + 1


def test_live_update_post_and_file(server):
    d = server.dir
    assert fetch(server, "/pass/live")[2] == b"version 1"
    # a wrong key, a program that does not load, a body over max_size: the old program stays
    assert fetch(server, "/up", "POST", V2.encode(), {"X-Live-Key": "nope"})[0] == 403
    status, _, body = fetch(server, "/up", "POST", BROKEN.encode(), {"X-Live-Key": "sesame"})
    assert status == 400 and b"does not load" in body
    assert fetch(server, "/up", "POST", b"#" * 2000, {"X-Live-Key": "sesame"})[0] == 413
    assert fetch(server, "/pass/live")[2] == b"version 1"
    status, _, body = fetch(server, "/up", "POST", V2.encode(), {"X-Live-Key": "sesame"})
    assert status == 200, body
    assert fetch(server, "/pass/live")[2] == b"version 2"
    # live_update_file(): a failed load is false and keeps the running one
    assert fetch(server, "/livefile", headers={"X-File": str(d / "broken.py")})[2] == b"swapped false"
    assert fetch(server, "/pass/live")[2] == b"version 2"
    assert fetch(server, "/livefile", headers={"X-File": "v1.py"})[2] == b"swapped true"
    assert fetch(server, "/pass/live")[2] == b"version 1"


def test_an_unknown_program_is_a_503(tmp_path):
    """program() of a name nobody defined fails the fetch; the VCL with it still loads."""
    vcl = tmp_path / "u.vcl"
    vcl.write_text('vcl 4.1;\nimport tinykvm;\nbackend default none;\n'
                   'sub vcl_backend_fetch { set bereq.backend = tinykvm.program("nosuch"); }\n')
    srv = ServerProcess("-f", str(vcl))
    try:
        assert fetch(srv, "/")[0] == 503
    finally:
        srv.stop()


@pytest.mark.parametrize(("vcl_init", "message"), [
    ('tinykvm.library("https://example.com/compute.json");', "only local files"),
    ('tinykvm.library("lib.json");', "programs are not fetched over the network"),
    ('tinykvm.configure("x", "{ not json }");', "invalid JSON"),
    ('tinykvm.configure("x", {"{"concurrency": true }"});', "'concurrency': expected a number"),
    ('tinykvm.configure("x", {"{"colour": 1}"});', "'colour': unknown setting"),
    ('tinykvm.start("nosuch");', "no such program 'nosuch'"),
])
def test_bad_definitions_fail_the_vcl_load(tmp_path, vcl_init, message):
    (tmp_path / "lib.json").write_text('{"p": {"uri": "https://x/p", "filename": "p.py"}}')
    source = f"vcl 4.1;\nimport tinykvm;\nbackend default none;\nsub vcl_init {{ {vcl_init} }}\n"
    with pytest.raises(VCLLoadError) as info:
        Server().vcl_load("b", source, str(tmp_path / "b.vcl"))
    assert "Failed initialization" in str(info.value) and message in str(info.value), str(info.value)


# -- where each function may be called -------------------------------------------------------------

# function: (a call as a statement, where the .vcc allows it, where it does not)
CALLS = {
    "library": ('tinykvm.library("x.json");', "vcl_init", "vcl_recv"),
    "configure": ('tinykvm.configure("x", "{}");', "vcl_init", "vcl_recv"),
    "start": ('tinykvm.start("x");', "vcl_init", "vcl_backend_fetch"),
    "program": ('set bereq.backend = tinykvm.program("x");', "vcl_backend_fetch", None),
    "chain": ('tinykvm.chain("x");', "vcl_backend_fetch", "vcl_recv"),
    "live_update": ('set bereq.backend = tinykvm.live_update("x", "k");', "vcl_backend_fetch", None),
    "synth": ('tinykvm.synth(200, "x");', "vcl_synth", "vcl_deliver"),
    "steal": ('tinykvm.steal("x");', "vcl_recv", "vcl_hash"),
    "stats": ('if (tinykvm.stats() == "") { }', "vcl_recv", "vcl_init"),
    "to_string": ('if (tinykvm.to_string("x") == "") { }', "vcl_recv", "vcl_init"),
    "live_update_file": ('tinykvm.live_update_file("x", "f");', "vcl_deliver", "vcl_init"),
}


def _vcl(sub: str, stmt: str) -> str:
    return f"vcl 4.1;\nimport tinykvm;\nbackend default none;\nsub {sub} {{\n    {stmt}\n}}\n"


@pytest.mark.parametrize("func", sorted(CALLS))
def test_each_function_compiles_only_where_the_vcc_allows(func):
    stmt, good, bad = CALLS[func]
    compile_vcl(_vcl(good, stmt), "good.vcl")
    if bad is None:              # a BACKEND: try it as the backend hint of vcl_recv
        bad, stmt = "vcl_recv", stmt.replace("bereq.backend", "req.backend_hint")
    with pytest.raises(VCLError) as info:
        compile_vcl(_vcl(bad, stmt), "bad.vcl")
    assert f"tinykvm.{func}" in str(info.value) and "not available" in str(info.value).lower(), str(info.value)


def test_main_arguments_and_invalidate_compile_anywhere():
    for sub in ("vcl_init", "vcl_recv", "vcl_backend_fetch", "vcl_deliver"):
        compile_vcl(_vcl(sub, 'if (tinykvm.main_arguments("x", "a") && '
                              'tinykvm.invalidate_programs("x") > 0) { }'), "any.vcl")


def test_time_goes_on(server):
    """The server still answers after everything above (no process left hanging the loop)."""
    t0 = time.monotonic()
    assert fetch(server, "/hello")[0] == 200
    assert time.monotonic() - t0 < 5
