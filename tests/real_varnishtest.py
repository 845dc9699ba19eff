"""Running a vtc text under the real varnishtest 7.1 (tests that check a value live skip without it)."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

VARNISHTEST = shutil.which("varnishtest")


def run_varnishtest(vtc: str, name: str = "case") -> str:
    """varnishtest -v's whole output for `vtc` (stdout and stderr). varnishd drops privileges before
    reading its files: the case goes in a world-readable directory under /tmp."""
    with tempfile.TemporaryDirectory(dir="/tmp") as tmp:
        os.chmod(tmp, 0o755)
        path = Path(tmp) / f"{name}.vtc"
        path.write_text(vtc)
        # generous: a loaded 2-core machine has taken over a minute for a case of a few VCL compiles
        run = subprocess.run([VARNISHTEST, "-v", "-t", "180", str(path)], capture_output=True, text=True,
                             errors="surrogateescape", timeout=240)
    return run.stdout + run.stderr
