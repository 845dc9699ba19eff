"""The vmod registry: each vmod module describes its functions and objects with VCL types.

The VCL compiler reads these descriptions to type-check calls and emit direct Python calls; at run
time every implementation is called as impl(ctx, *args) with ctx the task's vcl.runtime.Context.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Callable


@dataclass(slots=True)
class Param:
    name: str                  # "" for an unnamed one (a bare type in the .vcc): positional only
    type: str                  # a VCL type name: STRING, INT, REAL, BOOL, DURATION, BYTES, IP, TIME,
    #                            BACKEND, HEADER, ENUM, STRANDS (any number of strings), PROBE, ACL, BLOB,
    #                            REGEX (a constant; the impl gets a compiled vcl.regex.Regex)
    # a Python value (emitted with repr()), used when the argument is left out; `...` (Ellipsis)
    # lets the impl tell "left out" from an unset value, as varnishd's valid_NAME does
    default: object = None
    optional: bool = False     # may be left out (with `default` then)
    enum: tuple[str, ...] = ()  # the words an ENUM accepts
    # STRANDS only: the impl gets the pieces as VCL wrote them, a tuple of str (None for an unset
    # one), not their concatenation: varnishd's vmods see each strand (e.g. blob's errors show p[0])
    pieces: bool = False


@dataclass(slots=True)
class Func:
    name: str
    impl: Callable
    ret: str = "VOID"
    params: list[Param] = field(default_factory=list)
    # built-in subroutines (e.g. {"vcl_recv"}) the function may be called from; None: anywhere
    restrict: frozenset[str] | None = None
    # the implementation is a coroutine function: compiled VCL awaits it
    is_async: bool = False
    # a constructor that wants its object's VCL name, as varnishd's _init(ctx, &obj, vcl_name, ...):
    # it is called impl(ctx, name, *args)
    takes_name: bool = False
    # PRIV_* arguments the .vcc declares before the VCL-visible ones: VCC counts them when it names
    # an unnamed argument by its place ("Argument 2 missing" for std.fileread's string)
    priv_args: int = 0


@dataclass(slots=True)
class ObjectType:
    """A `new x = vmod.name(...)` object: its constructor and its methods."""

    name: str
    constructor: Func          # impl(ctx, *args) -> instance; only in vcl_init
    methods: dict[str, Func] = field(default_factory=dict)  # impl(instance, ctx, *args)


@dataclass(slots=True)
class Vmod:
    name: str
    functions: dict[str, Func] = field(default_factory=dict)
    objects: dict[str, ObjectType] = field(default_factory=dict)
    # body filters (cacheserver.filters.Registry) a VCL that imports this vmod may name in
    # beresp.filters / resp.filters, as VRT_AddFilter registers them in varnishd
    filters: object = None

    def filter(self, cls: type) -> type:
        """Class decorator registering a cacheserver.filters.Filter subclass (a VFP or a VDP)."""
        from cacheserver.filters import Registry

        if self.filters is None:
            self.filters = Registry()
        return self.filters.add(cls)

    def func(self, name: str, ret: str = "VOID", params: list[Param] | None = None, *,
             restrict: set[str] | None = None, is_async: bool = False,
             priv_args: int = 0) -> Callable[[Callable], Callable]:
        """Decorator registering impl(ctx, *args) as vmod function `name`."""
        def register(impl: Callable) -> Callable:
            self.functions[name] = Func(name, impl, ret, list(params or []),
                                        frozenset(restrict) if restrict else None, is_async,
                                        priv_args=priv_args)
            return impl
        return register


# vmods we ship, by the name VCL imports them under
KNOWN = {"std": "vmods.std", "directors": "vmods.directors", "tinykvm": "vmods.tinykvm",
         "cookie": "vmods.cookie", "blob": "vmods.blob", "purge": "vmods.purge", "unix": "vmods.unix",
         "proxy": "vmods.proxy"}


class UnknownVmod(LookupError):
    pass


def load(name: str) -> Vmod:
    """The vmod `name` (as in `import name;`), or UnknownVmod."""
    module_name = KNOWN.get(name)
    if module_name is None:
        raise UnknownVmod(name)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise UnknownVmod(name) from exc
    return module.VMOD
