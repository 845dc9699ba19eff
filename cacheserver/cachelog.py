"""cachelog: varnishlog for cacheserver's shared log (same flags, same layout)."""

from __future__ import annotations

import argparse
import os
import struct
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from cacheserver.vsl import LogError, Overrun, Record, VslReader
from cacheserver.vslq import GROUPINGS, Query, QueryError, TagFilter, format_group, groups_of

FILE_MAGIC = b"CSVSLF1\n"
_REC = struct.Struct("<IBBI")        # vxid, kind, tag length, text length


def work_dir(name: str | None) -> Path:
    """-n as varnishd takes it: a path, or a name under the default work directory's parent."""
    from cacheserver.admin import default_work_dir

    if not name:
        return default_work_dir()
    path = Path(name)
    return path if path.is_absolute() or os.sep in name or path.exists() else default_work_dir().parent / name


def live_records(reader: VslReader, dump: bool, poll: float = 0.02) -> Iterator[Record | Overrun]:
    """The records of the ring: what is there (-d), or everything as it comes until the server stops."""
    while True:
        got = False
        for item in reader.read():
            got = True
            yield item
        if got:
            continue
        if dump:
            return
        if reader.stale() is not None:
            return
        time.sleep(poll)


def write_records(out, records: Iterator[Record]) -> None:
    for rec in records:
        tag = rec.tag.encode()
        text = rec.text.encode("utf-8", "surrogateescape")
        out.write(_REC.pack(rec.vxid, ord(rec.kind), len(tag), len(text)) + tag + text)


def read_file(path: str) -> Iterator[Record]:
    with open(path, "rb") as f:
        if f.read(len(FILE_MAGIC)) != FILE_MAGIC:
            raise LogError(f"{path}: not a cachelog -w file")
        while True:
            head = f.read(_REC.size)
            if len(head) < _REC.size:
                return
            vxid, kind, taglen, textlen = _REC.unpack(head)
            tag = f.read(taglen).decode()
            text = f.read(textlen).decode("utf-8", "surrogateescape")
            yield Record(vxid, chr(kind), tag, text)


def common_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-n", dest="name", help="the server's work directory (its -n)")
    p.add_argument("-d", dest="dump", action="store_true", help="process the log from its start and exit")
    p.add_argument("-q", dest="query", help="VSL query")
    p.add_argument("-C", dest="caseless", action="store_true", help="caseless regular expressions")
    p.add_argument("-k", dest="limit", type=int, help="stop after this many transactions")
    p.add_argument("-r", dest="read", metavar="FILE", help="read records from a -w file")
    p.add_argument("-b", dest="backend", action="store_true", help="only backend transactions")
    p.add_argument("-c", dest="client", action="store_true", help="only client transactions")
    p.add_argument("-u", dest="unbuffered", action="store_true", help="unbuffered output")
    p.add_argument("-t", dest="timeout", help="accepted for compatibility")


def open_source(args: argparse.Namespace) -> Iterator[Record | Overrun]:
    if args.read:
        return read_file(args.read)
    reader = VslReader(work_dir(args.name), tail=not args.dump)
    return live_records(reader, args.dump)


def parse(argv: list[str] | None) -> tuple[argparse.Namespace, TagFilter]:
    p = argparse.ArgumentParser(prog="cachelog", description="Show cacheserver's shared log, as varnishlog.")
    common_args(p)
    p.add_argument("-g", dest="grouping", default="vxid", choices=GROUPINGS)
    p.add_argument("-w", dest="write", metavar="FILE", help="write the records to FILE (read with -r)")
    p.add_argument("-a", dest="append", action="store_true", help="append to the -w file")
    p.add_argument("-v", dest="verbose", action="store_true", help="accepted for compatibility")
    filters: list[tuple[str, str]] = []

    class Filter(argparse.Action):
        def __call__(self, parser, namespace, values, option_string=None):
            filters.append((option_string, values))

    for flag in ("-i", "-I", "-x", "-X"):
        p.add_argument(flag, action=Filter, metavar="TAGS" if flag.islower() else "[TAGS:]REGEX")
    args = p.parse_args(argv)
    tagf = TagFilter()
    for flag, spec in filters:
        try:
            tagf.add(flag, spec)
        except ValueError as exc:
            p.error(f"{flag}: {exc}")
    return args, tagf


def select(args: argparse.Namespace, group) -> bool:
    if args.backend and not args.client:
        return any(t.kind == "b" for t in group)
    if args.client and not args.backend:
        return any(t.kind == "c" for t in group)
    return True


def main(argv: list[str] | None = None) -> int:
    args, tagf = parse(argv)
    try:
        query = Query(args.query, args.caseless) if args.query else None
    except QueryError as exc:
        print(exc, file=sys.stderr)
        return 1
    try:
        source = open_source(args)
    except LogError as exc:
        print(f"cachelog: {exc}", file=sys.stderr)
        return 1
    out = sys.stdout
    count = 0
    try:
        if args.write:
            bout = open(args.write, "ab" if args.append else "wb")
            if bout.tell() == 0:
                bout.write(FILE_MAGIC)
        for group in groups_of(source, args.grouping, query):
            if not select(args, group):
                continue
            if args.write:
                write_records(bout, (r for t in group for r in t.records if tagf.shows(r)))
                bout.flush()
            else:
                for line in format_group(group, args.grouping, tagf.shows):
                    out.write(line + "\n")
                if args.unbuffered or args.grouping != "raw":
                    out.flush()
            count += 1
            if args.limit and count >= args.limit:
                break
    except LogError as exc:
        print(f"cachelog: {exc}", file=sys.stderr)
        return 1
    except (BrokenPipeError, KeyboardInterrupt):
        return 0
    out.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
