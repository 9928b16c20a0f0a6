# shellcheck shell=bash
# Shared parts of the system tests (run.sh, tls.sh). Source it from a bash
# script that runs with `set -euo pipefail`; it installs the EXIT/INT/TERM
# traps itself. Everything it starts listens on 127.0.0.1 only.
#
# What it provides:
#   reporting    ok / bad / info / step, counters pass / fail, summary
#   processes    start_bg (killed by the cleanup trap), wait_until,
#                CLEANUP_HOOKS (functions the trap runs first, last added first)
#   setup        make_workdir, free_ports, make_pki, make_images,
#                start_upstreams, upstreams_toml, setup_skopeo, seed_upstreams,
#                find_mirror_bin
#   budget       cmd_timeout, over_budget, mirror_dead (MIRROR_PID, if set)
#   checks       verify_dir, count_lines, sha256_of
#   containerd   start_containerd, ctr_check (pulls with --hosts-dir "$HOSTS")
#   S3           start_weed (SeaweedFS on loopback: S3_PORT, WEED_PID)

LIB_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$LIB_DIR/../.." && pwd)"
T_START=$SECONDS
IP=127.0.0.1
CMD_TIMEOUT=60        # per client command
BUDGET="${SYSTEM_TEST_BUDGET:-240}"  # seconds; checks that would start later are failed, not run

pass=0; fail=0; skip=0
ok()   { echo "PASS: $1"; pass=$((pass+1)); }
bad()  { echo "FAIL: $1: $2"; fail=$((fail+1)); }
skipped() { echo "SKIP: $1: $2"; skip=$((skip+1)); }
info() { echo "      $*"; }
step() { echo; echo "== $* ($((SECONDS-T_START))s)"; }

# ----------------------------------------------------------------- processes
W=""
PIDS=()          # every background process this script started
MOUNTED=""       # a ctr images mount point, if any
CLEANUP_HOOKS=() # extra cleanup functions, run first (last registered first)
cleanup() {
  local rc=$? pid i
  set +e
  trap - EXIT INT TERM
  for ((i=${#CLEANUP_HOOKS[@]}-1; i>=0; i--)); do
    "${CLEANUP_HOOKS[$i]}"
  done
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
    if [ "${KEEP_WORKDIR:-0}" = 1 ]; then echo "kept work dir: $W"
    else
      # a leftover mount (e.g. of a killed client) must not make rm -rf cross into it
      grep -F " $W/" /proc/mounts | awk '{print $2}' | sort -r | xargs -r -n1 umount -l 2>/dev/null
      rm -rf "$W"
    fi
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
EXTRA_LOGS=()    # more daemon logs whose tails dump_logs shows
dump_logs() {
  local f n
  [ -n "$W" ] && [ -d "$W/logs" ] || return 0
  echo; echo "== log tails (all logs are in $W/logs; KEEP_WORKDIR=1 keeps them)"
  for f in "${FAILED_LOGS[@]}" "$W/logs/mirrorgate.log" "$W"/logs/*.access.log \
           "$W/logs/hub.log" "$W/logs/ghcr.log" "$W/logs/quay.log" "$W/logs/containerd.log" \
           "${EXTRA_LOGS[@]}"; do
    [ -s "$f" ] || continue
    case "$f" in
      */mirrorgate.log) n=80;; */*.access.log) n=20;; */cargo-build.log) n=40;;
      */hub.log|*/ghcr.log|*/quay.log|*/containerd.log) n=8;; *) n=30;;
    esac
    echo "---- $f (last $n lines)"
    tail -n "$n" "$f" | cut -c1-500
  done
}

summary() { # WHAT: prints the totals; exit status 1 if anything failed
  [ "$fail" -gt 0 ] && dump_logs
  echo
  echo "$1 took $((SECONDS-T_START))s"
  echo "$pass passed, $fail failed, $skip skipped"
  [ "$fail" = 0 ]
}

setup_failed() { # MESSAGE [LOG_TO_SHOW]
  [ -n "${2:-}" ] && FAILED_LOGS+=("$2")
  bad "setup" "$1"
  dump_logs
  echo
  echo "$pass passed, $fail failed"
  exit 1
}

# ----------------------------------------------------------------- setup
make_workdir() { # NAME -> W, LOGS, CONF (under /tmp/NAME.XXXXXX)
  W="$(mktemp -d "/tmp/$1.XXXXXX")"
  mkdir -p "$W/logs" "$W/conf" "$W/pki/trust" "$W/upstream" "$W/out" "$W/images"
  LOGS="$W/logs"; CONF="$W/conf"
}

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

