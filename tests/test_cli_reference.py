"""The admin CLI, parameters and MGT counters against what varnishd 7.1.1 answers, byte for byte.

Every expected text below was taken from a real varnishd 7.1.1 (`varnishadm`/the CLI protocol) given
the same commands; the timestamps are the only parts that are masked.
"""

from __future__ import annotations

import asyncio
import json
import re
import time

import pytest

from cacheserver import param_show
from cacheserver.admin import AdminCommands, elastic
from cacheserver.params import Params, format_bytes
from cacheserver.server import ListenSpec, Server

VCL = 'vcl 4.1;\nbackend b1 { .host = "127.0.0.1"; .port = "9"; }\n'
NONE = "vcl 4.1;\nbackend default none;\n"
USES_LABEL = ('vcl 4.1;\nbackend b1 { .host = "127.0.0.1"; .port = "9"; }\n'
              'sub vcl_recv { if (req.url == "/l") { return (vcl(lab_one)); } }\n')


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 60))


class RunningServer(Server):
    """A server whose child counts as running, for the commands varnishd's child answers (these
    tests need no listening sockets)."""

    @property
    def running(self) -> bool:
        return True


def commands(vcl: str = VCL, running: bool = True) -> AdminCommands:
    server = RunningServer() if running else Server()
    server.listen_specs = [ListenSpec.parse("127.0.0.1:0", 0)]
    server.vcl_load("boot", vcl, "<boot>")
    return AdminCommands(server)


def ask(cmds: AdminCommands, line: str) -> tuple[int, str]:
    from cacheserver.admin import split_args

    return run(cmds.execute(split_args(line)))


def masked(text: str) -> str:
    return re.sub(r"\d{10}\.\d{3,6}", "T", text)


# ---- parameters: parsing, limits and messages --------------------------------------------------------

@pytest.mark.parametrize("name,text,shown", [
    ("default_ttl", "1m", "1.000"),          # 7.1 reads the number and ignores what follows
    ("default_ttl", "1e3", "1.000"),
    ("default_ttl", "5.5x", "5.500"),
    ("default_ttl", ".5", "0.500"),
    ("default_ttl", "1.2345678", "1.234"),
    ("http_max_hdr", "0x40", "64"),          # strtoul with base 0
    ("http_req_size", "1.5k", "1.50k"),
    ("cli_limit", "1000", "1000b"),
    ("cli_limit", "2kb", "2k"),
    ("thread_pool_max", "unlimited", "unlimited"),
    ("prefer_ipv6", "enable", "on"),
    ("acceptor_sleep_decay", "0.50", "0.5"),
    ("acceptor_sleep_decay", "0.12399", "0.123"),   # three decimals kept, the rest dropped
    ("default_ttl", "999999999999.9999", "999999999999.999"),
    ("ban_cutoff", "99999999999999", "276447231"),   # an unsigned int: 32 bits kept
    ("ban_cutoff", "-4294967295", "1"),
    ("ban_cutoff", "18446744073709551616", "unlimited"),   # strtoul's ULONG_MAX, then 32 bits
    ("ban_cutoff", "010", "8"),                   # octal
    ("gzip_buffer", "99999999999999", "276447231b"),   # tweak_bytes_u: 32 bits kept too
    ("gzip_buffer", "8192.0", "8k"),
    ("gzip_buffer", "2.001k", "2049b"),
    ("debug", " ", "none"),                       # no items: nothing changes
    ("pool_req", "1,2,3,4", "1,2,3"),
    ("pool_req", "1, 2, 3", "1,2,3"),
])
def test_values_are_read_and_shown_as_varnishd(name, text, shown):
    p = Params()
    p.set(name, text)
    assert p.text(name) == shown


