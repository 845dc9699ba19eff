"""`cacheserver`: command-line flags as varnishd's, then run the server until SIGINT/SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from pathlib import Path

from cacheserver import __version__
from cacheserver.gcpolicy import GcPolicy
from cacheserver.params import parse_bytes
from cacheserver.server import ListenSpec, Server, VCLLoadError

log = logging.getLogger("cacheserver")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="cacheserver", description="A Varnish-style caching HTTP server programmed in VCL.",
        add_help=False)
    p.add_argument("--help", action="help", help="show this help and exit")
    p.add_argument("-h", dest="hash", metavar="TYPE", help="hash algorithm (accepted for compatibility)")
    p.add_argument("-f", dest="vcl_file", metavar="FILE", help="VCL file to load")
    p.add_argument("-a", dest="listen", action="append", metavar="[NAME=][ADDR]:PORT",
                   help="listen address (repeatable; default :8080)")
    p.add_argument("-b", dest="backend", metavar="HOST:PORT", help="backend to use without a VCL file")
    p.add_argument("-s", dest="storage", action="append", metavar="malloc,SIZE", help="storage (malloc,SIZE)")
    p.add_argument("-p", dest="params", action="append", default=[], metavar="PARAM=VALUE",
                   help="set a run-time parameter")
    p.add_argument("-n", dest="work_dir", metavar="DIR",
                   help="work directory, where the CLI secret _.secret is made without -S (default: "
                        "$XDG_RUNTIME_DIR/cacheserver/HOSTNAME, else /var/lib/cacheserver/HOSTNAME as root, "
                        "else ~/.cache/cacheserver/HOSTNAME)")
    p.add_argument("-C", dest="compile_only", action="store_true",
                   help="compile the VCL, print the generated Python and exit")
    p.add_argument("-F", dest="foreground", action="store_true", help="run in the foreground (the default)")
    p.add_argument("-d", dest="debug", action="store_true",
                   help="debug mode: wait for the CLI's `start` before accepting clients")
    p.add_argument("-V", dest="version", action="store_true", help="print the version and exit")
    p.add_argument("-T", dest="admin_listen", metavar="ADDR:PORT", help="admin CLI listen address")
    p.add_argument("-M", dest="admin_connect", metavar="'ADDR PORT'", help="connect the admin CLI to ADDR PORT")
    p.add_argument("-S", dest="secret", metavar="FILE",
                   help="admin CLI secret file (default: a fresh WORKDIR/_.secret; `none`: no authentication)")
    p.add_argument("-P", dest="pid_file", metavar="FILE", help="write the process id to FILE")
    p.add_argument("-i", dest="identity", metavar="IDENTITY", help="server.identity")
    p.add_argument("-t", dest="ttl", metavar="TTL", help="default TTL (as -p default_ttl=TTL)")
    p.add_argument("-l", dest="vsl_size", metavar="SIZE", help="log space (accepted for compatibility)")
    p.add_argument("-j", dest="jail", metavar="JAIL", help="jail (accepted for compatibility)")
    p.add_argument("-W", dest="waiter", metavar="WAITER", help="waiter (accepted for compatibility)")
    p.add_argument("-r", dest="readonly", action="append", metavar="PARAMS", help="read-only parameters")
    return p


def _check_storage(specs: list[str]) -> None:
    """Refuse storage kinds we do not know; every known kind is kept in memory."""
    for spec in specs:
        name, sep, rest = spec.partition("=")
        kind = (rest if sep else spec).partition(",")[0]
        if kind not in ("malloc", "default", "file", "umem"):
            raise ValueError(f"-s {spec}: unknown storage type {kind!r}")
        size = (rest if sep else spec).partition(",")[2].partition(",")[0]
        if kind in ("malloc", "default", "umem") and size and parse_bytes(size) < 1 << 20:
            # varnishd's storage_malloc.c: a malloc store is at least 1M
            raise ValueError(f'(-smalloc) size "{size}": too small, did you forget to specify M or G?')


def _backend_vcl(target: str) -> str:
    if target.lower() == "none":  # varnishd: `-b none` (any case) is `backend default none;`
        return "vcl 4.1;\nbackend default none;\n"
    host, _, port = target.rpartition(":")
    if not host:
        host, port = target, "80"
    return f'vcl 4.1;\nbackend default {{ .host = "{host.strip("[]")}"; .port = "{port}"; }}\n'


_HASHES = {"critbit": False, "simple_list": False, "classic": True}     # takes arguments?
_WAITERS = ("epoll", "poll")
_JAILS = ("unix", "none")


def _argument_error(args: argparse.Namespace) -> str | None:
    """What varnishd's mgt_main.c refuses once the options are read, in its order and words."""
    if args.backend is not None and args.vcl_file is not None:
        return "Only one of -b or -f can be specified"
    if args.debug and args.foreground:
        return "Only one of -d or -F can be specified"
    if args.compile_only and args.backend is None and args.vcl_file is None:
        return "-C needs either -b <backend> or -f <vcl_file>"
    if not args.debug and args.backend is None and args.vcl_file is None:
        return "Neither -b nor -f given. (use -f '' to override)"
    for value, known, kind in ((args.hash, _HASHES, "hash"), (args.waiter, _WAITERS, "waiter"),
                               (args.jail, _JAILS, "jail")):
        if value is None:
            continue
        name, comma, _ = value.partition(",")
        if name not in known:
            return f'Unknown {kind} method "{name}"'
        if comma and kind == "hash" and not _HASHES[name]:
            return f'Hash method "{name}" takes no arguments'
    return None


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.version:
        print(f"cacheserver {__version__} (VCL 4.0/4.1, varnishd 7.1 flags)")
        return 0
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    refused = _argument_error(args)
    if refused is not None:
        print(f"Error: {refused}\n(-? gives usage)", file=sys.stderr)
        return 2

    if args.compile_only:
        return _compile_only(args)

    try:
        server = _build_server(args)
    except (ValueError, KeyError) as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 2
    try:
        if args.vcl_file:                  # -f '' starts without a VCL, as -d does
            path = Path(args.vcl_file)
            try:
                source = path.read_text(encoding="utf-8")
            except OSError as exc:
                print(f"Error: Cannot read -f file '{args.vcl_file}' ({exc.strerror})\n(-? gives usage)",
                      file=sys.stderr)
                return 2
            server.vcl_load("boot", source, str(path))
        elif args.backend is not None:
            server.vcl_load("boot", _backend_vcl(args.backend), "<-b>")
    except VCLLoadError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    if args.admin_listen or args.admin_connect:
        # Authentication is on unless `-S none`: without -S a fresh secret goes in the work directory.
        from cacheserver.admin import resolve_secret

        try:
            args.secret_path = resolve_secret(args.secret, server.work_dir)
        except (ValueError, OSError) as exc:
            print(f"Error: {exc}", file=sys.stderr)
            return 2
        if args.secret_path is None:
            print("Warning: CLI authentication disabled.", file=sys.stderr)
    try:
        with asyncio.Runner(loop_factory=loop_factory()) as runner:
            runner.run(_serve(server, args))
    except OSError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 2
    return 0


