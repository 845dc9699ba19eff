"""Varnish's number and date parsers (libvarnish vnum.c / vtim.c, 7.1), for vmod std's conversions.

They differ from float()/int() in ways VCL sees: at most 15 integer digits and 3 decimals (more
decimals are ignored unless strict), optional whitespace around, no '+' sign, no exponent; BYTES with
k/m/g/t/p units (an optional trailing b); durations need a unit; dates in the HTTP formats and ISO 8601
without a zone.
"""

from __future__ import annotations

import math

ERR_INVALID = "Invalid number"
ERR_FATNUM = "Too many digits"
ERR_UNKNOWN_BYTES = "Unknown BYTES unit of measurement ([KMGTP][B])"
ERR_FRACTIONAL_BYTES = "Fractional BYTES not allowed"

DECIMAL_MAX = 999999999999.999        # VRT_DECIMAL_MAX (as a double: 0x1.d1a94a1fffff8p+39)
_OWS = " \t"
_SP = " \t\r\n\v\f"


class NumError(ValueError):
    """A failed parse; str() is varnishd's error text. `no_digits` tells the two "Invalid number"s apart."""

    def __init__(self, text: str, pos: int, no_digits: bool = False) -> None:
        super().__init__(text)
        self.pos = pos
        self.no_digits = no_digits


def _parse_int(s: str, i: int, maxdig: int) -> tuple[int, int, int]:
    """sf_parse_int: (value, sign, position after trailing OWS); NumError on no/too many digits."""
    n = len(s)
    while i < n and s[i] in _OWS:
        i += 1
    sign = 1
    if i < n and s[i] == "-":
        sign = -1
        i += 1
    value = ndig = 0
    while i < n and "0" <= s[i] <= "9":
        ndig += 1
        if ndig > maxdig:
            raise NumError(ERR_FATNUM, i)
        value = value * 10 + ord(s[i]) - 48
        i += 1
    if ndig == 0:
        raise NumError(ERR_INVALID, i, no_digits=True)
    while i < n and s[i] in _OWS:
        i += 1
    return value, sign, i


def parse_number(s: str, strict: bool = False) -> tuple[float, int]:
    """SF_Parse_Number: an sf-integer or sf-decimal; (value, position after it). NumError on failure,
    except what varnishd lets through when not strict."""
    n = len(s)
    no_digits: NumError | None = None
    try:
        value, sign, i = _parse_int(s, 0, 15)
    except NumError as exc:
        if strict or not exc.no_digits or exc.pos >= n or s[exc.pos] != ".":
            raise
        # ".5" or "-.5": no integer digits, but a fraction may follow
        no_digits, value, i = exc, 0, exc.pos
        sign = -1 if s[:i].strip(_OWS).startswith("-") else 1
    if i >= n or s[i] != ".":
        return float(value) * sign, i   # "-0" is -0.0, as C computes it
    if value > DECIMAL_MAX:
        raise NumError(ERR_FATNUM, i)
    if no_digits is not None and not (i + 1 < n and s[i + 1].isdigit() and s[i + 1].isascii()):
        raise no_digits
    i += 1
    result, scale, ndig = float(value), 1.0, 0
    while ndig < 3:
        scale *= 0.1
        if i >= n or not ("0" <= s[i] <= "9"):
            break
        result += scale * (ord(s[i]) - 48)
        i += 1
        ndig += 1
    if strict and ndig == 0:
        raise NumError(ERR_INVALID, i)
    if strict and i < n and "0" <= s[i] <= "9":
        raise NumError(ERR_FATNUM, i)
    while i < n and "0" <= s[i] <= "9":
        i += 1
    while i < n and s[i] in _OWS:
        i += 1
    return result * sign, i


def parse_decimal(s: str) -> float:
    """SF_Parse_Decimal on the whole string (std.real); NumError on failure or leftovers."""
    value, i = parse_number(s)
    if value < -DECIMAL_MAX or value > DECIMAL_MAX:
        raise NumError(ERR_FATNUM, i)
    if i != len(s):
        raise NumError("", i)
    return value


def vnum(s: str | None) -> float:
    """VNUM: a whole-string number, NaN when it is not one."""
    if s is None:
        return math.nan
    try:
        value, i = parse_number(s)
    except NumError:
        return math.nan
    return value if i == len(s) else math.nan


_DUR_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0, "y": 31536000.0}


def duration(s: str | None) -> float:
    """VNUM_duration: a number and a unit (ms, s, m, h, d, w, y); NaN otherwise."""
    if s is None:
        return math.nan
    try:
        value, i = parse_number(s)
    except NumError:
        return math.nan
    n = len(s)
    while i < n and s[i] in _SP:
        i += 1
    if i >= n:
        return math.nan
    c = s[i]
    i += 1
    if c == "m" and i < n and s[i] == "s":
        scale = 1e-3
        i += 1
    elif c in _DUR_UNITS:
        scale = _DUR_UNITS[c]
    else:
        return math.nan
    while i < n and s[i] in _SP:
        i += 1
    return math.nan if i < n else value * scale


_BYTE_UNITS = {"k": 2.0 ** 10, "m": 2.0 ** 20, "g": 2.0 ** 30, "t": 2.0 ** 40, "p": 2.0 ** 50}


def to_bytes(s: str | None) -> int:
    """VNUM_2bytes: a byte count with an optional unit; NumError (with varnishd's text) otherwise."""
    if not s:
        raise NumError(ERR_INVALID, 0)
    value, i = parse_number(s, strict=True)
    if value < 0:
        raise NumError(ERR_INVALID, i)
    return bytes_unit(value, s[i:], i)