# The upstream stand-ins' CA and server certificate (127.0.0.1/localhost):
# PKI, CA_CRT; PKI/trust holds the CA in skopeo's --*-cert-dir form.
make_pki() {
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
}

# mkimages.py's images in W/images; IMAGES is its summary, img() queries it.
make_images() { # [MKIMAGES_ARGS...]
  python3 "$LIB_DIR/mkimages.py" --out "$W/images" "$@" >"$LOGS/mkimages.json" 2>"$LOGS/mkimages.err" \
    || setup_failed "mkimages.py failed" "$LOGS/mkimages.err"
  IMAGES="$W/images/images.json"
  jq -c 'map_values(.digest)' "$IMAGES"
}
img() { jq -r "$1" "$IMAGES"; }    # jq query on the summary

# Three docker-registry (CNCF distribution) stand-ins: hub (HTTPS, htpasswd
# basic auth), ghcr (HTTPS, anonymous), quay (anonymous; HTTP, or HTTPS when
# QUAY_TRANSPORT=tls). Needs HUB_PORT GHCR_PORT QUAY_PORT; sets *_URL,
# UP_URL, UP_HOSTPORT, HUB_USER, HUB_PASS.
HUB_USER=mirror; HUB_PASS=mirrorpass
start_upstreams() {
  local quay="${QUAY_TRANSPORT:-plain}" qscheme=http
  [ "$quay" = tls ] && qscheme=https
  HUB_URL="https://$IP:$HUB_PORT"; GHCR_URL="https://$IP:$GHCR_PORT"; QUAY_URL="$qscheme://$IP:$QUAY_PORT"
  declare -gA UP_URL=([hub]="$HUB_URL" [ghcr]="$GHCR_URL" [quay]="$QUAY_URL")
  declare -gA UP_HOSTPORT=([hub]="$IP:$HUB_PORT" [ghcr]="$IP:$GHCR_PORT" [quay]="$IP:$QUAY_PORT")
  htpasswd -Bbc "$CONF/htpasswd" "$HUB_USER" "$HUB_PASS" >/dev/null 2>&1 || setup_failed "htpasswd"
  write_registry hub  "$HUB_PORT"  tls    htpasswd
  write_registry ghcr "$GHCR_PORT" tls    none
  write_registry quay "$QUAY_PORT" "$quay" none
  start_registry hub  "$HUB_PORT"  "$HUB_URL"
  start_registry ghcr "$GHCR_PORT" "$GHCR_URL"
  start_registry quay "$QUAY_PORT" "$QUAY_URL"
  local code
  code=$(curl -s -o /dev/null -w '%{http_code}' --cacert "$CA_CRT" "$HUB_URL/v2/")
  [ "$code" = 401 ] || setup_failed "hub without credentials answered $code, want 401"
}
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
# distribution config, stand-in for $name (generated by tests/system/lib.sh)
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
  start_bg "$LOGS/$name.access.log" "$LOGS/$name.log" env -u REGISTRY_AUTH_FILE docker-registry serve "$CONF/$name.yml"
  wait_until 30 "$LAST_PID" \
    curl -s -o /dev/null --cacert "$CA_CRT" -u "$HUB_USER:$HUB_PASS" -f "$url/v2/" \
    || setup_failed "$name registry did not answer $url/v2/"
  echo "$name: pid $LAST_PID $url"
}

# The mirror's [[upstream]] sections for the three stand-ins (docker.io with
# HUB_PASSWORD from the environment, default; ghcr.io; quay.io unless the
# first argument is "no-quay").
upstreams_toml() { # [no-quay]
  cat <<EOF
[[upstream]]
name = "docker.io"
url = "$HUB_URL"
default = true
ca_file = "$CA_CRT"
username = "$HUB_USER"
password = { env = "HUB_PASSWORD" }

[[upstream]]
name = "ghcr.io"
url = "$GHCR_URL"
ca_file = "$CA_CRT"
EOF
  if [ "${1:-}" != no-quay ]; then
    printf '\n[[upstream]]\nname = "quay.io"\nurl = "%s"\n' "$QUAY_URL"
  fi
}

# skopeo that reads nothing from the host: SKOPEO (array), CONF/policy.json,
# an empty registries.conf, an empty auth file (REGISTRY_AUTH_FILE).
setup_skopeo() {
  echo '{"default":[{"type":"insecureAcceptAnything"}]}' >"$CONF/policy.json"
  printf '# empty: no unqualified-search registries, no mirrors\n' >"$CONF/registries.conf"
  echo '{"auths":{}}' >"$CONF/auth.json"
  export REGISTRY_AUTH_FILE="$CONF/auth.json"   # never read ~/.docker or /run/containers creds
  SKOPEO=(skopeo --policy "$CONF/policy.json" --registries-conf "$CONF/registries.conf")
}

