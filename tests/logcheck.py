"""The log checker: a test fails when a warning or an error is logged that it did not expect,
in the test process or by the daemon of a mount it made (S3QL's tests/pytest_checklogs.py is
the model). Crashes that the code turns into an error line and carries on from
(``event=handler_crashed``, a worker that died, a thread's traceback) fail the test that
caused them instead of passing unseen.

A test that expects one says so with ``@pytest.mark.expect_log(PATTERN, ...)``: each pattern,
a regular expression searched in ``LEVEL logger message``, must match at least one logged
warning or error of the test (``optional=True``: may match none, for a parametrized test
where only some cases log), and what it matches is no failure. Daemon logs are read from
the ``--log-file`` of every mount made with ``tests.conftest.mounted`` (which gives one when
the test did not); output in them that is not a log record (a traceback printed by Python
itself) counts as an error.
"""

import logging
import re
import threading
import traceback
from dataclasses import dataclass
from pathlib import Path

# The CLI's log format (cmlfs/cli/__init__.py): "2026-12-07 16:00:00,123 INFO cmlfs.fs ..."
_RECORD = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} ([A-Z]+) (\S+) (.*)")
_REPORTED = ("WARNING", "ERROR", "CRITICAL")


@dataclass(frozen=True)
class Logged:
    """One warning or error: where it was logged and its text (with any traceback)."""

    where: str
    text: str

    def __str__(self) -> str:
        return f"[{self.where}] {self.text}"


class LogWatch(logging.Handler):
    """Collects the warnings and errors of the test process (as a handler of the root logger)
    and of the daemon log files it is told to watch, until they are taken with ``drain``."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self._logged: list[Logged] = []
        self._files: dict[Path, int] = {}  # daemon log file -> how far it has been read
        self._finished: set[Path] = set()  # files no daemon writes any more
        self._guard = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        text = f"{record.levelname} {record.name} {record.getMessage()}"
        if record.exc_info:
            text += "\n" + "".join(traceback.format_exception(*record.exc_info)).rstrip()
        with self._guard:
            self._logged.append(Logged("test process", text))

    def watch(self, log_file: Path) -> None:
        """Read ``log_file`` from its current end on (the lines a mount adds)."""
        with self._guard:
            self._files.setdefault(log_file, log_file.stat().st_size if log_file.exists() else 0)

    def drain(self) -> list[Logged]:
        """Every warning and error collected since the last drain."""
        with self._guard:
            logged, self._logged = self._logged, []
            for log_file, offset in list(self._files.items()):
                text, self._files[log_file] = _complete_lines(log_file, offset)
                logged += _reported(text, str(log_file))
                if log_file in self._finished:
                    del self._files[log_file]
                    self._finished.discard(log_file)
        return logged

    def finished(self, log_file: Path) -> None:
        """No daemon writes ``log_file`` any more: read it once more, then no longer."""
        with self._guard:
            if log_file in self._files:
                self._finished.add(log_file)


def _complete_lines(log_file: Path, offset: int) -> tuple[str, int]:
    """The whole lines of ``log_file`` from ``offset`` and the offset after them (a line the
    daemon is still writing is left for the next read)."""
    try:
        with open(log_file, "rb") as f:
            f.seek(offset)
            data = f.read()
    except FileNotFoundError:
        return "", offset
    whole = data[: data.rfind(b"\n") + 1]
    return whole.decode("utf-8", "replace"), offset + len(whole)


def _reported(text: str, where: str) -> list[Logged]:
    """The warnings and errors in a daemon's log text, each with the lines that follow it.
    Lines that follow no record, or a record below WARNING, are output that is no log record
    (Python printing a traceback itself): reported too, as OUTPUT."""
    entries: list[list[str]] = []
    reporting = False  # whether the lines that follow belong to the last entry
    for line in text.splitlines():
        record = _RECORD.fullmatch(line)
        if record:
            reporting = record[1] in _REPORTED
            if reporting:
                entries.append([" ".join(record.groups())])
        elif reporting:
            entries[-1].append(line)
        else:
            entries.append([f"OUTPUT {line}"])
            reporting = True
    return [Logged(where, "\n".join(lines)) for lines in entries]


def unexpected(logged: list[Logged], patterns: list[str]) -> tuple[list[Logged], list[str]]:
    """(what no pattern matches, the patterns that matched nothing)."""
    compiled = [re.compile(p) for p in patterns]
    matched = [False] * len(compiled)
    left = []
    for entry in logged:
        hits = [i for i, p in enumerate(compiled) if p.search(entry.text)]
        for i in hits:
            matched[i] = True
        if not hits:
            left.append(entry)
    return left, [p for p, seen in zip(patterns, matched, strict=True) if not seen]


WATCH = LogWatch()
