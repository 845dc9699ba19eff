"""The checked program: what the checker learns about each subroutine, handed to code generation."""

from __future__ import annotations

from dataclasses import dataclass, field

from vcl import ast, symbols
from vmods import ObjectType, Vmod


@dataclass(eq=False)
class Use:
    """Something a subroutine does that only some built-in subroutines allow."""

    kind: str                 # read, write, unset, return, action, func
    name: str
    pos: ast.Pos
    allowed: frozenset[str] | None   # None: anywhere


@dataclass(eq=False)
class SubInfo:
    name: str
    defs: list[ast.Sub]
    uses: list[Use] = field(default_factory=list)
    calls: list[tuple[str, ast.Pos]] = field(default_factory=list)
    is_async: bool = False       # calls an async vmod function directly or through a sub
    async_call: ast.Pos | None = None   # where it calls one directly
    uses_now: bool = False

    @property
    def pos(self) -> ast.Pos:
        return self.defs[0].name_pos

    @property
    def is_method(self) -> bool:
        return self.name in symbols.RETURNS


@dataclass(eq=False)
class CheckedProgram:
    """What code generation needs: typed subroutine bodies and resolved declarations."""

    version: float
    subs: dict[str, SubInfo]          # every subroutine, methods joined (user code first)
    backends: dict[str, ast.Backend]
    default_backend: str | None
    probes: dict[str, ast.Probe]
    acls: dict[str, tuple[ast.Acl, list[tuple[bool, str]]]]   # with resolved networks
    vmods: dict[str, Vmod]
    instances: dict[str, ObjectType]
    regexes: dict[str, str] = field(default_factory=dict)     # regex source -> generated name
    warnings: list[str] = field(default_factory=list)
