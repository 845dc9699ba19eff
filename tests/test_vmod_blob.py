"""vmod blob: codecs, comparisons, sub-blobs and the blob object, with answers recorded from
varnishd 7.1.1 for the same VCL (one request, headers b*/s*/e*/l*/o*)."""

from __future__ import annotations

import pytest

from vcl.compiler import compile_vcl
from vcl.errors import VCLError
from vcl.runtime import Context, HttpMessage, VCLFailure

VCL = """vcl 4.1;
import blob;
backend b none;
sub vcl_init {
	new o = blob.blob(BASE64, "Zm9vYmFy");
	new e = blob.blob(HEX, "");
}
sub vcl_recv { return (synth(200)); }
sub vcl_synth {
%s
}
"""

CASES = {
    'blob.encode(HEX, blob=blob.decode(BASE64, encoded="QQ"))': "41",          # a partial quantum decodes
    'blob.encode(HEX, blob=blob.decode(BASE64, 3, "QUJD"))': "4142",
    'blob.encode(HEX, UPPER, blob.decode(HEX, encoded="abc"))': "0ABC",         # odd: a leading 0 nibble
    'blob.encode(HEX, blob=blob.decode(HEX, 3, "abcdef"))': "0abc",
    'blob.encode(URL, blob=blob.decode(encoded="a b/c~\u00fc"))': "a%20b%2fc~%c3%bc",
    'blob.encode(URL, UPPER, blob.decode(URL, encoded="%e2%82%ac%2F+"))': "%E2%82%AC%2F%2B",
    'blob.encode(BASE64CF, blob=blob.decode(encoded="ab"))': "YWI_",
    'blob.encode(BASE64URLNOPAD, blob=blob.decode(encoded="ab"))': "YWI",
    'blob.transcode(BASE64, BASE64, encoded="QUJD")': "QUJD",
    'blob.transcode(HEX, HEX, UPPER, encoded="abcd")': "ABCD",
    'blob.transcode(BASE64, encoded="Q")': "",                                  # too short to decode
    'blob.encode(IDENTITY, blob=blob.decode(HEX, encoded="41004200"))': "A",    # a C string ends at NUL
    "blob.same(o.get(), o.get())": "true",
    'blob.same(blob.decode(encoded="x"), blob.decode(encoded="x"))': "false",
    "blob.same(blob.sub(o.get(), 6B), o.get())": "true",
    "blob.same(blob.sub(o.get(), 3B, 1B), blob.sub(o.get(), 3B, 1B))": "true",
    'blob.same(blob.decode(encoded=""), blob.decode(HEX, encoded=""))': "true",
    'blob.same(e.get(), blob.decode(encoded=""))': "false",
    'blob.equal(blob.decode(encoded="x"), blob.decode(HEX, encoded="78"))': "true",
    "blob.length(blob.sub(o.get(), 2B, 4B))": "2",
    "o.encode(HEX, UPPER)": "666F6F626172",
    "o.encode()": "foobar",
    "e.encode(HEX)": "",
    'blob.encode(BASE64, blob=blob.decode(BASE64, encoded="QQ=="))': "QQ==",
    'blob.encode(HEX, blob=blob.decode(BASE64CF, encoded="QQ__"))': "41",
    'blob.encode(BASE64, blob=blob.decode(encoded="foobar"))': "Zm9vYmFy",
    'blob.encode(BASE64URL, blob=blob.decode(HEX, encoded="fbff"))': "-_8=",
}


def _run(body: str) -> Context:
    vcl = compile_vcl(VCL % body, "t.vcl")
    init = Context(method="vcl_init", vcl=vcl)
    assert vcl.init(init).name == "ok", init.log
    req = HttpMessage("GET", "/")
    ctx = Context(method="vcl_synth", req=req, req_top=req, resp=HttpMessage("GET", "/", status=200), vcl=vcl)
    vcl.subs["vcl_synth"](ctx)
    return ctx


def test_answers_recorded_from_varnishd():
    body = "\n".join(f"\tset resp.http.x{i} = {expr};" for i, expr in enumerate(CASES))
    ctx = _run(body)
    got = {expr: ctx.resp.headers.get(f"x{i}") for i, expr in enumerate(CASES)}
    assert got == CASES


@pytest.mark.parametrize("expr, message", [
    ('blob.decode(BASE64, encoded="TWFu!")', 'vmod blob error: cannot decode, illegal encoding beginning with "TWFu!"'),
    ('blob.decode(HEX, encoded="0x12")', 'illegal encoding beginning with "0x12"'),
    ('blob.decode(URL, encoded="%2")', 'illegal encoding beginning with "%2"'),
    ('blob.decode(URL, encoded="%2q")', 'illegal encoding beginning with "%2q"'),
    ('blob.decode(BASE64URLNOPAD, encoded="QQ==")', "illegal encoding"),
    ('blob.decode(BASE64, encoded="Q")', 'beginning with "Q"'),     # one character is no byte
    ('blob.decode(BASE64, encoded="")', None),           # nothing to decode: the empty blob
    ('blob.encode(IDENTITY, LOWER, blob.decode(encoded="x"))',
     "vmod blob error: case LOWER is illegal with encoding IDENTITY"),
    ('blob.encode(HEX, blob=blob.sub(blob.decode(encoded=""), 1B))', "vmod blob error: blob is empty in blob.sub()"),
    ('blob.encode(HEX, blob=blob.sub(blob.decode(encoded="abc"), 2B, 2B))',
     "vmod blob error: size 2 from offset 2 requires more bytes than blob length 3 in blob.sub()"),
])
def test_errors_fail_the_task(expr, message):
    if message is None:
        assert _run(f"set resp.http.x = blob.length({expr});").resp.headers.get("x") == "0"
        return
    with pytest.raises(VCLFailure) as info:
        _run(f"set resp.http.x = {expr};")
    assert message in str(info.value)


def test_blob_object_is_built_in_vcl_init_and_fails_the_load_on_bad_input():
    vcl = compile_vcl('vcl 4.1;\nimport blob;\nbackend b none;\nsub vcl_init { new x = blob.blob(HEX, "zz"); }\n',
                      "t.vcl")
    ctx = Context(method="vcl_init", vcl=vcl)
    assert vcl.init(ctx).name == "fail"
    assert ctx.log[-1][1] == 'vmod blob error: cannot create blob x, illegal encoding beginning with "zz"'
    with pytest.raises(VCLError):
        compile_vcl('vcl 4.1;\nimport blob;\nbackend b none;\nsub vcl_recv { new x = blob.blob(HEX, "00"); }\n',
                    "t.vcl")


def test_blob_in_string_context_and_as_a_shard_key():
    ctx = _run('set resp.http.s = blob.decode(encoded="foo");')
    assert ctx.resp.headers.get("s") == ":Zm9v:"
