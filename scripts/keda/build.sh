#!/usr/bin/env bash
# KEDA's operator and metrics adapter (external.metrics.k8s.io), built once from KEDA's Go module, cached by version.
#
# github.com/kedacore/keda/v2 $KEDA_VERSION comes from the Go module proxy (`go mod download`); its go.mod has
# replace and exclude directives, which only hold in the main module, so the commands are built inside a copy of
# the module's source (`go build ./cmd/operator`, `./cmd/adapter`), as KEDA's own Makefile does. ~10 minutes of a
# 2-core machine for both (they compile every scaler's SDK).
#
# Output: .cache/keda/bin/$KEDA_VERSION/{keda-operator,keda-adapter,build-times.txt,crds/*.yaml,LICENSE}
#         (crds: every CRD of config/crd/bases, which the operator's controllers all watch)
# Prints the folder on stdout; progress goes to stderr. Idempotent: a complete folder is reused as it is.
#
# KEDA_PREBUILT=DIR (DIR/operator, DIR/adapter) is a local shortcut: binaries built elsewhere are taken instead of
# building only when their Go build info says they are this build: the same Go toolchain, the same main packages
# of KEDA's module, and exactly the module versions `go list -deps` resolves for them here.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
KEDA_MODULE="github.com/kedacore/keda/v2"
KEDA_VERSION="${KEDA_VERSION:-v2.21.0}"
BIN="$ROOT/.cache/keda/bin/$KEDA_VERSION"
SRC="$ROOT/.cache/keda/build/keda-$KEDA_VERSION"
COMMANDS=(operator adapter)

log() { echo "keda-build: $*" >&2; }

complete() {
    local c
    for c in "${COMMANDS[@]}"; do [[ -x "$BIN/keda-$c" ]] || return 1; done
    compgen -G "$BIN/crds/*.yaml" >/dev/null
}

# The modules (path version, replacements applied) a command of the source links, as `go list` resolves them.
wanted_modules() {
    (cd "$SRC" && go list -deps -f '{{with .Module}}{{if not .Main}}{{with .Replace}}{{.Path}} {{.Version}}{{else}}{{.Path}} {{.Version}}{{end}}{{end}}{{end}}' "./cmd/$1") \
        | sort -u
}

# The same list from a binary's build info (a `dep` line, or its `=>` replacement line after it).
linked_modules() {
    go version -m "$1" | awk '$1 == "dep" { if (p) print p; p = $2 " " $3 }
                              $1 == "=>" { p = $2 " " $3 }
                              END { if (p) print p }' | sort -u
}

prebuilt_matches() {
    local c=$1 binary="$KEDA_PREBUILT/$1" info
    [[ -x "$binary" ]] || { log "KEDA_PREBUILT: no $binary"; return 1; }
    info="$(go version -m "$binary")"
    [[ "$(head -1 <<<"$info" | awk '{print $2}')" == "$(go env GOVERSION)" ]] \
        || { log "KEDA_PREBUILT: $binary was built by another Go"; return 1; }
    grep -qP "^\tpath\t$KEDA_MODULE/cmd/$c$" <<<"$info" \
        || { log "KEDA_PREBUILT: $binary is not $KEDA_MODULE/cmd/$c"; return 1; }
    if ! diff <(wanted_modules "$c") <(linked_modules "$binary") >&2; then
        log "KEDA_PREBUILT: $binary links other module versions than $KEDA_VERSION's"
        return 1
    fi
}

if complete; then
    echo "$BIN"
    exit 0
fi
command -v go >/dev/null || { log "go is not installed (KEDA is built from the Go module proxy)"; exit 1; }
export GOFLAGS="-mod=mod -buildvcs=false"

start=$SECONDS
if [[ ! -f "$SRC/go.mod" ]]; then
    log "downloading $KEDA_MODULE@$KEDA_VERSION"
    work="$(mktemp -d)"
    trap 'rm -rf "$work"' EXIT
    (cd "$work" && go mod init keda-download >/dev/null 2>&1)
    dir="$(cd "$work" && go mod download -json "$KEDA_MODULE@$KEDA_VERSION" \
        | python3 -c 'import json, sys; info = json.load(sys.stdin); print(info.get("Dir") or ""); \
sys.exit(info.get("Error"))')"
    rm -rf "$SRC.partial"
    mkdir -p "$(dirname "$SRC")"
    cp -r "$dir" "$SRC.partial"
    chmod -R u+w "$SRC.partial"  # the module cache is read-only
    mv "$SRC.partial" "$SRC"
fi

rm -rf "$BIN.partial"
mkdir -p "$BIN.partial/crds"
cp "$SRC"/config/crd/bases/*.yaml "$BIN.partial/crds/"
cp "$SRC/LICENSE" "$BIN.partial/LICENSE"
for c in "${COMMANDS[@]}"; do
    began=$SECONDS
    if [[ -n "${KEDA_PREBUILT:-}" ]] && prebuilt_matches "$c"; then
        log "taking $KEDA_PREBUILT/$c (the same build)"
        cp "$KEDA_PREBUILT/$c" "$BIN.partial/keda-$c"
        echo "keda-$c prebuilt" >> "$BIN.partial/build-times.txt"
        continue
    fi
    log "building $c (minutes)"
    (cd "$SRC" && go build -o "$BIN.partial/keda-$c" "./cmd/$c")
    log "built $c in $((SECONDS - began)) s"
    echo "keda-$c $((SECONDS - began))" >> "$BIN.partial/build-times.txt"
done
rm -rf "$BIN"
mv "$BIN.partial" "$BIN"
log "done in $((SECONDS - start)) s: $BIN"
echo "$BIN"
