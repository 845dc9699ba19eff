"""vmod tinykvm: steal(program, argument) hands the client's TCP connection to a program.

The contract of libvmod-tinykvm's experimental steal(): callable from vcl_recv only, HTTP/1.x only,
an unknown program is a VCL failure, the program's on_connect may refuse (then the connection stays
with us), and after a successful steal nothing more is written on the socket by the server.
"""

from __future__ import annotations

from cacheserver.programs import find_program
from vcl.runtime import Context, VCLFailure
from vmods import Param, Vmod

VMOD = Vmod("tinykvm")


@VMOD.func("steal", "BOOL", [Param("program", "STRING"), Param("argument", "STRING", "", optional=True)],
           restrict={"vcl_recv"}, is_async=True)
async def steal(ctx: Context, program: str, argument: str = "") -> bool:
    session = ctx.session
    server = ctx.server
    if session is None or server is None:
        raise VCLFailure("tinykvm.steal(): no client connection to steal")
    if not ctx.req.proto.startswith("HTTP/1."):
        return False
    manager = server.programs
    try:
        path = find_program(program, manager.search_dirs)
    except ValueError as exc:
        raise VCLFailure(f"steal(): {exc}") from None
    if path is None:
        raise VCLFailure(f"No such program '{program}' for steal()")
    return await session.steal(program, argument)
