#!/usr/bin/env bash
# Build the Kubernetes control plane (and kubectl, kubelet) and etcd from Go modules, cached
# outside the repository and keyed by version and this script:
#   kube-apiserver kube-controller-manager kube-scheduler kubectl kubelet  (k8s.io/kubernetes)
#   etcd                                                                   (go.etcd.io/etcd/server/v3)
# Kubernetes is not packaged for Debian; k8s.io/kubernetes is built through the Go module proxy
# with `replace` lines mapping every staging module (k8s.io/api, ...) to its v0.x release.
# Prints the bin directory on stdout (last line).
set -euo pipefail
cd "$(dirname "$0")/.."
K8S_VERSION="${K8S_VERSION:-1.34.4}"
ETCD_VERSION="${ETCD_VERSION:-3.6.4}"
cache="${MOCK_ACCEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/mock-accel}"
# Bump RECIPE when the build steps below change what gets built.
RECIPE=1
key=$(echo "$K8S_VERSION $ETCD_VERSION $RECIPE" | sha256sum | cut -c1-12)
out="$cache/k8s-$K8S_VERSION-$key"
log() { printf 'provision-k8s: %s\n' "$*" >&2; }

if [ -f "$out/.complete" ]; then
    echo "$out/bin"
    exit 0
fi
command -v go >/dev/null || { log "go not found: install Go >= 1.24 (https://go.dev/dl) or Debian's golang"; exit 1; }

export GOMODCACHE="$cache/go/mod" GOCACHE="$cache/go/build" GOFLAGS="-buildvcs=false -mod=mod"
export GOTOOLCHAIN=local CGO_ENABLED=0
rm -rf "$out.partial"; mkdir -p "$out.partial/bin" "$out.partial/src"
work="$out.partial/src"
start=$(date +%s)

# A throwaway main module that requires k8s.io/kubernetes and replaces its staging modules.
staging_version="v0.${K8S_VERSION#1.}"
(
    cd "$work"
    go mod init mock-accel.invalid/k8s-build >/dev/null 2>&1
    modfile=$(go mod download -json "k8s.io/kubernetes@v$K8S_VERSION" | sed -n 's/.*"GoMod": "\(.*\)",/\1/p')
    [ -f "$modfile" ] || { log "could not download k8s.io/kubernetes@v$K8S_VERSION from the Go module proxy"; exit 1; }
    {
        echo "require k8s.io/kubernetes v$K8S_VERSION"
        echo "require go.etcd.io/etcd/server/v3 v$ETCD_VERSION"
        sed -n 's#^\s*\(k8s.io/[a-z0-9-]*\) => ./staging/.*#replace \1 => \1 '"$staging_version"'#p' "$modfile"
    } >> go.mod
    log "resolving modules for kubernetes v$K8S_VERSION (staging $staging_version), etcd v$ETCD_VERSION"
    go mod download >&2
)

build() {
    local pkg=$1
    log "go build $pkg"
    (cd "$work" && go build -trimpath -ldflags="-s -w \
        -X k8s.io/component-base/version.gitVersion=v$K8S_VERSION \
        -X k8s.io/component-base/version.gitMajor=1 \
        -X k8s.io/component-base/version.gitMinor=${K8S_VERSION#1.} " \
        -o "$out.partial/bin/" "$pkg") >&2
}
for cmd in kube-apiserver kube-controller-manager kube-scheduler kubectl kubelet; do
    build "k8s.io/kubernetes/cmd/$cmd"
done
# etcd's server module is its main package (go names the binary "server").
build go.etcd.io/etcd/server/v3
mv "$out.partial/bin/server" "$out.partial/bin/etcd"
[ -x "$out.partial/bin/etcd" ] || { log "etcd build produced no binary"; exit 1; }
"$out.partial/bin/kube-apiserver" --version >&2
log "built in $(( $(date +%s) - start )) s"
echo $(( $(date +%s) - start )) > "$out.partial/build-seconds"
rm -rf "$work"
touch "$out.partial/.complete"
mv "$out.partial" "$out"
echo "$out/bin"
