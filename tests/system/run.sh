#!/usr/bin/env bash
# mirrorgate system test with real parts: CNCF distribution registries as
# upstreams, skopeo and containerd (ctr) as clients. Run as root:
#
#   bash tests/system/run.sh
#
# Environment:
#   MIRRORGATE_BIN   mirror binary (default: <repo>/target/debug/mirrorgate,
#                    built with `cargo build` if missing)
#   KEEP_WORKDIR=1   keep the temp dir (configs, logs, data) for inspection
#   SYSTEM_TEST_TARGET=direct
#                    harness self-test: no mirror; every client goes straight
#                    to the upstream registries (checks 6-7 are skipped)
#
# Everything listens on 127.0.0.1 only. Clients are configured so that they
# can never reach a real registry (explicit loopback hosts, empty
# registries.conf, containerd fallback server 127.0.0.1:9).
# Output: PASS:/FAIL: lines, then "N passed, M failed". Exit 1 on any failure.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
TARGET="${SYSTEM_TEST_TARGET:-mirror}"
T_START=$SECONDS
IP=127.0.0.1
DEAD_PORT=9           # nothing listens there: containerd's "server" fallback
CMD_TIMEOUT=60        # per client command
BUDGET="${SYSTEM_TEST_BUDGET:-240}"  # seconds; checks that would start later are failed, not run

pass=0; fail=0
ok()   { echo "PASS: $1"; pass=$((pass+1)); }
bad()  { echo "FAIL: $1: $2"; fail=$((fail+1)); }
info() { echo "      $*"; }
step() { echo; echo "== $* ($((SECONDS-T_START))s)"; }

# ----------------------------------------------------------------- processes
W=""
PIDS=()        # every background process this script started
MOUNTED=""     # a ctr images mount point, if any
cleanup() {
  local rc=$? pid i
  set +e
  trap - EXIT INT TERM
  if [ -n "$MOUNTED" ] && mountpoint -q "$MOUNTED" 2>/dev/null; then umount "$MOUNTED"; fi
  for ((i=${#PIDS[@]}-1; i>=0; i--)); do
    kill -TERM "${PIDS[$i]}" 2>/dev/null
  done
  for pid in "${PIDS[@]}"; do
    for i in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
  done
  if [ -n "$W" ] && [ -d "$W" ]; then
    if [ "${KEEP_WORKDIR:-0}" = 1 ]; then echo "kept work dir: $W"; else rm -rf "$W"; fi
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

start_bg() { # STDOUT_FILE STDERR_FILE CMD... ; sets LAST_PID
  local out="$1" err="$2"; shift 2
  if [ "$out" = "$err" ]; then "$@" >"$out" 2>&1 </dev/null &
  else "$@" >"$out" 2>"$err" </dev/null &
  fi
  LAST_PID=$!
  PIDS+=("$LAST_PID")
}

wait_until() { # TIMEOUT_S PID(or -) CMD... : poll CMD until it succeeds
  local t="$1" pid="$2" end; shift 2
  end=$((SECONDS + t))
  until "$@" >/dev/null 2>&1; do
    if [ "$pid" != - ] && ! kill -0 "$pid" 2>/dev/null; then return 1; fi
    [ "$SECONDS" -ge "$end" ] && return 1
    sleep 0.2
  done
}

FAILED_LOGS=()   # logs of client commands that failed: dumped in full at the end
dump_logs() {
  local f n
  [ -n "$W" ] && [ -d "$W/logs" ] || return 0
  echo; echo "== log tails (all logs are in $W/logs; KEEP_WORKDIR=1 keeps them)"
  for f in "${FAILED_LOGS[@]}" "$W/logs/mirrorgate.log" "$W"/logs/*.access.log \
           "$W/logs/hub.log" "$W/logs/ghcr.log" "$W/logs/quay.log" "$W/logs/containerd.log"; do
    [ -s "$f" ] || continue
    case "$f" in
      */mirrorgate.log) n=80;; */*.access.log) n=20;; */cargo-build.log) n=40;;
      */hub.log|*/ghcr.log|*/quay.log|*/containerd.log) n=8;; *) n=30;;
    esac
    echo "---- $f (last $n lines)"
    tail -n "$n" "$f" | cut -c1-500
  done
}

setup_failed() { # MESSAGE [LOG_TO_SHOW]
  [ -n "${2:-}" ] && FAILED_LOGS+=("$2")
  bad "setup" "$1"
  dump_logs
  echo
  echo "$pass passed, $fail failed"
  exit 1
}

# ----------------------------------------------------------------- deps, dirs
step "dependencies"
bash "$HERE/install-deps.sh" || setup_failed "install-deps.sh failed"

