"""Run one test file in its own worker process and collect its outcome."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

from .context import RESULT_TAG


@dataclass
class Outcome:
    path: str
    status: str  # passed | failed | skipped
    duration: float
    reason: str = ""
    log: list[str] = field(default_factory=list)


def _make_tmpdir() -> str:
    d = tempfile.mkdtemp(prefix="vtc.")
    # varnishd switches to an unprivileged user: it must be able to enter the test's directory.
    os.chmod(d, 0o755)
    return d


def run_test(path: str, *, timeout: float = 60.0, varnishd: str | None = None,
             defines: dict[str, str] | None = None, keep_tmp: str = "never",
             params: list[str] | None = None, dump_counters: str | None = None) -> Outcome:
    """keep_tmp: "never", "failed" (-l) or "always" (-L); dump_counters: see vtest --dump-counters."""
    tmpdir = _make_tmpdir()
    cmd = [sys.executable, "-m", "vtest.worker", "--tmpdir", tmpdir, "--timeout", str(timeout)]
    if varnishd:
        cmd += ["--varnishd", varnishd]
    for k, v in (defines or {}).items():
        cmd += ["-D", f"{k}={v}"]
    for p in params or []:
        cmd += ["-p", p]
    if dump_counters:
        cmd += ["--dump-counters", os.path.abspath(dump_counters)]
    cmd.append(path)
    env = dict(os.environ)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
                            start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout + 15)
    except subprocess.TimeoutExpired:
        # The worker's own watchdog failed: take the whole process group down.
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except OSError:
            pass
        out, _ = proc.communicate()
        out += f"\n{RESULT_TAG} failed {time.monotonic() - t0:.3f} TEST TIMED OUT (worker killed)\n".encode()
    else:
        # Stray processes left in the group (varnishd children) must not outlive the test.
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except OSError:
            pass
    lines = out.decode("utf-8", "replace").splitlines()
    status, duration, reason = "failed", time.monotonic() - t0, f"worker exited with {proc.returncode}"
    for line in reversed(lines):
        if line.startswith(RESULT_TAG + " "):
            parts = line.split(" ", 3)
            status = parts[1]
            duration = float(parts[2])
            reason = parts[3] if len(parts) > 3 else ""
            break
    log = [ln for ln in lines if not ln.startswith(RESULT_TAG)]
    if keep_tmp == "always" or (keep_tmp == "failed" and status == "failed"):
        log.append(f"#    top  (temporary files kept in {tmpdir})")
    else:
        shutil.rmtree(tmpdir, ignore_errors=True)
    return Outcome(path, status, duration, reason, log)
