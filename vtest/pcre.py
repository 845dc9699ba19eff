"""varnishtest's regexes are PCRE: the translation the VCL compiler uses makes them Python's."""
from __future__ import annotations

import re
from functools import lru_cache

from vcl.regex import pcre_to_python


@lru_cache(maxsize=256)
def pcre(pattern: str) -> re.Pattern:
    """A PCRE pattern compiled as Python `re` (\\Q...\\E quoting, POSIX classes, \\z, ...)."""
    return re.compile(pcre_to_python(pattern))
