"""Semantic checks on a parsed VCL program, done where Varnish's VCC does them.

This module holds the driver, the declarations (version, imports, backends, probes, ACLs, subs) and
the statements. Expressions are typed by vcl.exprcheck; per subroutine the checker records every
variable access, return action, restricted statement and vmod call, and vcl.xref then walks the
call graph from each built-in subroutine and reports what that subroutine may not do.
"""

from __future__ import annotations

import ipaddress

from vcl import ast, symbols, types
from vcl.acl import AclMaskError, resolve_acl_entry
from vcl.errors import VCLError
from vcl.exprcheck import IMPLICIT_IMPORTS, ExprChecker, _first_token, bad_header
from vcl.parser import check_vcl_version
from vcl.program import CheckedProgram, SubInfo, Use
from vcl.vss import NoAddress, ResolveError, TooManyAddresses, resolve_backend
from vcl.xref import XrefChecker
from vmods import ObjectType, UnknownVmod, Vmod

BACKEND_FIELDS = {
    "host": "STRING", "port": "STRING", "host_header": "STRING", "path": "STRING",
    "connect_timeout": "DURATION", "first_byte_timeout": "DURATION", "between_bytes_timeout": "DURATION",
    "max_connections": "INT", "probe": "PROBE", "proxy_header": "INT", "preamble": "BLOB",
}
PROBE_FIELDS = {
    "url": "STRING", "request": "STRING", "expected_response": "INT", "timeout": "DURATION",
    "interval": "DURATION", "initial": "INT", "window": "INT", "threshold": "INT",
}


