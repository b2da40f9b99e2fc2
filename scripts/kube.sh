#!/usr/bin/env bash
# A real one-node Kubernetes (1.20, built from Debian's source package) and a real image
# registry (Debian's docker-registry), for the KubeSpawner tests.
#
#   scripts/kube.sh up      build what is missing, start everything, wait until healthy;
#                           the last two lines of stdout are KUBECONFIG=<path> and REGISTRY=<host:port>
#   scripts/kube.sh down    stop everything it started and remove what it left
#   scripts/kube.sh status  say what runs (exit 0 only when the node is Ready and the registry answers)
#
# Why a build: no reachable registry holds a Kubernetes server binary or a container image,
# but Debian bookworm's source package `kubernetes` is the whole upstream tree (vendor/
# included) and bullseye's Go 1.15 builds it offline. See ../shared/offline-kubernetes.md.
#
# Environment: TLJH_R2D_REGISTRY_PORT (default 5000, else the first free port after it),
# TLJH_R2D_KUBE_API_PORT (default 16443), TLJH_R2D_KUBE_CACHE (machine-wide binary cache).
# Everything generated lives under .build/kube/ of the checkout. Debian 12, root.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
KDIR="$ROOT/.build/kube"
SRC_DIR="$KDIR/src"      # apt lists, downloaded packages, the source tree, Go
BIN_DIR="$KDIR/bin"      # the binaries and the pause image every run uses
STATE="$KDIR/state"      # certs, tokens, data of one run: removed by `down`
LOGS="$KDIR/logs"        # kept after `down`, for post-mortems

# The source package and the toolchain that builds it as is (GOFLAGS=-mod=vendor).
KUBE_SRC_VERSION='1.20.5+really1.20.2-1.1+deb12u1'
KUBE_VERSION='v1.20.2'
GO_PACKAGES=(golang-1.15-go golang-1.15-src)
# Run-time parts from bookworm, unpacked into bin/ (never installed: their packages would
# start system services on default ports).
RUNTIME_PACKAGES=(etcd-server docker-registry containernetworking-plugins)
KUBE_BINARIES=(kube-apiserver kube-controller-manager kube-scheduler kubelet)
# Bump the suffix whenever the way the binaries are built changes.
VERSION_KEY="$KUBE_VERSION-deb12u1-go1.15-1"
MACHINE_CACHE="${TLJH_R2D_KUBE_CACHE:-/var/cache/tljh-repo2docker/kube}/$VERSION_KEY"
PAUSE_IMAGE='registry.local/tljh-r2d/pause:3.2'

# Ports and addresses: control plane on loopback, off the usual ports (another cluster or
# tool on this machine keeps its own); the node on a bridge this script creates.
API_PORT="${TLJH_R2D_KUBE_API_PORT:-16443}"
ETCD_PORT=12379
ETCD_PEER_PORT=12380
CM_PORT=17257
SCHED_PORT=17259
KUBELET_PORT=17250
KUBELET_HEALTHZ_PORT=17248
REGISTRY_DEFAULT_PORT="${TLJH_R2D_REGISTRY_PORT:-5000}"
BRIDGE=kube-r2d0
BRIDGE_SUBNET=10.244.0.0/24
BRIDGE_IP=10.244.0.1
SERVICE_CIDR=10.96.0.0/24
NODE_NAME=tljh-r2d-node
NODE_LABELS='hub.jupyter.org/node-purpose=user'
STORAGE_CLASS=standard
# hostpath provisioner's directory: fixed in kube-controller-manager's source.
HOSTPATH_PV_DIR=/tmp/hostpath_pv
IPTABLES_COMMENT=tljh-r2d-kube
COMPONENTS=(registry etcd kube-apiserver containerd kube-controller-manager kube-scheduler kubelet)

log() { printf '==> kube: %s\n' "$*" >&2; }
die() { printf 'ERROR: kube: %s\n' "$*" >&2; exit 1; }

# ---------------------------------------------------------------- packages (private apt list)

apt_private() {
    # apt_private <apt-get args...>: apt-get with our own list of sources (bookworm's
    # sources and bullseye's binaries), its own lists and cache: the system's apt
    # configuration is left alone.
    local dir="$SRC_DIR/apt" uri
    if [ ! -f "$dir/sources.list" ]; then
        mkdir -p "$dir/lists/partial" "$dir/cache/archives/partial"
        uri="$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)"
        uri="${uri:-http://deb.debian.org/debian}"
        {
            echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $uri bookworm main"
            echo "deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $uri bookworm main"
            echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $uri bullseye main"
        } >"$dir/sources.list"
    fi
    apt-get -q -o "Dir::Etc::SourceList=$dir/sources.list" -o Dir::Etc::SourceParts=/nonexistent \
        -o "Dir::State::Lists=$dir/lists" -o "Dir::Cache=$dir/cache" -o APT::Sandbox::User=root "$@"
}

