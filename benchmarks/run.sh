#!/usr/bin/env bash
# All benchmarks, then RESULTS.md and the plot. Run as root on a quiet machine:
#   sudo bash benchmarks/run.sh [--rounds N]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test,model,bench
PY=.venv/bin/python
rounds=${ROUNDS:-5}
$PY -m benchmarks.bench_read --rounds "$rounds"
$PY -m benchmarks.bench_http --rounds "$rounds"
$PY -m benchmarks.bench_models --rounds "$rounds"
$PY -m benchmarks.bench_jwe --rounds "$rounds"
$PY -m benchmarks.bench_kserve_memory --rounds "$rounds"
$PY -m benchmarks.bench_serve_ready --rounds "$rounds"
$PY -m benchmarks.report
