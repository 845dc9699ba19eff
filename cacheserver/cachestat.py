"""cachestat: varnishstat for cacheserver (counters read from the work directory, never over the CLI)."""

from __future__ import annotations

import argparse
import fnmatch
import json
import sys
import time

from cacheserver import vsc
from cacheserver.cachelog import work_dir


def select(names: list[str], fields: list[str]) -> list[str]:
    """-f as varnishstat's: globs include; a leading ^ excludes; no including glob means all."""
    include = [f for f in fields if not f.startswith("^")]
    exclude = [f[1:] for f in fields if f.startswith("^")]
    out = []
    for name in names:
        if include and not any(fnmatch.fnmatchcase(name, g) for g in include):
            continue
        if any(fnmatch.fnmatchcase(name, g) for g in exclude):
            continue
        out.append(name)
    return out


def one_shot(counters: dict[str, int], names: list[str]) -> str:
    uptime = max(counters.get("MAIN.uptime", 0), 1)
    lines = []
    for name in names:
        value = counters[name]
        rate = "%12s" % "." if vsc.kind(name) == "g" else "%12.2f" % (value / uptime)
        lines.append(("%-17s %12d %s %s" % (name, value, rate, vsc.description(name))).rstrip())
    return "\n".join(lines) + "\n"


def as_json(counters: dict[str, int], names: list[str]) -> str:
    out = {"version": 1, "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S"), "counters": {
        name: {"description": vsc.description(name), "flag": vsc.kind(name),
               "format": "B" if "bytes" in name else "i", "value": counters[name]} for name in names}}
    return json.dumps(out, indent=2) + "\n"


def screen(dir_, fields: list[str]) -> None:        # pragma: no cover - interactive
    import curses

    def run(win) -> None:
        curses.curs_set(0)
        win.nodelay(True)
        prev: dict[str, int] = {}
        prev_t = time.time()
        while True:
            try:
                data = vsc.read(dir_)
            except vsc.StatError as exc:
                win.erase()
                win.addstr(0, 0, str(exc)[: curses.COLS - 1])
                win.refresh()
                time.sleep(1)
                continue
            counters = data["counters"]
            now = time.time()
            names = select(list(counters), fields)
            win.erase()
            why = vsc.stale(data)
            head = f"Uptime child: {counters.get('MAIN.uptime', 0)} s" + (f"   ({why})" if why else "")
            win.addstr(0, 0, head[: curses.COLS - 1])
            win.addstr(2, 0, ("%-40s %14s %12s %12s" % ("NAME", "CURRENT", "CHANGE", "AVERAGE"))[: curses.COLS - 1],
                       curses.A_BOLD)
            uptime = max(counters.get("MAIN.uptime", 0), 1)
            for row, name in enumerate(names[: curses.LINES - 4]):
                value = counters[name]
                change = (value - prev.get(name, value)) / max(now - prev_t, 1e-3)
                line = "%-40s %14d %12.2f %12.2f" % (name, value, change, value / uptime)
                win.addstr(row + 3, 0, line[: curses.COLS - 1])
            win.refresh()
            prev, prev_t = counters, now
            for _ in range(10):
                if win.getch() in (ord("q"), ord("Q")):
                    return
                time.sleep(0.1)

    curses.wrapper(run)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="cachestat", description="cacheserver's counters, as varnishstat.")
    p.add_argument("-n", dest="name", help="the server's work directory (its -n)")
    p.add_argument("-1", dest="once", action="store_true", help="print the counters once and exit")
    p.add_argument("-j", dest="json", action="store_true", help="print the counters as JSON and exit")
    p.add_argument("-f", dest="fields", action="append", default=[], metavar="GLOB",
                   help="field inclusion glob (^GLOB excludes); repeatable")
    p.add_argument("-l", dest="list", action="store_true", help="list the counter names and exit")
    p.add_argument("-t", dest="timeout", help="accepted for compatibility")
    args = p.parse_args(argv)
    dir_ = work_dir(args.name)
    if not (args.once or args.json or args.list):
        screen(dir_, args.fields)
        return 0
    try:
        data = vsc.read(dir_)
    except vsc.StatError as exc:
        print(f"cachestat: {exc}", file=sys.stderr)
        return 1
    why = vsc.stale(data)
    if why:
        print(f"cachestat: warning: {why}", file=sys.stderr)
    counters = data["counters"]
    names = select(list(counters), args.fields)
    if args.list:
        sys.stdout.write("".join(f"{n:<40} {vsc.description(n)}\n" for n in names))
    elif args.json:
        sys.stdout.write(as_json(counters, names))
    else:
        sys.stdout.write(one_shot(counters, names))
    return 0


if __name__ == "__main__":
    sys.exit(main())
