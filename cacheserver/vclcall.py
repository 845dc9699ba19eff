"""Calling one VCL subroutine, for the client and the backend side alike.

Every call is logged as varnishd logs it (`VCL_call` NAME, then `VCL_return` ACTION), and a failure
is accounted for in one place: a VCL failure at run time (`VCLFailure`: VRT_fail) and
`return (fail)` both count `MAIN.vcl_fail` and log `VCL_Error`, whether the subroutine ran
synchronously or had to be awaited (it calls an async vmod function, directly or through a sub).
"""

from __future__ import annotations

import logging

from vcl.runtime import Action, Context, VCLFailure

log = logging.getLogger("cacheserver.vcl")

# VCL_call's argument for each subroutine, as varnishd logs it
CALL_NAMES = {f"vcl_{n}": n.upper() for n in (
    "recv", "hash", "hit", "miss", "pass", "purge", "pipe", "deliver", "synth",
    "backend_fetch", "backend_response", "backend_error")}


def fail_from_vcl(ctx: Context, action: Action) -> None:
    """`return (fail)` / `return (fail(REASON))`: VRT_fail, counted and logged with its reason."""
    ctx.server.counters.vcl_fail += 1
    reason = action.args[0] if action.args else ""
    ctx.log.append(("VCL_Error", reason or "Failed from VCL"))


def _failed(ctx: Context, sub: str, exc: VCLFailure) -> Action:
    ctx.server.counters.vcl_fail += 1
    ctx.log.append(("VCL_Error", str(exc)))
    log.warning("VCL failure in %s: %s", sub, exc)
    ctx.log.append(("VCL_return", "fail"))
    return Action("fail")


def _returned(ctx: Context, action: Action) -> Action:
    if action.name == "fail":
        fail_from_vcl(ctx, action)
    ctx.log.append(("VCL_return", action.name))
    return action


def call_sub(vcl, ctx: Context, sub: str) -> Action:
    """Run a subroutine that does not await (not in `vcl.async_subs`)."""
    ctx.method = sub
    ctx.log.append(("VCL_call", CALL_NAMES.get(sub, sub)))
    try:
        action = vcl.subs[sub](ctx)
    except VCLFailure as exc:
        return _failed(ctx, sub, exc)
    return _returned(ctx, action)


async def acall_sub(vcl, ctx: Context, sub: str) -> Action:
    """Run any subroutine, awaiting it if it must be."""
    if sub not in vcl.async_subs:
        return call_sub(vcl, ctx, sub)
    ctx.method = sub
    ctx.log.append(("VCL_call", CALL_NAMES.get(sub, sub)))
    try:
        action = await vcl.subs[sub](ctx)
    except VCLFailure as exc:
        return _failed(ctx, sub, exc)
    return _returned(ctx, action)
