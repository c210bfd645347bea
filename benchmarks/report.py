"""Write benchmarks/RESULTS.md and benchmarks/throughput.png from benchmarks/results/*.json.

Everything above the line '<!-- notes -->' in RESULTS.md is regenerated; the notes
below it (analysis, profiles) are kept.
"""

import json
from pathlib import Path

from benchmarks.lib import RESULTS_DIR, ROOT, Measurement

MARKER = "<!-- notes -->"

# (scenario, variant, baseline, target ratio, higher_is_better, what the target says)
TARGETS = [
    (
        "seq-cold-format",
        "cmlfs-gcm-siv",
        "cmlfs-gcm-siv-f1",
        0.9,
        True,
        "cold sequential format 2 >= 0.9x format 1 (GCM-SIV)",
    ),
    (
        "seq-cold",
        "cmlfs-gcm-siv",
        "gocryptfs",
        1.0,
        True,
        "cold sequential GCM-SIV >= 1.0x gocryptfs",
    ),
    ("seq-cold", "cmlfs-gcm", "gocryptfs", 1.5, True, "cold sequential GCM >= 1.5x gocryptfs"),
    (
        "seq-cold",
        "cmlfs-gcm-siv-2w",
        "gocryptfs",
        1.0,
        True,
        "cold sequential GCM-SIV >= 1.0x gocryptfs (--workers 2)",
    ),
    (
        "seq-cold",
        "cmlfs-gcm-2w",
        "gocryptfs",
        1.5,
        True,
        "cold sequential GCM >= 1.5x gocryptfs (--workers 2)",
    ),
    (
        "warm",
        "cmlfs-gcm-siv",
        "gocryptfs-kernel_cache",
        0.9,
        True,
        "warm re-read >= 0.9x gocryptfs -kernel_cache",
    ),
    ("rand-4k", "cmlfs-gcm-siv", "gocryptfs", 0.5, True, "random 4 KiB >= 0.5x gocryptfs"),
    (
        "first-byte",
        "cmlfs-mount",
        "ramdisk-decrypt-all",
        1 / 20,
        False,
        "first byte <= 1/20 of decrypt-all-first",
    ),
    (
        "load all-MiniLM-L6-v2",
        "cmlfs",
        "plaintext",
        1.3,
        False,
        "model load <= 1.3x plaintext (MiniLM)",
    ),
    (
        "load all-mpnet-base-v2",
        "cmlfs",
        "plaintext",
        1.3,
        False,
        "model load <= 1.3x plaintext (mpnet)",
    ),
    (
        "load all-MiniLM-L6-v2",
        "cmlfs-2w",
        "plaintext",
        1.3,
        False,
        "model load <= 1.3x plaintext (MiniLM, --workers 2)",
    ),
    (
        "load all-mpnet-base-v2",
        "cmlfs-2w",
        "plaintext",
        1.3,
        False,
        "model load <= 1.3x plaintext (mpnet, --workers 2)",
    ),
    ("seq-cold store", "http", "local", 0.8, True, "HTTP store >= 0.8x local"),
    (
        "seq-cold store",
        "http-2w",
        "local-2w",
        0.8,
        True,
        "HTTP store >= 0.8x local (both --workers 2)",
    ),
    # baseline None: an absolute bound in the scenario's unit
    (
        "plaintext-memory",
        "cmlfs-mount",
        None,
        64 + 100,
        False,
        "daemon memory while streaming <= cache + 100 MiB",
    ),
    (
        "plaintext-memory",
        "cmlfs-mount-2w",
        None,
        64 + 100,
        False,
        "daemon memory while streaming <= cache + 100 MiB (--workers 2)",
    ),
]


def load() -> tuple[list[Measurement], list[dict]]:
    measurements, runs = [], []
    for path in sorted(RESULTS_DIR.glob("*.json")):
        run = json.loads(path.read_text())
        runs.append(run)
        measurements += [Measurement(**m) for m in run["measurements"]]
    return measurements, runs


def targets_table(by_scenario: dict[str, Measurement]) -> list[str]:
    rows = ["| target | measured | met |", "|---|---|---|"]
    for scenario, variant, baseline, ratio, higher, text in TARGETS:
        m = by_scenario.get(scenario)
        if m is None or variant not in m.samples or (baseline and baseline not in m.samples):
            rows.append(f"| {text} | not measured | - |")
            continue
        value = m.median(variant) / (m.median(baseline) if baseline else 1)
        met = value >= ratio if higher else value <= ratio
        shown = f"{value:.2f}x" if baseline else f"{value:.4g} {m.unit}"
        rows.append(f"| {text} | {shown} | {'yes' if met else 'NO'} |")
    return rows


def plot(measurements: list[Measurement], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [m for m in measurements if m.unit == "MB/s"]
    fig, axes = plt.subplots(1, len(shown), figsize=(5 * len(shown), 4), squeeze=False)
    for ax, m in zip(axes[0], shown, strict=True):
        names = list(m.samples)
        ax.bar(
            names,
            [m.median(n) for n in names],
            color=[
                "#3b6ea5" if "cmlfs" in n or n.startswith(("http", "local")) else "#999999"
                for n in names
            ],
        )
        ax.set_title(m.scenario)
        ax.set_ylabel("MB/s (median)")
        ax.tick_params(axis="x", rotation=30)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main() -> None:
    measurements, runs = load()
    by_scenario = {m.scenario: m for m in measurements}
    results = ROOT / "RESULTS.md"
    notes = ""
    if results.exists() and MARKER in results.read_text():
        notes = results.read_text().split(MARKER, 1)[1]
    lines = [
        "# Benchmark results",
        "",
        "Generated by `python -m benchmarks.report` from `benchmarks/results/*.json`;",
        "run everything with `sudo bash benchmarks/run.sh` (as root: caches are dropped).",
        "Each scenario interleaves its variants round by round in one run; medians, and the",
        "ratio to the scenario's baseline.",
        "",
        "## Runs",
        "",
    ]
    for run in runs:
        lines.append(f"- `{run['command']}` — {run['when']}, {run['machine']}")
    lines += ["", "## Targets", "", *targets_table(by_scenario), "", "## All measurements", ""]
    lines += ["| scenario | variant | median | vs baseline | samples |", "|---|---|---|---|---|"]
    for m in measurements:
        lines += m.lines()
    lines += ["", "![throughput](throughput.png)", "", MARKER]
    results.write_text("\n".join(lines) + (notes or "\n"))
    plot(measurements, ROOT / "throughput.png")
    print(f"wrote {results} and {ROOT / 'throughput.png'}")


if __name__ == "__main__":
    main()
