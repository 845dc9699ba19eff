"""Semantic checks on a parsed VCL program, done where Varnish's VCC does them.

Expressions are typed the VCC way: the expected type flows down (so `1 + "a"` is a string in a
string context and an error elsewhere), implicit conversions become explicit `Convert` nodes, and
names are resolved (`ref`). Per subroutine the checker records every variable access, return action,
restricted statement and vmod call; once all code is seen it walks the call graph from each built-in
subroutine and reports what that subroutine may not do, with the call chain.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from vcl import ast, rtlib, symbols, types
from vcl.errors import VCLError
from vmods import Func, ObjectType, UnknownVmod, Vmod

# Vmods that may be used without an `import` line (with a warning), as the docs' examples do.
IMPLICIT_IMPORTS = frozenset({"tinykvm"})

BACKEND_FIELDS = {
    "host": "STRING", "port": "STRING", "host_header": "STRING", "path": "STRING",
    "connect_timeout": "DURATION", "first_byte_timeout": "DURATION", "between_bytes_timeout": "DURATION",
    "max_connections": "INT", "probe": "PROBE", "proxy_header": "INT",
}
PROBE_FIELDS = {
    "url": "STRING", "request": "STRING", "expected_response": "INT", "timeout": "DURATION",
    "interval": "DURATION", "initial": "INT", "window": "INT", "threshold": "INT",
}


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


class Checker:
    def __init__(self, items: list[object], filename: str, vmod_loader) -> None:
        self.items = items
        self.filename = filename
        self.load_vmod = vmod_loader
        self.version = 4.1
        self.warnings: list[str] = []
        self.vmods: dict[str, Vmod] = {}
        self.vmod_pos: dict[str, ast.Pos] = {}
        self.backends: dict[str, ast.Backend] = {}
        self.probes: dict[str, ast.Probe] = {}
        self.acls: dict[str, ast.Acl] = {}
        self.instances: dict[str, ObjectType] = {}
        self.instance_pos: dict[str, ast.Pos] = {}
        self.subs: dict[str, SubInfo] = {}
        self.referenced: dict[str, ast.Pos] = {}   # "backend:x" -> first reference
        self.regexes: dict[str, str] = {}
        self.cur: SubInfo | None = None

    # ------------------------------------------------------------------ driver

    def check(self) -> CheckedProgram:
        self._declarations()
        for info in self.subs.values():
            self.cur = info
            for sub in info.defs:
                self._body(sub.body, method_body=info.is_method)
        self.cur = None
        self._check_probes_backends()
        self._xref()
        self._async()
        self._methods()
        acls = {name: (acl, self._acl_networks(acl)) for name, acl in self.acls.items()}
        default = None
        if self.backends:
            default = "default" if "default" in self.backends else next(iter(self.backends))
        return CheckedProgram(self.version, self.subs, self.backends, default, self.probes, acls,
                              self.vmods, self.instances, self.regexes, self.warnings)

    def _declarations(self) -> None:
        base = self.filename
        first = next((i for i in self.items if not (isinstance(i, ast.Sub) and i.builtin)), None)
        if isinstance(first, ast.VclVersion):
            if first.version not in ("4.0", "4.1"):
                raise VCLError(f"VCL version {first.version} not supported.", first.pos)
            self.version = float(first.version)
        else:
            self.warnings.append(f"{base}: no 'vcl 4.1;' line, assuming VCL 4.1")
        reserved_ok = set(symbols.RETURNS) | {i.name for i in self.items if isinstance(i, ast.Sub) and i.builtin}
        names: dict[str, tuple[str, ast.Pos]] = {}

        def declare(kind: str, name: str, pos: ast.Pos) -> None:
            if name in names:
                raise VCLError(f"{kind.capitalize()} '{name}' redefined", pos,
                               [("Previously defined here:", names[name][1])])
            names[name] = (kind, pos)

        for item in self.items:
            if isinstance(item, ast.VclVersion):
                if item is not first and item.pos.file == base:
                    raise VCLError("VCL version declaration must be first in the file", item.pos)
                continue
            if isinstance(item, ast.Import):
                self._import(item.name, item.name_pos)
            elif isinstance(item, ast.Backend):
                declare("backend", item.name, item.name_pos)
                self.backends[item.name] = item
            elif isinstance(item, ast.Probe):
                declare("probe", item.name, item.name_pos)
                self.probes[item.name] = item
            elif isinstance(item, ast.Acl):
                declare("acl", item.name, item.name_pos)
                self.acls[item.name] = item
            elif isinstance(item, ast.Sub):
                if item.name.startswith("vcl_") and item.name not in reserved_ok:
                    valid = "\n".join("\t" + m for m in sorted(symbols.METHODS))
                    raise VCLError("The names 'vcl_*' are reserved for subroutines.", item.name_pos,
                                   [("Valid vcl_* subroutines are:\n" + valid, None)])
                info = self.subs.get(item.name)
                if info is None:
                    if item.name in names:
                        declare("subroutine", item.name, item.name_pos)
                    names[item.name] = ("subroutine", item.name_pos)
                    self.subs[item.name] = SubInfo(item.name, [item])
                elif item.name in reserved_ok:
                    info.defs.append(item)   # built-in subroutines are joined in order
                else:
                    raise VCLError(f"Subroutine '{item.name}' redefined", item.name_pos,
                                   [("Previously defined here:", info.pos)])
        # User code first, then the built-in VCL (stable sort keeps each group's order).
        for info in self.subs.values():
            info.defs.sort(key=lambda s: s.builtin)
        if not self.backends:
            self.warnings.append(f"{base}: no backend declared, assuming 'backend default none;'")
            pos = ast.Pos(base, 1, 1, 1)
            self.backends["default"] = ast.Backend(pos, "default", pos, None)
        # `new` objects are declared in vcl_init; make them known before any body is checked
        # (a `new` elsewhere is found here too, and rejected with its position by _methods()).
        for info in self.subs.values():
            for sub in info.defs:
                self._prescan_new(sub.body)

    def _import(self, name: str, pos: ast.Pos) -> Vmod:
        if name in self.vmods:
            return self.vmods[name]
        try:
            vmod = self.load_vmod(name)
        except UnknownVmod:
            raise VCLError(f"Could not find VMOD {name}", pos) from None
        self.vmods[name] = vmod
        self.vmod_pos[name] = pos
        return vmod

    def _prescan_new(self, body: list[ast.Stmt]) -> None:
        for stmt in body:
            if isinstance(stmt, ast.New):
                if stmt.name in self.instances or stmt.name in self.backends or stmt.name in self.acls:
                    raise VCLError(f"Object name '{stmt.name}' already used", stmt.name_pos)
                vmod_name, _, obj = stmt.call.name.partition(".")
                vmod = self._vmod_for(vmod_name, stmt.call.pos)
                if vmod is None or obj not in vmod.objects:
                    raise VCLError(f"Symbol not found: '{stmt.call.name}'", stmt.call.pos)
                self.instances[stmt.name] = vmod.objects[obj]
                self.instance_pos[stmt.name] = stmt.name_pos
            elif isinstance(stmt, ast.If):
                for _, b in stmt.branches:
                    self._prescan_new(b)
                if stmt.else_body:
                    self._prescan_new(stmt.else_body)
            elif isinstance(stmt, ast.Block):
                self._prescan_new(stmt.body)

    def _vmod_for(self, name: str, pos: ast.Pos) -> Vmod | None:
        if name in self.vmods:
            return self.vmods[name]
        if name in IMPLICIT_IMPORTS:
            vmod = self._import(name, pos)
            self.warnings.append(f"{self.filename}: '{name}' used without 'import {name};', importing it")
            return vmod
        return None

    # ------------------------------------------------------------------ uses

    def _use(self, kind: str, name: str, pos: ast.Pos, allowed: frozenset[str] | None) -> None:
        assert self.cur is not None
        self.cur.uses.append(Use(kind, name, pos, allowed))

    def _ref(self, kind: str, name: str, pos: ast.Pos) -> None:
        self.referenced.setdefault(f"{kind}:{name}", pos)

    # ------------------------------------------------------------------ statements

    def _body(self, body: list[ast.Stmt], method_body: bool) -> None:
        for stmt in body:
            self._stmt(stmt, method_body)

    def _stmt(self, stmt: ast.Stmt, method_body: bool) -> None:
        if isinstance(stmt, ast.Set):
            self._set(stmt)
        elif isinstance(stmt, ast.Unset):
            var = self._variable(stmt.target, stmt.target_pos)
            if var.unset_code is None or not var.unset:
                raise VCLError("Variable cannot be unset.", stmt.target_pos)
            stmt.ref = var
            self._use("unset", var.name, stmt.target_pos, var.unset)
        elif isinstance(stmt, ast.CallSub):
            assert self.cur is not None
            self.cur.calls.append((stmt.name, stmt.name_pos))
            self._ref("sub", stmt.name, stmt.name_pos)
        elif isinstance(stmt, ast.Return):
            self._return(stmt, method_body)
        elif isinstance(stmt, ast.If):
            stmt.branches = [(self.expr0(cond, "BOOL"), body) for cond, body in stmt.branches]
            for _, body in stmt.branches:
                self._body(body, method_body)
            if stmt.else_body is not None:
                self._body(stmt.else_body, method_body)
        elif isinstance(stmt, ast.Synthetic):
            self._use("action", "synthetic", stmt.pos, frozenset({"vcl_synth", "vcl_backend_error"}))
            stmt.value = self.expr0(stmt.value, "STRING")
        elif isinstance(stmt, ast.HashData):
            self._use("action", "hash_data", stmt.pos, frozenset({"vcl_hash"}))
            stmt.value = self.expr0(stmt.value, "STRING")
        elif isinstance(stmt, ast.Ban):
            stmt.value = self.expr0(stmt.value, "STRING")
        elif isinstance(stmt, ast.New):
            self._use("action", "new", stmt.pos, frozenset({"vcl_init"}))
            obj = self.instances[stmt.name]
            self._bind_args(stmt.call, obj.constructor, stmt.call.name)
            stmt.call.ref = ("new", obj)
            stmt.call.type = "INSTANCE"
        elif isinstance(stmt, ast.ExprStmt):
            self._call(stmt.call, "VOID", statement=True)
        elif isinstance(stmt, ast.Block):
            self._body(stmt.body, method_body)
        else:  # pragma: no cover - the parser makes nothing else
            raise VCLError(f"Unknown statement {type(stmt).__name__}", stmt.pos)

    def _variable(self, name: str, pos: ast.Pos) -> symbols.Variable:
        var = symbols.lookup(name, self.version)
        if var is None:
            raise VCLError(f"Symbol not found: '{name}'", pos)
        return var

    def _set(self, stmt: ast.Set) -> None:
        var = self._variable(stmt.target, stmt.target_pos)
        if var.set is None or not var.write:
            raise VCLError("Variable is read only.", stmt.target_pos)
        stmt.ref = var
        self._use("write", var.name, stmt.target_pos, var.write)
        vtype = var.type
        if vtype in ("HEADER", "BODY", "STRING"):
            if stmt.op not in ("=", "+="):
                raise VCLError(f"Operator {stmt.op} not possible on type {vtype}", stmt.target_pos)
            stmt.value = self.expr0(stmt.value, "STRING")
            return
        if stmt.op == "=":
            stmt.value = self.expr0(stmt.value, vtype)
            return
        if vtype not in ("INT", "REAL", "DURATION", "BYTES") or (vtype == "BYTES" and stmt.op in ("*=", "/=")):
            raise VCLError(f"Operator {stmt.op} not possible on type {vtype}", stmt.target_pos)
        if stmt.op in ("*=", "/="):
            stmt.value = self.expr0(stmt.value, types.MULTYPE[vtype])
        else:
            stmt.value = self.expr0(stmt.value, vtype)

    def _return(self, stmt: ast.Return, method_body: bool) -> None:
        if stmt.action is None:
            if method_body:
                raise VCLError("Expected '(' got ';'", stmt.pos)
            return
        name = stmt.action
        if name not in symbols.ACTIONS:
            raise VCLError("Expected return action name.", stmt.action_pos)
        spec = symbols.ACTION_ARGS.get(name, ())
        if len(stmt.args) > len(spec):
            raise VCLError(f"Too many arguments to return action '{name}'", stmt.args[len(spec)].pos)
        for i, (atype, optional) in enumerate(spec):
            if i >= len(stmt.args):
                if not optional:
                    raise VCLError(f"Expected '(' after return action '{name}'", stmt.action_pos)
                continue
            arg = stmt.args[i]
            if arg.name is not None:
                raise VCLError("Named arguments are not allowed in return actions", arg.pos)
            if atype == "VCL":
                if not isinstance(arg.value, ast.Name):
                    raise VCLError("Expected a VCL label name", arg.pos)
                arg.value.type = "VCL"
                continue
            arg.value = self.expr0(arg.value, atype)
        if not spec and stmt.args:
            raise VCLError(f"Return action '{name}' takes no arguments", stmt.args[0].pos)
        self._use("return", name, stmt.action_pos, None)

    # ------------------------------------------------------------------ expressions

    def expr0(self, e: ast.Expr, fmt: str) -> ast.Expr:
        """Type `e` for a context expecting `fmt`, converting as VCC does, or raise VCLError."""
        if fmt in types.STRING_FORMS:
            r = self.cor(e, "STRING")
            fmt = "STRING"
        else:
            r = self.cor(e, fmt)
        if r.type == fmt:
            return r
        if fmt == "STRING":
            return self.tostring(r)
        if fmt == "BOOL":
            r = self.tobool(r)
            if r.type == "BOOL":
                return r
        raise VCLError(f"Expression has type {r.type}, expected {fmt}", e.pos)

    def tostring(self, e: ast.Expr) -> ast.Expr:
        if e.type == "STRING":
            return e
        if e.type not in types.TO_STRING:
            if e.type == "BLOB":
                raise VCLError("Wrong use of BLOB value.\nBLOBs can only be used as arguments to VMOD"
                               " functions.", e.pos)
            raise VCLError(f"Cannot convert {e.type} to STRING.", e.pos)
        c = ast.Convert(e.pos, e, "STRING")
        c.type = "STRING"
        return c

    def tobool(self, e: ast.Expr) -> ast.Expr:
        if e.type == "BOOL" or e.type not in types.TO_BOOL:
            return e
        c = ast.Convert(e.pos, e, "BOOL")
        c.type = "BOOL"
        return c

    def cor(self, e: ast.Expr, fmt: str) -> ast.Expr:
        if isinstance(e, ast.BoolOp):
            ops = []
            for i, operand in enumerate(e.operands):
                r = self.tobool(self.cor(operand, fmt))
                if r.type != "BOOL":
                    where = "preceeded" if i == 0 else "followed"
                    raise VCLError(f"'{e.op}' must be {where} by BOOL, found {r.type}.", operand.pos)
                ops.append(r)
            e.operands = ops
            e.type = "BOOL"
            return e
        if isinstance(e, ast.Not):
            r = self.tobool(self.cor(e.operand, fmt))
            if r.type != "BOOL":
                raise VCLError(f"'!' must be followed by BOOL, found {r.type}.", e.pos)
            e.operand = r
            e.type = "BOOL"
            return e
        if isinstance(e, ast.Compare):
            return self._compare(e, fmt)
        if isinstance(e, ast.Match):
            return self._match(e, fmt)
        return self.add(e, fmt)

    def _compare(self, e: ast.Compare, fmt: str) -> ast.Expr:
        left = self.add(e.left, fmt)
        ops = types.COMPARABLE.get(left.type or "")
        if ops is None or e.op not in ops:
            raise VCLError(f"Operator {e.op} not possible on {left.type}", e.op_pos)
        right = self.add(e.right, left.type)
        if right.type != left.type:
            raise VCLError(f"Comparison of different types: {left.type} '{e.op}' {right.type}", e.op_pos)
        e.left, e.right = left, right
        e.type = "BOOL"
        return e

    def _match(self, e: ast.Match, fmt: str) -> ast.Expr:
        left = self.add(e.left, fmt)
        if left.type == "STRING":
            if not isinstance(e.right, ast.StringLit):
                t = self.add(e.right, "STRING").type
                raise VCLError(f"Expression has type {t}, expected REGEX", e.right.pos)
            self.regex(e.right)
            e.kind = "regex"
        elif left.type == "IP":
            if not isinstance(e.right, ast.Name):
                raise VCLError("Expected ACL identifier", e.right.pos)
            if e.right.name not in self.acls:
                raise VCLError(f"Undefined acl {e.right.name}, first reference:", e.right.pos)
            self._ref("acl", e.right.name, e.right.pos)
            e.right.ref = ("acl", e.right.name)
            e.right.type = "ACL"
            e.kind = "acl"
        else:
            raise VCLError(f"Operator {e.op} not possible on {left.type}", e.op_pos)
        e.left = left
        e.type = "BOOL"
        return e

    def regex(self, lit: ast.StringLit) -> None:
        reason = rtlib.check_regex(lit.value)
        if reason is not None:
            raise VCLError(f"Regexp compilation error: {reason}", lit.pos)
        lit.type = "REGEX"
        if lit.value not in self.regexes:
            self.regexes[lit.value] = f"re_{len(self.regexes) + 1}"

    def add(self, e: ast.Expr, fmt: str) -> ast.Expr:
        if not (isinstance(e, ast.Arith) and e.op in "+-"):
            return self.mul(e, fmt)
        left = self.add(e.left, fmt)
        if (e.op, left.type) not in types.ADD_LEFT and fmt == "STRING":
            right = self.mul(e.right, "STRING")
        else:
            right = self.mul(e.right, left.type or fmt)
        result = types.ADDS.get((e.op, left.type, right.type))
        if result is not None:
            e.left, e.right = left, right
            e.type = result
            return e
        if e.op == "+" and (left.type == "STRING" or fmt == "STRING"):
            parts: list[ast.Expr] = []
            for part in (self.tostring(left), self.tostring(right)):
                if isinstance(part, ast.Concat):
                    parts.extend(part.parts)
                else:
                    parts.append(part)
            c = ast.Concat(e.pos, parts)
            c.type = "STRING"
            return c
        raise VCLError(f"{left.type} {e.op} {right.type} not possible.", e.op_pos)

    def mul(self, e: ast.Expr, fmt: str) -> ast.Expr:
        if not (isinstance(e, ast.Arith) and e.op in "*/%"):
            return self.unary(e, fmt)
        left = self.mul(e.left, fmt)
        f2 = types.MULTYPE.get(left.type or "")
        if f2 is None:
            raise VCLError(f"Operator {e.op} not possible on type {left.type}.", e.op_pos)
        right = self.unary(e.right, f2)
        if right.type != "INT" and right.type != f2:
            raise VCLError(f"{left.type} {e.op} {right.type} not possible.", e.op_pos)
        e.left, e.right = left, right
        e.type = left.type
        return e

    def unary(self, e: ast.Expr, fmt: str) -> ast.Expr:
        if isinstance(e, ast.Neg):
            r = self.unary(e.operand, fmt)
            if r.type not in ("INT", "REAL", "DURATION", "BYTES"):
                raise VCLError(f"Operator - not possible on type {r.type}.", e.pos)
            e.operand = r
            e.type = r.type
            return e
        return self.atom(e, fmt)

    def atom(self, e: ast.Expr, fmt: str) -> ast.Expr:
        if isinstance(e, (ast.BoolOp, ast.Not, ast.Compare, ast.Match, ast.Arith)):
            return self.cor(e, fmt)   # a parenthesised sub-expression
        if isinstance(e, ast.StringLit):
            if fmt == "IP":
                return self._ip_const(e)
            e.type = "STRING"
            return e
        if isinstance(e, ast.IntLit):
            if fmt == "BYTES":
                raise VCLError(f"Expected BYTES unit (B, KB, MB...) got '{e.text}'", e.pos)
            e.type = "REAL" if fmt == "REAL" else "INT"
            return e
        if isinstance(e, ast.RealLit):
            if fmt == "BYTES":
                raise VCLError(f"Expected BYTES unit (B, KB, MB...) got '{e.text}'", e.pos)
            e.type = "REAL"
            return e
        if isinstance(e, ast.DurationLit):
            e.type = "DURATION"
            return e
        if isinstance(e, ast.BytesLit):
            if fmt != "BYTES":
                unit = e.text.lstrip("0123456789.")
                raise VCLError(f"Unknown duration unit '{unit}'\nLegal duration units are 'ms', 's', 'm', "
                               "'h', 'd', 'w' and 'y'", e.pos)
            e.type = "BYTES"
            return e
        if isinstance(e, ast.Name):
            return self._name(e, fmt)
        if isinstance(e, ast.Call):
            return self._call(e, fmt)
        if isinstance(e, (ast.Convert, ast.Concat)):
            return e
        raise VCLError(f"Unknown expression {type(e).__name__}", e.pos)  # pragma: no cover

    def _ip_const(self, e: ast.StringLit) -> ast.Expr:
        if e.value.startswith("/"):
            raise VCLError(f"Cannot convert to an IP address: \"{e.value}\"", e.pos)
        try:
            nets = rtlib.resolve_acl_entry(e.value, None)
        except (ValueError, LookupError, UnicodeError):
            raise VCLError(f"IP constant '\"{e.value}\"' could not be resolved to an IP address", e.pos) from None
        lit = ast.StringLit(e.pos, nets[0].split("/")[0])
        lit.type = "IP"
        return lit

    def _name(self, e: ast.Name, fmt: str) -> ast.Expr:
        name = e.name
        if name in ("true", "false"):
            e.ref = ("bool", name == "true")
            e.type = "BOOL"
            return e
        if name == "default" and fmt != "PROBE" and "default" not in self.backends:
            e.ref = ("default_backend",)
            e.type = "BACKEND"
            return e
        if fmt == "PROBE" and name in self.probes:
            self._ref("probe", name, e.pos)
            e.ref = ("probe", name)
            e.type = "PROBE"
            return e
        if name in self.backends:
            self._ref("backend", name, e.pos)
            e.ref = ("backend", name)
            e.type = "BACKEND"
            return e
        if name in self.acls:
            self._ref("acl", name, e.pos)
            e.ref = ("acl", name)
            e.type = "ACL"
            return e
        if name in self.probes:
            self._ref("probe", name, e.pos)
            e.ref = ("probe", name)
            e.type = "PROBE"
            return e
        if name in self.instances:
            e.ref = ("instance", name)
            e.type = "INSTANCE"
            return e
        var = symbols.lookup(name, self.version)
        if var is None:
            head = name.split(".")[0]
            if head in self.vmods or head in IMPLICIT_IMPORTS:
                raise VCLError(f"Symbol '{name}' type (FUNC) can not be used in expression without "
                               "arguments.", e.pos)
            raise VCLError(f"Symbol not found: '{name}'", e.pos)
        if var.type == "BODY" or var.get == "None":
            raise VCLError(f"Cannot convert {var.type} to STRING.", e.pos)
        self._use("read", var.name, e.pos, var.read)
        if var.name == "now" and self.cur is not None:
            self.cur.uses_now = True
        e.ref = ("var", var)
        e.type = "STRING" if var.type == "HEADER" and fmt != "HEADER" else var.type
        return e

    # ------------------------------------------------------------------ calls

    def _call(self, e: ast.Call, fmt: str, statement: bool = False) -> ast.Expr:
        name = e.name
        if name in ("regsub", "regsuball"):
            if len(e.args) != 3 or any(a.name for a in e.args):
                raise VCLError(f"{name}() takes three arguments: string, regex, substitution", e.pos)
            subject = self.expr0(e.args[0].value, "STRING")
            rx = e.args[1].value
            if not isinstance(rx, ast.StringLit):
                raise VCLError(f"Expression has type {self.add(rx, 'STRING').type}, expected REGEX", rx.pos)
            self.regex(rx)
            sub = self.expr0(e.args[2].value, "STRING")
            e.ref = ("regsub", name == "regsuball")
            e.bound = [subject, rx, sub]
            e.type = "STRING"
            return e
        head, _, rest = name.partition(".")
        if head in self.instances and rest:
            obj = self.instances[head]
            method = obj.methods.get(rest)
            if method is None:
                raise VCLError(f"Unknown method '{rest}' for object '{head}'", e.pos)
            self._bind_args(e, method, name)
            e.ref = ("method", head, method)
            return self._func_result(e, method, statement)
        vmod = self._vmod_for(head, e.pos) if rest else None
        if vmod is not None:
            func = vmod.functions.get(rest)
            if func is None:
                if rest in vmod.objects:
                    raise VCLError(f"Symbol '{name}' is an object type: use it with 'new' in vcl_init",
                                   e.pos)
                raise VCLError(f"Symbol not found: '{name}'", e.pos)
            self._bind_args(e, func, name)
            e.ref = ("func", head, func)
            if func.restrict is not None:
                self._use("func", name, e.pos, func.restrict)
            if func.is_async:
                assert self.cur is not None
                self.cur.is_async = True
            return self._func_result(e, func, statement)
        # STRING methods: <string expression>.lower() / .upper()
        base, _, method = name.rpartition(".")
        if base and method in ("lower", "upper") and not e.args:
            target = self._name(ast.Name(e.pos, base), "STRING")
            target = self.tostring(target)
            e.ref = ("strmethod", method)
            e.bound = [target]
            e.type = "STRING"
            return e
        raise VCLError(f"Symbol not found: '{name}'", e.pos)

    def _func_result(self, e: ast.Call, func: Func, statement: bool) -> ast.Expr:
        if func.ret == "VOID" and not statement:
            raise VCLError("Function returns VOID:", e.pos)
        e.type = "STRING" if func.ret in types.STRING_FORMS or func.ret == "HEADER" else func.ret
        return e

    def _bind_args(self, e: ast.Call, func: Func, name: str) -> None:
        params = func.params
        bound: list[ast.Expr | None] = [None] * len(params)
        positional = [a for a in e.args if a.name is None]
        named = [a for a in e.args if a.name is not None]
        if any(a.name is None for a in e.args[len(positional):]):
            raise VCLError("Positional argument after named argument", e.pos)
        if len(positional) > len(params):
            raise VCLError(f"Too many arguments to {name}()", positional[len(params)].pos)
        for i, arg in enumerate(positional):
            bound[i] = self._arg(arg.value, params[i], name)
        for arg in named:
            idx = next((i for i, p in enumerate(params) if p.name == arg.name), None)
            if idx is None:
                raise VCLError(f"Unknown argument '{arg.name}'", arg.pos)
            if bound[idx] is not None:
                raise VCLError(f"Argument '{arg.name}' already used", arg.pos)
            bound[idx] = self._arg(arg.value, params[idx], name)
        for i, p in enumerate(params):
            if bound[i] is None and not p.optional and p.default is None:
                raise VCLError(f"Argument '{p.name}' missing", e.pos)
        e.bound = bound

    def _arg(self, value: ast.Expr, param, fname: str) -> ast.Expr:
        ptype = param.type
        if ptype == "ENUM":
            if not isinstance(value, ast.Name) or value.name not in param.enum:
                choices = "\n".join("\t" + w for w in param.enum)
                raise VCLError(f"Wrong enum value.  Expected one of:\n{choices}", value.pos)
            value.ref = ("enum", value.name)
            value.type = "ENUM"
            return value
        if ptype == "HEADER":
            if not isinstance(value, ast.Name):
                raise VCLError(f"Expected a header (like req.http.X) for argument '{param.name}'", value.pos)
            r = self._name(value, "HEADER")
            if r.type != "HEADER":
                raise VCLError(f"Expression has type {r.type}, expected HEADER", value.pos)
            return r
        if ptype == "STRANDS":
            return self.expr0(value, "STRING")
        if ptype == "HTTP":
            r = self._name(value, "HTTP") if isinstance(value, ast.Name) else None
            if r is None or r.type != "HTTP":
                raise VCLError("Expected req, bereq, resp or beresp", value.pos)
            return r
        if ptype == "SUB":
            raise VCLError("SUB arguments are not supported", value.pos)
        return self.expr0(value, ptype)

    # ------------------------------------------------------------------ declarations

    def _check_probes_backends(self) -> None:
        for probe in self.probes.values():
            for attr in probe.attrs:
                self._probe_attr(attr)
        for backend in self.backends.values():
            if backend.attrs is None:
                continue
            seen: set[str] = set()
            for attr in backend.attrs:
                if attr.name not in BACKEND_FIELDS:
                    fields = ", ".join("." + f for f in BACKEND_FIELDS)
                    raise VCLError(f"Unknown field: '{attr.name}', expected one of {fields}", attr.pos)
                if attr.name in seen:
                    raise VCLError(f"Field '{attr.name}' redefined", attr.pos)
                seen.add(attr.name)
                if attr.name == "probe":
                    if isinstance(attr.value, list) and attr.value and isinstance(attr.value[0], ast.Attr):
                        for pattr in attr.value:
                            self._probe_attr(pattr)
                        continue
                    if isinstance(attr.value, list) and not attr.value:
                        continue
                    if not isinstance(attr.value, ast.Name) or attr.value.name not in self.probes:
                        raise VCLError("Expected a probe name or an inline probe { ... }", attr.value.pos)
                    self._ref("probe", attr.value.name, attr.value.pos)
                    attr.value.type = "PROBE"
                    attr.value.ref = ("probe", attr.value.name)
                    continue
                attr.value = self._const_attr(attr, BACKEND_FIELDS[attr.name])
            if "host" not in seen and "path" not in seen:
                raise VCLError("Expected .host or .path.", backend.name_pos)
            if "host" in seen and "path" in seen:
                raise VCLError("Only one of .host or .path may be given.", backend.name_pos)

    def _probe_attr(self, attr: ast.Attr) -> None:
        if attr.name not in PROBE_FIELDS:
            fields = ", ".join("." + f for f in PROBE_FIELDS)
            raise VCLError(f"Unknown field: '{attr.name}', expected one of {fields}", attr.pos)
        if attr.name == "request" and isinstance(attr.value, list):
            for s in attr.value:
                s.type = "STRING"
            return
        attr.value = self._const_attr(attr, PROBE_FIELDS[attr.name])

    def _const_attr(self, attr: ast.Attr, ftype: str) -> ast.Expr:
        value = attr.value
        if not isinstance(value, ast.Expr):
            raise VCLError(f"Expected a {ftype} value for .{attr.name}", attr.pos)
        if ftype == "STRING" and isinstance(value, ast.IntLit) and attr.name == "port":
            value.type = "INT"
            return value
        literal = (ast.StringLit, ast.IntLit, ast.RealLit, ast.DurationLit, ast.BytesLit, ast.Neg)
        if not isinstance(value, literal):
            raise VCLError(f"Expected a constant {ftype} for .{attr.name}", value.pos)
        saved, self.cur = self.cur, SubInfo("<decl>", [])
        try:
            return self.expr0(value, ftype)
        finally:
            self.cur = saved

    def _acl_networks(self, acl: ast.Acl) -> list[tuple[bool, str]]:
        nets: list[tuple[bool, str]] = []
        pedantic = "-pedantic" not in acl.flags
        for entry in acl.entries:
            try:
                resolved = rtlib.resolve_acl_entry(entry.addr, entry.mask)
            except LookupError as exc:
                if entry.optional:
                    continue
                raise VCLError(str(exc), entry.pos) from None
            except ValueError as exc:
                raise VCLError(f"Bad ACL entry \"{entry.addr}\": {exc}", entry.pos) from None
            if pedantic and entry.mask is not None:
                import ipaddress
                for net in resolved:
                    addr, _, prefix = net.partition("/")
                    if ipaddress.ip_network(net, strict=False).network_address != ipaddress.ip_address(addr):
                        fixed = ipaddress.ip_network(net, strict=False)
                        raise VCLError(f"Non-zero bits in masked part, (maybe use {fixed} ?)", entry.pos)
            nets.extend((entry.negated, n) for n in resolved)
        return nets

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
                raise VCLError(f"Unused sub {info.name}, defined:", info.pos)
        default = "default" if "default" in self.backends else next(iter(self.backends), None)
        for name, backend in self.backends.items():
            if name != default and f"backend:{name}" not in self.referenced:
                raise VCLError(f"Unused backend {name}, defined:", backend.name_pos)
        for name, acl in self.acls.items():
            if f"acl:{name}" not in self.referenced:
                raise VCLError(f"Unused acl {name}, defined:", acl.name_pos)
        for name, probe in self.probes.items():
            if f"probe:{name}" not in self.referenced:
                raise VCLError(f"Unused probe {name}, defined:", probe.name_pos)
        # Recursion: depth-first search with the path kept for the report.
        state: dict[str, int] = {}

        def visit(name: str, path: list[tuple[str, ast.Pos]]) -> None:
            state[name] = 1
            for callee, pos in self.subs[name].calls:
                if state.get(callee) == 1:
                    notes = [(f'...called from "{caller}"', p) for caller, p in path + [(name, pos)]
                             if caller != "<root>"]
                    raise VCLError("Subroutine recurses on", self.subs[callee].pos, notes[-2:] or notes)
                if state.get(callee) is None:
                    visit(callee, path + [(name, pos)])
            state[name] = 2

        for name in self.subs:
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
                msg = f"Cannot be unset from subroutine '{method}'."
            else:
                msg = f"Not a valid action in subroutine '{method}'."
            raise VCLError(msg, use.pos, notes())
        if info.uses_now:
            self.subs[method].uses_now = True
        for callee, pos in info.calls:
            self._check_reach(method, self.subs[callee], chain + [(info.name, pos)], seen)
            if self.subs[callee].uses_now:
                self.subs[method].uses_now = True


def check(items: list[object], filename: str, vmod_loader) -> CheckedProgram:
    return Checker(items, filename, vmod_loader).check()
