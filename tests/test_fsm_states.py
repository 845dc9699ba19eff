"""Every state the client FSM can move to has a method to run it (states are strings looked up as
st_NAME / ast_NAME), read from the source: a renamed or missing state fails here, not on the one
request that reaches it."""

from __future__ import annotations

import ast
import inspect

from cacheserver import deliver, esi, fsm
from cacheserver.fsm import _ALWAYS_ASYNC, _STATE_SUBS, ClientRequest


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


def test_every_returned_state_has_a_method():
    states = _returned_states()
    assert {"recv", "lookup", "hit", "deliver", "synth", "fetch", "stream"} <= states
    # _after_recv passes these through by name
    states |= {"pipe", "purge"}
    missing = sorted(s for s in states
                     if not hasattr(ClientRequest, "st_" + s) and not hasattr(ClientRequest, "ast_" + s))
    assert missing == []


def test_waiting_states_have_async_methods():
    assert sorted(s for s in _ALWAYS_ASYNC if not hasattr(ClientRequest, "ast_" + s)) == []
    # states whose subroutines may call async vmods run either way
    both = [s for s in _STATE_SUBS if not (hasattr(ClientRequest, "st_" + s) and hasattr(ClientRequest, "ast_" + s))]
    assert both == []
