"""Expression typing, the VCC way: the expected type flows down into each sub-expression.

So `1 + "a"` is a string in a string context and an error elsewhere, a bare `10` is a REAL where a
REAL is expected, and implicit conversions (to STRING, to BOOL) become explicit `Convert` nodes.
Names and calls are resolved (`ref`) to variables, backends, ACLs, vmod functions or object methods.
"""

from __future__ import annotations

from vcl import ast, symbols, types
from vcl.errors import MissingParenthesis, VCLError
from vcl.program import SubInfo
from vcl.regex import check_regex
from vcl.runtime import parse_ip
from vmods import Func, ObjectType, Vmod, vnum

# Where VCC reads a '-' (vcc_expr5; STRING is its STRINGS), and the types C can negate.
_MINUS_CONTEXTS = frozenset({"INT", "REAL", "DURATION", "STRING"})
_NEGATABLE = frozenset({"INT", "REAL", "DURATION", "BYTES", "TIME", "BOOL"})

# Vmods that may be used without an `import` line (with a warning), as the docs' examples do.
IMPLICIT_IMPORTS = frozenset({"tinykvm"})


class ExprChecker:
    """Mixed into vcl.checker.Checker, whose declarations it resolves names against."""

    version: float
    backends: dict[str, ast.Backend]
    probes: dict[str, ast.Probe]
    acls: dict[str, ast.Acl]
    instances: dict[str, ObjectType]
    vmods: dict[str, Vmod]
    vmod_pos: dict[str, ast.Pos]
    regexes: dict[str, str]
    subs: dict[str, SubInfo]
    cur: SubInfo | None

    def _use(self, kind: str, name: str, pos: ast.Pos, allowed: frozenset[str] | None) -> None:
        raise NotImplementedError

    def _ref(self, kind: str, name: str) -> None:
        raise NotImplementedError

    def _vmod_for(self, name: str, pos: ast.Pos) -> Vmod | None:
        raise NotImplementedError

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
        raise VCLError(f"Expression has type {self._type_name(r)}, expected {fmt}", e.pos)

    def _type_name(self, e: ast.Expr) -> str:
        """A type as VCC names it: an object instance by its vmod and object ("directors.round_robin")."""
        ref = getattr(e, "ref", None)
        if ref and ref[0] == "instance":
            return self._object_type(self.instances[ref[1]])
        return e.type or "?"

    def _object_type(self, obj: ObjectType) -> str:
        for vmod in self.vmods.values():
            for name, known in vmod.objects.items():
                if known is obj:
                    return f"{vmod.name}.{name}"
        return obj.name

    def tostring(self, e: ast.Expr) -> ast.Expr:
        if e.type == "STRING":
            return e
        if e.type not in types.TO_STRING:
            # after a name VCC points at the token that follows (taken here to follow at once)
            at = ast.Pos(e.pos.file, e.pos.line, e.pos.col + e.pos.length) if isinstance(e, ast.Name) else e.pos
            raise VCLError(f"Cannot convert {self._type_name(e)} to STRING.", at)
        c = ast.Convert(e.pos, e, "STRING")
        c.type = "STRING"
        return c

    def tobool(self, e: ast.Expr) -> ast.Expr:
        if e.type not in types.TO_BOOL:      # BOOL itself too
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
                    raise VCLError(f"'{e.op}' must be {where} by BOOL, found {self._type_name(r)}.", operand.pos)
                ops.append(r)
            e.operands = ops
            e.type = "BOOL"
            return e
        if isinstance(e, ast.Not):
            r = self.tobool(self.cor(e.operand, fmt))
            if r.type != "BOOL":
                raise VCLError(f"'!' must be followed by BOOL, found {self._type_name(r)}.", e.pos)
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
            raise VCLError(f"Operator {e.op} not possible on {self._type_name(left)}", e.op_pos)
        right = self.add(e.right, left.type)
        if right.type != left.type:
            raise VCLError(f"Comparison of different types: {left.type} '{e.op}' {right.type}", e.op_pos)
        e.left, e.right = left, right
        e.type = "BOOL"
        return e

    def _match(self, e: ast.Match, fmt: str) -> ast.Expr:
        left = self.add(e.left, fmt)
        if left.type == "STRING":
            e.right = _fold_literal(e.right)
            if not isinstance(e.right, ast.StringLit):
                raise self._not_a_regex(e.right)
            self.regex(e.right)
            e.kind = "regex"
        elif left.type == "IP":
            if not isinstance(e.right, ast.Name):
                raise self._not_an_acl_operand(e.right)
            key = e.right.name.lower()   # declared names match case-insensitively, as in VCC
            if key == "default":
                raise VCLError("Symbol 'default' is a reserved word.", e.right.pos)
            if key not in self.acls:
                self._not_an_acl(e.right)
            self._ref("acl", key)
            e.right.ref = ("acl", key)
            e.kind = "acl"
        else:
            raise VCLError(f"Operator {e.op} not possible on {self._type_name(left)}", e.op_pos)
        e.left = left
        e.type = "BOOL"
        return e

    def _not_an_acl_operand(self, e: ast.Expr) -> VCLError:
        """VCC reads one operand after `IP ~` (vcc_expr4 wanting an ACL) and types it: the leftmost of
        a sum or product, a parenthesised expression whole."""
        operand, parent = e, None
        while isinstance(operand, ast.Arith) and operand.paren_pos is None:
            operand, parent = operand.left, operand
        if isinstance(operand, ast.Name) and parent is not None:
            # `acl + 1`: VCC has its ACL and stops at the operator; its words name the token the
            # statement wanted next, which in a condition (where ACLs are matched) is the ')'
            return VCLError(f"Expected ')' got '{parent.op}'", parent.op_pos)
        t = self._type_name(self.add(operand, "ACL"))
        return VCLError(f"Expression has type {t}, expected ACL", operand.paren_pos or operand.pos)

    def _not_an_acl(self, name: ast.Name) -> None:
        """VCC's words for `~ NAME` where NAME is no ACL: another kind declared before the use has
        the wrong type; one declared after it is told it must be an acl; none is undefined."""
        key = name.name.lower()
        for kind, table in (("BACKEND", self.backends), ("PROBE", self.probes)):
            decl = table.get(key)
            if decl is None:
                continue
            where = decl.name_pos
            if where.file == name.pos.file and (where.line, where.col) > (name.pos.line, name.pos.col):
                raise VCLError(f"Name {name.name} must have type 'acl'.", where)
            raise VCLError(f"Expression has type {kind}, expected ACL", name.pos)
        raise VCLError(f"Undefined acl {name.name}, first reference:", name.pos)

    def _not_a_regex(self, e: ast.Expr) -> VCLError:
        """Where a constant regex was wanted: VCC reads no '-' there, and types anything else."""
        method = _literal_method(e)
        if method is not None:
            return method
        if isinstance(e, ast.Neg):
            return VCLError("Unknown token '-' when looking for REGEX", e.pos)
        if isinstance(e, ast.BadToken):
            return VCLError(f"Unknown token {e.text} when looking for REGEX", e.pos)
        # typed as VCC types it with a REGEX wanted, and reported at its first token (a '(')
        return VCLError(f"Expression has type {self._type_name(self.add(e, 'REGEX'))}, expected REGEX",
                        _first_paren(e) or e.pos)

    def regex(self, lit: ast.StringLit) -> None:
        reason = check_regex(lit.value)
        if reason is not None:
            raise VCLError(f"Regexp compilation error: {reason}", lit.pos)
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
        raise VCLError(f"{self._type_name(left)} {e.op} {self._type_name(right)} not possible.", e.op_pos)

    def mul(self, e: ast.Expr, fmt: str) -> ast.Expr:
        if not (isinstance(e, ast.Arith) and e.op in "*/%"):
            return self.unary(e, fmt)
        left = self.mul(e.left, fmt)
        if e.op == "%" and left.type != "INT":
            raise VCLError("Operator % only possible on INT.", e.op_pos)
        f2 = types.MULTYPE.get(left.type or "")
        if f2 is None:
            raise VCLError(f"Operator {e.op} not possible on type {self._type_name(left)}.", e.op_pos)
        right = self.unary(e.right, f2)
        if right.type != "INT" and right.type != f2:
            raise VCLError(f"{left.type} {e.op} {right.type} not possible.", e.op_pos)
        e.left, e.right = left, right
        e.type = left.type
        return e

    def unary(self, e: ast.Expr, fmt: str) -> ast.Expr:
        if isinstance(e, ast.Neg):
            if fmt not in _MINUS_CONTEXTS:
                raise VCLError(f"Unknown token '-' when looking for {fmt}", e.pos)
            r = self.cor(e.operand, fmt)
            if r.type not in _NEGATABLE:
                # VCC writes -(x) for any type; C refuses it on a pointer (STRING, IP, BACKEND, ...)
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
            # where VCC wants a REGEX a constant string is one ("REGEX - REGEX not possible.")
            e.type = "REGEX" if fmt == "REGEX" else "STRING"
            return e
        if isinstance(e, ast.UnitLit):
            return self.atom(self._unit(e, fmt), fmt)
        if isinstance(e, ast.BadToken):
            raise VCLError(f"Unknown token {e.text} when looking for {fmt}", e.pos)
        if isinstance(e, (ast.IntLit, ast.RealLit)) and fmt == "BYTES":
            # VCC read the number and wanted its unit in the next token
            text, at = e.after or (e.text, e.pos)
            raise VCLError(f"Expected BYTES unit (B, KB, MB...) got '{text}'", at)
        if isinstance(e, ast.IntLit):
            e.type = "REAL" if fmt == "REAL" else "INT"
            return e
        if isinstance(e, ast.RealLit):
            e.type = "REAL"
            return e
        if isinstance(e, ast.DurationLit):
            if fmt == "BYTES":   # VCC reads `10m` as 10 MB where it wants BYTES: the letters are the unit
                return self.atom(ast.BytesLit(e.pos, 0.0, e.text), fmt)
            e.type = "DURATION"
            return e
        if isinstance(e, ast.BlobLit):
            e.type = "BLOB"
            return e
        if isinstance(e, ast.BytesLit):
            unit = e.text.lstrip("0123456789.")
            at = ast.Pos(e.pos.file, e.pos.line, e.pos.col + len(e.text) - len(unit), len(unit))
            if fmt != "BYTES":
                raise VCLError(f"Unknown duration unit '{unit}'\nLegal duration units are 'ms', 's', 'm', "
                               "'h', 'd', 'w' and 'y'", at)
            e = self._bytes_lit(e.pos, float(e.text[: -len(unit)]), unit, at, e.text)
            e.type = "BYTES"
            return e
        if isinstance(e, ast.Name):
            return self._name(e, fmt)
        if isinstance(e, ast.Call):
            return self._call(e)
        # Convert and Concat are made by typing, and nothing is typed twice
        raise VCLError(f"Unknown expression {type(e).__name__}", e.pos)  # pragma: no cover

    def _unit(self, e: ast.UnitLit, fmt: str) -> ast.Expr:
        """`4 KB` / `10 s`: as vcc_expr4, a BYTES unit (any case) where BYTES is wanted, else a
        duration unit."""
        if e.unit.startswith('"'):
            if fmt == "BYTES":
                raise VCLError(f"Expected BYTES unit (B, KB, MB...) got '{e.unit}'", e.unit_pos)
            raise VCLError(f"Syntax error: unexpected '{e.unit}'", e.unit_pos)
        if fmt == "BYTES":
            return self._bytes_lit(e.pos, e.number, e.unit, e.unit_pos, e.text)
        seconds = types.DURATION_UNITS.get(e.unit)
        if seconds is None:
            unit = e.unit.partition(".")[0]       # VCC's ID token ends at a '.' (`2 req.url`: 'req')
            at = ast.Pos(e.unit_pos.file, e.unit_pos.line, e.unit_pos.col, len(unit))
            raise VCLError(f"Unknown duration unit '{unit}'\nLegal duration units are 'ms', 's', 'm', 'h', "
                           "'d', 'w' and 'y'", at)
        return ast.DurationLit(e.pos, e.number * seconds, e.text)

    @staticmethod
    def _bytes_lit(pos: ast.Pos, number: float, unit: str, unit_pos: ast.Pos, text: str) -> ast.BytesLit:
        """vcc_ByteVal: the unit token as VNUM_bytes_unit reads it (k, KB, m, Mb, b, ... in any
        case); VCC prints the failure with the token glued on."""
        try:
            value = vnum.bytes_unit(number, unit)
        except vnum.NumError as exc:
            raise VCLError(f"{exc}'{unit}'", unit_pos) from None
        return ast.BytesLit(pos, value, text)

    def _ip_const(self, e: ast.StringLit) -> ast.Expr:
        if e.value.startswith("/"):
            raise VCLError(f"Cannot convert to an IP address: '\"{e.value}\"'", e.pos)
        # VCC resolves IP constants like std.ip(): a port may follow ("1.2.3.4:8000", "[::1] 80").
        ip = parse_ip(e.value)
        if ip is None:
            raise VCLError(f"IP constant '\"{e.value}\"' could not be resolved to an IP address:", e.pos)
        lit = ast.IpLit(e.pos, ip.addr, ip.port)
        lit.type = "IP"
        return lit

    def _name(self, e: ast.Name, fmt: str) -> ast.Expr:
        name = e.name
        if name in ("true", "false"):
            e.ref = ("bool", name == "true")
            e.type = "BOOL"
            return e
        if name.lower() == "default" and fmt not in ("BACKEND", "PROBE"):
            # VCC's `default` is a reserved word: a backend of that name is a value only where a
            # BACKEND is expected (set req.backend_hint = default, == default, a BACKEND argument)
            raise VCLError("Symbol 'default' is a reserved word.", e.pos)
        if name == "default" and fmt == "PROBE" and "default" not in self.probes:
            # VCC stops at the token after it (taken here to follow at once)
            raise VCLError("No default probe defined", ast.Pos(e.pos.file, e.pos.line, e.pos.col + e.pos.length))
        if name == "default" and fmt != "PROBE" and "default" not in self.backends:
            e.ref = ("default_backend",)
            e.type = "BACKEND"
            return e
        key = name.lower()   # declared names match case-insensitively, as in VCC
        for kind, table in (("backend", self.backends), ("acl", self.acls), ("probe", self.probes)):
            if key in table:
                self._ref(kind, key)
                e.ref = (kind, key)
                e.type = kind.upper()
                return e
        if key in self.instances:
            # typed as its object (VCC names it by vmod and class: _type_name); the context refuses it
            e.ref = ("instance", key)
            e.type = "INSTANCE"
            return e
        try:
            var = symbols.lookup(name, self.version, self.storages)
        except symbols.BadHeaderName as exc:
            raise bad_header(exc, e.pos) from None
        if var is None and key in self.subs:
            # VCC stops at the token after the name (taken here to follow at once)
            raise VCLError(f"Symbol '{key}' can only be used as a SUB expression",
                           ast.Pos(e.pos.file, e.pos.line, e.pos.col + e.pos.length))
        if var is None and fmt in ("BACKEND", "PROBE") and "." not in name:
            # VCC takes an unknown plain name where a BACKEND (PROBE) is wanted as a reference to one
            # that was never defined.
            raise VCLError(f"Undefined {fmt.lower()} {name}, first reference:", e.pos)
        if var is None:
            head = name.split(".")[0]
            vmod = self.vmods.get(head)
            if vmod is not None and "." not in name:
                raise VCLError(f"Symbol '{head}' type (vmod) can not be used in expression.", e.pos)
            func = name.partition(".")[2]
            obj, _, after = func.partition(".")
            if vmod is not None and obj in vmod.objects:
                if after.partition(".")[0] in vmod.objects[obj].methods:
                    # vmod.object.method: VCC finds the class's method, then what follows
                    raise VCLError("Syntax error.While compiling function call:", e.pos)
                # VCC names the vmod: an object constructor is no value
                raise VCLError(f"Symbol '{head}' type (object) can not be used in expression.",
                               ast.Pos(e.pos.file, e.pos.line, e.pos.col, len(head)))
            if (vmod is not None and func in vmod.functions) or name in ("regsub", "regsuball"):
                raise MissingParenthesis(e.pos)      # a function's name alone: VCC wants its '('
            parts = name.split(".")
            for i in range(len(parts) - 1, 0, -1):
                # VCC reads the longest name that is a variable, then the next part as a property
                # of its type (`beresp.backend.ip`: BACKEND has no property 'ip'; `req.nope`: req
                # is of type HTTP)
                known = symbols.lookup(".".join(parts[:i]), self.version, self.storages)
                if known is not None:
                    at = ast.Pos(e.pos.file, e.pos.line, e.pos.col + len(".".join(parts[:i])) + 1,
                                 len(parts[i]))
                    raise VCLError(f"Unknown property '{parts[i]}' for type {_strings(known.type)}", at)
            kind = ("reserved" if head.lower() in symbols.VCC_RESERVED
                    else "action" if head.lower() in symbols.VCC_ACTIONS else None)
            if kind is not None:      # `acl.foo` too: VCC stops at the word
                raise VCLError(f"Symbol '{head}' type ({kind}) can not be used in expression.",
                               ast.Pos(e.pos.file, e.pos.line, e.pos.col, len(head)))
            raise VCLError(f"Symbol not found: '{name}'", e.pos)
        self._use("read", var.name, e.pos, var.read)
        if var.name == "now" and self.cur is not None:
            self.cur.uses_now = True
        e.ref = ("var", var)
        e.type = "STRING" if var.type == "HEADER" and fmt != "HEADER" else var.type
        return e

    # ------------------------------------------------------------------ calls

    def _call(self, e: ast.Call, statement: bool = False) -> ast.Expr:
        name = e.name
        if name in ("regsub", "regsuball"):
            return self._regsub(e)
        head, _, rest = name.partition(".")
        if head.lower() in self.vmods or head.lower() in IMPLICIT_IMPORTS:
            head = head.lower()   # vmod names are case-insensitive, like every VCC symbol
        if head.lower() in self.instances and rest:
            head = head.lower()
            obj = self.instances[head]
            method = obj.methods.get(rest)
            if method is None:
                at = ast.Pos(e.pos.file, e.pos.line, e.pos.col + len(head) + 1, len(rest))
                raise VCLError(f"Unknown property '{rest}' for type {self._object_type(obj)}", at)
            self._bind_args(e, method, note="none")     # VCC adds no note for a method
            e.ref = ("method", head, method)
            return self._func_result(e, method, statement)
        vmod = self._vmod_for(head, e.pos) if rest else None
        imported = self.vmod_pos.get(head)
        if vmod is not None and imported is not None and imported.file == e.pos.file \
                and (e.pos.line, e.pos.col) < (imported.line, imported.col):
            # VCC reads the file in order: a vmod is known only after its import line.
            raise VCLError(f"Symbol not found: '{name}'", e.pos)
        if vmod is not None:
            func = vmod.functions.get(rest) or vmod.functions.get(rest.lower())
            if func is None:
                obj, _, after = rest.partition(".")
                if obj in vmod.objects and after.partition(".")[0] not in vmod.objects[obj].methods:
                    # the constructor's name, alone or followed by what no method is called
                    if statement:       # VCC stops at the token after the name
                        raise VCLError("Symbol cannot be used here.",
                                       ast.Pos(e.pos.file, e.pos.line, e.pos.col + len(head) + 1 + len(obj)))
                    raise VCLError(f"Symbol '{head}' type (object) can not be used in expression.",
                                   ast.Pos(e.pos.file, e.pos.line, e.pos.col, len(head)))
                if obj in vmod.objects:
                    # vmod.object.method(): VCC finds the class's method, then a '.' it cannot use
                    raise VCLError("Syntax error.While compiling function call:", e.pos)
                raise VCLError(f"Symbol not found: '{name}'", e.pos)
            self._bind_args(e, func)
            e.ref = ("func", head, func)
            if func.restrict is not None:
                self._use("func", name, e.pos, symbols.expand_methods(func.restrict))
            if func.is_async:
                assert self.cur is not None
                self.cur.is_async = True
                self.cur.async_call = self.cur.async_call or e.pos
            return self._func_result(e, func, statement)
        # STRING methods: <string expression>.lower() / .upper()
        base, _, method = name.rpartition(".")
        method = method.lower()
        if (base or e.target is not None) and method in ("lower", "upper") and not e.args:
            if e.target is not None:
                target = self.atom(e.target, "STRING")
            else:
                target = self._name(_base_name(e, base), "STRING")
            if target.type not in ("STRING", "PROBE"):
                # a property of STRING only: VCC has no .lower() on an INT, a TIME or an ACL (a
                # probe's name is a string where one is wanted)
                at = e.pos if e.target is not None else \
                    ast.Pos(e.pos.file, e.pos.line, e.pos.col + len(base) + 1, len(name) - len(base) - 1)
                raise VCLError(f"Unknown property '{name.rpartition('.')[2]}' for type {target.type}", at)
            e.ref = ("strmethod", method)
            e.bound = [self.tostring(target)]
            e.type = "STRING"
            return e
        # BACKEND.resolve(): the backend a director picks now (VRT_DirectorResolve). VCC looks an
        # unknown plain name up whole (`nosuch.resolve` is no symbol).
        known = "." in base or self._declared(base) or base.lower() == "default"
        if (known or e.target is not None) and method == "resolve" and not e.args:
            if e.target is not None:
                target = self.atom(e.target, "BACKEND")
            else:
                target = self._name(_base_name(e, base), "BACKEND")
            if target.type == "BACKEND":
                e.ref = ("resolve",)
                e.bound = [target]
                e.type = "BACKEND"
                return e
        if e.target is not None:
            target = self.atom(e.target, "STRING")
            raise VCLError(f"Unknown property '{method}' for type {_strings(target.type)}", e.pos)
        if base and (self._declared(base) or symbols.lookup(base, self.version, self.storages) is not None):
            # VCC reads the variable, then `.method` as a property of its type
            target = self._name(_base_name(e, base), "STRING")
            at = ast.Pos(e.pos.file, e.pos.line, e.pos.col + len(base) + 1, len(method))
            raise VCLError(f"Unknown property '{name.rpartition('.')[2]}' for type {_strings(target.type)}", at)
        key = name.lower()
        if statement and (key in symbols.VCC_RESERVED or key in symbols.VCC_FUNCS or self._declared(key)):
            # a statement that starts with a symbol no statement starts with: VCC stops after it
            raise VCLError("Symbol cannot be used here.", ast.Pos(e.pos.file, e.pos.line, e.pos.col + len(name)))
        if key in self.subs:
            # VCC finds the sub, then a '(' it cannot use
            raise VCLError(f"Symbol '{key}' can only be used as a SUB expression",
                           ast.Pos(e.pos.file, e.pos.line, e.pos.col + len(name)))
        if not statement and key in symbols.VCC_ACTIONS:
            raise VCLError(f"Symbol '{name}' type (action) can not be used in expression.", e.pos)
        raise VCLError(f"Symbol not found: '{name}'", e.pos)

    def _regsub(self, e: ast.Call) -> ast.Expr:
        """regsub(string, regex, substitution), read as VCC reads it (vcc_Eval_Regsub): each
        argument in turn, then the ',' after it; the third one must be followed by the ')'."""
        bound: list[ast.Expr] = []
        for i, wanted in enumerate(("STRING", "REGEX", "STRING")):
            if i == len(e.args):
                assert e.close_pos is not None       # the parser keeps every call's ')'
                if len(e.commas) < i:
                    # the call closes where VCC wants the ',' before the next argument
                    raise VCLError("Expected ',' got ')'", e.close_pos, _call_note(e, e.close_pos))
                raise VCLError(f"Unknown token ')' when looking for {wanted}", e.close_pos,
                               _call_note(e, e.close_pos))
            arg = e.args[i]
            if arg.name is not None:
                # VCC reads each argument as an expression: `s="b"` starts with an unknown symbol
                raise VCLError(f"Symbol not found: '{arg.name}'", arg.pos)
            if wanted == "REGEX":
                rx = _fold_literal(arg.value)
                if not isinstance(rx, ast.StringLit):
                    raise self._not_a_regex(rx)
                self.regex(rx)
                bound.append(rx)
            else:
                bound.append(self.expr0(arg.value, wanted))
        if len(e.commas) > 2:
            # a fourth argument, or a ',' after the third: VCC wants the ')' there
            raise VCLError("Expected ')' got ','", e.commas[2], _call_note(e, e.commas[2]))
        e.ref = ("regsub", e.name == "regsuball")
        e.bound = bound
        e.type = "STRING"
        return e

    def _declared(self, name: str) -> bool:
        """A name the VCL declares: an acl, backend, probe or sub."""
        key = name.lower()
        return key in self.acls or key in self.backends or key in self.probes or key in self.subs

    def _func_result(self, e: ast.Call, func: Func, statement: bool) -> ast.Expr:
        if func.ret == "VOID" and not statement:
            # VCC has read the name and stops at the '(' that follows it
            raise VCLError("Function returns VOID:", ast.Pos(e.pos.file, e.pos.line, e.pos.col + e.pos.length))
        e.type = func.ret       # no vmod function returns STRANDS or HEADER
        return e

    def _bind_args(self, e: ast.Call, func: Func, note: str = "call") -> None:
        """Arguments to parameters. `note` is what VCC adds to a missing argument's report: the call and
        its place ("call"), the words alone ("bare", an object's constructor) or nothing (a method)."""
        params = func.params
        bound: list[ast.Expr | None] = [None] * len(params)
        positional = [a for a in e.args if a.name is None]
        named = [a for a in e.args if a.name is not None]
        late = next((a for a in e.args[len(positional):] if a.name is None), None)
        if late is not None:
            # VCC reads only named arguments once one was named, then wants the ')'.
            raise _extra_argument(late.value)
        if len(positional) > len(params):
            # VCC stops where it wanted the closing parenthesis.
            raise _extra_argument(positional[len(params)].value)
        for i, arg in enumerate(positional):
            bound[i] = self._arg(arg.value, params[i])
        for arg in named:
            idx = next((i for i, p in enumerate(params) if p.name and p.name == arg.name), None)
            if idx is None:
                raise VCLError(f"Unknown argument '{arg.name}'", arg.pos)
            if bound[idx] is not None:
                raise VCLError(f"Argument '{arg.name}' already used", arg.pos)
            bound[idx] = self._arg(arg.value, params[idx])
        for i, p in enumerate(params):
            if bound[i] is None and not p.optional and p.default is None:
                # an unnamed argument (a bare type in the .vcc) is known by its place
                what = f"'{p.name}'" if p.name else str(i + 1 + func.priv_args)
                assert e.close_pos is not None       # the parser keeps every call's ')'
                # VCC stops at the ')' and names the call it was compiling
                notes = {"call": _call_note(e, e.close_pos),
                         "bare": [("While compiling function call:", None)]}.get(note, [])
                raise VCLError(f"Argument {what} missing", e.close_pos, notes)
        e.bound = bound

    def _arg(self, value: ast.Expr, param) -> ast.Expr:
        ptype = param.type
        if ptype == "ENUM":
            if isinstance(value, ast.Name) and value.written is not None:
                value.name = value.written     # the parser lowered it as a symbol (blob's DEFAULT)
            if not isinstance(_first_node(value), (ast.Name, ast.Call)):
                raise VCLError(f"Expected ID got '{_first_token(value)}'", value.pos)     # VCC wants a word
            if isinstance(value, ast.Name) and value.parens:
                raise VCLError("Expected ID got '('", value.paren_pos)     # VCC stops at the '('
            if not isinstance(value, ast.Name) or value.name not in param.enum:
                choices = "\n".join("\t" + w for w in param.enum)
                raise VCLError(f"Wrong enum value.  Expected one of:\n{choices}", value.pos)
            value.ref = ("enum", value.name)
            return value
        if ptype == "REGEX":
            # a constant, compiled at load like the right side of ~ (vmod cookie's *_re functions)
            rx = _fold_literal(value)
            if not isinstance(rx, ast.StringLit):
                raise self._not_a_regex(rx)
            self.regex(rx)
            return rx
        return self.expr0(value, ptype)     # HEADER and HTTP too: "Expression has type STRING, expected HTTP"


