"""ESI parsing, as varnishd's VEP (cache_esi_parse.c) does it, with no I/O.

`EsiParser` is fed an object's body chunk by chunk as it arrives from the backend; a chunk boundary may
fall anywhere, inside a tag included. Each byte ends up either verbatim (delivered as is) or skipped (ESI
markup, `<esi:remove>` content), and `<esi:include>` tags become `Include` entries between them.
`finish()` returns the `EsiDoc` stored with the object (or None when varnishd would not treat the body as
ESI at all), so delivery assembles the page from byte ranges without parsing again.

The state machine follows VEP's states and their quirks on purpose (a `--->` that does not end a comment,
`src=/a/>` being a missing delimiter, the BOM test on 0xEB...): what a page looks like must not depend on
which server assembled it. Errors and warnings are collected with VEP's messages; the caller counts them
(`esi_errors`, `esi_warnings`) and logs them as ESI_xmlerror.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

__all__ = ["EsiFeatures", "Include", "EsiDoc", "EsiParser", "parse"]

# An include's src attribute is held while its tag is open; VEP grows it without limit, we stop at this
# many bytes and treat the tag as an error (no page has a src this long for a good reason).
MAX_ATTR_LEN = 16384


@dataclass(frozen=True, slots=True)
class EsiFeatures:
    """The `feature` parameter flags that change parsing."""

    disable_xml_check: bool = False
    ignore_other_elements: bool = False
    remove_bom: bool = False
    ignore_https: bool = False
    include_onerror: bool = False


@dataclass(frozen=True, slots=True)
class Include:
    """An `<esi:include>`: the URL of the subrequest, and the Host it must carry (None: the parent's)."""

    src: str
    host: str | None = None
    onerror_continue: bool = False


# A segment is a verbatim byte range of the stored body (start, end) or an Include; skipped bytes are
# the gaps between ranges.
Segment = tuple[int, int] | Include


@dataclass(slots=True)
class EsiDoc:
    """What is stored with an ESI object: the page as verbatim ranges of its body and includes."""

    segments: list[Segment] = field(default_factory=list)
    length: int = 0  # bytes of body parsed
    # When the body is stored gzipped (esi_gzip.py): (cstart, cend, plain_length, crc) per verbatim
    # range, offsets in the stored body, and the includes between them.
    gz: list | None = None

    def verbatim_bytes(self) -> int:
        """How many body bytes delivery copies (includes excluded)."""
        return sum(s[1] - s[0] for s in self.segments if isinstance(s, tuple))

    def includes(self) -> list[Include]:
        return [s for s in self.segments if isinstance(s, Include)]


# --- character classes (varnishd's vct.c) ---------------------------------------------------------

_LWS = frozenset(b" \t\r\n")
_SP = frozenset(b" \t")
_NAMESTART = frozenset(
    list(range(0x41, 0x5B)) + list(range(0x61, 0x7B)) + [0x5F, 0x3A]
    + [c for c in range(0xC0, 0x100) if c not in (0xD7, 0xF7)]
)
_NAME = _NAMESTART | frozenset(b"-.0123456789\xb7")

# --- states ---------------------------------------------------------------------------------------

(START, BOM, TESTXML, NOTXML, NEXTTAG, NOTMYTAG, STARTTAG, COMMENT, CDATA, ESITAG, ESIREMOVE,
 ESIINCLUDE, ESICOMMENT, ESIBOGON, INTAG, TAGERROR, ATTR, SKIPATTR, ATTRDELIM, ATTRGETVAL, ATTRVAL,
 UNTIL, MATCHBUF, MATCH) = range(24)

# Match tables: (literal, next state); the entry with literal None is taken when nothing matches.
_T_STARTTAG = ((b"!--", COMMENT), (b"esi:", ESITAG), (b"![CDATA[", CDATA), (None, NOTMYTAG))
_T_ESI = ((b"include", ESIINCLUDE), (b"remove", ESIREMOVE), (b"comment", ESICOMMENT), (None, ESIBOGON))
_T_INCLUDE_ATTR = ((b"src=", ATTRGETVAL), (None, SKIPATTR))
_T_INCLUDE_ATTR_ONERROR = ((b"src=", ATTRGETVAL), (b"onerror=", ATTRGETVAL), (None, SKIPATTR))
# varnishd compares the first byte with 0xEB (not UTF-8's 0xEF); we do as it does.
_T_BOM = ((b"\xeb\xbb\xbf", START), (None, BOM))

_VERBATIM, _SKIP = 0, 1
_DASH_OR_LT = re.compile(b"[-<]")
_ENTITIES = ((b"&apos;", b"'"), (b"&quot;", b'"'), (b"&lt;", b"<"), (b"&gt;", b">"), (b"&amp;", b"&"))


def _match(table: tuple, data: bytes | bytearray, p: int, e: int):
    """The table entry `data[p:e]` starts with; None when the input ends inside a candidate."""
    avail = e - p
    for lit, state in table:
        if lit is None:
            return lit, state
        n = len(lit)
        if avail < n:
            if data[p:e] == lit[:avail]:
                return None  # need more input to decide
            continue
        if data[p:p + n] == lit:
            return lit, state
    raise AssertionError("match table without default")


class EsiParser:
    """VEP: feed() the body in chunks, then finish()."""

    def __init__(self, url: str, features: EsiFeatures | None = None) -> None:
        self.url = url.encode("latin-1", "replace")
        self.features = features or EsiFeatures()
        self.errors: list[str] = []
        self.warnings: list[str] = []
        self.log: list[str] = []  # ESI_xmlerror lines that count as neither
        # every ESI_xmlerror in the order VEP logs them: (kind "ERR"/"WARN"/"", VEP's o_last, text)
        self.diag: list[tuple[str, int, str]] = []
        self._segs: list[Segment] = []
        self._state = START
        self._esi_found = False
        self._remove = False
        self._in_esi_tag = False
        self._endtag = False
        self._emptytag = False
        self._canattr = False
        self._esicmt: bytes | None = None
        self._esicmt_i = 0
        self._until = b""
        self._until_i = 0
        self._until_s = NEXTTAG
        self._table: tuple | None = None
        self._tag = bytearray()
        self._attr: tuple | None = None
        self._dostuff = None
        self._attr_val: bytearray | None = None
        self._attr_delim = 0
        self._attr_name: bytes | None = None
        self._include_src: bytes | None = None
        self._onerror_continue = False
        # Marking: bytes before _ver are classified; [_pend, _ver) wait for the next mark's kind.
        self._base = 0
        self._ver = 0
        self._pend: int | None = None
        self._last_mark = _VERBATIM
        # VEP's o_last (where the run before the current one was emitted; errors are logged "after"
        # it) and o_wait (bytes in the current run)
        self._o_last = 0
        self._o_wait = 0

    @property
    def segments(self) -> list[Segment]:
        """The segments decided so far (the last verbatim range may still grow)."""
        return self._segs

    def classified(self) -> int:
        """Body bytes before this offset are decided verbatim or skipped (the rest waits on a tag)."""
        return self._pend if self._pend is not None else self._ver

    # --- marking --------------------------------------------------------------------------------

    def _mark(self, q: int, kind: int) -> None:
        start = self._pend if self._pend is not None else self._ver
        self._pend = None
        if kind != self._last_mark and self._o_wait > 0:
            self._o_last = start
            self._o_wait = 0
        self._o_wait += q - start
        if kind == _VERBATIM and q > start:
            segs = self._segs
            if segs and isinstance(segs[-1], tuple) and segs[-1][1] == start:
                segs[-1] = (segs[-1][0], q)
            else:
                segs.append((start, q))
        self._ver = q
        self._last_mark = kind

    def _mark_pending(self, q: int) -> None:
        if self._pend is None:
            self._pend = self._ver
        self._ver = q

    def _note(self, line: str) -> None:
        self.log.append(line)
        self.diag.append(("", 0, line))

    def _error(self, msg: str) -> None:
        self.errors.append(f"ERR after {self._o_last} {msg}")
        self.diag.append(("ERR", self._o_last, msg))

    def _warn(self, msg: str) -> None:
        self.warnings.append(f"WARN after {self._o_last} {msg}")
        self.diag.append(("WARN", self._o_last, msg))

    # --- tag actions ----------------------------------------------------------------------------

    def _do_comment(self, attr: bool) -> None:
        if not self._emptytag:
            self._error("ESI 1.0 <esi:comment> needs final '/'")

    def _do_remove(self, attr: bool) -> None:
        if self._emptytag:
            self._error("ESI 1.0 <esi:remove/> not legal")
        elif self._remove and not self._endtag:
            self._error("ESI 1.0 <esi:remove> already open")
        elif not self._remove and self._endtag:
            self._error("ESI 1.0 <esi:remove> not open")
        else:
            self._remove = not self._endtag

    def _do_include(self, attr: bool) -> None:
        if attr:
            val = bytes(self._attr_val or b"")
            if self._attr_name == b"onerror=":
                self._onerror_continue = val == b"continue"
                return
            if self._include_src is not None:
                self._error("ESI 1.0 <esi:include> has multiple src= attributes")
                self._state = TAGERROR
                self._include_src = None
                return
            self._include_src = val
            return
        if not self._emptytag:
            self._warn("ESI 1.0 <esi:include> lacks final '/'")
        src = self._include_src
        self._include_src = None
        cont, self._onerror_continue = self._onerror_continue, False
        if src is None:
            self._error("ESI 1.0 <esi:include> lacks src attr")
            return
        src = src.split(b"\0", 1)[0]  # VEP handles it as a C string
        if any(c in src for c in b" \t\r\n"):
            # varnishd 7.1 drops such an include (checked against it: tests/test_esi_parse.py)
            self._error("ESI 1.0 <esi:include> has whitespace in src= attribute")
            return
        host: bytes | None = None
        prefix = b""
        if len(src) > 7 and src.startswith(b"http://"):
            host, path = self._split_host(src[7:])
        elif len(src) > 8 and src.startswith(b"https://"):
            if not self.features.ignore_https:
                self._warn("ESI 1.0 <esi:include> with https:// ignored")
                return
            self._warn("ESI 1.0 <esi:include> https:// treated as http://")
            host, path = self._split_host(src[8:])
        elif src.startswith(b"/"):
            path = src
        else:
            # relative to the directory of the object's own URL (up to its last '/' before any '?')
            url = self.url
            q = url.find(b"?")
            head = url if q < 0 else url[:q]
            slash = head.rfind(b"/")
            prefix = (head[:slash] if slash >= 0 else url[:q + 1] if q >= 0 else url) + b"/"
            path = src
        self._segs.append(Include(
            (prefix + _decode_entities(path)).decode("latin-1"),
            None if host is None else host.decode("latin-1"),
            cont,
        ))

    @staticmethod
    def _split_host(rest: bytes) -> tuple[bytes, bytes]:
        slash = rest.find(b"/")
        if slash < 0:
            # varnishd asserts here; an include of the host's root is the useful reading
            return rest, b"/"
        return rest[:slash], rest[slash:]

    # --- the state machine ----------------------------------------------------------------------

    def feed(self, chunk: bytes) -> None:
        """Parse the next piece of the body."""
        if not chunk:
            return
        b = chunk
        e = len(b)
        base = self._base
        self._ver = base
        p = 0
        feats = self.features
        while p < e:
            st = self._state
            if st == NEXTTAG:
                self._emptytag = self._endtag = False
                self._attr = None
                self._dostuff = None
                if self._esicmt is None:
                    q = b.find(b"<", p)
                    p = e if q < 0 else q
                else:
                    cmt = self._esicmt
                    while p < e and b[p] != 0x3C:
                        if self._esicmt_i == 0:
                            m = _DASH_OR_LT.search(b, p)
                            if m is None:
                                p = e
                                break
                            p = m.start()
                            if b[p] == 0x3C:
                                break
                        if b[p] != cmt[self._esicmt_i]:
                            p += 1
                            self._esicmt_i = 0
                            continue
                        if not self._remove and self._esicmt_i == 0:
                            self._mark(base + p, _VERBATIM)
                        p += 1
                        self._esicmt_i += 1
                        if self._esicmt_i == len(cmt):
                            self._esi_found = True
                            self._esicmt = None
                            self._esicmt_i = 0
                            self._mark(base + p, _SKIP)  # the closing --> is not delivered
                            q = b.find(b"<", p)
                            p = e if q < 0 else q
                            break
                if p < e:
                    if not self._remove:
                        self._mark(base + p, _VERBATIM)
                    p += 1
                    self._state = STARTTAG
                elif (self._esicmt is None or self._esicmt_i == 0) and not self._remove:
                    self._mark(base + p, _VERBATIM)
            elif st == START:
                if feats.remove_bom and b[p] == 0xEB:
                    self._table = _T_BOM
                    self._state = MATCH
                else:
                    self._state = BOM
            elif st == BOM:
                self._mark(base + p, _SKIP)
                self._state = NEXTTAG if feats.disable_xml_check else TESTXML
            elif st == TESTXML:
                while p < e and b[p] in _LWS:
                    p += 1
                self._mark(base + p, _VERBATIM)
                if p < e and b[p] == 0x3C:
                    p += 1
                    self._state = STARTTAG
                elif p < e and b[p] == 0xEB:
                    self._note("No ESI processing, first char not '<' but BOM. (See feature esi_remove_bom)")
                    self._state = NOTXML
                elif p < e:
                    self._note("No ESI processing, first char not '<'. (See feature esi_disable_xml_check)")
                    self._state = NOTXML
            elif st == NOTXML:
                p = e
                self._mark(base + p, _VERBATIM)
            elif st == NOTMYTAG:
                if feats.ignore_other_elements:
                    p += 1
                    self._state = NEXTTAG
                else:
                    q = b.find(b">", p)
                    if q >= 0:
                        p = q + 1
                        self._state = NEXTTAG
                    else:
                        p = e
                if p == e and not self._remove:
                    self._mark(base + p, _VERBATIM)
            elif st == STARTTAG:
                if b[p] == 0x2F:
                    self._endtag = True
                    p += 1
                self._table = _T_STARTTAG
                self._state = MATCH
            elif st == COMMENT:
                if self._esicmt is None:
                    self._esicmt = b"esi"
                    self._esicmt_i = 0
                while p < e:
                    if b[p] != self._esicmt[self._esicmt_i]:
                        self._esicmt = None
                        self._esicmt_i = 0
                        self._until, self._until_i, self._until_s = b"-->", 0, NEXTTAG
                        self._state = UNTIL
                        break
                    p += 1
                    self._esicmt_i += 1
                    if self._esicmt_i < len(self._esicmt):
                        continue
                    if self._remove:
                        self._error("ESI 1.0 Nested <!--esi element in <esi:remove>")
                    self._esicmt, self._esicmt_i = b"-->", 0
                    self._state = NEXTTAG
                    self._mark(base + p, _SKIP)
                    break
            elif st == CDATA:
                self._until, self._until_i, self._until_s = b"]]>", 0, NEXTTAG
                self._state = UNTIL
            elif st == ESITAG:
                self._in_esi_tag = True
                self._esi_found = True
                self._mark(base + p, _SKIP)
                self._table = _T_ESI
                self._state = MATCH
            elif st == ESIINCLUDE:
                if self._remove:
                    self._error("ESI 1.0 <esi:include> element nested in <esi:remove>")
                    self._state = TAGERROR
                elif self._endtag:
                    self._error("ESI 1.0 </esi:include> illegal end-tag")
                    self._state = TAGERROR
                else:
                    self._dostuff = self._do_include
                    self._state = INTAG
                    self._attr = _T_INCLUDE_ATTR_ONERROR if feats.include_onerror else _T_INCLUDE_ATTR
            elif st == ESIREMOVE:
                self._dostuff = self._do_remove
                self._state = INTAG
            elif st == ESICOMMENT:
                if self._remove:
                    self._error("ESI 1.0 <esi:comment> element nested in <esi:remove>")
                    self._state = TAGERROR
                elif self._endtag:
                    self._error("ESI 1.0 </esi:comment> illegal end-tag")
                    self._state = TAGERROR
                else:
                    self._dostuff = self._do_comment
                    self._state = INTAG
            elif st == ESIBOGON:
                self._error("ESI 1.0 <esi:bogus> element")
                self._state = TAGERROR
            elif st == INTAG:
                while p < e and b[p] in _LWS and not self._emptytag:
                    p += 1
                    self._canattr = True
                if p < e and b[p] == 0x2F and not self._emptytag:
                    p += 1
                    self._emptytag = True
                    self._canattr = False
                if p < e and b[p] == 0x3E:
                    p += 1
                    self._mark(base + p, _SKIP)
                    self._dostuff(False)
                    self._in_esi_tag = False
                    self._state = NEXTTAG
                elif p < e and self._emptytag:
                    self._error("XML 1.0 '>' does not follow '/' in tag")
                    self._state = TAGERROR
                elif p < e and self._canattr and b[p] in _NAMESTART:
                    self._state = ATTR
                elif p < e:
                    self._error("XML 1.0 Illegal attribute start char")
                    self._state = TAGERROR
            elif st == TAGERROR:
                q = b.find(b">", p)
                if q < 0:
                    p = e
                else:
                    p = q + 1
                    self._mark(base + p, _SKIP)
                    self._in_esi_tag = False
                    self._state = NEXTTAG
            elif st == ATTR:
                if self._attr is None:
                    p += 1
                    self._state = SKIPATTR
                else:
                    self._table = self._attr
                    self._state = MATCH
            elif st == SKIPATTR:
                while p < e and b[p] in _NAME:
                    p += 1
                if p < e:
                    c = b[p]
                    if c == 0x3D:
                        p += 1
                        self._state = ATTRDELIM
                    elif c == 0x3E or c == 0x2F or c in _SP:
                        self._state = INTAG
                    else:
                        self._error("XML 1.0 Illegal attr char")
                        self._state = TAGERROR
            elif st == ATTRGETVAL:
                self._attr_val = bytearray()
                self._state = ATTRDELIM
            elif st == ATTRDELIM:
                c = b[p]
                if c == 0x22 or c == 0x27:
                    self._attr_delim = c
                    p += 1
                    self._state = ATTRVAL
                elif c not in _SP:
                    self._attr_delim = 0x20
                    self._state = ATTRVAL
                else:
                    self._error("XML 1.0 Illegal attribute delimiter")
                    self._state = TAGERROR
            elif st == ATTRVAL:
                delim = self._attr_delim
                q = p
                while q < e:
                    c = b[q]
                    if c == 0x3E or c == delim or (delim == 0x20 and c in _SP):
                        break
                    q += 1
                val = self._attr_val
                if val is not None:
                    val += b[p:q]
                p = q
                if val is not None and len(val) > MAX_ATTR_LEN:
                    self._error("ESI attribute value too long")
                    self._state = TAGERROR
                    self._attr_delim = 0
                    self._attr_val = None
                elif p < e and b[p] == 0x3E:
                    self._error("XML 1.0 Missing end attribute delimiter")
                    self._state = TAGERROR
                    self._attr_delim = 0
                    self._attr_val = None
                elif p < e:
                    self._attr_delim = 0
                    p += 1
                    self._state = INTAG
                    if self._attr_val is not None:
                        self._dostuff(True)
                        self._attr_val = None
            elif st == MATCH:
                hit = _match(self._table, b, p, e)
                if hit is not None:
                    lit, nxt = hit
                    if lit is not None:
                        p += len(lit)
                    self._attr_name = lit
                    self._state = nxt
                    self._table = None
                    self._tag.clear()
                else:
                    self._tag[:] = b[p:e]
                    self._state = MATCHBUF
                    p = e
            elif st == MATCHBUF:
                hit = None
                while True:
                    if b[p] == 0x3E:
                        hit = self._table[-1]
                    else:
                        self._tag.append(b[p])
                        p += 1
                        hit = _match(self._table, self._tag, 0, len(self._tag))
                        if hit is not None and hit[0] is None:
                            self._tag.pop()
                            p -= 1
                    if hit is not None or p >= e:
                        break
                if hit is not None:
                    self._attr_name = hit[0]
                    self._state = hit[1]
                    self._table = None
            elif st == UNTIL:
                until = self._until
                while p < e:
                    if self._until_i == 0:
                        q = b.find(until[:1], p)
                        if q < 0:
                            p = e
                            break
                        p = q
                    c = b[p]
                    p += 1
                    if c != until[self._until_i]:
                        self._until_i = 0
                    else:
                        self._until_i += 1
                        if self._until_i == len(until):
                            self._until_i = 0
                            self._state = self._until_s
                            break
                if p == e and not self._remove:
                    self._mark(base + p, _VERBATIM)
            else:  # pragma: no cover - every state is handled above
                raise AssertionError(f"ESI parser in unknown state {st}")
        # Whatever this chunk left unclassified: skipped inside ESI markup, else decided by what follows.
        end = base + e
        if end != self._ver:
            if self._in_esi_tag or self._remove:
                self._mark(end, _SKIP)
            else:
                self._mark_pending(end)
        self._base = end

    def finish(self) -> EsiDoc | None:
        """The parsed document, or None when the body holds no ESI (then it is delivered as is)."""
        self._include_src = None
        self._attr_val = None
        if self._state not in (START, BOM, TESTXML, NOTXML, NEXTTAG):
            self._error("VEP ended inside a tag")
        if self._pend is not None:
            self._mark(self._ver, self._last_mark)
        if not self._esi_found:
            return None
        return EsiDoc(self._segs, self._base)


def _decode_entities(s: bytes) -> bytes:
    if b"&" not in s:
        return s
    out = bytearray()
    i, n = 0, len(s)
    while i < n:
        if s[i] == 0x26:
            for ent, rep in _ENTITIES:
                if s.startswith(ent, i):
                    out += rep
                    i += len(ent)
                    break
            else:
                out.append(0x26)
                i += 1
        else:
            out.append(s[i])
            i += 1
    return bytes(out)


def parse(body: bytes, url: str = "/", features: EsiFeatures | None = None,
          chunks: list[int] | None = None) -> tuple[EsiDoc | None, EsiParser]:
    """Parse a whole body (split at the given chunk sizes, for tests); returns (doc, parser)."""
    ps = EsiParser(url, features)
    if chunks:
        pos = 0
        for n in chunks:
            ps.feed(body[pos:pos + n])
            pos += n
        ps.feed(body[pos:])
    else:
        ps.feed(body)
    return ps.finish(), ps


def render(doc: EsiDoc | None, body: bytes, include=lambda inc: b"") -> bytes:
    """The page `doc` describes, with `include(Include)` giving each fragment (tests, reference)."""
    if doc is None:
        return body
    out = bytearray()
    for seg in doc.segments:
        if isinstance(seg, tuple):
            out += body[seg[0]:seg[1]]
        else:
            out += include(seg)
    return bytes(out)