apt_private_update() {
    [ -f "$SRC_DIR/apt/updated" ] && return
    log "apt: update of the private list (bookworm + deb-src, bullseye)"
    apt_private update >/dev/null
    touch "$SRC_DIR/apt/updated"
}

download_and_unpack() {
    # download_and_unpack <dest> <package...>: `apt-get download`, then `dpkg-deb -x` each.
    local dest="$1" pkg deb
    shift
    mkdir -p "$SRC_DIR/debs" "$dest"
    (cd "$SRC_DIR/debs" && apt_private download "$@" >/dev/null)
    for pkg in "$@"; do
        deb="$(ls "$SRC_DIR/debs/${pkg}"_*.deb | tail -1)"
        dpkg-deb -x "$deb" "$dest"
    done
}

ensure_host_tools() {
    # Tools from the system's own sources (already there on the project's machines).
    local missing=() tool pkg
    for tool in gcc:gcc dpkg-source:dpkg-dev iptables:iptables openssl:openssl curl:curl \
        containerd:containerd runc:runc ip:iproute2; do
        command -v "${tool%%:*}" >/dev/null 2>&1 || missing+=("${tool#*:}")
    done
    [ -f /usr/lib/x86_64-linux-gnu/libc.a ] || [ -n "$(ls /usr/lib/*/libc.a 2>/dev/null)" ] || missing+=(libc6-dev)
    [ "${#missing[@]}" -eq 0 ] && return
    log "apt: installing ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >/dev/null
}

ensure_runtime_packages() {
    # etcd, the registry and the CNI plugins, unpacked (not installed) into bin/debian.
    [ -x "$BIN_DIR/debian/usr/bin/etcd" ] && [ -x "$BIN_DIR/debian/usr/bin/docker-registry" ] \
        && [ -x "$BIN_DIR/debian/usr/lib/cni/bridge" ] && return
    apt_private_update
    log "apt: etcd, docker-registry, CNI plugins (unpacked into .build/kube/bin/debian)"
    download_and_unpack "$BIN_DIR/debian" "${RUNTIME_PACKAGES[@]}"
}

# ---------------------------------------------------------------- the build

kube_binaries_present() {
    local dir="$1" b
    for b in "${KUBE_BINARIES[@]}"; do [ -x "$dir/$b" ] || return 1; done
    [ -f "$dir/pause.tar" ]
}

ensure_kube_binaries() {
    # The built binaries: .build/kube/bin, else the machine-wide cache (a fresh clone on
    # this machine: CI), else a build from source (about 6 minutes on 2 cores).
    kube_binaries_present "$BIN_DIR" && return
    mkdir -p "$BIN_DIR"
    if kube_binaries_present "$MACHINE_CACHE"; then
        log "binaries: from the machine cache $MACHINE_CACHE"
        cp -a "$MACHINE_CACHE"/. "$BIN_DIR"/
        return
    fi
    build_from_source
    save_to_machine_cache
}

save_to_machine_cache() {
    # Written to a temporary directory, then renamed: a reader never sees half of it.
    local tmp
    mkdir -p "$(dirname "$MACHINE_CACHE")"
    tmp="$(mktemp -d "$MACHINE_CACHE.tmp.XXXXXX")"
    cp -a "${KUBE_BINARIES[@]/#/$BIN_DIR/}" "$BIN_DIR/pause.tar" "$tmp"/
    rm -rf "$MACHINE_CACHE"
    mv "$tmp" "$MACHINE_CACHE"
    log "binaries: saved to the machine cache $MACHINE_CACHE"
}

go_env() {
    # Go 1.15 from bullseye builds this tree as is, offline, from its vendor/ directory.
    export GOROOT="$SRC_DIR/go/usr/lib/go-1.15"
    export PATH="$GOROOT/bin:$PATH"
    export GOPATH="$SRC_DIR/gopath" GOCACHE="$SRC_DIR/gocache" GOPROXY=off GOFLAGS=-mod=vendor
    export CGO_ENABLED=0 GOTOOLCHAIN=local
}

fetch_sources() {
    # The tree goes to $GOPATH/src/k8s.io/kubernetes: openapi-gen runs in GOPATH mode.
    local tree="$SRC_DIR/gopath/src/k8s.io/kubernetes"
    apt_private_update
    if [ ! -x "$SRC_DIR/go/usr/lib/go-1.15/bin/go" ]; then
        log "build: Go 1.15 from bullseye"
        download_and_unpack "$SRC_DIR/go" "${GO_PACKAGES[@]}"
    fi
    [ -f "$tree/go.mod" ] && return
    log "build: source package kubernetes=$KUBE_SRC_VERSION (34 MB)"
    mkdir -p "$SRC_DIR/source"
    (cd "$SRC_DIR/source" && apt_private source --download-only "kubernetes=$KUBE_SRC_VERSION" >/dev/null)
    rm -rf "$SRC_DIR/source/tree" "$tree"
    dpkg-source --no-check -x "$SRC_DIR/source"/kubernetes_*.dsc "$SRC_DIR/source/tree" >/dev/null
    mkdir -p "$(dirname "$tree")"
    mv "$SRC_DIR/source/tree" "$tree"
}

