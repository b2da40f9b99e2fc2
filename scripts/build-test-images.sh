#!/usr/bin/env bash
# Build the local Docker images the test suite and the demo use, without any registry:
#
#   base        Debian trixie rootfs made with debootstrap, then `docker import`
#   repo2docker FROM base: jupyter-repo2docker in /opt/r2d (+ docker-cli/buildx from base)
#   singleuser  FROM base: jupyterhub (same major.minor as the host's) + jupyterlab, user jovyan
#
# Idempotent: an image is skipped when it exists and was built from the same recipe
# (a label holds a hash of the recipe and of its parent image). `--force` rebuilds all.
#
# Environment overrides:
#   TLJH_R2D_TEST_BASE_IMAGE         (default tljh-repo2docker-test/base:trixie)
#   TLJH_R2D_TEST_REPO2DOCKER_IMAGE  (default tljh-repo2docker-test/repo2docker:latest)
#   TLJH_R2D_TEST_SINGLEUSER_IMAGE   (default tljh-repo2docker-test/singleuser:latest)
#   TLJH_R2D_TEST_REPO2DOCKER_VERSION (default 2026.4.0)
#   TLJH_R2D_TEST_JUPYTERHUB_SPEC    (default: "==X.Y.*" from the project's .venv)
#   TLJH_R2D_TEST_DEBIAN_MIRROR      (default: the host's apt mirror for Debian)
#   TLJH_R2D_TEST_DEBIAN_SUITE       (default trixie)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

BASE_IMAGE="${TLJH_R2D_TEST_BASE_IMAGE:-tljh-repo2docker-test/base:trixie}"
R2D_IMAGE="${TLJH_R2D_TEST_REPO2DOCKER_IMAGE:-tljh-repo2docker-test/repo2docker:latest}"
SU_IMAGE="${TLJH_R2D_TEST_SINGLEUSER_IMAGE:-tljh-repo2docker-test/singleuser:latest}"
R2D_VERSION="${TLJH_R2D_TEST_REPO2DOCKER_VERSION:-2026.4.0}"
SUITE="${TLJH_R2D_TEST_DEBIAN_SUITE:-trixie}"
BASE_PACKAGES="ca-certificates,python3,python3-venv,git,docker-cli,docker-buildx"
HOST_CA=/etc/ssl/certs/ca-certificates.crt
BUILD_DIR="$ROOT/.build"
RECIPE_LABEL="org.tljh-repo2docker.test.recipe"
STD_PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

FORCE=0
for arg in "$@"; do
    case "$arg" in
        --force) FORCE=1 ;;
        -h | --help) sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "unknown argument: $arg" >&2; exit 2 ;;
    esac
done

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'ERROR: %s\n' "$*" >&2; exit 1; }
now() { date +%s; }

mkdir -p "$BUILD_DIR"
# Other people may run `./dev test` in the same tree at the same time.
exec 8>"$BUILD_DIR/images.lock"
flock 8

docker info >/dev/null 2>&1 || die "no Docker engine answers (run ./dev setup)"
[ -f "$HOST_CA" ] || die "$HOST_CA not found"

# The Debian mirror the host's apt already uses (it works through whatever proxy there is).
detect_mirror() {
    local uri
    uri="$(
        {
            cat /etc/apt/sources.list.d/*.sources 2>/dev/null | sed -n 's/^URIs:[[:space:]]*//p' | tr ' ' '\n'
            cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null \
                | sed -n 's/^deb[[:space:]]\+\(\[[^]]*\][[:space:]]\+\)\{0,1\}\([^[:space:]]\+\).*/\2/p'
        } | grep -E '^https?://.*/debian/?$' | head -n 1
    )" || true
    echo "${uri:-http://deb.debian.org/debian}"
}
MIRROR="${TLJH_R2D_TEST_DEBIAN_MIRROR:-$(detect_mirror)}"

