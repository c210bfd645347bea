"""Time-boxed coverage-guided fuzzing of every target in tests/fuzz/targets.py (atheris).

    python -m tests.fuzz.run_atheris --seconds 60              # every target, 60 s each
    python -m tests.fuzz.run_atheris --seconds 600 --targets blob_header sealed_manifest

Each target runs in its own process (libFuzzer owns the process) with cmlfs
instrumented for coverage, starting from the target's seeds plus the checked-in
regression corpus (tests/fuzz/corpus/<target>/). A crash is any exception other
than a typed cmlfs error; libFuzzer writes the input that caused it into
``--crash-dir``. Copy it into tests/fuzz/corpus/<target>/ and fix the parser:
tests/fuzz/test_corpus.py replays that folder on every test run.

Prints one line per target (executions, coverage, crashes) and exits non-zero
if any target crashed.
"""

import argparse
import concurrent.futures
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

CORPUS = Path(__file__).resolve().parent / "corpus"
REPO = Path(__file__).resolve().parents[2]


@dataclass
class FuzzResult:
    target: str
    seconds: float
    executions: int
    coverage: int
    crashes: list[str]
    returncode: int

    @property
    def ok(self) -> bool:
        return not self.crashes and self.returncode == 0


def fuzz_target(name: str, seconds: int, crash_dir: Path, work: Path) -> FuzzResult:
    """Run one target for ``seconds`` in a child process; collect its libFuzzer summary."""
    from tests.fuzz.targets import seeds

    corpus = work / name
    corpus.mkdir(parents=True, exist_ok=True)
    for index, seed in enumerate(seeds()[name]):
        (corpus / f"seed-{index}").write_bytes(seed)
    crash_dir.mkdir(parents=True, exist_ok=True)
    prefix = crash_dir / f"{name}-"
    command = [
        sys.executable,
        "-m",
        "tests.fuzz.run_atheris",
        "--child",
        name,
        f"-max_total_time={seconds}",
        f"-artifact_prefix={prefix}",
        "-max_len=8192",
        "-timeout=10",
        f"-rss_limit_mb={1024 + _inherited_peak_rss_mb()}",
        "-print_final_stats=1",
        str(corpus),
    ]
    regression = CORPUS / name
    if regression.is_dir():
        command.append(str(regression))
    started = time.monotonic()
    result = subprocess.run(
        command,
        cwd=REPO,
        capture_output=True,
        text=True,
        errors="replace",
        timeout=seconds + 120,
        stdin=subprocess.DEVNULL,
    )
    output = result.stdout + result.stderr
    executions = _last_int(r"stat::number_of_executed_units:\s*(\d+)", output)
    coverage = _last_int(r"\bcov: (\d+)", output)
    crashes = sorted(str(p) for p in crash_dir.glob(f"{name}-*"))
    if result.returncode != 0 and not crashes:
        crashes = [f"exit status {result.returncode}: {output[-2000:]}"]
    return FuzzResult(
        name, round(time.monotonic() - started, 1), executions, coverage, crashes, result.returncode
    )


def _inherited_peak_rss_mb() -> int:
    """This process's peak RSS, which the child starts from.

    Linux keeps a process's peak RSS across fork and exec, and libFuzzer checks the
    limit against that peak: under a long pytest run of a few GiB every child would
    report out-of-memory on its first check, with an empty input.
    """
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024


def _last_int(pattern: str, text: str) -> int:
    found = re.findall(pattern, text)
    return int(found[-1]) if found else 0


def _child(name: str, libfuzzer_args: list[str]) -> None:
    """Inside the fuzzing process: instrument cmlfs, then hand the target to libFuzzer."""
    import atheris

    with atheris.instrument_imports(include=["cmlfs"]):
        from tests.fuzz import targets

    def one_input(data: bytes) -> None:
        targets.run(name, data)

    atheris.Setup([sys.argv[0], *libfuzzer_args], one_input)
    atheris.Fuzz()


def run_all(names: list[str], seconds: int, crash_dir: Path, jobs: int = 2) -> list[FuzzResult]:
    """Fuzz ``names`` for ``seconds`` each, ``jobs`` at a time."""
    with (
        tempfile.TemporaryDirectory(prefix="cmlfs-fuzz-") as work,
        concurrent.futures.ThreadPoolExecutor(jobs) as pool,
    ):
        futures = [pool.submit(fuzz_target, name, seconds, crash_dir, Path(work)) for name in names]
        return [f.result() for f in futures]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        _child(argv[1], argv[2:])
        return 0
    from tests.fuzz.targets import TARGETS

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=60, help="per target (default 60)")
    parser.add_argument("--targets", nargs="*", choices=sorted(TARGETS), default=sorted(TARGETS))
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--crash-dir", type=Path, default=Path("fuzz-crashes"))
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    results = run_all(args.targets, args.seconds, args.crash_dir, args.jobs)
    for r in results:
        status = "ok" if r.ok else f"CRASH {r.crashes}"
        line = f"{r.target:<20} {r.executions:>10} execs  cov {r.coverage:>5}  {r.seconds:>6}s"
        print(f"{line}  {status}")
    total = sum(r.executions for r in results)
    crashed = sum(not r.ok for r in results)
    print(f"total: {len(results)} targets, {total} executions, {crashed} crashed")
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in results], indent=1))
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
