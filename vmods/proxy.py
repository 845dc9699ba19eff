"""vmod proxy (Varnish 7.1): the TLVs of a PROXY protocol v2 header (ALPN, authority, TLS details).

A connection that came without PROXY TLVs (every connection here: the server does not accept the
PROXY protocol) answers as in varnishd: strings unset, is_ssl() and the certificate flags false,
ssl_verify_result() 0 (X509_V_OK). A session that has them offers `proxy_tlvs`, a mapping of PP2
type (sub-types of the SSL TLV included) to its bytes.
"""

from __future__ import annotations

from vcl.runtime import Context
from vmods import Vmod

VMOD = Vmod("proxy")

PP2_TYPE_ALPN = 0x01
PP2_TYPE_AUTHORITY = 0x02
PP2_TYPE_SSL = 0x20
PP2_SUBTYPE_SSL_VERSION = 0x21
PP2_SUBTYPE_SSL_CN = 0x22
PP2_SUBTYPE_SSL_CIPHER = 0x23
PP2_SUBTYPE_SSL_SIG_ALG = 0x24
PP2_SUBTYPE_SSL_KEY_ALG = 0x25
PP2_CLIENT_SSL, PP2_CLIENT_CERT_CONN, PP2_CLIENT_CERT_SESS = 0x01, 0x02, 0x04


def _tlv(ctx: Context, kind: int) -> bytes | None:
    if getattr(ctx, "req", None) is None:          # VPX_tlv works on the client request
        return None
    tlvs = getattr(ctx.session, "proxy_tlvs", None)
    return tlvs.get(kind) if tlvs else None


def _string(ctx: Context, kind: int) -> str | None:
    value = _tlv(ctx, kind)
    return None if value is None else value.decode("utf-8", "surrogateescape")


def _ssl_flag(ctx: Context, flag: int) -> bool:
    ssl = _tlv(ctx, PP2_TYPE_SSL)
    return bool(ssl) and bool(ssl[0] & flag)


def _register(name: str, ret: str, impl) -> None:
    VMOD.func(name, ret, [])(impl)


_register("alpn", "STRING", lambda ctx: _string(ctx, PP2_TYPE_ALPN))
_register("authority", "STRING", lambda ctx: _string(ctx, PP2_TYPE_AUTHORITY))
_register("is_ssl", "BOOL", lambda ctx: _ssl_flag(ctx, PP2_CLIENT_SSL))
_register("client_has_cert_sess", "BOOL", lambda ctx: _ssl_flag(ctx, PP2_CLIENT_CERT_SESS))
_register("client_has_cert_conn", "BOOL", lambda ctx: _ssl_flag(ctx, PP2_CLIENT_CERT_CONN))
_register("ssl_version", "STRING", lambda ctx: _string(ctx, PP2_SUBTYPE_SSL_VERSION))
_register("client_cert_cn", "STRING", lambda ctx: _string(ctx, PP2_SUBTYPE_SSL_CN))
_register("ssl_cipher", "STRING", lambda ctx: _string(ctx, PP2_SUBTYPE_SSL_CIPHER))
_register("cert_sign", "STRING", lambda ctx: _string(ctx, PP2_SUBTYPE_SSL_SIG_ALG))
_register("cert_key", "STRING", lambda ctx: _string(ctx, PP2_SUBTYPE_SSL_KEY_ALG))


@VMOD.func("ssl_verify_result", "INT", [])
def ssl_verify_result(ctx: Context) -> int:
    """SSL_get_verify_result() as the proxy sent it; 0 (X509_V_OK) without an SSL TLV."""
    ssl = _tlv(ctx, PP2_TYPE_SSL)
    if ssl is None or len(ssl) < 5:
        return 0
    return int.from_bytes(ssl[1:5], "big")
