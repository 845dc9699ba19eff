"""Program definitions for tinykvm: the JSON settings of libvmod-tinykvm's docs/glossary.md.

A library is a JSON object (comments allowed, as the original's) whose entries are programs (they
have a `filename`) or groups (settings programs name with `group`). `tinykvm.configure(name, json)`
overrides settings of one program, or defines it inline. A `uri` is refused: programs are local
files here, nothing is fetched over the network.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

# Settings of the original that mean nothing for a process (KVM memory banks, hugepages, GDB,
# shared storage): accepted so a library written for the original loads, and ignored.
IGNORED = frozenset({"storage", "max_storage_time", "req_mem_limit_after_reset", "shared_memory",
                     "hugepages", "request_hugepages", "allow_debug", "stdout", "remapping",
                     "executable_remapping", "address_space", "split_hugepages", "warmup",
                     "max_main_memory", "max_req_time", "ephemeral", "control_ephemeral"})


class ConfigError(ValueError):
    """A program definition that cannot be used; the message says which setting and why."""


@dataclass
class ProgramConfig:
    """One program's settings; times in seconds, memory in megabytes (0: no limit)."""

    name: str
    filename: Path | None = None        # None: <name>.py in the search directories
    group: str = ""
    concurrency: int = 1                # processes serving backend requests
    max_boot_time: float | None = None  # None: the manager's load timeout
    max_request_time: float = 8.0
    max_memory: int = 0
    max_request_memory: int = 0         # growth allowed over the memory after start-up
    environment: list[str] = field(default_factory=list)     # "NAME=value", added to the environ
    # files (or directories) it may read; None: no file guard at all (as before these settings)
    allowed_paths: list[str] | None = None
    main_arguments: list[str] = field(default_factory=list)  # argv[3:] of the program
    key: str = ""                       # live_update(): the key a poster must send
    max_queue: int = 64                 # requests waiting for a free process, beyond: 503
    queue_timeout: float = 60.0         # how long one waits, as the original's queue

    def settings(self) -> dict:
        """The settings a program process enforces on itself (kvm_api.host --settings)."""
        out: dict = {"max_memory": self.max_memory, "max_request_memory": self.max_request_memory}
        if self.allowed_paths is not None:
            out["allowed_paths"] = list(self.allowed_paths)
        return out


_NUMBERS = {"concurrency": int, "max_boot_time": float, "max_request_time": float, "max_memory": int,
            "max_request_memory": int, "max_queue": int, "queue_timeout": float}
_LISTS = ("environment", "allowed_paths", "main_arguments")
KNOWN = frozenset(f.name for f in fields(ProgramConfig)) - {"name"} | {"uri"}


_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.S)


def strip_comments(text: str) -> str:
    """JSON with // and /* */ comments (outside strings) as plain JSON."""
    out: list[str] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c == '"':                       # copy a string whole, escapes included
            m = _STRING.match(text, i)
            end = m.end() if m else n
            out.append(text[i:end])
            i = end
        elif text.startswith("//", i):
            end = text.find("\n", i)
            i = n if end < 0 else end
        elif text.startswith("/*", i):
            end = text.find("*/", i + 2)
            if end < 0:
                raise ConfigError("unterminated /* comment")
            out.append(" ")
            i = end + 2
        else:
            out.append(c)
            i += 1
    return "".join(out)


def parse_json(text: str, what: str) -> dict:
    """A JSON object (comments allowed); ConfigError naming `what` otherwise."""
    try:
        value = json.loads(strip_comments(text))
    except (ValueError, ConfigError) as e:
        raise ConfigError(f"{what}: invalid JSON: {e}") from None
    if not isinstance(value, dict):
        raise ConfigError(f"{what}: expected a JSON object")
    return value


def apply(config: ProgramConfig, settings: dict, base_dir: Path | None, what: str) -> ProgramConfig:
    """`config` with `settings` applied; ConfigError for a bad or unknown setting."""
    changes: dict = {}
    for key, value in settings.items():
        where = f"{what}: '{key}'"
        if key == "uri":
            raise ConfigError(f"{where}: programs are not fetched over the network here; "
                              "give a local 'filename' instead")
        if key in IGNORED:
            continue
        if key not in KNOWN:
            raise ConfigError(f"{where}: unknown setting")
        if key in _NUMBERS:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ConfigError(f"{where}: expected a number")
            if value < 0 or (key == "concurrency" and value < 1):
                raise ConfigError(f"{where}: out of range")
            changes[key] = _NUMBERS[key](value)
        elif key in _LISTS:
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ConfigError(f"{where}: expected a list of strings")
            if key == "environment" and not all("=" in v for v in value):
                raise ConfigError(f"{where}: each entry is NAME=value")
            changes[key] = list(value)
        elif key == "filename":
            if not isinstance(value, str) or not value:
                raise ConfigError(f"{where}: expected a file name")
            path = Path(value.removeprefix("file://"))
            changes[key] = path if path.is_absolute() or base_dir is None else base_dir / path
        elif key in ("group", "key"):
            if not isinstance(value, str):
                raise ConfigError(f"{where}: expected a string")
            changes[key] = value
    return replace(config, **changes)


def load_library(text: str, base_dir: Path | None, what: str,
                 groups: dict[str, dict]) -> dict[str, ProgramConfig]:
    """The programs of a library (groups go into `groups`, which programs may also name)."""
    entries = parse_json(text, what)
    programs: dict[str, dict] = {}
    for name, entry in entries.items():
        if not isinstance(entry, dict):
            raise ConfigError(f"{what}: '{name}' is not an object")
        if "filename" in entry or "uri" in entry:
            programs[name] = entry
        else:
            groups[name] = entry
    out: dict[str, ProgramConfig] = {}
    for name, entry in programs.items():
        out[name] = configure(ProgramConfig(name), entry, groups, base_dir, f"{what}: program '{name}'")
    return out


def configure(config: ProgramConfig, settings: dict, groups: dict[str, dict], base_dir: Path | None,
              what: str) -> ProgramConfig:
    """Apply a program's group (if it names one), then its own settings."""
    group = settings.get("group", "")
    if group:
        if group not in groups:
            raise ConfigError(f"{what}: no group '{group}'")
        config = apply(config, groups[group], base_dir, f"{what}: group '{group}'")
    return apply(config, settings, base_dir, what)
