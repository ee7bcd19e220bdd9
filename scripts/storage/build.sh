#!/usr/bin/env bash
# Build the object stores the storage tests start on loopback, once, from the Go module proxy, cached by version
# (as scripts/cluster/build.sh caches the control plane).
#   weed              github.com/seaweedfs/seaweedfs $SEAWEEDFS_VERSION: an S3-compatible store (Apache-2.0)
#   fake-gcs-server   github.com/fsouza/fake-gcs-server $FAKE_GCS_SERVER_VERSION: a GCS emulator (BSD-2-Clause)
# seaweedfs's go.mod has a replace directive, which `go install MODULE@VERSION` refuses: a small build module
# requires it and repeats that replace.
#
# Output: .cache/storage/bin/seaweedfs-<version>/weed, .cache/storage/bin/fake-gcs-server-<version>/fake-gcs-server
#         (each folder with build-time.txt: seconds of its first build)
# `build.sh [seaweedfs|fake-gcs-server|all]` prints the binary's path (one a line); progress goes to stderr.
# Idempotent: a complete folder is reused as it is.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
SEAWEEDFS_VERSION="${SEAWEEDFS_VERSION:-v0.0.0-20261109003541-7506e5f91cd6}"
FAKE_GCS_SERVER_VERSION="${FAKE_GCS_SERVER_VERSION:-v1.56.1}"
TARGET="${1:-all}"
CACHE="$ROOT/.cache/storage"

log() { echo "storage-build: $*" >&2; }

# built NAME VERSION BINARY BUILDER: run BUILDER into NAME-VERSION.partial unless NAME-VERSION/BINARY exists.
built() {
    local name=$1 version=$2 binary=$3 builder=$4 bin="$CACHE/bin/$1-$2" began=$SECONDS
    if [[ ! -x "$bin/$binary" ]]; then
        command -v go >/dev/null || { log "go is not installed (the object stores are built from the Go module proxy)"; exit 1; }
        log "building $name $version"
        rm -rf "$bin.partial"
        mkdir -p "$bin.partial"
        "$builder" "$version" "$bin.partial/$binary"
        echo "$binary $((SECONDS - began))" > "$bin.partial/build-time.txt"
        rm -rf "$bin"
        mv "$bin.partial" "$bin"
        log "built $name in $((SECONDS - began)) s: $bin/$binary"
    fi
    echo "$bin/$binary"
}

build_seaweedfs() {
    local version=$1 out=$2 module="$CACHE/build/seaweedfs-$1" gomod
    mkdir -p "$module"
    gomod="$(cd "$module" && go mod download -json "github.com/seaweedfs/seaweedfs@$version" \
        | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')"
    {
        echo "module kubeinfer.local/seaweedfs"
        echo
        sed -n 's/^go \(.*\)/go \1/p' "$gomod"
        echo
        echo "require github.com/seaweedfs/seaweedfs $version"
        echo
        grep '^replace ' "$gomod" || true
    } > "$module/go.mod"
    cat > "$module/tools.go" <<'GO'
//go:build tools

// Package tools pins the command this module builds: weed, seaweedfs's single binary.
package tools

import _ "github.com/seaweedfs/seaweedfs/weed"
GO
    (cd "$module" && go mod tidy >&2 \
        && CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$out" github.com/seaweedfs/seaweedfs/weed)
}

build_fake_gcs_server() {
    local version=$1 out=$2
    GOBIN="$(dirname "$out")" CGO_ENABLED=0 go install -trimpath -ldflags "-s -w" \
        "github.com/fsouza/fake-gcs-server@$version"
}

export GOFLAGS="-mod=mod -buildvcs=false"
case "$TARGET" in
    seaweedfs) built seaweedfs "$SEAWEEDFS_VERSION" weed build_seaweedfs ;;
    fake-gcs-server) built fake-gcs-server "$FAKE_GCS_SERVER_VERSION" fake-gcs-server build_fake_gcs_server ;;
    all)
        built seaweedfs "$SEAWEEDFS_VERSION" weed build_seaweedfs
        built fake-gcs-server "$FAKE_GCS_SERVER_VERSION" fake-gcs-server build_fake_gcs_server ;;
    *) echo "usage: build.sh [seaweedfs|fake-gcs-server|all]" >&2; exit 2 ;;
esac
