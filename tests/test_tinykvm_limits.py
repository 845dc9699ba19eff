"""The per-program limits of tinykvm programs used as backends, with real processes and small limits.

An endless loop is killed at max_request_time; a memory hog fails its request, not the server; a
slow start is given up at max_boot_time; a crash at start or mid-request is one log line, a 503 and
a restart (with back-off when it keeps failing); concurrency bounds the processes and the queue;
allowed_paths keeps file access to the listed files.
"""

from __future__ import annotations

import http.client
import json
import re
import threading
import time

import pytest
from polling import wait_for
from serverproc import ServerProcess

LIBRARY = """{
    "fast": { "max_request_time": 0.5, "max_boot_time": 20, "queue_timeout": 0.3, "max_queue": 1 },
    "loop": { "group": "fast", "filename": "loop.py", "concurrency": 2 },
    "hog": { "group": "fast", "filename": "hog.py", "max_memory": 96, "max_request_time": 5.0 },
    "reqhog": { "group": "fast", "filename": "hog.py", "max_request_memory": 64, "max_request_time": 5.0 },
    "slowboot": { "group": "fast", "filename": "slowboot.py", "max_boot_time": 1.0 },
    "crashstart": { "group": "fast", "filename": "crashstart.py" },
    "crashmid": { "group": "fast", "filename": "crashmid.py" },
    "slow": { "group": "fast", "filename": "slow.py", "concurrency": 1, "max_request_time": 10.0,
              "queue_timeout": 1.5 },
    "reader": { "group": "fast", "filename": "reader.py", "allowed_paths": ["ALLOWED"] }
}
"""

PROGRAMS = {
    "loop.py": '''import os
from kvm_api import set_backend_get, wait_for_requests

def on_get(url, arg):
    if url == "/loop/forever":
        while True:
            pass
    return 200, "text/plain", str(os.getpid())

set_backend_get(on_get)
wait_for_requests()
''',
    "hog.py": '''import os
from kvm_api import set_backend_get, wait_for_requests

def on_get(url, arg):
    if url.endswith("/big"):
        hoard = bytearray(400 * 1024 * 1024)    # over max_memory: MemoryError here, not in the server
        return 200, "text/plain", str(len(hoard))
    small = bytearray(4 * 1024 * 1024)
    return 200, "text/plain", "%d %d" % (os.getpid(), len(small))

set_backend_get(on_get)
wait_for_requests()
''',
    "slowboot.py": '''import time
from kvm_api import set_backend_get, wait_for_requests
time.sleep(30)
set_backend_get(lambda url, arg: (200, "text/plain", "late"))
wait_for_requests()
''',
    "crashstart.py": 'raise RuntimeError("crashing at start")\n',
    "crashmid.py": '''import os, signal
from kvm_api import set_backend_get, wait_for_requests

def on_get(url, arg):
    if url == "/crashmid/now":
        os.kill(os.getpid(), signal.SIGSEGV)
    return 200, "text/plain", str(os.getpid())

set_backend_get(on_get)
wait_for_requests()
''',
    "slow.py": '''import time
from kvm_api import set_backend_get, wait_for_requests

def on_get(url, arg):
    time.sleep(3.0)
    return 200, "text/plain", "slow"

set_backend_get(on_get)
wait_for_requests()
''',
    "reader.py": '''from kvm_api import set_backend_get, wait_for_requests

def on_get(url, arg):
    name = url.split("?f=", 1)[1]
    if url.startswith("/reader/write"):
        with open(name, "w") as f:
            f.write("x")
        return 200, "text/plain", "wrote"
    with open(name) as f:
        return 200, "text/plain", f.read()

set_backend_get(on_get)
wait_for_requests()
''',
}

