"""Counters in the work directory (varnishd's VSC), for cachestat and the Prometheus page.

The server rewrites `_.vsc` (a small JSON file, replaced atomically) once a second and when it stops;
readers never talk to the server. Descriptions and gauge/counter kinds are varnish-counters(7)'s.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

FILE_NAME = "_.vsc"
INTERVAL = 1.0

# varnish-counters(7): the ones dashboards read most; others show their name.
DESCRIPTIONS = {
    "uptime": "Child process uptime", "sess_conn": "Sessions accepted", "sess_drop": "Sessions dropped",
    "sess_fail": "Session accept failures", "client_req_400": "Client requests received, subject to 400 errors",
    "client_req_417": "Client requests received, subject to 417 errors", "client_req": "Good client requests received",
    "cache_hit": "Cache hits", "cache_hit_grace": "Cache grace hits", "cache_hitpass": "Cache hits for pass.",
    "cache_hitmiss": "Cache hits for miss.", "cache_miss": "Cache misses",
    "backend_conn": "Backend conn. success", "backend_unhealthy": "Backend conn. not attempted",
    "backend_busy": "Backend conn. too many", "backend_fail": "Backend conn. failures",
    "backend_reuse": "Backend conn. reuses", "backend_recycle": "Backend conn. recycles",
    "backend_retry": "Backend conn. retry", "backend_req": "Backend requests made",
    "fetch_failed": "Fetch failed (all causes)", "n_object": "object structs made",
    "n_objectcore": "objectcore structs made", "n_objecthead": "objecthead structs made",
    "n_backend": "Number of backends", "n_expired": "Number of expired objects",
    "n_lru_nuked": "Number of LRU nuked objects", "n_lru_moved": "Number of LRU moved objects",
    "n_purges": "Number of purge operations executed", "n_obj_purged": "Number of purged objects",
    "n_vcl": "Number of loaded VCLs in total", "n_vcl_avail": "Number of VCLs available",
    "n_vcl_discard": "Number of discarded VCLs", "bans": "Count of bans", "s_sess": "Total sessions seen",
    "s_pipe": "Total pipe sessions seen", "s_pass": "Total pass-ed requests seen",
    "s_fetch": "Total backend fetches initiated", "s_bgfetch": "Total backend background fetches initiated",
    "s_synth": "Total synthetic responses made", "s_req_hdrbytes": "Request header bytes",
    "s_req_bodybytes": "Request body bytes", "s_resp_hdrbytes": "Response header bytes",
    "s_resp_bodybytes": "Response body bytes", "s_pipe_hdrbytes": "Pipe request header bytes",
    "s_pipe_in": "Piped bytes from client", "s_pipe_out": "Piped bytes to client",
    "sess_closed": "Session Closed", "sess_closed_err": "Session Closed with error",
    "sess_herd": "Session herd", "threads": "Total number of threads", "vcl_fail": "VCL failures",
    "esi_errors": "ESI parse errors (unlock)", "esi_warnings": "ESI parse warnings (unlock)",
    "n_pipe": "Number of ongoing pipe sessions", "busy_sleep": "Number of requests sent to sleep on busy objhdr",
    "busy_wakeup": "Number of requests woken after sleep on busy objhdr",
}
# Gauges (a level, not a running total): no per-second rate.
GAUGES = frozenset({"n_object", "n_objectcore", "n_objecthead", "n_backend", "n_vcl", "n_vcl_avail",
                    "n_vcl_discard", "bans", "n_pipe", "threads", "g_bytes", "g_space", "g_alloc",
                    "happy", "conn", "n_expired"})


def snapshot(server) -> dict[str, int]:
    snap = server.counters.snapshot()
    snap["MAIN.uptime"] = int(time.time() - server.started_at)
    return snap


def write(server, work_dir: Path, stopped: bool = False) -> None:
    """One atomic rewrite of the counters file."""
    path = Path(work_dir) / FILE_NAME
    data = {"version": 1, "pid": os.getpid(), "written": time.time(), "stopped": stopped,
            "counters": snapshot(server)}
    tmp = path.with_name(FILE_NAME + ".tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


def kind(name: str) -> str:
    """"c" (counter) or "g" (gauge), as varnishstat's flag."""
    return "g" if name.rsplit(".", 1)[-1] in GAUGES else "c"


def description(name: str) -> str:
    return DESCRIPTIONS.get(name.rsplit(".", 1)[-1], "") if name.startswith("MAIN.") else ""


class StatError(Exception):
    """The counters cannot be read: missing work directory or file, or a server that stopped."""


def read(work_dir: str | os.PathLike) -> dict:
    work = Path(work_dir)
    if not work.is_dir():
        raise StatError(f"Work directory {work} does not exist (is the server running with -n?)")
    path = work / FILE_NAME
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise StatError(f"No counters in {work}: {FILE_NAME} is missing (no server ran with this -n)") from None
    except (OSError, ValueError) as exc:
        raise StatError(f"{path}: cannot read counters ({exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get("counters"), dict):
        raise StatError(f"{path} is not a cacheserver counters file")
    return data


def stale(data: dict) -> str | None:
    """Why these counters are no longer live, or None."""
    pid = data.get("pid", 0)
    if data.get("stopped"):
        return f"the server (pid {pid}) has stopped: these are its last counters"
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return f"stale work directory: its server (pid {pid}) is gone"
    except PermissionError:
        pass
    if time.time() - data.get("written", 0) > 10 * INTERVAL:
        return f"stale counters: not updated for {time.time() - data.get('written', 0):.0f} s"
    return None
