"""Where a real varnishd listens: start it with `-a 127.0.0.1:0` and a `-T`, then ask it.

A port picked beforehand (bind to 0, read the port, close) can be taken by another test before
varnishd binds it; port 0 cannot collide.
"""

from __future__ import annotations

import shutil
import subprocess
import time

VARNISHADM = shutil.which("varnishadm") or "/usr/bin/varnishadm"


def listen_port(workdir: str, timeout: float = 60.0) -> int:
    """The port of varnishd's first listen address (`varnishadm debug.listen_address`), polled until
    its CLI answers."""
    deadline = time.monotonic() + timeout
    while True:
        done = subprocess.run([VARNISHADM, "-n", workdir, "-t", "5", "debug.listen_address"],
                              capture_output=True, text=True, timeout=30)
        fields = done.stdout.split()
        if done.returncode == 0 and len(fields) >= 3 and fields[2].isdigit():
            return int(fields[2])
        if time.monotonic() > deadline:
            raise AssertionError(f"varnishd in {workdir} gave no listen address within {timeout:g} s: "
                                 f"{done.stdout}{done.stderr}")
        time.sleep(0.05)