def _call_note(e: ast.Call, stop: ast.Pos) -> list[tuple[str, ast.Pos | None]]:
    """VCC's note on an error where it stopped at `stop` (the ')' or a ',') while reading the
    arguments of call `e`: the call from its name to the token before (the parser's mark)."""
    return [("While compiling function call:", ast.Pos(e.pos.file, e.pos.line, e.pos.col, e.marks[stop]))]


def bad_header(exc: symbols.BadHeaderName, pos: ast.Pos) -> VCLError:
    """A quoted header name refused where the name is at `pos`: at its quoted part, or nowhere."""
    if exc.at is None:
        return VCLError(str(exc))
    return VCLError(str(exc), ast.Pos(pos.file, pos.line, pos.col + exc.at, pos.length - exc.at))


def _base_name(e: ast.Call, base: str) -> ast.Name:
    """The name a method is called on (`req.url` of `req.url.lower()`), at its own place."""
    return ast.Name(ast.Pos(e.pos.file, e.pos.line, e.pos.col, len(base)), base)


def _strings(type_: str | None) -> str:
    """A string expression's type as VCC names it in "Unknown property" (STRINGS)."""
    return "STRINGS" if type_ == "STRING" else str(type_)


def _fold_literal(e: ast.Expr) -> ast.Expr:
    """A regex operand as VCC reads it (vcc_expr5 with REGEX wanted): "a" + "b" + ... is one constant
    string; anything else is one operand, typed by the caller ("Expression has type INT, expected
    REGEX"): a parenthesised expression whole, else the leftmost operand, where VCC stops."""
    if not isinstance(e, ast.Arith):
        return e
    left = _fold_literal(e.left)
    if type(left) is not ast.StringLit:
        return e if e.paren_pos is not None else left
    if e.op != "+":
        return e
    right = e.right
    if type(right) is ast.StringLit and right.paren_pos is None:
        return ast.StringLit(left.pos, left.value + right.value)
    first = right
    while isinstance(first, ast.Arith) and first.paren_pos is None:
        first = first.left          # a product: VCC wants its first operand to be the constant
    method = _literal_method(first, operand=False)
    if method is not None:
        raise method
    if _first_paren(first) is not None:
        raise VCLError("Expected CSTR got '('", _first_paren(first))
    if type(first) is ast.StringLit:
        # `"b" * 2`: VCC has its constant and stops at the operator, with words that depend on what
        # the statement wanted next; the product typed by the caller stands in for them
        return right
    right = _method_target(first)[0]     # `1 .lower()`: VCC stops at the number
    if isinstance(right, ast.Neg):
        text = "-"
    else:   # every other operand the parser makes is a token with its text, or a name
        text = getattr(right, "text", None) or right.name.split(".")[0]
    if isinstance(right, (ast.DurationLit, ast.BytesLit, ast.UnitLit)):
        text = _number_token(text)
    raise VCLError(f"Expected CSTR got '{text}'", right.pos)


