"""Outcomes that end a test early."""


class TestFailure(Exception):
    """A vtc_fatal: the test fails with this reason."""

    __test__ = False  # not a pytest test class


class TestSkip(Exception):
    """The test cannot run here (missing feature or unsupported command)."""

    __test__ = False


class IOFailure(TestFailure):
    """A connection-level error (rx timeout/EOF, write failed...): `non_fatal` turns it into a log line."""
