"""vmod directors against varnishd 7.1: hash and shard choose the same backends for the same keys.

RECORDED holds varnishd 7.1.1's choices for PARITY_VCL over /obj/0 .. /obj/299 (one digit per URL:
the backend sN), all healthy and with s2 sick; when varnishd is installed the live test re-records
them. The other tests check the rest of the vmod against the reference's rules.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import shutil
import subprocess
import tempfile
from collections import Counter

import pytest
from varnishd_port import listen_port

from cacheserver.backends import live, set_admin_health
from vcl.compiler import compile_vcl
from vcl.rtlib import end_task
from vcl.runtime import BackendSpec, Context, HttpMessage, VCLFailure
from vmods.directors import (
    Fallback,
    Hash,
    ParamBlob,
    Random,
    RoundRobin,
    Shard,
    ShardParam,
    _shard_add,
    _shard_backend,
    _shard_clear,
    _shard_remove,
    _sp_get,
    _sp_set,
    hash_strands32,
)

PARITY_VCL = """vcl 4.1;
import directors;
backend s1 { .host = "127.0.0.1"; .port = "9"; }
backend s2 { .host = "127.0.0.1"; .port = "9"; }
backend s3 { .host = "127.0.0.1"; .port = "9"; }
backend s4 { .host = "127.0.0.1"; .port = "9"; }
sub vcl_init {
	new h = directors.hash();
	h.add_backend(s1);
	h.add_backend(s2, 2.0);
	h.add_backend(s3);
	h.add_backend(s4, 0.5);
	new sh = directors.shard();
	sh.add_backend(s1);
	sh.add_backend(s2);
	sh.add_backend(s3);
	sh.add_backend(s4);
	sh.reconfigure();
	new sw = directors.shard();
	sw.add_backend(s1, ident="alpha");
	sw.add_backend(s2, weight=3);
	sw.add_backend(s3, ident="gamma", weight=2);
	sw.add_backend(s4);
	sw.reconfigure(replicas=25);
	sw.remove_backend(s2);
	sw.add_backend(s2, ident="beta");
	sw.add_backend(s1);
	sw.reconfigure(replicas=31);
}
sub vcl_recv {
	return (synth(200));
}
sub vcl_synth {
	set resp.http.h = h.backend(req.url);
	set resp.http.sh = sh.backend();
	set resp.http.sh-alt = sh.backend(alt=1);
	set resp.http.sh-alt3 = sh.backend(alt=3, healthy=ALL);
	set resp.http.sh-key = sh.backend(by=KEY, key=sh.key(req.url + "k"));
	set resp.http.sw = sw.backend(by=URL);
	set resp.http.sw-ign = sw.backend(healthy=IGNORE, alt=1);
	set resp.http.sw-all = sw.backend(alt=2, healthy=ALL);
	set resp.http.key = sh.key(req.url);
}
"""

URLS = [f"/obj/{i}" for i in range(300)]
COLUMNS = ("h", "sh", "sh-alt", "sh-alt3", "sh-key", "sw", "sw-ign", "sw-all")
# sha256 of varnishd's sh.key(url) values, one per line
KEYS_SHA256 = "9c29848dcd720212b8ff6a0224f4dcccea33100ecfba78c823b6f1c554574747"

RECORDED = {
    (): {
        "h": (
            "2221222332222333133223324222222112234221321113332331221432222133222324331323121323232431112131222123"
            "4222242432222124314323122222231123124211212223241222112322222241411331112222333241224212343221133221"
            "2142241133121122142224221241212112323122321221223112321232221233221222111211212412223324311142124432"
        ),
        "sh": (
            "2214113323341132212133114124411133413221232331242232342414414131333214333133223334314443434123224233"
            "4334414431441114244334242121132334421134133412124241223333444343424332431343332442134124444311213444"
            "1442434343444432132211314444131233232131232441441441343431333231243124222121444114443421121242312412"
        ),
        "sh-alt": (
            "3142331432234311424222232213332314324343114113324143214123141342221333212222111212131121211234111421"
            "3223143144113231333113414244213212234211412123232433331211131132312411213132223233312433222123424132"
            "4214341132132124244134232132313412313323313222332123224342222113431341444342123333112234243414133323"
        ),
        "sh-alt3": (
            "1331444244422224341414441332244222242132443222113421121242222224114142421441332421422212142341432112"
            "2142322223324342122241331433321121142323321241441322414444222421241123124411444321441311111444142321"
            "3321223214323313313342441321424321144444141333214312131224111422322432131413232241224142434123444244"
        ),
        "sh-key": (
            "3211323112334222144343314443432133212243331123422423442412231441344434413434442411134434332122312133"
            "1441433443244431424412243142131223113442314432413143122334223332433144411242244322212121144343424313"
            "2124331232132343441421244233431422142343443434232314331411214331344231434331433321234232442223312441"
        ),
        "sw": (
            "3311113433331231333331113334112121334311121211422143111331131141332414133141142133221331131132131133"
            "4331112341412313334333143311321223124414113123233333331131131344312231111221313133121432313211114413"
            "4441444221431413124411112241221411411131331213323411141441332142132111343111112312113323331143213411"
        ),
        "sw-ign": (
            "2412334124424142124411111142413413121414214112131214443144324411111113144313111222114121223121444214"
            "1144141113311111413441432132132334233111341434311114241211423113423441211134124344113343234132221344"
            "3134211132312341113113113112113314113243442431234331332313113431121333232333421123141431112331311331"
        ),
        "sw-all": (
            "4231111311141323411142244121131244112142311443243331312121411332441242221434234114131144114214121142"
            "2411331434243141112212121213111411141342424111142112113313144121241122144143232121411214411121133211"
            "2113122411114131232344431321341143244114111311441123424132444123444114111121141414412144441211144244"
        ),
    },
    ("s2",): {
        "h": (
            "3131113331113433134333334313313111334331311114441331131433133133331434331313111434143441111131313113"
            "4313343431333114314334133333331134134111113334341333111331311341411431113131433341114113444131133331"
            "1141141144131113141134311141311111433111331131133113311333331334311131111111313413334434311143134433"
        ),
        "sh": (
            "3114113333341131414133114114411133413341134331344133344414414131333314333133113334314443434133114433"
            "4334414431441114344334444141133334431134133413134441333333444343414331431343333443134134444311413444"
            "1444434343444434134111314444131433333131333441441441343431333131443144444141444114443431141444313413"
        ),
        "sh-alt": (
            "3143331431134311434341333413333314334343114113334143414133141343441333114314111113131131311434111441"
            "3413143144113431333113414344413413334411414133333433331111131134313411313134113133313433333133434133"
            "4114341131131144444134133133313414313313313114333133414343444113431341444344113333111334343414133333"
        ),
        "sh-alt3": (
            "4443331411134313133341333443333314334413311113431344413133141343441433114314441113131131311414341341"
            "3413143144113431433113113314414413314411414134313133141111131134333414313134111134313443333133334133"
            "4113341131131141441434133133313114411313414114333133414343444313131311313334113333111314313311131331"
        ),
        "sh-key": (
            "3411343114334441144343314443433133114343331113434443441414331441344434413434443411134434333133314133"
            "1441433443444431414411343144131333113444314434413143143334443331433144411443344331313111144343414313"
            "4134331334134343441431344433431413143343443434431314331411314331344131434331433331334334441113314441"
        ),
        "sw": (
            "3311113433331131333331113334113111334311111111431143111331131141331414133141141133111331131131131133"
            "4331111341411313334333143311331333134414113133333333331131131344313431111131313133111433313111114413"
            "4441444131431413114411113141111411411131331413333411141441333141131111343111111313113333331143313411"
        ),
        "sw-ign": (
            "2412334124424142124411111142413413121414214112131214443144324411111113144313111222114121223121444214"
            "1144141113311111413441432132132334233111341434311114241211423113423441211134124344113343234132221344"
            "3134211132312341113113113112113314113243442431234331332313113431121333232333421123141431112331311331"
        ),
        "sw-all": (
            "1133111311111411411143344113134334113143131344314131311111441333443341311434333341341114314313111341"
            "3411333434141141111111111414113141311341434141441111113113114131131313344313111111431111111343313111"
            "1113131313113131311344431433131143344314113111111113413134441114413114111111133431411114443111144144"
        ),
    },
}


def _ours(sick: tuple[str, ...]) -> tuple[dict[str, str], str]:
    """Our choices for PARITY_VCL: column -> one digit per URL; and the keys' sha256."""
    vcl = compile_vcl(PARITY_VCL, "parity.vcl")
    assert vcl.init(Context(method="vcl_init", vcl=vcl)).name == "ok"
    for name in sick:
        set_admin_health(vcl.backends[name], "sick")
    cols: dict[str, list[str]] = {c: [] for c in COLUMNS}
    keys = []
    for url in URLS:
        req = HttpMessage("GET", url)
        ctx = Context(method="vcl_synth", req=req, req_top=req, resp=HttpMessage("GET", url, status=200),
                      vcl=vcl)
        vcl.subs["vcl_synth"](ctx)
        for c in COLUMNS:
            cols[c].append(ctx.resp.headers.get(c)[1:])
        keys.append(ctx.resp.headers.get("key"))
    return {c: "".join(v) for c, v in cols.items()}, hashlib.sha256("\n".join(keys).encode()).hexdigest()