W="$(mktemp -d /tmp/mirrorgate-system.XXXXXX)"
mkdir -p "$W/logs" "$W/conf" "$W/pki/trust" "$W/upstream" "$W/out" "$W/images"
LOGS="$W/logs"; CONF="$W/conf"
echo "work dir: $W   target: $TARGET"

free_ports() { # N -> N distinct free loopback ports
  python3 - "$1" <<'EOF'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket(); s.bind(("127.0.0.1", 0)); socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
for s in socks: s.close()
EOF
}
read -r HUB_PORT GHCR_PORT QUAY_PORT P0 P1 P2 <<<"$(free_ports 6)"
HUB_URL="https://$IP:$HUB_PORT"; GHCR_URL="https://$IP:$GHCR_PORT"; QUAY_URL="http://$IP:$QUAY_PORT"
HUB_USER=mirror; HUB_PASS=mirrorpass
echo "ports: hub=$HUB_PORT ghcr=$GHCR_PORT quay=$QUAY_PORT mirror=$P0(all) $P1(ghcr.io) $P2(quay.io)"

# ----------------------------------------------------------------- PKI
step "PKI: CA + server cert for 127.0.0.1/localhost"
PKI="$W/pki"; CA_CRT="$PKI/ca.crt"
{
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
    -keyout "$PKI/ca.key" -out "$CA_CRT" -days 2 -subj "/CN=mirrorgate system-test CA" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" &&
  openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
    -keyout "$PKI/server.key" -out "$PKI/server.csr" -subj "/CN=127.0.0.1" &&
  printf '%s\n' "basicConstraints=CA:FALSE" "keyUsage=critical,digitalSignature" \
    "extendedKeyUsage=serverAuth" "subjectAltName=IP:127.0.0.1,DNS:localhost" \
    "subjectKeyIdentifier=hash" "authorityKeyIdentifier=keyid,issuer" > "$PKI/server.ext" &&
  openssl x509 -req -in "$PKI/server.csr" -CA "$CA_CRT" -CAkey "$PKI/ca.key" -CAcreateserial \
    -days 2 -extfile "$PKI/server.ext" -out "$PKI/server.crt" &&
  openssl verify -CAfile "$CA_CRT" "$PKI/server.crt"
} >"$LOGS/openssl.log" 2>&1 || setup_failed "openssl failed" "$LOGS/openssl.log"
cp "$CA_CRT" "$PKI/trust/ca.crt"     # skopeo --*-cert-dir form: *.crt = CA

# ----------------------------------------------------------------- images
step "generate test images"
python3 "$HERE/mkimages.py" --out "$W/images" >"$LOGS/mkimages.json" 2>"$LOGS/mkimages.err" \
  || setup_failed "mkimages.py failed" "$LOGS/mkimages.err"
IMAGES="$W/images/images.json"
img() { jq -r "$1" "$IMAGES"; }    # jq query on the summary
jq -c 'map_values(.digest)' "$IMAGES"

# ----------------------------------------------------------------- upstreams
step "upstream registries (docker-registry = CNCF distribution)"
htpasswd -Bbc "$CONF/htpasswd" "$HUB_USER" "$HUB_PASS" >/dev/null 2>&1 || setup_failed "htpasswd"

write_registry() { # NAME PORT tls|plain htpasswd|none
  local name="$1" port="$2" tls="" auth=""
  mkdir -p "$W/upstream/$name"
  if [ "$3" = tls ]; then
    tls="  tls:
    certificate: $PKI/server.crt
    key: $PKI/server.key"
  fi
  if [ "$4" = htpasswd ]; then
    auth="auth:
  htpasswd:
    realm: $name
    path: $CONF/htpasswd"
  fi
  cat >"$CONF/$name.yml" <<EOF
# distribution config, stand-in for $name (generated by tests/system/run.sh)
version: 0.1
log:
  level: info
  formatter: text
  accesslog:
    disabled: false
storage:
  filesystem:
    rootdirectory: $W/upstream/$name
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: $IP:$port
  secret: system-test-$name
$tls
health:
  storagedriver:
    enabled: false
$auth
EOF
}
start_registry() { # NAME PORT URL
  local name="$1" port="$2" url="$3"
  # stdout: one combined-format access-log line per request; stderr: app log
  start_bg "$LOGS/$name.access.log" "$LOGS/$name.log" docker-registry serve "$CONF/$name.yml"
  wait_until 30 "$LAST_PID" \
    curl -s -o /dev/null --cacert "$CA_CRT" -u "$HUB_USER:$HUB_PASS" -f "$url/v2/" \
    || setup_failed "$name registry did not answer $url/v2/"
  echo "$name: pid $LAST_PID $url"
}
write_registry hub  "$HUB_PORT"  tls   htpasswd
write_registry ghcr "$GHCR_PORT" tls   none
write_registry quay "$QUAY_PORT" plain none
start_registry hub  "$HUB_PORT"  "$HUB_URL"
start_registry ghcr "$GHCR_PORT" "$GHCR_URL"
start_registry quay "$QUAY_PORT" "$QUAY_URL"
code=$(curl -s -o /dev/null -w '%{http_code}' --cacert "$CA_CRT" "$HUB_URL/v2/")
[ "$code" = 401 ] || setup_failed "hub without credentials answered $code, want 401"