ACCEPT="application/vnd.oci.image.index.v1+json,application/vnd.docker.distribution.manifest.list.v2+json,application/vnd.oci.image.manifest.v1+json,application/vnd.docker.distribution.manifest.v2+json"
dest_flags() { # UPSTREAM -> DEST_FLAGS array
  case "$1" in
    hub)  DEST_FLAGS=(--dest-cert-dir "$PKI/trust" --dest-creds "$HUB_USER:$HUB_PASS");;
    ghcr) DEST_FLAGS=(--dest-cert-dir "$PKI/trust");;
    quay) if [ "${UP_URL[quay]}" = "https://${UP_HOSTPORT[quay]}" ]; then DEST_FLAGS=(--dest-cert-dir "$PKI/trust")
          else DEST_FLAGS=(--dest-tls-verify=false); fi;;   # plain HTTP stand-in
  esac
}
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
seed_upstreams() {
  seed hub  small     library/small:latest
  seed hub  small-oci library/small:oci
  seed hub  multi     library/multi:latest
  seed hub  alpine    library/alpine:3
  seed ghcr small     lab-org/small:latest
  seed ghcr multi-oci lab-org/multi:oci
  seed quay small     lab-org/small:latest
}

# BIN: MIRRORGATE_BIN, else target/debug/mirrorgate (cargo build if missing).
find_mirror_bin() {
  BIN="${MIRRORGATE_BIN:-$REPO/target/debug/mirrorgate}"
  if [ ! -x "$BIN" ]; then
    if [ -n "${MIRRORGATE_BIN:-}" ]; then setup_failed "MIRRORGATE_BIN=$BIN is not executable"; fi
    echo "building $BIN (cargo build)"
    (cd "$REPO" && cargo build) >"$LOGS/cargo-build.log" 2>&1 \
      || setup_failed "cargo build failed" "$LOGS/cargo-build.log"
  fi
}

# ----------------------------------------------------------------- budget
# Seconds a client command may take now: CMD_TIMEOUT, less near the end of
# the budget; 0 when the budget is spent (a hanging mirror must not make the
# test run for an hour).
cmd_timeout() {
  local left=$((BUDGET - (SECONDS - T_START)))
  if [ "$left" -le 0 ]; then echo 0
  elif [ "$left" -lt "$CMD_TIMEOUT" ]; then echo "$left"
  else echo "$CMD_TIMEOUT"; fi
}
MIRROR_PID=""
MIRROR_DEAD=""
mirror_dead() { # true when the mirror process has exited (reported once in the log)
  [ -n "$MIRROR_PID" ] || return 1
  [ -n "$MIRROR_DEAD" ] && return 0
  kill -0 "$MIRROR_PID" 2>/dev/null && return 1
  local st; wait "$MIRROR_PID" && st=0 || st=$?
  MIRROR_DEAD="mirrorgate exited with status $st ($( { grep -m1 -iE 'panicked|overflow|fatal' "$LOGS/mirrorgate.log" ||
    grep -m1 -E ' ERROR ' "$LOGS/mirrorgate.log" || tail -n 1 "$LOGS/mirrorgate.log"; } | cut -c1-200))"
  return 0
}
over_budget() { # NAME -> true (and records a FAIL) when the check cannot run
  if mirror_dead; then bad "$1" "not run: $MIRROR_DEAD"; return 0; fi
  if [ "$(cmd_timeout)" = 0 ]; then bad "$1" "not run: the ${BUDGET}s time budget is spent"; return 0; fi
  return 1
}

# ----------------------------------------------------------------- checks
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

