"""The response head a cached object keeps: its status line, and its header fields in one string.

A cached object's headers are written once, by its fetch, and read seldom after that (its deliveries
until a hit template exists, obj.http in vcl_hit, ban tests, a revalidation), while they are held for
as long as the object lives. As Headers they cost a list per field and a list of those (about 100
bytes a field besides the text); here each field is its "Name: value" text, NUL-ended as in varnishd's
object, all in one str, so they cost a byte a character. They are read back into a fresh HttpMessage
on demand: obj.http is read-only in VCL, so nothing writes through such a copy.
"""

from __future__ import annotations

from vcl.runtime import Headers, HttpMessage

_SEP = "\0"        # ends each field: neither a name nor a value holds a NUL (varnishd's strings cannot)


class StoredHttp:
    """A cached object's status line and headers, read as an HttpMessage is (proto, status, reason,
    headers) but immutable; `copy()` gives a mutable HttpMessage."""

    __slots__ = ("proto", "status", "reason", "_fields")
    method = ""            # a response's: HttpMessage's defaults
    url = ""

    def __init__(self, proto: str, status: int, reason: str, fields: str) -> None:
        self.proto = proto
        self.status = status
        self.reason = reason
        self._fields = fields

    @classmethod
    def of(cls, http: HttpMessage | StoredHttp) -> HttpMessage | StoredHttp:
        """The compact form of `http`; `http` itself when it cannot be told apart when read back
        (a field holding a NUL, a name holding ": ")."""
        if isinstance(http, StoredHttp):
            return http
        items = http.headers.items()
        if any(_SEP in name or _SEP in value or ": " in name for name, value in items):
            return http
        return cls(http.proto, http.status, http.reason, "".join([n + ": " + v + _SEP for n, v in items]))

    @property
    def headers(self) -> Headers:
        """A new Headers holding the fields (changing it changes nothing stored)."""
        triples = []
        for field in self._fields.split(_SEP)[:-1]:
            name, _, value = field.partition(": ")
            triples.append([name, value, name.lower()])
        return Headers.adopt(triples)

    def copy(self) -> HttpMessage:
        return HttpMessage(self.method, self.url, self.proto, self.status, self.reason, self.headers)

    def wire_fields(self) -> str:
        """The fields as a head sends them: each "Name: value" and CRLF."""
        return self._fields.replace(_SEP, "\r\n")

    def record_fields(self, tag: str) -> str:
        """The fields as the shared log's records of `tag`: each "<NUL>tag Name: value"."""
        return (_SEP + self._fields[:-1]).replace(_SEP, _SEP + tag + " ") if self._fields else ""

    def fields_size(self) -> int:
        """The bytes varnishd's object gives the header fields: each "Name: value" and its NUL."""
        return len(self._fields)

    def __repr__(self) -> str:
        return f"StoredHttp({self.proto!r}, {self.status!r}, {self.reason!r}, {self.headers.items()!r})"


def fields_size(http: HttpMessage | StoredHttp) -> int:
    """What an object's header fields take in varnishd's malloc store, before rounding."""
    if isinstance(http, StoredHttp):
        return http.fields_size()
    return sum(len(n) + len(v) + 3 for n, v in http.headers.items())