# ----------------------------------------------------------------- skopeo
echo '{"default":[{"type":"insecureAcceptAnything"}]}' >"$CONF/policy.json"
printf '# empty: no unqualified-search registries, no mirrors\n' >"$CONF/registries.conf"
echo '{"auths":{}}' >"$CONF/auth.json"
export REGISTRY_AUTH_FILE="$CONF/auth.json"   # never read ~/.docker or /run/containers creds
SKOPEO=(skopeo --policy "$CONF/policy.json" --registries-conf "$CONF/registries.conf")

# ----------------------------------------------------------------- seeding
step "seed the upstreams (skopeo copy --preserve-digests from dir:)"
declare -A UP_URL=([hub]="$HUB_URL" [ghcr]="$GHCR_URL" [quay]="$QUAY_URL")
declare -A UP_HOSTPORT=([hub]="$IP:$HUB_PORT" [ghcr]="$IP:$GHCR_PORT" [quay]="$IP:$QUAY_PORT")
dest_flags() { # UPSTREAM -> DEST_FLAGS array
  case "$1" in
    hub)  DEST_FLAGS=(--dest-cert-dir "$PKI/trust" --dest-creds "$HUB_USER:$HUB_PASS");;
    ghcr) DEST_FLAGS=(--dest-cert-dir "$PKI/trust");;
    quay) DEST_FLAGS=(--dest-tls-verify=false);;
  esac
}
ACCEPT="application/vnd.oci.image.index.v1+json,application/vnd.docker.distribution.manifest.list.v2+json,application/vnd.oci.image.manifest.v1+json,application/vnd.docker.distribution.manifest.v2+json"
upstream_digest() { # UPSTREAM REPO TAG -> Docker-Content-Digest of the manifest
  local auth=()
  [ "$1" = hub ] && auth=(-u "$HUB_USER:$HUB_PASS")
  curl -sf -I --cacert "$CA_CRT" "${auth[@]}" -H "Accept: $ACCEPT" \
    "${UP_URL[$1]}/v2/$2/manifests/$3" | tr -d '\r' | awk 'tolower($1)=="docker-content-digest:"{print $2}'
}
seed() { # UPSTREAM IMAGE REPO:TAG
  local up="$1" image="$2" ref="$3" want got all=()
  want=$(img ".\"$image\".digest")
  [ "$(img ".\"$image\".instances // empty")" != "" ] && all=(--all)
  dest_flags "$up"
  timeout "$CMD_TIMEOUT" "${SKOPEO[@]}" copy "${all[@]}" --preserve-digests "${DEST_FLAGS[@]}" \
    "dir:$W/images/$image" "docker://${UP_HOSTPORT[$up]}/$ref" >>"$LOGS/seed.log" 2>&1 \
    || setup_failed "seeding $up $ref failed" "$LOGS/seed.log"
  got=$(upstream_digest "$up" "${ref%:*}" "${ref##*:}")
  [ "$got" = "$want" ] || setup_failed "seeded $up $ref has digest '$got', generated $want"
  echo "seeded $up/$ref = $got"
}
seed hub  small     library/small:latest
seed hub  small-oci library/small:oci
seed hub  multi     library/multi:latest
seed hub  alpine    library/alpine:3
seed ghcr small     lab-org/small:latest
seed ghcr multi-oci lab-org/multi:oci
seed quay small     lab-org/small:latest

# ----------------------------------------------------------------- the mirror
MIRROR_DATA="$W/mirror-data"
if [ "$TARGET" = mirror ]; then
  step "start mirrorgate"
  BIN="${MIRRORGATE_BIN:-$REPO/target/debug/mirrorgate}"
  if [ ! -x "$BIN" ]; then
    if [ -n "${MIRRORGATE_BIN:-}" ]; then setup_failed "MIRRORGATE_BIN=$BIN is not executable"; fi
    echo "building $BIN (cargo build)"
    (cd "$REPO" && cargo build) >"$LOGS/cargo-build.log" 2>&1 \
      || setup_failed "cargo build failed" "$LOGS/cargo-build.log"
  fi
  cat >"$CONF/mirrorgate.toml" <<EOF
# generated by tests/system/run.sh
[storage]
root = "$MIRROR_DATA"

[cache]
tag_ttl = "5m"

[[listener]]
addr = "$IP:$P0"          # every upstream, chosen by ?ns= or path prefix; docker.io default

