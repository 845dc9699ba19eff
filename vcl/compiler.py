"""compile_vcl(): VCL source -> CompiledVCL, the only entry point the server uses.

parse (vcl.parser) -> check (vcl.checker) -> generate Python (vcl.codegen) -> compile it once.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import vmods
from vcl import ast, symbols
from vcl.checker import check
from vcl.codegen import CodeGen
from vcl.errors import MissingParenthesis, VCLError
from vcl.parser import parse, parse_with_includes
from vcl.runtime import Action, BackendSpec, Context, ProbeSpec, VCLFailure
from vcl.trace import number_blocks

BUILTIN_PATH = Path(__file__).with_name("builtin.vcl")
BUILTIN_NAME = "<builtin>"

# Client subroutines whose built-in code only calls an empty vcl_builtin_X and returns this action, and
# vcl_hash (which hashes req.url, then req.http.host or else server.ip): when the user's VCL defines
# neither the sub nor its vcl_builtin_X, the server may do their work without calling them (fsm.py).
BUILTIN_RETURNS = {"vcl_hit": Action("deliver"), "vcl_miss": Action("fetch"), "vcl_pass": Action("fetch"),
                   "vcl_deliver": Action("deliver")}


@dataclass(eq=False)
class CompiledVCL:
    """A loaded VCL program. See docs/ARCHITECTURE.md ("VCL -> server")."""

    filename: str
    # Every built-in subroutine, user code joined with the built-in VCL; each returns an Action.
    subs: dict[str, Callable[[Context], Action]]
    # The subs that are coroutine functions (they call an async vmod function, maybe indirectly).
    async_subs: set[str]
    backends: dict[str, BackendSpec]
    default_backend: BackendSpec | None
    probes: dict[str, ProbeSpec]
    acls: dict[str, object]
    python_source: str
    warnings: list[str] = field(default_factory=list)
    uses: set[str] = field(default_factory=set)       # imported vmods
    imports: tuple[str, ...] = ()                     # the same, in import order (vcl.symtab)
    # subroutines the user's VCL defines (any others run the built-in code alone)
    user_subs: set[str] = field(default_factory=set)
    name: str = ""                                    # the server's name for this load
    version: float = 4.1                              # the VCL syntax version (vcl 4.0; / 4.1;)
    # The labels `return (vcl(LABEL))` names: the server checks they exist and make no loop.
    labels: set[str] = field(default_factory=set)
    # The subs of BUILTIN_RETURNS and vcl_hash that run the built-in code alone (see there), and the
    # action each returns
    builtin_only: dict[str, Action] = field(default_factory=dict)
    _namespace: dict = field(default_factory=dict, repr=False)
    # VCL_trace: makes the traced subroutines' source and VCC's block refs (on first use)
    _tracer: Callable[[], tuple[str, list[str]]] | None = field(default=None, repr=False)
    _trace_refs: list[str] = field(default_factory=list, repr=False)
    _plain_subs: dict | None = field(default=None, repr=False)
    traced: bool = False

    def set_trace(self, on: bool, name: str) -> None:
        """Run the subroutines that log VCL_trace records (on) or the plain ones, which cost nothing
        for it. `subs` is changed in place, so whoever holds it sees the switch."""
        ns = self._namespace
        if on:
            if "SUBS_TRACED" not in ns:
                if self._tracer is None:
                    return
                source, self._trace_refs = self._tracer()
                exec(compile(source, f"<vcl {self.filename} traced>", "exec"), ns)
            ns["TRACE"] = [("VCL_trace", f"{name} {ref}") for ref in self._trace_refs]
            if self._plain_subs is None:
                self._plain_subs = dict(self.subs)
            self.subs.update(ns["SUBS_TRACED"])
        elif self._plain_subs is not None:
            self.subs.update(self._plain_subs)
        self.traced = on

    def init(self, ctx: Context) -> Action:
        """Run vcl_init (creates the `new` objects). Returns its Action: ok, or fail (also when the
        VCL failed at run time; the reason is then in ctx.log as a VCL_Error record)."""
        return self._housekeeping("vcl_init", ctx)

    def fini(self, ctx: Context) -> Action:
        return self._housekeeping("vcl_fini", ctx)

    def _housekeeping(self, sub: str, ctx: Context) -> Action:
        ctx.method = sub
        try:
            return self.subs[sub](ctx)
        except VCLFailure as exc:
            ctx.log.append(("VCL_Error", str(exc)))
            return Action("fail")

    @property
    def instances(self) -> dict[str, object]:
        """The objects vcl_init created with `new`, by name."""
        return self._namespace["instances"]()


@lru_cache(maxsize=1)
def _builtin_text() -> str:
    return BUILTIN_PATH.read_text()


def _builtin_items() -> list[object]:
    items = parse(_builtin_text(), BUILTIN_NAME, cache=True).items
    out = []
    for item in items:
        if isinstance(item, ast.Sub):
            item.builtin = True
            out.append(item)
    return out


def compile_vcl(source: str, filename: str, *, include_dirs: tuple[str, ...] | list[str] = (),
                extra_vmods: Mapping[str, vmods.Vmod] | None = None, err_unref: bool = True,
                storages: Iterable[str] | None = None, labels: Iterable[str] | None = None,
                allow_inline_c: bool = False) -> CompiledVCL:
    """Compile VCL `source` (read from `filename`) or raise VCLError with the full report.

    err_unref: unused subs, backends, ACLs and probes are errors (varnishd's vcc_err_unref);
    when False they are warnings.

    extra_vmods: vmods known besides the registry's (tests use it to register their own).

    storages: the server's stevedore names (its -s NAME=... storages), which make the storage.NAME
    symbols; Transient is always one. None: varnishd's default, s0 and Transient.

    labels: the server's VCL labels; when given, `return (vcl(LABEL))` must name one of them, as
    varnishd checks at vcl.load. None: not checked (e.g. `cacheserver -C`).

    allow_inline_c: the vcc_allow_inline_c parameter. Off, `C{ }C` gets VCC's "Inline-C not allowed";
    on, a block of comments only is accepted and one with code is refused, saying why (there is no
    C compiler behind this VCL).
    """
    names = tuple(storages) if storages is not None else symbols.STORAGE_NAMES
    if "Transient" not in names:
        names += ("Transient",)
    sources: dict[str, str] = {}

    def load_vmod(name: str) -> vmods.Vmod:
        if extra_vmods and name in extra_vmods:
            return extra_vmods[name]
        return vmods.load(name)

    try:
        items = parse_with_includes(source, filename, tuple(include_dirs), sources)
        _refuse_inline_c(items, allow_inline_c)
        builtin = _builtin_items()
        prog = check(items + builtin, filename, load_vmod, err_unref, names,
                     frozenset(labels) if labels is not None else None)
        gen = CodeGen(prog, filename)
        code = gen.generate()
    except VCLError as exc:
        exc.attach(sources)
        exc.attach({BUILTIN_NAME: _builtin_text()})
        if isinstance(exc, MissingParenthesis):
            exc.at_next_token(exc.sources)
        raise
    except RecursionError:
        raise VCLError(f"{filename}: expression or block nested too deeply") from None

    def tracer() -> tuple[str, list[str]]:
        numbers, refs = number_blocks(items + builtin, {**sources, BUILTIN_NAME: _builtin_text()})
        return gen.traced(numbers), refs

    namespace: dict = {"load_vmod": load_vmod, "__name__": f"vcl<{filename}>"}
    exec(compile(code, f"<vcl {filename}>", "exec"), namespace)
    user_subs = {item.name for item in items if isinstance(item, ast.Sub)}
    return CompiledVCL(
        filename=filename,
        subs=dict(namespace["SUBS"]),
        async_subs=set(namespace["ASYNC_SUBS"]),
        backends=dict(namespace["BACKENDS"]),
        default_backend=namespace["DEFAULT_BACKEND"],
        probes=dict(namespace["PROBES"]),
        acls=dict(namespace["ACLS"]),
        python_source=code,
        warnings=list(prog.warnings),
        uses=set(prog.vmods),
        imports=tuple(prog.vmods),
        version=prog.version,
        labels=set(namespace["LABELS"]),
        user_subs=user_subs,
        builtin_only=_builtin_only(user_subs),
        _namespace=namespace,
        _tracer=tracer,
    )


def _builtin_only(user_subs: set[str]) -> dict[str, Action]:
    """The subs of BUILTIN_RETURNS and vcl_hash that the user's VCL leaves to the built-in code, and
    whose built-in code has the shape the server relies on: `call vcl_builtin_X; return (ACTION);`
    with an empty vcl_builtin_X (vcl_hash's: the hashing)."""
    builtin = {item.name: item for item in _builtin_items()}
    out = {}
    for name, action in [*BUILTIN_RETURNS.items(), ("vcl_hash", Action("lookup"))]:
        inner = "vcl_builtin_" + name[4:]
        if name in user_subs or inner in user_subs or name not in builtin or inner not in builtin:
            continue
        body = builtin[name].body
        if (len(body) == 2 and isinstance(body[0], ast.CallSub) and body[0].name == inner
                and isinstance(body[1], ast.Return) and body[1].action == action.name and not body[1].args
                and (name == "vcl_hash" or not builtin[inner].body)):
            out[name] = action
    return out


_C_COMMENT = re.compile(r"/\*.*?\*/|//[^\n]*", re.S)


def _is_empty_c(block: ast.InlineC) -> bool:
    """A C block of comments and blanks only: it does nothing, so it needs no C compiler."""
    return not _C_COMMENT.sub("", block.code).strip()


def _inline_c(nodes: list, drop: bool = False) -> ast.InlineC | None:
    """The first `C{ }C` block in `nodes` (nested bodies included); with `drop`, the first one with
    code in it, after taking the empty ones out of their bodies."""
    if drop:
        nodes[:] = [n for n in nodes if not (isinstance(n, ast.InlineC) and _is_empty_c(n))]
    for node in nodes:
        if isinstance(node, ast.InlineC):
            return node
        bodies: list[list] = []
        if isinstance(node, (ast.Sub, ast.Block)):
            bodies.append(node.body)
        elif isinstance(node, ast.If):
            bodies.extend(body for _, body in node.branches)
            if node.else_body is not None:
                bodies.append(node.else_body)
        for body in bodies:
            found = _inline_c(body, drop)
            if found is not None:
                return found
    return None


def _refuse_inline_c(items: list[object], allowed: bool) -> None:
    """VCC refuses `C{ }C` unless vcc_allow_inline_c is on. With it on, a block of comments only is
    accepted (it does nothing); one with code is refused: there is no C step behind this VCL."""
    if not allowed:
        found = _inline_c(items)
        if found is not None:
            raise VCLError("Inline-C not allowed", found.pos)
        return
    found = _inline_c(items, drop=True)
    if found is not None:
        raise VCLError("Inline-C cannot run here: vcc_allow_inline_c is on, but cacheserver compiles VCL "
                       "to Python, not C", found.pos)
