#!/usr/bin/env bash
# End-to-end benchmark of mirrorgate against its peers, all on loopback, in
# one run (Debian 12, as root):
#
#   bash benches/e2e.sh            # full run: 200 MiB blobs, 3 rounds of 5 s load runs,
#                                  # bursts of 100 and 500 cold 8 MiB blobs (~12 min, ~25 GB of disk)
#   bash benches/e2e.sh --quick    # CI-sized: 16 MiB blobs, 1 round of 2 s load runs (~1 min)
#   bash benches/e2e.sh --help     # every option of benches/e2e.py
#
# What it starts (fixed ports BENCH_PORT_BASE..+10, default 5800..5810, all
# on 127.0.0.1): a token server (benches/e2e.py itself), an upstream CNCF
# distribution registry with token auth, mirrorgate (plain HTTP + TLS with
# its own `mirrorgate ca init` CA), CNCF distribution in proxy mode (plain
# HTTP + HTTPS, one process each), an nginx proxy_cache (HTTP + HTTPS) in
# front of an anonymous distribution on the upstream's storage, and nginx
# serving the same files statically (HTTP + HTTPS). Then it measures all of
# them and prints one table; see benches/RESULTS.md for what each row means.
#
# Environment:
#   MIRRORGATE_BIN=path   use this binary instead of `cargo build --release`
#   BENCH_PORT_BASE=N     first of the 11 loopback ports (default 5800)
#   KEEP_WORKDIR=1        keep /tmp/mirrorgate-e2e.* (configs, logs, data)
#
# It installs what it needs with apt (only when a command is missing) and
# stops every process it started, by PID, on exit.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/.." && pwd)"

for a in "$@"; do
  case "$a" in -h|--help) exec python3 "$HERE/e2e.py" --help ;; esac
done

# ------------------------------------------------------------------ deps
need_cmds=(docker-registry skopeo nginx wrk hey curl openssl python3)
pkgs=(docker-registry skopeo nginx-light wrk hey curl openssl python3 ca-certificates)
missing=()
for c in "${need_cmds[@]}"; do
  command -v "$c" >/dev/null 2>&1 || [ -x "/usr/sbin/$c" ] || missing+=("$c")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "e2e: installing (missing: ${missing[*]})" >&2
  if [ "$(id -u)" != 0 ]; then echo "e2e: must run as root to apt-get install" >&2; exit 1; fi
  POLICY=/usr/sbin/policy-rc.d
  created_policy=0
  if [ ! -e "$POLICY" ]; then
    # package postinst scripts must not start nginx or docker-registry
    printf '#!/bin/sh\n# temporary, benches/e2e.sh: no daemon starts\nexit 101\n' >"$POLICY"
    chmod 755 "$POLICY"
    created_policy=1
  fi
  export DEBIAN_FRONTEND=noninteractive
  rc=0
  {
    apt-get -q -o DPkg::Lock::Timeout=600 update &&
    apt-get install -y -q -o DPkg::Lock::Timeout=600 --no-install-recommends --no-upgrade \
      -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold "${pkgs[@]}"
  } || rc=$?
  if [ "$created_policy" = 1 ]; then rm -f "$POLICY"; fi
  [ "$rc" = 0 ] || { echo "e2e: apt-get failed ($rc)" >&2; exit 1; }
fi
export PATH="$PATH:/usr/sbin:/sbin"

# ------------------------------------------------------------------ build
if [ -n "${MIRRORGATE_BIN:-}" ]; then
  BIN="$MIRRORGATE_BIN"
else
  echo "e2e: cargo build --release" >&2
  (cd "$REPO" && cargo build --release --bin mirrorgate) >&2
  BIN="${CARGO_TARGET_DIR:-$REPO/target}/release/mirrorgate"
  case "$BIN" in /*) ;; *) BIN="$REPO/$BIN" ;; esac
fi
[ -x "$BIN" ] || { echo "e2e: $BIN is not executable" >&2; exit 1; }

# ------------------------------------------------------------------ run
W="$(mktemp -d /tmp/mirrorgate-e2e.XXXXXX)"
PY_PID=""
cleanup() {
  local rc=$? pid i
  set +e
  trap - EXIT INT TERM
  if [ -n "$PY_PID" ] && kill -0 "$PY_PID" 2>/dev/null; then
    kill -TERM "$PY_PID" 2>/dev/null
    for i in $(seq 1 100); do kill -0 "$PY_PID" 2>/dev/null || break; sleep 0.1; done
  fi
  # e2e.py stops its children itself; this catches any it could not (SIGKILL).
  if [ -f "$W/pids" ]; then
    while read -r pid; do
      kill -0 "$pid" 2>/dev/null && kill -TERM "$pid" 2>/dev/null
    done <"$W/pids"
    sleep 0.5
    while read -r pid; do
      kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null
    done <"$W/pids"
  fi
  if [ "${KEEP_WORKDIR:-0}" = 1 ]; then echo "e2e: kept $W" >&2; else rm -rf "$W"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

python3 "$HERE/e2e.py" --workdir "$W" --bin "$BIN" --command "benches/e2e.sh $*" "$@" &
PY_PID=$!
wait "$PY_PID"
