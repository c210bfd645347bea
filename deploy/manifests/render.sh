#!/usr/bin/env bash
# Render the plain manifests in this folder from the Helm chart, for clusters without Helm.
# tests/deploy/test_helm.py fails when they differ from a fresh render: re-run this after
# changing the chart. Usage: deploy/manifests/render.sh   (HELM=/path/to/helm to choose one)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
chart="$here/../helm/cmlfs-model-server"
helm=${HELM:-$(command -v helm || echo "$here/../../.venv/bin/helm")}
render() { # OUTPUT VALUES_FILE
  {
    echo "# Rendered from deploy/helm/cmlfs-model-server with $2 by deploy/manifests/render.sh."
    echo "# Edit the chart or the values file, not this file."
    "$helm" template model-server "$chart" -f "$chart/$2"
  } >"$here/$1"
}
render vllm-sidecar.yaml vllm-values.yaml
render tei-sidecar-http-probe.yaml tei-values.yaml
render tgi-in-container-tdx.yaml tgi-values.yaml
