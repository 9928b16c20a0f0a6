#!/usr/bin/env bash
# Packaging checks with the real tools, as far as they run here (as root):
#   1. the systemd unit passes `systemd-analyze verify` (ExecStart pointed
#      at the built binary; no systemd runs here, so Type=notify itself is
#      checked by tests/e2e/ops.rs against a notify socket);
#   2. the Kubernetes manifests validate against the Kubernetes 1.31 API
#      schemas (kubernetes-validate from PyPI, in target/tools), the
#      ServiceMonitor (a CRD) only as YAML with its required fields.
# The container build file is not built here (no base images offline).
# Environment: MIRRORGATE_BIN (default target/debug/mirrorgate).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
BIN="${MIRRORGATE_BIN:-$REPO/target/debug/mirrorgate}"
pass=0; fail=0
ok()  { echo "PASS: $1"; pass=$((pass+1)); }
bad() { echo "FAIL: $1: $2"; fail=$((fail+1)); }

if ! command -v systemd-analyze >/dev/null 2>&1; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q systemd >/dev/null 2>&1 \
    || { apt-get update -q >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q systemd >/dev/null; }
fi
W=$(mktemp -d /tmp/mirrorgate-packaging.XXXXXX)
trap 'rm -rf "$W"' EXIT

# ------------------------------------------------------------------ 1
unit="$W/mirrorgate.service"
sed "s|/usr/local/bin/mirrorgate|$BIN|" "$REPO/packaging/systemd/mirrorgate.service" >"$unit"
# verify exits 0 on an unknown key, but names the unit in its warning:
# any line about the unit fails the check
if out=$(SYSTEMD_LOG_LEVEL=notice systemd-analyze verify --man=no "$unit" 2>&1) \
   && ! grep -q 'mirrorgate.service' <<<"$out"; then
  ok "1a systemd-analyze verify packaging/systemd/mirrorgate.service"
else
  bad "1a systemd-analyze verify" "$(tr '\n' ' ' <<<"$out" | cut -c1-400)"
fi
for want in Type=notify DynamicUser=yes StateDirectory=mirrorgate ProtectSystem=strict NoNewPrivileges=yes 'ExecReload=/usr/local/bin/mirrorgate reload --config /etc/mirrorgate/mirrorgate.toml --pid $MAINPID'; do
  grep -qx "$want" "$REPO/packaging/systemd/mirrorgate.service" || bad "1b unit has $want" "missing"
done
ok "1b the unit is notify-typed, reloads through mirrorgate reload, has a dynamic user, a state directory and a read-only system"
if systemd-analyze security --help >/dev/null 2>&1 \
   && score=$(systemd-analyze security --offline=true "$unit" 2>/dev/null | sed -n 's/.*Overall exposure level[^:]*: \([0-9.]*\).*/\1/p'); then
  ok "1c systemd-analyze security: exposure $score (0 safest, 10 unsafe)"
fi

# ------------------------------------------------------------------ 2
KV="${MIRRORGATE_TOOLS:-$REPO/target/tools}/kubernetes-validate"
if [ ! -x "$KV/bin/kubernetes-validate" ]; then
  rm -rf "$KV"; python3 -m venv "$KV"
  "$KV/bin/pip" install --quiet --disable-pip-version-check "kubernetes-validate==1.37.0"
fi
for f in "$REPO"/packaging/kubernetes/*.yaml; do
  # Each document but the CRD's against the API schemas.
  split="$W/$(basename "$f" .yaml)"; mkdir -p "$split"
  "$KV/bin/python" - "$f" "$split" <<'PY'
import sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
for i, d in enumerate(docs):
    name = "%s/%02d-%s.yaml" % (sys.argv[2], i, d["kind"])
    open(name, "w").write(yaml.safe_dump(d))
PY
  for d in "$split"/*.yaml; do
    kind=$(basename "$d" .yaml); kind=${kind#*-}
    if [ "$kind" = ServiceMonitor ]; then
      if "$KV/bin/python" -c 'import sys,yaml; d=yaml.safe_load(open(sys.argv[1])); e=d["spec"]["endpoints"][0]; assert d["apiVersion"]=="monitoring.coreos.com/v1" and e["path"]=="/metrics" and d["spec"]["selector"]["matchLabels"]' "$d"; then
        ok "2 $(basename "$f"): ServiceMonitor scrapes /metrics of the Service's label"
      else bad "2 $(basename "$f") ServiceMonitor" "fields"; fi
      continue
    fi
    if out=$("$KV/bin/kubernetes-validate" --strict -k 1.31.0 "$d" 2>&1); then
      ok "2 $(basename "$f"): $kind valid (Kubernetes 1.31, strict)"
    else
      bad "2 $(basename "$f"): $kind" "$(tr '\n' ' ' <<<"$out" | cut -c1-300)"
    fi
  done
done
probes=$(grep -c 'path: /livez\|path: /readyz' "$REPO"/packaging/kubernetes/*.yaml | awk -F: '{s+=$2} END {print s}')
[ "$probes" = 4 ] && ok "2 both workloads probe /livez and /readyz" || bad "2 probes" "$probes probe paths"

echo; echo "$pass passed, $fail failed"
[ "$fail" = 0 ]