VCL = """vcl 4.1;
import tinykvm;
backend default none;

sub vcl_init {
    tinykvm.library("lib.json");
}

sub vcl_recv {
    if (req.url == "/stats") {
        return (synth(700));
    }
    return (pass);
}

sub vcl_backend_fetch {
    set bereq.backend = tinykvm.program(regsub(bereq.url, "^/([a-z]+).*", "\\1"));
}

sub vcl_synth {
    set resp.body = tinykvm.stats();
    return (deliver);
}
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    d = tmp_path_factory.mktemp("tkl")
    (d / "allowed.txt").write_text("you may read this")
    (d / "secret.txt").write_text("but not this")
    (d / "lib.json").write_text(LIBRARY.replace("ALLOWED", str(d / "allowed.txt")))
    for name, text in PROGRAMS.items():
        (d / name).write_text(text)
    (d / "t.vcl").write_text(VCL)
    srv = ServerProcess("-f", str(d / "t.vcl"))
    srv.dir = d
    yield srv
    srv.stop()


def get(srv: ServerProcess, url: str, timeout: float = 10) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=timeout)
    try:
        conn.request("GET", url)
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


def stats(srv: ServerProcess) -> dict:
    return json.loads(get(srv, "/stats")[1])


def log_lines(srv: ServerProcess, pattern: str) -> list[str]:
    srv.readline(0.2)
    while srv.readline(0.05) is not None:
        pass
    return [ln for ln in srv.output if re.search(pattern, ln)]


def test_endless_loop_is_killed_at_max_request_time(server):
    status, pid = get(server, "/loop/ok")
    assert status == 200
    t0 = time.monotonic()
    assert get(server, "/loop/forever")[0] == 503
    assert time.monotonic() - t0 < 8                         # 0.5 s limit, not the client's timeout (10 s)
    s = stats(server)["loop"]
    assert s["failures"] == {"timeout": 1}
    status, pid2 = get(server, "/loop/ok")                    # by a fresh process
    assert status == 200 and pid2 != pid
    assert log_lines(server, r"program 'loop' did not answer GET /loop/forever within 0.5 s")


def test_memory_hog_fails_its_request_not_the_server(server):
    status, body = get(server, "/hog/small")
    assert status == 200
    pid = body.split()[0]
    assert get(server, "/hog/big")[0] == 503
    assert stats(server)["hog"]["failures"] == {"memory": 1}
    status, body = get(server, "/hog/small")                  # a fresh process serves again
    assert status == 200 and body.split()[0] != pid
    assert get(server, "/loop/ok")[0] == 200                  # and so does the server


def test_request_memory_is_counted_from_the_memory_after_start(server):
    """max_request_memory 64 MB (no max_memory): 4 MB more per request is fine, 400 MB is not."""
    assert get(server, "/reqhog/small")[0] == 200
    assert get(server, "/reqhog/big")[0] == 503
    assert get(server, "/reqhog/small")[0] == 200
    assert stats(server)["reqhog"]["failures"] == {"memory": 1}


def test_slow_boot_is_given_up_at_max_boot_time(server):
    t0 = time.monotonic()
    assert get(server, "/slowboot")[0] == 503
    assert time.monotonic() - t0 < 4
    assert stats(server)["slowboot"]["failures"] == {"boot": 1}
    assert log_lines(server, r"program 'slowboot' failed to start: .*within 1 s")


def test_crash_at_start_is_a_503_then_backs_off(server):
    assert get(server, "/crashstart")[0] == 503
    assert get(server, "/crashstart")[0] == 503              # tried again at once: second failure
    assert get(server, "/crashstart")[0] == 503              # now within the back-off: not started
    s = stats(server)["crashstart"]
    assert s["failures"] == {"backoff": 1, "boot": 2}
    lines = log_lines(server, r"program 'crashstart' failed to start")
    assert len(lines) == 2 and "RuntimeError: crashing at start" in lines[0]
    assert "next start in 0.5 s" in lines[1]
    assert log_lines(server, r"^crashstart: RuntimeError: crashing at start")    # its own traceback


def test_crash_mid_request_is_one_line_a_503_and_a_restart(server):
    status, pid = get(server, "/crashmid/ok")
    assert status == 200
    assert get(server, "/crashmid/now")[0] == 503
    status, pid2 = get(server, "/crashmid/ok")
    assert status == 200 and pid2 != pid
    s = stats(server)["crashmid"]
    assert s["failures"] == {"crash": 1} and s["restarts"] == 1
    server.wait_for_output(r"program 'crashmid' \(pid \d+\) was killed by SIGSEGV while serving a request")
    assert len(log_lines(server, r"program 'crashmid'.*SIGSEGV")) == 1


def test_concurrency_queue_and_its_timeout(server):
    """concurrency 1, max_queue 1, queue_timeout 1.5 s: of three requests, one is served (3 s), the
    next waits and times out in the queue, the third finds the queue full. Each is sent once the one
    before is in (counted in the program's requests, in the queue from then on): the margins are the
    1.5 s each (queue_timeout, and the served request's time beyond it)."""
    results: list[int] = []

    def one() -> None:
        results.append(get(server, "/slow")[0])

    def requests() -> int:
        return stats(server).get("slow", {}).get("requests", 0)     # (none before its first use)

    before = requests()
    threads = [threading.Thread(target=one) for _ in range(3)]
    for n, t in enumerate(threads, 1):
        t.start()
        wait_for(lambda n=n: requests() >= before + n, interval=0.01, what=f"request {n} in")
    for t in threads:
        t.join(15)
    assert sorted(results) == [200, 503, 503]
    assert stats(server)["slow"]["failures"] == {"queue_full": 1, "queue_timeout": 1}


def test_allowed_paths(server):
    d = server.dir
    assert get(server, f"/reader?f={d / 'allowed.txt'}") == (200, b"you may read this")
    assert get(server, f"/reader?f={d / 'secret.txt'}")[0] == 503
    assert get(server, f"/reader/write?f={d / 'allowed.txt'}")[0] == 503
    assert (d / "allowed.txt").read_text() == "you may read this"
    assert stats(server)["reader"]["failures"] == {"exception": 2}
    assert log_lines(server, r"^reader: PermissionError: program may not read .*secret.txt")
