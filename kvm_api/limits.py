"""The limits a program process puts on itself before and after it starts (settings from the server).

What a Python process can honestly do (this is not KVM; see the README's "Programs as backends"):
- max_memory: RLIMIT_DATA (heap and private writable mappings) for the whole process, so an
  allocation past it raises MemoryError in the program, not in the server.
- max_request_memory: once the program waits for requests, RLIMIT_DATA is lowered to the memory
  it uses then plus this much: request handling may grow by that, no more.
- allowed_paths (when the settings have it, even empty): an audit hook (PEP 578) refuses opening any file for writing, and reading any
  file outside allowed_paths, the program's own directory and Python's import path; it also
  refuses starting processes, loading native libraries with ctypes, and connecting or binding
  sockets. Native code (an extension module, or a file descriptor already open) is not seen by
  the hook: it keeps honest programs honest, it is no sandbox.
"""

from __future__ import annotations

import os
import resource
import sys
from pathlib import Path

MB = 1024 * 1024
_STATUS = "/proc/self/status"
# Audit events a program may not raise at all.
_REFUSED = frozenset({
    "subprocess.Popen", "os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork", "os.forkpty",
    "os.startfile", "pty.spawn", "ctypes.dlopen", "ctypes.dlsym", "socket.connect", "socket.bind",
    "os.remove", "os.rename", "os.rmdir", "os.mkdir", "os.chmod", "os.chown", "os.link", "os.symlink",
    "os.truncate", "os.utime", "shutil.rmtree", "shutil.move", "shutil.copyfile",
})
_MODULE_SUFFIXES = (".py", ".pyc", ".pth", ".zip")
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND


def _set_data_limit(limit: int) -> None:
    resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))


def data_in_use() -> int:
    """Bytes of the process's data segment (what RLIMIT_DATA measures): VmData."""
    with open(_STATUS) as f:
        for line in f:
            if line.startswith("VmData:"):
                return int(line.split()[1]) * 1024
    return 0


def apply_boot_limits(settings: dict, program: Path) -> None:
    """Before the program file runs: its memory limit and its file guard."""
    if settings.get("max_memory"):
        _set_data_limit(int(settings["max_memory"]) * MB)
    if "allowed_paths" not in settings:
        return                              # no file guard unless the program's settings ask
    import_dirs = [str(program.parent)]
    import_dirs += [p for p in sys.path[1:] if p and os.path.isdir(p)]   # [0] is the server's cwd
    install_file_guard(import_dirs, list(settings.get("allowed_paths", [])))


def apply_request_limits(settings: dict) -> None:
    """When the program starts waiting for requests: what request handling may add."""
    extra = int(settings.get("max_request_memory") or 0)
    if not extra:
        return
    limit = data_in_use() + extra * MB
    if settings.get("max_memory"):
        limit = min(limit, int(settings["max_memory"]) * MB)
    _set_data_limit(limit)


def install_file_guard(import_dirs: list[str], allowed_paths: list[str]) -> None:
    import_roots = tuple(os.path.realpath(p) for p in import_dirs)
    allowed_roots = tuple(os.path.realpath(p) for p in allowed_paths)

    def under(path: str, dirs: tuple[str, ...]) -> bool:
        return any(path == r or path.startswith(r.rstrip(os.sep) + os.sep) for r in dirs)

    def allowed(path: str) -> bool:
        if path == _STATUS or under(path, allowed_roots):
            return True
        # the import path: Python source and bytecode only, so imports work and data files do not
        return path.endswith(_MODULE_SUFFIXES) and under(path, import_roots)

    def hook(event: str, args: tuple) -> None:
        if event == "open":
            path, mode, flags = args
            if path is None or isinstance(path, int):
                return                      # an fd this process already holds
            name = os.path.realpath(os.fsdecode(path))
            writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
                isinstance(flags, int) and flags & _WRITE_FLAGS)
            if writing:
                raise PermissionError(f"program may not write files: {name}")
            if not allowed(name):
                raise PermissionError(f"program may not read {name}: not in allowed_paths")
        elif event in _REFUSED:
            raise PermissionError(f"program may not do {event}")

    sys.addaudithook(hook)
