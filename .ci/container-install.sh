#!/usr/bin/env bash
# Every command that installs lossreg into a container image lives here, once. The Dockerfile's RUN
# steps call this script, and CI runs the same functions with `--check`, so an install step that
# breaks fails CI even though no Docker engine runs there.
#
# Usage:
#   container-install.sh wheel SRC_DIR OUT_DIR
#       Build the lossreg wheel from a source tree (the Dockerfile's build stage).
#   container-install.sh system
#       Runtime stages, as root: python3 + venv where the base lacks them (the CUDA base does), and
#       the non-root user `lossreg` (uid 10001) the service runs as.
#   container-install.sh torch VENV TORCH_VERSION [TORCH_INDEX_URL] [CUDA_VERSION]
#       Create VENV and install torch FIRST, from the index of the wanted build, so the server
#       extra's `torch>=2.1` is already met; then check the build: CUDA_VERSION (e.g. 13.0.1) must
#       match torch.version.cuda, and an empty CUDA_VERSION means a CPU build. The installed torch
#       is pinned in VENV/constraints.txt so no later package can swap it for another build.
#   container-install.sh app VENV WHEEL_DIR [EXTRA_PACKAGES]
#       Install lossreg[server] from the wheel plus EXTRA_PACKAGES (whitespace-separated pip
#       requirements, e.g. third-party loss plugins), then prove it works: import lossreg_service
#       and run `lossreg list`, which loads every plugin.
#   container-install.sh --check
#       CI: wheel, torch and app for the CPU target, in a throwaway venv under /tmp. TORCH_VERSION
#       is read from the Dockerfile; torch comes from TORCH_INDEX_URL when set, else from pip's
#       configured index. EXTRA_PACKAGES defaults to a copy of examples/lossreg-example-plugin, so
#       the plugin path is exercised too; PYTHON (default python3) picks the interpreter.
set -euo pipefail

readonly SERVICE_UID=10001
readonly SERVICE_USER=lossreg
# What the Dockerfile's build stage copies into the image: a wheel built from anything else would not
# be the wheel the image ships.
readonly BUILD_CONTEXT=(pyproject.toml README.md client service)

run() {
    printf '+ %s\n' "$*" >&2
    "$@"
}

die() {
    printf 'container-install: %s\n' "$*" >&2
    exit 1
}

build_wheel() {
    local src=$1 out=$2
    run "${PYTHON:-python3}" -m pip wheel --no-deps --wheel-dir "$out" "$src"
}

