#!/usr/bin/env bash
# Shared helpers for Errand's scripts: tool installation that works on a fresh Debian machine
# whose only network access is the package registries (crates.io, npm, Debian).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CARGO_LEPTOS_VERSION="0.3.11"
export PATH="$HOME/.cargo/bin:$ROOT/node_modules/.bin:$PATH"
# One cargo target dir per machine, outside the clone, so a fresh clone (CI) reuses earlier builds.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/errand/target}"
# Incremental compilation keeps ~20 GB of caches for this workspace's test binaries, which a
# whole-suite run mostly rebuilds anyway; without it the target dir fits the machine's disk.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"

log() { printf '\033[1;34m==>\033[0m %s\n' "$*" >&2; }

# Unpacks a crate's published source into cargo's registry and prints its folder.
crate_source() {
  local name="$1" version="$2"
  cargo info "$name@$version" >/dev/null 2>&1 || true
  local dir
  dir=$(ls -d "$HOME"/.cargo/registry/src/*/"$name-$version" 2>/dev/null | head -n 1)
  [ -n "$dir" ] || { echo "could not fetch the source of $name $version" >&2; return 1; }
  echo "$dir"
}

# Installs a crate from a copy of its source after pinning one dependency back, because the
# published lockfiles of these tools name versions that rustc 1.95 or the index cannot satisfy.
install_with_pin() {
  local name="$1" version="$2" dep="$3" dep_version="$4"
  local src work
  src=$(crate_source "$name" "$version")
  work=$(mktemp -d)
  cp -r "$src" "$work/src"
  (cd "$work/src" && cargo update -p "$dep" --precise "$dep_version" \
     && cargo install --path . --locked --force)
  rm -rf "$work"
}

ensure_wasm_target() {
  if ! rustup target list --installed | grep -qx wasm32-unknown-unknown; then
    log "adding the wasm32-unknown-unknown target"
    rustup target add wasm32-unknown-unknown
  fi
}

ensure_cargo_leptos() {
  if cargo leptos --version 2>/dev/null | grep -q "$CARGO_LEPTOS_VERSION"; then return; fi
  log "installing cargo-leptos $CARGO_LEPTOS_VERSION (about 15 minutes on 2 cores, once)"
  install_with_pin cargo-leptos "$CARGO_LEPTOS_VERSION" cargo-util-schemas 0.14.1
}

# wasm-bindgen-cli must match the wasm-bindgen version in Cargo.lock exactly.
ensure_wasm_bindgen() {
  local want
  want=$(awk '/^name = "wasm-bindgen"$/ {getline; gsub(/version = |"/, ""); print; exit}' "$ROOT/Cargo.lock")
  if wasm-bindgen --version 2>/dev/null | grep -q " $want\$"; then return; fi
  log "installing wasm-bindgen-cli $want"
  if ! cargo install wasm-bindgen-cli --version "=$want" --locked --force; then
    install_with_pin wasm-bindgen-cli "$want" webpki-roots 1.0.10
  fi
}

# npm packages: binaryen's wasm-opt for release builds, Playwright for the browser tests.
ensure_node_modules() {
  if [ ! -x "$ROOT/node_modules/.bin/wasm-opt" ] || [ ! -d "$ROOT/node_modules/@playwright/test" ] \
     || [ "$ROOT/package-lock.json" -nt "$ROOT/node_modules/.package-lock.json" ]; then
    log "installing npm packages"
    (cd "$ROOT" && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund)
  fi
}

ensure_chromium() {
  if [ -x /usr/bin/chromium ]; then return; fi
  log "installing Debian's Chromium for the browser tests"
  apt_install chromium
}

# wrk, the C load generator of the benchmark tool's enqueue scenario (Debian's package).
ensure_wrk() {
  if command -v wrk >/dev/null; then return; fi
  log "installing wrk (HTTP load generator) for the benchmark tool"
  apt_install wrk
}

# Is something listening on 127.0.0.1:$1?
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Runs a command as root: directly when we are root, through sudo otherwise.
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

apt_install() {
  as_root apt-get update -q
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@"
}

# The Postgres and Redis servers the backend tests use (127.0.0.1:5432 with trust auth for local
# connections, 127.0.0.1:6379): started if stopped, installed from Debian if missing.
ensure_services() {
  if ! port_open 5432; then
    if ! command -v pg_ctlcluster >/dev/null; then
      log "installing PostgreSQL for the backend tests"
      apt_install postgresql
      local hba
      hba=$(ls /etc/postgresql/*/main/pg_hba.conf | head -n1)
      # Local test connections need no password, as on the project's machines.
      as_root sed -i '1i host all all 127.0.0.1/32 trust' "$hba"
    fi
    log "starting PostgreSQL"
    as_root pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start
  fi
  if ! port_open 6379; then
    command -v redis-server >/dev/null || { log "installing Redis"; apt_install redis-server; }
    log "starting Redis"
    as_root mkdir -p /var/lib/redis /var/log/redis
    as_root redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
      --dir /var/lib/redis --logfile /var/log/redis/ci.log
  fi
  local i
  for i in $(seq 50); do
    port_open 5432 && port_open 6379 && return
    sleep 0.2
  done
  echo "PostgreSQL (127.0.0.1:5432) or Redis (127.0.0.1:6379) did not start" >&2
  return 1
}

ensure_build_tools() {
  ensure_wasm_target
  ensure_cargo_leptos
  ensure_wasm_bindgen
  ensure_node_modules
}
