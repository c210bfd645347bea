#!/usr/bin/env bash
# Prepare a Debian/Ubuntu machine (as root) for cmlfs: system packages, a
# virtualenv in .venv with cmlfs and its extras. Safe to run again.
# Usage: scripts/setup.sh [EXTRA[,EXTRA...]]   (e.g. "test")
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(fuse3 libfuse3-dev pkg-config gcc python3-venv
  nginx-light docker-registry apache2-utils  # store test servers
  libtss2-dev swtpm swtpm-tools tpm2-tools)  # vTPM attesters (tpm2-pytss builds on tpm2-tss); swtpm for their tests
missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
  echo "setup: installing system packages: ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
extras=${1:-}
spec="."
[ -n "$extras" ] && spec=".[${extras}]"
.venv/bin/python -m pip install -q -e "$spec"
.venv/bin/python -c "import cmlfs, pyfuse3, cryptography; print('setup: cmlfs ready in .venv (cryptography', cryptography.__version__ + ')')" >&2
