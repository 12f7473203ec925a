#!/usr/bin/env bash
# Provision the single-machine Kubernetes node tier (issue 6): containerd 1.7 with CDI, runc,
# CNI plugins, locally built pause/test OCI images, and a host-capability probe for the kubelet.
#
# Idempotent; everything built is cached under ${MOCK_ACCEL_CACHE:-$HOME/.cache/mock-accel}.
# Prints `KEY=VALUE` lines on stdout (paths the test tier uses); progress goes to stderr.
# Fails loudly, naming the missing prerequisite.
#
# Usage: scripts/provision-node.sh            # provision + probe
#        scripts/provision-node.sh --check    # only probe host prerequisites
set -euo pipefail

CACHE="${MOCK_ACCEL_CACHE:-$HOME/.cache/mock-accel}"
CONTAINERD_VERSION="${MOCK_ACCEL_CONTAINERD_VERSION:-v1.7.27}"
K8S_VERSION="${MOCK_ACCEL_K8S_VERSION:-1.34.4}"
GO="${GO:-/usr/local/go/bin/go}"

log() { echo "provision-node: $*" >&2; }
die() { echo "provision-node: ERROR: $*" >&2; exit 1; }

mkdir -p "$CACHE"

# --- host prerequisites ---------------------------------------------------------------------
probe_host() {
  [[ $(id -u) == 0 ]] || die "must run as root (kubelet and containerd need root)"
  local fstype
  fstype=$(stat -fc %T /sys/fs/cgroup)
  case "$fstype" in
    cgroup2fs) CGROUP_VERSION=v2 ;;
    tmpfs)
      CGROUP_VERSION=v1
      for c in cpu cpuacct cpuset memory devices freezer pids; do
        [[ -d /sys/fs/cgroup/$c ]] || die "cgroup v1 hierarchy without the '$c' controller mounted at /sys/fs/cgroup/$c (kubelet needs it)"
      done
      ;;
    *) die "unknown cgroup filesystem '$fstype' at /sys/fs/cgroup (need cgroup v1 or v2 mounted)" ;;
  esac
  # systemd as cgroup driver only when systemd is PID 1.
  if [[ $(cat /proc/1/comm) == systemd ]]; then CGROUP_DRIVER=systemd; else CGROUP_DRIVER=cgroupfs; fi
  for m in overlay br_netfilter; do
    if ! grep -qw "$m" /proc/filesystems /proc/modules 2>/dev/null && [[ ! -d /sys/module/$m ]]; then
      [[ $m == overlay ]] && die "kernel lacks overlayfs (containerd's overlayfs snapshotter needs it; modprobe overlay)"
    fi
  done
  [[ -e /proc/sys/net/ipv4/ip_forward ]] || die "no /proc/sys/net/ipv4/ip_forward (network namespaces unavailable)"
  log "host: cgroup $CGROUP_VERSION ($fstype), cgroup driver $CGROUP_DRIVER, init $(cat /proc/1/comm)"
}

