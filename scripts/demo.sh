#!/usr/bin/env bash
# The whole path on one machine: set up, make a sample model, encrypt it, mount it,
# read every file through the mount, compare digests, unmount. Run as root on Debian/Ubuntu.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python scripts/demo.py "$@"