@pytest.mark.parametrize("name,text,message", [
    ("default_ttl", "abc", "Invalid number (abc)"),
    ("default_ttl", "+3", "Invalid number (+3)"),
    ("default_ttl", "-1", "Must be greater or equal to 0.000"),
    ("acceptor_sleep_decay", "2", "Must be less than or equal to 1"),
    ("http_max_hdr", "10", "Must be at least 32"),
    ("http_max_hdr", "-1", "Must be no more than 65535"),
    ("http_max_hdr", "1e2", "Not a number (1e2)"),
    ("rush_exponent", "2.5", "Not a number (2.5)"),
    ("gzip_level", "10", "Must be no more than 9"),
    ("thread_pools", "300", "Must be no more than 32"),
    ("thread_pool_min", "6000", "Must be no more than 5000 (thread_pool_max)"),
    ("thread_pool_stack", "1k", "Must be at least 16k"),
    ("cli_limit", "100000000", "Must be no more than 99999999b\n"),
    ("cli_limit", "1x", "Could not convert to bytes.\nUnknown BYTES unit of measurement ([KMGTP][B])\n"
                        "  Try something like '80k' or '120M'"),
    ("cli_limit", "1.5", "Could not convert to bytes.\nFractional BYTES not allowed\n"
                         "  Try something like '80k' or '120M'"),
    ("cli_limit", "-5", "Could not convert to bytes.\nInvalid number\n  Try something like '80k' or '120M'"),
    ("prefer_ipv6", "1", 'use "on" or "off"'),
    ("pool_req", "10", "Three fields required: min_pool, max_pool and max_age"),
    ("debug", "+foo", "Unknown debug bit (+foo)"),
    ("experimental", "+foo", "Unknown experimental bit (+foo)"),
    ("debug", "none,+lurker", "Missing '+' or '-' (none)"),
    ("default_ttl", "9999999999999", "Too many digits (9999999999999)"),
    ("default_ttl", "000000000000000001", "Too many digits (000000000000000001)"),
    ("default_ttl", ".", "Invalid number (.)"),
    ("ban_cutoff", "", "Illegal Min: 0"),         # varnishd tests the value's emptiness with the bounds
    ("thread_pool_reserve", "", "Illegal Max: 95"),
    ("ban_cutoff", "5 ", "Not a number (5 )"),
    ("thread_pool_reserve", "1000", "Must be no more than 95 (95% of thread_pool_min)"),
    ("vsl_space", "1T", "Must be no more than 4G\n"),
    ("gzip_buffer", "2.0001k", "Could not convert to bytes.\nToo many digits\n  Try something like '80k' or '120M'"),
    ("pool_req", "10,1,3", "min_pool cannot be larger than max_pool"),
    ("pool_req", "a,b,c", "Not a number (a)"),
    ("pool_req", "1,2,2000000", "Must be less than or equal to 1000000"),
])
def test_bad_values_get_varnishds_message(name, text, message):
    p = Params()
    with pytest.raises(ValueError) as err:
        p.set(name, text)
    assert str(err.value) == message


def test_bits_apply_in_turn_and_keep_what_came_before_an_error():
    p = Params()
    with pytest.raises(ValueError):
        p.set("debug", "+vtc_mode,syncvsl")
    assert p.text("debug") == "+vtc_mode"               # as varnishd: the first item stayed
    p.set("debug", "+lurker,+flush_head")
    assert p.text("debug") == "+lurker,+flush_head,+vtc_mode"     # in the order of the bit table
    p.set("debug", "none")
    assert p.text("debug") == "none"
    p.set("feature", "+http2")
    assert p.text("feature") == "+http2,+validate_headers"
    p.set("feature", "default")
    assert p.text("feature") == "+validate_headers"
    p.set("vsl_mask", "+Debug")
    assert not p.text("vsl_mask").startswith("-Debug,")


def test_byte_formatting():
    assert [format_bytes(n) for n in (1536, 49152, 1 << 28, 1000, 256, 0)] == \
        ["1.50k", "48k", "0.25G", "1000b", "0.25k", "0b"]


def test_accept_filter_is_not_available_on_linux():
    cmds = commands()
    assert ask(cmds, "param.set accept_filter on") == \
        (300, 'parameter "accept_filter" is not available on this platform.')
    assert ask(cmds, "param.show accept_filter")[1] == (
        "accept_filter\n        Not available\n\n\n\n"
        "        NB: This parameter depends on a feature which is not available\n        on this platform.\n\n")


# ---- param.show layouts ------------------------------------------------------------------------------

DEFAULT_TTL_LONG = """default_ttl
        Value is: 30.000 [seconds]
        Default is: 120.000
        Minimum is: 0.000

        The TTL assigned to objects if neither the backend nor the VCL
        code assigns one.

        NB: This parameter is evaluated only when objects are created.
        To change it for all objects, restart or ban everything.

"""

FEATURE_TABLE = """        Use +/- prefix to enable/disable individual feature:
           http2                      Enable HTTP/2 protocol support.
           short_panic                Short panic message.
           no_coredump                No coredumps.  Must be set before
                                      child process starts.
           https_scheme               Extract host from full URI in the
                                      HTTP/1 request line, if the
                                      scheme is https.
"""