# ----------------------------------------------------------------- containerd
# A private containerd in W/containerd: C, SOCK, CTR (array), ctrq,
# SNAPSHOTTER (overlayfs, else native), CTR_OK (1 when it runs).
start_containerd() { # [CHECK_NAME for a failure]
  C="$W/containerd"; SOCK="$C/containerd.sock"
  mkdir -p "$C/root" "$C/state" "$C/opt"
  cat >"$C/config.toml" <<EOF
# private containerd for tests/system
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
  CTR_OK=1
  start_bg "$LOGS/containerd.log" "$LOGS/containerd.log" containerd --config "$C/config.toml"
  CONTAINERD_PID=$LAST_PID
  if ! wait_until 30 "$CONTAINERD_PID" ctr --address "$SOCK" version; then
    bad "${1:-containerd}" "private containerd did not start (see $LOGS/containerd.log)"; CTR_OK=0
  fi
  CTR=(ctr --address "$SOCK" --namespace mirrorgate-test)
  SNAPSHOTTER=overlayfs
  if [ "$CTR_OK" = 1 ]; then
    if ! ctrq plugins ls 2>/dev/null | awk '$2=="overlayfs"{print $NF}' | grep -qx ok; then
      SNAPSHOTTER=native
    fi
    echo "snapshotter: $SNAPSHOTTER"
  fi
}
ctrq() { timeout 30 "${CTR[@]}" "$@"; }   # local queries to our containerd
CTR_AUTH=()

chain_id() { # CONFIG_FILE -> chain ID of its rootfs.diff_ids
  local chain="" d
  for d in $(jq -r '.rootfs.diff_ids[]' "$1"); do
    if [ -z "$chain" ]; then chain="$d"
    else chain="sha256:$(printf '%s %s' "$chain" "$d" | sha256sum | cut -d' ' -f1)"; fi
  done
  echo "$chain"
}

# Pulls REF with `ctr images pull --hosts-dir $HOSTS` and checks the image
# digest, `ctr images check`, the unpacked chain ID and, with MOUNT_FILE,
# that file's size in the mounted snapshot. Sets CTR_LAST_OK=1 on success.
CTRN=0
ctr_check() { # NAME REF IMAGE(summary key) CONFIG_DIGEST [MOUNT_FILE SIZE]
  local name="$1" ref="$2" image="$3" cfg="$4" mfile="${5:-}" msize="${6:-}"
  local want got log why="" chain want_chain status
  CTR_LAST_OK=0
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
  # shellcheck disable=SC2034  # read by the caller
  if [ -z "$why" ]; then CTR_LAST_OK=1; ok "$name ($ref = ${want:0:19}…, unpacked via $SNAPSHOTTER)"
  else FAILED_LOGS+=("$log"); bad "$name" "$why"; fi
}

# ----------------------------------------------------------------- S3
# SeaweedFS (`weed mini`, from scripts/install-seaweedfs.sh) on 127.0.0.1
# only, telemetry off, data under DIR, bucket "mirrorgate"; killed by the
# cleanup trap. Sets S3_PORT, WEED_PID and the AWS_* credentials it accepts.
start_weed() { # DIR
  local weed p
  mkdir -p "$1"
  weed=$(bash "$REPO/scripts/install-seaweedfs.sh") || setup_failed "install-seaweedfs.sh failed"
  read -r -a p <<<"$(free_ports 10)"
  S3_PORT=${p[6]}
  export AWS_ACCESS_KEY_ID=mgsystem AWS_SECRET_ACCESS_KEY=mgsystemsecret
  start_bg "$1.log" "$1.log" "$weed" mini -dir="$1" -ip=127.0.0.1 -ip.bind=127.0.0.1 \
    -master.telemetry=false -webdav=false -admin.ui=false -s3.port.iceberg=0 -s3.port.lance=0 \
    -bucket=mirrorgate -master.port="${p[0]}" -master.port.grpc="${p[1]}" -volume.port="${p[2]}" \
    -volume.port.grpc="${p[3]}" -filer.port="${p[4]}" -filer.port.grpc="${p[5]}" \
    -s3.port="$S3_PORT" -s3.port.grpc="${p[7]}" -admin.port="${p[8]}" -admin.port.grpc="${p[9]}" \
    -master.volumeSizeLimitMB=64
  WEED_PID=$LAST_PID
  wait_until 60 "$WEED_PID" grep -q "All enabled components are running" "$1.log" \
    || setup_failed "SeaweedFS did not start" "$1.log"
  echo "SeaweedFS $("$weed" version 2>/dev/null | head -n 1) on 127.0.0.1:$S3_PORT (pid $WEED_PID)"
}
s3_table() { # PREFIX EXTRA -> a [storage.s3] table for the weed of start_weed
  printf '[storage.s3]\nbucket = "mirrorgate"\nendpoint = "http://127.0.0.1:%s"\nprefix = "%s"\naccess_key_id = { env = "AWS_ACCESS_KEY_ID" }\nsecret_access_key = { env = "AWS_SECRET_ACCESS_KEY" }\nallow_http = true\n%s\n' \
    "$S3_PORT" "$1" "$2"
}
