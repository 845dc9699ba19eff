"""logexpect lNAME: match a varnish instance's shared log, as varnishtest's vtc_logexp.c.

Against cacheserver the records come from its ring (cacheserver.vsl) in this process; against the
real varnishd (--varnishd) from the real varnishlog reading that instance's -n directory, so the
runner stays checkable against the reference.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator

from cacheserver.vsl import TAGS, LogError, Record, VslReader
from cacheserver.vslq import GROUPINGS, Query, QueryError, TagFilter, format_raw, groups_of

from .context import TestContext
from .errors import TestFailure
from .log import EntityLog
from .parse import split_commands
from .pcre import pcre

ANY = -1
LAST = -2
ALT = -3                          # expect ?: one of a run of alternatives, seen in any order


def tag_by_name(name: str) -> str | None:
    """VSL_Name2Tag: a tag named in any case, or by a prefix only one tag has; None if neither."""
    low = name.lower()
    found = [t for t in TAGS if t.lower().startswith(low)]
    for t in found:
        if len(t) == len(name):
            return t
    return found[0] if len(found) == 1 else None


class _Test:
    def __init__(self, av: list[str], what: str) -> None:
        if len(av) < 3:
            raise TestFailure("Syntax error")
        skip, vxid, tag = av[0], av[1], av[2]
        if skip == "*":
            self.skip = ANY
        elif skip == "?":
            self.skip = ALT
        elif skip.isdigit():
            self.skip = int(skip)
        else:
            raise TestFailure(f"Not a positive integer: '{skip}'")
        if vxid == "*":
            self.vxid = ANY
        elif vxid == "=":
            self.vxid = LAST
        elif vxid.isdigit():
            self.vxid = int(vxid)
        else:
            raise TestFailure(f"Not a positive integer: '{vxid}'")
        if tag == "*":
            self.tag: str | int = ANY
        elif tag == "=":
            self.tag = LAST
        else:
            named = tag_by_name(tag)
            if named is None:
                raise TestFailure(f"Unknown tag name: '{tag}'")
            self.tag = named
        self.regex = None
        if len(av) > 3:
            try:
                self.regex = pcre(av[3])
            except re.error as exc:
                raise TestFailure(f"Regex error ({exc.msg}): '{av[3]}'") from None
        self.fails: list[_Test] = []
        self.text = f"{what} {' '.join(av[:3])}" + (f" {av[3]!r}" if len(av) > 3 else "")

    def ok(self, vxid: int, tag: str, text: str, last_vxid: int, last_tag: str | None) -> bool:
        if self.vxid == LAST:
            if vxid != last_vxid:
                return False
        elif self.vxid >= 0 and self.vxid != vxid:
            return False
        if self.tag == LAST:
            if tag != last_tag:
                return False
        elif self.tag != ANY and self.tag != tag:
            return False
        if self.regex is not None and self.tag != ANY and self.tag == tag and not self.regex.search(text):
            return False
        return True


class LogExpect:
    def __init__(self, ctx: TestContext, name: str) -> None:
        self.ctx = ctx
        self.name = name
        self.log = EntityLog(ctx.log, name)
        self.varnish = None
        self.d_arg = 0
        self.grouping = "vxid"
        self.query: str | None = None
        self.tests: list[_Test] = []
        self.fails: list[_Test] = []
        self.thread: threading.Thread | None = None
        self.cancelled = False
        self.err = False                 # -err: this logexpect is meant to fail
        self.tagfilter = TagFilter()     # -i/-I/-x/-X
        self._proc: subprocess.Popen | None = None
        ctx.cleanups.append(self._kill)

    # -- the command --------------------------------------------------------------------------------

    def command(self, av: list[str]) -> None:
        i = 0
        while i < len(av):
            a = av[i]
            if a == "-wait":
                if self.thread is None:
                    raise TestFailure(f"logexp not -started '{a}'")
                self.wait()
                i += 1
                continue
            if self.thread is not None:
                self.wait()
            if a in ("-i", "-I", "-x", "-X"):
                if i + 1 >= len(av):
                    raise TestFailure(f"Missing {a} argument")
                try:
                    self.tagfilter.add(a, av[i + 1])
                except (ValueError, re.error) as exc:
                    raise TestFailure(f"{a}: {exc}") from None
                i += 2
                continue
            if a in ("-v", "-d", "-g", "-q"):
                if i + 1 >= len(av):
                    raise TestFailure(f"Missing {a} argument")
                val = av[i + 1]
                if a == "-v":
                    v = self.ctx.varnishes.get(val)
                    if v is None:
                        raise TestFailure(f"-v argument error: no varnish {val}")
                    self.varnish = v
                elif a == "-d":
                    self.d_arg = int(val) if val.lstrip("-").isdigit() else 0
                elif a == "-g":
                    if val not in GROUPINGS:
                        raise TestFailure(f"Unknown grouping '{val}'")
                    self.grouping = val
                else:
                    self.query = val
                i += 2
            elif a == "-err":
                self.err = True
                i += 1
            elif a == "-start":
                self.start()
                i += 1
            elif a == "-run":
                self.start()
                self.wait()
                i += 1
            elif a.startswith("-"):
                raise TestFailure(f"Unknown logexp argument: {a}")
            else:
                self.spec(a)
                i += 1

    def spec(self, text: str) -> None:
        """expect lines, with the `fail add`/`fail clear` in force where each stands."""
        self.tests = []
        fails: list[_Test] = []
        for cmd in split_commands(text):
            toks = [self.ctx.macros.expand(t) for t in cmd.tokens]
            if toks[0] == "expect":
                test = _Test(toks[1:], "expect")
                test.fails = list(fails)
                self.tests.append(test)
                self.log(4, test.text)
            elif toks[0] == "fail" and len(toks) > 1 and toks[1] == "add":
                fails.append(_Test(["*"] + toks[2:], "fail"))
            elif toks[0] == "fail" and len(toks) > 1 and toks[1] == "clear":
                fails = []
            else:
                raise TestFailure(f"Unknown logexp command: {toks[0]}")
        self.fails = fails              # in force after the last expect

    # -- running ------------------------------------------------------------------------------------

    def start(self) -> None:
        if self.varnish is None:
            raise TestFailure("-v argument not given")
        query = None
        if self.query is not None and not self.varnish.real:
            try:
                query = Query(self.query)
            except QueryError as exc:
                raise TestFailure(f"VSLQ_New: {exc}") from None
        # Attach now, synchronously, as varnishtest does: what is logged after -start is seen.
        source = self._source(query)
        self.thread = self.ctx.spawn(self, lambda: self._run(source))

    def wait(self) -> None:
        self.log(2, "Waiting for logexp")
        while self.thread is not None and self.thread.is_alive():
            self.thread.join(0.5)
        self.thread = None
        self._kill()

    def _kill(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()

    def _source(self, query: Query | None) -> Iterator[tuple[int, str, str, str]]:
        if self.varnish.real:
            return self._varnishlog()
        try:
            reader = VslReader(self.varnish.workdir, tail=not self.d_arg)
        except LogError as exc:
            raise TestFailure(f"VSM_Open: {exc}") from None
        return self._ring(reader, query)

    def _ring(self, reader: VslReader, query: Query | None) -> Iterator[tuple[int, str, str, str]]:
        def items():
            while not self.cancelled:
                got = False
                for item in reader.read():
                    got = True
                    yield item
                if not got:
                    time.sleep(0.01)

        for group in groups_of(items(), self.grouping, query, flush=False):
            for txn in group:
                for rec in txn.records:
                    yield rec.vxid, rec.tag, rec.kind, rec.text

    def _varnishlog(self) -> Iterator[tuple[int, str, str, str]]:
        """Against varnishd, logexpect replays `varnishlog -d` (_run_replay); here, only the mark.

        varnishlog attaches to a live log too late to be raced against the test, so -d 0 is a replay
        of the whole log that leaves out what was there at -start: transactions up to the newest vxid
        then, and as many vxid-0 records as there were.
        """
        self.cutoff = (0, 0)
        if not self.d_arg:
            records = list(_parse_varnishlog(iter(self._dump("raw", None).splitlines(True)), "raw"))
            self.cutoff = (max((r[0] for r in records), default=0), sum(1 for r in records if r[0] == 0))
        return iter(())

    def _dump(self, grouping: str, query: str | None) -> str:
        tool = shutil.which("varnishlog") or "/usr/bin/varnishlog"
        cmd = [tool, "-n", self.varnish.workdir, "-g", grouping, "-d"]
        if query is not None:
            cmd += ["-q", query]
        return subprocess.run(cmd, capture_output=True, text=True, errors="surrogateescape", timeout=60).stdout

    def _run(self, source: Iterator[tuple[int, str, str, str]]) -> None:
        self.log(4, "beg|")
        if self.query:
            self.log(4, f"qry| {self.query}")
        try:
            if self.varnish.real:
                self._run_replay()
            else:
                self._match(source)
        except TestFailure as exc:
            if not self.err:
                raise
            self.log(3, f"failed as expected (-err): {exc}")
            return
        if self.err:
            raise TestFailure(f"logexpect {self.name}: expected to fail (-err)")
        self.log(4, "end|")

    def _match(self, source) -> None:
        tests = self.tests
        if not tests:
            if self.fails and self.err:
                # only `fail` lines: watch until one is seen
                for vxid, tag, kind, text in source:
                    self._check_fails(self.fails, vxid, tag, kind, text, -1, None)
            return
        k = 0
        skipped = 0
        last_vxid, last_tag = -1, None
        seen: set[int] = set()           # alternatives of the current run already matched
        self.log(3, f"tst| {tests[0].text}")
        for vxid, tag, kind, text in source:
            if not self.tagfilter.shows(Record(vxid, kind, tag, text)):
                continue
            test = tests[k]
            self._check_fails(test.fails, vxid, tag, kind, text, last_vxid, last_tag)
            line = "%10u %-15s %s %s" % (vxid, tag, kind, text)
            if test.skip == ALT:
                run = k
                while run < len(tests) and tests[run].skip == ALT:
                    run += 1
                hit = next((j for j in range(k, run) if j not in seen
                            and tests[j].ok(vxid, tag, text, last_vxid, last_tag)), None)
                if hit is None:
                    self.log(4, f"skp| {line}")
                    continue
                self.log(4, f" ok| {line}")
                seen.add(hit)
                last_vxid, last_tag = vxid, tag
                if len(seen) < run - k:
                    continue
                seen = set()
                k = run
            elif test.ok(vxid, tag, text, last_vxid, last_tag):
                self.log(4, f" ok| {line}")
                last_vxid, last_tag = vxid, tag
                skipped = 0
                k += 1
            elif test.skip == ANY or test.skip > skipped:
                self.log(4, f"skp| {line}")
                skipped += 1
                continue
            else:
                self.log(0, f"err| {line}")
                raise TestFailure(f"logexpect {self.name}: no match for '{test.text}'")
            if k == len(tests):
                return
            self.log(3, f"tst| {tests[k].text}")

    def _check_fails(self, fails: list[_Test], vxid: int, tag: str, kind: str, text: str, last_vxid: int,
                     last_tag: str | None) -> None:
        for fail in fails:
            if fail.ok(vxid, tag, text, last_vxid, last_tag):
                self.log(0 if not self.err else 3, "fail| " + format_raw(Record(vxid, kind, tag, text)))
                raise TestFailure(f"logexpect {self.name}: a 'fail' record was seen: {fail.text}")

    def _run_replay(self) -> None:
        """Against varnishd: run the whole match on each fresh dump of the log until it succeeds."""
        max_vxid, zeros = self.cutoff
        while not self.cancelled:
            records = []
            skip_zero = zeros
            for rec in _parse_varnishlog(iter(self._dump(self.grouping, self.query).splitlines(True)),
                                         self.grouping):
                if rec[0] == 0 and skip_zero:
                    skip_zero -= 1
                    continue
                if 0 < rec[0] <= max_vxid:
                    continue             # logged before -start
                records.append(rec)
            try:
                with _Quiet(self):
                    self._match(iter(records + [_END]))
                return
            except _NeedMore:
                time.sleep(0.1)


class _NeedMore(Exception):
    pass


_END = (-99, "", "-", "")


class _Quiet:
    """Around one replay: the end of the dump means "wait for more", not a mismatch."""

    def __init__(self, le: LogExpect) -> None:
        self.le = le

    def __enter__(self) -> None:
        le = self.le
        orig = le._match

        def match(source) -> None:
            def guarded():
                for rec in source:
                    if rec is _END:
                        raise _NeedMore()
                    yield rec
                raise _NeedMore()
            orig(guarded())
        le._match = match

    def __exit__(self, *exc) -> None:
        del self.le._match


_GROUP_HEAD = re.compile(r"^\*+\s+<<\s+\w+\s+>>\s+(\d+)")


_PCT = re.compile(r"%([0-9a-fA-F]{2})")


def _unquote(text: str) -> str:
    """varnishlog prints binary records (Debug, HttpGarbage) quoted with %XX escapes; logexpect sees bytes."""
    if len(text) >= 2 and text[0] == '"' and text[-1] == '"':
        text = _PCT.sub(lambda m: chr(int(m.group(1), 16)), text[1:-1]).rstrip("\0")
    return text


def _parse_varnishlog(lines: Iterator[str], grouping: str) -> Iterator[tuple[int, str, str, str]]:
    vxid = 0
    for line in lines:
        line = line.rstrip("\n")
        if not line:
            continue
        if grouping == "raw":
            if len(line) < 27:
                continue
            try:
                rec_vxid = int(line[:10])
            except ValueError:
                continue
            yield rec_vxid, line[11:25].strip(), line[26], _unquote(line[28:])
            continue
        m = _GROUP_HEAD.match(line)
        if m:
            vxid = int(m.group(1))
            continue
        level = len(line) - len(line.lstrip("-"))
        if level == 0:
            continue
        width = max(4, level)
        tag = line[width:width + 14].strip()
        yield vxid, tag, "-", _unquote(line[width + 15:])


def cmd_logexpect(ctx: TestContext, registry: dict, av: list[str]) -> None:
    if not av:
        raise TestFailure("logexpect: missing name")
    le = registry.get(av[0])
    if le is None:
        le = registry[av[0]] = LogExpect(ctx, av[0])
    le.command(av[1:])