def test_param_show_long_and_short_forms():
    cmds = commands()
    assert ask(cmds, "param.set default_ttl 30") == (200, "")
    assert ask(cmds, "param.show default_ttl") == (200, DEFAULT_TTL_LONG)
    assert ask(cmds, "param.show -l default_ttl") == (200, DEFAULT_TTL_LONG)
    assert ask(cmds, "param.show changed") == (200, "default_ttl                   30.000 [seconds]\n")
    short = ask(cmds, "param.show")[1].splitlines()
    assert "accept_filter                 -" in short
    assert "backend_remote_error_holddown 0.250 [seconds] (default)" in short
    assert "workspace_session             0.75k [bytes] (default)" in short
    assert FEATURE_TABLE in ask(cmds, "param.show feature")[1]


def test_param_show_j():
    cmds = commands()
    status, text = ask(cmds, "param.show -j default_ttl")
    assert status == 200
    assert masked(text) == (
        '[ 2, ["param.show", "-j", "default_ttl"], T,\n  {\n    "name": "default_ttl",\n'
        '    "implemented": true,\n    "value": 120.000,\n    "units": "seconds",\n'
        '    "default": "120.000",\n    "minimum": "0.000",\n    "description": "The TTL assigned to objects '
        'if neither the backend nor the VCL code assigns one.",\n    "flags": [\n      "obj_sticky"\n'
        '    ]\n  }\n]\n')
    status, text = ask(cmds, "param.set -j pool_req 1,2,3")
    assert '"value": {\n        "min_pool": 1,\n        "max_pool": 2,\n        "max_age": 3\n    },' in text
    assert masked(text).startswith('[ 2, ["param.set", "-j", "pool_req"], T,\n')
    items = json.loads(ask(cmds, "param.show -j")[1])[3:]
    # varnishd 7.1's 109 and ours: tinykvm_on_connect_timeout, prometheus_listen
    assert len(items) == 111 and items[0] == {"name": "accept_filter", "implemented": False}


@pytest.mark.parametrize("line,answer", [
    ("param.show a b", (105, "Too many parameters")),
    ("param.show -j -l", (106, "-l not permitted with param.show -j")),
    ("param.show -l -j", (106, 'Unknown parameter "-j".')),
    ("param.set nosuch 1", (106, 'Unknown parameter "nosuch".')),
    ("param.set default_ttl", (104, "Too few parameters\n")),
    ("param.set default_ttl -1", (106, "Must be greater or equal to 0.000\n\n"
                                       "(attempting to set param 'default_ttl' to '-1')")),
    ("param.reset nosuch", (106, 'Unknown parameter "nosuch".')),
    ("param.set cc_command x", (200, "\nChange will take effect when VCL script is reloaded")),
    ("param.reset cc_command", (200, "\nChange will take effect when VCL script is reloaded")),
    ("param.reset sigsegv_handler", (200, "\nChange will take effect when child is restarted")),
    ("param.show -j changed", (200, "[ 2, [\"param.show\", \"-j\", \"changed\"], T,\n\n]\n")),
    ('ban req.url == ""', (104, "Too few parameters\n")),       # the child never sees an empty argument
    ('ban req.url == "" && req.url == x', (106, "Wrong number of arguments")),
    ('ban req.url ~ "["', (106, "Regex compile error: missing terminating ] for character class")),
    ('ban req.url !~ "(a"', (106, "Regex compile error: missing closing parenthesis")),
    ("vcl.load 1foo /nonexistent", (106, "Illegal character in VCL name ('1')")),   # before the file
    ("vcl.load b/c /nonexistent", (106, "Illegal character in VCL name ('/')")),
    ("vcl.load boot /nonexistent", (106, "Already a VCL named boot")),
    ("param.set h2_rxbuf_storage nosuch", (106, "unknown storage backend 'nosuch'\n"
                                                "(attempting to set param 'h2_rxbuf_storage' to 'nosuch')")),
])
def test_param_command_answers(line, answer):
    status, body = ask(commands(), line)
    assert (status, masked(body)) == answer


def test_wrap_matches_varnishd():
    text = "Maximum size of CLI response.  If the response exceeds this limit, the response code will " \
           "be 201 instead of 200 and the last line will indicate the truncation."
    assert param_show.wrap(text) == (
        "        Maximum size of CLI response.  If the response exceeds this\n"
        "        limit, the response code will be 201 instead of 200 and the\n"
        "        last line will indicate the truncation.")


