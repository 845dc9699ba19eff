"""Checked VCL -> Python source: one module per VCL load, compiled once by vcl.compiler.

The generated module is plain, readable Python (it is what `cacheserver -C` prints): constants
prepared at load (regexes, ACLs, backends, vmod function handles) followed by one function per
subroutine. Built-in subroutines return an Action; user subroutines return an Action or None.
"""

from __future__ import annotations

import keyword
import re

from vcl import ast, symbols, types
from vcl.errors import VCLError
from vcl.program import CheckedProgram, SubInfo
from vcl.rtlib import status_error

_IDENT = re.compile(r"[^A-Za-z0-9_]")


def py_ident(prefix: str, name: str) -> str:
    ident = prefix + _IDENT.sub("_", name)
    return ident + "_" if keyword.iskeyword(ident) else ident


def _is_literal(e: ast.Expr) -> bool:
    return isinstance(e, ast.StringLit)


def _never_none(e: ast.Expr) -> bool:
    """True when a STRING-typed expression can never be unset (None)."""
    if isinstance(e, (ast.StringLit, ast.Concat, ast.Convert)):
        return True
    if isinstance(e, ast.Call) and isinstance(e.ref, tuple) and e.ref[0] in ("regsub", "strmethod"):
        return True
    if isinstance(e, ast.Name) and isinstance(e.ref, tuple) and e.ref[0] == "var":
        var = e.ref[1]
        return var.get.startswith(("ctx.req.", "ctx.bereq.", "ctx.beresp.", "ctx.resp.", "ctx.obj.",
                                   "str(")) and not var.header
    return False



def _valid_status(code: str) -> bool:
    """Whether a synth()/error() status given as a literal passes VRT_synth's check."""
    try:
        status = int(code)
    except ValueError:
        return False
    return status_error(status, "synth") is None

