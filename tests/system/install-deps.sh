#!/usr/bin/env bash
# Installs what the system tests need (Debian 12, as root). Idempotent:
# does nothing when every command is already present.
#
#   install-deps.sh         for run.sh:
#     docker-registry (CNCF distribution 2.8)  skopeo  containerd + ctr
#     htpasswd (apache2-utils)  openssl  curl  jq  python3
#   install-deps.sh --tls   for tls.sh: the above, and tries podman and
#     docker.io (dockerd + docker client). Those two are optional: if apt
#     cannot install them, tls.sh reports their checks as SKIP.
#   install-deps.sh --browser   for status.sh: the above, and chromium,
#     node and npm (required).
#   install-deps.sh --push  for hosted.sh: what --tls installs, and tries
#     buildah too (optional like podman and docker.io: hosted.sh reports
#     its checks as SKIP if apt cannot install it).
#
# Package postinst scripts must not start daemons (containerd, dockerd,
# docker-registry): a temporary /usr/sbin/policy-rc.d (exit 101) forbids it.
# INSTALL_DEPS_FORCE=1 runs apt even when everything is present.
set -euo pipefail

need_cmds=(docker-registry skopeo containerd ctr htpasswd openssl curl jq python3)
pkgs=(docker-registry skopeo containerd apache2-utils openssl curl jq python3)
# optional (--tls): command -> package
opt_cmds=(); opt_pkgs=()
case "${1:-}" in
  "") ;;
  --tls) opt_cmds=(podman dockerd); opt_pkgs=(podman docker.io);;
  --push) opt_cmds=(podman dockerd buildah); opt_pkgs=(podman docker.io buildah);;
  --browser) need_cmds+=(chromium node npm); pkgs+=(chromium)
             # Node.js from Debian only where the machine has none.
             command -v node >/dev/null 2>&1 || pkgs+=(nodejs)
             command -v npm >/dev/null 2>&1 || pkgs+=(npm);;
  *) echo "usage: install-deps.sh [--tls | --push | --browser]" >&2; exit 2;;
esac

missing=(); opt_missing=()
for c in "${need_cmds[@]}"; do
  command -v "$c" >/dev/null 2>&1 || missing+=("$c")
done
for i in "${!opt_cmds[@]}"; do
  command -v "${opt_cmds[$i]}" >/dev/null 2>&1 || opt_missing+=("${opt_pkgs[$i]}")
done
if [ "${#missing[@]}" -eq 0 ] && [ "${#opt_missing[@]}" -eq 0 ] && [ "${INSTALL_DEPS_FORCE:-0}" != 1 ]; then
  exit 0   # fast path
fi
echo "install-deps: missing commands: ${missing[*]} ${opt_missing[*]}" >&2

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
if [ "${#opt_cmds[@]}" -gt 0 ]; then
  # one at a time: a package missing from this apt source must not stop the other
  for p in "${opt_pkgs[@]}"; do
    apt-get install "${apt_opts[@]}" "$p" \
      || echo "install-deps: optional package $p could not be installed; its checks will be skipped" >&2
  done
fi

for c in "${need_cmds[@]}"; do
  command -v "$c" >/dev/null 2>&1 || { echo "install-deps: $c still missing" >&2; exit 1; }
done
echo "install-deps: ok" >&2