@pytest.mark.parametrize("sick", [(), ("s2",)])
def test_hash_and_shard_choose_what_varnishd_recorded(sick):
    ours, keys = _ours(sick)
    assert keys == KEYS_SHA256
    for c in COLUMNS:
        want = "".join(RECORDED[sick][c])
        diff = [URLS[i] for i in range(len(URLS)) if ours[c][i] != want[i]]
        assert not diff, f"{c}: {len(diff)} URLs differ, e.g. {diff[:5]}"


VARNISHD = shutil.which("varnishd") or ("/usr/sbin/varnishd" if os.path.exists("/usr/sbin/varnishd") else None)
VARNISHADM = shutil.which("varnishadm") or "/usr/bin/varnishadm"


def _record_varnishd(sick: tuple[str, ...]) -> tuple[dict[str, str], str]:
    work = tempfile.mkdtemp(prefix="vmodpar", dir="/tmp")
    os.chmod(work, 0o755)      # varnishd drops to its own user before reading the VCL
    vcl = os.path.join(work, "parity.vcl")
    with open(vcl, "w") as f:
        f.write(PARITY_VCL)
    os.chmod(vcl, 0o644)
    proc = subprocess.Popen([VARNISHD, "-F", "-n", work, "-a", "127.0.0.1:0", "-f", vcl,
                             "-T", "127.0.0.1:0", "-s", "malloc,16m"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        port = listen_port(work)
        for name in sick:
            subprocess.run([VARNISHADM, "-n", work, "backend.set_health", name, "sick"], check=True,
                           capture_output=True)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        cols: dict[str, list[str]] = {c: [] for c in COLUMNS}
        keys = []
        for url in URLS:
            conn.request("GET", url)
            resp = conn.getresponse()
            resp.read()
            for c in COLUMNS:
                cols[c].append(resp.getheader(c)[1:])
            keys.append(resp.getheader("key"))
        return {c: "".join(v) for c, v in cols.items()}, hashlib.sha256("\n".join(keys).encode()).hexdigest()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        shutil.rmtree(work, ignore_errors=True)


@pytest.mark.skipif(VARNISHD is None, reason="varnishd not installed")
@pytest.mark.parametrize("sick", [(), ("s2",)])
def test_hash_and_shard_choose_what_varnishd_chooses_live(sick):
    theirs = _record_varnishd(sick)
    assert _ours(sick) == theirs


# -- the key function and the simple directors -------------------------------------------------------

def test_hash_strands32_is_sha256_last_four_bytes_little_endian():
    digest = hashlib.sha256(b"/foo").digest()
    assert hash_strands32("/foo") == int.from_bytes(digest[28:], "little")
    assert hash_strands32(None) == hash_strands32("")


def _bes(n: int) -> list[BackendSpec]:
    return [BackendSpec(f"b{i}", host="127.0.0.1", port=str(9000 + i)) for i in range(n)]


def _ctx(method: str = "vcl_recv", url: str = "/") -> Context:
    req = HttpMessage("GET", url)
    return Context(method=method, req=req, req_top=req)


def test_round_robin_keeps_its_place_over_sick_members_and_removals():
    b = _bes(3)
    rr = RoundRobin()
    for x in b:
        rr.add(x)
    assert [rr.resolve(_ctx()).name for _ in range(4)] == ["b0", "b1", "b2", "b0"]
    set_admin_health(b[2], "sick")
    assert [rr.resolve(_ctx()).name for _ in range(3)] == ["b1", "b0", "b1"]
    rr.remove(b[1])
    # varnishd's nxt (2) is past the end: it tries the stale slot (b2, sick), then b2 again, and
    # gives up for this request; the next one starts over at b0
    assert rr.resolve(_ctx()) is None
    assert rr.resolve(_ctx()).name == "b0"
    set_admin_health(b[0], "sick")
    assert rr.resolve(_ctx()) is None


def test_fallback_sticky_stays_on_the_backend_it_fell_back_to():
    b = _bes(3)
    plain, sticky = Fallback(), Fallback(sticky=True)
    for x in b:
        plain.add(x)
        sticky.add(x)
    set_admin_health(b[0], "sick")
    assert plain.resolve(_ctx()) is b[1] and sticky.resolve(_ctx()) is b[1]
    set_admin_health(b[0], "healthy")
    assert plain.resolve(_ctx()) is b[0]            # back to the first healthy
    assert sticky.resolve(_ctx()) is b[1]           # stays
    set_admin_health(b[1], "sick")
    assert sticky.resolve(_ctx()) is b[2]
    sticky.remove(b[0])                             # cur follows its member
    assert sticky.resolve(_ctx()) is b[2]


def test_random_follows_the_weights_of_healthy_members():
    b = _bes(3)
    r = Random()
    r.add(b[0], 1.0)
    r.add(b[1], 3.0)
    r.add(b[2], 0.0)
    counts = Counter(r.resolve(_ctx()).name for _ in range(4000))
    assert counts["b2"] == 0 and 2.4 < counts["b1"] / counts["b0"] < 3.8
    set_admin_health(b[1], "sick")
    assert {r.resolve(_ctx()).name for _ in range(50)} == {"b0"}


def test_hash_weights_and_none_backend():
    b = _bes(2)
    h = Hash()
    h.add(b[0], 1.0)
    h.add(b[1], 1.0)
    u = next(f"/{i}" for i in range(100) if hash_strands32(f"/{i}") / 2**32 >= 0.5)
    assert h.pick(_ctx(), u) is b[1]
    set_admin_health(b[1], "sick")
    assert h.pick(_ctx(), u) is b[0]
    with pytest.raises(VCLFailure, match="None backend cannot be added"):
        h.add(None)


# -- shard configuration, parameters, restrictions -----------------------------------------------

def _shard(n: int = 4, **kw) -> tuple[Shard, list[BackendSpec]]:
    b = _bes(n)
    sh = Shard()
    sh.vcl_name = "sh"
    init = Context(method="vcl_init")
    for x in b:
        _shard_add(sh, init, x, **kw)
    sh.reconfigure(init, 67)
    return sh, b


def test_shard_changes_apply_at_reconfigure_or_when_their_task_ends():
    b = _bes(2)
    sh = Shard()
    init = Context(method="vcl_init")
    _shard_add(sh, init, b[0])
    assert sh.backends == []                        # pending until reconfigure
    sh.reconfigure(init, 5)
    assert len(sh.circle) == 5
    _shard_add(sh, init, b[1])
    _shard_add(sh, init, b[1])                      # a duplicate is skipped (with a notice)
    assert sh.healthy(_ctx())                       # another task: the change applies with 67
    # a backend keeps the replicas it was added with: 5 for b0, 67 for b1
    assert [x.backend for x in sh.backends] == b and len(sh.circle) == 5 + 67
    assert sh.reconfigure(init, 0) is False         # invalid replicas


def test_shard_clear_in_a_client_task_applies_when_the_task_ends():
    """varnishd 7.1.1 (a .vtc): sh.clear() in vcl_recv, then sh.backend() in the same task still picks
    the backend; the next request finds none."""
    sh, b = _shard(1)
    ctx = _ctx()
    _shard_clear(sh, ctx)
    assert _shard_backend(sh, ctx, by="KEY", key=1) is b[0]
    end_task(ctx)
    assert _shard_backend(sh, _ctx(), by="KEY", key=1) is None


def test_shard_remove_by_ident_and_by_backend():
    b = _bes(3)
    sh = Shard()
    init = Context(method="vcl_init")
    _shard_add(sh, init, b[0], ident="x")
    _shard_add(sh, init, b[0], ident="y")
    _shard_add(sh, init, b[1])
    _shard_add(sh, init, b[2])
    sh.reconfigure(init, 3)
    _shard_remove(sh, init, ident="x")
    sh.reconfigure(init, 3)
    assert [x.ident_or_name() for x in sh.backends] == ["b2", "y", "b1"]   # the last fills the hole
    _shard_remove(sh, init, b[0])                   # by backend: all its instances
    sh.reconfigure(init, 3)
    assert [x.ident_or_name() for x in sh.backends] == ["b2", "b1"]
    with pytest.raises(VCLFailure, match="either backend or ident"):
        _shard_remove(sh, init)


def test_shard_backend_arguments_are_checked():
    sh, _ = _shard()
    ctx = _ctx()
    with pytest.raises(VCLFailure, match="missing key argument with by=KEY"):
        _shard_backend(sh, ctx, by="KEY")
    with pytest.raises(VCLFailure, match="invalid key argument"):
        _shard_backend(sh, ctx, by="KEY", key=-1)
    with pytest.raises(VCLFailure, match="invalid with by=HASH"):
        _shard_backend(sh, ctx, key=5)
    with pytest.raises(VCLFailure, match="invalid warmup"):
        _shard_backend(sh, ctx, warmup=2.0)
    with pytest.raises(VCLFailure, match="can not be used in vcl_init"):
        _shard_backend(sh, Context(method="vcl_init"), resolve="NOW")
    with pytest.raises(VCLFailure, match="only be used in backend/pipe"):
        _shard_backend(sh, ctx, resolve="LAZY", alt=1)
    assert _shard_backend(sh, Context(method="vcl_init")) is sh      # LAZY in vcl_init


def test_shard_by_blob_uses_the_first_four_bytes_big_endian():
    sh, _ = _shard()
    ctx = _ctx()
    key = int.from_bytes(b"\x01\x02\x03\x04", "big")
    assert _shard_backend(sh, ctx, by="BLOB", key_blob=b"\x01\x02\x03\x04\x05") is \
        _shard_backend(sh, ctx, by="KEY", key=key)
    assert _shard_backend(sh, ctx, by="BLOB", key_blob=b"\x01\x02") is \
        _shard_backend(sh, ctx, by="KEY", key=0x0102)


def test_shard_lazy_parameters_and_shard_param_objects():
    sh, b = _shard()
    init = Context(method="vcl_init")
    p = ShardParam("p", sh.param.__class__("builtin", None, "VMOD"), "VCL")
    p.defaults = __import__("vmods.directors", fromlist=["x"]).SHARD_PARAM_DEFAULT
    _sp_set(p, init, by="KEY", key=42, alt=1)
    assert _sp_get("by")(p, init) == "KEY" and _sp_get("key")(p, init) == 42
    assert _sp_get("healthy")(p, init) == "CHOSEN" and _sp_get("warmup")(p, init) == -1
    with pytest.raises(VCLFailure, match="may only be used in vcl_init and in backend"):
        _sp_set(p, _ctx("vcl_recv"), alt=2)
    blob = ParamBlob(p)
    # the director resolves lazily with the associated parameters: key 42, alt 1
    from vmods.directors import _shard_associate
    _shard_associate(sh, init, blob)
    bctx = Context(method="vcl_backend_fetch", bereq=HttpMessage("GET", "/"))
    want = _shard_backend(sh, _ctx(), by="KEY", key=42, alt=1)
    assert sh.resolve(bctx) is want
    # a backend task overrides the object's values for itself only
    _sp_set(p, bctx, alt=0)
    assert _sp_get("alt")(p, bctx) == 0 and _sp_get("alt")(p, init) == 1
    assert sh.resolve(bctx) is _shard_backend(sh, _ctx(), by="KEY", key=42, alt=0)
    # LAZY with parameters in a backend task: kept for this task's resolve
    bctx2 = Context(method="vcl_backend_fetch", bereq=HttpMessage("GET", "/"))
    assert _shard_backend(sh, bctx2, resolve="LAZY", by="KEY", key=7) is sh
    assert sh.resolve(bctx2) is _shard_backend(sh, _ctx(), by="KEY", key=7, alt=1)


def test_shard_by_hash_on_the_backend_side_uses_the_digest():
    sh, _ = _shard()
    digest = hashlib.sha256(b"anything").digest()
    bctx = Context(method="vcl_backend_fetch", bereq=HttpMessage("GET", "/x"), hash=digest)
    key = int.from_bytes(digest[:4], "big")
    assert sh.resolve(bctx) is _shard_backend(sh, _ctx(), by="KEY", key=key)
    # on the client side by=HASH hashes the URL
    assert _shard_backend(sh, _ctx(url="/x")) is _shard_backend(sh, _ctx(url="/x"), by="URL")


def test_shard_rampup_and_warmup_send_some_requests_to_the_next_backend():
    sh, b = _shard()
    ctx = _ctx(url="/w")
    first = _shard_backend(sh, ctx)
    second = _shard_backend(sh, ctx, alt=1)
    picks = Counter(_shard_backend(sh, ctx, warmup=0.5).name for _ in range(400))
    assert set(picks) == {first.name, second.name} and 120 < picks[second.name] < 280
    assert {_shard_backend(sh, ctx, warmup=0.0, rampup=False).name for _ in range(50)} == {first.name}
    # the chosen backend just became healthy with a rampup of an hour: almost all go to the next one
    sh.rampup_duration = 3600.0
    for x in b:
        live(x).changed -= 7200                     # all healthy for two hours...
    set_admin_health(first, "sick")                 # ...but the chosen one, just back
    set_admin_health(first, "healthy")
    picks = Counter(_shard_backend(sh, ctx).name for _ in range(200))
    assert picks[second.name] > 190


def test_vtest_integer_comparisons_used_by_the_shard_cases():
    from vtest.http import compare
    assert compare("2479998125", "-eq", "0x93d1c4ad")
    assert compare("010", "-eq", "8") and compare("-3", "-lt", "2") and not compare(None, "-eq", "0")
    assert compare("5", "-ge", "5") and compare("5", "-ne", "6") and not compare("7", "-le", "6")


def test_lookup_finds_backends_and_directors_only_in_vcl_init():
    src = """vcl 4.1;
import directors;
backend s1 { .host = "127.0.0.1"; }
sub vcl_init {
	new rr = directors.round_robin();
	rr.add_backend(directors.lookup("s1"));
	new fb = directors.fallback();
	fb.add_backend(directors.lookup("rr"));
}
sub vcl_recv { set req.backend_hint = directors.lookup("s1"); }
"""
    vcl = compile_vcl(src, "t.vcl")
    assert vcl.init(Context(method="vcl_init", vcl=vcl)).name == "ok"
    fb = vcl.instances["fb"]
    assert fb.resolve(_ctx()) is vcl.instances["rr"] and vcl.instances["rr"].resolve(_ctx()).name == "s1"
    with pytest.raises(VCLFailure, match="lookup\\(\\) may only be called from vcl_init / vcl_fini"):
        vcl.subs["vcl_recv"](Context(method="vcl_recv", req=HttpMessage("GET", "/"), vcl=vcl))


def test_shard_debug_logs_the_ring_and_lookups():
    sh = Shard()
    sh.vcl_name = "sh"
    init = Context(method="vcl_init")
    sh.debug_flags = 3
    _shard_add(sh, init, _bes(1)[0])
    sh.reconfigure(init, 2)
    assert sum(text.startswith("vmod_directors: shard: hashcircle[") for _, text in init.log) == 2
    ctx = _ctx()
    _shard_backend(sh, ctx)
    assert any(text.startswith("vmod_directors: shard: lookup key ") for _, text in ctx.log)


def test_round_robin_removal_keeps_varnishds_next_position():
    b = _bes(3)
    rr = RoundRobin()
    for x in b:
        rr.add(x)
    assert [rr.resolve(_ctx()).name for _ in range(2)] == ["b0", "b1"]
    rr.remove(b[0])          # nxt (2) now past the end: varnishd reads the old last slot, b2
    assert [rr.resolve(_ctx()).name for _ in range(3)] == ["b2", "b2", "b1"]


def test_shard_debug_lines_go_to_vxid_0_at_once():
    """varnishd's SHDBG is VSL(SLT_Debug, 0, ...): written at once under vxid 0, not in the task's
    records (directors_c00006 / c00011 read them so); in vcl_init they stay in order with the rest."""
    from types import SimpleNamespace

    from vmods.directors import _debug

    written = []
    server = SimpleNamespace(vsl=SimpleNamespace(write=lambda vxid, kind, recs: written.append((vxid, recs))))
    task = SimpleNamespace(method="vcl_recv", server=server, log=[])
    _debug(task, "vmod_directors: shard: x")
    assert written == [(0, [("Debug", "vmod_directors: shard: x")])] and task.log == []
    init = SimpleNamespace(method="vcl_init", server=server, log=[])
    _debug(init, "vmod_directors: shard: y")
    assert init.log == [("Debug", "vmod_directors: shard: y")] and len(written) == 1
    # vcl_fini's records go nowhere here; varnishd 7.1.1 writes a vcl_fini reconfigure()'s hashcircle
    # lines (and then panics in the task's end, on the freed shard): written at once
    fini = SimpleNamespace(method="vcl_fini", server=server, log=[])
    _debug(fini, "vmod_directors: shard: z")
    assert written[1:] == [(0, [("Debug", "vmod_directors: shard: z")])] and fini.log == []
