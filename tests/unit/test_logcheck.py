"""The log checker itself (tests/logcheck.py): what it collects, from where, and what it lets
through."""

import logging
from pathlib import Path

import pytest

from tests.logcheck import Logged, LogWatch, unexpected

DAEMON_LOG = """\
2026-12-07 16:00:00,001 INFO cmlfs.daemon event=mounted mountpoint=/m
2026-12-07 16:00:01,002 ERROR cmlfs.fs event=handler_crashed op=read
Traceback (most recent call last):
  File "fs.py", line 40, in wrapper
KeyError: 1
2026-12-07 16:00:02,003 INFO cmlfs.fs event=read op=read
Exception in thread fetch-1:
Traceback (most recent call last):
RuntimeError: lost
2026-12-07 16:00:03,004 WARNING cmlfs.daemon event=memory_not_locked reason=x
2026-12-07 16:00:04,005 ERROR cmlfs.fs event=read_f"""  # the daemon is still writing


def test_daemon_log_warnings_errors_and_stray_output_are_collected(tmp_path: Path):
    log_file = tmp_path / "daemon.log"
    log_file.write_text("2026-12-07 15:00:00,000 ERROR cmlfs.x before the mount\n")
    watch = LogWatch()
    watch.watch(log_file)  # from its current end on
    with open(log_file, "a") as f:
        f.write(DAEMON_LOG)
    texts = [entry.text for entry in watch.drain()]
    assert texts == [
        "ERROR cmlfs.fs event=handler_crashed op=read\nTraceback (most recent call last):\n"
        '  File "fs.py", line 40, in wrapper\nKeyError: 1',
        "OUTPUT Exception in thread fetch-1:\nTraceback (most recent call last):\n"
        "RuntimeError: lost",
        "WARNING cmlfs.daemon event=memory_not_locked reason=x",
    ]
    with open(log_file, "a") as f:
        f.write("ailed op=read reason=gone\n")
    watch.finished(log_file)
    (last,) = watch.drain()
    assert last.text == "ERROR cmlfs.fs event=read_failed op=read reason=gone"
    with open(log_file, "a") as f:
        f.write("2026-12-07 16:00:05,006 ERROR cmlfs.fs after it finished\n")
    assert watch.drain() == []  # a finished file is read no more


@pytest.mark.expect_log("event=odd value=3", "event=crashed")  # the suite's own checker too
def test_records_of_the_test_process_from_warning_up_with_their_traceback():
    watch = LogWatch()
    logger = logging.getLogger("cmlfs.logcheck-test")
    logger.addHandler(watch)
    try:
        logger.info("event=fine")
        logger.warning("event=odd value=%d", 3)
        try:
            raise ValueError("boom")
        except ValueError:
            logger.exception("event=crashed")
    finally:
        logger.removeHandler(watch)
    odd, crashed = watch.drain()
    assert odd == Logged("test process", "WARNING cmlfs.logcheck-test event=odd value=3")
    assert crashed.text.startswith("ERROR cmlfs.logcheck-test event=crashed\nTraceback")
    assert crashed.text.endswith("ValueError: boom")
    assert watch.drain() == []


def test_expected_patterns_let_their_entries_through_and_must_match_one():
    logged = [Logged("d", "ERROR cmlfs.fs event=read_failed a"), Logged("d", "WARNING x event=y")]
    assert unexpected(logged, ["event=read_failed"]) == ([logged[1]], [])
    assert unexpected(logged, ["event=read_failed", "event=y", "event=z"]) == ([], ["event=z"])
    assert unexpected([], []) == ([], [])
