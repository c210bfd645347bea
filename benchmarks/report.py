"""Write benchmarks/RESULTS.md and benchmarks/throughput.png from benchmarks/results/*.json.

Everything above the line '<!-- notes -->' in RESULTS.md is regenerated; the notes
below it (analysis, profiles) are kept.
"""

import json
from dataclasses import dataclass
from pathlib import Path

from benchmarks.lib import GIB, RESULTS_DIR, ROOT, Measurement
from cmlfs.units import parse_size

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
    # Issue 20's throughput targets: README recommends --workers 2 on a 2-core machine.
    (
        "seq-cold",
        "cmlfs-gcm-siv-2w",
        "gocryptfs",
        1.5,
        True,
        "cold sequential GCM-SIV >= 1.5x gocryptfs (--workers 2)",
    ),
    (
        "seq-cold",
        "cmlfs-gcm-siv",
        "gocryptfs",
        1.2,
        True,
        "cold sequential GCM-SIV >= 1.2x gocryptfs (one process)",
    ),
    (
        "seq-cold",
        "cmlfs-gcm-2w",
        "gocryptfs",
        2.0,
        True,
        "cold sequential GCM >= 2.0x gocryptfs (--workers 2)",
    ),
    # ratio None: reported beside a target, not one itself
    (
        "seq-cold",
        "cmlfs-gcm",
        "gocryptfs",
        None,
        True,
        "cold sequential GCM, one process (the 2.0x target is --workers 2's)",
    ),
    (
        "seq-cold",
        "cmlfs-gcm-siv-3w",
        "gocryptfs",
        None,
        True,
        "cold sequential GCM-SIV, --workers 3 (reported)",
    ),
    (
        "seq-cold",
        "cmlfs-gcm-3w",
        "gocryptfs",
        None,
        True,
        "cold sequential GCM, --workers 3 (reported)",
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
        "first byte <= 1/20 of decrypt-all-first (key file; clock from `cmlfs mount`, "
        "interpreter start included)",
    ),
    (
        "first-byte-kbs",
        "cmlfs-mount",
        "ramdisk-decrypt-all",
        1 / 20,
        False,
        "first byte <= 1/20 of decrypt-all-first (key broker; clock from the key's release)",
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
# Model loads (bench_models): load <= 1.3x plaintext, one process and --workers 2;
# llama.cpp without mmap reads the file with read(2) and is reported, not targeted.
TARGETS += [
    (f"load {model}", variant, "plaintext", ratio, False, f"{what}{suffix}")
    for model, what, ratio in (
        ("all-MiniLM-L6-v2", "model load <= 1.3x plaintext (MiniLM", 1.3),
        ("all-mpnet-base-v2", "model load <= 1.3x plaintext (mpnet", 1.3),
        ("gemma3-270m", "llama.cpp mmap load <= 1.3x plaintext (Gemma 3 270M GGUF", 1.3),
        ("gemma3-270m-nommap", "llama.cpp load without mmap (Gemma 3 270M GGUF", None),
    )
    for variant, suffix in (("cmlfs", ")"), ("cmlfs-2w", ", --workers 2)"))
]


SERVE_APPROACHES = ("cmlfs", "cmlfs-2w", "ramdisk", "disk", "plaintext")
CACHE_MIB = 64  # the default --cache-size


def serve_targets(measurements: list[Measurement]) -> list[tuple]:
    """Issue 20's serve-ready targets for every model measured: cmlfs ready before both
    decrypt-first approaches, its memory within the cache budget + 100 MiB."""
    targets = []
    for m in measurements:
        if not m.scenario.startswith("serve-ready "):
            continue
        model = m.scenario.removeprefix("serve-ready ")
        for variant in ("cmlfs", "cmlfs-2w"):
            for baseline, label in (("ramdisk", "RAM disk first"), ("disk", "disk first")):
                text = f"serve-ready {variant} <= 1.0x {label} ({model})"
                targets.append((m.scenario, variant, baseline, 1.0, False, text))
            text = f"serve-ready memory {variant} <= cache + 100 MiB ({model})"
            targets.append((f"serve-memory {model}", variant, None, CACHE_MIB + 100, False, text))
    return targets


def load() -> tuple[list[Measurement], list[dict]]:
    measurements, runs = [], []
    for path in sorted(RESULTS_DIR.glob("*.json")):
        run = json.loads(path.read_text())
        runs.append(run)
        measurements += [Measurement(**m) for m in run["measurements"]]
    return measurements, runs


def targets_table(by_scenario: dict[str, Measurement]) -> list[str]:
    rows = ["| target | measured | met |", "|---|---|---|"]
    for scenario, variant, baseline, ratio, higher, text in TARGETS + serve_targets(
        list(by_scenario.values())
    ):
        m = by_scenario.get(scenario)
        if m is None or variant not in m.samples or (baseline and baseline not in m.samples):
            rows.append(f"| {text} | not measured | - |")
            continue
        value = m.median(variant) / (m.median(baseline) if baseline else 1)
        shown = f"{value:.2f}x" if baseline else f"{value:.4g} {m.unit}"
        if ratio is None:
            rows.append(f"| {text} | {shown} | (reported) |")
            continue
        met = value >= ratio if higher else value <= ratio
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


def plot_serve_ready(measurements: list[Measurement], path: Path) -> bool:
    """Time and memory against model size (synthetic models), one line per approach, and
    the real models' times; False when nothing was measured."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_scenario = {m.scenario: m for m in measurements}
    synthetic = sorted(
        (parse_size(s.removeprefix("serve-ready synthetic-")), s.removeprefix("serve-ready "))
        for s in by_scenario
        if s.startswith("serve-ready synthetic-")
    )
    real = [s.removeprefix("serve-ready ") for s in by_scenario if s.startswith("serve-ready ")]
    real = [name for name in real if not name.startswith("synthetic-")]
    if not synthetic and not real:
        return False
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    for ax, quantity, unit in (
        (axes[0], "serve-ready", "seconds to the first answer"),
        (axes[1], "serve-memory", "peak MiB (daemon PSS + RAM disk)"),
    ):
        for approach in SERVE_APPROACHES:
            points = [
                (size / GIB, by_scenario[f"{quantity} {name}"].median(approach))
                for size, name in synthetic
                if approach in by_scenario[f"{quantity} {name}"].samples
            ]
            if points:
                style = ":" if approach == "plaintext" else "-"
                ax.plot(*zip(*points, strict=True), style, marker="o", label=approach)
        ax.set_xlabel("synthetic safetensors model, GiB")
        ax.set_ylabel(unit)
        ax.set_title(f"{quantity} (medians)")
        ax.legend()
    width = 0.8 / len(SERVE_APPROACHES)
    for i, approach in enumerate(SERVE_APPROACHES):
        values = [
            by_scenario[f"serve-ready {name}"].median(approach)
            if approach in by_scenario[f"serve-ready {name}"].samples
            else 0
            for name in real
        ]
        axes[2].bar([x + i * width for x in range(len(real))], values, width, label=approach)
    axes[2].set_xticks([x + 0.4 - width / 2 for x in range(len(real))], real, rotation=15)
    axes[2].set_ylabel("seconds to the first answer")
    axes[2].set_title("serve-ready, real models (medians)")
    axes[2].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return True


@dataclass(frozen=True)
class ServeCosts:
    """One synthetic model's per-GiB costs in one run, what the projection scales."""

    size: float  # GiB
    t0: float  # cmlfs's mount: interpreter, imports, key, manifest (independent of size)
    decrypt: float  # daemon CPU seconds per GiB: one core's cost of serving it
    loader: float  # the loader's seconds per GiB from plaintext
    from_ram: float  # the loader's seconds per GiB from the RAM disk

    def project(self, cores: int, efficiency: float, disk: float) -> tuple[float, float]:
        """(cmlfs, RAM disk first) serve-ready seconds with ``cores`` workers, the store's
        disk reading ``disk`` seconds per GiB (the plaintext load already includes it)."""
        decrypt = max(self.decrypt / (cores * efficiency), disk)
        return (
            self.t0 + self.size * max(self.loader, decrypt),
            self.t0 + self.size * (decrypt + self.from_ram),
        )


def serve_costs(by_scenario: dict[str, Measurement], model: str) -> ServeCosts | None:
    ready = by_scenario[f"serve-ready {model}"]
    prepare = by_scenario[f"serve-prepare {model}"]
    if not {"cmlfs", "ramdisk", "plaintext"} <= set(ready.samples):
        return None
    size = parse_size(model.removeprefix("synthetic-")) / GIB
    return ServeCosts(
        size,
        prepare.median("cmlfs"),
        by_scenario[f"serve-daemon-cpu {model}"].median("cmlfs") / size,
        ready.median("plaintext") / size,
        (ready.median("ramdisk") - prepare.median("ramdisk")) / size,
    )


def projection_table(by_scenario: dict[str, Measurement], cores: int = 16) -> list[str]:
    """Serve-ready of the synthetic models projected to ``cores`` cores from this run's
    per-core costs (the method is in RESULTS.md's notes, "Scaling with cores"); each row
    also projects 2 cores, to set beside what was measured here."""
    seq = by_scenario.get("seq-cold")
    efficiency, source = 1.0, "ideal: no seq-cold run with workers"
    if seq and {"cmlfs-gcm-siv", "cmlfs-gcm-siv-2w"} <= set(seq.samples):
        efficiency = seq.median("cmlfs-gcm-siv-2w") / seq.median("cmlfs-gcm-siv") / 2
        source = "seq-cold cmlfs-gcm-siv-2w / cmlfs-gcm-siv / 2"
    disk, disk_source = 0.0, "not measured: taken as no limit"
    if seq and "plain" in seq.samples:
        disk = GIB / 1e6 / seq.median("plain")
        disk_source = f"seq-cold plain, {seq.median('plain'):.0f} MB/s"
    rows = []
    models = [s.removeprefix("serve-ready ") for s in by_scenario]
    models = [m for m in models if m.startswith("synthetic-")]
    for model in sorted(models, key=lambda m: parse_size(m.removeprefix("synthetic-"))):
        costs = serve_costs(by_scenario, model)
        if costs is None:
            continue
        ready = by_scenario[f"serve-ready {model}"]
        measured = " / ".join(
            f"{ready.median(v):.2f}" if v in ready.samples else "-" for v in ("cmlfs-2w", "ramdisk")
        )
        two, many = costs.project(2, efficiency, disk), costs.project(cores, efficiency, disk)
        rows.append(
            f"| {model} | {costs.t0:.2f} | {costs.decrypt:.2f} | {costs.loader:.2f} | "
            f"{costs.from_ram:.2f} | {two[0]:.2f} / {two[1]:.2f} | {measured} | "
            f"{many[0]:.2f} / {many[1]:.2f} |"
        )
    if not rows:
        return []
    return [
        f"## Serve-ready projected to {cores} cores (a projection, not a measurement)",
        "",
        f"Second-worker efficiency e = {efficiency:.2f} ({source}); the store's disk D = "
        f"{disk:.2f} s/GiB ({disk_source}). Seconds; t0 = cmlfs's mount, c = daemon CPU s/GiB,",
        "L = plaintext load s/GiB, L_ram = load from the RAM disk s/GiB, S = GiB; cmlfs ~",
        "t0 + S max(L, c/(n e), D), RAM disk first ~ t0 + S (max(c/(n e), D) + L_ram).",
        "",
        "| model | t0 | c | L | L_ram | 2 cores projected: cmlfs / RAM disk | 2 cores measured: "
        f"cmlfs-2w / RAM disk | {cores} cores projected: cmlfs / RAM disk |",
        "|---|---|---|---|---|---|---|---|",
        *rows,
        "",
    ]


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
    lines += ["", "## Targets", "", *targets_table(by_scenario), ""]
    lines += [*projection_table(by_scenario), "## All measurements", ""]
    lines += ["| scenario | variant | median | vs baseline | samples |", "|---|---|---|---|---|"]
    for m in measurements:
        lines += m.lines()
    lines += ["", "![throughput](throughput.png)", ""]
    if plot_serve_ready(measurements, ROOT / "serve_ready.png"):
        lines += ["![serve-ready](serve_ready.png)", ""]
    lines += [MARKER]
    results.write_text("\n".join(lines) + (notes or "\n"))
    plot(measurements, ROOT / "throughput.png")
    print(f"wrote {results} and {ROOT / 'throughput.png'}")


if __name__ == "__main__":
    main()