[[listener]]
addr = "$IP:$P1"
upstream = "ghcr.io"

[[listener]]
addr = "$IP:$P2"
upstream = "quay.io"

[[upstream]]
name = "docker.io"
url = "$HUB_URL"
aliases = ["index.docker.io", "registry-1.docker.io"]
default = true
ca_file = "$CA_CRT"
username = "$HUB_USER"
password = { env = "HUB_PASSWORD" }

[[upstream]]
name = "ghcr.io"
url = "$GHCR_URL"
ca_file = "$CA_CRT"

[[upstream]]
name = "quay.io"
url = "$QUAY_URL"
EOF
  start_bg "$LOGS/mirrorgate.log" "$LOGS/mirrorgate.log" \
    env HUB_PASSWORD="$HUB_PASS" RUST_LOG="${RUST_LOG:-info}" NO_COLOR=1 "$BIN" serve --config "$CONF/mirrorgate.toml"
  MIRROR_PID=$LAST_PID
  ping_mirror() { [ "$(curl -s -o /dev/null -w '%{http_code}' "http://$IP:$1/v2/")" = 200 ]; }
  for p in "$P0" "$P1" "$P2"; do
    if ! wait_until 30 "$MIRROR_PID" ping_mirror "$p"; then
      if kill -0 "$MIRROR_PID" 2>/dev/null; then
        setup_failed "mirrorgate (pid $MIRROR_PID) did not answer 200 on http://$IP:$p/v2/ within 30s"
      fi
      wait "$MIRROR_PID" && st=0 || st=$?
      setup_failed "mirrorgate exited with status $st before answering on http://$IP:$p/v2/"
    fi
  done
  echo "mirrorgate: pid $MIRROR_PID ($BIN)"
fi

# Where a client pulls from. ROUTE: prefix | pinned | default.
#   mirror: prefix  -> 127.0.0.1:P0/<upstream name>/<repo>
#           pinned  -> 127.0.0.1:P1 (ghcr.io) / P2 (quay.io)
#           default -> 127.0.0.1:P0/<repo>  (docker.io)
#   direct: the upstream registry itself (harness self-test)
declare -A UP_NAME=([hub]=docker.io [ghcr]=ghcr.io [quay]=quay.io)
declare -A PIN_PORT=([ghcr]="$P1" [quay]="$P2")
src_ref() { # ROUTE UPSTREAM REPO:TAG -> SRC_REF, SRC_FLAGS
  local route="$1" up="$2" ref="$3"
  if [ "$TARGET" = direct ]; then
    SRC_REF="${UP_HOSTPORT[$up]}/$ref"
    case "$up" in
      hub)  SRC_FLAGS=(--src-cert-dir "$PKI/trust" --src-creds "$HUB_USER:$HUB_PASS");;
      ghcr) SRC_FLAGS=(--src-cert-dir "$PKI/trust");;
      quay) SRC_FLAGS=(--src-tls-verify=false);;
    esac
    return
  fi
  SRC_FLAGS=(--src-tls-verify=false)     # the mirror is plain HTTP
  case "$route" in
    prefix)  SRC_REF="$IP:$P0/${UP_NAME[$up]}/$ref";;
    pinned)  SRC_REF="$IP:${PIN_PORT[$up]}/$ref";;
    default) SRC_REF="$IP:$P0/$ref";;
  esac
}

# Seconds a client command may take now: CMD_TIMEOUT, less near the end of
# the budget; 0 when the budget is spent (a hanging mirror must not make the
# test run for an hour).
cmd_timeout() {
  local left=$((BUDGET - (SECONDS - T_START)))
  if [ "$left" -le 0 ]; then echo 0
  elif [ "$left" -lt "$CMD_TIMEOUT" ]; then echo "$left"
  else echo "$CMD_TIMEOUT"; fi
}
MIRROR_DEAD=""
mirror_dead() { # true when the mirror process has exited (reported once in the log)
  [ "$TARGET" = mirror ] || return 1
  [ -n "$MIRROR_DEAD" ] && return 0
  kill -0 "$MIRROR_PID" 2>/dev/null && return 1
  local st; wait "$MIRROR_PID" && st=0 || st=$?
  MIRROR_DEAD="mirrorgate exited with status $st ($(grep -m1 -iE 'panicked|overflow|fatal|error' "$LOGS/mirrorgate.log" | cut -c1-200))"
  return 0
}
over_budget() { # NAME -> true (and records a FAIL) when the check cannot run
  if mirror_dead; then bad "$1" "not run: $MIRROR_DEAD"; return 0; fi
  if [ "$(cmd_timeout)" = 0 ]; then bad "$1" "not run: the ${BUDGET}s time budget is spent"; return 0; fi
  return 1
}