generate_openapi() {
    # The one generated file missing from the tarball. openapi-gen (from the tree's own
    # vendor/) reads every package tagged +k8s:openapi-gen=, as the upstream Makefile does.
    local tree="$1" out=pkg/generated/openapi/zz_generated.openapi.go dirs
    [ -f "$tree/$out" ] && return
    log "build: generating $out"
    (cd "$tree" && go build -o "$SRC_DIR/openapi-gen" ./vendor/k8s.io/kube-openapi/cmd/openapi-gen)
    # Packages under vendor/ are named by their own import path; the rest by k8s.io/kubernetes/...
    # grep -R: vendor/k8s.io/* are symlinks into staging/. Tags only, not code that mentions them.
    dirs="$(cd "$tree" && grep -Rl --include='*.go' '^// *+k8s:openapi-gen=' pkg vendor/k8s.io \
        | grep -v -e '/_examples/' -e '/cmd/' -e 'vendor/k8s.io/kube-openapi/' \
        | xargs -n1 dirname | sort -u \
        | sed -e 's,^vendor/,,' -e 's,^pkg/,k8s.io/kubernetes/pkg/,' | paste -sd, -)"
    (cd "$tree" && GO111MODULE=off GOFLAGS= "$SRC_DIR/openapi-gen" \
        --input-dirs "$dirs" --output-package k8s.io/kubernetes/pkg/generated/openapi \
        --output-file-base zz_generated.openapi \
        --go-header-file hack/boilerplate/boilerplate.generatego.txt \
        --report-filename "$SRC_DIR/openapi-violations.report" >"$LOGS/openapi-gen.log" 2>&1) \
        || die "openapi-gen failed (see $LOGS/openapi-gen.log)"
}

build_pause_image() {
    # The pod sandbox image: the tree's pause.c, static, in a one-layer image in the format
    # `docker save` writes, which `ctr images import` reads.
    local tree="$1" work="$SRC_DIR/pause" layer config digest
    log "build: pause image"
    rm -rf "$work" && mkdir -p "$work/rootfs" "$work/image"
    gcc -Os -static -o "$work/rootfs/pause" "$tree/build/pause/linux/pause.c"
    strip "$work/rootfs/pause"
    tar --owner=0 --group=0 --numeric-owner --mtime=@0 -C "$work/rootfs" -cf "$work/image/layer.tar" pause
    layer="$(sha256sum "$work/image/layer.tar" | cut -d' ' -f1)"
    cat >"$work/image/config.json" <<JSON
{"architecture":"amd64","os":"linux","config":{"Entrypoint":["/pause"],"User":"65535:65535"},
 "rootfs":{"type":"layers","diff_ids":["sha256:$layer"]},"history":[{"created_by":"pause.c"}]}
JSON
    config="$(sha256sum "$work/image/config.json" | cut -d' ' -f1)"
    mv "$work/image/config.json" "$work/image/$config.json"
    printf '[{"Config":"%s.json","RepoTags":["%s"],"Layers":["layer.tar"]}]\n' "$config" "$PAUSE_IMAGE" \
        >"$work/image/manifest.json"
    tar --owner=0 --group=0 --numeric-owner --mtime=@0 -C "$work/image" -cf "$BIN_DIR/pause.tar" .
    digest="$config"
    log "build: pause image config sha256:$digest"
}

build_from_source() {
    local t0=$SECONDS tree="$SRC_DIR/gopath/src/k8s.io/kubernetes" b
    mkdir -p "$LOGS"
    log "build: from source, once per machine (about 4-6 min on 2 cores; output in $LOGS/build.log)"
    fetch_sources
    go_env
    generate_openapi "$tree"
    for b in "${KUBE_BINARIES[@]}"; do
        log "build: $b (go build)"
        (cd "$tree" && go build -trimpath -o "$BIN_DIR/$b" \
            -ldflags "-s -w -X k8s.io/component-base/version.gitVersion=$KUBE_VERSION -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=20" \
            "./cmd/$b") >>"$LOGS/build.log" 2>&1 || die "go build $b failed (see $LOGS/build.log)"
    done
    build_pause_image "$tree"
    log "build: done in $((SECONDS - t0))s"
}

# ---------------------------------------------------------------- processes

pid_file() { echo "$STATE/pids/$1.pid"; }

is_running() {
    # is_running <component>: its recorded process is alive and is still that program.
    local f pid
    f="$(pid_file "$1")"
    [ -f "$f" ] || return 1
    pid="$(cat "$f")"
    [ -d "/proc/$pid" ] && tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q "$STATE"
}

