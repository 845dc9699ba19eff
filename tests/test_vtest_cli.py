"""The vtest command end to end: real worker processes, real sockets, the output and exit status."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

PASS = """varnishtest "passes"
server s1 {
	rxreq
	txresp -body "ok"
} -start
client c1 -connect ${s1_sock} {
	txreq
	rxresp
	expect resp.body == "ok"
} -run
"""

FAIL = """varnishtest "fails"
server s1 {
	rxreq
	txresp -status 404
} -start
client c1 -connect ${s1_sock} {
	txreq
	rxresp
	expect resp.status == 200
} -run
"""


def vtest(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", "vtest.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120)


@pytest.fixture
def write(tmp_path: Path):
    def _write(name: str, text: str) -> str:
        (tmp_path / name).write_text(text)
        return name
    return _write


def test_pass_line_and_summary(tmp_path, write):
    r = vtest(write("p.vtc", PASS), cwd=tmp_path)
    assert r.returncode == 0
    lines = r.stdout.splitlines()
    assert lines[0].startswith("#    top  TEST p.vtc passed (")
    assert lines[-1] == "1 passed, 0 failed, 0 skipped"


def test_failure_shows_reason_and_log_tail_and_exits_1(tmp_path, write):
    r = vtest(write("f.vtc", FAIL), cwd=tmp_path)
    assert r.returncode == 1
    assert 'FAILED' in r.stdout and 'EXPECT resp.status (404) == "200" failed' in r.stdout
    assert "rxhdr|HTTP/1.1 404 OK" in r.stdout  # the log tail
    assert r.stdout.splitlines()[-1] == "0 passed, 1 failed, 0 skipped"


def test_without_k_stops_after_first_failure(tmp_path, write):
    names = [write("f.vtc", FAIL)] + [write(f"p{i}.vtc", PASS) for i in range(3)]
    r = vtest(*names, cwd=tmp_path)
    assert r.stdout.splitlines()[-1] == "0 passed, 1 failed, 0 skipped"
    r = vtest("-k", *names, cwd=tmp_path)
    assert r.stdout.splitlines()[-1] == "3 passed, 1 failed, 0 skipped"


def test_quiet_prints_only_failures(tmp_path, write):
    r = vtest("-q", "-k", write("p.vtc", PASS), write("f.vtc", FAIL), cwd=tmp_path)
    assert "p.vtc" not in r.stdout
    assert "f.vtc FAILED" in r.stdout


def test_verbose_prints_whole_log_of_passing_tests(tmp_path, write):
    r = vtest("-v", write("p.vtc", PASS), cwd=tmp_path)
    assert "EXPECT resp.body (ok) == \"ok\" match" in r.stdout


def test_parallel_runs_all(tmp_path, write):
    names = [write(f"p{i}.vtc", PASS) for i in range(6)]
    r = vtest("-j", "3", *names, cwd=tmp_path)
    assert r.returncode == 0
    assert r.stdout.splitlines()[-1] == "6 passed, 0 failed, 0 skipped"


def test_define_macro(tmp_path, write):
    text = PASS.replace('-body "ok"', '-body "${greeting}"').replace('== "ok"', '== "hi there"')
    r = vtest("-D", "greeting=hi there", write("d.vtc", text), cwd=tmp_path)
    assert r.returncode == 0, r.stdout


@pytest.mark.parametrize("body,why", [
    ("process p1 {echo hi} -run\n", "unsupported command 'process'"),
    ("shell {echo hi}\n", "unsupported command 'shell'"),
    ("client c1 {\n\tstream 1 {\n\t} -run\n} -run\n", "unsupported spec command 'stream'"),
    ("feature persistent_storage\n", "feature persistent_storage not available"),
    ("feature !64bit\n", "feature !64bit present"),
])
def test_skips_say_why_and_do_not_fail(tmp_path, write, body, why):
    r = vtest(write("s.vtc", 'varnishtest "skip"\n' + body), cwd=tmp_path)
    assert r.returncode == 0
    assert "skipped" in r.stdout and why in r.stdout
    assert r.stdout.splitlines()[-1] == "0 passed, 0 failed, 1 skipped"


def test_timeout_fails_the_test(tmp_path, write):
    text = 'varnishtest "slow"\ndelay 5\n'
    r = vtest("-t", "1", write("t.vtc", text), cwd=tmp_path)
    assert r.returncode == 1
    assert "TIMED OUT" in r.stdout


def test_unknown_command_fails(tmp_path, write):
    r = vtest(write("u.vtc", 'varnishtest "x"\nfrobnicate\n'), cwd=tmp_path)
    assert r.returncode == 1
    assert 'Unknown command: "frobnicate"' in r.stdout


def test_non_fatal_turns_connection_errors_into_log_lines(tmp_path, write):
    text = """varnishtest "nf"
