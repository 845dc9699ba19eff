"""vmod purge (Varnish 7.1): purge.hard() and purge.soft() on the object head the request looked up.

Both may only run in vcl_hit or vcl_miss (VRT_purge fails the task elsewhere; 7.1 checks at run time,
not at compile time). They return how many objects they purged or softened. hard() counts as a purge
(n_purges, n_obj_purged); soft() lowers the TTL, grace and keep of each object, never raises them.
"""

from __future__ import annotations

import math

from vcl.runtime import Context, VCLFailure
from vmods import Param, Vmod

VMOD = Vmod("purge")


def _purge(ctx: Context, ttl: float, grace: float, keep: float) -> int:
    """VRT_purge: HSH_Purge on the request's object head, timed from the request's start."""
    if ctx.method not in ("vcl_hit", "vcl_miss"):
        raise VCLFailure("purge can only happen in vcl_hit{} or vcl_miss{}")
    storage = getattr(ctx.server, "storage", None)
    digest = getattr(ctx, "hash", None)
    if storage is None or digest is None:
        return 0
    count = storage.purge(digest, ttl, grace, keep, now=ctx.req_time)
    if ttl == 0 and grace == 0 and keep == 0:
        ctx.server.counters.n_purges += 1      # Pool_PurgeStat; storage counted n_obj_purged
    return count


@VMOD.func("hard", "INT", [])
def hard(ctx: Context) -> int:
    return _purge(ctx, 0.0, 0.0, 0.0)


@VMOD.func("soft", "INT", [Param("ttl", "DURATION", 0.0, optional=True),
                           Param("grace", "DURATION", -1.0, optional=True),
                           Param("keep", "DURATION", -1.0, optional=True)])
def soft(ctx: Context, ttl: float = 0.0, grace: float = -1.0, keep: float = -1.0) -> int:
    """Negative grace or keep leave that timer as it is."""
    return _purge(ctx, ttl, math.nan if grace < 0 else grace, math.nan if keep < 0 else keep)