sha256_of() { sha256sum "$1" | cut -d' ' -f1; }
count_lines() { # REGEX FILE... -> matching lines (0 if none)
  local re="$1"; shift
  cat "$@" 2>/dev/null | grep -cE "$re" || true
}

# Verifies every file of a skopeo dir: copy: blobs hash to their names,
# <hex>.manifest.json hash to <hex>. Prints the problems; returns 1 if any.
verify_dir() {
  local d="$1" f n h bad_files=0 count=0
  for f in "$d"/*; do
    n=$(basename "$f")
    if [[ "$n" =~ ^[0-9a-f]{64}$ ]]; then h=$(sha256_of "$f")
    elif [[ "$n" =~ ^([0-9a-f]{64})\.manifest\.json$ ]]; then h=$(sha256_of "$f"); n=${BASH_REMATCH[1]}
    else continue; fi
    count=$((count+1))
    if [ "$h" != "$n" ]; then echo "$(basename "$f") hashes to $h"; bad_files=1; fi
  done
  [ "$count" -gt 0 ] || { echo "no blobs in $d"; return 1; }
  return "$bad_files"
}

OUTN=0
skopeo_check() { # NAME ROUTE UPSTREAM REPO:TAG IMAGE [--all]
  local name="$1" route="$2" up="$3" ref="$4" image="$5" all=() want got out why="" log
  [ "${6:-}" = --all ] && all=(--all)
  over_budget "$name" && return 0
  want=$(img ".\"$image\".digest")
  src_ref "$route" "$up" "$ref"
  OUTN=$((OUTN+1)); out="$W/out/$OUTN-$image"; log="$LOGS/skopeo-$OUTN.log"
  echo "   skopeo copy ${all[*]} docker://$SRC_REF dir:$out" >"$log"
  if ! timeout "$(cmd_timeout)" "${SKOPEO[@]}" copy "${all[@]}" "${SRC_FLAGS[@]}" \
       "docker://$SRC_REF" "dir:$out" >>"$log" 2>&1; then
    FAILED_LOGS+=("$log")
    bad "$name" "skopeo copy docker://$SRC_REF failed: $(grep -v '^Copying\|^Writing\|^Storing\|^Getting' "$log" | tail -n 3 | tr '\n' ' ' | cut -c1-600)"
    return 0
  fi
  got="sha256:$(sha256_of "$out/manifest.json")"
  if [ "$got" != "$want" ]; then why="manifest digest $got, upstream has $want; "; fi
  if ! v=$(verify_dir "$out"); then why+="blob check: $(echo "$v" | tr '\n' ' '); "; fi
  # skopeo's dir: format round-trips exactly: the copy must equal the seeded image.
  if ! d=$(diff -rq "$W/images/$image" "$out" 2>&1); then why+="differs from seeded image: $(echo "$d" | head -n 3 | tr '\n' ' ')"; fi
  if [ -z "$why" ]; then
    ok "$name ($SRC_REF = ${want:0:19}…, $(find "$out" -maxdepth 1 -regextype posix-extended -regex '.*/[0-9a-f]{64}' | wc -l) blobs verified)"
  else
    bad "$name" "$why"
  fi
}

# ----------------------------------------------------------------- checks 1-4
step "1-4. skopeo through the mirror"
run_skopeo_checks() { # SUFFIX
  local s="$1"
  skopeo_check "1 skopeo path prefix docker.io/library/small:latest$s" prefix hub library/small:latest small
  [ -n "$s" ] && return 0
  skopeo_check "2a skopeo path prefix docker.io/library/small:oci (OCI manifest)" prefix hub library/small:oci small-oci
  skopeo_check "2b skopeo --all path prefix docker.io/library/multi:latest (manifest list)" prefix hub library/multi:latest multi --all
}
run_pinned_checks() { # SUFFIX
  skopeo_check "3a skopeo pinned port ghcr.io lab-org/small:latest$1" pinned ghcr lab-org/small:latest small
  skopeo_check "3b skopeo pinned port quay.io lab-org/small:latest$1" pinned quay lab-org/small:latest small
}
run_skopeo_checks ""
SMALL_MAN_RE='"(GET|HEAD) /v2/lab-org/small/manifests/'
g0=$(count_lines "$SMALL_MAN_RE" "$LOGS/ghcr.access.log"); q0=$(count_lines "$SMALL_MAN_RE" "$LOGS/quay.access.log")
run_pinned_checks ""
g1=$(count_lines "$SMALL_MAN_RE" "$LOGS/ghcr.access.log"); q1=$(count_lines "$SMALL_MAN_RE" "$LOGS/quay.access.log")
# ghcr and quay hold the same image: only their access logs tell which one answered.
if [ "$g1" -gt "$g0" ] && [ "$q1" -gt "$q0" ]; then
  ok "3c pinned ports reached their own upstream (ghcr +$((g1-g0)), quay +$((q1-q0)) manifest requests for lab-org/small)"
