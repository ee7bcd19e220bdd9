#!/usr/bin/env bash
# Build the local control plane's binaries once, from the Go module proxy, cached by version:
#   kube-apiserver, kube-controller-manager, kube-scheduler   k8s.io/kubernetes $KUBERNETES_VERSION
#   etcd                                                     go.etcd.io/etcd/server/v3 (the version kubernetes pins)
#   kwok                                                     sigs.k8s.io/kwok $KWOK_VERSION (fake nodes and kubelets)
#
# k8s.io/kubernetes is not meant to be a dependency: its go.mod points its ~30 staging modules (k8s.io/api, ...)
# at ./staging, which a module download does not have. A small build module requires it and replaces each staging
# module by the published v0.MINOR.PATCH release of the same commit.
#
# Output: .cache/cluster/bin/<kubernetes version>/{kube-apiserver,kube-controller-manager,kube-scheduler,etcd,kwok}
# Prints the binary folder on stdout; progress goes to stderr. Idempotent: a complete folder is reused as it is.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
KUBERNETES_VERSION="${KUBERNETES_VERSION:-v1.35.4}"
KWOK_VERSION="${KWOK_VERSION:-v0.8.0}"
BIN="$ROOT/.cache/cluster/bin/$KUBERNETES_VERSION-kwok-$KWOK_VERSION"
BINARIES=(kube-apiserver kube-controller-manager kube-scheduler etcd kwok)

log() { echo "cluster-build: $*" >&2; }

complete() {
    local b
    for b in "${BINARIES[@]}"; do [[ -x "$BIN/$b" ]] || return 1; done
}

if complete; then
    echo "$BIN"
    exit 0
fi
command -v go >/dev/null || { log "go is not installed (the control plane is built from the Go module proxy)"; exit 1; }

start=$SECONDS
work="$ROOT/.cache/cluster/build/$KUBERNETES_VERSION"
mkdir -p "$work/etcd" "$BIN.partial"
export GOFLAGS="-mod=mod -buildvcs=false"

# The staging modules kubernetes replaces, each pinned to the published release of the same commit.
minor="v0.${KUBERNETES_VERSION#v1.}"
gomod="$(cd "$work" && go mod download -json "k8s.io/kubernetes@$KUBERNETES_VERSION" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')"
go_directive="$(sed -n 's/^go \(.*\)/\1/p' "$gomod")"
{
    echo "module kubeinfer.local/cluster"
    echo
    echo "go $go_directive"
    echo
    echo "require k8s.io/kubernetes $KUBERNETES_VERSION"
    echo
    sed -n 's#^\s*\(k8s.io/[a-z0-9-]*\) => ./staging/src/.*#replace \1 => \1 '"$minor"'#p' "$gomod"
} > "$work/go.mod"
cat > "$work/tools.go" <<'GO'
//go:build tools

// Package tools pins the control-plane commands this module builds.
package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
)
GO
# etcd's own main lives in a module with local replaces; its server package is all a binary needs.
cat > "$work/etcd/main.go" <<'GO'
// Command etcd is the etcd server, built from the version kubernetes itself pins.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
GO

cd "$work"
log "resolving modules for kubernetes $KUBERNETES_VERSION"
# tidy keeps every dependency at the version kubernetes itself requires (etcd's server included).
go mod tidy >&2
for cmd in kube-apiserver kube-controller-manager kube-scheduler; do
    log "building $cmd"
    go build -trimpath -ldflags "-s -w -X k8s.io/component-base/version.gitVersion=$KUBERNETES_VERSION" \
        -o "$BIN.partial/$cmd" "k8s.io/kubernetes/cmd/$cmd"
done
log "building etcd"
go build -trimpath -ldflags "-s -w" -o "$BIN.partial/etcd" ./etcd
log "building kwok $KWOK_VERSION"
GOBIN="$BIN.partial" GOFLAGS="-buildvcs=false" go install -trimpath -ldflags "-s -w" "sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION"
rm -rf "$BIN"
mv "$BIN.partial" "$BIN"
log "built in $((SECONDS - start)) s: $BIN"
echo "$BIN"