install_system() {
    [ "$(id -u)" -eq 0 ] || die "system: needs root (it runs in the image build)"
    if ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then
        export DEBIAN_FRONTEND=noninteractive
        run apt-get update
        run apt-get install -y --no-install-recommends ca-certificates python3 python3-venv
        run rm -rf /var/lib/apt/lists/*
    fi
    if ! id "$SERVICE_USER" >/dev/null 2>&1; then
        run useradd --uid "$SERVICE_UID" --create-home --shell /usr/sbin/nologin "$SERVICE_USER"
    fi
}

install_torch() {
    local venv=$1 version=$2 index_url=${3:-} cuda_version=${4:-}
    [ -x "$venv/bin/python" ] || run "${PYTHON:-python3}" -m venv "$venv"
    local args=(install "torch==$version")
    [ -z "$index_url" ] || args+=(--index-url "$index_url")
    run "$venv/bin/python" -m pip "${args[@]}"
    # Fail here, not at the first request, when the torch build and the CUDA base disagree.
    run "$venv/bin/python" - "$version" "$cuda_version" <<'PY'
import sys

import torch

want_version, want_cuda = sys.argv[1], sys.argv[2]
have_cuda = torch.version.cuda
if torch.__version__.split("+")[0] != want_version:
    sys.exit(f"torch {torch.__version__} installed, {want_version} wanted")
if not want_cuda and have_cuda is not None:
    sys.exit(f"CPU build of torch wanted, got a CUDA {have_cuda} build")
if want_cuda and (have_cuda is None or want_cuda.split(".")[:2] != have_cuda.split(".")[:2]):
    sys.exit(f"torch built for CUDA {want_cuda} wanted, got {have_cuda or 'a CPU build'}")
print(f"torch {torch.__version__} (CUDA build: {have_cuda or 'none'})")
PY
    "$venv/bin/python" -c 'import torch; print(f"torch=={torch.__version__}")' \
        >"$venv/constraints.txt"
}

install_app() {
    local venv=$1 wheel_dir=$2 extra=${3:-}
    local wheels=("$wheel_dir"/lossreg-*.whl)
    [ -f "${wheels[0]}" ] || die "app: no lossreg wheel in $wheel_dir"
    [ "${#wheels[@]}" -eq 1 ] || die "app: more than one lossreg wheel in $wheel_dir"
    [ -f "$venv/constraints.txt" ] || die "app: run the torch step first (no $venv/constraints.txt)"
    local packages=()
    read -r -a packages <<<"$extra"
    run "$venv/bin/python" -m pip install --constraint "$venv/constraints.txt" \
        "${wheels[0]}[server]" "${packages[@]}"
    run "$venv/bin/python" -c 'import lossreg_service; print("lossreg_service imports")'
    # `lossreg list` loads every registered loss; with strict plugins a broken plugin package
    # fails the build here instead of showing up as "unavailable" in a running service.
    LOSSREG_STRICT_PLUGINS=true run "$venv/bin/lossreg" list
}

check() {
    local repo
    repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
    local torch_version
    torch_version=$(sed -n 's/^ARG TORCH_VERSION=//p' "$repo/Dockerfile" | head -n 1)
    [ -n "$torch_version" ] || die "--check: no 'ARG TORCH_VERSION=' default in $repo/Dockerfile"

    local tmp
    tmp=$(mktemp -d /tmp/lossreg-container-check.XXXXXX)
    # shellcheck disable=SC2064  # expand $tmp now: it is local to this function
    trap "rm -rf '$tmp'" EXIT

    mkdir "$tmp/src"
    local path
    for path in "${BUILD_CONTEXT[@]}"; do
        [ -e "$repo/$path" ] || die "--check: $path is missing (the Dockerfile COPYs it)"
        cp -R "$repo/$path" "$tmp/src/$path"
    done
    local extra=${EXTRA_PACKAGES-}
    local example=$repo/examples/lossreg-example-plugin
    if [ -z "${EXTRA_PACKAGES+set}" ] && [ -d "$example" ]; then
        cp -R "$example" "$tmp/example-plugin" # pip builds in the tree it is given: not ours
        extra=$tmp/example-plugin
    fi

    build_wheel "$tmp/src" "$tmp/wheels"
    install_torch "$tmp/venv" "$torch_version" "${TORCH_INDEX_URL:-}" ""
    install_app "$tmp/venv" "$tmp/wheels" "$extra"
    echo "container-install --check: the CPU target's install steps passed"
}

main() {
    local command=${1:-}
    [ $# -eq 0 ] || shift
    case "$command" in
        wheel) [ $# -eq 2 ] || die "usage: wheel SRC_DIR OUT_DIR"; build_wheel "$@" ;;
        system) [ $# -eq 0 ] || die "usage: system"; install_system ;;
        torch)
            [ $# -ge 2 ] && [ $# -le 4 ] ||
                die "usage: torch VENV TORCH_VERSION [TORCH_INDEX_URL] [CUDA_VERSION]"
            install_torch "$@"
            ;;
        app)
            [ $# -ge 2 ] && [ $# -le 3 ] || die "usage: app VENV WHEEL_DIR [EXTRA_PACKAGES]"
            install_app "$@"
            ;;
        --check) [ $# -eq 0 ] || die "usage: --check"; check ;;
        *) die "unknown command '${command}'; see the usage at the top of $0" ;;
    esac
}

main "$@"
