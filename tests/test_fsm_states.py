"""Every state the client FSM can move to is listed in fsm.STATES and has the methods to run it
(st_NAME / ast_NAME), read from the source: a renamed, unlisted or missing state fails here, not on
the one request that reaches it."""

from __future__ import annotations

import ast
import inspect

from cacheserver import deliver, esi, fsm
from cacheserver.fsm import _ASYNC_STEPS, _SYNC_STEPS, STATES, WAITS, ClientRequest


def _constants(expr: ast.expr) -> set[str]:
    """The strings a returned expression can be: "x", or "x" if ... else "y" (None aside)."""
    if isinstance(expr, ast.Constant):
        return {expr.value} if isinstance(expr.value, str) else set()
    if isinstance(expr, ast.IfExp):
        return _constants(expr.body) | _constants(expr.orelse)
    return set()


def _returned_states() -> set[str]:
    """The string constants returned by the methods ClientRequest is made of (its next states)."""
    names: set[str] = set()
    for module in (fsm, deliver, esi):
        tree = ast.parse(inspect.getsource(module))
        for cls in (n for n in tree.body if isinstance(n, ast.ClassDef)):
            for node in ast.walk(cls):
                if isinstance(node, ast.Return) and node.value is not None:
                    names |= _constants(node.value)
    return names


def test_every_returned_state_is_listed():
    states = _returned_states()
    assert {"recv", "lookup", "hit", "deliver", "synth", "fetch", "stream"} <= states
    # _after_recv passes these through by name
    states |= {"pipe", "purge"}
    assert sorted(states - set(STATES)) == []
    assert sorted(set(STATES) - states - {"recv"}) == []     # recv: where every request starts


def test_each_listed_state_has_its_methods():
    for state, subs in STATES.items():
        has_sync, has_async = hasattr(ClientRequest, "st_" + state), hasattr(ClientRequest, "ast_" + state)
        if subs is WAITS:           # always waits on I/O: a coroutine only
            assert (has_sync, has_async) == (False, True), state
        elif subs:                  # runs its subroutines either way
            assert (has_sync, has_async) == (True, True), state
        else:                       # calls no subroutine: never waits
            assert (has_sync, has_async) == (True, False), state
    assert set(_SYNC_STEPS) | set(_ASYNC_STEPS) == set(STATES)
