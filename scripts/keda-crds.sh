#!/usr/bin/env bash
# KEDA's ScaledObject CRD, for tests that check the operator's ScaledObjects against the API server
# (tests/test_autoscaling_cluster.py). Taken from KEDA's Go module (Apache-2.0) through the Go module proxy:
# `go mod download` of github.com/kedacore/keda/v2 gives its source, whose config/crd/bases holds the CRDs.
# Only the one file is kept, in .cache/keda/; it is not vendored. Prints the CRD's path. Idempotent.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
KEDA_MODULE="github.com/kedacore/keda/v2"
KEDA_VERSION="${KEDA_VERSION:-v2.21.0}"
OUT="$ROOT/.cache/keda/$KEDA_VERSION"
CRD="keda.sh_scaledobjects.yaml"

if [[ ! -s "$OUT/$CRD" ]]; then
    command -v go >/dev/null 2>&1 || { echo "keda-crds: go is not installed" >&2; exit 1; }
    work="$(mktemp -d)"
    trap 'rm -rf "$work"' EXIT
    (cd "$work" && go mod init keda-crds >/dev/null 2>&1)
    dir="$(cd "$work" && GOFLAGS=-mod=mod go mod download -json "$KEDA_MODULE@$KEDA_VERSION" \
        | python3 -c 'import json, sys; info = json.load(sys.stdin); print(info.get("Dir") or ""); \
sys.exit(info.get("Error"))')"
    mkdir -p "$OUT"
    rm -f "$OUT/$CRD.tmp" "$OUT/LICENSE"
    cp "$dir/config/crd/bases/$CRD" "$OUT/$CRD.tmp"
    cp "$dir/LICENSE" "$OUT/LICENSE"
    chmod u+w "$OUT/$CRD.tmp" "$OUT/LICENSE"
    mv "$OUT/$CRD.tmp" "$OUT/$CRD"
fi
echo "$OUT/$CRD"