server s1 {
	rxreq
} -start
client c1 -connect ${s1_sock} {
	non_fatal
	txreq
	rxresp
	send "after"
} -run
delay 0.1
"""
    r = vtest("-v", write("n.vtc", text), cwd=tmp_path)
    assert r.returncode == 0, r.stdout
    assert "HTTP rx EOF (non-fatal, continuing)" in r.stdout
    assert "send|after" in r.stdout and "delaying 0.1" in r.stdout


def test_non_fatal_does_not_cover_expect(tmp_path, write):
    text = FAIL.replace("client c1 -connect ${s1_sock} {\n", "client c1 -connect ${s1_sock} {\n\tnon_fatal\n")
    r = vtest(write("n.vtc", text), cwd=tmp_path)
    assert r.returncode == 1
    assert 'EXPECT resp.status (404) == "200" failed' in r.stdout


def test_barrier_with_too_many_waiters_fails(tmp_path, write):
    text = 'varnishtest "b"\nbarrier b1 cond 2\n'
    text += 'server s1 {\n} -start\n'
    text += 'client c1 -connect ${s1_sock} {\n\tbarrier b1 sync\n\tbarrier b1 sync\n} -start\n'
    text += 'barrier b1 sync\nclient c1 -wait\n'
    r = vtest(write("b.vtc", text), cwd=tmp_path)
    assert r.returncode == 1
    assert "more waiters than the 2 expected" in r.stdout


def test_barrier_needs_two_parties(tmp_path, write):
    r = vtest(write("b.vtc", 'varnishtest "b"\nbarrier b1 cond 1\n'), cwd=tmp_path)
    assert r.returncode == 1
    assert "wrong expectation (1)" in r.stdout


def test_missing_file_is_an_error(tmp_path):
    r = vtest("nope.vtc", cwd=tmp_path)
    assert r.returncode == 2


REAL_VARNISHD = "/usr/sbin/varnishd"


@pytest.mark.skipif(not os.access(REAL_VARNISHD, os.X_OK), reason="varnishd 7.1 not installed")
def test_varnish_blocks_drive_the_real_varnishd(tmp_path):
    """The runner's proof: our cases pass against the reference varnishd, counters included."""
    cases = [str(ROOT / "tests" / "vtc" / n) for n in ("b00001.vtc", "c00002.vtc", "c00005.vtc")]
    os.chmod(tmp_path, 0o755)
    r = vtest("-k", "-j", "3", "--varnishd", REAL_VARNISHD, *cases, cwd=tmp_path)
    assert r.returncode == 0, r.stdout[-3000:]
    assert r.stdout.splitlines()[-1] == "3 passed, 0 failed, 0 skipped"


@pytest.mark.skipif(not os.access(REAL_VARNISHD, os.X_OK), reason="varnishd 7.1 not installed")
def test_failed_counter_expectation_with_real_varnishd(tmp_path, write):
    text = 'varnishtest "c"\nvarnish v1 -vcl {backend default none;} -start\nvarnish v1 -expect client_req == 7\n'
    os.chmod(tmp_path, 0o755)
    r = vtest("-t", "30", "--varnishd", REAL_VARNISHD, write("c.vtc", text), cwd=tmp_path)
    assert r.returncode == 1
    assert "Not true: client_req (0) == 7 (7)" in r.stdout


def test_n_repeats_every_test(tmp_path, write):
    r = vtest("-n", "3", "-j", "2", write("p.vtc", PASS), cwd=tmp_path)
    assert r.stdout.splitlines()[-1] == "3 passed, 0 failed, 0 skipped"


@pytest.mark.skipif(not os.access(REAL_VARNISHD, os.X_OK), reason="varnishd 7.1 not installed")
def test_p_passes_a_parameter_to_varnishd(tmp_path, write):
    text = ('varnishtest "p"\nvarnish v1 -vcl {backend default none;}\n'
            'varnish v1 -cliexpect "Value is: 42.000" "param.show default_ttl"\n')
    os.chmod(tmp_path, 0o755)
    r = vtest("-p", "default_ttl=42", "--varnishd", REAL_VARNISHD, write("p.vtc", text), cwd=tmp_path)
    assert r.returncode == 0, r.stdout[-2000:]


