"""pytest plugin: every tests/vtc/*.vtc is one test item, run by vtest in its own worker process.

Registered once, by the root conftest.py (`pytest_plugins`). Options:
--vtc-varnishd PATH runs the varnish blocks against that varnishd; --vtc-timeout SECONDS.
"""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from .cli import LOG_TAIL
from .execute import Outcome, run_test


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("vtest")
    group.addoption("--vtc-varnishd", default=None, metavar="PATH",
                    help="run .vtc varnish blocks against this varnishd instead of cacheserver")
    group.addoption("--vtc-timeout", type=float, default=60.0, metavar="SECONDS", help="per-.vtc timeout")


def pytest_collect_file(parent: pytest.Collector, file_path: Path) -> pytest.Collector | None:
    if file_path.suffix == ".vtc" and file_path.parent.name == "vtc" and file_path.parent.parent.name == "tests":
        return VtcFile.from_parent(parent, path=file_path)
    return None


class VtcFile(pytest.File):
    def collect(self) -> Iterator[pytest.Item]:
        yield VtcItem.from_parent(self, name=self.path.name)


class VtcFailed(Exception):
    def __init__(self, outcome: Outcome) -> None:
        super().__init__(outcome.reason)
        self.outcome = outcome


class VtcItem(pytest.Item):
    def runtest(self) -> None:
        cfg = self.config
        outcome = run_test(str(self.path), timeout=cfg.getoption("--vtc-timeout"),
                           varnishd=cfg.getoption("--vtc-varnishd"))
        if outcome.status == "skipped":
            pytest.skip(outcome.reason)
        if outcome.status != "passed":
            raise VtcFailed(outcome)

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style=None) -> str | object:
        if isinstance(excinfo.value, VtcFailed):
            o = excinfo.value.outcome
            return "\n".join([f"{self.path.name} FAILED ({o.duration:.3f}s): {o.reason}",
                              f"--- last {LOG_TAIL} log lines ---", *o.log[-LOG_TAIL:]])
        return super().repr_failure(excinfo, style=style)

    def reportinfo(self) -> tuple[Path, int, str]:
        return self.path, 0, f"vtc: {self.name}"
