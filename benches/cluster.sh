#!/usr/bin/env bash
# Cluster benchmark (issue "many replicas, one bucket"): 24 concurrent cold
# GETs of one 200 MiB blob spread over 3 mirrorgate replicas on one
# SeaweedFS bucket, against 8 on one replica, and the same for 3 CNCF
# distribution proxies on the same bucket. Loopback only (127.0.0.1 and
# 127.0.0.11-13); ports BENCH_PORT_BASE..+30 (default 5900).
#
#   bash benches/cluster.sh                   # 200 MiB, 3 replicas, 24 clients (~1 min)
#   bash benches/cluster.sh --mib 32          # smaller
#   bash benches/cluster.sh --out /tmp/c.md   # also write the table there
#
# Environment: MIRRORGATE_BIN (skip the release build), KEEP_WORKDIR=1.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/.." && pwd)"
export PATH="$PATH:/usr/sbin:/sbin"
if ! command -v docker-registry >/dev/null 2>&1 || ! command -v curl >/dev/null 2>&1; then
  [ "$(id -u)" = 0 ] || { echo "cluster: must run as root to apt-get install" >&2; exit 1; }
  export DEBIAN_FRONTEND=noninteractive
  POLICY=/usr/sbin/policy-rc.d
  created=0
  if [ ! -e "$POLICY" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$POLICY"; chmod 755 "$POLICY"; created=1
  fi
  rc=0
  { apt-get -q -o DPkg::Lock::Timeout=600 update &&
    apt-get install -y -q -o DPkg::Lock::Timeout=600 --no-install-recommends --no-upgrade \
      docker-registry curl ca-certificates; } || rc=$?
  [ "$created" = 1 ] && rm -f "$POLICY"
  [ "$rc" = 0 ] || { echo "cluster: apt-get failed ($rc)" >&2; exit 1; }
fi
WEED="$(bash "$REPO/scripts/install-seaweedfs.sh")"
if [ -n "${MIRRORGATE_BIN:-}" ]; then
  BIN="$MIRRORGATE_BIN"
else
  (cd "$REPO" && cargo build --release --bin mirrorgate) >&2
  BIN="${CARGO_TARGET_DIR:-$REPO/target}/release/mirrorgate"
  case "$BIN" in /*) ;; *) BIN="$REPO/$BIN" ;; esac
fi
W="$(mktemp -d /tmp/mirrorgate-cluster.XXXXXX)"
cleanup() {
  local rc=$?
  if [ -f "$W/pids" ]; then
    while read -r pid; do kill "$pid" 2>/dev/null || true; done <"$W/pids"
  fi
  if [ "${KEEP_WORKDIR:-0}" = 1 ]; then echo "cluster: kept $W" >&2; else rm -rf "$W"; fi
  exit $rc
}
trap cleanup EXIT INT TERM
python3 "$HERE/cluster.py" --bin "$BIN" --weed "$WEED" --workdir "$W" \
  --port-base "${BENCH_PORT_BASE:-5900}" "$@"
