"""wrk runs: rate, latency percentiles (--latency) and errors, parsed from wrk's report."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

LUA = Path(__file__).resolve().parent / "lua"
UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def have_wrk() -> bool:
    return shutil.which("wrk") is not None


def parse(out: str) -> dict:
    """wrk's report -> {'rps', 'requests', 'errors', 'p50_ms', 'p99_ms'}."""
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if m is None:
        raise RuntimeError(f"no rate in wrk's report:\n{out}")
    result = {"rps": float(m.group(1)), "requests": int(re.search(r"(\d+) requests in", out).group(1)),
              "errors": 0}
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if m:
        result["errors"] += sum(int(x) for x in m.groups())
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if m:
        result["errors"] += int(m.group(1))
    for pct in ("50", "99"):
        m = re.search(rf"^\s+{pct}(?:\.0+)?%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        if m:
            result[f"p{pct}_ms"] = float(m.group(1)) * UNITS[m.group(2)]
    return result


def wrk(url: str, seconds: float, connections: int = 16, threads: int = 1, headers: tuple[str, ...] = (),
        script: str | None = None, script_args: tuple[str, ...] = ()) -> dict:
    """Run wrk against url (`script`: a file in bench/lua, given `script_args`) and parse its report."""
    cmd = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--latency",
           "--timeout", "10s"]
    for h in headers:
        cmd += ["-H", h]
    if script:
        cmd += ["-s", str(LUA / script)]
    cmd.append(url)
    if script_args:
        cmd += ["--", *script_args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60)
    if proc.returncode != 0:
        raise RuntimeError(f"wrk failed ({proc.returncode}): {proc.stderr.strip()}")
    return parse(proc.stdout)
