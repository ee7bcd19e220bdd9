#!/usr/bin/env bash
# Build the local cluster's binaries once, from the Go module proxy, cached by version.
#
# `build.sh` (or `build.sh control-plane`), the control plane:
#   kube-apiserver, kube-controller-manager, kube-scheduler   k8s.io/kubernetes $KUBERNETES_VERSION
#   etcd                                                     go.etcd.io/etcd/server/v3 (the version kubernetes pins)
#   kwok                                                     sigs.k8s.io/kwok $KWOK_VERSION (fake nodes and kubelets)
# `build.sh node`, a real node (scripts/cluster/realnode.py), in a second folder:
#   kubelet, kube-proxy      the same build module and version as the control plane, so they match it
#   coredns                  github.com/coredns/coredns $COREDNS_VERSION, with the plugins a cluster DNS uses
#   metrics-server           sigs.k8s.io/metrics-server $METRICS_SERVER_VERSION
#   pause                    scripts/cluster/pause.c, static (the pod sandbox image's only file)
#   grpc-health              a server of the gRPC health service only (grpc.health.v1, SERVING), from the same
#                            build module's gRPC: the target of the real node tests' gRPC probes
# coredns, metrics-server, pause and grpc-health are static (CGO off / gcc -static): their images are built FROM scratch.
#
# k8s.io/kubernetes is not meant to be a dependency: its go.mod points its ~30 staging modules (k8s.io/api, ...)
# at ./staging, which a module download does not have. A small build module requires it and replaces each staging
# module by the published v0.MINOR.PATCH release of the same commit.
#
# Output: .cache/cluster/bin/<kubernetes version>-kwok-<kwok version>/{kube-apiserver,...,kwok}
#         .cache/cluster/bin/<kubernetes version>-node-coredns-<v>-metrics-server-<v>/{kubelet,...,pause}
#         (each with build-times.txt: seconds per binary of its first build)
# Prints the binary folder on stdout; progress goes to stderr. Idempotent: a complete folder is reused as it is.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
KUBERNETES_VERSION="${KUBERNETES_VERSION:-v1.35.4}"
KWOK_VERSION="${KWOK_VERSION:-v0.8.0}"
COREDNS_VERSION="${COREDNS_VERSION:-v1.15.0}"
METRICS_SERVER_VERSION="${METRICS_SERVER_VERSION:-v0.8.0}"
TARGET="${1:-control-plane}"
case "$TARGET" in
    control-plane)
        BIN="$ROOT/.cache/cluster/bin/$KUBERNETES_VERSION-kwok-$KWOK_VERSION"
        BINARIES=(kube-apiserver kube-controller-manager kube-scheduler etcd kwok) ;;
    node)
        BIN="$ROOT/.cache/cluster/bin/$KUBERNETES_VERSION-node-coredns-$COREDNS_VERSION-metrics-server-$METRICS_SERVER_VERSION"
        BINARIES=(kubelet kube-proxy coredns metrics-server pause grpc-health) ;;
    *) echo "usage: build.sh [control-plane|node]" >&2; exit 2 ;;
esac
WORK="$ROOT/.cache/cluster/build/$KUBERNETES_VERSION"

log() { echo "cluster-build: $*" >&2; }

complete() {
    local b
    for b in "${BINARIES[@]}"; do [[ -x "$BIN/$b" ]] || return 1; done
}

# step BINARY LABEL COMMAND...: build one binary and record its seconds in build-times.txt; a binary the folder
# already holds (the list grew since the folder was built) is reused as it is.
step() {
    local binary=$1 label=$2 began=$SECONDS
    shift 2
    if [[ -x "$BIN/$binary" ]]; then
        cp -p "$BIN/$binary" "$BIN.partial/$binary"
        grep "^$binary " "$BIN/build-times.txt" >> "$BIN.partial/build-times.txt" 2>/dev/null || true
        return
    fi
    log "building $label"
    "$@"
    log "built $label in $((SECONDS - began)) s"
    echo "$binary $((SECONDS - began))" >> "$BIN.partial/build-times.txt"
}

# The kubernetes build module: requires k8s.io/kubernetes and replaces each staging module it points at ./staging
# by the published release of the same commit; tools.go pins every command built from it.
kubernetes_module() {
    mkdir -p "$WORK/etcd"
    local minor="v0.${KUBERNETES_VERSION#v1.}" gomod go_directive
    gomod="$(cd "$WORK" && go mod download -json "k8s.io/kubernetes@$KUBERNETES_VERSION" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')"
    go_directive="$(sed -n 's/^go \(.*\)/\1/p' "$gomod")"
    {
        echo "module kubeinfer.local/cluster"
        echo
        echo "go $go_directive"
        echo
        echo "require k8s.io/kubernetes $KUBERNETES_VERSION"
        echo
        sed -n 's#^\s*\(k8s.io/[a-z0-9-]*\) => ./staging/src/.*#replace \1 => \1 '"$minor"'#p' "$gomod"
    } > "$WORK/go.mod"
    cat > "$WORK/tools.go" <<'GO'
//go:build tools

// Package tools pins the commands this module builds: the control plane and a real node's kubelet and kube-proxy.
package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-proxy"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubelet"
)
GO
    # etcd's own main lives in a module with local replaces; its server package is all a binary needs.
    cat > "$WORK/etcd/main.go" <<'GO'
