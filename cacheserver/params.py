"""Run-time parameters, named, defaulted, parsed, range-checked and shown as varnishd 7.1's.

`-p name=value` and `param.set` take what varnishd takes and refuse what it refuses, with its
messages; `param.show` prints values the way varnishd formats them (durations "%.3f", bytes as
"48k"/"1.50k"/"1000b", bits as "+a,+b"). The facts are in param_table.py.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

from cacheserver.param_table import TABLE
from cacheserver.vsl import TAGS

_BYTES_UNITS = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40, "p": 1 << 50}
_DURATION_UNITS = {"": 1.0, "ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0,
                   "y": 31536000.0}
UINT_MAX = 4294967295


def parse_bytes(text: str) -> int:
    """A size with an optional unit ("1k", "2m", "1.5k"), as -s malloc,SIZE takes it."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([bkmgt]?)b?\s*", text, re.IGNORECASE)
    if not m:
        raise ValueError(f"Invalid number of bytes: {text!r}")
    return int(float(m.group(1)) * _BYTES_UNITS[m.group(2).lower()])


def parse_duration(text: str) -> float:
    """A VCL-style duration ("2m", "100ms"): what ban expressions on obj.ttl take."""
    m = re.fullmatch(r"\s*(-?(?:\d+(?:\.\d*)?|\.\d+))\s*(ms|s|m|h|d|w|y)?\s*", text)
    if not m:
        raise ValueError(f"Invalid duration: {text!r}")
    return float(m.group(1)) * _DURATION_UNITS[m.group(2) or ""]


# ---- varnishd's parameter parsers (mgt_param_tweak.c, vnum.c), each raising ValueError(message) -

DECIMAL_MAX = 999999999999.999      # VRT_DECIMAL_MAX: 12 integer digits, 3 decimals
_DECIMAL = re.compile(r"[ \t\n\r\f\v]*(-?)([0-9]*)(?:\.([0-9]*))?")


def _decimal(whole: str, frac: str | None) -> float:
    """The value of digits before and after a '.', the decimals after the third dropped."""
    return int(whole or "0") + int((frac or "")[:3].ljust(3, "0")) / 1000


def param_double(text: str) -> float:
    """varnishd 7.1's decimal: an optional '-', at most 15 integer digits, decimals after the
    third dropped, whatever follows ignored ("1m" is 1 second); beyond 12 integer digits is
    "Too many digits"."""
    m = _DECIMAL.match(text)
    sign, whole, frac = m.group(1), m.group(2), m.group(3)
    if not whole and not frac:
        raise ValueError(f"Invalid number ({text})")
    if len(whole) > 15:
        raise ValueError(f"Too many digits ({text})")
    value = _decimal(whole, frac)
    if value > DECIMAL_MAX:
        raise ValueError(f"Too many digits ({text})")
    return -value if sign else value


ULONG_MAX = (1 << 64) - 1


def strtoul(text: str) -> tuple[int, str]:
    """strtoul(3) with base 0: (value, what it did not read). 0x hex, 0 octal, else decimal; a
    '-' negates modulo 2**64; too large is ULONG_MAX. Nothing read leaves the whole text."""
    s = text.lstrip(" \t\n\r\f\v")
    neg = s[:1] == "-"
    body = s[1:] if s[:1] in "+-" else s
    base, start = 10, 0
    if body[:2].lower() == "0x" and body[2:3] and body[2:3] in "0123456789abcdefABCDEF":
        base, start = 16, 2
    elif body[:1] == "0":
        base = 8
    end = start
    while end < len(body) and body[end] in "0123456789abcdefABCDEF"[:base + (6 if base == 16 else 0)]:
        end += 1
    if end == start:
        return 0, text
    value = int(body[start:end], base)
    if value > ULONG_MAX:
        value = ULONG_MAX
    elif neg:
        value = (-value) & ULONG_MAX
    return value, body[end:]


def param_uint(text: str) -> int:
    """An unsigned int as varnishd reads it: strtoul with nothing left over, kept in 32 bits
    (99999999999999 is 276447231); "unlimited" is UINT_MAX."""
    if text.lower() == "unlimited":
        return UINT_MAX
    value, rest = strtoul(text)
    if not text or rest:
        raise ValueError(f"Not a number ({text})")
    return value & UINT_MAX


