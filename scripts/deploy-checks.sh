#!/usr/bin/env bash
# Prepare the deploy tier of the tests: tools (scripts/deploy-setup.sh) and the sidecar image
# localhost/cmlfs:ci built with container/build.sh (the mmdebstrap base tarball is cached in
# $CMLFS_CI_CACHE, default /var/cache/cmlfs-ci). tests/deploy then checks the chart, the
# image and the containers. Prints how long each step took.
set -euo pipefail
cd "$(dirname "$0")/.."
export VENV=${VENV:-.venv}
started=$SECONDS
bash scripts/deploy-setup.sh
echo "deploy-checks: tools ready after $((SECONDS - started))s" >&2
"$VENV/bin/hadolint" container/Dockerfile
bash container/build.sh --tag localhost/cmlfs:ci
echo "deploy-checks: image ready after $((SECONDS - started))s" >&2
