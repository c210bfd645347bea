"""Time limits on the command line are bounded numbers: a negative, zero, NaN or infinite
value is argparse's one-line usage error (exit 2), not a traceback from a timer below."""

import pytest

from cmlfs.cli import build_parser

LIMITS = [
    (["mount", "STORE", "MNT", "--ready-timeout"], 3600),
    (["run", "--store", "STORE", "--mount", "MNT", "--ready-timeout"], 3600),
    (["inspect", "STORE", "--store-timeout"], 3600),
    (["dev-kbs", "--repository", "REPO", "--session-ttl"], 86400),
]


@pytest.mark.parametrize(
    ("argv", "limit"), LIMITS, ids=lambda v: v[-1] if isinstance(v, list) else ""
)
@pytest.mark.parametrize("value", ["-5", "0", "nan", "inf", "1e309", "ten"])
def test_time_limits_refuse_what_is_not_a_time(argv, limit, value, capsys):
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args([*argv, value])
    assert exited.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"argument {argv[-1]}: " in error
    assert "not a number of seconds" in error or f"at most {limit}" in error


@pytest.mark.parametrize(
    ("argv", "limit"), LIMITS, ids=lambda v: v[-1] if isinstance(v, list) else ""
)
def test_time_limits_take_their_range(argv, limit):
    dest = argv[-1].removeprefix("--").replace("-", "_")
    for value in ("0.5", str(limit)):
        args = build_parser().parse_args([*argv, value])
        assert getattr(args, dest) == float(value)
