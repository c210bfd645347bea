#!/usr/bin/env bash
# Set up everything the test suite needs and run all of it: lint, unit,
# FUSE (real mounts), end-to-end. Tests start the servers they need themselves.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test,model
# Deployment tier: buildah/podman/mmdebstrap, helm, hadolint, and the sidecar image
# localhost/cmlfs:ci that tests/deploy runs (base tarball cached under /var/cache/cmlfs-ci).
bash scripts/deploy-checks.sh
.venv/bin/ruff check cmlfs tests benchmarks
.venv/bin/ruff format --check cmlfs tests benchmarks
# pytest exits 5 when it collected no test: that is a failure too.
.venv/bin/python -m pytest -p no:cacheprovider -ra tests "$@"
