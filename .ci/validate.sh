#!/usr/bin/env bash
# Validates the deployment material and a Prometheus exposition:
#   1. renders deploy/k8s/base and every deploy/k8s/overlays/* (kustomize is neither on PyPI
#      nor in Debian, so deploy/tools/validate_k8s.py renders the subset of kustomize the
#      manifests use, and compares with `kubectl kustomize` where kubectl exists), and
#      validates every object against the Kubernetes JSON schemas (kubernetes-validate,
#      strict), cert-manager's Certificates and Issuers against the schemas vendored in
#      deploy/tools/schemas (jsonschema, strict), plus ferry's own wiring (each process
#      presents its own role's certificate, the NetworkPolicies admit every link, ...);
#   2. parses the files given as arguments (GET /metrics of the coordinator and of each stage) with prometheus_client's
#      parser; without any, deploy/tools/metrics.example.prom.
# Tools come from PyPI into a venv under /tmp (reused when the pins match). Quiet on
# success (one line per check); runs both checks and exits non-zero, with the reasons,
# if either fails.
set -euo pipefail
cd "$(dirname "$0")/.."

metrics=("$@")
[ ${#metrics[@]} -gt 0 ] || metrics=(deploy/tools/metrics.example.prom)
venv=${FERRY_VALIDATE_VENV:-/tmp/ferry-validate-venv}
pins="kubernetes-validate==1.37.0 jsonschema==4.26.0 prometheus-client==0.26.0"

if [ ! -f "$venv/.pins" ] || [ "$(cat "$venv/.pins")" != "$pins" ]; then
  rm -rf "$venv"
  if ! python3 -m venv "$venv" >/dev/null 2>&1; then
    echo "validate: cannot create a venv with python3 -m venv (apt-get install python3-venv)" >&2
    exit 1
  fi
  # shellcheck disable=SC2086
  if ! "$venv/bin/pip" install -q --disable-pip-version-check $pins; then
    echo "validate: cannot install $pins from PyPI" >&2
    exit 1
  fi
  echo "$pins" >"$venv/.pins"
fi

status=0
dirs=(deploy/k8s/base)
for d in deploy/k8s/overlays/*/; do dirs+=("${d%/}"); done
"$venv/bin/python" deploy/tools/validate_k8s.py "${dirs[@]}" || status=1
for m in "${metrics[@]}"; do
  "$venv/bin/python" deploy/tools/check_metrics.py "$m" || status=1
done
if [ "$status" -ne 0 ]; then
  echo "validate: FAILED (see the errors above)" >&2
fi
exit "$status"
