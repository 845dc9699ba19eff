"""Memory per cached object and hit cost by object count, in process: the figures of `python -m bench
objects` without wrk or a second server, so they hold on a loaded machine.

    python bench/objects_micro.py [--objects 100000] [--counts 10,1000,100000] [--hits 30000]
                                  [--tracemalloc] [--compare-root DIR] [--rounds N]

The server runs in this process with the benchmark's VCL and storage, in front of the benchmark origin
(a subprocess). It is filled through the real fetch path (a client in the same event loop, 8 keep-alive
connections), step by step up to each count; after each step, hits spread at random over the objects
cached so far are timed (CPU time per hit, pipelined through ClientProtocol.data_received with no
socket, as bench/hit_micro.py). At the end: RSS growth and Python heap growth per object, and with
--tracemalloc the places that allocated the bytes an object holds. With --compare-root, another
checkout runs in alternation with this one (each in a child process).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

CHILD = r'''
import asyncio, gc, json, os, random, sys, time, tracemalloc
from bench import client
from bench.procs import rss_mb
from bench.servers import PARAMS, STORAGE
from cacheserver.gcpolicy import GcPolicy
from cacheserver.protocol import ClientProtocol
from cacheserver.server import ListenSpec, Server

conf = json.loads(sys.argv[1])


class Sink(asyncio.Transport):
    """A connection that swallows what it is sent, counting responses by their status lines."""
    answers = 0
    def write(self, data):
        self.answers += data.count(b"HTTP/1.1 200 OK\r\n")
    def get_extra_info(self, name, default=None):
        return {"peername": ("127.0.0.1", 5555), "sockname": ("127.0.0.1", 80)}.get(name, default)
    def is_closing(self): return False
    def pause_reading(self): pass
    def resume_reading(self): pass
    def close(self): pass
    def abort(self): pass


async def hits(srv, port, objects, count, per_read=100):
    """CPU us per hit, `count` hits at random over `objects` (numbers of cached objects)."""
    proto = ClientProtocol(srv)
    sink = Sink()
    proto.connection_made(sink)
    rng = random.Random(len(objects))
    host = f"127.0.0.1:{port}".encode()
    reqs = [b"GET /o/%d HTTP/1.1\r\nHost: %s\r\n\r\n" % (rng.choice(objects), host) for _ in range(count)]
    batches = [b"".join(reqs[i:i + per_read]) for i in range(0, count, per_read)]
    before = srv.counters.cache_hit
    if conf["gc_off"]:
        gc.disable()
    t0 = time.process_time()
    for batch in batches:
        proto.data_received(batch)
    used = time.process_time() - t0
    gc.enable()
    proto.connection_lost(None)
    got = srv.counters.cache_hit - before
    assert got == count and sink.answers == count, f"{got} hits, {sink.answers} answers of {count}"
    return used / count * 1e6


async def main():
    srv = Server()
    srv.configure_storage([STORAGE])
    for name, value in PARAMS.items():
        srv.params.set(name, value)
    srv.listen_specs = [ListenSpec.parse("127.0.0.1:0", 0)]
    srv.vcl_load("boot", open(conf["vcl"]).read(), conf["vcl"])
    srv.vcl_use("boot")
    await srv.start()
    port = srv.listen_addresses()[0][2]
    GcPolicy().install()
    await asyncio.get_running_loop().run_in_executor(None, client.get, port, "/obj")   # warm
    gc.collect()
    rss0, heap0 = rss_mb([os.getpid()]), None
    if conf["tracemalloc"]:
        tracemalloc.start(conf["frames"])
        snap0 = tracemalloc.take_snapshot()
    tracked0 = len(gc.get_objects()) + gc.get_freeze_count()
    out = {"hits": {}, "warm": {}}
    filled = 0
    for n in conf["counts"]:
        await client._fill(port, [f"/o/{i}" for i in range(filled + 1, n + 1)], 8)
        filled = n
        if conf["hits"]:
            out["hits"][n] = await hits(srv, port, range(1, n + 1), conf["hits"])
            # the same number of hits on at most 1,000 objects spread over all n, hit before: what the
            # object count costs a hit once each object has been hit (its template made)
            few = range(1, n + 1, max(n // 1000, 1))
            await hits(srv, port, few, conf["hits"])
            out["warm"][n] = await hits(srv, port, few, conf["hits"])
    gc.collect()
    total = conf["counts"][-1]
    out["rss_mb"] = rss_mb([os.getpid()]) - rss0
    out["tracked_per_object"] = (len(gc.get_objects()) + gc.get_freeze_count() - tracked0) / total
    if conf["tracemalloc"]:
        snap = tracemalloc.take_snapshot()
        stats = snap.compare_to(snap0, "traceback" if conf["frames"] > 1 else "lineno")
        out["heap_per_object"] = sum(s.size_diff for s in stats) / total
        lines = []
        for s in stats[:conf["top"]]:
            where = " <- ".join(f"{f.filename.rsplit('/', 2)[-1]}:{f.lineno}" for f in s.traceback)
            lines.append(f"{s.size_diff / total:8.1f} B/obj {s.count_diff / total:6.2f} blocks/obj  {where}")
        out["top"] = lines
    await srv.close()
    print(json.dumps(out))

asyncio.run(main())
'''


def run(root: Path, conf: dict) -> dict:
    env = dict(os.environ, PYTHONPATH=str(root))
    done = subprocess.run([sys.executable, "-c", CHILD, json.dumps(conf)], cwd=root, env=env,
                          capture_output=True, text=True, timeout=1800)
    if done.returncode != 0:
        raise SystemExit(f"{root}: the measuring process failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--counts", default="10,1000,100000", help="object counts to fill to, in order")
    ap.add_argument("--hits", type=int, default=30000, help="hits timed at each count (0: none)")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--tracemalloc", action="store_true", help="where the bytes go (slows the fill)")
    ap.add_argument("--frames", type=int, default=1, help="traceback depth for --tracemalloc")
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--gc-off", action="store_true", help="diagnosis: no cyclic GC while hits are timed")
    ap.add_argument("--compare-root", type=Path, default=None, metavar="DIR")
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    from bench.servers import Origin, Workspace

    counts = [int(c) for c in args.counts.split(",")]
    roots = [("this checkout", ROOT)]
    if args.compare_root is not None:
        roots.append((str(args.compare_root), args.compare_root.resolve()))
    workspace = Workspace()
    results: dict[str, list[dict]] = {name: [] for name, _ in roots}
    try:
        with Origin(workspace) as origin:
            vcl = workspace.write_vcl(origin.port)
            conf = {"vcl": str(vcl), "counts": counts, "hits": args.hits, "tracemalloc": args.tracemalloc,
                    "frames": args.frames, "top": args.top,
                    "gc_off": args.gc_off}
            for _ in range(args.rounds):
                for name, root in roots:
                    results[name].append(run(root, conf))
    finally:
        workspace.cleanup()
    total = counts[-1]
    for name, runs in results.items():
        rss = statistics.median(r["rss_mb"] for r in runs)
        print(f"{name}: {total:,} objects: RSS growth {rss:.0f} MB ({rss * (1 << 20) / total:.0f} B/object), "
              f"{statistics.median(r['tracked_per_object'] for r in runs):.1f} GC-tracked objects each")
        if args.hits:
            print("  CPU per hit: " + ", ".join(
                f"{n:,} objects {statistics.median(r['hits'][str(n)] for r in runs):.1f} us" for n in counts))
            print("  CPU per hit, 1,000 of them hit before: " + ", ".join(
                f"{n:,} objects {statistics.median(r['warm'][str(n)] for r in runs):.1f} us" for n in counts))
        if args.tracemalloc:
            print(f"  Python heap growth {statistics.median(r['heap_per_object'] for r in runs):.0f} B/object; "
                  f"top allocation sites:")
            for line in runs[-1]["top"]:
                print("   ", line)


if __name__ == "__main__":
    main()