start_daemon() {
    # start_daemon <component> <command...>: in its own session (a Ctrl-C of the caller
    # does not reach it), output to logs/<component>.log.
    local name="$1"
    shift
    mkdir -p "$STATE/pids" "$LOGS"
    log "starting $name"
    # 8>&-: the daemons must not inherit (and hold) the lock `up` and `down` take.
    setsid "$@" >"$LOGS/$name.log" 2>&1 </dev/null 8>&- &
    echo $! >"$(pid_file "$name")"
}

stop_daemon() {
    # stop_daemon <component>: TERM, up to 15 s, then KILL.
    local name="$1" f pid i
    f="$(pid_file "$name")"
    [ -f "$f" ] || return 0
    if is_running "$name"; then
        pid="$(cat "$f")"
        log "stopping $name (pid $pid)"
        kill "$pid" 2>/dev/null || true
        for i in $(seq 1 30); do [ -d "/proc/$pid" ] || break; sleep 0.5; done
        [ -d "/proc/$pid" ] && kill -9 "$pid" 2>/dev/null || true
    fi
    rm -f "$f"
}

wait_until() {
    # wait_until <seconds> <description> <command...>: poll every half second.
    local seconds="$1" what="$2" deadline
    shift 2
    deadline=$((SECONDS + seconds))
    until "$@" >/dev/null 2>&1; do
        [ "$SECONDS" -lt "$deadline" ] || die "$what: not within ${seconds}s (logs in $LOGS)"
        sleep 0.5
    done
}

port_free() { [ -z "$(ss -Hltn "sport = :$1")" ]; }

# ---------------------------------------------------------------- credentials