class Checker(ExprChecker, XrefChecker):
    def __init__(self, items: list[object], filename: str, vmod_loader, err_unref: bool = True,
                 storages: tuple[str, ...] = symbols.STORAGE_NAMES,
                 labels: frozenset[str] | None = None) -> None:
        self.items = items
        self.storages = storages
        self.labels = labels
        self.err_unref = err_unref
        self.filename = filename
        self.load_vmod = vmod_loader
        self.version = 4.1
        self.no_version: ast.Pos | None = None     # where the `vcl` line should have been
        self.implicit_import = False                # tinykvm used without its import
        self.warnings: list[str] = []
        self.vmods: dict[str, Vmod] = {}
        self.vmod_pos: dict[str, ast.Pos] = {}
        self.backends: dict[str, ast.Backend] = {}
        self.probes: dict[str, ast.Probe] = {}
        self.acls: dict[str, ast.Acl] = {}
        self.instances: dict[str, ObjectType] = {}
        self.instance_pos: dict[str, ast.Pos] = {}
        self.subs: dict[str, SubInfo] = {}
        self.referenced: set[str] = set()   # "backend:x": the names used somewhere
        self.regexes: dict[str, str] = {}
        self.cur: SubInfo | None = None

    # ------------------------------------------------------------------ driver

    def check(self) -> CheckedProgram:
        try:
            program = self._check()
        except VCLError:
            self._require_version()      # VCC reads the `vcl` line before anything else is wrong
            raise
        self._require_version()
        return program

    def _require_version(self) -> None:
        """No `vcl 4.x;` first: VCC's error, unless the text is a fragment in the tinykvm docs' style
        (it uses tinykvm without importing it, which VCC refuses anyway): that one is read as 4.1."""
        if self.no_version is not None and not self.implicit_import:
            raise VCLError("VCL version declaration missing\nUpdate your VCL to Version 4 syntax, and add\n"
                           "\tvcl 4.1;\non the first line of the VCL files.", self.no_version)

    def _check(self) -> CheckedProgram:
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
            check_vcl_version(first.version, first.pos, first.version_pos or first.pos)
            self.version = float(first.version)
        elif first is not None:
            # vcc_ParseVcl: the first token (after includes are read in) must be `vcl`
            self.no_version = first.pos
            self.warnings.append(f"{base}: no 'vcl 4.1;' line, assuming VCL 4.1")
        reserved_ok = set(symbols.RETURNS) | {i.name for i in self.items if isinstance(i, ast.Sub) and i.builtin}
        names: dict[str, tuple[str, ast.Pos]] = {}

        def declare(kind: str, name: str, pos: ast.Pos) -> str:
            key = name.lower()   # VCC's symbols are case-insensitive
            builtin = symbols.BUILTIN_SYMBOLS.get(key)
            if builtin is not None:
                # VCC's own symbols (acl ban { } in published TYPO3 and API Platform VCL)
                if kind == "subroutine":
                    raise VCLError(f"Symbol '{name}' has wrong type ({builtin}), expected sub:", pos)
                raise VCLError(f"Name {name} must have type '{builtin}'.", pos)
            if key in names:
                # VCC: the same kind again is a redefinition; another kind a clash of names.
                msg = (f"{kind.capitalize()} '{name}' redefined." if names[key][0] == kind
                       else f"Name '{name}' already defined.")
                raise VCLError(msg, pos, [("Previously defined here:", names[key][1])])
            names[key] = (kind, pos)
            return key

        for item in self.items:
            if isinstance(item, ast.VclVersion):
                # VCC accepts more `vcl X.Y;` lines (included files have theirs), none higher
                check_vcl_version(item.version, item.pos, item.version_pos or item.pos)
                if float(item.version) > self.version:
                    raise VCLError(f"VCL version {item.version} higher than the top level version "
                                   f"{self.version:.1f}", item.pos)
                continue
            if isinstance(item, ast.Import):
                self._not_another_symbol(item.name, item.name_pos, "vmod")
                self._import(item.name, item.name_pos)
            elif isinstance(item, ast.Backend):
                self.backends[declare("backend", item.name, item.name_pos)] = item
            elif isinstance(item, ast.Probe):
                self.probes[declare("probe", item.name, item.name_pos)] = item
            elif isinstance(item, ast.Acl):
                self.acls[declare("acl", item.name, item.name_pos)] = item
            elif isinstance(item, ast.Sub):
                if not item.builtin:
                    self._not_another_symbol(item.name, item.name_pos, "sub")
                if item.name.startswith("vcl_") and item.name not in reserved_ok:
                    valid = "\n".join("\t" + m for m in sorted(symbols.METHODS))
                    raise VCLError("The names 'vcl_*' are reserved for subroutines.", item.name_pos,
                                   [("Valid vcl_* subroutines are:\n" + valid, None)])
                info = self.subs.get(item.name)
                if info is None:
                    if item.name in names or item.name.lower() in symbols.BUILTIN_SYMBOLS:
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

    def _not_another_symbol(self, name: str, pos: ast.Pos, wanted: str) -> None:
        """A sub or vmod must not take a name VCC already knows as something else."""
        key = name.lower()
        kind = (symbols.BUILTIN_SYMBOLS.get(key) or ("func" if key in symbols.VCC_FUNCS else None)
                or ("var" if symbols.lookup(name) is not None or symbols.is_variable_prefix(name)
                    else "vmod" if wanted != "vmod" and key in self.vmods else None))
        if kind is not None:
            raise VCLError(f"Symbol '{name}' has wrong type ({kind}), expected {wanted}:", pos)

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
                key = stmt.name.lower()
                if key in self.instances:
                    raise VCLError(f"Instance '{stmt.name}' redefined.", stmt.name_pos)
                if key in self.backends or key in self.acls or key in self.probes:
                    raise VCLError(f"Name '{stmt.name}' already defined.", stmt.name_pos)
                vmod_name, _, obj = stmt.call.name.partition(".")
                vmod = self._vmod_for(vmod_name, stmt.call.pos)
                if vmod is None or obj not in vmod.objects:
                    raise VCLError(f"Symbol not found: '{stmt.call.name}'", stmt.call.pos)
                self.instances[key] = vmod.objects[obj]
                self.instance_pos[key] = stmt.name_pos
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
            self.implicit_import = True
            self.warnings.append(f"{self.filename}: '{name}' used without 'import {name};', importing it")
            return vmod
        return None

    # ------------------------------------------------------------------ uses

    def _use(self, kind: str, name: str, pos: ast.Pos, allowed: frozenset[str] | None) -> None:
        assert self.cur is not None
        self.cur.uses.append(Use(kind, name, pos, allowed))

    def _ref(self, kind: str, name: str) -> None:
        self.referenced.add(f"{kind}:{name}")

    # ------------------------------------------------------------------ statements

    def _body(self, body: list[ast.Stmt], method_body: bool) -> None:
        for stmt in body:
            self._stmt(stmt, method_body)

    def _stmt(self, stmt: ast.Stmt, method_body: bool) -> None:
        if isinstance(stmt, ast.Set):
            self._set(stmt)
        elif isinstance(stmt, ast.Unset):
            var = self._target(stmt.target, stmt.target_pos)
            self._not_a_storage_target(stmt.target, stmt.target_pos, var)
            if var.unset_code is None or not var.unset:
                raise VCLError("Variable cannot be unset.", stmt.target_pos)
            stmt.ref = var
            self._use("unset", var.name, stmt.target_pos, var.unset)
        elif isinstance(stmt, ast.CallSub):
            assert self.cur is not None
            self.cur.calls.append((stmt.name, stmt.name_pos))
            self._ref("sub", stmt.name)
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
            obj = self.instances[stmt.name.lower()]
            self._bind_args(stmt.call, obj.constructor, note="bare")
            stmt.call.ref = ("new", obj)
            stmt.call.type = "INSTANCE"
        elif isinstance(stmt, ast.ExprStmt):
            self._call(stmt.call, statement=True)
        elif isinstance(stmt, ast.Block):
            self._body(stmt.body, method_body)
        else:  # pragma: no cover - the parser makes nothing else
            raise VCLError(f"Unknown statement {type(stmt).__name__}", stmt.pos)

    def _variable(self, name: str, pos: ast.Pos) -> symbols.Variable:
        try:
            var = symbols.lookup(name, self.version, self.storages)
        except symbols.BadHeaderName as exc:
            raise bad_header(exc, pos) from None
        if var is None:
            raise VCLError(f"Symbol not found: '{name}'", pos)
        return var

    @staticmethod
    def _not_a_storage_target(name: str, pos: ast.Pos, var: symbols.Variable) -> None:
        """VCC finds storage.NAME[.field] only where a value is read: set and unset do not see it."""
        if var.name.startswith("storage."):
            raise VCLError(f"Symbol not found: '{name}'", pos)

    def _target(self, name: str, pos: ast.Pos) -> symbols.Variable:
        """What set/unset change: VCC looks the name up as a variable and names what it found instead."""
        try:
            known = symbols.lookup(name, self.version, self.storages) is not None
        except symbols.BadHeaderName:
            known = True                     # a variable's name, badly written: _variable says how
        if not known:
            key = name.lower()
            builtin = symbols.BUILTIN_SYMBOLS.get(key)
            kind = ((builtin if builtin != "var" else None) or ("func" if key in symbols.VCC_FUNCS else None)
                    or ("vmod" if key in self.vmods else None) or self._declared_kind(name))
            if kind is not None:
                raise VCLError(f"Symbol '{name}' has wrong type ({kind}), expected var:", pos)
        return self._variable(name, pos)

    def _declared_kind(self, name: str) -> str | None:
        vmod, _, func = name.partition(".")
        if vmod.lower() in self.vmods and func in self.vmods[vmod.lower()].functions:
            return "func"
        for kind, table in (("acl", self.acls), ("sub", self.subs), ("backend", self.backends),
                            ("probe", self.probes), ("instance", self.instances)):
            if name in table:
                return kind
        return None

    def _set(self, stmt: ast.Set) -> None:
        var = self._target(stmt.target, stmt.target_pos)
        self._not_a_storage_target(stmt.target, stmt.target_pos, var)
        if var.set is None or not var.write:
            method = self.cur.name if self.cur is not None else None
            if var.read and method in symbols.ALL and method not in var.read:
                # VCC looks up a read-only variable as it would for reading it: in a method that
                # may not read it, that is what it reports
                raise VCLError(f"Not available in subroutine '{method}'.", stmt.target_pos)
            # vcc_act_set: a variable no method may read either (bereq.body) "cannot be set"
            raise VCLError("Variable is read only." if var.read else "Variable cannot be set.", stmt.target_pos)
        stmt.ref = var
        self._use("write", var.name, stmt.target_pos, var.write)
        vtype = var.type
        if stmt.op in ("==", "%="):
            # VCC's lexer reads "==" as one token, "%=" as '%' then '='
            raise VCLError(f"Expected '=' got '{stmt.op.rstrip('=') or stmt.op}'", stmt.op_pos or stmt.target_pos)
        if vtype in ("HEADER", "BODY", "STRING"):
            if stmt.op not in ("=", "+="):
                raise VCLError(f"Expected '=' got '{stmt.op}'", stmt.op_pos or stmt.target_pos)
            if vtype == "BODY" and isinstance(stmt.value, ast.Neg):
                raise VCLError("Unknown token '-' when looking for BODY", stmt.value.pos)
            try:
                stmt.value = self.expr0(stmt.value, "STRING")
            except VCLError as exc:
                if vtype == "BODY" and exc.message.endswith(" when looking for STRING"):
                    exc.message = exc.message[:-len("STRING")] + "BODY"    # VCC names what it wanted
                raise
            return
        if stmt.op == "=":
            stmt.value = self.expr0(stmt.value, vtype)
            return
        if vtype not in ("INT", "REAL", "DURATION", "BYTES") or (vtype == "BYTES" and stmt.op in ("*=", "/=")):
            # VCC's set has no such operator for the type: it wanted a plain '='
            raise VCLError(f"Expected '=' got '{stmt.op}'", stmt.op_pos or stmt.target_pos)
        if stmt.op in ("*=", "/="):
            stmt.value = self.expr0(stmt.value, types.MULTYPE[vtype])
        else:
            stmt.value = self.expr0(stmt.value, vtype)

    def _kind_of(self, name: str) -> str | None:
        """The kind of a declared symbol called `name` (as VCC's error messages name it), if any."""
        if name in self.subs:
            return "sub"
        for kind, table in (("backend", self.backends), ("probe", self.probes), ("acl", self.acls)):
            if name.lower() in table:
                return kind
        if name in self.instances:
            return "instance"
        return None

    def _return(self, stmt: ast.Return, method_body: bool) -> None:
        if stmt.action is None:
            if method_body:
                raise VCLError("Expected '(' got ';'", stmt.action_pos or stmt.pos)
            return
        name = stmt.action
        if name not in symbols.ACTIONS:
            raise VCLError("Expected return action name.", stmt.action_pos)
        spec = symbols.ACTION_ARGS.get(name, ())
        # vcc_act_return's words: an action that takes no arguments, one that needs them, empty ()
        # (at the token after the name, its '(' or ')': where it is when nothing stands between)
        at = stmt.action_pos
        after = ast.Pos(at.file, at.line, at.col + len(name), 1)
        if stmt.parens and not spec:
            raise VCLError("Arguments not allowed.", after)
        if stmt.parens and not stmt.args:
            raise VCLError(f"Unknown token ')' when looking for {spec[0][0]}",
                           ast.Pos(at.file, at.line, at.col + len(name) + 1, 1))
        if len(stmt.args) > len(spec):
            extra = stmt.args[len(spec)].pos
            raise VCLError("Expected ')' got ','", ast.Pos(extra.file, extra.line, extra.col - 1, 1))
        for i, (atype, optional) in enumerate(spec):
            if i >= len(stmt.args):
                if not optional:
                    raise VCLError("Missing argument.", after)
                continue
            arg = stmt.args[i]
            if arg.name is not None:
                raise VCLError("Named arguments are not allowed in return actions", arg.pos)
            if atype == "VCL":
                if not isinstance(arg.value, ast.Name):
                    raise VCLError("Expected a VCL label name", arg.pos)
                label = arg.value.name
                if self.labels is None or label not in self.labels:
                    kind = self._kind_of(label)
                    if kind is not None:
                        # VCC 4.1 finds the symbol and names its type; 4.0's vcl() sees labels only
                        if self.version >= 4.1:
                            raise VCLError(f"Symbol '{label}' has wrong type ({kind}), expected vcl:",
                                           arg.value.pos)
                        raise VCLError(f"Symbol not found: '{label}'", arg.value.pos)
                if self.labels is not None and label not in self.labels:
                    raise VCLError(f"Symbol not found: '{label}'", arg.value.pos)
                arg.value.type = "VCL"
                continue
            arg.value = self.expr0(arg.value, atype)
        self._use("return", name, stmt.action_pos, None)

    # ------------------------------------------------------------------ declarations

    def _check_probes_backends(self) -> None:
        for probe in self.probes.values():
            self._probe_attrs(probe.attrs)
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
                        self._probe_attrs(attr.value)
                        continue
                    if isinstance(attr.value, list) and not attr.value:
                        continue
                    if not isinstance(attr.value, ast.Name):
                        raise VCLError(f"Expected '{{' or name of probe, got '{_first_token(attr.value)}' at",
                                       attr.value.pos)
                    probe = self.probes.get(attr.value.name.lower())
                    if probe is None or _before(backend.pos, probe.pos):
                        # VCC reads declarations in order: the probe must come first.
                        raise VCLError(f"Symbol not found: '{attr.value.name}'", attr.value.pos)
                    self._ref("probe", attr.value.name.lower())
                    attr.value.type = "PROBE"
                    attr.value.ref = ("probe", attr.value.name.lower())
                    continue
                if attr.name in ("host", "path") and {"host", "path"} <= seen:
                    raise VCLError("Address redefinition at:", attr.pos)
                attr.value = self._const_attr(attr, BACKEND_FIELDS[attr.name])
                value = _const_value(attr.value)
                if attr.name == "path" and not str(value).startswith("/"):
                    raise VCLError("Backend path: Must be an absolute path:", attr.value.pos)
                if attr.name == "proxy_header" and value not in (1, 2):
                    raise VCLError(".proxy_header must be 1 or 2", attr.value.pos)
            if "host" not in seen and "path" not in seen:
                raise VCLError("Expected .host or .path.", backend.name_pos)
            if "host" in seen:
                self._resolve_backend(backend)

    @staticmethod
    def _resolve_backend(backend: ast.Backend) -> None:
        """VCC resolves .host (and .port) when it compiles; the backend keeps the address it found."""
        fields = {a.name: a.value for a in backend.attrs or ()}
        host = fields["host"]
        port = fields.get("port")
        token = f'"{host.value}"'
        try:
            backend.resolved = resolve_backend(host.value, None if port is None else str(port.value))
            return
        except ResolveError as exc:
            msg = (f"Backend host '{token}' could not be resolved to an IP address:\n\t{exc}\n"
                   "(Sorry if that error message is gibberish.)")
        except NoAddress:
            msg = f"Backend host '{token}': resolves to neither IPv4 nor IPv6 addresses."
        except TooManyAddresses as exc:
            msg = ("Backend host " + token + ": resolves to too many addresses.\n"
                   "Only one IPv4 and one IPv6 are allowed.\n"
                   "Please specify which exact address you want to use, we found all of these:\n"
                   + exc.found.rstrip("\n"))
        raise VCLError(msg, host.pos, notes=[("In backend specification starting at:", backend.pos)])

    def _probe_attrs(self, attrs: list[ast.Attr]) -> None:
        seen: set[str] = set()
        for attr in attrs:
            # .url and .request both say what to send: only one of them (VCC: "redefinition").
            key = "request" if attr.name == "url" else attr.name
            if key in seen:
                what = "request" if key == "request" else f"field '{attr.name}'"
                raise VCLError(f"Probe {what} redefinition at:", attr.pos)
            seen.add(key)
            self._probe_attr(attr)
        self._probe_window(attrs)

    @staticmethod
    def _probe_window(attrs: list[ast.Attr]) -> None:
        """vcc_ParseProbeSpec's checks of .window and .threshold (the implied window is written in
        by the code generator)."""
        fields = {a.name: a.value for a in attrs}
        window, threshold = fields.get("window"), fields.get("threshold")
        if window is None and threshold is None:
            return
        if threshold is None:
            raise VCLError("Must specify .threshold with .window", window.pos)
        if window is None:
            if threshold.value > 64:
                raise VCLError("Threshold must be 64 or less.", threshold.pos)
            return
        if window.value > 64:
            raise VCLError("Window must be 64 or less.", window.pos)
        if threshold.value > window.value:
            raise VCLError("Threshold can not be greater than window.", threshold.pos)

    def _probe_attr(self, attr: ast.Attr) -> None:
        if attr.name not in PROBE_FIELDS:
            fields = ", ".join("." + f for f in PROBE_FIELDS)
            raise VCLError(f"Unknown field: '{attr.name}', expected one of {fields}", attr.pos)
        if attr.name == "request" and isinstance(attr.value, list):
            for s in attr.value:
                s.type = "STRING"
            return
        attr.value = self._const_attr(attr, PROBE_FIELDS[attr.name])
        if attr.name == "expected_response" and not 100 <= _const_value(attr.value) <= 999:
            raise VCLError("Must specify .expected_response with exactly three digits (100 <= x <= 999)",
                           attr.value.pos)

    def _const_attr(self, attr: ast.Attr, ftype: str) -> ast.Expr:
        """A backend or probe field: VCC reads tokens here, not expressions (vcc_backend.c): a
        CSTR, an unsigned CNUM (vcc_UintVal) or a number and a unit token (vcc_Duration)."""
        value = attr.value
        if not isinstance(value, ast.Expr):
            raise VCLError(f"Expected a {ftype} value for .{attr.name}", attr.pos)
        if ftype == "STRING" and not isinstance(value, ast.StringLit):
            first = value
            while isinstance(first, ast.Arith) and isinstance(first.left, ast.Arith):
                first = first.left
            if isinstance(first, ast.Arith) and isinstance(first.left, ast.StringLit):
                # VCC took the string and wanted the ';' where the operator is
                raise VCLError(f"Expected ';' got '{first.op}'", first.op_pos or first.pos)
            if isinstance(first, ast.Arith):
                first = first.left
            got = first.text if isinstance(first, ast.BadToken) else f"'{_token_text(first)}'"   # (quoted)
            raise VCLError(f"Expected CSTR got {got}", first.pos)
        if isinstance(value, ast.Neg):
            raise VCLError("Expected CNUM got '-'", value.pos)   # VCC reads an unsigned number here
        if isinstance(value, ast.StringLit) and ftype != "STRING":
            raise VCLError(f"Expected CNUM got '\"{value.value}\"'", value.pos)
        if ftype == "INT":
            self._uint_token(value)
        elif ftype == "DURATION":
            self._duration_tokens(value)
        literal = (ast.StringLit, ast.IntLit, ast.RealLit, ast.DurationLit, ast.BytesLit, ast.UnitLit, ast.BlobLit)
        if not isinstance(value, literal):
            raise VCLError(f"Expected a constant {ftype} for .{attr.name}", value.pos)
        saved, self.cur = self.cur, SubInfo("<decl>", [])
        try:
            return self.expr0(value, ftype)
        finally:
            self.cur = saved

    @staticmethod
    def _uint_token(value: ast.Expr) -> None:
        """vcc_UintVal: a CNUM, then the field's ';'."""
        if isinstance(value, ast.RealLit):
            raise VCLError(f"Expected CNUM got '{value.text}'", value.pos)
        if isinstance(value, ast.UnitLit):
            raise VCLError(f"Expected ';' got '{value.unit}'", value.unit_pos)
        if isinstance(value, (ast.DurationLit, ast.BytesLit)):   # `3s`: a CNUM and an ID to VCC
            number = value.text.rstrip("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
            if "." in number:
                raise VCLError(f"Expected CNUM got '{number}'", value.pos)
            unit = value.text[len(number):]
            raise VCLError(f"Expected ';' got '{unit}'",
                           ast.Pos(value.pos.file, value.pos.line, value.pos.col + len(number), len(unit)))

    @staticmethod
    def _duration_tokens(value: ast.Expr) -> None:
        """vcc_Duration: a number, then its unit, an ID."""
        if isinstance(value, (ast.IntLit, ast.RealLit)):
            # the token after the number; a field's value is followed by its ';'
            at = ast.Pos(value.pos.file, value.pos.line, value.pos.col + len(value.text), 1)
            raise VCLError("Expected ID got ';'", at)
        if isinstance(value, ast.UnitLit) and value.unit.startswith('"'):
            raise VCLError(f"Expected ID got '{value.unit}'", value.unit_pos)

    def _acl_networks(self, acl: ast.Acl) -> list[tuple[bool, str, str]]:
        """(negated, "address/prefix", how a +log record names the entry) per network."""
        nets: list[tuple[bool, str, str]] = []
        pedantic = "-pedantic" not in acl.flags
        seen: dict[ipaddress.IPv4Network | ipaddress.IPv6Network, ast.AclEntry] = {}
        for entry in acl.entries:
            addr, mask = entry.addr, entry.mask
            if "/" in addr:
                # The mask may be written inside the string ("10.0.0.0/8"), but only once.
                addr, _, text = addr.partition("/")
                if not text.isdigit():
                    raise VCLError(".../mask is not numeric.", entry.addr_pos or entry.pos)
                if mask is not None:
                    raise VCLError("/mask only allowed once.", entry.slash_pos or entry.pos)
                mask = int(text)
            try:
                resolved = resolve_acl_entry(addr, mask)
            except LookupError as exc:
                if entry.optional:
                    continue
                raise VCLError(str(exc), entry.addr_pos or entry.pos) from None
            except AclMaskError as exc:
                raise VCLError(str(exc), entry.mask_pos or entry.addr_pos or entry.pos) from None
            if pedantic and mask is not None:
                for net in resolved:
                    addr, _, prefix = net.partition("/")
                    if ipaddress.ip_network(net, strict=False).network_address != ipaddress.ip_address(addr):
                        fixed = ipaddress.ip_network(net, strict=False)
                        raise VCLError(f"Non-zero bits in masked part, (maybe use {fixed} ?)",
                                       entry.addr_pos or entry.pos)
            for net in resolved:
                # VCC keeps one entry per network: the same network with the other sign is an error.
                key = ipaddress.ip_network(net, strict=False)
                prev = seen.get(key)
                if prev is not None and prev.negated != entry.negated:
                    raise VCLError("Conflicting ACL entries:", prev.addr_pos or prev.pos,
                                   [("vs:", entry.addr_pos or entry.pos)])
                seen.setdefault(key, entry)
                # As VCC writes it into VCL_acl: the address as written, a separate /mask, and what
                # a mask with host bits was fixed to
                shown = f'"{addr}"' + (f"/{mask}" if entry.mask is not None else "")
                if entry.mask is not None and key.network_address != ipaddress.ip_address(net.partition("/")[0]):
                    shown += f" fixed: {key}"
                nets.append((entry.negated, net, shown))
        return nets



def check(items: list[object], filename: str, vmod_loader, err_unref: bool = True,
          storages: tuple[str, ...] = symbols.STORAGE_NAMES,
          labels: frozenset[str] | None = None) -> CheckedProgram:
    return Checker(items, filename, vmod_loader, err_unref, storages, labels).check()


def _token_text(e: ast.Expr) -> str:
    return getattr(e, "text", None) or getattr(e, "name", None) or type(e).__name__


def _before(a: ast.Pos, b: ast.Pos) -> bool:
    """a comes before b in the same file (declarations in different files are in include order)."""
    return a.file == b.file and (a.line, a.col) < (b.line, b.col)


def _const_value(e: ast.Expr) -> object:
    """The value of a checked constant declaration field (a literal)."""
    for name in ("value", "seconds"):
        if hasattr(e, name):
            return getattr(e, name)
    return None
