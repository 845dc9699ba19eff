"""Our fidelity cases (tests/vtc/fid_*.vtc) hold against the real varnishd 7.1 too.

pytest runs each of them against cacheserver (the vtc plugin, always); this runs them all against
varnishd when it is installed, so their expectations are varnishd's behaviour, not ours.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
REAL_VARNISHD = "/usr/sbin/varnishd"
CASES = sorted(str(p) for p in (ROOT / "tests" / "vtc").glob("fid_*.vtc"))


@pytest.mark.skipif(not os.access(REAL_VARNISHD, os.X_OK), reason="varnishd 7.1 not installed")
def test_fidelity_cases_pass_against_varnishd(tmp_path):
    assert CASES
    os.chmod(tmp_path, 0o755)       # varnishd drops privileges: its work dirs must be readable
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    r = subprocess.run([sys.executable, "-m", "vtest.cli", "-k", "-j", "2", "--varnishd", REAL_VARNISHD, *CASES],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=420)   # (87 cases: minutes under load)
    assert r.stdout.splitlines()[-1] == f"{len(CASES)} passed, 0 failed, 0 skipped", r.stdout[-3000:]
