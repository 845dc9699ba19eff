"""vmod tinykvm: programs (Python files run in their own processes) as backends, strings, synthetic
responses, and steal() of a client connection; the VCL API of libvmod-tinykvm's vmod_tinykvm.vcc.

Each function may be called only from the subroutines the .vcc names (checked at compile time):
library/configure/start in vcl_init; program/chain/live_update in vcl_backend_fetch; synth in
vcl_synth and vcl_backend_error; steal in vcl_recv; stats, to_string and live_update_file in any
client or backend subroutine; main_arguments and invalidate_programs anywhere.

steal() is libvmod-tinykvm's experimental one: HTTP/1.x only, an unknown program is a VCL failure,
the program's on_connect may refuse (then the connection stays with us), and after a successful
steal nothing more is written on the socket by the server.
"""

from __future__ import annotations

import re
from pathlib import Path

from cacheserver.http1 import reason_for
from cacheserver.program_backend import ProgramBackend, Step, program_backend, run_steps
from cacheserver.program_config import ConfigError, ProgramConfig, load_library, parse_json
from cacheserver.program_config import configure as apply_settings
from cacheserver.programs import ProgramError, ProgramManager, default_search_dirs, find_program
from kvm_api.protocol import MAX_BODY
from vcl.runtime import Context, VCLFailure
from vmods import Param, Vmod

VMOD = Vmod("tinykvm")

_CLIENT_BACKEND = {"client", "backend"}
_CHAIN = "tinykvm.chain"            # ctx.priv_task key: the chain() steps of this backend task


def _manager(ctx: Context) -> ProgramManager:
    server = ctx.server
    if server is None:
        raise VCLFailure("tinykvm: no server")
    return server.programs


def _vcl_dir(ctx: Context) -> Path | None:
    filename = getattr(ctx.vcl, "filename", None)
    if filename and not str(filename).startswith("<"):
        return Path(filename).resolve().parent
    return None


def _known(ctx: Context, name: str) -> bool:
    """Program `name` is defined or found, also during vcl_init (before the VCL is in use and its
    directory is searched)."""
    manager = _manager(ctx)
    if manager.serving(name) or manager.stealing(name):
        return True                  # no file system look-up per request once it runs
    cfg = manager.configs.get(name)
    if cfg is not None and cfg.filename is not None:
        return cfg.filename.is_file()
    vcl_file = getattr(ctx.vcl, "filename", None)
    dirs = [*manager.search_dirs, *default_search_dirs(vcl_file if _vcl_dir(ctx) else None)]
    try:
        return find_program(name, dirs) is not None
    except ValueError as exc:
        raise VCLFailure(f"tinykvm: {exc}") from None


# -- vcl_init: definitions -------------------------------------------------------------------------

@VMOD.func("library", "BOOL", [Param("uri", "STRING")], restrict={"vcl_init"})
def library(ctx: Context, uri: str) -> bool:
    """Program definitions from a local JSON file (a path, or file://)."""
    if re.match(r"[A-Za-z][A-Za-z0-9+.-]*://", uri) and not uri.startswith("file://"):
        raise VCLFailure(f"tinykvm.library({uri}): only local files can be read (no network "
                         "fetch here): download the library and give its path")
    path = Path(uri.removeprefix("file://"))
    if not path.is_absolute() and _vcl_dir(ctx) is not None:
        path = _vcl_dir(ctx) / path
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise VCLFailure(f"tinykvm.library({uri}): {exc.strerror or exc}") from None
    manager = _manager(ctx)
    try:
        programs = load_library(text, path.parent, f"tinykvm.library({uri})", manager.groups)
    except ConfigError as exc:
        raise VCLFailure(str(exc)) from None
    for cfg in programs.values():
        manager.define(cfg)
    return True


@VMOD.func("configure", "BOOL", [Param("program", "STRING"), Param("json", "STRING")], restrict={"vcl_init"})
def configure(ctx: Context, program: str, json: str) -> bool:
    """Override settings of a program, or define one inline."""
    manager = _manager(ctx)
    what = f"tinykvm.configure({program})"
    try:
        settings = parse_json(json, what)
        cfg = apply_settings(manager.configs.get(program) or ProgramConfig(program), settings,
                             manager.groups, _vcl_dir(ctx), what)
        manager.define(cfg)
    except (ConfigError, ValueError) as exc:
        raise VCLFailure(str(exc)) from None
    return True