_BYTES = re.compile(r"[ \t\n\r\f\v]*([0-9]*)(?:\.([0-9]*))?\s*(.*?)\s*")


def param_bytes(text: str) -> int:
    """VNUM_2bytes: a number (at most 15 integer digits and 3 decimals) and an optional
    [KMGTP][B] unit; a fraction of a byte is refused."""
    m = _BYTES.fullmatch(text)
    whole, frac, unit = m.group(1), m.group(2), m.group(3).lower()
    if unit.endswith("b") and len(unit) == 2:
        unit = unit[0]
    if not whole and not frac:
        err = "Invalid number"
    elif len(whole) > 15 or len(frac or "") > 3:
        err = "Too many digits"
    elif unit not in _BYTES_UNITS:
        err = "Unknown BYTES unit of measurement ([KMGTP][B])"
    else:
        value = _decimal(whole, frac) * _BYTES_UNITS[unit]
        if value != int(value) and _BYTES_UNITS[unit] == 1:
            err = "Fractional BYTES not allowed"
        else:
            return int(value + 0.5)
    raise ValueError(f"Could not convert to bytes.\n{err}\n  Try something like '80k' or '120M'")


def param_bool(text: str) -> bool:
    word = text.strip().lower()
    if word in ("on", "true", "yes", "enable"):
        return True
    if word in ("off", "false", "no", "disable"):
        return False
    raise ValueError('use "on" or "off"')


def parse_pool(text: str) -> tuple[int, int, float]:
    """A mempool parameter: "min_pool,max_pool,max_age" (commas or blanks between; more fields are
    ignored, as varnishd does); max_age from 0 to 1000000."""
    fields = [f for f in re.split(r"[,\s]+", text) if f]
    if len(fields) < 3:
        raise ValueError("Three fields required: min_pool, max_pool and max_age")
    low, high, age = param_uint(fields[0]), param_uint(fields[1]), param_double(fields[2])
    if age < 0:
        raise ValueError("Must be greater or equal to 0")
    if age > 1000000:
        raise ValueError("Must be less than or equal to 1000000")
    if low > high:
        raise ValueError("min_pool cannot be larger than max_pool")
    return low, high, age


def format_bytes(n: int) -> str:
    """varnishd's byte formatting: "48k", "1.50k", "0.25G", "1000b" (exact in every unit it uses)."""
    if n == 0 or n & 0xff:
        return f"{n}b"
    for unit in "kMGTPEZY":
        if n & 0x300:
            return f"{n / 1024:.2f}{unit}"
        n //= 1024
        if n & 0xff:
            return f"{n}{unit}"
    return f"{n}Y"


@dataclass(frozen=True, slots=True)
class ParamDef:
    name: str
    kind: str          # duration, real, uint, bytes, bool, pool, bits, string, na (not on this platform)
    default: str       # as param.show prints it
    doc: str
    minimum: float | None = None
    maximum: float | None = None
    units: str = ""
    flags: tuple[str, ...] = ()
    min_text: str | None = None   # as varnishd prints the bound (may name another parameter)
    max_text: str | None = None

    def bits(self) -> list[str]:
        """The named bits of a bits parameter (debug, feature, experimental), in varnishd's order."""
        names = re.findall(r"^\t(\S+)\t", self.doc, re.MULTILINE)
        return [n for n in names if n not in ("none", "default")]


# Ours: parameters varnishd does not have.
EXTRA = [
    ParamDef("tinykvm_on_connect_timeout", "duration", "5.000",
             "How long a tinykvm program may take to accept a stolen connection.", 0.0, None, "seconds",
             (), "0.000", None),
    ParamDef("prometheus_listen", "string", "",
             "ADDR:PORT to serve the counters at /metrics in Prometheus text format (empty: off).", None, None,
             "", (), None, None),
]

# Bounds that follow another parameter (mgt_pool.c, mgt_param_vsl.c).
_LINKED = {
    "thread_pool_max": ("thread_pool_min", None),
    "thread_pool_min": (None, "thread_pool_max"),
    "thread_pool_reserve": (None, "thread_pool_min"),
    "vsl_buffer": ("vsl_reclen", None),
    "vsl_reclen": (None, "vsl_buffer"),
}
# Why a linked bound is what it is, as varnishd's message adds it.
_BOUND_REASON = {"thread_pool_max": "thread_pool_min", "thread_pool_min": "thread_pool_max",
                 "thread_pool_reserve": "95% of thread_pool_min"}