def loop_factory():
    """asyncio's event loop, or uvloop's with CACHESERVER_LOOP=uvloop (less CPU per fetch, but libuv
    drops connections it cannot accept for want of descriptors without telling us, so the
    sess_fail_* counters and their log line stay silent: not the default)."""
    choice = os.environ.get("CACHESERVER_LOOP", "")
    if choice not in ("", "asyncio", "uvloop"):
        raise SystemExit(f"CACHESERVER_LOOP={choice}: expected asyncio or uvloop")
    if choice == "uvloop":
        try:
            import uvloop
        except ImportError:
            raise SystemExit("CACHESERVER_LOOP=uvloop: uvloop is not installed") from None
        return uvloop.new_event_loop
    return asyncio.new_event_loop


def _build_server(args: argparse.Namespace) -> Server:
    server = Server(identity=args.identity, work_dir=Path(args.work_dir) if args.work_dir else None)
    if args.storage:
        _check_storage(args.storage)
        server.configure_storage(args.storage)
    for item in args.params:
        name, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"-p {item}: expected PARAM=VALUE")
        server.params.set(name, value)
    for group in args.readonly or []:
        server.readonly_params.update(name.strip() for name in group.split(",") if name.strip())
    if args.ttl is not None:
        server.params.set("default_ttl", args.ttl)
    server.programs.timeout = server.params.tinykvm_on_connect_timeout
    specs = args.listen or [":8080"]
    server.listen_specs = [ListenSpec.parse(text, i) for i, text in enumerate(specs)]
    if args.work_dir:
        Path(args.work_dir).mkdir(mode=0o755, parents=True, exist_ok=True)
    return server


