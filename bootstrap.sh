#!/usr/bin/env bash
# Set up a fresh Debian 12 or 13 (bookworm or trixie) machine for this template, then do one thing:
#   ./bootstrap.sh demo   bake a demo site into demo/ and bring its stack up
#   ./bootstrap.sh test   run the template's test suite
# It installs what is missing: Debian packages (with sudo unless root) and
# the template's Python tooling in .venv/ (uv when available, else pip).
set -euo pipefail
cd "$(dirname "$0")"

# Debian packages the demo and the tests need, one a line.
PACKAGES=(
    redis-server
    nginx
    libnginx-mod-http-brotli-static
    make
    curl
    openssl
    python3-venv
    wrk
    pebble
    certbot
    chromium
    libnss3-tools
    postgresql
    debootstrap
)

log() { printf '[bootstrap] %s\n' "$*"; }

install_packages() {
    local missing=()
    for pkg in "${PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || missing+=("$pkg")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    # env(1) carries DEBIAN_FRONTEND through sudo, which would drop it.
    local as_root=(env DEBIAN_FRONTEND=noninteractive)
    [ "$(id -u)" -eq 0 ] || as_root=(sudo "${as_root[@]}")
    log "installing Debian packages: ${missing[*]}"
    # Wait for another apt run (a second bootstrap, unattended-upgrades) rather than fail.
    "${as_root[@]}" apt-get -o DPkg::Lock::Timeout=300 update -qq
    # policy-rc.d may forbid starting services (containers); we start our own.
    "${as_root[@]}" apt-get -o DPkg::Lock::Timeout=300 install -y -qq "${missing[@]}" >/dev/null
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
    # Reinstall only when requirements.txt changed: a second run installs nothing.
    local want stamp=.venv/.tooling-requirements.sha256
    want="$(sha256sum requirements.txt | cut -d' ' -f1)"
    if [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
        log "tooling in .venv is up to date (requirements.txt unchanged)"
        return 0
    fi
    log "installing the template's tooling (requirements.txt) into .venv"
    if command -v uv >/dev/null; then
        uv pip install --quiet --compile-bytecode --python .venv/bin/python -r requirements.txt
    else
        .venv/bin/python -m pip install --quiet -r requirements.txt
    fi
    echo "$want" >"$stamp"
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
    log "demo site: http://127.0.0.1:8000/ (stop it with: make -C demo/demo_site down)"
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
