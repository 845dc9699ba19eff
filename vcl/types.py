"""VCL's value types and the rules for combining them (from Varnish's vcc_expr.c / vcc_types.c)."""

from __future__ import annotations

NUMERIC = frozenset({"INT", "REAL", "DURATION", "BYTES", "TIME"})

# (op, left, right) -> result type, for + and -.
ADDS: dict[tuple[str, str, str], str] = {
    ("+", "BYTES", "BYTES"): "BYTES",
    ("-", "BYTES", "BYTES"): "BYTES",
    ("+", "DURATION", "DURATION"): "DURATION",
    ("-", "DURATION", "DURATION"): "DURATION",
    ("+", "INT", "INT"): "INT",
    ("-", "INT", "INT"): "INT",
    ("+", "INT", "REAL"): "REAL",
    ("-", "INT", "REAL"): "REAL",
    ("+", "REAL", "INT"): "REAL",
    ("-", "REAL", "INT"): "REAL",
    ("+", "REAL", "REAL"): "REAL",
    ("-", "REAL", "REAL"): "REAL",
    ("-", "TIME", "TIME"): "DURATION",
    ("+", "TIME", "DURATION"): "TIME",
    ("-", "TIME", "DURATION"): "TIME",
}
ADD_LEFT = frozenset((op, a) for op, a, _ in ADDS)

# Type of the right operand of * / % given the left one; the result keeps the left type.
MULTYPE = {"INT": "INT", "REAL": "REAL", "DURATION": "REAL", "BYTES": "REAL"}

# Comparison operators each type supports.
ORDERED = frozenset({"==", "!=", "<", ">", "<=", ">="})
EQUALITY = frozenset({"==", "!="})
COMPARABLE: dict[str, frozenset[str]] = {
    "INT": ORDERED, "DURATION": ORDERED, "BYTES": ORDERED, "REAL": ORDERED, "TIME": ORDERED,
    "STRING": ORDERED, "BOOL": EQUALITY, "IP": EQUALITY, "BACKEND": EQUALITY, "ACL": EQUALITY,
    "PROBE": EQUALITY, "STEVEDORE": EQUALITY, "SUB": EQUALITY,
}

# Types with a string form, and the Python template (on {x}) that produces it.
TO_STRING: dict[str, str] = {
    "INT": "rt.s_int({x})",
    "REAL": "rt.s_real({x})",
    "DURATION": "rt.s_real({x})",
    "BYTES": "rt.s_bytes({x})",
    "TIME": "rt.s_time({x})",
    "BOOL": '("true" if {x} else "false")',
    "IP": "rt.s_ip({x})",
    "BACKEND": "rt.s_backend({x})",
    "STEVEDORE": "rt.s_stevedore({x})",
    "BLOB": "rt.s_blob({x})",
    "ACL": "rt.s_named({x})",
    "PROBE": "rt.s_named({x})",
    "ENUM": "{x}",
}

# Types that fold to BOOL in a boolean context, and how.
TO_BOOL: dict[str, str] = {
    "INT": "({x} != 0)",
    "BACKEND": "({x} is not None)",
    "DURATION": "({x} > 0)",
    "STRING": "({x} is not None)",
}

# Literal units: seconds per duration unit, bytes per BYTES unit.
DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0, "y": 31536000.0}
BYTES_UNITS = {"B": 1, "KB": 1024, "MB": 1024 ** 2, "GB": 1024 ** 3, "TB": 1024 ** 4, "PB": 1024 ** 5}

# Vmod parameter types accepted as STRING-ish (all string forms).
STRING_FORMS = frozenset({"STRING", "STRANDS", "STRING_LIST"})