make_pki() {
    # A CA, the API server's serving certificate, the API server's client certificate for
    # the kubelet, the service-account key pair and one static admin token.
    local pki="$STATE/pki"
    mkdir -p "$pki"
    (
        cd "$pki"
        openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -days 3650 \
            -subj /CN=tljh-r2d-kube-ca 2>/dev/null
        issue() { # issue <name> <subject> [subjectAltName]
            openssl req -newkey rsa:2048 -nodes -keyout "$1.key" -out "$1.csr" -subj "$2" 2>/dev/null
            openssl x509 -req -in "$1.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -days 3650 \
                -out "$1.crt" ${3:+-extfile <(printf 'subjectAltName=%s\n' "$3")} 2>/dev/null
        }
        issue apiserver /CN=kube-apiserver \
            "IP:127.0.0.1,IP:$BRIDGE_IP,IP:${SERVICE_CIDR%.0/*}.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc"
        issue apiserver-kubelet-client '/O=system:masters/CN=kube-apiserver-kubelet-client'
        openssl genrsa -out sa.key 2048 2>/dev/null
        openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null
    )
    # One cluster-admin token (group system:masters) for the user and every component.
    printf '%s,admin,admin,system:masters\n' "$(openssl rand -hex 32)" >"$pki/tokens.csv"
    chmod 600 "$pki"/*.key "$pki/tokens.csv"
}

admin_token() { cut -d, -f1 "$STATE/pki/tokens.csv"; }
kubeconfig_path() { echo "$STATE/kubeconfig"; }

write_kubeconfig() {
    cat >"$(kubeconfig_path)" <<YAML
apiVersion: v1
kind: Config
clusters:
- name: tljh-r2d
  cluster:
    server: https://127.0.0.1:$API_PORT
    certificate-authority-data: $(base64 -w0 "$STATE/pki/ca.crt")
users:
- name: admin
  user:
    token: $(admin_token)
contexts:
- name: tljh-r2d
  context: {cluster: tljh-r2d, user: admin, namespace: default}
current-context: tljh-r2d
YAML
    chmod 600 "$(kubeconfig_path)"
}

api() {
    # api <method> <path> [json body]: the API server's REST API as cluster-admin.
    local args=(-sf --max-time 10 --cacert "$STATE/pki/ca.crt" -H "Authorization: Bearer $(admin_token)"
        -X "$1" "https://127.0.0.1:$API_PORT$2")
    [ "$#" -ge 3 ] && args+=(-H 'Content-Type: application/json' --data "$3")
    curl "${args[@]}"
}

# ---------------------------------------------------------------- the registry

registry_port() { cat "$STATE/registry.port" 2>/dev/null; }
registry_answers() { curl -sf --max-time 5 "http://127.0.0.1:$(registry_port)/v2/" >/dev/null; }

choose_registry_port() {
    # A fixed default (5000); TLJH_R2D_REGISTRY_PORT overrides it and must be free. Without
    # an override a taken 5000 falls back to the next free port up to 5009.
    local port
    if [ -n "${TLJH_R2D_REGISTRY_PORT:-}" ]; then
        port_free "$TLJH_R2D_REGISTRY_PORT" || die "TLJH_R2D_REGISTRY_PORT=$TLJH_R2D_REGISTRY_PORT is taken"
        echo "$TLJH_R2D_REGISTRY_PORT"
        return
    fi
    for port in $(seq "$REGISTRY_DEFAULT_PORT" $((REGISTRY_DEFAULT_PORT + 9))); do
        if port_free "$port"; then echo "$port"; return; fi
        log "registry: port $port is taken, trying the next one"
    done
    die "no free port for the registry in $REGISTRY_DEFAULT_PORT-$((REGISTRY_DEFAULT_PORT + 9)) (set TLJH_R2D_REGISTRY_PORT)"
}

start_registry() {
    local port
    port="$(choose_registry_port)"
    echo "$port" >"$STATE/registry.port"
    mkdir -p "$STATE/registry/data"
    # delete enabled: tests (and the service's image pruning) remove what they push.
    cat >"$STATE/registry/config.yml" <<YAML
version: 0.1
log: {level: info}
storage:
  filesystem: {rootdirectory: $STATE/registry/data}
  delete: {enabled: true}
http:
  addr: 127.0.0.1:$port
YAML
    start_daemon registry "$BIN_DIR/debian/usr/bin/docker-registry" serve "$STATE/registry/config.yml"
    wait_until 30 "registry on 127.0.0.1:$port" registry_answers
}

# ---------------------------------------------------------------- control plane

start_etcd() {
    start_daemon etcd "$BIN_DIR/debian/usr/bin/etcd" --name tljh-r2d --data-dir "$STATE/etcd" \
        --listen-client-urls "http://127.0.0.1:$ETCD_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
        --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
        --initial-cluster "tljh-r2d=http://127.0.0.1:$ETCD_PEER_PORT" --listen-metrics-urls ''
    wait_until 30 etcd curl -sf "http://127.0.0.1:$ETCD_PORT/health"
}

start_apiserver() {
    local pki="$STATE/pki"
    # Loopback only; --advertise-address is the bridge's address because the API server
    # refuses a loopback one for its own endpoints.
    start_daemon kube-apiserver "$BIN_DIR/kube-apiserver" \
        --bind-address=127.0.0.1 --secure-port="$API_PORT" --insecure-port=0 --advertise-address="$BRIDGE_IP" \
        --etcd-servers="http://127.0.0.1:$ETCD_PORT" \
        --tls-cert-file="$pki/apiserver.crt" --tls-private-key-file="$pki/apiserver.key" \
        --client-ca-file="$pki/ca.crt" --token-auth-file="$pki/tokens.csv" --anonymous-auth=false \
        --authorization-mode=RBAC --allow-privileged=true \
        --service-cluster-ip-range="$SERVICE_CIDR" \
        --service-account-key-file="$pki/sa.pub" --service-account-signing-key-file="$pki/sa.key" \
        --service-account-issuer=https://kubernetes.default.svc.cluster.local \
        --kubelet-client-certificate="$pki/apiserver-kubelet-client.crt" \
        --kubelet-client-key="$pki/apiserver-kubelet-client.key" \
        --kubelet-preferred-address-types=InternalIP --profiling=false
    wait_until 90 kube-apiserver api GET /readyz
}

start_controllers() {
    # The controller manager makes service-account tokens (no pod starts without them) and,
    # with --enable-hostpath-provisioner, the volumes of the default StorageClass.
    local pki="$STATE/pki"
    start_daemon kube-controller-manager "$BIN_DIR/kube-controller-manager" \
        --kubeconfig="$(kubeconfig_path)" --leader-elect=false \
        --bind-address=127.0.0.1 --secure-port="$CM_PORT" --port=0 \
        --service-account-private-key-file="$pki/sa.key" --root-ca-file="$pki/ca.crt" \
        --cluster-signing-cert-file="$pki/ca.crt" --cluster-signing-key-file="$pki/ca.key" \
        --enable-hostpath-provisioner=true --profiling=false
    start_daemon kube-scheduler "$BIN_DIR/kube-scheduler" \
        --kubeconfig="$(kubeconfig_path)" --leader-elect=false \
        --bind-address=127.0.0.1 --secure-port="$SCHED_PORT" --port=0
}

# ---------------------------------------------------------------- node

containerd_sock() { echo "$STATE/containerd/containerd.sock"; }
ctr_k8s() { ctr -a "$(containerd_sock)" -n k8s.io "$@"; }

create_bridge() {
    # Created here (the CNI bridge plugin would make it only with the first pod) because
    # the kubelet needs its address as the node IP: it rejects a loopback one.
    if ! ip link show "$BRIDGE" >/dev/null 2>&1; then
        ip link add "$BRIDGE" type bridge
        ip addr add "$BRIDGE_IP/${BRIDGE_SUBNET#*/}" dev "$BRIDGE"
    fi
    ip link set "$BRIDGE" up
    # Docker sets the FORWARD policy to DROP; with br_netfilter that also drops traffic
    # between pods on the bridge and from pods to the outside.
    local dir
    for dir in -i -o; do
        iptables -C FORWARD "$dir" "$BRIDGE" -m comment --comment "$IPTABLES_COMMENT" -j ACCEPT 2>/dev/null \
            || iptables -I FORWARD 1 "$dir" "$BRIDGE" -m comment --comment "$IPTABLES_COMMENT" -j ACCEPT
    done
}

