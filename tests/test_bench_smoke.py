"""The benchmark harness in its CI smoke mode (python -m bench --short): it starts the origin and
cacheserver, checks every answer and writes its results. No figure is asserted (speed targets live in
bench/, never in timed tests). Without wrk only the answer checks run; no test here needs varnishd."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bench import load, report
from bench.scenarios import Row, WrongAnswer, expect
from bench.servers import Origin, Workspace
from bench.tiny_http import BODY

ROOT = Path(__file__).resolve().parent.parent
FAST = ["hit", "pass", "synth", "esi", "gzip"]


def test_short_run_checks_answers_and_writes_the_table(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "bench", "--short", "--no-varnishd", *FAST, "--out",
                           str(tmp_path)], cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    table = (tmp_path / "results.md").read_text()
    for scenario in ("hit 1 KiB", "pass 1 KiB", "synth from VCL", "ESI page", "gzip page to non-gzip client"):
        assert f"| {scenario}" in table
    if shutil.which("wrk"):
        assert " req/s |" in table          # a rate was measured for each scenario
    else:
        assert "wrk not installed" in table
    assert (tmp_path / "results.json").exists()


def test_a_wrong_answer_is_caught() -> None:
    workspace = Workspace()
    try:
        with Origin(workspace) as origin:
            expect(origin, "/obj", BODY)            # the origin itself answers the 1 KiB object
            with pytest.raises(WrongAnswer, match="differs"):
                expect(origin, "/obj", BODY[:-1] + b"!")
            with pytest.raises(WrongAnswer, match="status 200, expected 404"):
                expect(origin, "/obj", status=404)
    finally:
        workspace.cleanup()


WRK_REPORT = """Running 1s test @ http://127.0.0.1:1/obj
  1 threads and 16 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     1.20ms  500.00us  14.71ms   90.00%
  Latency Distribution
     50%  850.00us
     75%    1.10ms
     90%    2.00ms
     99%   14.71ms
  8105 requests in 1.00s, 9.10MB read
  Socket errors: connect 0, read 2, write 0, timeout 1
  Non-2xx or 3xx responses: 4
Requests/sec:   8105.00
Transfer/sec:      9.10MB
"""


def test_wrk_report_parsed_with_its_units() -> None:
    got = load.parse(WRK_REPORT)
    assert got == {"rps": 8105.0, "requests": 8105, "errors": 7, "p50_ms": 0.85, "p99_ms": 14.71}


def test_readme_section_replaced_between_markers(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n## Performance\n{report.README_START}\nold table\n{report.README_END}\n## Next\n")
    rows = [Row("hit 1 KiB", "cacheserver", rate=1000.0, ratio=0.5, reference="varnishd")]
    report.update_readme(readme, "Measured today.", rows, tmp_path / "results", "Loaded machine.")
    text = readme.read_text()
    assert "old table" not in text and text.endswith(f"{report.README_END}\n## Next\n")
    assert "Measured today. Loaded machine." in text and "| hit 1 KiB | cacheserver | 1,000 req/s |" in text
    assert "0.50 vs varnishd" in text