def _method_target(e: ast.Expr) -> tuple[ast.Expr, ast.Call | None]:
    """What a chain of methods `x.lower().upper()` is called on, and the first method (None: no method)."""
    first = None
    while isinstance(e, ast.Call) and e.target is not None and e.paren_pos is None:
        e, first = e.target, e
    return e, first


def _first_paren(e: ast.Expr) -> ast.Pos | None:
    """The '(' an operand starts with, if it does: its own, or that of what its methods are called on."""
    return e.paren_pos or _method_target(e)[0].paren_pos


def _literal_method(e: ast.Expr, operand: bool = True) -> VCLError | None:
    """A method called on a constant string where a regex is read (`"a".lower()`; `("a").lower()` as
    the whole operand, not after a '+'): VCC has its REGEX and finds a property of it."""
    target, first = _method_target(e)
    if first is None:
        return None
    if operand and target.paren_pos is not None:
        target = _fold_literal(target)
    elif target.paren_pos is not None:
        return None
    if type(target) is not ast.StringLit:
        return None
    return VCLError(f"Unknown property '{first.name[1:]}' for type REGEX", first.pos)


def _extra_argument(e: ast.Expr) -> VCLError:
    """An argument past the last parameter, or positional after a named one: VCC reads named
    arguments there, so an identifier is an unknown argument name and anything else is no ')'."""
    first = _first_node(e)
    if isinstance(first, ast.Name):
        name = first.written or first.name
    elif isinstance(first, ast.Call) and first.target is None:
        name = first.name
    else:
        return VCLError(f"Expected ')' got '{_first_token(e)}'", e.pos)
    return VCLError(f"Unknown argument '{name.split('.')[0]}'", first.pos)


def _first_node(e: ast.Expr) -> ast.Expr:
    """The leftmost operand of an expression: where its first token comes from."""
    while True:
        if isinstance(e, (ast.Arith, ast.Compare, ast.Match)):
            e = e.left
        elif isinstance(e, ast.BoolOp):
            e = e.operands[0]
        else:
            return e


def _first_token(e: ast.Expr) -> str:
    """The source text of an expression's first token, as VCC quotes it in messages."""
    e = _first_node(e)
    if isinstance(e, ast.StringLit):
        return f'"{e.value}"'
    if isinstance(e, ast.Neg):
        return "-"
    if isinstance(e, ast.Not):
        return "!"
    if isinstance(e, (ast.DurationLit, ast.BytesLit, ast.UnitLit)):
        return _number_token(e.text)
    if isinstance(e, ast.BadToken):
        return e.text[1:-1]                      # kept quoted for "Unknown token '=' ..."
    return getattr(e, "text", None) or "("      # a method called on a parenthesised expression


def _number_token(text: str) -> str:
    """`1s`, `10 KB`: VCC's token is the number; the unit is a token of its own."""
    return text[:len(text) - len(text.lstrip("0123456789."))]
