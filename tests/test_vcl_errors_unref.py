"""Unused definitions: errors by default, warnings with vcc_err_unref off; `probe default` is used
implicitly by every backend that names no probe."""

import pytest

from vcl.compiler import compile_vcl
from vcl.errors import VCLError

UNUSED = 'vcl 4.1;\nbackend default { .host = "127.0.0.1"; }\nbackend spare { .host = "127.0.0.1"; }\n'


def test_unused_backend_is_an_error_by_default():
    with pytest.raises(VCLError, match="Unused backend spare"):
        compile_vcl(UNUSED, "u.vcl")


def test_unused_backend_is_a_warning_with_err_unref_off():
    compiled = compile_vcl(UNUSED, "u.vcl", err_unref=False)
    assert any("u.vcl:3:9: Unused backend spare" in w for w in compiled.warnings)


def test_probe_default_is_used_by_backends_without_a_probe():
    compile_vcl('vcl 4.1;\nprobe default { .interval = 1s; }\nbackend b { .host = "127.0.0.1"; }\n', "p.vcl")


def test_probe_default_unused_when_every_backend_names_its_own():
    src = ('vcl 4.1;\nprobe default { .interval = 1s; }\nprobe p { .interval = 2s; }\n'
           'backend b { .host = "127.0.0.1"; .probe = p; }\n')
    with pytest.raises(VCLError, match="Unused probe default"):
        compile_vcl(src, "p.vcl")
