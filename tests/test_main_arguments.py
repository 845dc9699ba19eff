"""cacheserver's command line refuses what varnishd 7.1's mgt_main.c refuses, in its words (each
message below is what `varnishd` printed for the same arguments), and a -T it cannot use is an
error, not a traceback."""

from __future__ import annotations

import pytest

from cacheserver.main import main


@pytest.mark.parametrize("argv,message", [
    (["-b", "127.0.0.1:9", "-f", "/nonexistent.vcl"], "Only one of -b or -f can be specified"),
    (["-F", "-d", "-b", "127.0.0.1:9"], "Only one of -d or -F can be specified"),
    (["-C"], "-C needs either -b <backend> or -f <vcl_file>"),
    (["-p", "default_ttl=abc"], "Neither -b nor -f given. (use -f '' to override)"),   # before -p
    (["-h", "nosuch", "-b", "127.0.0.1:9"], 'Unknown hash method "nosuch"'),
    (["-h", "critbit,x", "-b", "127.0.0.1:9"], 'Hash method "critbit" takes no arguments'),
    (["-W", "nosuch", "-b", "127.0.0.1:9"], 'Unknown waiter method "nosuch"'),
    (["-j", "nosuch", "-b", "127.0.0.1:9"], 'Unknown jail method "nosuch"'),
    (["-f", "/nonexistent.vcl"], "Cannot read -f file '/nonexistent.vcl' (No such file or directory)"),
])
def test_refused_as_varnishd(argv, message, capsys):
    assert main(argv) == 2
    assert capsys.readouterr().err == f"Error: {message}\n(-? gives usage)\n"


def test_a_T_address_it_cannot_use_is_a_clear_error(capsys):
    assert main(["-b", "127.0.0.1:9", "-a", "127.0.0.1:0", "-T", "nosuch:xx", "-n", "/tmp/cs-args-T"]) == 2
    err = capsys.readouterr().err
    assert "Error: Could not resolve -T argument to address\n\t" in err
    assert "Traceback" not in err
