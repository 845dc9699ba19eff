"""A regex that does not compile is refused with PCRE2's words, as varnishd 7.1 (which uses PCRE2)
says them: in VCL (`Regexp compilation error`) and in a ban (`Regex compile error`).

The messages were taken from varnishd 7.1.1 (`varnishd -C`); the live test re-checks them against
the installed varnishd and skips without it.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from cacheserver.bans import BanError, build
from vcl.compiler import compile_vcl
from vcl.errors import VCLError

VARNISHD = shutil.which("varnishd") or ("/usr/sbin/varnishd" if os.path.exists("/usr/sbin/varnishd") else None)

PCRE2_SAYS = [
    ("(", "missing closing parenthesis"),
    ("[a", "missing terminating ] for character class"),
    ("a{2,1}", "numbers out of order in {} quantifier"),
    ("*a", "quantifier does not follow a repeatable item"),
    ("a**", "quantifier does not follow a repeatable item"),
    ("(?<n", "syntax error in subpattern name (missing terminator?)"),
    ("a)", "unmatched closing parenthesis"),
    ("[z-a]", "range out of order in character class"),
    ("(?P<1a>x)", "subpattern name must start with a non-digit"),
    ("x{99999}", "number too big in {} quantifier"),
    ("(?z)", "unrecognized character after (? or (?-"),
    ("[[:foo:]]", "unknown POSIX class name"),
    ("(?<=a+)b", "lookbehind assertion is not fixed length"),
]


def vcl(pattern: str) -> str:
    quoted = pattern.replace("\\", "\\\\")
    return f'vcl 4.1;\nbackend b none;\nsub vcl_recv {{\n    if (req.url ~ "{quoted}") {{ return (pass); }}\n}}\n'


@pytest.mark.parametrize("pattern,message", PCRE2_SAYS)
def test_vcl_regex_errors_use_pcre2s_words(pattern, message):
    with pytest.raises(VCLError) as err:
        compile_vcl(vcl(pattern), "r.vcl")
    assert f"Regexp compilation error: {message}" in str(err.value)


@pytest.mark.parametrize("pattern,message", PCRE2_SAYS[:4])
def test_ban_regex_errors_use_pcre2s_words(pattern, message):
    with pytest.raises(BanError) as err:
        build(["req.url", "~", pattern])
    assert str(err.value) == f"Regex compile error: {message}"


def test_valid_posix_classes_and_counts_still_compile():
    for pattern in ("[[:alpha:]]+", "x{65535}", "[[:digit:][:upper:]]", "a{1,3}"):
        compile_vcl(vcl(pattern), "r.vcl")


@pytest.mark.skipif(VARNISHD is None, reason="varnishd not installed")
def test_recorded_messages_are_varnishds():
    with tempfile.TemporaryDirectory(dir="/tmp") as tmp:
        os.chmod(tmp, 0o755)

        def says(item: tuple[int, str]) -> str:
            i, pattern = item
            path = Path(tmp) / f"r{i}.vcl"
            path.write_text(vcl(pattern))
            path.chmod(0o644)
            done = subprocess.run([VARNISHD, "-C", "-f", str(path)], capture_output=True, text=True, timeout=60)
            m = re.search(r"Regexp compilation error:\n\n(.*)\n", done.stderr)
            return m.group(1) if m else done.stderr

        with ThreadPoolExecutor(4) as pool:
            got = list(pool.map(says, enumerate(p for p, _ in PCRE2_SAYS)))
    assert got == [m for _, m in PCRE2_SAYS]
