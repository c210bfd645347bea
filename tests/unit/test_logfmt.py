"""Log values with spaces are quoted, so one event stays one line of key=value fields."""

import logging
import shlex

import pytest

from cmlfs.logfmt import quote
from cmlfs.stores.retry import RetryPolicy, TransientStoreError


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        ("blobs/0f", "blobs/0f"),
        (42, "42"),
        ("server answered 503", '"server answered 503"'),
        ("", '""'),
        ('say "hi"', '"say \\"hi\\""'),
        ("a=b", '"a=b"'),
        ("two\nlines", '"two\\nlines"'),
        ("ünïcödé name", '"ünïcödé name"'),
    ],
)
def test_quote_leaves_words_and_quotes_everything_else(value, shown):
    assert quote(value) == shown


def test_a_logged_reason_with_spaces_stays_one_field(caplog):
    failures = iter([TransientStoreError("server answered 503 Service Unavailable")])

    def flaky() -> bytes:
        for failure in failures:
            raise failure
        return b"ok"

    with caplog.at_level(logging.INFO, logger="cmlfs.stores.retry"):
        assert RetryPolicy(attempts=2, base_delay=0.001).call("blobs/x", flaky) == b"ok"
    [line] = [r.getMessage() for r in caplog.records if "event=store_retry" in r.getMessage()]
    fields = dict(field.split("=", 1) for field in shlex.split(line))
    assert fields == {
        "event": "store_retry",
        "what": "blobs/x",
        "attempt": "1",
        "reason": "server answered 503 Service Unavailable",
    }