# ---- cli_limit ---------------------------------------------------------------------------------------

def test_cli_limit_truncates_with_201_but_not_counters_list():
    cmds = commands()
    assert ask(cmds, "param.set cli_limit 128") == (200, "")
    status, text = ask(cmds, "help")
    assert status == 201 and text == ("auth <response>\nbackend.list [-j] [-p] [<backend_pattern>]\n"
                                      "backend.set_health <backend_pattern> [auto|healthy|sick]\nban <field>")
    status, text = ask(cmds, "param.show")
    assert status == 201 and len(text) == 127
    assert ask(cmds, "vcl.list")[0] == 200
    status, text = ask(cmds, "counters.list")
    assert status == 200 and len(text) > 128 and "MAIN.cache_hit 0\n" in text


# ---- help and argument counts ------------------------------------------------------------------------

def test_help_texts_and_lists():
    cmds = commands()
    assert ask(cmds, "help vcl.state") == (200, "vcl.state <configname> [auto|cold|warm]\n"
                                                "  Force the state of the named configuration.\n")
    assert ask(cmds, "help backend.list") == (200, "backend.list [-j] [-p] [<backend_pattern>]\n"
                                                   "List backends.\n\n")
    assert ask(cmds, "help nosuch") == (101, "Unknown request.\nType 'help' for more info.\n")
    listing = ask(cmds, "help")[1].splitlines()
    assert listing[:2] == ["auth <response>", "backend.list [-j] [-p] [<backend_pattern>]"]
    assert "vcl.deps [-j]" in listing and "counters.list [-j] [<glob>...]" not in listing
    assert not any(x.startswith("debug.") for x in listing)
    assert "debug.xid [<xid> [<cachesize>]]" in ask(cmds, "help -d")[1].splitlines()
    items = json.loads(ask(cmds, "help -j")[1])[3:]
    ban_list = next(i for i in items if i["request"] == "ban.list")
    assert ban_list == {"request": "ban.list", "syntax": "ban.list [-j]", "help": "List the active bans.",
                        "minarg": 0, "maxarg": 0, "flags": "", "json": True}


def test_debug_help_lists_varnishds_debug_commands():
    # varnishd 7.1.1's `help -d`, whole
    assert ask(commands(), "help -d") == (200, (
        "debug.fragfetch\ndebug.listen_address\ndebug.panic.master\ndebug.panic.worker\n"
        "debug.reqpool.fail\ndebug.shutdown.delay\ndebug.srandom\ndebug.vmod\n"
        "debug.xid [<xid> [<cachesize>]]\nvcl.symtab\n"))
    cmds = commands()
    assert ask(cmds, "help debug.panic.master") == (200, "debug.panic.master\nPanic the master process.\n")
    assert ask(cmds, "help vcl.symtab") == (200, "vcl.symtab\nDump the VCL symbol-tables.\n")
    assert ask(cmds, "help debug.reqpool.fail") == (200, "debug.reqpool.fail\nSchedule req-pool failures.\n")
    assert ask(cmds, "debug.reqpool.fail") == (104, "Too few parameters\n")
    assert ask(cmds, "vcl.symtab x") == (105, "Too many parameters\n")


@pytest.mark.parametrize("text,bits", [
    ("F", 0b1), ("_F", 0b10), ("fF", 0b11), ("F__F_F", 0b101001), ("x", 0),
    ("_" * 63 + "F", 1 << 63), ("_" * 64 + "F", 0),       # varnishd keeps 64 attempts (uintmax_t)
])
def test_reqpool_fail_reads_left_to_right(text, bits):
    cmds = commands()
    assert ask(cmds, f'debug.reqpool.fail "{text}"') == (200, "")
    assert cmds.server.reqpool_fail == bits


def test_reqpool_attempts_consume_the_schedule_and_log_as_varnishd():
    cmds = commands()
    ask(cmds, "debug.reqpool.fail _F_F")
    records = []
    cmds.server.vsl.write = lambda vxid, kind, recs, tail=b"": records.append((vxid, kind, recs))
    assert [cmds.server.reqpool_fails() for _ in range(6)] == [False, True, False, True, False, False]
    assert records == [(0, "-", [("Debug", "Failing due to reqpoolfail (next= 0x2)")]),
                       (0, "-", [("Debug", "Failing due to reqpoolfail (next= 0x0)")])]