def test_rxrespbody_keeps_what_a_max_read_took_and_expect_speaks_pcre(tmp_path, write):
    # vtc_http.c: the body read so far stays across rxrespbody calls, so bodylen counts it all;
    # expect's ~ is PCRE, POSIX classes included.
    r = vtest(write("b.vtc", """varnishtest "partial body reads"
server s1 {
	rxreq
	txresp -nolen -hdr "Transfer-Encoding: chunked"
	chunkedlen 100
	chunkedlen 100
	chunkedlen 0
	rxreq
	txresp -bodylen 300
} -start
client c1 -connect ${s1_sock} {
	txreq
	rxresphdrs
	rxrespbody -max 100
	expect resp.bodylen == 100
	rxrespbody
	expect resp.bodylen == 200
	txreq
	rxresphdrs
	rxrespbody -max 120
	rxrespbody
	expect resp.bodylen == 300
	expect resp.http.content-length ~ "^[[:digit:]]{3}$"
} -run
"""), cwd=tmp_path)
    assert r.returncode == 0, r.stdout[-2000:]


DUMP = """varnishtest "two varnishes, counters dumped at their end"
server s1 {
	rxreq
	txresp -body "ok"
} -start
varnish v1 -vcl+backend {} -start
server s2 {
	rxreq
	txresp -body "ok"
	rxreq
	txresp -body "ok"
} -start
varnish v2 -vcl {
	backend b { .host = "${s2_addr}"; .port = "${s2_port}"; }
	sub vcl_recv { return (pass); }
} -start
client c1 -connect ${v1_sock} {
	txreq
	rxresp
} -run
client c2 -connect ${v2_sock} {
	txreq
	rxresp
	txreq
	rxresp
} -run
varnish v1 -wait
"""


def test_dump_counters_writes_each_varnish_counters(tmp_path, write):
    import json
    out = tmp_path / "dump"
    out.mkdir()
    name = write("d.vtc", DUMP)
    r = vtest(name, cwd=tmp_path)  # off by default: nothing written
    assert r.returncode == 0, r.stdout
    assert list(out.iterdir()) == []
    r = vtest("--dump-counters", str(out), name, cwd=tmp_path)
    assert r.returncode == 0, r.stdout
    assert sorted(p.name for p in out.iterdir()) == ["d.v1.json", "d.v2.json"]
    v1 = json.loads((out / "d.v1.json").read_text())
    v2 = json.loads((out / "d.v2.json").read_text())
    assert (v1["MAIN.client_req"], v1["MAIN.cache_miss"], v1["MAIN.s_pass"]) == (1, 1, 0)
    assert (v2["MAIN.client_req"], v2["MAIN.cache_miss"], v2["MAIN.s_pass"]) == (2, 0, 2)


def test_dump_counters_needs_an_existing_directory(tmp_path, write):
    r = vtest("--dump-counters", str(tmp_path / "nope"), write("p.vtc", PASS), cwd=tmp_path)
    assert r.returncode == 2 and "--dump-counters" in r.stderr


@pytest.mark.skipif(not os.access("/usr/sbin/varnishd", os.X_OK), reason="varnishd 7.1 not installed")
def test_dump_counters_against_varnishd_waits_for_them_to_settle(tmp_path, write):
    """varnishd adds a worker's counters to the shared ones only now and then: read at once, right
    after the client's end, client_req would still be 0; the dump waits for them to settle."""
    import json
    os.chmod(tmp_path, 0o755)       # varnishd drops privileges: its work dirs must be readable
    out = tmp_path / "dump"
    out.mkdir()
    r = vtest("--varnishd", "/usr/sbin/varnishd", "--dump-counters", str(out), write("d.vtc", PASS.replace(
        "client c1 -connect ${s1_sock}", "varnish v1 -vcl+backend {} -start\nclient c1 -connect ${v1_sock}")),
        cwd=tmp_path)
    assert r.returncode == 0, r.stdout
    v1 = json.loads((out / "d.v1.json").read_text())
    assert (v1["MAIN.client_req"], v1["MAIN.s_sess"], v1["MAIN.cache_miss"]) == (1, 1, 1)
