#!/usr/bin/env bash
# Set up a fresh Debian 12 machine for this template, then do one thing:
#   ./bootstrap.sh demo   bake a demo site into demo/ and bring its stack up
#   ./bootstrap.sh test   run the template's test suite
# It installs what is missing: Debian packages (with sudo unless root) and
# the template's Python tooling in .venv/ (uv when available, else pip).
set -euo pipefail
cd "$(dirname "$0")"

PACKAGES=(redis-server nginx make curl python3-venv wrk)

log() { printf '[bootstrap] %s\n' "$*"; }

install_packages() {
    local missing=()
    for pkg in "${PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || missing+=("$pkg")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    log "installing Debian packages: ${missing[*]}"
    $sudo apt-get update -qq
    # policy-rc.d may forbid starting services (containers); we start our own.
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
}

install_tooling() {
    local python=${PYTHON:-python3}
    if [ ! -x .venv/bin/python ]; then
        log "creating .venv with $python"
        if command -v uv >/dev/null; then
            UV_PYTHON_DOWNLOADS=never uv venv --quiet --python "$(command -v "$python")" .venv
        else
            "$python" -m venv .venv
        fi
    fi
    log "installing the template's tooling into .venv"
    if command -v uv >/dev/null; then
        uv pip install --quiet --compile-bytecode --python .venv/bin/python -e .
    else
        .venv/bin/python -m pip install --quiet -e .
    fi
}

# The tooling includes uv: the post-gen hook then takes its fast path.
export PATH="$PWD/.venv/bin:$PATH"

case "${1:-}" in
demo)
    install_packages
    install_tooling
    if [ -d demo/demo_site ]; then make -C demo/demo_site down || true; fi
    rm -rf demo/demo_site && mkdir -p demo
    # Bake with the defaults; the post-gen hook makes the project's .venv.
    .venv/bin/cookiecutter --no-input --overwrite-if-exists -o demo . project_name="Demo Site"
    make -C demo/demo_site up
    ;;
test)
    install_packages
    install_tooling
    shift
    exec .venv/bin/pytest "$@"
    ;;
*)
    echo "usage: $0 demo|test [pytest args]" >&2
    exit 2
    ;;
esac
