#!/usr/bin/env bash
# Installs what tests/system/run.sh needs (Debian 12, as root). Idempotent:
# does nothing when every command is already present.
#
#   docker-registry (CNCF distribution 2.8)  skopeo  containerd + ctr
#   htpasswd (apache2-utils)  openssl  curl  jq  python3
#
# Package postinst scripts must not start daemons (containerd,
# docker-registry): a temporary /usr/sbin/policy-rc.d (exit 101) forbids it.
# INSTALL_DEPS_FORCE=1 runs apt even when everything is present.
set -euo pipefail

need_cmds=(docker-registry skopeo containerd ctr htpasswd openssl curl jq python3)
pkgs=(docker-registry skopeo containerd apache2-utils openssl curl jq python3)

missing=()
for c in "${need_cmds[@]}"; do
  command -v "$c" >/dev/null 2>&1 || missing+=("$c")
done
if [ "${#missing[@]}" -eq 0 ] && [ "${INSTALL_DEPS_FORCE:-0}" != 1 ]; then
  exit 0   # fast path
fi
echo "install-deps: missing commands: ${missing[*]}" >&2

if [ "$(id -u)" != 0 ]; then
  echo "install-deps: must run as root to apt-get install ${pkgs[*]}" >&2
  exit 1
fi

# Another apt/dpkg run may hold the lock (e.g. a background install): wait for it.
wait_dpkg_lock() {
  local i
  for i in $(seq 1 300); do
    if ! fuser /var/lib/dpkg/lock-frontend /var/lib/dpkg/lock /var/lib/apt/lists/lock \
         >/dev/null 2>&1; then
      return 0
    fi
    [ "$i" = 1 ] && echo "install-deps: waiting for the dpkg lock ..." >&2
    sleep 2
  done
  echo "install-deps: dpkg lock still held after 10 min" >&2
  return 1
}

POLICY=/usr/sbin/policy-rc.d
created_policy=0
cleanup_policy() {
  if [ "$created_policy" = 1 ]; then rm -f "$POLICY"; fi
}
trap cleanup_policy EXIT
if [ ! -e "$POLICY" ]; then
  printf '#!/bin/sh\n# temporary, tests/system/install-deps.sh: no daemon starts\nexit 101\n' > "$POLICY"
  chmod 755 "$POLICY"
  created_policy=1
fi

export DEBIAN_FRONTEND=noninteractive
if command -v fuser >/dev/null 2>&1; then wait_dpkg_lock; fi
# --no-upgrade: packages already installed stay as they are.
apt_opts=(-y -q -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold
          -o DPkg::Lock::Timeout=600 --no-install-recommends --no-upgrade)
apt-get -q -o DPkg::Lock::Timeout=600 update
apt-get install "${apt_opts[@]}" "${pkgs[@]}"

for c in "${need_cmds[@]}"; do
  command -v "$c" >/dev/null 2>&1 || { echo "install-deps: $c still missing" >&2; exit 1; }
done
echo "install-deps: ok" >&2