# Byte parameters varnishd keeps in an unsigned int (tweak_bytes_u): a value past 4G that passes the
# range check is stored modulo 2**32.
BYTES_U = frozenset({"gzip_buffer", "h2_header_table_size", "h2_max_header_list_size", "http_req_hdr_len",
                     "http_req_size", "http_resp_hdr_len", "http_resp_size", "vsl_buffer", "vsl_reclen",
                     "workspace_backend", "workspace_client", "workspace_session", "workspace_thread"})


def _bound(kind: str, text: str | None) -> float | None:
    if text is None or not text[:1].isdigit():
        return None
    if kind == "bytes":
        return float(param_bytes(text))
    return float(param_double(text))


def _all_definitions() -> list[ParamDef]:
    out = []
    for name, kind, units, default, minimum, maximum, flags, doc in TABLE:
        out.append(ParamDef(name, kind, default, doc, _bound(kind, minimum), _bound(kind, maximum), units,
                            flags, minimum, maximum))
    return out + EXTRA


_PARSERS: dict[str, Callable[[str], object]] = {
    "bytes": param_bytes, "duration": param_double, "real": param_double, "bool": param_bool,
    "uint": param_uint, "string": str, "pool": parse_pool,
}


class Params:
    """Current values, readable as attributes on the hot path (params.default_ttl)."""

    def __init__(self) -> None:
        self._defs = {d.name: d for d in _all_definitions()}
        self._text: dict[str, str] = {}
        self.generation = 0       # changes with every set: what was worked out from the values is stale
        for d in self._defs.values():
            if d.kind == "na":
                continue
            self._text[d.name] = d.default
            setattr(self, d.name, d.default if d.kind == "bits" else _PARSERS[d.kind](d.default))

    def set(self, name: str, text: str) -> None:
        """Set parameter `name` from its text form; ValueError with varnishd's message if bad."""
        d = self._defs.get(name)
        if d is None:
            raise ValueError(f"Unknown parameter \"{name}\".")
        if d.kind == "na":
            raise NotAvailable(f"parameter \"{name}\" is not available on this platform.")
        if d.kind == "bits":
            shown = self._set_bits(d, text)
            self._text[name] = shown
            setattr(self, name, shown)
            self.generation += 1
            return
        if d.kind == "uint" and not text:
            # varnishd tests for an empty value while it reads the bounds
            low_text, high_text = self.limits(d)[2:]
            if low_text is not None:
                raise ValueError(f"Illegal Min: {low_text}")
            if high_text is not None:
                raise ValueError(f"Illegal Max: {high_text}")
        value = _PARSERS[d.kind](text)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            self._check_range(d, value)
            if name in BYTES_U:
                value = int(value) & UINT_MAX
        self._text[name] = self.format(d, value)
        setattr(self, name, value)
        self.generation += 1

    def limits(self, d: ParamDef) -> tuple[float | None, float | None, str | None, str | None]:
        """(minimum, maximum, as param.show prints them); some follow another parameter's value."""
        low, high = d.minimum, d.maximum
        low_text, high_text = d.min_text, d.max_text
        link_low, link_high = _LINKED.get(d.name, (None, None))
        if link_low:
            low = getattr(self, link_low) + (12 if d.name == "vsl_buffer" else 0)
            low_text = str(low)
        if link_high:
            other = getattr(self, link_high)
            high = other * 95 // 100 if d.name == "thread_pool_reserve" else \
                other - 12 if d.name == "vsl_reclen" else other
            high_text = str(high)
        return low, high, low_text, high_text

    def _check_range(self, d: ParamDef, value: float) -> None:
        low, high, low_text, high_text = self.limits(d)
        link_low, link_high = _LINKED.get(d.name, (None, None))
        suffix = f" ({_BOUND_REASON[d.name]})" if d.name in _BOUND_REASON else ""
        if d.kind in ("duration", "real"):
            if low is not None and value < low:
                raise ValueError(f"Must be greater or equal to {low_text}")
            if high is not None and value > high:
                raise ValueError(f"Must be less than or equal to {high_text}")
            return
        if low is not None and value < low:
            raise ValueError(f"Must be at least {low_text}{suffix if link_low else ''}")
        if high is not None and value > high:
            # tweak_generic_bytes ends this one with an empty line
            blank = "\n" if d.kind == "bytes" else ""
            raise ValueError(f"Must be no more than {high_text}{suffix if link_high else ''}{blank}")

    def _set_bits(self, d: ParamDef, text: str) -> str:
        """debug/feature/experimental/vsl_mask: "none" (not for vsl_mask) or "default" alone, else
        +bit/-bit items applied in turn to the current value; as varnishd, items before a bad one stay
        applied. Names are matched without regard to case and kept in varnishd's spelling."""
        masks = d.name == "vsl_mask"        # vsl_mask lists the tags it masks, as "-Tag"
        known = list(TAGS) if masks else d.bits()
        by_lower = {b.lower(): b for b in known}
        word = text.strip()
        if not word:
            return self._text.get(d.name, d.default)      # no items: nothing changes
        if (word == "none" and not masks) or (word == "default" and d.name in ("feature", "vsl_mask")):
            source = "" if word == "none" else d.default
            current = [b[1:] for b in source.split(",") if b[:1] and b[0] in "+-"]
            return self._bits_text(d, current, known)
        current = [b[1:] for b in self._text.get(d.name, d.default).split(",") if b[:1] and b[0] in "+-"]
        if text.count('"') % 2:
            raise ValueError("Cannot parse: Missing '\"'")
        for item in text.split(","):
            item = item.strip()
            if not item or item[0] not in "+-":
                self._keep_bits(d, current, known)
                raise ValueError(f"Missing '+' or '-' ({item})")
            bit = by_lower.get(item[1:].lower())
            if bit is None:
                self._keep_bits(d, current, known)
                raise ValueError(f"Unknown VSL tag ({item})" if masks else f"Unknown {d.name} bit ({item})")
            on = (item[0] == "-") if masks else (item[0] == "+")
            if on and bit not in current:
                current.append(bit)
            elif not on and bit in current:
                current.remove(bit)
        return self._bits_text(d, current, known)

    def _keep_bits(self, d: ParamDef, current: list[str], known: list[str]) -> None:
        shown = self._bits_text(d, current, known)
        self._text[d.name] = shown
        setattr(self, d.name, shown)

    @staticmethod
    def _bits_text(d: ParamDef, current: list[str], known: list[str]) -> str:
        current = sorted(current, key=known.index)      # varnishd shows bits in its table's order
        if d.name == "vsl_mask":
            return ",".join(f"-{b}" for b in current) or "none"
        return ",".join(f"+{b}" for b in current) or "none"

    def format(self, d: ParamDef, value: object) -> str:
        """A value as param.show prints it (without units)."""
        if d.kind == "duration":
            # varnishd keeps what it parsed; %.3f of it (truncated, as its output shows)
            return f"{int(value * 1000) / 1000:.3f}" if value >= 0 else f"{value:.3f}"  # type: ignore[operator]
        if d.kind == "real":
            return f"{value:g}"
        if d.kind == "uint":
            return "unlimited" if value == UINT_MAX else str(value)
        if d.kind == "bytes":
            return format_bytes(int(value))  # type: ignore[call-overload]
        if d.kind == "bool":
            return "on" if value else "off"
        if d.kind == "pool":
            low, high, age = value  # type: ignore[misc]
            return f"{low},{high},{age:g}"
        return str(value)

    def reset(self, name: str) -> None:
        d = self._defs.get(name)
        if d is None:
            raise ValueError(f"Unknown parameter \"{name}\".")
        if d.kind == "bits":
            self._text[name] = d.default
            setattr(self, name, d.default)
            self.generation += 1
            return
        self.set(name, d.default)

    def get(self, name: str) -> object:
        if name not in self._defs or self._defs[name].kind == "na":
            raise KeyError(name)
        return getattr(self, name)

    def definition(self, name: str) -> ParamDef | None:
        return self._defs.get(name)

    def definitions(self) -> list[ParamDef]:
        return list(self._defs.values())

    def text(self, name: str) -> str:
        """The current value as param.show prints it."""
        return self._text[name]

    def is_default(self, name: str) -> bool:
        return self._text.get(name) == self._defs[name].default


class NotAvailable(ValueError):
    """A parameter varnishd has but not on this platform (accept_filter on Linux): CLI status 300."""