def _compile_only(args: argparse.Namespace) -> int:
    from vcl.compiler import compile_vcl
    from vcl.errors import VCLError

    if args.vcl_file is None and args.backend is None:
        print("Error: -C needs -f FILE or -b HOST:PORT", file=sys.stderr)
        return 2
    if args.vcl_file:
        try:
            source = Path(args.vcl_file).read_text(encoding="utf-8")
        except OSError as exc:
            print(f"Error: cannot read {args.vcl_file}: {exc.strerror}", file=sys.stderr)
            return 2
        filename = args.vcl_file
    else:
        source, filename = _backend_vcl(args.backend), "<-b>"
    try:
        from cacheserver.params import Params
        from cacheserver.stevedores import parse_specs

        params = Params()
        for item in args.params:         # -p vcc_* settings change what the compiler accepts
            name, _, value = item.partition("=")
            try:
                params.set(name, value)
            except ValueError as exc:
                print(f"Error: -p {item}: {exc}", file=sys.stderr)
                return 2
        compiled = compile_vcl(source, filename, include_dirs=[str(Path(filename).resolve().parent)],
                               storages=[name for name, _ in parse_specs(args.storage)],
                               err_unref=params.vcc_err_unref, allow_inline_c=params.vcc_allow_inline_c)
    except VCLError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    for warning in compiled.warnings:
        print(warning, file=sys.stderr)
    print(compiled.python_source)
    return 0


def _open_log(server: Server, args: argparse.Namespace) -> None:
    """The shared log goes in the work directory (-n), as varnishd's; without one the server runs unlogged."""
    from cacheserver.admin import default_work_dir

    work = Path(args.work_dir) if args.work_dir else default_work_dir()
    try:
        work.mkdir(mode=0o755, parents=True, exist_ok=True)
        server.open_log(work)
    except OSError as exc:
        log.warning("No shared log in %s: %s", work, exc.strerror or exc)


async def _serve(server: Server, args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    if args.pid_file:
        Path(args.pid_file).write_text(f"{os.getpid()}\n")
    server.bind()
    _open_log(server, args)
    server.publish_counters()
    metrics = None
    if server.params.prometheus_listen:
        from cacheserver import prometheus

        metrics = await prometheus.start(server, str(server.params.prometheus_listen))
        print(f"Prometheus metrics on http://{prometheus.bound_address(metrics)}/metrics", file=sys.stderr,
              flush=True)
    for name, host, port in server.listen_addresses():
        print(f"Listening on {host}:{port} ({name})", file=sys.stderr, flush=True)
    admin_addresses: list[str] = []
    if args.admin_listen or args.admin_connect:
        from cacheserver.admin import start_admin

        admin_addresses = await start_admin(server, listen=args.admin_listen, connect=args.admin_connect,
                                            secret_file=args.secret_path or "none")
        for address in admin_addresses:
            print(f"Admin CLI on {address}", file=sys.stderr, flush=True)
        if args.secret_path:
            print(f"Admin CLI secret file: {args.secret_path}", file=sys.stderr, flush=True)
    if args.debug:
        # varnishd -d: a CLI on stdin; closing stdin stops the server (how varnishtest ends it)
        from cacheserver.admin import serve_stdin

        stdin_cli = asyncio.ensure_future(serve_stdin(server, stop.set))
    else:
        await server.start()
        print("Child launched OK", file=sys.stderr, flush=True)
    server.stop_event = stop
    GcPolicy().install()       # a big cache must not make every full collection slower
    try:
        await stop.wait()
    finally:
        # Shutting down already: a second SIGTERM/SIGINT must not cut the clean exit short.
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
            signal.signal(sig, signal.SIG_IGN)
        if args.debug:
            stdin_cli.cancel()
        if metrics is not None:
            await metrics.cleanup()
        await server.close()
        if args.pid_file:
            Path(args.pid_file).unlink(missing_ok=True)
