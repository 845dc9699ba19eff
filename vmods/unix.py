"""vmod unix (Varnish 7.1): the peer credentials of a client on a Unix domain socket.

On any other connection (all of ours are TCP today) each function logs "vmod unix error: not
listening on a Unix domain socket" and returns -1 (uid, gid) or unset (user, group), as varnishd
does; in vcl_init / vcl_fini they fail the VCL.
"""

from __future__ import annotations

import grp
import pwd
import socket
import struct

from vcl.runtime import Context, VCLFailure
from vmods import Vmod

VMOD = Vmod("unix")


def _error(ctx: Context, text: str) -> None:
    ctx.log.append(("VCL_Error", f"vmod unix error: {text}"))


def _peer_creds(ctx: Context) -> tuple[int, int] | None:
    """(uid, gid) of the peer, or None after logging why not."""
    if ctx.method in ("vcl_init", "vcl_fini"):
        raise VCLFailure("vmod unix failure: may not be called in vcl_init or vcl_fini")
    transport = getattr(ctx.session, "transport", None)
    sock = transport.get_extra_info("socket") if transport is not None else None
    if sock is None or sock.family != socket.AF_UNIX:
        _error(ctx, "not listening on a Unix domain socket")
        return None
    try:
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except OSError as exc:
        _error(ctx, f"could not read peer credentials: {exc.strerror}")
        return None
    _pid, uid, gid = struct.unpack("3i", creds)
    return uid, gid


@VMOD.func("uid", "INT", [])
def uid(ctx: Context) -> int:
    creds = _peer_creds(ctx)
    return -1 if creds is None else creds[0]


@VMOD.func("gid", "INT", [])
def gid(ctx: Context) -> int:
    creds = _peer_creds(ctx)
    return -1 if creds is None else creds[1]


@VMOD.func("user", "STRING", [])
def user(ctx: Context) -> str | None:
    creds = _peer_creds(ctx)
    if creds is None:
        return None
    try:
        return pwd.getpwuid(creds[0]).pw_name
    except KeyError:
        _error(ctx, "could not read peer credentials: No such file or directory")
        return None


@VMOD.func("group", "STRING", [])
def group(ctx: Context) -> str | None:
    creds = _peer_creds(ctx)
    if creds is None:
        return None
    try:
        return grp.getgrgid(creds[1]).gr_name
    except KeyError:
        _error(ctx, "could not read peer credentials: No such file or directory")
        return None
