#!/usr/bin/env bash
# Build the cmlfs image without a Docker daemon: buildah with the vfs storage driver and
# chroot isolation (works as root in a plain VM or CI container). Without --base, and with no
# registry reachable, the Debian base is made by mmdebstrap and imported; its tarball is cached
# under --cache and reused.
#
# Usage: container/build.sh [--tag IMAGE] [--base IMAGE] [--cache DIR]
#   --tag    name of the built image (default localhost/cmlfs:latest)
#   --base   BASE_IMAGE, e.g. a model server image for in-container mode (default: the local
#            Debian bookworm base, made if missing)
#   --cache  where the base tarball is kept (default $CMLFS_CI_CACHE or /var/cache/cmlfs-ci)
# Needs: buildah, podman, mmdebstrap (scripts/deploy-setup.sh installs them).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
tag=localhost/cmlfs:latest
base=""
cache=${CMLFS_CI_CACHE:-/var/cache/cmlfs-ci}
suite=bookworm
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
while (($#)); do
  case "$1" in
    --tag) tag=$2; shift 2 ;;
    --base) base=$2; shift 2 ;;
    --cache) cache=$2; shift 2 ;;
    *) echo "build.sh: unknown option $1 (see the header of $0)" >&2; exit 2 ;;
  esac
done
storage=(--storage-driver vfs)
started=$SECONDS

if [ -z "$base" ]; then
  # Like debian:bookworm-slim (no docs, man pages or locales), plus what the image needs anyway.
  debstrap=(--variant=minbase --include=ca-certificates,python3,fuse3 --components=main
    --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright'
    --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/locale/*'
    --dpkgopt='path-exclude=/usr/share/info/*' "$suite")
  version=$(echo "${debstrap[*]} $mirror" | sha256sum | cut -c1-12)
  base=localhost/cmlfs-base:$suite-$version
  if ! podman "${storage[@]}" image exists "$base"; then
    tarball=$cache/debian-$suite-$version.tar
    if [ ! -s "$tarball" ]; then
      echo "build.sh: making the $suite base with mmdebstrap into $tarball" >&2
      mkdir -p "$cache"
      mmdebstrap --quiet --format=tar "${debstrap[@]}" "$tarball.partial" "$mirror"
      mv "$tarball.partial" "$tarball"
    fi
    podman "${storage[@]}" import --quiet "$tarball" "$base" >/dev/null
  fi
  echo "build.sh: base $base ready after $((SECONDS - started))s" >&2
fi

# A minimal build context: what the Dockerfile copies, without caches or virtualenvs.
context=$(mktemp -d)
trap 'rm -rf "$context"' EXIT
cp "$repo/pyproject.toml" "$repo/README.md" "$context/"
tar -C "$repo" --exclude=__pycache__ -cf - cmlfs container | tar -C "$context" -xf -

build=(--build-arg "BASE_IMAGE=$base")
if [ -n "${PIP_CERT:-}" ] && [ -f "$PIP_CERT" ]; then
  # A TLS-intercepting proxy: let pip in the build trust the same CAs as pip here.
  build+=(--volume "$PIP_CERT:/run/cmlfs-build-ca.crt:ro" --build-arg PIP_CERT=/run/cmlfs-build-ca.crt)
fi
previous=$(podman "${storage[@]}" image inspect --format '{{.Id}}' "$tag" 2>/dev/null || true)
buildah "${storage[@]}" build --quiet --isolation chroot --pull=never \
  -f "$context/container/Dockerfile" -t "$tag" "${build[@]}" "$context" >/dev/null
if [ -n "$previous" ]; then  # the image this tag named before, unless something still uses it
  podman "${storage[@]}" rmi "$previous" >/dev/null 2>&1 || true
fi
echo "build.sh: built $tag in $((SECONDS - started))s" >&2