start_containerd() {
    # The kubelet's own containerd: private socket, root and state, CNI config and plugins.
    local dir="$STATE/containerd" port
    port="$(registry_port)"
    mkdir -p "$dir" "$STATE/cni/net.d"
    cat >"$STATE/cni/net.d/10-tljh-r2d.conflist" <<JSON
{"cniVersion": "0.4.0", "name": "tljh-r2d", "plugins": [{
  "type": "bridge", "bridge": "$BRIDGE", "isGateway": true, "ipMasq": true, "hairpinMode": true,
  "ipam": {"type": "host-local", "dataDir": "$STATE/cni/ipam",
           "ranges": [[{"subnet": "$BRIDGE_SUBNET", "gateway": "$BRIDGE_IP"}]],
           "routes": [{"dst": "0.0.0.0/0"}]}}]}
JSON
    # restrict_oom_score_adj: this machine lacks CAP_SYS_RESOURCE, and without it every pod
    # sandbox fails (runc cannot lower /proc/self/oom_score_adj).
    # The registry is plain HTTP on loopback: a mirror entry with an http:// endpoint.
    cat >"$dir/config.toml" <<TOML
version = 2
root = "$dir/root"
state = "$dir/state"
[grpc]
  address = "$(containerd_sock)"
[plugins."io.containerd.internal.v1.opt"]
  path = "$dir/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$PAUSE_IMAGE"
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "$BIN_DIR/debian/usr/lib/cni"
    conf_dir = "$STATE/cni/net.d"
  [plugins."io.containerd.grpc.v1.cri".registry.mirrors."127.0.0.1:$port"]
    endpoint = ["http://127.0.0.1:$port"]
TOML
    start_daemon containerd containerd --config "$dir/config.toml"
    wait_until 30 containerd ctr -a "$(containerd_sock)" version
    # No registry holds a pause image: the one built from the tree is imported.
    ctr_k8s images import "$BIN_DIR/pause.tar" >/dev/null
}

start_kubelet() {
    local dir="$STATE/kubelet"
    mkdir -p "$dir"
    cat >"$dir/config.yaml" <<YAML
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $BRIDGE_IP
port: $KUBELET_PORT
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: $KUBELET_HEALTHZ_PORT
# Only the API server (its client certificate, signed by our CA) talks to the kubelet.
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: false}
  x509: {clientCAFile: $STATE/pki/ca.crt}
authorization: {mode: AlwaysAllow}
cgroupDriver: cgroupfs
failSwapOn: false
clusterDomain: cluster.local
resolvConf: /etc/resolv.conf
volumePluginDir: $dir/volume-plugins
serializeImagePulls: false
maxPods: 30
# A shared developer machine: do not evict pods for a fuller disk than a CI run needs.
evictionHard: {memory.available: 100Mi, nodefs.available: 2%, imagefs.available: 2%, nodefs.inodesFree: 2%}
imageGCHighThresholdPercent: 95
imageGCLowThresholdPercent: 90
YAML
    start_daemon kubelet "$BIN_DIR/kubelet" --config="$dir/config.yaml" --kubeconfig="$(kubeconfig_path)" \
        --container-runtime=remote --container-runtime-endpoint="unix://$(containerd_sock)" \
        --root-dir="$dir/root" --cert-dir="$dir/pki" \
        --node-ip="$BRIDGE_IP" --hostname-override="$NODE_NAME" --node-labels="$NODE_LABELS" \
        --pod-infra-container-image="$PAUSE_IMAGE"
}

node_ready() {
    api GET "/api/v1/nodes/$NODE_NAME" | python3 -c '
import json, sys
node = json.load(sys.stdin)
sys.exit(0 if any(c["type"] == "Ready" and c["status"] == "True" for c in node["status"]["conditions"]) else 1)'
}

ensure_storage_class() {
    # The default StorageClass: PVCs without a class get it (DefaultStorageClass admission)
    # and the controller manager's hostpath provisioner binds them at once.
    api GET "/apis/storage.k8s.io/v1/storageclasses/$STORAGE_CLASS" >/dev/null && return
    api POST /apis/storage.k8s.io/v1/storageclasses "{\"apiVersion\": \"storage.k8s.io/v1\",
        \"kind\": \"StorageClass\", \"metadata\": {\"name\": \"$STORAGE_CLASS\",
        \"annotations\": {\"storageclass.kubernetes.io/is-default-class\": \"true\"}},
        \"provisioner\": \"kubernetes.io/host-path\", \"reclaimPolicy\": \"Delete\",
        \"volumeBindingMode\": \"Immediate\"}" >/dev/null
}

