"""The directors' position after health changes and removals, as .vtc cases run on cacheserver and,
when it is installed, on varnishd 7.1 itself (both must pass: round_robin's stale slot after a
removal and sticky fallback are varnishd's observed behaviour)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
VARNISHD = shutil.which("varnishd") or ("/usr/sbin/varnishd" if os.path.exists("/usr/sbin/varnishd") else None)

RR = """
varnishtest "rr removal"
varnish v1 -vcl {
	import directors;
	backend s1 { .host = "127.0.0.1"; .port = "9"; }
	backend s2 { .host = "127.0.0.1"; .port = "9"; }
	backend s3 { .host = "127.0.0.1"; .port = "9"; }
	sub vcl_init {
		new rr = directors.round_robin();
		rr.add_backend(s1);
		rr.add_backend(s2);
		rr.add_backend(s3);
	}
	sub vcl_recv {
		if (req.method == "DELETE") { rr.remove_backend(s2); }
		return (synth(200));
	}
	sub vcl_synth { set resp.http.be = rr.backend().resolve(); }
} -start
client c1 {
	txreq
	rxresp
	expect resp.http.be == s1
	txreq
	rxresp
	txreq
	rxresp
	txreq
	rxresp
	expect resp.http.be == s1
} -run
varnish v1 -cliok "backend.set_health s3 sick"
client c1 {
	txreq
	rxresp
	expect resp.http.be == s2
	txreq
	rxresp
	expect resp.http.be == s1
	txreq
	rxresp
	expect resp.http.be == s2
	txreq -req DELETE
	rxresp
	expect resp.http.be == ""
	txreq
	rxresp
	expect resp.http.be == s1
} -run
"""

FALLBACK = """
varnishtest "fallback sticky"
varnish v1 -vcl {
	import directors;
	backend s1 { .host = "127.0.0.1"; .port = "9"; }
	backend s2 { .host = "127.0.0.1"; .port = "9"; }
	backend s3 { .host = "127.0.0.1"; .port = "9"; }
	sub vcl_init {
		new fb = directors.fallback(sticky=true);
		fb.add_backend(s1);
		fb.add_backend(s2);
		fb.add_backend(s3);
		new nf = directors.fallback();
		nf.add_backend(s1);
		nf.add_backend(s2);
		nf.add_backend(s3);
	}
	sub vcl_recv {
		if (req.method == "DELETE") { fb.remove_backend(s1); nf.remove_backend(s1); }
		return (synth(200));
	}
	sub vcl_synth { set resp.http.fb = fb.backend().resolve(); set resp.http.nf = nf.backend().resolve(); }
} -start
varnish v1 -cliok "backend.set_health s1 sick"
client c1 {
	txreq
	rxresp
	expect resp.http.fb == s2
	expect resp.http.nf == s2
} -run
varnish v1 -cliok "backend.set_health s1 healthy"
varnish v1 -cliok "backend.set_health s2 sick"
client c1 {
	txreq
	rxresp
	expect resp.http.fb == s3
	expect resp.http.nf == s1
} -run
varnish v1 -cliok "backend.set_health s2 healthy"
client c1 {
	txreq
	rxresp
	expect resp.http.fb == s3
	expect resp.http.nf == s1
	txreq -req DELETE
	rxresp
	expect resp.http.fb == s3
	expect resp.http.nf == s2
} -run
varnish v1 -cliok "backend.set_health s3 sick"
client c1 {
	txreq
	rxresp
	expect resp.http.fb == s2
	expect resp.http.nf == s2
} -run
"""


def _run(tmp_path: Path, text: str, *extra: str) -> subprocess.CompletedProcess[str]:
    tmp_path.chmod(0o755)          # varnishd's child reads files as its own user
    case = tmp_path / "case.vtc"
    case.write_text(text)
    case.chmod(0o644)
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", "vtest.cli", *extra, str(case)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=180)


@pytest.mark.parametrize("text", [RR, FALLBACK], ids=["round_robin", "fallback"])
def test_on_cacheserver(tmp_path, text):
    r = _run(tmp_path, text)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.skipif(VARNISHD is None, reason="varnishd not installed")
@pytest.mark.parametrize("text", [RR, FALLBACK], ids=["round_robin", "fallback"])
def test_on_varnishd(tmp_path, text):
    r = _run(tmp_path, text, "--varnishd", VARNISHD)
    assert r.returncode == 0, r.stdout + r.stderr
