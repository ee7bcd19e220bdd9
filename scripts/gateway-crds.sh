#!/usr/bin/env bash
# The Gateway API's CRDs (GRPCRoute, HTTPRoute, ...), for tests that check the operator's routes against the API
# server (tests/test_routes_cluster.py). Taken from the Gateway API's Go module (Apache-2.0) through the Go module
# proxy: `go mod download` of sigs.k8s.io/gateway-api gives its source, whose config/crd/<channel>/ holds the CRDs.
# `gateway-crds.sh [standard|experimental]` (default standard) keeps that one channel's YAML files, in
# .cache/gateway-api/<version>/<channel>/; they are not vendored. Prints the folder's path. Idempotent.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
GATEWAY_MODULE="sigs.k8s.io/gateway-api"
GATEWAY_API_VERSION="${GATEWAY_API_VERSION:-v1.6.3}"
CHANNEL="${1:-standard}"
case "$CHANNEL" in
    standard|experimental) ;;
    *) echo "usage: gateway-crds.sh [standard|experimental]" >&2; exit 2 ;;
esac
OUT="$ROOT/.cache/gateway-api/$GATEWAY_API_VERSION/$CHANNEL"

if [[ ! -f "$OUT/.complete" ]]; then
    command -v go >/dev/null 2>&1 || { echo "gateway-crds: go is not installed" >&2; exit 1; }
    work="$(mktemp -d)"
    trap 'rm -rf "$work"' EXIT
    (cd "$work" && go mod init gateway-crds >/dev/null 2>&1)
    dir="$(cd "$work" && GOFLAGS=-mod=mod go mod download -json "$GATEWAY_MODULE@$GATEWAY_API_VERSION" \
        | python3 -c 'import json, sys; info = json.load(sys.stdin); print(info.get("Dir") or ""); \
sys.exit(info.get("Error"))')"
    # Filled beside the final folder and renamed into place, so a half-copied folder is never taken as done.
    rm -rf "$OUT" "$OUT.tmp"
    mkdir -p "$OUT.tmp"
    cp "$dir/config/crd/$CHANNEL/"*.yaml "$dir/LICENSE" "$OUT.tmp/"
    rm -f "$OUT.tmp/kustomization.yaml"
    chmod -R u+w "$OUT.tmp"
    touch "$OUT.tmp/.complete"
    mv "$OUT.tmp" "$OUT"
fi
echo "$OUT"