def test_vcl_symtab_lists_each_vcls_imports_as_varnishd_lays_them_out():
    import vmods.directors
    import vmods.std

    cmds = commands()
    assert ask(cmds, "vcl.inline two \"vcl 4.1; import std; import directors; backend default none;\"")[0] == 200
    status, text = ask(cmds, "vcl.symtab")
    assert status == 200
    head = ("Vcl: %s\n  symtab:\n    {array}\n      {object}\n        [\"version\"]: {number} <0>\n")
    boot, two = text.split("Vcl: two\n")
    assert boot == head % "boot"
    lines = ("Vcl: two\n" + two).splitlines()
    assert "\n".join(lines[:5]) + "\n" == head % "two"
    for i, module in ((5, vmods.std), (11, vmods.directors)):
        name = module.__name__.split(".")[1]
        assert lines[i:i + 5] == ["      {object}", '        ["dir"]: {string} <import>',
                                  '        ["type"]: {string} <$VMOD>', f'        ["name"]: {{string}} <{name}>',
                                  f'        ["file"]: {{string}} <{module.__file__}>']
        assert re.fullmatch(r'        \["dst"\]: \{string\} <\./vmod_cache/_vmod_%s\.[0-9a-f]{64}>' % name,
                            lines[i + 5])
    assert len(lines) == 17


@pytest.mark.parametrize("line,status", [
    ("ban.list a", 105), ("ban.list -j", 200), ("ban.list -j -j", 105), ("pid x", 105), ("vcl.use", 104),
    ("help a b", 105), ("status -j", 200), ("backend.list x y z", 105), ("backend.list -j x y", 106),
    ("backend.list -p -j", 200), ("debug.xid 1 2 3", 105),
    # -j on a command without JSON: cls_dispatch says so before it counts the arguments
    ("vcl.show -j boot", 102), ("vcl.discard -j", 102), ("ban -j a b c", 102), ("param.set -j", 104),
])
def test_argument_counts(line, status):
    assert ask(commands(), line)[0] == status


def test_json_envelopes():
    cmds = commands()
    assert masked(ask(cmds, "status -j")[1]) == '[ 2, ["status", "-j"], T, "running"\n]\n'
    assert masked(ask(cmds, "ping -j")[1]) == '[ 2, ["ping", "-j"], T, "PONG"\n\n]\n'
    assert masked(ask(cmds, "storage.list -j")[1]) == (
        '[ 2, ["storage.list", "-j"], T,\n  {\n    "name": "s0",\n    "storage": "malloc"\n},\n'
        '  {\n    "name": "Transient",\n    "storage": "malloc"\n}\n]\n')
    assert masked(ask(cmds, "ban.list -j")[1]) == (
        '[ 2, ["ban.list", "-j"], T,\n  {\n    "time": T,\n    "refs": 0,\n    "completed": true,\n'
        '    "spec": ""\n}\n]\n')


# ---- VCL commands ------------------------------------------------------------------------------------

def test_vcl_list_and_deps_with_labels_and_return_vcl():
    cmds = commands()
    cmds._load("c1", NONE, "<c1>", "cold")
    cmds._load("u2", NONE, "<u2>")
    assert ask(cmds, "vcl.label lab_one c1") == (300, "VCL 'c1' is cold - set to auto or warm first")
    assert ask(cmds, "vcl.label lab_one u2") == (200, "")
    cmds._load("usesl", USES_LABEL, "<usesl>")
    cmds._load("usesl2", USES_LABEL, "<usesl2>")
    assert ask(cmds, "vcl.list")[1] == (
        "active      auto     warm         0    boot\n"
        "available   cold     cold         0    c1\n"
        "available   auto     warm         0    u2         <-    (1 label)\n"
        "available   label    warm         0    lab_one    ->    u2 (2 return(vcl)'s)\n"
        "available   auto     warm         0    usesl\n"
        "available   auto     warm         0    usesl2\n")
    assert ask(cmds, "vcl.deps")[1] == "boot\nc1\nu2\nlab_one   u2\nusesl     lab_one\nusesl2    lab_one\n"
    deps = json.loads(ask(cmds, "vcl.deps -j")[1])
    assert deps[0] == 1 and deps[6] == {"name": "lab_one", "deps": ["u2"]}
    assert ask(cmds, "vcl.discard lab_one") == (
        300, "Cannot discard VCL label lab_one, other VCLs depend on it:\n\tusesl\n\tusesl2\n")
    assert ask(cmds, "vcl.use c1") == (300, "VCL 'c1' is cold - set to auto or warm first")
    assert ask(cmds, "vcl.state u2 cold") == (300, "A labeled VCL cannot be set cold")
    assert ask(cmds, "vcl.label usesl lab_one") == (106, "usesl is not a label")
    assert ask(cmds, "vcl.label lab_one usesl") == (
        106, "Vcl usesl uses Label lab_one\nPointing label lab_one at usesl would create a loop")
    assert ask(cmds, "vcl.use boot") == (200, "")              # already active: nothing to say
    assert ask(cmds, "vcl.load x /dev/null hot") == (106, "State must be one of auto, cold or warm.")