class CodeGen:
    def __init__(self, prog: CheckedProgram, filename: str, trace: dict[int, int] | None = None) -> None:
        self.prog = prog
        # VCL_trace: {id(block body): VCC's number}; the subs get a record at each block's start
        self.trace = trace
        self.filename = filename
        self.lines: list[str] = []
        self.consts: dict[str, str] = {}      # python expression -> constant name
        self.const_lines: list[str] = []
        self._idents: dict[tuple[str, str], str] = {}
        self.sub_names = {name: (name if info.is_method else self.ident("sub_", name))
                          for name, info in prog.subs.items()}
        self.may_return = self._may_return()
        self.cur: SubInfo | None = None
        self.tmp = 0
        self.labels: set[str] = set()     # labels named by return (vcl(LABEL))

    # ------------------------------------------------------------------ helpers

    def ident(self, prefix: str, name: str) -> str:
        """The Python name for VCL name `name` (VCL allows '-', so `a-b` and `a_b` get distinct names)."""
        # Declared names (backends, ACLs, probes, objects) are case-insensitive in VCL.
        key = (prefix, name.lower() if prefix in ("backend_", "acl_", "probe_", "obj_") else name)
        ident = self._idents.get(key)
        if ident is None:
            ident = base = py_ident(prefix, name)
            taken = set(self._idents.values())
            n = 1
            while ident in taken:
                n += 1
                ident = f"{base}_{n}"
            self._idents[key] = ident
        return ident

    def const(self, expr: str, hint: str) -> str:
        """A module-level constant evaluated once at load."""
        name = self.consts.get(expr)
        if name is None:
            name = py_ident("", hint)
            base, n = name, 1
            while name in self.consts.values():
                n += 1
                name = f"{base}_{n}"
            self.consts[expr] = name
            self.const_lines.append(f"{name} = {expr}")
        return name

    def action(self, name: str, args: list[str], constant: bool = False) -> str:
        if not args:
            return self.const(f"Action({name!r})", f"A_{name.upper()}")
        code = f"Action({name!r}, ({', '.join(args)}{',' if len(args) == 1 else ''}))"
        if constant:
            # Actions are never modified, so one made of literals is shared (no allocation per request).
            words = "_".join(_IDENT.sub("", a.replace(".", "p")) for a in args if a != "''")
            return self.const(code, f"A_{name.upper()}_{words}"[:40])
        return code

    def _may_return(self) -> dict[str, bool]:
        """Whether calling a sub may end the built-in subroutine (so the caller must check)."""
        direct: dict[str, bool] = {}

        def has_return(body: list[ast.Stmt]) -> bool:
            for s in body:
                if isinstance(s, ast.Return) and s.action is not None:
                    return True
                if isinstance(s, ast.If):
                    if any(has_return(b) for _, b in s.branches) or (s.else_body and has_return(s.else_body)):
                        return True
                if isinstance(s, ast.Block) and has_return(s.body):
                    return True
            return False

        for name, info in self.prog.subs.items():
            direct[name] = any(has_return(d.body) for d in info.defs)
        changed = True
        while changed:
            changed = False
            for name, info in self.prog.subs.items():
                if not direct[name] and any(direct[c] for c, _ in info.calls):
                    direct[name] = True
                    changed = True
        return direct

    # ------------------------------------------------------------------ module

    def generate(self) -> str:
        prog = self.prog
        head = [
            f'"""Python compiled from VCL {self.filename!s} by vcl.codegen. Do not edit."""',
            "",
            "from time import time as _now",
            "",
            "from vcl import rtlib as rt",
            "from vcl.runtime import IP, Action, BackendSpec, HeaderRef, ProbeSpec, VCLFailure  # noqa: F401",
            "",
        ]
        # vmods and their functions
        vmod_lines: list[str] = []
        for name in prog.vmods:
            vmod_lines.append(f"{self.ident('vmod_', name)} = load_vmod({name!r})")
        decl: list[str] = []
        for name, probe in prog.probes.items():
            decl.append(f"{self.ident('probe_', name)} = {self._probe(probe.name, probe.attrs)}")
        for name, backend in prog.backends.items():
            decl.append(f"{self.ident('backend_', name)} = {self._backend(backend)}")
        # Keyed by the names as written (checker keys are lowercased).
        backends = ", ".join(f"{b.name!r}: {self.ident('backend_', n)}" for n, b in prog.backends.items())
        decl.append(f"BACKENDS = {{{backends}}}")
        # `backend default none;` (or no backend at all) leaves no default: fetches fail with 503.
        default = "None"
        if prog.default_backend and prog.backends[prog.default_backend].attrs is not None:
            default = self.ident("backend_", prog.default_backend)
        decl.append(f"DEFAULT_BACKEND = {default}")
        probes = ", ".join(f"{p.name!r}: {self.ident('probe_', n)}" for n, p in prog.probes.items())
        decl.append(f"PROBES = {{{probes}}}")
        for name, (acl, nets) in prog.acls.items():
            log = "+log" in acl.flags
            decl.append(f"{self.ident('acl_', name)} = rt.Acl({acl.name!r}, {nets!r}, log={log})")
        acls = ", ".join(f"{a.name!r}: {self.ident('acl_', n)}" for n, (a, _) in prog.acls.items())
        decl.append(f"ACLS = {{{acls}}}")
        for src, rname in prog.regexes.items():
            decl.append(f"{rname} = rt.Regex({src!r})")
        for name in prog.instances:
            decl.append(f"{self.ident('obj_', name)} = None  # created by vcl_init")
        # subroutines
        body: list[str] = []
        order = [n for n in prog.subs if not prog.subs[n].is_method]
        order += [m for m in symbols.METHODS if m in prog.subs]
        for name in order:
            body.extend(self._sub(prog.subs[name]))
            body.append("")
            body.append("")
        subs = ", ".join(f"{m!r}: {m}" for m in symbols.METHODS if m in prog.subs)
        asyncs = sorted(m for m in symbols.METHODS if m in prog.subs and prog.subs[m].is_async)
        tail = [
            f"SUBS = {{{subs}}}",
            f"ASYNC_SUBS = {set(asyncs)!r}" if asyncs else "ASYNC_SUBS = set()",
            f"LABELS = {sorted(self.labels)!r}",
            "",
            "",
            "def instances():",
            '    """The objects vcl_init created with `new`, by name."""',
            "    return {" + ", ".join(f"{n!r}: {self.ident('obj_', n)}" for n in prog.instances) + "}",
        ]
        out = head + ["# vmods (load_vmod is supplied by vcl.compiler)", *vmod_lines, "", "# declarations", *decl, "",
                      "# constants prepared at load", *self.const_lines, "", "", *body, *tail]
        return "\n".join(out) + "\n"

    def traced(self, numbers: dict[int, int]) -> str:
        """After generate(): the subroutines again, each block logging its VCL_trace record (TRACE[n],
        filled by the loader), as `<name>__traced` functions and SUBS_TRACED. Run in the namespace of
        generate()'s module: they share its backends, ACLs, regexes and vcl_init objects."""
        self.trace = numbers
        self.sub_names = {name: f"{fname}__traced" for name, fname in self.sub_names.items()}
        known = len(self.const_lines)
        body: list[str] = []
        order = [n for n in self.prog.subs if not self.prog.subs[n].is_method]
        order += [m for m in symbols.METHODS if m in self.prog.subs]
        for name in order:
            body.extend(self._sub(self.prog.subs[name]))
            body.append("")
        subs = ", ".join(f"{m!r}: {self.sub_names[m]}" for m in symbols.METHODS if m in self.prog.subs)
        return "\n".join([*self.const_lines[known:], "", *body, f"SUBS_TRACED = {{{subs}}}"]) + "\n"

    def _backend(self, b: ast.Backend) -> str:
        if b.attrs is None:
            return f"BackendSpec({b.name!r})"
        args = [repr(b.name)]
        for attr in b.attrs:
            if attr.name == "probe":
                if isinstance(attr.value, ast.Name):
                    args.append(f"probe={self.ident('probe_', attr.value.name)}")
                else:
                    args.append(f"probe={self._probe(b.name, attr.value)}")
                continue
            value = self.expr(attr.value)
            if attr.name == "port":
                if b.resolved is not None:
                    continue             # the port VCC resolved goes with the host, below
                value = repr(str(_const_value(attr.value)))
            if attr.name == "host" and isinstance(attr.value, ast.StringLit):
                # The backend connects to the address VCC resolved (the checker always sets it).
                value = repr(b.resolved.address)
                args.append(f"port={str(b.resolved.port)!r}")
                if not any(a.name == "host_header" for a in b.attrs):
                    # VCC: without .host_header, a bereq lacking Host gets the .host string.
                    args.append(f"host_header={attr.value.value!r}")
            args.append(f"{attr.name}={value}")
        if "default" in self.prog.probes and not any(a.name == "probe" for a in b.attrs):
            args.append(f"probe={self.ident('probe_', 'default')}")   # VCC: `probe default` is theirs
        return "BackendSpec(" + ", ".join(args) + ")"

    # vbp_set_defaults: a field written as 0 is the same as one left out
    _PROBE_ZERO_DEFAULTS = {"timeout": 2.0, "interval": 5.0, "window": 8, "threshold": 3, "expected_response": 200}

    def _probe(self, name: str, attrs: list[ast.Attr]) -> str:
        args = [repr(name)]
        numbers: dict[str, float] = {}
        for attr in attrs:
            if attr.name == "request" and isinstance(attr.value, list):
                lines = [s.value for s in attr.value]
                args.append(f"request={lines!r}")
            elif attr.name == "request":
                args.append(f"request=[{self.expr(attr.value)}]")
            elif attr.name in self._PROBE_ZERO_DEFAULTS or attr.name == "initial":
                value = attr.value.seconds if isinstance(attr.value, ast.DurationLit) else attr.value.value
                numbers[attr.name] = value
            else:
                args.append(f"{attr.name}={self.expr(attr.value)}")
        if "threshold" in numbers and "window" not in numbers:
            numbers["window"] = numbers["threshold"] + 1     # VCC writes the implied window in
        for name, default in self._PROBE_ZERO_DEFAULTS.items():
            if name in numbers and not numbers[name]:
                numbers[name] = default
        if "initial" in numbers:
            # more good polls than the threshold assumed at start are the threshold
            numbers["initial"] = min(numbers["initial"], numbers.get("threshold", 3))
        args += [f"{k}={v!r}" for k, v in numbers.items()]
        return "ProbeSpec(" + ", ".join(args) + ")"

    # ------------------------------------------------------------------ subroutines

    def _sub(self, info: SubInfo) -> list[str]:
        self.cur = info
        fname = self.sub_names[info.name]
        kw = "async def" if info.is_async else "def"
        where = ", ".join(f"{d.name_pos.file}:{d.name_pos.line}" for d in info.defs)
        head = [f"{kw} {fname}(ctx):", f"    # sub {info.name} ({where})"]
        # A built-in subroutine's body is indented one more level, inside its try block.
        depth = 2 if info.is_method else 1
        ind = "    " * depth
        body: list[str] = []
        last_returns = False
        if info.is_method and info.uses_now:
            body.append(f"{ind}ctx.now = _now()  # `now` stays the same for the whole subroutine")
        for d in info.defs:
            if len(info.defs) > 1:
                src = "built-in VCL" if d.builtin else f"{d.name_pos.file}:{d.name_pos.line}"
                body.append(f"{ind}# -- {src}")
            body.extend(self._block(d.body, depth))
            last_returns = bool(d.body) and isinstance(d.body[-1], ast.Return) and d.body[-1].action is not None
            if last_returns:
                if d is not info.defs[-1]:
                    body.append(f"{ind}# (the rest of this subroutine is never reached)")
                break
        if not info.is_method:
            if all(line.lstrip().startswith("#") for line in body):
                body.append("    return None")   # only comments: Python needs a statement
            return head + body
        if not last_returns:
            body.append(f"{ind}return {self.action('fail', [])}")
        return head + [
            "    try:",
            *body,
            "    except VCLFailure:",
            "        raise",
            "    except Exception as exc:  # a bug or a vmod error fails the task (503), as VRT_fail does",
            f"        raise rt.internal_failure({info.name!r}, exc) from exc",
        ]

    def _block(self, body: list[ast.Stmt], depth: int) -> list[str]:
        out: list[str] = []
        if self.trace is not None and id(body) in self.trace:
            out.append(f"{'    ' * depth}ctx.log.append(TRACE[{self.trace[id(body)]}])")
        for stmt in body:
            out.extend(self._stmt(stmt, depth))
        return out

    def _stmt(self, s: ast.Stmt, depth: int) -> list[str]:
        ind = "    " * depth
        if isinstance(s, ast.Set):
            return [ind + line for line in self._set(s)]
        if isinstance(s, ast.Unset):
            return [ind + s.ref.unset_code]
        if isinstance(s, ast.CallSub):
            callee = self.prog.subs[s.name]
            call = f"{self.sub_names[s.name]}(ctx)"
            if callee.is_async:
                call = "await " + call
            if not self.may_return[s.name]:
                return [ind + call]
            self.tmp += 1
            return [f"{ind}r = {call}", f"{ind}if r is not None:", f"{ind}    return r"]
        if isinstance(s, ast.Return):
            if s.action is None:
                return [ind + "return None"]
            args = self._action_args(s)
            # A variable (return (synth(resp.status))) is read per request, never at load.
            constant = all(isinstance(a.value, (ast.StringLit, ast.IntLit, ast.DurationLit))
                           or (isinstance(a.value, ast.Name) and (a.value.ref or ("",))[0] != "var")
                           for a in s.args)
            if s.action in ("synth", "error") and not (constant and _valid_status(args[0])):
                # VRT_synth checks the status when the return runs: a bad one fails the task
                return [f"{ind}return rt.status_action({s.action!r}, {', '.join(args)})"]
            return [ind + "return " + self.action(s.action, args, constant)]
        if isinstance(s, ast.If):
            out: list[str] = []
            for i, (cond, body) in enumerate(s.branches):
                kw = "if" if i == 0 else "elif"
                out.append(f"{ind}{kw} {self.expr(cond)}:")
                out.extend(self._block(body, depth + 1) or [ind + "    pass"])
            if s.else_body is not None:
                out.append(f"{ind}else:")
                out.extend(self._block(s.else_body, depth + 1) or [ind + "    pass"])
            elif self.trace is not None and id(s) in self.trace:
                out.append(f"{ind}ctx.log.append(TRACE[{self.trace[id(s)]}])")
            return out
        if isinstance(s, ast.Synthetic):
            # synthetic() prints each unset part as "(null)" (VRT_synth_page's printf), unlike resp.body.
            parts = s.value.parts if isinstance(s.value, ast.Concat) else [s.value]
            text = " + ".join(self.expr(p) if _never_none(p) else f"rt.s_null({self.expr(p)})" for p in parts)
            return [f"{ind}rt.body_add(ctx, {text})"]
        if isinstance(s, ast.HashData):
            if isinstance(s.value, ast.Concat):
                # STRANDS, as VRT_hashdata takes them: each part hashed (an unset one as a NUL byte)
                # and logged (Hash records) on its own
                parts = ", ".join(self.expr(p) for p in s.value.parts)
                return [f"{ind}rt.hash_strands(ctx, ({parts},))"]
            return [f"{ind}rt.hash_data(ctx, {self.expr(s.value)})"]
        if isinstance(s, ast.Ban):
            return [f"{ind}rt.ban(ctx, {self.expr(s.value)})"]
        if isinstance(s, ast.New):
            obj = s.call.ref[1]
            ctor = self.const(f"{self.ident('vmod_', s.call.name.split('.')[0])}.objects"
                              f"[{obj.name!r}].constructor.impl", f"new_{s.call.name}")
            args = self._args(s.call, obj.constructor)
            if obj.constructor.takes_name:
                args = f", {s.name!r}{args}"
            oname = self.ident("obj_", s.name)
            return [f"{ind}global {oname}", f"{ind}{oname} = rt.named({ctor}(ctx{args}), {s.name!r})"]
        if isinstance(s, ast.ExprStmt):
            return [ind + self.expr(s.call)]
        if isinstance(s, ast.Block):
            return self._block(s.body, depth)
        raise AssertionError(type(s))  # pragma: no cover

    def _action_args(self, s: ast.Return) -> list[str]:
        spec = symbols.ACTION_ARGS.get(s.action, ())
        args: list[str] = []
        for i, (atype, _) in enumerate(spec):
            if i < len(s.args):
                value = s.args[i].value
                if atype == "VCL":
                    self.labels.add(value.name)
                    args.append(repr(value.name))
                elif atype == "STRING":
                    args.append(self.str_expr(value))
                else:
                    args.append(self.expr(value))
            elif s.action == "fail":
                break                      # a plain `return (fail)` carries no reason
            elif atype == "STRING":
                args.append("''")
            elif s.action == "error" and atype == "INT":
                args.append("503")
        return args

    def _set(self, s: ast.Set) -> list[str]:
        var: symbols.Variable = s.ref
        assert var.set is not None
        if var.type == "BODY":
            value = self.str_expr(s.value)
            return [f"rt.body_add(ctx, {value})" if s.op == "+=" else var.set.format(v=value)]
        if var.type in ("HEADER", "STRING"):
            value = self.str_expr(s.value)
            if s.op == "+=":
                value = f"({var.get} or '') + {value}"
            return [var.set.format(v=value)]
        value = self.expr(s.value)
        if s.op != "=":
            op = s.op[0]
            if op == "/" and var.type == "INT":
                value = f"rt.idiv({var.get}, {value})"
            elif op == "/":
                value = f"rt.fdiv({var.get}, {value})"
            else:
                value = f"{var.get} {op} {value}"
        return [var.set.format(v=value)]

    # ------------------------------------------------------------------ expressions

    def str_expr(self, e: ast.Expr) -> str:
        """A STRING expression as a Python str (unset -> "")."""
        code = self.expr(e)
        return code if _never_none(e) else f"({code} or '')"

    def expr(self, e: ast.Expr) -> str:
        if isinstance(e, ast.StringLit):
            if isinstance(e, ast.IpLit):
                return self.const(f"IP({e.value!r}, {e.port})", f"ip_{e.value}_{e.port}")
            return repr(e.value)
        if isinstance(e, ast.IntLit):
            return repr(float(e.value)) if e.type == "REAL" else str(e.value)
        if isinstance(e, ast.RealLit):
            return repr(e.value)
        if isinstance(e, ast.DurationLit):
            return repr(e.seconds)
        if isinstance(e, (ast.BytesLit, ast.BlobLit)):
            return repr(e.value)
        if isinstance(e, ast.Name):
            return self._name(e)
        if isinstance(e, ast.BadToken):  # a place the checker took no expression from
            raise VCLError(f"Expected an expression got {e.text}", e.pos)
        if isinstance(e, ast.Call):
            return self._call(e)
        if isinstance(e, ast.Neg):
            return f"(-{self.expr(e.operand)})"
        if isinstance(e, ast.Not):
            return f"(not {self.expr(e.operand)})"
        if isinstance(e, ast.BoolOp):
            op = " and " if e.op == "&&" else " or "
            return "(" + op.join(self.expr(o) for o in e.operands) + ")"
        if isinstance(e, ast.Arith):
            return self._arith(e)
        if isinstance(e, ast.Concat):
            return "(" + " + ".join(self.str_expr(p) for p in e.parts) + ")"
        if isinstance(e, ast.Convert):
            inner = self.expr(e.operand)
            if e.to == "STRING":
                return types.TO_STRING[e.operand.type].format(x=inner)
            operand = e.operand
            if isinstance(operand, ast.StringLit) or (
                    isinstance(operand, ast.Concat) and all(isinstance(p, ast.StringLit) for p in operand.parts)):
                return "True"    # a string constant is set (and `'x' is not None` makes Python warn)
            return types.TO_BOOL[e.operand.type].format(x=inner)
        if isinstance(e, ast.Compare):
            return self._compare(e)
        if isinstance(e, ast.Match):
            if e.kind == "regex":
                rx = self.prog.regexes[e.right.value]
                test = "is not None" if e.op == "~" else "is None"
                subject = self.expr(e.left)
                if not _never_none(e.left):
                    subject = f"{subject} or ''"
                return f"({rx}.search({subject}) {test})"
            acl = self.ident("acl_", e.right.name)
            neg = "" if e.op == "~" else "not "
            logged = "+log" in self.prog.acls[e.right.ref[1]][0].flags
            if logged:
                return f"({neg}{acl}.match_log(ctx, {self.expr(e.left)}))"
            return f"({neg}{acl}.match({self.expr(e.left)}))"
        raise AssertionError(type(e))  # pragma: no cover

    def _name(self, e: ast.Name) -> str:
        kind = e.ref[0]
        if kind == "var":
            return e.ref[1].get
        if kind == "bool":
            return "True" if e.ref[1] else "False"
        if kind == "default_backend":
            return "DEFAULT_BACKEND"
        if kind == "backend" and self.prog.backends[e.ref[1]].attrs is None:
            return "None"    # `backend NAME none;` is no backend at all (VCC makes it NULL)
        if kind in ("backend", "acl", "probe"):
            return self.ident(kind + "_", e.ref[1])
        if kind == "instance":
            return self.ident("obj_", e.ref[1])
        if kind == "enum":
            return repr(e.ref[1])
        raise AssertionError(kind)  # pragma: no cover

    def _arith(self, e: ast.Arith) -> str:
        a, b = self.expr(e.left), self.expr(e.right)
        if e.op == "/":
            return f"rt.idiv({a}, {b})" if e.type == "INT" else f"rt.fdiv({a}, {b})"
        if e.op == "%":
            return f"rt.imod({a}, {b})" if e.type == "INT" else f"rt.fmod({a}, {b})"
        return f"({a} {e.op} {b})"

    def _compare(self, e: ast.Compare) -> str:
        a, b = self.expr(e.left), self.expr(e.right)
        t = e.left.type
        if t == "STRING":
            safe = _never_none(e.left) or _never_none(e.right)
            if e.op in ("==", "!="):
                if safe:
                    return f"({a} {e.op} {b})"
                neg = "" if e.op == "==" else "not "
                return f"({neg}rt.streq({a}, {b}))"
            return f"(rt.strcmp({a}, {b}) {e.op} 0)"
        if t == "BOOL":
            return f"(bool({a}) {e.op} bool({b}))"
        if t == "STEVEDORE":
            # Stevedores are names (str): equal names are the same storage.
            return f"({a} {e.op} {b})"
        if t in ("BACKEND", "ACL", "PROBE", "INSTANCE", "SUB"):
            return f"({a} {'is' if e.op == '==' else 'is not'} {b})"
        return f"({a} {e.op} {b})"

    def _call(self, e: ast.Call) -> str:
        kind = e.ref[0]
        if kind == "regsub":
            subject, rx, sub = e.bound
            return (f"rt.regsub({self.prog.regexes[rx.value]}, {self.expr(subject)}, "
                    f"{self.expr(sub)}, {e.ref[1]})")
        if kind == "strmethod":
            return f"rt.ascii_{e.ref[1]}({self.str_expr(e.bound[0])})"
        if kind == "resolve":
            return f"rt.resolve_backend({self.expr(e.bound[0])}, ctx)"
        if kind == "func":
            vmod_name, func = e.ref[1], e.ref[2]
            fname = self.const(f"{self.ident('vmod_', vmod_name)}.functions[{func.name!r}].impl",
                               f"{vmod_name}_{func.name}")
            code = f"{fname}(ctx{self._args(e, func)})"
            return f"(await {code})" if func.is_async else code
        if kind == "method":
            inst, func = e.ref[1], e.ref[2]
            obj = self.prog.instances[inst]
            vmod = _vmod_of(self.prog, obj)
            fname = self.const(f"{self.ident('vmod_', vmod)}.objects[{obj.name!r}].methods[{func.name!r}].impl",
                               f"{obj.name}_{func.name}")
            code = f"{fname}({self.ident('obj_', inst)}, ctx{self._args(e, func)})"
            return f"(await {code})" if func.is_async else code
        raise AssertionError(kind)  # pragma: no cover

    def _args(self, e: ast.Call, func) -> str:
        out: list[str] = []
        for param, value in zip(func.params, e.bound, strict=True):
            if value is None:
                out.append(repr(param.default))
            elif param.type == "HEADER":
                var = value.ref[1]
                scope = var.name.split(".http.", 1)[0]
                msg = symbols.HEADER_SCOPES[scope][0]
                out.append(f"HeaderRef({msg}, {var.name.split('.http.', 1)[1]!r})")
            elif param.type == "REGEX":
                out.append(self.prog.regexes[value.value])
            elif param.type == "STRANDS" and param.pieces:
                parts = value.parts if isinstance(value, ast.Concat) else [value]
                out.append("(" + "".join(self.expr(p) + ", " for p in parts) + ")")
            elif param.type in types.STRING_FORMS:
                out.append(self.str_expr(value) if param.type != "STRING" else self.expr(value))
            else:
                out.append(self.expr(value))
        return "".join(", " + a for a in out)


def _vmod_of(prog: CheckedProgram, obj) -> str:
    for name, vmod in prog.vmods.items():
        if any(o is obj for o in vmod.objects.values()):
            return name
    raise AssertionError(obj)  # pragma: no cover


def _const_value(e: ast.Expr):
    if isinstance(e, ast.StringLit):
        return e.value
    if isinstance(e, ast.IntLit):
        return e.value
    return None


def generate(prog: CheckedProgram, filename: str) -> str:
    return CodeGen(prog, filename).generate()
