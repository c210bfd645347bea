#!/bin/sh
# Sidecar entrypoint: mount the encrypted model at $CMLFS_MOUNT, a subdirectory of the volume
# shared with the model server, and serve it until SIGTERM, which unmounts.
#
#   CMLFS_STORE   where the encrypted model is (http(s)://, s3://, oci://, a folder)   required
#   CMLFS_MOUNT   the mountpoint: a subdirectory of the shared volume, never its root  required
#   CMLFS_KEY_URI where the key comes from (kbs://..., cdh:///...); default: recorded in the model
#   CMLFS_KEY_ID  the model's key id (--key-id): pins the mount to the owner's model; needed with
#                 the recorded key URI and with a plain-HTTP broker
#   CMLFS_KBS_CA  CA file of the key broker's TLS certificate (--kbs-ca); default: system store
#   CMLFS_STORE_CA CA file of an https://, oci:// or s3:// store's certificate (--store-ca)
#   CMLFS_HTTP    HOST:PORT of /healthz, /readyz, /metrics (e.g. 0.0.0.0:9100); default: none
#   CMLFS_TRUST_PUBLISHER  the model publisher's EC public key (PEM file): mount only a store
#                 signed by it (--trust-publisher); default: none
#   CMLFS_MIN_MODEL_VERSION  refuse an older sealed model version (--min-model-version)
#   arguments     more `cmlfs mount` options, e.g. --attester tdx --kbs-ca /etc/cmlfs/ca.crt
#
# A stale mount left by a previous run of this container (the daemon was killed) is cleared by
# `cmlfs mount` before it mounts again; the server container then sees the new mount.
set -eu
: "${CMLFS_STORE:?set CMLFS_STORE to the encrypted model store}"
: "${CMLFS_MOUNT:?set CMLFS_MOUNT to a subdirectory of the shared volume}"
case "$CMLFS_MOUNT" in
  /*/*) ;;
  *) echo "cmlfs-entrypoint: CMLFS_MOUNT=$CMLFS_MOUNT must be a subdirectory of the shared volume" >&2
     exit 2 ;;
esac
mkdir -p "$CMLFS_MOUNT"
set -- mount "$CMLFS_STORE" "$CMLFS_MOUNT" --foreground --allow-other "$@"
if [ -n "${CMLFS_KEY_URI:-}" ]; then set -- "$@" --key-uri "$CMLFS_KEY_URI"; fi
if [ -n "${CMLFS_KEY_ID:-}" ]; then set -- "$@" --key-id "$CMLFS_KEY_ID"; fi
if [ -n "${CMLFS_KBS_CA:-}" ]; then set -- "$@" --kbs-ca "$CMLFS_KBS_CA"; fi
if [ -n "${CMLFS_STORE_CA:-}" ]; then set -- "$@" --store-ca "$CMLFS_STORE_CA"; fi
if [ -n "${CMLFS_HTTP:-}" ]; then set -- "$@" --http "$CMLFS_HTTP"; fi
if [ -n "${CMLFS_TRUST_PUBLISHER:-}" ]; then
  set -- "$@" --trust-publisher "$CMLFS_TRUST_PUBLISHER"
fi
if [ -n "${CMLFS_MIN_MODEL_VERSION:-}" ]; then
  set -- "$@" --min-model-version "$CMLFS_MIN_MODEL_VERSION"
fi
exec cmlfs "$@"