# ---------------------------------------------------------------- up / down / status

preflight() {
    # One cluster per machine: the ports and the bridge are fixed. Another checkout's
    # cluster (or anything else) on them is reported, not fought with.
    local port
    for port in "$API_PORT" "$ETCD_PORT" "$ETCD_PEER_PORT" "$CM_PORT" "$SCHED_PORT" "$KUBELET_PORT" "$KUBELET_HEALTHZ_PORT"; do
        port_free "$port" || die "port $port is taken: $(ss -Hltnp "sport = :$port" | awk '{print $NF}' | head -1)
(another checkout's cluster? run its ./dev kube down)"
    done
    # The bridge with every port above free: a cluster whose processes are gone (a killed
    # session, a machine whose processes were stopped but whose kernel state stayed) left
    # it. Its leftovers would break this start: remove them.
    if ip link show "$BRIDGE" >/dev/null 2>&1; then
        log "the bridge $BRIDGE is left from a cluster that no longer runs: removing it and its leftovers"
        unmount_under "/.build/kube/state/"
        remove_host_leftovers
    fi
}

healthy() {
    local c
    for c in "${COMPONENTS[@]}"; do is_running "$c" || return 1; done
    registry_answers && api GET /readyz >/dev/null && node_ready
}

print_result() {
    echo "KUBECONFIG=$(kubeconfig_path)"
    echo "REGISTRY=127.0.0.1:$(registry_port)"
}

cmd_up() {
    local t0=$SECONDS
    [ "$(id -u)" -eq 0 ] || die "run as root (containerd, the kubelet, iptables)"
    mkdir -p "$KDIR" "$LOGS"
    exec 8>"$KDIR/lock"
    flock 8
    if healthy; then
        log "already up"
        print_result
        return
    fi
    # Anything half up (a crash, a killed run) is cleared first: a fresh start is simpler
    # to reason about than repairing one part.
    [ -d "$STATE" ] && cleanup
    preflight
    ensure_host_tools
    ensure_runtime_packages
    ensure_kube_binaries
    mkdir -p "$STATE"
    make_pki
    write_kubeconfig
    start_registry
    start_etcd
    create_bridge
    start_apiserver
    start_containerd
    start_controllers
    start_kubelet
    wait_until 120 "node $NODE_NAME Ready" node_ready
    ensure_storage_class
    # Pods cannot be created before the controller manager made the default service account.
    wait_until 60 "service account default/default" api GET /api/v1/namespaces/default/serviceaccounts/default
    log "up in $((SECONDS - t0))s"
    print_result
}

cmd_status() {
    local c rc=0
    for c in "${COMPONENTS[@]}"; do
        if is_running "$c"; then echo "$c: running (pid $(cat "$(pid_file "$c")"))"; else echo "$c: stopped"; rc=1; fi
    done
    [ "$rc" -eq 0 ] || return 1
    registry_answers && echo "registry: answers on 127.0.0.1:$(registry_port)" || { echo "registry: no answer"; rc=1; }
    node_ready && echo "node $NODE_NAME: Ready" || { echo "node $NODE_NAME: not Ready"; rc=1; }
    [ "$rc" -eq 0 ] && print_result
    return "$rc"
}

delete_all_pods() {
    # Deleting pods through the API lets the kubelet stop their sandboxes properly (CNI DEL:
    # veths, IP leases, masquerade rules). Best effort, bounded: a forced clean-up follows.
    is_running kube-apiserver && is_running kubelet && is_running containerd || return 0
    # gracePeriodSeconds 1, not 0: 0 forces the object away at once, before the kubelet stops it.
    local body='{"kind":"DeleteOptions","apiVersion":"v1","gracePeriodSeconds":1}' ns
    for ns in $(api GET /api/v1/namespaces | python3 -c 'import json,sys; print(" ".join(n["metadata"]["name"] for n in json.load(sys.stdin)["items"]))'); do
        api DELETE "/api/v1/namespaces/$ns/pods" "$body" >/dev/null || true
    done
    # Stopped sandboxes and containers stay listed until garbage collection: wait for no task
    # RUNNING (the pause task is the sandbox's: it stops after its network is torn down).
    local deadline=$((SECONDS + 30))
    while [ "$SECONDS" -lt "$deadline" ] && ctr_k8s tasks ls 2>/dev/null | grep -q RUNNING; do sleep 0.5; done
}

remove_iptables_leftovers() {
    # The kubelet's KUBE-* chains (iptables and ip6tables), the bridge plugin's masquerade
    # chains for our network, and our FORWARD rules.
    local cmd table rule chain
    for cmd in iptables ip6tables; do
        command -v "$cmd" >/dev/null || continue
        for table in filter nat mangle; do
            "$cmd" -t "$table" -S 2>/dev/null | grep -E -- '^-A (INPUT|OUTPUT|FORWARD|PREROUTING|POSTROUTING) .*(-j (KUBE-|CNI-)|--comment "?'"$IPTABLES_COMMENT"')' \
                | while read -r rule; do
                    # A CNI- jump is ours only if it names our network in its comment.
                    case "$rule" in *"-j CNI-"*) [[ "$rule" == *'name: \"tljh-r2d\"'* || "$rule" == *'name: "tljh-r2d"'* ]] || continue ;; esac
                    eval "$cmd -t $table ${rule/#-A/-D}" 2>/dev/null || true
                done || true # (grep finds nothing: not an error)
            for chain in $("$cmd" -t "$table" -S 2>/dev/null | awk '$1 == "-N" && $2 ~ /^KUBE-/ {print $2}'); do
                "$cmd" -t "$table" -F "$chain" 2>/dev/null || true
            done
            for chain in $("$cmd" -t "$table" -S 2>/dev/null | awk '$1 == "-N" && $2 ~ /^KUBE-/ {print $2}'); do
                "$cmd" -t "$table" -X "$chain" 2>/dev/null || true
            done
            # CNI- chains no longer referenced (ours, once their jumps are gone).
            for chain in $("$cmd" -t "$table" -S 2>/dev/null | awk '$1 == "-N" && $2 ~ /^CNI-/ {print $2}'); do
                "$cmd" -t "$table" -S 2>/dev/null | grep -q -- "-j $chain\$\|-j $chain " && continue
                "$cmd" -t "$table" -F "$chain" 2>/dev/null && "$cmd" -t "$table" -X "$chain" 2>/dev/null || true
            done
        done
    done
}