def test_vcl_list_layout_narrows_its_gaps_for_long_lines():
    # varnishd's example: with a 37-character label column the gaps shrink to one space
    rows = [["active", "auto", "warm", "     0", "boot"],
            ["available", "auto", "warm", "     0", "second_with_long_name", "<-", "(1 label)"],
            ["available", "label", "warm", "     0", "lab_one", "->",
             "second_with_long_name (1 return(vcl))"]]
    assert elastic(rows) == (
        "active    auto   warm       0  boot\n"
        "available auto   warm       0  second_with_long_name  <-  (1 label)\n"
        "available label  warm       0  lab_one                ->  second_with_long_name (1 return(vcl))\n")


def test_vcl_show_arguments():
    cmds = commands()
    assert ask(cmds, "vcl.show nosuch") == (106, "No VCL named 'nosuch'")
    assert ask(cmds, "vcl.show -x boot") == (106, "Too many parameters: 'boot'")
    assert ask(cmds, "vcl.show boot -v") == (106, "Too many parameters: '-v'")
    cmds._load("v2", VCL, "/etc/v2.vcl")
    status, text = ask(cmds, "vcl.show -v v2")
    assert status == 200 and text.startswith(f"// VCL.SHOW 0 {len(VCL)} /etc/v2.vcl\n{VCL}\n// VCL.SHOW 1 ")
    assert "<builtin>\n" in text


# ---- backends ----------------------------------------------------------------------------------------

PROBED = ('vcl 4.1;\nbackend b1 { .host = "127.0.0.1"; .port = "9"; }\n'
          'backend b2 { .host = "127.0.0.1"; .port = "9"; .probe = { .url = "/"; } }\n'
          'sub vcl_recv { set req.backend_hint = b2; }\n')


def test_backend_list_layout_and_probe_report():
    cmds = commands(PROBED, running=False)          # loaded before the child runs: no polls yet
    cmds.server.__class__ = RunningServer
    assert ask(cmds, "backend.set_health b1 sick") == (200, "")
    text = re.sub(r"\w{3}, \d\d \w{3} \d{4} [\d:]{8} GMT", "DATE", ask(cmds, "backend.list -p")[1])
    assert text == (
        "Backend name   Admin    Probe    Health     Last change\n"
        "boot.b1        sick     0/0      healthy    DATE\n"
        "boot.b2        probe    2/8      sick       DATE\n"
        " Current states  good:  2 threshold:  3 window:  8\n"
        "  Average response time of good probes: 0.000000\n"
        "  Oldest ================================================== Newest\n"
        "  --------------------------------------------------------------HH Happy\n\n")
    status, text = ask(cmds, "backend.list -j -p")
    data = json.loads(text)
    assert data[0] == 3 and data[3]["boot.b1"]["probe_details"] == {}
    assert data[3]["boot.b2"]["probe_details"]["bits_H"] == 3
    assert data[3]["boot.b1"]["probe_message"] == [0, 0, "healthy"]
    assert '"probe_message": [2, 8, "sick"],\n' in text


def test_backend_list_without_a_vcl_name_looks_in_the_active_vcl_only():
    cmds = commands()
    assert ask(cmds, 'vcl.inline other "vcl 4.1; backend ob { .host = \\"127.0.0.1\\"; .port = \\"9\\"; }"')[0] == 200
    names = {
        pattern: [line.split()[0] for line in ask(cmds, f"backend.list {pattern}".strip())[1].splitlines()[1:]]
        for pattern in ("", "*", "*.*", "other.*", "*.ob", "ob")}
    assert names == {"": ["boot.b1"], "*": ["boot.b1"], "*.*": ["boot.b1", "other.ob"], "other.*": ["other.ob"],
                     "*.ob": ["other.ob"], "ob": []}
    assert masked(ask(cmds, "backend.list -j ob")[1]) == '[ 3, ["backend.list", "-j", "ob"], T,\n  {\n  \n  }\n]\n'