else
  bad "3c pinned ports reached their own upstream" "manifest requests for lab-org/small: ghcr +$((g1-g0)), quay +$((q1-q0)); want both > 0"
fi
skopeo_check "4 skopeo default upstream (no prefix) library/alpine:3" default hub library/alpine:3 alpine

# ----------------------------------------------------------------- containerd
step "5. containerd (ctr --hosts-dir, ?ns= routing)"
C="$W/containerd"; SOCK="$C/containerd.sock"; HOSTS="$C/hosts.d"
mkdir -p "$C/root" "$C/state" "$C/opt" "$HOSTS"
cat >"$C/config.toml" <<EOF
# private containerd for tests/system/run.sh
version = 2
root = "$C/root"
state = "$C/state"
disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.aufs", "io.containerd.tracing.processor.v1.otlp",
  "io.containerd.internal.v1.tracing"]
[grpc]
  address = "$SOCK"
[ttrpc]
  address = "$SOCK.ttrpc"
[debug]
  level = "info"
[plugins."io.containerd.internal.v1.opt"]
  path = "$C/opt"
EOF
for ns in docker.io ghcr.io quay.io; do
  mkdir -p "$HOSTS/$ns"
  if [ "$TARGET" = direct ]; then
    case "$ns" in
      docker.io) host="$HUB_URL";  extra="ca = \"$CA_CRT\"";;
      ghcr.io)   host="$GHCR_URL"; extra="ca = \"$CA_CRT\"";;
      quay.io)   host="$QUAY_URL"; extra="";;
    esac
  else
    host="http://$IP:$P0"; extra=""
  fi
  cat >"$HOSTS/$ns/hosts.toml" <<EOF
# $ns through the mirror. The fallback server is a dead loopback port, so a
# pull can never reach the real registry: a success proves the mirror served it.
server = "http://$IP:$DEAD_PORT"

[host."$host"]
  capabilities = ["pull", "resolve"]
  $extra
EOF
done
CTR_OK=1
start_bg "$LOGS/containerd.log" "$LOGS/containerd.log" containerd --config "$C/config.toml"
CONTAINERD_PID=$LAST_PID
if ! wait_until 30 "$CONTAINERD_PID" ctr --address "$SOCK" version; then
  bad "5 containerd" "private containerd did not start (see $LOGS/containerd.log)"; CTR_OK=0
fi
CTR=(ctr --address "$SOCK" --namespace mirrorgate-test)
ctrq() { timeout 30 "${CTR[@]}" "$@"; }   # local queries to our containerd
CTR_AUTH=()
[ "$TARGET" = direct ] && CTR_AUTH=(--user "$HUB_USER:$HUB_PASS")
SNAPSHOTTER=overlayfs
if [ "$CTR_OK" = 1 ]; then
  if ! ctrq plugins ls 2>/dev/null | awk '$2=="overlayfs"{print $NF}' | grep -qx ok; then
    SNAPSHOTTER=native
  fi
  echo "snapshotter: $SNAPSHOTTER"
fi

chain_id() { # CONFIG_FILE -> chain ID of its rootfs.diff_ids
  local chain="" d
  for d in $(jq -r '.rootfs.diff_ids[]' "$1"); do
    if [ -z "$chain" ]; then chain="$d"
    else chain="sha256:$(printf '%s %s' "$chain" "$d" | sha256sum | cut -d' ' -f1)"; fi
  done
  echo "$chain"
}


