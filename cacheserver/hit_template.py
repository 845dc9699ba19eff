"""Plain-hit templates: what the deliveries of cached objects' plain hits share.

Most hits are a GET of a whole object with the built-in vcl_deliver. Their response head is the
object's status line and header fields, then X-Varnish and Age, then what delivery adds (Via,
Accept-Ranges, Connection), and their log records from RespProtocol to End follow the head. The
first plain delivery of an object (its miss, or a hit) goes the long way; its head and records are
then cut into the object's own part, which its StoredHttp gives back at each hit, and the rest,
which every object of the same shape shares: kept once (bounded) and pointed to by the object. A
template so costs an object one reference, and every object, hit once or often, gets the template's
speed from its first hit on (with 100k objects most hits are an object's first).

A template is only made when cutting the long way's head and records reproduces them exactly.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from cacheserver.http1 import WIRE, WIRE_ERRORS
from cacheserver.stored_http import StoredHttp

if TYPE_CHECKING:
    from vcl.compiler import CompiledVCL

_SHARED: dict[tuple, HitTemplate] = {}
SHARED_MAX = 1024           # past this the table starts over (the templates objects hold stay valid)


class HitTemplate:
    """The shared part: the status line, what comes between X-Varnish and Age and after Age, and the
    records around the object's RespHeader records (a %-template: see Delivery._deliver_from_template)."""

    __slots__ = ("vcl", "params_gen", "status_line", "between", "rest", "records_start", "records_rest")

    def __init__(self, vcl: CompiledVCL, params_gen: int, status_line: bytes, between: bytes, rest: bytes,
                 records_start: bytes, records_rest: bytes) -> None:
        self.vcl = vcl
        self.params_gen = params_gen      # the parameters it was cut under (http_max_hdr, ...)
        self.status_line = status_line
        self.between = between
        self.rest = rest
        self.records_start = records_start
        self.records_rest = records_rest

    def head(self, http: StoredHttp, xid: int, obj_xid: int, age: int) -> bytes:
        fields = http.wire_fields().encode(WIRE, WIRE_ERRORS)
        return b"%s%sX-Varnish: %d %d\r\n%sAge: %d\r\n%s" % (
            self.status_line, fields, xid, obj_xid, self.between, age, self.rest)

    def records(self, http: StoredHttp) -> bytes:
        return b"%s%s\0%s" % (self.records_start, _field_records(http), self.records_rest)

    def bind(self, http: StoredHttp) -> HotTemplate:
        """This template with one object's fields encoded once, for an object hit again and again."""
        return HotTemplate(self, http)


class HotTemplate:
    """A shared template bound to one hot object: its head up to X-Varnish and its records made once
    (a few hundred bytes for an object hit more than once, instead of encoding its fields per hit)."""

    __slots__ = ("vcl", "params_gen", "start", "between", "rest", "_records")

    def __init__(self, template: HitTemplate, http: StoredHttp) -> None:
        self.vcl = template.vcl
        self.params_gen = template.params_gen
        self.start = template.status_line + http.wire_fields().encode(WIRE, WIRE_ERRORS)
        self.between = template.between
        self.rest = template.rest
        self._records = template.records(http)

    def head(self, http: StoredHttp, xid: int, obj_xid: int, age: int) -> bytes:
        return b"%sX-Varnish: %d %d\r\n%sAge: %d\r\n%s" % (self.start, xid, obj_xid, self.between, age, self.rest)

    def records(self, http: StoredHttp) -> bytes:
        return self._records


def _field_records(http: StoredHttp) -> bytes:
    """The object's fields as RespHeader records, each after a NUL, %-escaped."""
    return http.record_fields("RespHeader").replace("%", "%%").encode("utf-8", "surrogateescape")


def make(vcl: CompiledVCL, params_gen: int, http: StoredHttp | object, head: bytes, xid_line: bytes,
         records: bytes) -> HitTemplate | None:
    """The template for a delivered `head` (X-Varnish's line is `xid_line`, Age follows it) and its
    `records`; None when the head is not the object's fields in order, or the records not theirs."""
    if type(http) is not StoredHttp:
        return None
    i = head.find(xid_line)
    j = head.find(b"\r\nAge: ", i) + 2
    k = head.find(b"\r\n", j) + 2
    line_end = head.find(b"\r\n") + 2
    if i < 0 or j < 2 or head[line_end:i] != http.wire_fields().encode(WIRE, WIRE_ERRORS):
        return None
    start = b"\0".join(records.split(b"\0", 3)[:3])        # RespProtocol, RespStatus, RespReason
    fields = _field_records(http)
    if not records.startswith(start + fields + b"\0"):
        return None
    key = (vcl, params_gen, head[:line_end], head[i + len(xid_line):j], head[k:], start, records[len(start + fields) + 1:])
    template = _SHARED.get(key)
    if template is None:
        template = HitTemplate(*key)
        if len(_SHARED) >= SHARED_MAX:
            _SHARED.clear()
        _SHARED[key] = template
    return template
