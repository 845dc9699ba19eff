"""The pytest plugin: one item per tests/vtc/*.vtc, -k selection, skips, log tail on failure."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

OK = """varnishtest "ok"
server s1 {
	rxreq
	txresp
} -start
client c1 -connect ${s1_sock} {
	txreq
	rxresp
	expect resp.status == 200
} -run
"""


def run_pytest(project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", *args],
                          cwd=project, env=env, capture_output=True, text=True, timeout=120)


def make_project(tmp_path: Path) -> Path:
    vtc = tmp_path / "tests" / "vtc"
    vtc.mkdir(parents=True)
    (tmp_path / "conftest.py").write_text('pytest_plugins = ["vtest.pytest_plugin"]\n')
    (vtc / "a1.vtc").write_text(OK)
    (vtc / "a2.vtc").write_text(OK.replace("resp.status == 200", "resp.status == 201"))
    (vtc / "a3.vtc").write_text('varnishtest "skip"\nprocess p1 {echo hi} -run\n')
    (tmp_path / "tests" / "other.vtc").write_text(OK)  # not under tests/vtc: not collected
    return tmp_path


def test_collects_one_item_per_vtc_and_reports_each_outcome(tmp_path):
    r = run_pytest(make_project(tmp_path), "-rs", "tests")
    assert "1 failed, 1 passed, 1 skipped" in r.stdout, r.stdout
    assert "a2.vtc FAILED" in r.stdout
    assert 'EXPECT resp.status (200) == "201" failed' in r.stdout
    assert "rxhdr|HTTP/1.1 200 OK" in r.stdout         # the log tail
    assert "unsupported command 'process'" in r.stdout


def test_k_selects_by_file_name(tmp_path):
    r = run_pytest(make_project(tmp_path), "tests", "-k", "a1")
    assert "1 passed, 2 deselected" in r.stdout, r.stdout
