"""Cross references, once every subroutine has been checked: undefined and unused names, recursion,
which subroutines are async, and what each built-in subroutine reaches that it may not do.

The last is VCC's vcc_xref: uses are recorded per subroutine, and each built-in subroutine's call
graph is walked so an error names the call chain ("...called from").
"""

from __future__ import annotations

from vcl import ast, symbols
from vcl.errors import VCLError
from vcl.program import SubInfo


class XrefChecker:
    """Mixed into vcl.checker.Checker."""

    subs: dict[str, SubInfo]
    backends: dict[str, ast.Backend]
    acls: dict[str, ast.Acl]
    probes: dict[str, ast.Probe]
    referenced: set[str]
    err_unref: bool
    warnings: list[str]

    def _unused(self, message: str, pos: ast.Pos) -> None:
        """An unused definition: an error, or with vcc_err_unref off a warning (as VCC)."""
        if self.err_unref:
            raise VCLError(message, pos)
        self.warnings.append(f"{pos.file}:{pos.line}:{pos.col}: {message}")

    # ------------------------------------------------------------------ cross references

    def _xref(self) -> None:
        for info in self.subs.values():
            for callee, pos in info.calls:
                if callee not in self.subs:
                    raise VCLError(f"Undefined sub {callee}, first reference:", pos)
                if self.subs[callee].is_method:
                    raise VCLError(f"Cannot call built-in subroutine '{callee}'", pos)
        called = {callee for info in self.subs.values() for callee, _ in info.calls}
        for info in self.subs.values():
            if not info.is_method and info.name not in called and not all(d.builtin for d in info.defs):
                self._unused(f"Unused sub {info.name}, defined:", info.pos)
        default = "default" if "default" in self.backends else next(iter(self.backends), None)
        for name, backend in self.backends.items():
            if name != default and f"backend:{name}" not in self.referenced:
                self._unused(f"Unused backend {name}, defined:", backend.name_pos)
        for name, acl in self.acls.items():
            if f"acl:{name}" not in self.referenced:
                self._unused(f"Unused acl {name}, defined:", acl.name_pos)
        # `probe default` is the probe of every backend that names none
        implicit_default = any(
            b.attrs is not None and not any(getattr(a, "name", "") == "probe" for a in b.attrs)
            for b in self.backends.values())
        for name, probe in self.probes.items():
            if name == "default" and implicit_default:
                continue
            if f"probe:{name}" not in self.referenced:
                self._unused(f"Unused probe {name}, defined:", probe.name_pos)
        # Recursion: depth-first search with the path kept for the report.
        state: dict[str, int] = {}

        def visit(name: str, path: list[tuple[str, ast.Pos]]) -> None:
            state[name] = 1
            for callee, pos in self.subs[name].calls:
                if state.get(callee) == 1:
                    # VCC reports the sub it re-entered, then the calls back to it, innermost first
                    notes = [(f'...called from "{caller}"', p) for caller, p in path + [(name, pos)]
                             if caller != "<root>"]
                    notes = notes[-2:] or notes
                    raise VCLError("Subroutine recurses on", self.subs[callee].pos, notes[::-1])
                if state.get(callee) is None:
                    visit(callee, path + [(name, pos)])
            state[name] = 2

        for name in sorted(self.subs):      # VCC walks its symbol table, which is sorted by name
            if state.get(name) is None:
                visit(name, [])

    def _async(self) -> None:
        """A subroutine is async if it, or anything it calls, calls an async vmod function."""
        changed = True
        while changed:
            changed = False
            for info in self.subs.values():
                if not info.is_async and any(self.subs[c].is_async for c, _ in info.calls):
                    info.is_async = True
                    changed = True
        # vcl_init and vcl_fini run while a VCL is loaded or discarded, outside any event loop.
        for method in ("vcl_init", "vcl_fini"):
            info = self.subs.get(method)
            if info is not None and info.is_async:
                pos = self._first_async_call(info, set())
                raise VCLError(f"Asynchronous vmod functions are not available in subroutine '{method}'.", pos)

    def _first_async_call(self, info: SubInfo, seen: set[str]) -> ast.Pos | None:
        seen.add(info.name)
        if info.async_call is not None:
            return info.async_call
        for callee, _ in info.calls:
            if callee not in seen and self.subs[callee].is_async:
                return self._first_async_call(self.subs[callee], seen)
        return None

    def _methods(self) -> None:
        """Check everything reachable from each built-in subroutine against what it allows."""
        for method in symbols.METHODS:
            info = self.subs.get(method)
            if info is None:
                continue
            seen: set[str] = set()
            self._check_reach(method, info, [], seen)

    def _check_reach(self, method: str, info: SubInfo, chain: list[tuple[str, ast.Pos]],
                     seen: set[str]) -> None:
        if info.name in seen:
            return
        seen.add(info.name)

        def notes() -> list[tuple[str, ast.Pos | None]]:
            out: list[tuple[str, ast.Pos | None]] = []
            if chain:
                out.append((f'...in subroutine "{info.name}"', info.pos))
                for caller, pos in reversed(chain):
                    out.append((f'...called from "{caller}"', pos))
            out.append((f'...which is the "{method}" subroutine', self.subs[method].pos))
            return out

        for use in info.uses:
            if use.kind == "return":
                legal = symbols.RETURNS[method]
                if use.name not in legal:
                    words = " ".join(f'"{a}"' for a in sorted(legal))
                    raise VCLError(f'Invalid return "{use.name}"', use.pos,
                                   notes() + [(f"Legal returns are: {words}", None)])
                continue
            if use.allowed is None or method in use.allowed:
                continue
            if use.kind == "read" or use.kind == "func":
                msg = f"Not available in subroutine '{method}'."
            elif use.kind == "write":
                # VCC's wording differs for a direct use and one through a called sub.
                msg = f"Cannot be set {'from' if chain else 'in'} subroutine '{method}'."
            elif use.kind == "unset":
                msg = f"Cannot be unset in subroutine '{method}'."
            else:
                msg = f"Not a valid action in subroutine '{method}'."
            raise VCLError(msg, use.pos, notes())
        if info.uses_now:
            self.subs[method].uses_now = True
        for callee, pos in info.calls:
            self._check_reach(method, self.subs[callee], chain + [(info.name, pos)], seen)
            if self.subs[callee].uses_now:
                self.subs[method].uses_now = True