CTRN=0
ctr_check() { # NAME REF IMAGE(summary key) CONFIG_DIGEST [MOUNT_FILE SIZE]
  local name="$1" ref="$2" image="$3" cfg="$4" mfile="${5:-}" msize="${6:-}"
  local want got log why="" chain want_chain status
  [ "$CTR_OK" = 1 ] || { bad "$name" "no containerd"; return 0; }
  over_budget "$name" && return 0
  want=$(img ".\"$image\".digest")
  CTRN=$((CTRN+1)); log="$LOGS/ctr-$CTRN.log"
  echo "ctr images pull --hosts-dir $HOSTS --platform linux/amd64 $ref" >"$log"
  if ! timeout "$(cmd_timeout)" "${CTR[@]}" images pull --hosts-dir "$HOSTS" "${CTR_AUTH[@]}" \
       --snapshotter "$SNAPSHOTTER" --platform linux/amd64 --print-chainid "$ref" >>"$log" 2>&1; then
    FAILED_LOGS+=("$log")
    bad "$name" "ctr images pull $ref failed: $(grep -iE 'error|fail|ctr:' "$log" | tail -n 3 | tr '\n' ' ' | cut -c1-600)"
    return 0
  fi
  got=$(ctrq images ls 2>/dev/null | awk -v r="$ref" '$1==r{print $3}')
  [ "$got" = "$want" ] || why+="image digest '$got', upstream has $want; "
  status=$(ctrq images check 2>/dev/null | awk -v r="$ref" '$1==r')
  echo "$status" | grep -q 'complete' || why+="images check: '$status'; "
  chain=$(sed -n 's/.*chain ID: *\(sha256:[0-9a-f]\{64\}\).*/\1/p' "$log" | tail -n 1)
  want_chain=$(chain_id "$W/images/$image/${cfg#sha256:}")
  [ "$chain" = "$want_chain" ] || why+="unpacked chain ID '$chain', want $want_chain; "
  ctrq snapshots --snapshotter "$SNAPSHOTTER" info "$want_chain" >/dev/null 2>&1 \
    || why+="no $SNAPSHOTTER snapshot $want_chain; "
  if [ -n "$mfile" ] && [ -z "$why" ]; then
    local mp="$C/mnt-$CTRN"; mkdir -p "$mp"
    if ctrq images mount --snapshotter "$SNAPSHOTTER" --rw=false "$ref" "$mp" >>"$log" 2>&1; then
      MOUNTED="$mp"
      local sz; sz=$(stat -c %s "$mp/$mfile" 2>/dev/null || echo missing)
      [ "$sz" = "$msize" ] || why+="unpacked $mfile size $sz, want $msize; "
      # --rm: drop the view snapshot (its key is the mount path)
      ctrq images unmount --rm "$mp" >>"$log" 2>&1 || umount "$mp" 2>/dev/null || true
      MOUNTED=""
    else
      info "(ctr images mount not possible here; snapshot presence checked instead)"
    fi
  fi
  if [ -z "$why" ]; then ok "$name ($ref = ${want:0:19}…, unpacked via $SNAPSHOTTER)"
  else FAILED_LOGS+=("$log"); bad "$name" "$why"; fi
}

ghcr_before=$(count_lines '/v2/lab-org/multi/' "$LOGS/ghcr.access.log")
ctr_check "5a ctr ?ns=docker.io docker.io/library/small:latest" docker.io/library/small:latest small \
  "$(img .small.config)" lab/small/layer3.bin $((768*1024))
ctr_check "5b ctr ?ns=ghcr.io ghcr.io/lab-org/multi:oci (OCI index, linux/amd64)" ghcr.io/lab-org/multi:oci multi-oci \
  "$(img '."multi-oci".instances."linux/amd64".config')" lab/multi/layer2.bin $((256*1024))
ctr_check "5c ctr ?ns=quay.io quay.io/lab-org/small:latest" quay.io/lab-org/small:latest small \
  "$(img .small.config)"
if [ "$CTR_OK" = 1 ] && ! over_budget "5d ctr content fetch arm64"; then
  # arm64 half of the index: fetch only (no unpack of a foreign platform)
  if timeout "$(cmd_timeout)" "${CTR[@]}" content fetch --hosts-dir "$HOSTS" "${CTR_AUTH[@]}" \
       --platform linux/arm64 ghcr.io/lab-org/multi:oci >"$LOGS/ctr-fetch-arm64.log" 2>&1; then
    missing=""
    for d in $(img '."multi-oci".instances."linux/arm64/v8" | .digest, .config, .layers[]'); do
      ctrq content get "$d" 2>/dev/null | sha256sum | grep -q "^${d#sha256:} " || missing+=" $d"
    done
    if [ -z "$missing" ]; then ok "5d ctr content fetch --platform linux/arm64 ghcr.io/lab-org/multi:oci"
    else bad "5d ctr content fetch arm64" "missing or corrupt in content store:$missing"; fi
  else
    FAILED_LOGS+=("$LOGS/ctr-fetch-arm64.log")
    bad "5d ctr content fetch arm64" "$(tail -n 3 "$LOGS/ctr-fetch-arm64.log" | tr '\n' ' ')"
  fi
fi
if [ "$TARGET" = mirror ]; then
  ghcr_after=$(count_lines '/v2/lab-org/multi/' "$LOGS/ghcr.access.log")
  if [ "$ghcr_after" -gt "$ghcr_before" ]; then
    ok "5e ?ns=ghcr.io on the all-upstreams port reached the ghcr upstream ($((ghcr_after-ghcr_before)) requests for lab-org/multi)"
  else
    bad "5e ?ns=ghcr.io routing" "the ghcr upstream saw no request for lab-org/multi"
  fi
  n=$(count_lines 'ns=(docker|ghcr|quay)\.io' "$LOGS/mirrorgate.log")
  info "mirror log lines mentioning ?ns=: $n (informational: depends on what the mirror logs)"
fi