jupyterhub_spec() {
    if [ -n "${TLJH_R2D_TEST_JUPYTERHUB_SPEC:-}" ]; then
        echo "$TLJH_R2D_TEST_JUPYTERHUB_SPEC"
        return
    fi
    local py ver
    for py in "$ROOT/.venv/bin/python" python3; do
        ver="$("$py" -c 'import jupyterhub; print(jupyterhub.__version__)' 2>/dev/null)" || continue
        # 5.5.4 -> ==5.5.*
        echo "==$(echo "$ver" | cut -d. -f1,2).*"
        return
    done
    die "cannot read the host's jupyterhub version; set TLJH_R2D_TEST_JUPYTERHUB_SPEC"
}

sha() { sha256sum | cut -c1-16; }

image_recipe() {
    docker image inspect -f "{{ index .Config.Labels \"$RECIPE_LABEL\" }}" "$1" 2>/dev/null || true
}

image_id() { docker image inspect -f '{{.Id}}' "$1"; }

# up_to_date IMAGE RECIPE: true when IMAGE exists with that recipe and --force was not given.
up_to_date() {
    [ "$FORCE" -eq 0 ] && [ "$(image_recipe "$1")" = "$2" ]
}

# ---------------------------------------------------------------- base
build_base() {
    local recipe tarball t0 tmp
    recipe="$(printf '%s\n' "$SUITE" "$BASE_PACKAGES" "$(sha256sum "$HOST_CA")" "v1" | sha)"
    if up_to_date "$BASE_IMAGE" "$recipe"; then
        log "base: $BASE_IMAGE up to date (skipped)"
        return
    fi
    t0=$(now)
    tarball="$BUILD_DIR/rootfs-$SUITE-$(printf '%s\n' "$SUITE" "$BASE_PACKAGES" | sha).tar"
    if [ -f "$tarball" ] && [ "$FORCE" -eq 0 ]; then
        log "base: reusing cached rootfs $(basename "$tarball")"
    else
        command -v debootstrap >/dev/null 2>&1 || die "debootstrap not installed (run ./dev setup)"
        log "base: debootstrap --variant=minbase $SUITE from $MIRROR"
        tmp="$(mktemp -d "$BUILD_DIR/rootfs.XXXXXX")"
        # shellcheck disable=SC2064
        trap "rm -rf '$tmp'" EXIT
        if ! debootstrap --variant=minbase --include="$BASE_PACKAGES" "$SUITE" "$tmp" "$MIRROR" \
            >"$BUILD_DIR/debootstrap.log" 2>&1; then
            tail -n 30 "$BUILD_DIR/debootstrap.log" >&2
            die "debootstrap failed (full log: .build/debootstrap.log)"
        fi
        rm -rf "$tmp"/var/cache/apt/archives/*.deb "$tmp"/var/lib/apt/lists/* "$tmp"/tmp/*
        tar --numeric-owner -C "$tmp" -cf "$tarball.part" .
        mv "$tarball.part" "$tarball"
        rm -rf "$tmp"
        trap - EXIT
        log "base: rootfs cached in .build/$(basename "$tarball") ($(($(now) - t0))s)"
    fi
    log "base: docker import -> $BASE_IMAGE (host CA bundle copied in)"
    tmp="$(mktemp -d "$BUILD_DIR/rootfs.XXXXXX")"
    # shellcheck disable=SC2064
    trap "rm -rf '$tmp'" EXIT
    tar --numeric-owner -C "$tmp" -xpf "$tarball"
    # After any ca-certificates install: the host bundle also trusts a TLS-intercepting
    # proxy, if there is one (elsewhere it is just the system's roots).
    cp "$HOST_CA" "$tmp/etc/ssl/certs/ca-certificates.crt"
    tar --numeric-owner -C "$tmp" -c . | docker import \
        --change "ENV PATH=$STD_PATH" \
        --change "ENV LANG=C.UTF-8" \
        --change "LABEL $RECIPE_LABEL=$recipe" \
        --change 'CMD ["/bin/bash"]' \
        - "$BASE_IMAGE" >/dev/null
    rm -rf "$tmp"
    trap - EXIT
    log "base: built in $(($(now) - t0))s"
}

# ---------------------------------------------------------------- derived images
# build_from_context NAME IMAGE CONTEXT_DIR: docker build with a recipe label computed
# from the context's files and the base image id.
build_from_context() {
    local name="$1" image="$2" ctx="$3" recipe t0
    recipe="$( (cd "$ctx" && find . -type f -print0 | sort -z | xargs -0 sha256sum; image_id "$BASE_IMAGE") | sha)"
    if up_to_date "$image" "$recipe"; then
        log "$name: $image up to date (skipped)"
        return
    fi
    t0=$(now)
    log "$name: docker build -> $image"
    if ! docker build -q --label "$RECIPE_LABEL=$recipe" -t "$image" "$ctx" \
        >"$BUILD_DIR/$name-build.log" 2>&1; then
        tail -n 40 "$BUILD_DIR/$name-build.log" >&2
        die "$name: docker build failed (full log: .build/$name-build.log)"
    fi
    log "$name: built in $(($(now) - t0))s"
}

write_repo2docker_context() {
    local ctx="$BUILD_DIR/ctx-repo2docker"
    rm -rf "$ctx"
    mkdir -p "$ctx"
    cat >"$ctx/repo2docker_config.py" <<'EOF'
# Loaded by repo2docker from its working directory. Offline test machines cannot
# reach the hosts some content providers contact while detecting a URL (Dataverse
# downloads a list of installations), so only local paths and git are tried.
from repo2docker import contentproviders

c.Repo2Docker.content_providers = [contentproviders.Local, contentproviders.Git]
EOF
    cat >"$ctx/Dockerfile" <<EOF
FROM $BASE_IMAGE
ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt \\
    PIP_DISABLE_PIP_VERSION_CHECK=1 \\
    PIP_NO_CACHE_DIR=1
RUN python3 -m venv /opt/r2d \\
 && /opt/r2d/bin/pip install "jupyter-repo2docker==$R2D_VERSION"
ENV PATH=/opt/r2d/bin:$STD_PATH
WORKDIR /srv/r2d
COPY repo2docker_config.py /srv/r2d/repo2docker_config.py
CMD ["jupyter-repo2docker", "--help"]
EOF
    echo "$ctx"
}

write_singleuser_context() {
    local ctx="$BUILD_DIR/ctx-singleuser" spec="$1"
    rm -rf "$ctx"
    mkdir -p "$ctx"
    cat >"$ctx/Dockerfile" <<EOF
FROM $BASE_IMAGE
ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt \\
    PIP_DISABLE_PIP_VERSION_CHECK=1 \\
    PIP_NO_CACHE_DIR=1
RUN python3 -m venv /opt/venv \\
 && /opt/venv/bin/pip install "jupyterhub$spec" jupyterlab
RUN useradd --create-home --uid 1000 --user-group --shell /bin/bash jovyan
ENV PATH=/opt/venv/bin:$STD_PATH \\
    SHELL=/bin/bash
USER jovyan
WORKDIR /home/jovyan
EXPOSE 8888
CMD ["jupyterhub-singleuser"]
EOF
    echo "$ctx"
}

verify() {
    local image="$1" out
    shift
    if ! out="$(docker run --rm "$image" "$@" 2>&1)"; then
        echo "$out" >&2
        die "verification failed: docker run --rm $image $*"
    fi
    log "verified: $image: $* -> $(echo "$out" | tail -n 1)"
}

T_START=$(now)
log "images: Debian $SUITE from $MIRROR$([ "$FORCE" -eq 1 ] && echo ' (--force)' || true)"
build_base
build_from_context repo2docker "$R2D_IMAGE" "$(write_repo2docker_context)"
JH_SPEC="$(jupyterhub_spec)"
build_from_context singleuser "$SU_IMAGE" "$(write_singleuser_context "$JH_SPEC")"
verify "$R2D_IMAGE" jupyter-repo2docker --version
verify "$SU_IMAGE" jupyterhub-singleuser --version
verify "$R2D_IMAGE" docker buildx version

log "images ready in $(($(now) - T_START))s:"
printf '  TLJH_R2D_TEST_BASE_IMAGE=%s\n' "$BASE_IMAGE"
printf '  TLJH_R2D_TEST_REPO2DOCKER_IMAGE=%s\n' "$R2D_IMAGE"
printf '  TLJH_R2D_TEST_SINGLEUSER_IMAGE=%s  (jupyterhub%s)\n' "$SU_IMAGE" "$JH_SPEC"