# --- Debian packages ------------------------------------------------------------------------
ensure_debs() {
  local need=()
  command -v runc >/dev/null || need+=(runc)
  [[ -x /usr/lib/cni/bridge ]] || need+=(containernetworking-plugins)
  [[ -x /bin/busybox ]] && /bin/busybox --list | grep -qx sleep || need+=(busybox-static)
  command -v iptables >/dev/null || need+=(iptables)
  command -v openssl >/dev/null || need+=(openssl)
  if ((${#need[@]})); then
    log "apt-get install ${need[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${need[@]}" >&2 \
      || die "apt-get install ${need[*]} failed (needs the Debian apt mirror)"
  fi
  [[ -x /usr/lib/cni/bridge && -x /usr/lib/cni/host-local && -x /usr/lib/cni/loopback ]] \
    || die "CNI plugins missing in /usr/lib/cni (apt-get install containernetworking-plugins)"
  file -L /bin/busybox 2>/dev/null | grep -q 'statically linked' \
    || ldd /bin/busybox 2>&1 | grep -q 'not a dynamic' \
    || die "/bin/busybox is not static (apt-get install busybox-static)"
}

# --- containerd 1.7 from the Go module proxy (bookworm ships 1.6.20, no CDI) ----------------
CTRD_DIR="$CACHE/containerd-$CONTAINERD_VERSION"
ensure_containerd() {
  if [[ -x $CTRD_DIR/bin/containerd && -x $CTRD_DIR/bin/containerd-shim-runc-v2 && -x $CTRD_DIR/bin/ctr ]]; then
    return
  fi
  [[ -x $GO ]] || die "Go toolchain not found at $GO (needed to build containerd $CONTAINERD_VERSION; set GO=)"
  log "building containerd $CONTAINERD_VERSION from the Go module proxy (several minutes)"
  local mod="$CTRD_DIR/mod"
  rm -rf "$mod"; mkdir -p "$mod" "$CTRD_DIR/bin.tmp"
  (
    cd "$mod"
    export GOMODCACHE="$CACHE/go/mod" GOCACHE="$CACHE/go/build" GOFLAGS=-mod=mod CGO_ENABLED=0
    "$GO" mod init mockaccel.local/ctrd >&2
    "$GO" get "github.com/containerd/containerd@$CONTAINERD_VERSION" >&2
    for c in containerd containerd-shim-runc-v2 ctr; do
      "$GO" build -trimpath -tags "no_btrfs no_devmapper no_zfs no_aufs" \
        -ldflags "-X github.com/containerd/containerd/version.Version=$CONTAINERD_VERSION" \
        -o "$CTRD_DIR/bin.tmp/$c" "github.com/containerd/containerd/cmd/$c" >&2
    done
  ) || die "building containerd $CONTAINERD_VERSION failed (needs proxy.golang.org and $GO)"
  rm -rf "$CTRD_DIR/bin"; mv "$CTRD_DIR/bin.tmp" "$CTRD_DIR/bin"
}

# --- OCI images built locally from busybox-static -------------------------------------------
# Writes an OCI image-layout tar (oci-layout, index.json, blobs/sha256/...) with one layer that
# holds /bin/busybox plus applet symlinks. Reference name goes into the index annotation so
# `ctr images import` tags it.
build_oci() { # name ref entrypoint-json out.tar [extra-file-src:dest ...]
  local name=$1 ref=$2 entry=$3 out=$4; shift 4
  local w; w=$(mktemp -d)
  mkdir -p "$w/root/bin" "$w/root/etc" "$w/root/tmp" "$w/root/proc" "$w/root/sys" "$w/root/dev" \
    "$w/layout/blobs/sha256"
  cp /bin/busybox "$w/root/bin/busybox"
  for a in sh sleep env cat ls grep mount echo test true stat readlink find; do
    ln -sf busybox "$w/root/bin/$a"
  done
  local extra
  for extra in "$@"; do
    mkdir -p "$w/root/$(dirname "${extra#*:}")"
    cp "${extra%%:*}" "$w/root/${extra#*:}"
  done
  echo 'root:x:0:0:root:/:/bin/sh' >"$w/root/etc/passwd"
  # Deterministic layer: fixed mtimes and owner.
  tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -C "$w/root" -cf "$w/layer.tar" .
  local diffid; diffid=$(sha256sum "$w/layer.tar" | cut -d' ' -f1)
  gzip -n -9 <"$w/layer.tar" >"$w/layer.tgz"
  local ldig lsz; ldig=$(sha256sum "$w/layer.tgz" | cut -d' ' -f1); lsz=$(stat -c %s "$w/layer.tgz")
  mv "$w/layer.tgz" "$w/layout/blobs/sha256/$ldig"
  printf '{"architecture":"amd64","os":"linux","config":{"Entrypoint":%s,"Env":["PATH=/bin"],"WorkingDir":"/"},"rootfs":{"type":"layers","diff_ids":["sha256:%s"]},"history":[{"created_by":"mock-accel provision-node.sh %s"}]}' \
    "$entry" "$diffid" "$name" >"$w/config.json"
  local cdig csz; cdig=$(sha256sum "$w/config.json" | cut -d' ' -f1); csz=$(stat -c %s "$w/config.json")
  mv "$w/config.json" "$w/layout/blobs/sha256/$cdig"
  printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":%s},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:%s","size":%s}]}' \
    "$cdig" "$csz" "$ldig" "$lsz" >"$w/manifest.json"
  local mdig msz; mdig=$(sha256sum "$w/manifest.json" | cut -d' ' -f1); msz=$(stat -c %s "$w/manifest.json")
  mv "$w/manifest.json" "$w/layout/blobs/sha256/$mdig"
  printf '{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%s,"platform":{"architecture":"amd64","os":"linux"},"annotations":{"org.opencontainers.image.ref.name":"%s","io.containerd.image.name":"%s"}}]}' \
    "$mdig" "$msz" "${ref##*:}" "$ref" >"$w/layout/index.json"
  echo '{"imageLayoutVersion":"1.0.0"}' >"$w/layout/oci-layout"
  tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -C "$w/layout" -cf "$out.tmp" .
  mv "$out.tmp" "$out"
  rm -rf "$w"
}

# --driver-image BIN REF OUT.tar: an OCI image of a stripped copy of the mock-accel-dra binary
# plus the shared libraries ldd lists (no registry, no image build tool: same writer as the
# test images), for the DaemonSet in scripts/test-node-dra.sh.
if [[ ${1:-} == --driver-image ]]; then
  [[ $# == 4 && -x $2 ]] || die "usage: $0 --driver-image BIN REF OUT.tar"
  w=$(mktemp -d)
  strip -o "$w/mock-accel-dra" "$2"
  extras=("$w/mock-accel-dra:usr/local/bin/mock-accel-dra")
  for lib in $(ldd "$2" | grep -o '/[^ ]*'); do extras+=("$lib:${lib#/}"); done
  build_oci mock-accel-dra "$3" '["/usr/local/bin/mock-accel-dra"]' "$4" "${extras[@]}"
  rm -rf "$w"
  exit 0
fi

IMG_DIR="$CACHE/node-images"
PAUSE_REF="localhost/mock-accel/pause:busybox"
TEST_REF="localhost/mock-accel/busybox:test"
ensure_images() {
  mkdir -p "$IMG_DIR"
  [[ -s $IMG_DIR/pause.tar ]] || build_oci pause "$PAUSE_REF" '["/bin/sleep","infinity"]' "$IMG_DIR/pause.tar"
  [[ -s $IMG_DIR/busybox.tar ]] || build_oci busybox "$TEST_REF" '["/bin/sh"]' "$IMG_DIR/busybox.tar"
}

# --- kubelet (built by scripts/provision-k8s.sh at the same pinned version) ----------------
find_kubelet() {
  local k
  for k in "$CACHE"/k8s-"$K8S_VERSION"-*/bin/kubelet; do
    [[ -x $k ]] && { KUBELET=$k; return; }
  done
  die "kubelet $K8S_VERSION not found under $CACHE/k8s-$K8S_VERSION-*/bin (run scripts/provision-k8s.sh)"
}

probe_host
if [[ ${1:-} == --check ]]; then
  echo "CGROUP_VERSION=$CGROUP_VERSION"; echo "CGROUP_DRIVER=$CGROUP_DRIVER"; exit 0
fi
ensure_debs
ensure_containerd
ensure_images
find_kubelet

echo "CGROUP_VERSION=$CGROUP_VERSION"
echo "CGROUP_DRIVER=$CGROUP_DRIVER"
echo "CONTAINERD_BIN=$CTRD_DIR/bin"
echo "KUBELET=$KUBELET"
echo "PAUSE_IMAGE=$PAUSE_REF"
echo "PAUSE_TAR=$IMG_DIR/pause.tar"
echo "TEST_IMAGE=$TEST_REF"
echo "TEST_TAR=$IMG_DIR/busybox.tar"
echo "CNI_BIN_DIR=/usr/lib/cni"