# ----------------------------------------------------------------- check 6
BLOB_RE='"GET /v2/[^ ]+/blobs/sha256:[0-9a-f]{64}[^ ]* HTTP'
MAN_RE='"(GET|HEAD) /v2/[^ ]+/manifests/[^ ]+ HTTP'
UPLOGS=("$LOGS/hub.access.log" "$LOGS/ghcr.access.log" "$LOGS/quay.access.log")
counts() { # -> "blobGETs manifestRequests" over the three upstream access logs
  echo "$(count_lines "$BLOB_RE" "${UPLOGS[@]}") $(count_lines "$MAN_RE" "${UPLOGS[@]}")"
}
# The seeding pushes also hit the logs, but only requests after the mark count.
step "6. warm pulls: no upstream blob GETs"
sleep 1   # let late access-log lines of the cold pulls land
read -r blobs0 mans0 <<<"$(counts)"
fail_before_warm=$fail
declare -A MARK
for f in "${UPLOGS[@]}"; do MARK[$f]=$(wc -l <"$f"); done
new_blob_gets() { # the upstream blob GET lines logged since the mark
  local f
  for f in "${UPLOGS[@]}"; do
    tail -n +"$((MARK[$f]+1))" "$f" | grep -E "$BLOB_RE" | grep -oE '"GET [^"]+"' | sed "s|^|$(basename "$f" .access.log): |"
  done
}
run_skopeo_checks " (warm)"
run_pinned_checks " (warm)"
if [ "$CTR_OK" = 1 ]; then
  ref=docker.io/library/small:latest
  ctrq images rm --sync "$ref" >"$LOGS/ctr-rm.log" 2>&1 || true
  for d in $(img '.small | .digest, .config, .layers[]'); do
    ctrq content rm "$d" >>"$LOGS/ctr-rm.log" 2>&1 || true
  done
  left=""
  for d in $(img '.small | .digest, .config, .layers[]'); do
    ctrq content info "$d" >/dev/null 2>&1 && left+=" $d"
  done
  [ -z "$left" ] || info "still in the content store after rm:$left"
  ctr_check "6c ctr re-pull after images rm + content rm: docker.io/library/small:latest (warm)" \
    "$ref" small "$(img .small.config)"
fi
sleep 1
read -r blobs1 mans1 <<<"$(counts)"
if [ "$TARGET" = mirror ]; then
  if [ "$fail" != "$fail_before_warm" ]; then
    bad "6 no upstream blob GET during the warm pulls" "$((fail-fail_before_warm)) warm pull(s) failed, so the count proves nothing (blob GETs $blobs0 -> $blobs1)"
  elif [ "$blobs1" = "$blobs0" ]; then
    ok "6 no upstream blob GET during the warm pulls (blob GETs stay $blobs0; manifest requests $mans0 -> $mans1)"
  else
    bad "6 no upstream blob GET during the warm pulls" "upstream blob GETs went $blobs0 -> $blobs1 (manifest requests $mans0 -> $mans1); first ones: $(
      new_blob_gets | head -n 4 | tr '\n' ' ')"
  fi
else
  info "direct mode: upstream blob GETs $blobs0 -> $blobs1, manifest requests $mans0 -> $mans1 (check 6 not applicable)"
fi

# ----------------------------------------------------------------- check 7
if [ "$TARGET" = mirror ]; then
  step "7. the mirror's store holds only verified content"
  search="$MIRROR_DATA/blobs"; [ -d "$search" ] || search="$MIRROR_DATA"
  nfiles=0; corrupt=""
  while IFS= read -r -d '' f; do
    n=$(basename "$f"); nfiles=$((nfiles+1))
    [ "$(sha256_of "$f")" = "$n" ] || corrupt+=" ${f#"$MIRROR_DATA"/}"
  done < <(find "$search" -type f -regextype posix-extended -regex '.*/[0-9a-f]{64}' -print0 2>/dev/null)
  missing=""
  for d in $(img '.small | .config, .layers[]'); do
    find "$search" -type f -name "${d#sha256:}" | grep -q . || missing+=" $d"
  done
  if [ -n "$corrupt" ]; then bad "7 store verified" "files not matching their digest:$corrupt"
  elif [ "$nfiles" = 0 ]; then bad "7 store verified" "no 64-hex files under $search"
  elif [ -n "$missing" ]; then bad "7 store verified" "$nfiles files ok, but small's blobs are not in the store:$missing"
  else ok "7 store verified: $nfiles files under ${search#"$W"/} hash to their names"; fi
fi

# ----------------------------------------------------------------- summary
if mirror_dead; then
  bad "mirror alive" "$MIRROR_DEAD"
fi
[ "$fail" -gt 0 ] && dump_logs
echo
echo "system test took $((SECONDS-T_START))s (target: $TARGET)"
echo "$pass passed, $fail failed"
[ "$fail" = 0 ] || exit 1