@VMOD.func("start", "BOOL", [Param("program", "STRING"), Param("async", "BOOL", True, optional=True),
                             Param("debug", "BOOL", False, optional=True)], restrict={"vcl_init"})
def start(ctx: Context, program: str, async_: bool = True, debug: bool = False) -> bool:
    """Start a program's first process with the server: before it serves unless `async`."""
    if debug:
        raise VCLFailure("tinykvm.start(): debug=true needs KVM's remote GDB, which programs "
                         "running as processes do not have")
    if not _known(ctx, program):
        raise VCLFailure(f"tinykvm.start(): no such program '{program}'")
    _manager(ctx).start_later(program, wait=not async_)
    return True


# -- anywhere ----------------------------------------------------------------------------------------

@VMOD.func("main_arguments", "BOOL", [Param("program", "STRING"), Param("arguments", "STRANDS")])
def main_arguments(ctx: Context, program: str, arguments: str) -> bool:
    """argv[3:] of the program's next start (the joined strands, split at white space)."""
    manager = _manager(ctx)
    cfg = manager.configs.get(program) or ProgramConfig(program)
    cfg.main_arguments = arguments.split()
    try:
        manager.define(cfg)
    except ValueError as exc:
        raise VCLFailure(f"tinykvm.main_arguments(): {exc}") from None
    return True


@VMOD.func("invalidate_programs", "INT", [Param("regex", "STRING", "", optional=True)])
def invalidate_programs(ctx: Context, regex: str = "") -> int:
    """Unload the running programs whose name matches; they start again when next needed."""
    try:
        return _manager(ctx).invalidate(regex)
    except re.error as exc:
        raise VCLFailure(f"tinykvm.invalidate_programs({regex}): bad regex: {exc}") from None


@VMOD.func("stats", "STRING", [Param("pattern", "STRING", "", optional=True),
                               Param("indentation", "INT", -1, optional=True)], restrict=_CLIENT_BACKEND)
def stats(ctx: Context, pattern: str = "", indentation: int = -1) -> str:
    try:
        return _manager(ctx).stats_json(pattern, int(indentation))
    except re.error as exc:
        raise VCLFailure(f"tinykvm.stats({pattern}): bad regex: {exc}") from None


# -- backends ----------------------------------------------------------------------------------------

@VMOD.func("chain", "BOOL", [Param("program", "STRING"), Param("arg", "STRING", "", optional=True),
                             Param("config", "STRING", "", optional=True),
                             Param("error_treshold", "INT", 400, optional=True)],
           restrict={"vcl_backend_fetch"})
def chain(ctx: Context, program: str, arg: str = "", config: str = "", error_treshold: int = 400) -> bool:
    """Queue a program to run before the one program() or to_string() names; false if unknown."""
    if not _known(ctx, program):
        return False
    if ctx.priv_task is None:
        ctx.priv_task = {}
    ctx.priv_task.setdefault(_CHAIN, []).append(Step(program, arg, config, int(error_treshold)))
    return True


def _take_chain(ctx: Context) -> list[Step]:
    task = ctx.priv_task
    return task.pop(_CHAIN, []) if isinstance(task, dict) else []


@VMOD.func("program", "BACKEND", [Param("program", "STRING"), Param("arg", "STRING", "", optional=True),
                                  Param("config", "STRING", "", optional=True)],
           restrict={"vcl_backend_fetch"})
def program(ctx: Context, program: str, arg: str = "", config: str = "") -> ProgramBackend:
    """A backend whose responses the program's on_get / on_post produce."""
    if not _known(ctx, program):
        raise VCLFailure(f"tinykvm.program(): no such program '{program}'")
    return program_backend(program, arg, config, _take_chain(ctx))


@VMOD.func("live_update", "BACKEND", [Param("program", "STRING"), Param("key", "STRING"),
                                      Param("max_size", "BYTES", 50 * 1024 * 1024, optional=True)],
           restrict={"vcl_backend_fetch"})
def live_update(ctx: Context, program: str, key: str, max_size: float = 50 * 1024 * 1024) -> ProgramBackend:
    """A backend that takes the POSTed body as the program's new file (if `key` matches)."""
    return ProgramBackend(name=f"tinykvm.live_update.{program}", host="tinykvm", port="0",
                          live_update=(program, key, int(max_size)))