remove_cgroups() {
    # The kubelet's kubepods hierarchy (cgroupfs driver), deepest directories first.
    local d
    for d in /sys/fs/cgroup/*/kubepods /sys/fs/cgroup/kubepods; do
        [ -d "$d" ] || continue
        find "$d" -depth -type d -exec rmdir {} \; 2>/dev/null || true
    done
}

unmount_under() {
    # Every mount below a directory, deepest first (the kubelet's rshared root, secret
    # tmpfs, containerd's overlay and shm mounts).
    local m
    awk '{print $2}' /proc/self/mounts | grep -F "$1" | sort -r | while read -r m; do
        m="$(printf '%b' "$m")"
        umount -l "$m" 2>/dev/null || true
    done || true # (no mounts: not an error)
}

kill_leftover_shims() {
    # Shims of our containerd (their command line names its socket) outlive it.
    local f pid
    for f in /proc/[0-9]*/cmdline; do
        pid="${f#/proc/}" && pid="${pid%/cmdline}"
        tr '\0' ' ' <"$f" 2>/dev/null | grep -q -- "containerd-shim.* -address $(containerd_sock)" || continue
        kill -9 "$pid" 2>/dev/null || true
    done
}

cleanup() {
    # Stop all that `up` started and remove what it left; safe to run at any point.
    log "clean-up"
    delete_all_pods
    stop_daemon kubelet
    # Pods' containers belong to shims of our containerd; stop them with it.
    if is_running containerd; then
        local id
        for id in $(ctr_k8s tasks ls -q 2>/dev/null); do ctr_k8s tasks kill -s SIGKILL "$id" >/dev/null 2>&1 || true; done
    fi
    local c
    for c in kube-scheduler kube-controller-manager kube-apiserver etcd containerd registry; do stop_daemon "$c"; done
    kill_leftover_shims
    unmount_under "$STATE/"
    remove_host_leftovers
    rm -rf "$STATE"
}

remove_host_leftovers() {
    # What a cluster leaves in the kernel and outside the checkout once its processes are
    # gone: CNI network namespaces, cgroups, iptables rules, the bridge, CNI results.
    local ns
    for ns in /var/run/netns/cni-*; do
        [ -e "$ns" ] || continue
        [ -z "$(ip netns pids "$(basename "$ns")" 2>/dev/null)" ] || continue
        umount "$ns" 2>/dev/null || true
        rm -f "$ns"
    done
    remove_cgroups
    remove_iptables_leftovers
    ip link del "$BRIDGE" 2>/dev/null || true
    rm -rf /var/lib/cni/results/tljh-r2d-* /var/log/pods /var/log/containers "$HOSTPATH_PV_DIR"
}

cmd_down() {
    [ "$(id -u)" -eq 0 ] || die "run as root"
    mkdir -p "$KDIR"
    exec 8>"$KDIR/lock"
    flock 8
    cleanup
    log "down"
}

main() {
    case "${1:-}" in
        up) cmd_up ;;
        down) cmd_down ;;
        status) cmd_status ;;
        *) sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
    esac
}

# Sourcing the file (for a single function while debugging) runs nothing.
if [ "${BASH_SOURCE[0]}" = "$0" ]; then main "$@"; fi