def bytes_unit(value: float, unit: str, at: int = 0) -> int:
    """VNUM_bytes_unit: `value` scaled by `unit` (k/m/g/t/p, any case, an optional b after; or b
    alone; or nothing), space around allowed; whole bytes only without a multiplier. VCC reads a
    BYTES literal's unit token with it too. NumError (position `at` + offset) otherwise."""
    n, i = len(unit), 0
    while i < n and unit[i] in _SP:
        i += 1
    scale = 1.0
    c = unit[i].lower() if i < n else ""
    if c in _BYTE_UNITS:
        scale = _BYTE_UNITS[c]
        i += 1
    elif c in ("b", ""):
        if value != math.trunc(value):
            raise NumError(ERR_FRACTIONAL_BYTES, at + i)
    else:
        raise NumError(ERR_UNKNOWN_BYTES, at + i)
    if i < n and unit[i] in "bB":
        i += 1
    while i < n and unit[i] in _SP:
        i += 1
    if i < n:
        raise NumError(ERR_UNKNOWN_BYTES, at + i)
    return round(math.trunc(scale * value))


# -- dates (VTIM_parse) ------------------------------------------------------------------------------

_WEEKDAYS = ("Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat")
_MORE_WEEKDAY = ("day", "day", "sday", "nesday", "rsday", "day", "urday")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_DAYS_IN_MONTH = (31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)
_DAYS_BEFORE_MONTH = (0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334)


class _Fail(Exception):
    pass


class _Cursor:
    def __init__(self, s: str) -> None:
        self.s, self.i = s, 0

    def peek(self, k: int = 0) -> str:
        j = self.i + k
        return self.s[j] if j < len(self.s) else ""

    def must(self, ch: str) -> None:
        if self.peek() != ch:
            raise _Fail
        self.i += 1

    def digits(self, n: int) -> int:
        value = 0
        for _ in range(n):
            c = self.peek()
            if not ("0" <= c <= "9"):
                raise _Fail
            value = value * 10 + ord(c) - 48
            self.i += 1
        return value

    def word(self, words: tuple[str, ...]) -> int:
        w = self.s[self.i:self.i + 3]
        if w not in words:
            raise _Fail
        self.i += 3
        return words.index(w)

    def timestamp(self) -> tuple[int, int, int]:
        hour = self.digits(2)
        self.must(":")
        minute = self.digits(2)
        self.must(":")
        return hour, minute, self.digits(2)

    def gmt(self) -> None:
        for ch in " GMT":
            self.must(ch)


# feature http_date_postel (varnishd's VTIM_postel, process-wide): "Sun, 6 Nov 1994 ..." also parses.
_postel = False


def set_date_postel(on: bool) -> None:
    global _postel
    _postel = on


def date_postel() -> bool:
    return _postel


def parse_http_date(s: str | None) -> float:
    """VTIM_parse: RFC 1123, RFC 850, asctime() or ISO 8601 ("1994-11-06T08:49:37"), all UTC; 0 when
    the text is none of them (so the epoch itself does not parse, as in varnishd)."""
    if not s:
        return 0.0
    c = _Cursor(s)
    try:
        while c.peek() == " ":
            c.i += 1
        weekday = -1
        if "0" <= c.peek() <= "9":
            year = c.digits(4)
            c.must("-")
            month = c.digits(2)
            c.must("-")
            mday = c.digits(2)
            c.must("T")
            hour, minute, sec = c.timestamp()
        else:
            weekday = c.word(_WEEKDAYS)
            if c.peek() == ",":
                c.i += 1
                c.must(" ")
                mday = c.digits(1 if _postel and s[c.i + 1:c.i + 2] == " " else 2)
                c.must(" ")
                month = c.word(_MONTHS) + 1
                c.must(" ")
                year = c.digits(4)
                c.must(" ")
                hour, minute, sec = c.timestamp()
                c.gmt()
            elif c.peek() == " ":
                c.i += 1
                month = c.word(_MONTHS) + 1
                c.must(" ")
                if c.peek() != " ":
                    mday = c.digits(2)
                else:
                    c.i += 1
                    mday = c.digits(1)
                c.must(" ")
                hour, minute, sec = c.timestamp()
                c.must(" ")
                year = c.digits(4)
            elif s.startswith(_MORE_WEEKDAY[weekday], c.i):
                c.i += len(_MORE_WEEKDAY[weekday])
                c.must(",")
                c.must(" ")
                mday = c.digits(2)
                c.must("-")
                month = c.word(_MONTHS) + 1
                c.must("-")
                year = c.digits(2) + 1900
                if year < 1969:
                    year += 100
                c.must(" ")
                hour, minute, sec = c.timestamp()
                c.gmt()
            else:
                raise _Fail
        while c.peek() == " ":
            c.i += 1
        if c.i != len(s):
            raise _Fail
    except _Fail:
        return 0.0
    if not (0 <= sec <= 60 and 0 <= minute <= 59 and 0 <= hour <= 23 and 1 <= month <= 12):
        return 0.0
    if not 1 <= mday <= _DAYS_IN_MONTH[month - 1] or year < 1899:
        return 0.0
    leap = year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)
    if month == 2 and mday > 28 and not leap:
        return 0.0
    sec = min(sec, 59)                     # leap seconds are ignored
    t = ((hour * 60.0) + minute) * 60.0 + sec
    d = (mday - 1) + _DAYS_BEFORE_MONTH[month - 1]
    if month > 2 and leap:
        d += 1
    d += (year % 100) * 365
    if year % 100 > 0:
        d += ((year % 100) - 1) // 4
    d += ((year // 100) - 20) * (100 * 365 + 24)
    d += ((year - 1) // 400) - 4
    if weekday != -1 and (d + 6 + 7 * 10000) % 7 != weekday:
        return 0.0
    return t + d * 86400.0 + 10957.0 * 86400.0