// Command etcd is the etcd server, built from the version kubernetes itself pins.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
GO
    mkdir -p "$WORK/grpc-health"
    cat > "$WORK/grpc-health/main.go" <<'GO'
// Command grpc-health serves the gRPC health service (grpc.health.v1) and nothing else: the overall status ""
// is SERVING, any other service name is unknown (NotFound). The target of the real node tests' gRPC probes.
package main

import (
	"flag"
	"log"
	"net"

	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

func main() {
	address := flag.String("listen", ":9090", "address to serve on")
	flag.Parse()
	listener, err := net.Listen("tcp", *address)
	if err != nil {
		log.Fatal(err)
	}
	server := grpc.NewServer()
	healthpb.RegisterHealthServer(server, health.NewServer())
	log.Fatal(server.Serve(listener))
}
GO
    log "resolving modules for kubernetes $KUBERNETES_VERSION"
    # tidy keeps every dependency at the version kubernetes itself requires (etcd's server included).
    (cd "$WORK" && go mod tidy >&2)
}

build_kubernetes_command() {
    (cd "$WORK" && go build -trimpath -ldflags "-s -w -X k8s.io/component-base/version.gitVersion=$KUBERNETES_VERSION" \
        -o "$BIN.partial/$1" "k8s.io/kubernetes/cmd/$1")
}

build_etcd() {
    (cd "$WORK" && go build -trimpath -ldflags "-s -w" -o "$BIN.partial/etcd" ./etcd)
}

build_kwok() {
    GOBIN="$BIN.partial" GOFLAGS="-buildvcs=false" go install -trimpath -ldflags "-s -w" "sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION"
}

# CoreDNS with the plugins a cluster's DNS needs (its main with a chosen plugin set, the way CoreDNS documents
# custom builds): the full release binary also compiles the cloud providers' SDKs, minutes more on 2 cores.
build_coredns() {
    local module="$ROOT/.cache/cluster/build/coredns-$COREDNS_VERSION"
    mkdir -p "$module"
    cat > "$module/go.mod" <<GOMOD
module kubeinfer.local/coredns

go 1.26.0

require github.com/coredns/coredns $COREDNS_VERSION
GOMOD
    cat > "$module/main.go" <<'GO'
// Command coredns is CoreDNS with the plugins the local cluster's DNS uses.
package main

import (
	"github.com/coredns/coredns/coremain"

	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/health"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/loadbalance"
	_ "github.com/coredns/coredns/plugin/log"
	_ "github.com/coredns/coredns/plugin/ready"
	_ "github.com/coredns/coredns/plugin/reload"
	_ "github.com/coredns/coredns/plugin/template"
)

func main() { coremain.Run() }
GO
    (cd "$module" && go mod tidy >&2 && CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$BIN.partial/coredns" .)
}

# metrics-server as a tool of a small module of its own (its dependencies stay at the versions it chose).
build_metrics_server() {
    local module="$ROOT/.cache/cluster/build/metrics-server-$METRICS_SERVER_VERSION"
    mkdir -p "$module"
    [[ -f "$module/go.mod" ]] || (cd "$module" && go mod init kubeinfer.local/metrics-server >&2)
    (cd "$module" && go get -tool "sigs.k8s.io/metrics-server/cmd/metrics-server@$METRICS_SERVER_VERSION" >&2 \
        && CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$BIN.partial/metrics-server" \
            sigs.k8s.io/metrics-server/cmd/metrics-server)
}

build_grpc_health() {
    (cd "$WORK" && CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$BIN.partial/grpc-health" ./grpc-health)
}

build_pause() {
    gcc -static -Os -Wall -Werror -o "$BIN.partial/pause" "$ROOT/scripts/cluster/pause.c"
    strip "$BIN.partial/pause"
}

build_control_plane() {
    kubernetes_module
    local cmd
    for cmd in kube-apiserver kube-controller-manager kube-scheduler; do
        step "$cmd" "$cmd" build_kubernetes_command "$cmd"
    done
    step etcd etcd build_etcd
    step kwok "kwok $KWOK_VERSION" build_kwok
}

build_node() {
    command -v gcc >/dev/null || { log "gcc is not installed (the pause binary is C)"; exit 1; }
    kubernetes_module
    step kubelet kubelet build_kubernetes_command kubelet
    step kube-proxy kube-proxy build_kubernetes_command kube-proxy
    step coredns "coredns $COREDNS_VERSION" build_coredns
    step metrics-server "metrics-server $METRICS_SERVER_VERSION" build_metrics_server
    step pause pause build_pause
    step grpc-health grpc-health build_grpc_health
}

if complete; then
    echo "$BIN"
    exit 0
fi
command -v go >/dev/null || { log "go is not installed (the cluster is built from the Go module proxy)"; exit 1; }

start=$SECONDS
rm -rf "$BIN.partial"
mkdir -p "$BIN.partial"
export GOFLAGS="-mod=mod -buildvcs=false"
if [[ "$TARGET" == node ]]; then build_node; else build_control_plane; fi
rm -rf "$BIN"
mv "$BIN.partial" "$BIN"
log "built in $((SECONDS - start)) s: $BIN"
echo "$BIN"