@VMOD.func("live_update_file", "BOOL", [Param("program", "STRING"), Param("filename", "STRING")],
           restrict=_CLIENT_BACKEND, is_async=True)
async def live_update_file(ctx: Context, program: str, filename: str) -> bool:
    """Swap the program for a local file; false (the old program stays) if it does not start."""
    path = Path(filename)
    if not path.is_absolute() and _vcl_dir(ctx) is not None:
        path = _vcl_dir(ctx) / path
    if not path.is_file():
        ctx.log.append(("VCL_Log", f"tinykvm.live_update_file({program}): no file {path}"))
        return False
    try:
        await _manager(ctx).live_update(program, path)
    except (ProgramError, ValueError) as exc:
        ctx.log.append(("VCL_Log", f"tinykvm.live_update_file({program}): {exc}"))
        return False
    return True


async def _run(ctx: Context, program: str, url: str, arg: str, steps: list[Step]):
    """(status, content_type, body) of a GET through the program (after a chain, if any)."""
    http = ctx.req if ctx.req is not None else ctx.bereq
    headers = [(n, v) for n, v in http.headers.items()] if http is not None else []
    resp = await run_steps(_manager(ctx), [*steps, Step(program, arg)], "GET", url, headers, b"")
    return resp.status, resp.content_type, await resp.body(MAX_BODY)


@VMOD.func("to_string", "STRING", [Param("program", "STRING"), Param("url", "STRING", "", optional=True),
                                   Param("arg", "STRING", "", optional=True),
                                   Param("on_error", "STRING", "", optional=True),
                                   Param("error_treshold", "INT", 400, optional=True)],
           restrict=_CLIENT_BACKEND, is_async=True)
async def to_string(ctx: Context, program: str, url: str = "", arg: str = "", on_error: str = "",
                    error_treshold: int = 400) -> str:
    """The body the program answers with, or `on_error` if it fails or its status is too high."""
    try:
        status, _, body = await _run(ctx, program, url, arg, _take_chain(ctx))
    except ProgramError as exc:
        ctx.log.append(("VCL_Log", f"tinykvm.to_string({program}): {exc}"))
        return on_error
    if status >= error_treshold:
        return on_error
    return body.decode("utf-8", "surrogateescape")


@VMOD.func("synth", "INT", [Param("status", "INT"), Param("program", "STRING"),
                            Param("url", "STRING", "", optional=True), Param("arg", "STRING", "", optional=True)],
           restrict={"vcl_synth", "vcl_backend_error"}, is_async=True)
async def synth(ctx: Context, status: int, program: str, url: str = "", arg: str = "") -> int:
    """Make the synthetic response (resp in vcl_synth, beresp in vcl_backend_error) from the
    program's answer; `status` non-zero overrides its status. Returns the status, 0 on failure."""
    try:
        got, ctype, body = await _run(ctx, program, url, arg, [])
    except ProgramError as exc:
        ctx.log.append(("VCL_Log", f"tinykvm.synth({program}): {exc}"))
        return 0
    http = ctx.resp if ctx.method == "vcl_synth" else ctx.beresp
    final = int(status) or got
    http.status = final
    http.reason = reason_for(final)
    if ctype:
        http.headers.set("Content-Type", ctype)
    ctx.synth_body = [body.decode("utf-8", "surrogateescape")]
    return final


# -- steal() ---------------------------------------------------------------------------------------

@VMOD.func("steal", "BOOL", [Param("program", "STRING"), Param("argument", "STRING", "", optional=True)],
           restrict={"vcl_recv"}, is_async=True)
async def steal(ctx: Context, program: str, argument: str = "") -> bool:
    session = ctx.session
    server = ctx.server
    if session is None or server is None:
        raise VCLFailure("tinykvm.steal(): no client connection to steal")
    if not ctx.req.proto.startswith("HTTP/1."):
        return False
    try:
        known = _known(ctx, program)
    except VCLFailure as exc:
        raise VCLFailure(f"steal(): {str(exc).removeprefix('tinykvm: ')}") from None
    if not known:
        raise VCLFailure(f"No such program '{program}' for steal()")
    return await session.steal(program, argument)
