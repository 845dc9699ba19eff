"""Where a variable may be read, set and unset, and what VCC says when it may not; `default`.

A matrix of every variable of vcl-var(7) x every method x read/set/unset (4,690 programs) was
compiled by varnishd 7.1.1 and by us: the verdicts all agree and so do the messages, but for the
rows below, which differed before. Each expected message is varnishd's; the live test re-checks
them with `varnishd -C` and skips without it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from vcl.compiler import compile_vcl
from vcl.errors import VCLError

VARNISHD = shutil.which("varnishd") or ("/usr/sbin/varnishd" if os.path.exists("/usr/sbin/varnishd") else None)

# (method, statement, varnishd's message or None when it compiles)
CASES = [
    ("vcl_recv", "set bereq = req;", "Not available in subroutine 'vcl_recv'."),
    ("vcl_backend_fetch", "set bereq = bereq;", "Variable is read only."),
    ("vcl_init", "set client.ip = client.ip;", "Not available in subroutine 'vcl_init'."),
    ("vcl_recv", "set client.ip = client.ip;", "Variable is read only."),
    ("vcl_recv", "set obj.hits = 1;", "Not available in subroutine 'vcl_recv'."),
    ("vcl_hit", "set obj.hits = 1;", "Variable is read only."),
    ("vcl_backend_fetch", "set beresp.was_304 = true;", "Not available in subroutine 'vcl_backend_fetch'."),
    ("vcl_recv", "unset bereq.body;", "Cannot be unset in subroutine 'vcl_recv'."),
    ("vcl_backend_fetch", 'unset beresp.http.date;', "Cannot be unset in subroutine 'vcl_backend_fetch'."),
    ("vcl_recv", "set storage.s0.free_space = 1KB;", "Symbol not found: 'storage.s0.free_space'"),
    ("vcl_deliver", "unset storage.Transient.happy;", "Symbol not found: 'storage.Transient.happy'"),
    ("vcl_init", 'std.log("" + storage.s0.free_space);', None),
    ("vcl_fini", "if (storage.Transient.happy) { std.log(\"h\"); }", None),
    # `default` names a backend only where a BACKEND is expected (from a 5,152-program matrix of
    # operators x operand types, now all agreeing with varnishd)
    ("vcl_recv", 'set req.http.x = "" + default;', "Symbol 'default' is a reserved word."),
    ("vcl_recv", "if (default == req.backend_hint) { return (pass); }", "Symbol 'default' is a reserved word."),
    ("vcl_recv", "set req.http.x = Default;", "Symbol 'default' is a reserved word."),
    ("vcl_recv", "if (req.backend_hint == default) { return (pass); }", None),
    ("vcl_recv", "set req.backend_hint = default;", None),
    ("vcl_recv", "if (std.healthy(default)) { return (pass); }", None),
    # set's operator, after the variable is found (a 2,760-program matrix of targets x operators x
    # values, now agreeing)
    ("vcl_recv", 'set req.http.x == "a";', "Expected '=' got '=='"),
    ("vcl_recv", 'set req.url %= "a";', "Expected '=' got '%'"),
    ("vcl_recv", "set nosuch.var %= 1;", "Symbol not found: 'nosuch.var'"),
    ("vcl_synth", "set resp.body = -1;", "Unknown token '-' when looking for BODY"),
    ("vcl_synth", 'set resp.body =+ "a";', "Unknown token '+' when looking for BODY"),
    ("vcl_synth", "set resp.body = 1;", None),
]


def program(method: str, statement: str) -> str:
    return f'vcl 4.1;\nimport std;\nbackend b none;\nsub {method} {{\n    {statement}\n}}\n'


@pytest.mark.parametrize("method,statement,message", CASES)
def test_access_rules_and_messages(method, statement, message):
    if message is None:
        compile_vcl(program(method, statement), "a.vcl")
        return
    with pytest.raises(VCLError) as err:
        compile_vcl(program(method, statement), "a.vcl")
    assert err.value.message == message


def test_a_constant_string_condition_compiles_without_python_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        compile_vcl(program("vcl_recv", 'if ("a" + "b") { return (pass); }'), "w.vcl")


@pytest.mark.skipif(VARNISHD is None, reason="varnishd not installed")
def test_recorded_messages_are_varnishds():
    with tempfile.TemporaryDirectory(dir="/tmp") as tmp:
        os.chmod(tmp, 0o755)

        def says(item: tuple[int, tuple[str, str, str | None]]) -> bool:
            i, (method, statement, message) = item
            path = Path(tmp) / f"a{i}.vcl"
            path.write_text(program(method, statement))
            path.chmod(0o644)
            done = subprocess.run([VARNISHD, "-C", "-f", str(path)], capture_output=True, text=True, timeout=60)
            return done.returncode == 0 if message is None else f"\n{message}\n" in done.stderr

        with ThreadPoolExecutor(4) as pool:
            agree = list(pool.map(says, enumerate(CASES)))
    assert all(agree), [case for case, ok in zip(CASES, agree, strict=True) if not ok]
