"""Run-time parameters, named and defaulted as varnishd's (`-p name=value`, `param.set`)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

_BYTES_UNITS = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
_DURATION_UNITS = {"": 1.0, "ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0,
                   "y": 31536000.0}


def parse_bytes(text: str) -> int:
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([bkmgt]?)b?\s*", text, re.IGNORECASE)
    if not m:
        raise ValueError(f"Invalid number of bytes: {text!r}")
    return int(float(m.group(1)) * _BYTES_UNITS[m.group(2).lower()])


def parse_duration(text: str) -> float:
    m = re.fullmatch(r"\s*(-?(?:\d+(?:\.\d*)?|\.\d+))\s*(ms|s|m|h|d|w|y)?\s*", text)
    if not m:
        raise ValueError(f"Invalid duration: {text!r}")
    return float(m.group(1)) * _DURATION_UNITS[m.group(2) or ""]


def parse_bool(text: str) -> bool:
    word = text.strip().lower()
    if word in ("on", "true", "yes", "enable", "1"):
        return True
    if word in ("off", "false", "no", "disable", "0"):
        return False
    raise ValueError(f"use \"on\" or \"off\", not {text!r}")


def parse_uint(text: str) -> int:
    value = int(text.strip())
    if value < 0:
        raise ValueError(f"Must be at least 0: {text!r}")
    return value


def parse_pool(text: str) -> tuple[int, int, float]:
    """A mempool parameter: "min_pool,max_pool,max_age"."""
    parts = text.split(",")
    if len(parts) != 3:
        raise ValueError("Three fields required: min_pool, max_pool and max_age")
    try:
        low, high, age = int(parts[0]), int(parts[1]), float(parts[2])
    except ValueError:
        raise ValueError(f"Invalid number in {text!r}") from None
    if low > high:
        raise ValueError("min_pool must be no more than max_pool")
    return low, high, age


_PARSERS: dict[str, Callable[[str], object]] = {
    "bytes": parse_bytes, "duration": parse_duration, "bool": parse_bool, "uint": parse_uint,
    "string": str, "real": float, "pool": parse_pool,
}


@dataclass(frozen=True, slots=True)
class ParamDef:
    name: str
    kind: str          # bytes, duration, bool, uint, string
    default: str
    doc: str
    minimum: float | None = None
    maximum: float | None = None
    units: str = ""


# The parameters the server acts on, with varnishd 7.1's defaults.
DEFINITIONS = [
    ParamDef("default_ttl", "duration", "120", "TTL of objects whose backend response sets none."),
    ParamDef("default_grace", "duration", "10", "Grace of objects whose backend response sets none."),
    ParamDef("default_keep", "duration", "0", "Keep time of objects, for conditional revalidation."),
    ParamDef("shortlived", "duration", "10", "Objects with a TTL below this go to Transient storage."),
    ParamDef("max_restarts", "uint", "4", "Upper limit on how many times a request can restart."),
    ParamDef("max_retries", "uint", "4", "Upper limit on how many times a backend fetch can retry."),
    ParamDef("connect_timeout", "duration", "3.5", "Default timeout for opening backend connections."),
    ParamDef("first_byte_timeout", "duration", "60", "Default timeout for the first byte from a backend."),
    ParamDef("between_bytes_timeout", "duration", "60", "Default timeout between bytes from a backend."),
    ParamDef("backend_idle_timeout", "duration", "60", "Idle backend connections are closed after this."),
    ParamDef("timeout_idle", "duration", "5", "Idle client connections are closed after this.", 0),
    ParamDef("send_timeout", "duration", "600", "Total time allowed to send a response to a client."),
    ParamDef("idle_send_timeout", "duration", "60", "Time allowed between writes to a client."),
    ParamDef("http_req_hdr_len", "bytes", "8k", "Maximum length of any one request header line.", 40),
    ParamDef("http_req_size", "bytes", "32k", "Maximum size of the request head.", 256),
    ParamDef("http_resp_hdr_len", "bytes", "8k", "Maximum length of any one backend response header line.", 40),
    ParamDef("http_resp_size", "bytes", "32k", "Maximum size of the backend response head.", 256),
    ParamDef("http_max_hdr", "uint", "64", "Maximum number of headers in a request or response.", 32),
    ParamDef("http_range_support", "bool", "on", "Answer Range requests from cache."),
    ParamDef("http_gzip_support", "bool", "on", "Enable gzip support."),
    ParamDef("max_esi_depth", "uint", "5", "Maximum depth of ESI includes."),
    ParamDef("ban_lurker_age", "duration", "60", "Minimum age of a ban before the lurker checks it."),
    ParamDef("ban_dups", "bool", "on", "Eliminate older identical bans."),
    ParamDef("tinykvm_on_connect_timeout", "duration", "5",
             "How long a tinykvm program may take to accept a stolen connection."),
    ParamDef("vcc_err_unref", "bool", "on", "Unreferenced VCL objects result in error."),
    ParamDef("vcc_allow_inline_c", "bool", "off", "Allow inline C code in VCL (never honoured here)."),
    ParamDef("vcl_dir", "string", ".", "Directory searched for relative VCL file names."),
    ParamDef("vmod_path", "string", "", "Accepted for compatibility; vmods are built in."),
    ParamDef("feature", "string", "none", "Feature flags (accepted for compatibility)."),
    ParamDef("debug", "string", "none", "Debug flags (accepted for compatibility)."),
    ParamDef("vsl_mask", "string", "default", "Log mask (accepted for compatibility)."),
    ParamDef("prometheus_listen", "string", "",
             "ADDR:PORT to serve the counters at /metrics in Prometheus text format (empty: off)."),
    ParamDef("auto_restart", "bool", "on", "Restart the worker after a crash (accepted for compatibility)."),
    ParamDef("syslog_cli_traffic", "bool", "on", "Log CLI traffic to syslog (accepted for compatibility)."),
    ParamDef("thread_pools", "uint", "2", "Worker pools (accepted for compatibility)."),
    ParamDef("thread_pool_min", "uint", "100", "Minimum worker threads (accepted for compatibility)."),
    ParamDef("thread_pool_max", "uint", "5000", "Maximum worker threads (accepted for compatibility)."),
    ParamDef("h2_initial_window_size", "bytes", "65535", "Accepted for compatibility (no HTTP/2)."),
    ParamDef("h2_rx_window_low_water", "bytes", "10M", "Accepted for compatibility (no HTTP/2)."),
    ParamDef("gzip_level", "uint", "6", "Accepted for compatibility."),
    ParamDef("nuke_limit", "uint", "50", "Maximum objects evicted to make room for one."),
    ParamDef("lru_interval", "duration", "2", "Grace period before an object moves on the LRU list."),
    ParamDef("cli_timeout", "duration", "60", "Timeout for the worker's CLI responses."),
    ParamDef("listen_depth", "uint", "1024", "Listen queue depth."),
]


def _all_definitions() -> list[ParamDef]:
    """Ours (documented, acted on) first, then every other varnishd parameter, accepted as data."""
    from cacheserver.param_table import TABLE

    ours = {d.name: d for d in DEFINITIONS}
    out = []
    for name, kind, default, units, minimum, maximum in TABLE:
        if name in ours:
            # our wording, varnishd's limits
            d = ours[name]
            out.append(ParamDef(d.name, d.kind, d.default, d.doc,
                                d.minimum if d.minimum is not None else _number(minimum),
                                d.maximum if d.maximum is not None else _number(maximum), units))
            continue
        try:
            _PARSERS[kind](default)
        except ValueError:
            default = "0" if kind != "string" else default   # "platform dependent"
        out.append(ParamDef(name, kind, default, "", _number(minimum), _number(maximum), units))
    known = {d.name for d in out}
    return out + [d for d in DEFINITIONS if d.name not in known]


def _number(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        return float(parse_bytes(text)) if text[-1:].isalpha() else float(text)
    except ValueError:
        return None


class Params:
    """Current values, readable as attributes on the hot path (params.default_ttl)."""

    def __init__(self) -> None:
        self._defs = {d.name: d for d in _all_definitions()}
        self._text: dict[str, str] = {}
        for d in self._defs.values():
            self._text[d.name] = d.default
            setattr(self, d.name, _PARSERS[d.kind](d.default))

    def set(self, name: str, text: str) -> None:
        """Set parameter `name` from its text form; ValueError with a CLI-ready message if bad."""
        d = self._defs.get(name)
        if d is None:
            raise ValueError(f"Unknown parameter \"{name}\".")
        if name == "thread_pool_max" and text.strip() == "unlimited":
            text = "4294967295"
        value = _PARSERS[d.kind](text)
        # the two limits that bound each other
        if name == "thread_pool_min" and value > self.thread_pool_max:
            raise ValueError(f"Must be no more than thread_pool_max ({self.thread_pool_max})")
        if name == "thread_pool_reserve" and value > self.thread_pool_min * 95 // 100:
            raise ValueError(f"Must be no more than 95% of thread_pool_min ({self.thread_pool_min * 95 // 100})")
        if name == "thread_pool_max" and value < self.thread_pool_min:
            raise ValueError(f"Must be at least thread_pool_min ({self.thread_pool_min})")
        if d.minimum is not None and isinstance(value, (int, float)) and value < d.minimum:
            raise ValueError(f"Must be at least {d.minimum:g}")
        if d.maximum is not None and isinstance(value, (int, float)) and value > d.maximum:
            raise ValueError(f"Must be no more than {d.maximum:g}")
        self._text[name] = text
        setattr(self, name, value)

    def get(self, name: str) -> object:
        if name not in self._defs:
            raise KeyError(name)
        return getattr(self, name)

    def definitions(self) -> list[ParamDef]:
        return list(self._defs.values())

    def text(self, name: str) -> str:
        return self._text[name]
