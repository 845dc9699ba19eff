"""python -m bench [SCENARIO ...] [--rounds N] [--duration S] [--short] [--no-varnishd] ...

Starts the origin, then for each scenario cacheserver and varnishd (when installed) with the same VCL,
storage and parameters, runs them in alternation and prints a Markdown table; the table, a chart and
the JSON go to bench/results/DATE/. See bench/README.md.
"""

from __future__ import annotations

import argparse
import sys
import time
import traceback
from pathlib import Path

from bench import report
from bench.common import ROOT
from bench.load import have_wrk
from bench.scenarios import SCENARIOS, Bench, Options, Row, WrongAnswer
from bench.servers import Origin, Workspace, find_varnishd


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("scenarios", nargs="*", metavar="SCENARIO",
                    help=f"which to run (default: all): {', '.join(SCENARIOS)}")
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds per scenario (default 3)")
    ap.add_argument("--duration", type=float, default=5.0, help="seconds per wrk run (default 5)")
    ap.add_argument("--connections", type=int, default=16, help="wrk connections (default 16)")
    ap.add_argument("--short", action="store_true",
                    help="smoke run: one brief round each, check the answers, measure nothing that matters")
    ap.add_argument("--no-varnishd", action="store_true", help="do not compare with varnishd")
    ap.add_argument("--varnishd", default=None, help="the varnishd binary (default: found on PATH)")
    ap.add_argument("--compare-root", type=Path, action="append", default=[], metavar="DIR",
                    help="also run the cacheserver of another checkout (repeatable)")
    ap.add_argument("--out", type=Path, default=None,
                    help="results directory (default bench/results/DATE, or DATE-SCENARIOS for some of them; "
                         "--short writes none unless given)")
    ap.add_argument("--update-readme", action="store_true",
                    help="put the table into README.md's Performance section")
    ap.add_argument("--note", default="", help="a sentence added to the README table's header")
    args = ap.parse_args(argv)
    unknown = [s for s in args.scenarios if s not in SCENARIOS]
    if unknown:
        ap.error(f"unknown scenario(s) {', '.join(unknown)}; choose from {', '.join(SCENARIOS)}")
    if args.rounds < 1 or args.duration <= 0 or args.connections < 1:
        ap.error("--rounds, --duration and --connections must be positive")
    if args.short and args.update_readme:
        ap.error("--short figures do not belong in the README")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    varnishd = None if args.no_varnishd else (args.varnishd or find_varnishd())
    if not args.no_varnishd and varnishd is None:
        print("varnishd is not installed: cacheserver alone, no ratios (apt-get install -y varnish)")
    if not have_wrk():
        print("wrk is not installed: answers are checked, nothing is measured (apt-get install -y wrk)")
    options = Options(rounds=args.rounds, duration=args.duration, connections=args.connections,
                      short=args.short, varnishd=varnishd, compare_roots=args.compare_root)
    info = report.machine()
    date = time.strftime("%Y-%m-%d", time.gmtime())
    names = args.scenarios or list(SCENARIOS)
    rows: list[Row] = []
    failed: list[str] = []
    workspace = Workspace()
    try:
        with Origin(workspace) as origin:
            bench = Bench(options, workspace, origin.port)
            for name in names:
                began = time.monotonic()
                print(f"== {name}: {SCENARIOS[name].__doc__.splitlines()[0]}", flush=True)
                try:
                    got = SCENARIOS[name](bench)
                except (WrongAnswer, RuntimeError, OSError) as e:
                    failed.append(name)
                    print(f"FAILED {name}: {e}", flush=True)
                    if not isinstance(e, WrongAnswer):
                        traceback.print_exc()
                    continue
                rows += got
                print(report.table(got), f"\n({time.monotonic() - began:.0f} s)", flush=True)
    finally:
        workspace.cleanup()
    head = report.header(info, date, bench.rounds, bench.duration, args.connections)
    print(f"\n{head}\n\n{report.table(rows)}")
    # a run of some scenarios only goes beside the full run's folder, not over it
    folder = date if not args.scenarios else f"{date}-{'-'.join(args.scenarios)}"
    out_dir = args.out or (None if args.short else ROOT / "bench" / "results" / folder)
    if out_dir is not None and rows:
        for message in report.write(rows, out_dir, head, info):
            print(message)
        if args.update_readme:
            report.update_readme(ROOT / "README.md", head, rows, out_dir, args.note)
            print("README.md: Performance section updated")
    if failed:
        print(f"FAILED: {', '.join(failed)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