# ---- panics, debug commands and MGT counters ------------------------------------------------------------

def test_panic_worker_panic_show_and_clear():
    async def body() -> None:
        cmds = commands(running=False)
        server = cmds.server
        await server.start()
        try:
            status, _ = await cmds.execute(["debug.panic.worker"])
            assert status == 400
            assert server.running                      # auto_restart: a fresh worker
            status, text = await cmds.execute(["panic.show"])
            assert status == 200 and text.startswith("Panic at: ")
            snap = server.counters.snapshot()
            assert snap["MGT.child_panic"] == 1 and snap["MGT.child_start"] == 2
            assert await cmds.execute(["panic.clear"]) == (200, "")
            assert await cmds.execute(["panic.clear"]) == (300, "No panic to clear")
            assert await cmds.execute(["panic.clear", "-z"]) == (200, "")
            assert server.counters.snapshot()["MGT.child_panic"] == 0
            assert await cmds.execute(["stop"]) == (200, "")
            assert server.counters.snapshot()["MGT.child_exit"] == 1
        finally:
            await server.close()

    run(body())


def test_debug_xid_and_srandom():
    from vmods.vrnd import TESTABLE

    cmds = commands()
    assert ask(cmds, "debug.xid") == (200, "XID is 0 chunk 32768")
    assert ask(cmds, "debug.xid 5") == (200, "XID is 5 chunk 1")
    assert ask(cmds, "debug.xid 7 4") == (200, "XID is 7 chunk 4")
    ask(cmds, "debug.srandom 5")
    first = TESTABLE.random()
    ask(cmds, "debug.srandom 5")
    assert TESTABLE.random() == first
    # the seed as strtoul(s, NULL, 0) reads it; no argument is 1
    for same in ("0x5", "05", "5junk"):
        ask(cmds, f"debug.srandom {same}")
        assert TESTABLE.random() == first, same
    ask(cmds, "debug.srandom")
    one = TESTABLE.random()
    ask(cmds, "debug.srandom 1")
    assert TESTABLE.random() == one != first


# ---- bans: the lurker drops unreferenced bans at the tail ----------------------------------------------

def test_ban_lurker_cleans_the_tail_unless_disabled():
    async def body(sleep: str) -> str:
        cmds = commands()
        ask_ = cmds.execute
        await ask_(["param.set", "ban_lurker_sleep", sleep])
        for expr in (["req.url", "~", "a"], ["req.url", "~", "b"], ["obj.ttl", ">", "1m"]):
            await ask_(["ban", *expr])
        if sleep == "0":
            await asyncio.sleep(0.2)        # a disabled lurker: nothing may change however long we wait
            return (await ask_(["ban.list"]))[1]
        deadline = time.monotonic() + 10    # a running one: until the list is down to one ban
        while True:
            text = (await ask_(["ban.list"]))[1]
            if len(text.splitlines()) <= 2 or time.monotonic() > deadline:
                return text
            await asyncio.sleep(0.01)

    text = asyncio.run(body("0.01"))
    assert re.sub(r"\d+\.\d+", "T", text) == "Present bans:\nT     0 -  obj.ttl > 1m\n"
    text = asyncio.run(body("0"))
    assert len(text.splitlines()) == 5        # all three, the two older and the initial one


def test_max_vcl_warns_or_refuses_as_max_vcl_handling_says():
    cmds = commands()
    assert ask(cmds, "param.set max_vcl 2") == (200, "")
    cmds._load("a1", NONE, "<a1>")
    assert ask(cmds, "vcl.label l1 a1") == (200, "")          # labels are not counted
    assert cmds._load("a2", NONE, "<a2>") == ("3 VCLs loaded\nRemember to vcl.discard the old/unused VCLs.\n"
                                              "(See max_vcl and max_vcl_handling parameters)")
    assert ask(cmds, "param.set max_vcl_handling 2") == (200, "")
    assert ask(cmds, 'vcl.inline a3 "vcl 4.1; backend default none;"') == (
        300, "Too many (3) VCLs already loaded\n(See max_vcl and max_vcl_handling parameters)")
    assert ask(cmds, "param.set max_vcl_handling 0") == (200, "")
    assert ask(cmds, 'vcl.inline a3 "vcl 4.1; backend default none;"') == (200, "")


