"""Outcomes that end a test early."""


class TestFailure(Exception):
    """A vtc_fatal: the test fails with this reason."""


class TestSkip(Exception):
    """The test cannot run here (missing feature or unsupported command)."""