def test_ban_dups_off_keeps_identical_bans():
    cmds = commands()
    for setting, want in (("on", 1), ("off", 0)):
        before = cmds.server.counters.bans_dups
        assert ask(cmds, f"param.set ban_dups {setting}") == (200, "")
        assert ask(cmds, "param.set ban_lurker_sleep 0") == (200, "")
        ask(cmds, "ban req.url ~ same")
        ask(cmds, "ban req.url ~ same")
        assert cmds.server.counters.bans_dups - before == want


def test_the_childs_commands_are_unknown_while_it_is_stopped():
    cmds = commands(running=False)
    unknown = (101, "Unknown request in manager process (child not running).\nType 'help' for more info.")
    for line in ("ban req.url ~ a", "ban.list", "backend.list", "backend.set_health b1 sick", "debug.xid",
                 "debug.listen_address", "debug.srandom", "debug.vmod", "debug.panic.worker"):
        assert ask(cmds, line) == unknown, line
    assert ask(cmds, "storage.list")[0] == 200
    assert ask(cmds, "help ban") == (101, "Unknown request.\nType 'help' for more info.\n")
    listing = ask(cmds, "help")[1].splitlines()
    assert listing[:3] == ["auth <response>", "banner", "help [-j|<command>]"]
    assert ask(cmds, "vcl.list")[1] == "active   auto    warm         -    boot\n"


def test_a_ban_drops_the_unreferenced_tail_at_once():
    cmds = commands()
    ask(cmds, "ban req.url ~ a")
    ask(cmds, "ban req.http. == x")
    text = ask(cmds, "ban.list")[1]
    assert re.sub(r"\d+\.\d+", "T", text) == "Present bans:\nT     0 -  req.http. == x\n"


def test_vcl_counters_after_labels_states_and_discards():
    cmds = commands()
    cmds._load("a1", NONE, "<a1>")
    cmds._load("a2", NONE, "<a2>", "cold")
    assert ask(cmds, "vcl.label l1 a1") == (200, "")
    assert ask(cmds, "vcl.discard a2") == (200, "")
    c = cmds.server.counters
    # as varnishd: labels are not VCLs, and a discarded VCL nobody uses is gone at once
    assert (c.n_vcl, c.n_vcl_avail, c.n_vcl_discard) == (2, 2, 0)


# ---- VCL temperature: an unused auto VCL goes cold vcl_cooldown after it was replaced -------------------

def test_replaced_auto_vcl_goes_cold_after_vcl_cooldown(monkeypatch):
    import cacheserver.admin as admin

    clock = [1000.0]
    monkeypatch.setattr(admin.time, "monotonic", lambda: clock[0])
    cmds = commands()

    def temperature(name: str) -> str:
        rows = ask(cmds, "vcl.list")[1].splitlines()
        return next(r.split()[2] for r in rows if r.split()[4:5] == [name])   # status state temp busy name

    assert ask(cmds, "param.set vcl_cooldown 10")[0] == 200
    vcl = 'vcl 4.1; backend b { .host = \\"127.0.0.1\\"; }'
    assert ask(cmds, f'vcl.inline vcl2 "{vcl}"')[0] == 200
    assert ask(cmds, f'vcl.inline vcl3 "{vcl}"')[0] == 200
    assert ask(cmds, "vcl.label lbl vcl3")[0] == 200
    assert ask(cmds, "vcl.state vcl2 warm")[0] == 200
    assert ask(cmds, "vcl.use vcl2")[0] == 200          # boot is replaced: its cooldown starts
    clock[0] += 9.9
    assert temperature("boot") == "warm"
    clock[0] += 0.2
    assert temperature("boot") == "cold"                 # 10 s after it stopped being used
    assert temperature("vcl3") == "warm"                 # labelled: kept warm
    assert ask(cmds, "vcl.state vcl2 auto")[0] == 200    # active: never cools down
    clock[0] += 100
    assert temperature("vcl2") == "warm"
    assert ask(cmds, "vcl.use boot")[0] == 200           # using it warms it; vcl2 starts cooling
    assert temperature("boot") == "warm"
    clock[0] += 10
    assert temperature("vcl2") == "cold"
