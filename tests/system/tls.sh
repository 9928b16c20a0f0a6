#!/usr/bin/env bash
# mirrorgate TLS system test: ONE `mirrorgate serve` with ONE TLS listener
# serves docker.io, ghcr.io and quay.io stand-ins (CNCF distribution on
# loopback) to real clients that trust only the CA made by
# `mirrorgate ca init`, configured only with `mirrorgate client-config`
# output. No client is told to skip verification. Run as root:
#
#   bash tests/system/tls.sh
#
# Environment:
#   MIRRORGATE_BIN      mirror binary (default: <repo>/target/debug/mirrorgate,
#                       built with `cargo build` if missing)
#   KEEP_WORKDIR=1      keep the temp dir (configs, logs, data) for inspection
#   SYSTEM_TEST_BUDGET  seconds (default 180); later checks fail as "not run"
#   MIRROR_STORAGE_TOML extra config for the mirror's store (tests/system/s3.sh
#                       passes a [storage.s3] table: the same clients, on S3)
#   MIRROR_EXPECT_REDIRECT=1  the store redirects cached blob GETs: check that
#                       the clients followed 307s to it
#
# Name resolution stays on loopback: the mirror's names (mirror.test and the
# SNI names docker/ghcr/quay.mirror.test) are added to /etc/hosts for the run
# and removed by the exit trap (curl also pins them with --resolve); a line
# left by a killed run is removed by the next one. dockerd gets the generated
# CA in /etc/docker/certs.d/<host:port>/, removed the same way.
# No client can reach a real registry: every registries.conf/hosts.toml
# fallback is a loopback stand-in the client does not trust, podman has a
# dead loopback proxy, and dockerd's only other endpoint
# (registry-1.docker.io) goes through a loopback CONNECT proxy that refuses it.
# Output: PASS:/FAIL:/SKIP: lines, then "N passed, M failed, K skipped".
# Exit 1 on any failure.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=lib.sh disable=SC2034  # lib.sh reads variables set here
. "$HERE/lib.sh"
BUDGET="${SYSTEM_TEST_BUDGET:-180}"
DEAD_PROXY="http://127.0.0.1:9"   # nothing listens there

MIRROR_HOST=mirror.test            # the generic name: ?ns= and path prefixes route
declare -A SNI=([hub]=docker.mirror.test [ghcr]=ghcr.mirror.test [quay]=quay.mirror.test)
NAMES="$MIRROR_HOST ${SNI[hub]} ${SNI[ghcr]} ${SNI[quay]}"

# ----------------------------------------------------------------- /etc/hosts
# Our line carries a marker with this shell's PID; lines left by a killed
# earlier run (dead PID) are removed too. The file is rewritten in place
# (it may be a bind mount).
HOSTS_TAG="# mirrorgate-tls-test"
HOSTS_MARK="$HOSTS_TAG pid=$$"
etc_hosts_drop() { # removes the lines whose marker matches the awk condition
  local keep
  keep=$(awk -v tag="$HOSTS_TAG" -v me="$$" -v mode="$1" '
    { i = index($0, tag " pid=") }
    i == 0 { print; next }
    { pid = substr($0, i + length(tag) + 5) + 0 }
    mode == "mine" && pid == me { next }
    mode == "stale" && pid != me && system("kill -0 " pid " 2>/dev/null") != 0 { next }
    { print }' /etc/hosts) || return 1
  printf '%s\n' "$keep" > /etc/hosts
}
ETC_HOSTS_ADDED=0
etc_hosts_restore() {
  [ "$ETC_HOSTS_ADDED" = 1 ] || return 0
  etc_hosts_drop mine && ETC_HOSTS_ADDED=0
}

# ----------------------------------------------------------------- /etc/docker
DOCKER_CERT_DIR=""       # /etc/docker/certs.d/<host:port>, when installed
CREATED_PATHS=()         # paths outside W this script created (removed, deepest first)
mkdir_tracked() { # DIR: mkdir -p, remembering every directory it creates
  local d="$1" todo=()
  while [ ! -e "$d" ]; do todo+=("$d"); d=$(dirname "$d"); done
  mkdir -p "$1"
  local i; for ((i=${#todo[@]}-1; i>=0; i--)); do CREATED_PATHS+=("${todo[$i]}"); done
}
track_new() { # PATH: remember PATH if it does not exist yet (a daemon may create it)
  [ -e "$1" ] || CREATED_PATHS+=("$1")
}
host_files_restore() {
  local i p
  for ((i=${#CREATED_PATHS[@]}-1; i>=0; i--)); do
    p="${CREATED_PATHS[$i]}"
    if [ -d "$p" ] && [ ! -L "$p" ]; then rm -rf -- "$p"; else rm -f -- "$p"; fi
  done
  CREATED_PATHS=()
}
DOCKERD_PID=""
stop_dockerd() { # before its /run/docker and certs.d go away
  [ -n "$DOCKERD_PID" ] || return 0
  kill -TERM "$DOCKERD_PID" 2>/dev/null || true
  for _ in $(seq 1 100); do kill -0 "$DOCKERD_PID" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$DOCKERD_PID" 2>/dev/null || true
  wait "$DOCKERD_PID" 2>/dev/null || true
  DOCKERD_PID=""
}
restore_host() { stop_dockerd; etc_hosts_restore; host_files_restore; }
CLEANUP_HOOKS+=(restore_host)

# ----------------------------------------------------------------- deps, dirs
step "dependencies"
bash "$HERE/install-deps.sh" --tls || setup_failed "install-deps.sh --tls failed"

make_workdir mirrorgate-tls
echo "work dir: $W"
read -r HUB_PORT GHCR_PORT QUAY_PORT PT <<<"$(free_ports 4)"
MIRROR="$MIRROR_HOST:$PT"
echo "ports: hub=$HUB_PORT ghcr=$GHCR_PORT quay=$QUAY_PORT mirror TLS=$PT"

step "upstream stand-ins: PKI, images, registries, seeding"
make_pki            # the stand-ins' own CA: only the mirror trusts it
make_images
QUAY_TRANSPORT=tls start_upstreams
setup_skopeo
seed_upstreams

# ----------------------------------------------------------------- CA, config
step "mirrorgate ca init, config, client-config"
find_mirror_bin
# Every command that loads the config resolves its secrets, so each gets HUB_PASSWORD.
MG=(env HUB_PASSWORD="$HUB_PASS" "$BIN")
MIRROR_DATA="$W/mirror-data"; MG_CA_DIR="$W/mirror-ca"; MCA="$MG_CA_DIR/ca.crt"
cat >"$CONF/mirrorgate.toml" <<EOF
# generated by tests/system/tls.sh: one TLS port for every registry
[storage]
root = "$MIRROR_DATA"

[tls]
ca_dir = "$MG_CA_DIR"
names = ["$MIRROR_HOST"]

[[listener]]
addr = "$IP:$PT"
tls = true

[[upstream]]
name = "docker.io"
url = "$HUB_URL"
aliases = ["index.docker.io", "registry-1.docker.io"]
default = true
hosts = ["${SNI[hub]}"]
ca_file = "$CA_CRT"
username = "$HUB_USER"
password = { env = "HUB_PASSWORD" }

[[upstream]]
name = "ghcr.io"
url = "$GHCR_URL"
hosts = ["${SNI[ghcr]}"]
ca_file = "$CA_CRT"

[[upstream]]
name = "quay.io"
url = "$QUAY_URL"
hosts = ["${SNI[quay]}"]
ca_file = "$CA_CRT"
EOF
if [ -n "${MIRROR_STORAGE_TOML:-}" ]; then
  printf '\n%s\n' "$MIRROR_STORAGE_TOML" >>"$CONF/mirrorgate.toml"
  info "store: $(grep -A3 '^\[storage.s3\]' "$CONF/mirrorgate.toml" | tr '\n' ' ')"
fi
"${MG[@]}" check-config "$CONF/mirrorgate.toml" >"$LOGS/check-config.log" 2>&1 \
  || setup_failed "mirrorgate check-config rejected the config" "$LOGS/check-config.log"
"${MG[@]}" ca init --config "$CONF/mirrorgate.toml" >"$LOGS/ca-init.log" 2>&1 \
  || setup_failed "mirrorgate ca init failed" "$LOGS/ca-init.log"
[ -s "$MCA" ] || setup_failed "mirrorgate ca init wrote no $MCA" "$LOGS/ca-init.log"
ca_fp() { openssl x509 -in "$1" -noout -fingerprint -sha256 | cut -d= -f2; }
CA_FP=$(ca_fp "$MCA")
echo "CA: $MCA ($CA_FP)"
# A second, unrelated CA of the same kind: negative controls use it as the
# "wrong" trust anchor.
"${MG[@]}" ca init --dir "$W/other-ca" >>"$LOGS/ca-init.log" 2>&1 || setup_failed "ca init (other CA)" "$LOGS/ca-init.log"
OTHER_CA="$W/other-ca/ca.crt"

GEN="$W/client-config"
gen_config() { # KIND OUT_DIR [more client-config args]
  local kind="$1" out="$2"; shift 2
  "${MG[@]}" client-config "$kind" --config "$CONF/mirrorgate.toml" --mirror "$MIRROR" --out "$out" "$@" \
    >>"$LOGS/client-config.log" 2>&1 || setup_failed "mirrorgate client-config $kind failed" "$LOGS/client-config.log"
}
# --install-dir: the containerd and podman files are used where they were written.
gen_config containerd "$GEN/containerd" --install-dir "$GEN/containerd"
gen_config podman     "$GEN/podman"     --install-dir "$GEN/podman"
gen_config docker     "$GEN/docker"     # installed under /etc/docker (certs.d only)
gen_config containerd "$W/wrong-ca/containerd" --install-dir "$W/wrong-ca/containerd" --ca "$OTHER_CA"
(cd "$GEN" && find . -type f | sort | sed 's|^\./|      |')
if hits=$(grep -rniE 'insecure|skip.?verify|tls.?verify' "$GEN"); then
  bad "0 generated client configs trust only the CA" "found: $(echo "$hits" | head -n 3 | tr '\n' ' ')"
else
  ok "0 generated client configs name no insecure/skip_verify/tls-verify option"
fi

# ----------------------------------------------------------------- names
step "name resolution on loopback (/etc/hosts, removed at exit)"
cp /etc/hosts "$W/etc-hosts.before"
etc_hosts_drop stale || setup_failed "cannot rewrite /etc/hosts"
cp /etc/hosts "$W/etc-hosts.orig"
ETC_HOSTS_ADDED=1
printf '%s %s %s\n' "$IP" "$NAMES" "$HOSTS_MARK" >> /etc/hosts
for n in $NAMES; do
  a=$(getent ahostsv4 "$n" | awk 'NR==1{print $1}')
  [ "$a" = "$IP" ] || setup_failed "$n resolves to '$a', want $IP"
done
info "$NAMES -> $IP"

# ----------------------------------------------------------------- the mirror
step "start mirrorgate (one TLS listener on $IP:$PT)"
start_bg "$LOGS/mirrorgate.log" "$LOGS/mirrorgate.log" \
  env RUST_LOG="${RUST_LOG:-info}" NO_COLOR=1 "${MG[@]}" serve --config "$CONF/mirrorgate.toml"
MIRROR_PID=$LAST_PID
CURL=(curl -sS --max-time 30 --cacert "$MCA")
resolve() { for n in $NAMES; do printf -- '--resolve\n%s:%s:%s\n' "$n" "$PT" "$IP"; done; }
mapfile -t RESOLVE < <(resolve)
ping_mirror() { [ "$("${CURL[@]}" "${RESOLVE[@]}" -o /dev/null -w '%{http_code}' "https://$MIRROR/v2/")" = 200 ]; }
if ! wait_until 30 "$MIRROR_PID" ping_mirror; then
  mirror_dead && setup_failed "$MIRROR_DEAD" "$LOGS/mirrorgate.log"
  setup_failed "mirrorgate did not answer 200 on https://$MIRROR/v2/ within 30s" "$LOGS/mirrorgate.log"
fi
echo "mirrorgate: pid $MIRROR_PID ($BIN)"
if [ "$(ca_fp "$MCA")" = "$CA_FP" ]; then ok "0 serve kept the CA made by ca init"
else bad "0 serve kept the CA made by ca init" "ca.crt changed: $(ca_fp "$MCA")"; fi

mark_log() { wc -l <"$1"; }                 # FILE -> current line count
since() { tail -n +"$(($2+1))" "$1"; }      # FILE MARK -> lines added since

# ----------------------------------------------------------------- 1. TLS
step "1. TLS: certificates per SNI name, routing by SNI, /ca.crt"
sclient() { # NAME|- [s_client args] -> output; status of s_client
  local name="$1" sni=(-servername "$1"); shift
  [ "$name" = - ] && sni=(-noservername)
  timeout 20 openssl s_client -connect "$IP:$PT" "${sni[@]}" -CAfile "$MCA" -showcerts "$@" </dev/null 2>&1
}
for n in $NAMES; do
  out="$LOGS/s_client-$n.log"
  if sclient "$n" -verify_return_error -verify_hostname "$n" >"$out"; then
    # split -showcerts output: certificate 1 is the leaf, the rest the chain
    rm -f "$W/cert-$n-"*.pem
    awk -v p="$W/cert-$n-" '/-----BEGIN CERTIFICATE-----/{k++; f=p k ".pem"} f{print > f} /-----END CERTIFICATE-----/{f=""}' "$out"
    cp "$W/cert-$n-1.pem" "$W/leaf-$n.pem"
    cat "$W/cert-$n-"[2-9].pem >"$W/chain-$n.pem" 2>/dev/null || : >"$W/chain-$n.pem"
    san=$(openssl x509 -in "$W/leaf-$n.pem" -noout -ext subjectAltName 2>/dev/null | tail -n +2 | tr -d ' ')
    if ! v=$(openssl verify -CAfile "$MCA" -untrusted "$W/chain-$n.pem" -verify_hostname "$n" "$W/leaf-$n.pem" 2>&1); then
      bad "1a certificate for SNI $n" "openssl verify: $v"
    elif [ "$san" != "DNS:$n" ]; then
      bad "1a certificate for SNI $n" "subjectAltName '$san', want DNS:$n"
    else
      ok "1a SNI $n: chain verifies against the ca init CA (s_client -verify_return_error, openssl verify), SAN $san"
    fi
  else
    FAILED_LOGS+=("$out"); bad "1a certificate for SNI $n" "$(grep -m2 -iE 'error|verify' "$out" | tr '\n' ' ')"
  fi
done
out="$LOGS/s_client-no-sni.log"
if sclient - -verify_return_error -verify_ip "$IP" >"$out"; then
  ok "1b no SNI (IP literal): certificate for IP:$IP verifies against the CA"
else
  FAILED_LOGS+=("$out"); bad "1b no SNI" "$(grep -m2 -iE 'error|verify' "$out" | tr '\n' ' ')"
fi
for n in unknown.mirror.test registry-1.docker.io; do
  out="$LOGS/s_client-unknown-$n.log"
  if sclient "$n" >"$out"; then st=0; else st=$?; fi
  if grep -q 'BEGIN CERTIFICATE' "$out" || ! grep -q 'no peer certificate available' "$out"; then
    bad "1c unknown SNI $n gets no certificate" "s_client status $st, a certificate was sent: $(grep -m1 's:' "$out")"
  elif [ "$st" = 0 ]; then
    bad "1c unknown SNI $n gets no certificate" "no certificate, but s_client reports success"
  else
    ok "1c unknown SNI $n: handshake fails, no certificate sent ($(grep -m1 -oE 'alert [a-z ]+[a-z]' "$out" | head -n 1 || echo "s_client status $st"))"
  fi
done
if curl -sS --max-time 10 "${RESOLVE[@]}" -o /dev/null "https://$MIRROR/v2/" >"$LOGS/curl-system-trust.log" 2>&1; then
  bad "1d system trust store does not know the CA" "curl without --cacert succeeded: the CA must be given explicitly"
else
  ok "1d without --cacert the handshake fails ($(head -c 120 "$LOGS/curl-system-trust.log" | tr '\n' ' '))"
fi
if "${CURL[@]}" "${RESOLVE[@]}" -o "$W/served-ca.crt" "https://$MIRROR/ca.crt" 2>"$LOGS/curl-ca.log" \
   && cmp -s "$W/served-ca.crt" "$MCA"; then
  ok "1e GET https://$MIRROR/ca.crt returns the CA ($(ca_fp "$W/served-ca.crt" | cut -c1-23)…)"
else
  bad "1e GET /ca.crt returns the CA" "$(cat "$LOGS/curl-ca.log") $(cmp "$W/served-ca.crt" "$MCA" 2>&1)"
fi

# SNI routing: the same port, two names, two upstreams. GET tags/list on
# each name; the answer and the upstream access logs tell which upstream
# served it.
UPLOG() { echo "$LOGS/$1.access.log"; }
tags_check() { # NAME URL UPSTREAM(stand-in whose access log must grow) STATUS [TAG...]
  local name="$1" url="$2" up="$3" want="$4" code body m0 m1 why="" t; shift 4
  m0=$(count_lines '/tags/list' "$(UPLOG "$up")")
  code=$("${CURL[@]}" "${RESOLVE[@]}" -o "$W/tags.json" -w '%{http_code} %{http_version}' "$url" 2>"$LOGS/curl-tags.log") || true
  for _ in $(seq 1 30); do   # the stand-in may log just after it answered
    m1=$(count_lines '/tags/list' "$(UPLOG "$up")")
    [ "$m1" -gt "$m0" ] && break
    sleep 0.1
  done
  body=$(tr -d '\n' <"$W/tags.json" 2>/dev/null | cut -c1-200)
  [ "${code%% *}" = "$want" ] || why+="status ${code:-none} (want $want) $body $(cat "$LOGS/curl-tags.log"); "
  for t in "$@"; do
    jq -e --arg t "$t" '.tags | index($t)' "$W/tags.json" >/dev/null 2>&1 || why+="tag $t missing in $body; "
  done
  [ "$m1" -gt "$m0" ] || why+="the $up stand-in saw no tags/list request; "
  if [ -z "$why" ]; then ok "$name ($want via HTTP/${code#* }; $up stand-in answered${*:+: tags $*})"
  else bad "$name" "$why"; fi
}
H="https://${SNI[hub]}:$PT"; G="https://${SNI[ghcr]}:$PT"; Q="https://${SNI[quay]}:$PT"; M="https://$MIRROR"
tags_check "1f SNI ${SNI[hub]} -> docker.io: library/small tags" "$H/v2/library/small/tags/list" hub 200 latest oci
tags_check "1f SNI ${SNI[ghcr]} -> ghcr.io: lab-org/multi tags" "$G/v2/lab-org/multi/tags/list" ghcr 200 oci
tags_check "1f SNI ${SNI[quay]} -> quay.io: lab-org/small tags" "$Q/v2/lab-org/small/tags/list" quay 200 latest
tags_check "1f SNI ${SNI[ghcr]}: library/small is not on ghcr" "$G/v2/library/small/tags/list" ghcr 404
tags_check "1f SNI ${SNI[hub]}: lab-org/multi is not on docker.io" "$H/v2/lab-org/multi/tags/list" hub 404
tags_check "1g $MIRROR_HOST ?ns=ghcr.io -> ghcr.io" "$M/v2/lab-org/multi/tags/list?ns=ghcr.io" ghcr 200 oci
tags_check "1g $MIRROR_HOST /v2/quay.io/ prefix -> quay.io" "$M/v2/quay.io/lab-org/small/tags/list" quay 200 latest
tags_check "1g $MIRROR_HOST no ns, no prefix -> default docker.io" "$M/v2/library/small/tags/list" hub 200 latest oci
CURL+=(--http1.1)
tags_check "1g HTTP/1.1: $MIRROR_HOST /ghcr.io/v2/ prefix -> ghcr.io" "$M/ghcr.io/v2/lab-org/multi/tags/list" ghcr 200 oci
unset 'CURL[${#CURL[@]}-1]'

# ----------------------------------------------------------------- 2. ctr
step "2. containerd: ctr images pull --hosts-dir <client-config containerd>"
start_containerd "2 containerd"
HOSTS="$GEN/containerd"
mirror_served() { # MARK REGEX -> true if the mirror logged a 200 for it since MARK
  since "$LOGS/mirrorgate.log" "$1" | grep -E "$2" | grep -qE 'status=200'
}
ctr_via_mirror() { # NAME REF IMAGE CONFIG UPSTREAM REPO [MOUNT_FILE SIZE]
  local name="$1" ref="$2" image="$3" cfg="$4" up="$5" repo="$6" m
  m=$(mark_log "$LOGS/mirrorgate.log")
  ctr_check "$name" "$ref" "$image" "$cfg" "${@:7}"
  [ "$CTR_LAST_OK" = 1 ] || return 0
  if mirror_served "$m" "path=/v2/$repo/manifests/[^ ]*ns=${up}[ &]"; then
    ok "$name: served by the mirror (?ns=$up in its access log)"
  else
    bad "$name: served by the mirror" "no 200 for /v2/$repo/manifests/...?ns=$up in the mirror log"
  fi
}
ctr_via_mirror "2a ctr docker.io/library/small:latest" docker.io/library/small:latest small \
  "$(img .small.config)" docker.io library/small lab/small/layer3.bin $((768*1024))
ctr_via_mirror "2b ctr ghcr.io/lab-org/multi:oci (OCI index)" ghcr.io/lab-org/multi:oci multi-oci \
  "$(img '."multi-oci".instances."linux/amd64".config')" ghcr.io lab-org/multi
ctr_via_mirror "2c ctr quay.io/lab-org/small:latest" quay.io/lab-org/small:latest small \
  "$(img .small.config)" quay.io lab-org/small
if [ "$CTR_OK" = 1 ] && ! over_budget "2d ctr with another CA"; then
  # Same generator, another CA: the pull must fail on the certificate (and the
  # fallback `server`, the stand-in, is not trusted either).
  log="$LOGS/ctr-wrong-ca.log"
  if timeout "$(cmd_timeout)" "${CTR[@]}" images pull --hosts-dir "$W/wrong-ca/containerd" \
       --platform linux/amd64 docker.io/library/alpine:3 >"$log" 2>&1; then
    bad "2d ctr rejects the mirror when trusting another CA" "the pull succeeded"
  elif grep -qiE 'x509|certificate' "$log"; then
    ok "2d ctr trusting another CA fails: $(grep -m1 -oiE 'x509: [a-z ]+' "$log" | head -n 1)"
  else
    FAILED_LOGS+=("$log"); bad "2d ctr rejects another CA" "failed, but not on the certificate: $(tail -n 2 "$log" | tr '\n' ' ')"
  fi
fi

# ----------------------------------------------------------------- 3. skopeo, podman
step "3. skopeo and podman: registries.conf from client-config podman"
REGCONF="$GEN/podman/registries.conf"
CERTD="$GEN/podman/certs.d/$MIRROR"      # where the generated files put the CA
[ -s "$CERTD/ca.crt" ] || bad "3 generated certs.d" "no $CERTD/ca.crt"
SKOPEO_M=(skopeo --policy "$CONF/policy.json" --registries-conf "$REGCONF")
OUTN=0
skopeo_mirror_check() { # NAME REF(docker.io/...:tag) IMAGE UPSTREAM [--all]
  local name="$1" ref="$2" image="$3" up="$4" all=() want got out log why="" m repo
  [ "${5:-}" = --all ] && all=(--all)
  over_budget "$name" && return 0
  want=$(img ".\"$image\".digest")
  OUTN=$((OUTN+1)); out="$W/out/$OUTN-$image"; log="$LOGS/skopeo-$OUTN.log"
  repo=${ref#*/}; repo=${repo%:*}
  m=$(mark_log "$LOGS/mirrorgate.log")
  echo "skopeo --registries-conf $REGCONF copy ${all[*]} --src-cert-dir $CERTD docker://$ref dir:$out" >"$log"
  if ! timeout "$(cmd_timeout)" "${SKOPEO_M[@]}" copy "${all[@]}" --src-cert-dir "$CERTD" \
       "docker://$ref" "dir:$out" >>"$log" 2>&1; then
    FAILED_LOGS+=("$log")
    bad "$name" "skopeo copy docker://$ref failed: $(grep -v '^Copying\|^Writing\|^Storing\|^Getting' "$log" | tail -n 3 | tr '\n' ' ' | cut -c1-600)"
    return 0
  fi
  got="sha256:$(sha256_of "$out/manifest.json")"
  [ "$got" = "$want" ] || why="manifest digest $got, upstream has $want; "
  if ! v=$(verify_dir "$out"); then why+="blob check: $(echo "$v" | tr '\n' ' '); "; fi
  if ! d=$(diff -rq "$W/images/$image" "$out" 2>&1); then why+="differs from seeded image: $(echo "$d" | head -n 3 | tr '\n' ' ')"; fi
  mirror_served "$m" "path=/v2/$up/$repo/manifests/" || why+="the mirror logged no 200 for /v2/$up/$repo/manifests/ (path prefix); "
  if [ -z "$why" ]; then ok "$name (via $MIRROR/$up/$repo = ${want:0:19}…, $(find "$out" -maxdepth 1 -regextype posix-extended -regex '.*/[0-9a-f]{64}' | wc -l) blobs verified)"
  else bad "$name" "$why"; fi
}
skopeo_mirror_check "3a skopeo docker.io/library/small:latest" docker.io/library/small:latest small docker.io
skopeo_mirror_check "3b skopeo --all docker.io/library/multi:latest (manifest list)" docker.io/library/multi:latest multi docker.io --all
skopeo_mirror_check "3c skopeo --all ghcr.io/lab-org/multi:oci (OCI index)" ghcr.io/lab-org/multi:oci multi-oci ghcr.io --all
skopeo_mirror_check "3d skopeo quay.io/lab-org/small:latest" quay.io/lab-org/small:latest small quay.io
if ! over_budget "3e skopeo with another CA"; then
  mkdir -p "$W/wrong-certd"; cp "$OTHER_CA" "$W/wrong-certd/ca.crt"
  log="$LOGS/skopeo-wrong-ca.log"
  if timeout "$(cmd_timeout)" "${SKOPEO_M[@]}" inspect --raw --cert-dir "$W/wrong-certd" \
       docker://docker.io/library/alpine:3 >"$log" 2>&1; then
    bad "3e skopeo rejects the mirror when trusting another CA" "skopeo inspect succeeded"
  elif grep -qiE 'x509|certificate' "$log"; then
    ok "3e skopeo trusting another CA fails: $(grep -m1 -oiE 'x509: [a-z ]+' "$log" | head -n 1)"
  else
    FAILED_LOGS+=("$log"); bad "3e skopeo rejects another CA" "failed, but not on the certificate: $(tail -n 2 "$log" | tr '\n' ' ')"
  fi
fi

# podman: same registries.conf (CONTAINERS_REGISTRIES_CONF), same certs.d.
PD="$W/podman"
# Nothing from the host's containers config; the proxy is a dead loopback
# port for any name but the mirror's (there is no other name to reach).
PODMAN=(env CONTAINERS_REGISTRIES_CONF="$REGCONF" CONTAINERS_CONF="$PD/containers.conf"
        CONTAINERS_STORAGE_CONF="$PD/storage.conf" REGISTRY_AUTH_FILE="$CONF/auth.json"
        HTTPS_PROXY="$DEAD_PROXY" HTTP_PROXY="$DEAD_PROXY" NO_PROXY="$MIRROR_HOST,127.0.0.1"
        podman --root "$PD/root" --runroot "$PD/run" --storage-driver vfs --cgroup-manager cgroupfs
        --events-backend none --tmpdir "$PD/tmp")
podman_check() { # NAME REF IMAGE UPSTREAM
  local name="$1" ref="$2" image="$3" up="$4" want got log m repo why=""
  over_budget "$name" && return 0
  want=$(img ".\"$image\".digest"); log="$LOGS/podman-$image.log"
  repo=${ref#*/}; repo=${repo%:*}
  m=$(mark_log "$LOGS/mirrorgate.log")
  if ! timeout "$(cmd_timeout)" "${PODMAN[@]}" pull --cert-dir "$CERTD" \
       --signature-policy "$CONF/policy.json" "$ref" >"$log" 2>&1; then
    FAILED_LOGS+=("$log"); bad "$name" "podman pull $ref failed: $(tail -n 3 "$log" | tr '\n' ' ' | cut -c1-600)"
    return 0
  fi
  got=$("${PODMAN[@]}" image inspect --format '{{.Digest}}' "$ref" 2>>"$log")
  [ "$got" = "$want" ] || why+="image digest '$got', upstream has $want; "
  mirror_served "$m" "path=/v2/$up/$repo/manifests/" || why+="the mirror logged no 200 for /v2/$up/$repo/manifests/; "
  if [ -z "$why" ]; then ok "$name ($ref = ${want:0:19}… via $MIRROR/$up)"; else bad "$name" "$why"; fi
}
if ! command -v podman >/dev/null 2>&1; then
  skipped "3f podman" "podman is not installed (apt-get install podman failed or is unavailable)"
else
  mkdir -p "$PD/tmp"
  printf '[engine]\nevents_logger = "none"\ncgroup_manager = "cgroupfs"\n' >"$PD/containers.conf"
  printf '[storage]\ndriver = "vfs"\nrunroot = "%s/run"\ngraphroot = "%s/root"\n' "$PD" "$PD" >"$PD/storage.conf"
  if ! "${PODMAN[@]}" info >"$LOGS/podman-info.log" 2>&1; then
    skipped "3f podman" "podman does not run here: $(grep -m1 -iE 'error' "$LOGS/podman-info.log" | cut -c1-200)"
  else
    podman_check "3f podman pull docker.io/library/small:latest" docker.io/library/small:latest small docker.io
    podman_check "3g podman pull quay.io/lab-org/small:latest" quay.io/lab-org/small:latest small quay.io
  fi
fi

# ----------------------------------------------------------------- 4. dockerd
step "4. dockerd: daemon.json from client-config docker"
# dockerd counts every registry whose name resolves into 127.0.0.0/8 as
# insecure and then skips certificate verification; no setting undoes that.
# So, where it can, the test runs dockerd in a private mount namespace whose
# /etc/hosts lacks the mirror's name and whose DNS is off (nsswitch "files",
# resolv.conf pointing at 127.0.0.1 where nothing answers), and gives it a
# loopback CONNECT proxy that tunnels only $MIRROR to 127.0.0.1:$PT. dockerd
# then cannot resolve the name, treats the mirror as secure ("behind an HTTP
# proxy") and verifies it against /etc/docker/certs.d/<host:port>/ca.crt.
# Without namespaces it runs plainly (no verification; 4b is then a SKIP).
DOCKERD_OK=0; DOCKERD_MODE=""
DK="$W/docker"
DOCKER_BIN=$(command -v /usr/bin/docker || command -v docker || true)
if ! command -v dockerd >/dev/null 2>&1; then
  skipped "4 dockerd" "dockerd is not installed (apt package docker.io unavailable)"
elif [ -z "$DOCKER_BIN" ]; then
  skipped "4 dockerd" "no docker client"
elif ! over_budget "4 dockerd"; then
  mkdir -p "$DK/root" "$DK/exec" "$DK/client" "$DK/ns"
  # The generated files: daemon.json (used in place) and certs.d/<host:port>/ca.crt,
  # which dockerd reads only from /etc/docker/certs.d.
  DOCKER_CERT_DIR="/etc/docker/certs.d/$MIRROR"
  mkdir_tracked "$DOCKER_CERT_DIR"
  cp "$GEN/docker/certs.d/$MIRROR/ca.crt" "$DOCKER_CERT_DIR/ca.crt"
  # dockerd 20.10 hard-codes these (no flag moves them): its plugin socket
  # dir and its trust key
  track_new /run/docker; track_new /etc/docker/key.json
  EXTRA_LOGS+=("$LOGS/dockerd.log" "$LOGS/connect-proxy.log")
  DOCKERD_CONTAINERD=()     # our containerd if it runs, else dockerd starts its own
  [ "$CTR_OK" = 1 ] && DOCKERD_CONTAINERD=(--containerd "$SOCK")
  DOCKERD=(dockerd --config-file "$GEN/docker/daemon.json" --data-root "$DK/root" --exec-root "$DK/exec"
      --pidfile "$DK/dockerd.pid" -H "unix://$DK/docker.sock"
      --iptables=false --ip-masq=false --ip-forward=false --bridge=none --storage-driver=vfs
      --userland-proxy=false "${DOCKERD_CONTAINERD[@]}" --containerd-namespace mirrorgate-test-moby
      --containerd-plugins-namespace mirrorgate-test-moby-plugins)
  cp "$W/etc-hosts.orig" "$DK/ns/hosts"
  sed 's/^hosts:.*/hosts: files/' /etc/nsswitch.conf >"$DK/ns/nsswitch.conf"
  printf 'nameserver 127.0.0.1\noptions timeout:1 attempts:1\n' >"$DK/ns/resolv.conf"
  NS=(unshare --mount --propagation private sh -c 'mount --bind "$1" /etc/hosts &&
        mount --bind "$2" /etc/nsswitch.conf && mount --bind "$3" /etc/resolv.conf &&
        shift 3 && exec "$@"' ns "$DK/ns/hosts" "$DK/ns/nsswitch.conf" "$DK/ns/resolv.conf")
  if "${NS[@]}" sh -c '! getent hosts "$0"' "$MIRROR_HOST" >"$LOGS/unshare.log" 2>&1; then
    start_bg "$LOGS/connect-proxy.log" "$LOGS/connect-proxy.log" \
      python3 "$HERE/connect_proxy.py" --port-file "$DK/proxy.port" --allow "$MIRROR=$IP:$PT"
    wait_until 10 "$LAST_PID" test -s "$DK/proxy.port" || setup_failed "connect_proxy.py did not start" "$LOGS/connect-proxy.log"
    PROXY="http://$IP:$(cat "$DK/proxy.port")"
    DOCKERD_MODE=verify
    start_bg "$LOGS/dockerd.log" "$LOGS/dockerd.log" \
      env HTTPS_PROXY="$PROXY" HTTP_PROXY="$PROXY" NO_PROXY= "${NS[@]}" "${DOCKERD[@]}"
  else
    info "no private mount namespace ($(head -c 200 "$LOGS/unshare.log")): dockerd will not verify the mirror"
    DOCKERD_MODE=loopback
    start_bg "$LOGS/dockerd.log" "$LOGS/dockerd.log" \
      env HTTPS_PROXY="$DEAD_PROXY" HTTP_PROXY="$DEAD_PROXY" NO_PROXY="$MIRROR_HOST" "${DOCKERD[@]}"
  fi
  DOCKERD_PID=$LAST_PID
  DOCKER=(env DOCKER_CONFIG="$DK/client" "$DOCKER_BIN" -H "unix://$DK/docker.sock")
  if wait_until 40 "$DOCKERD_PID" "${DOCKER[@]}" version; then
    DOCKERD_OK=1
    info "dockerd $("${DOCKER[@]}" version --format '{{.Server.Version}}' 2>/dev/null) ($DOCKERD_MODE mode), mirrors: $("${DOCKER[@]}" info --format '{{json .RegistryConfig.Mirrors}}' 2>/dev/null)"
  elif kill -0 "$DOCKERD_PID" 2>/dev/null; then
    skipped "4 dockerd" "dockerd did not answer within 40s: $(grep -m1 -iE 'level=(error|fatal)' "$LOGS/dockerd.log" | cut -c1-200)"
  else
    skipped "4 dockerd" "dockerd cannot run here: $( { grep -iE 'level=(error|fatal)|failed' "$LOGS/dockerd.log" || grep -v '^$' "$LOGS/dockerd.log"; } | tail -n 1 | cut -c1-250)"
  fi
fi
docker_pull_check() { # NAME REPO:TAG IMAGE -> DOCKER_PULL_OK
  local name="$1" ref="$2" image="$3" want got log m repo why=""
  DOCKER_PULL_OK=0
  over_budget "$name" && return 0
  want=$(img ".\"$image\".digest"); log="$LOGS/docker-pull-$image.log"
  repo=${ref%:*}
  m=$(mark_log "$LOGS/mirrorgate.log")
  if ! timeout "$(cmd_timeout)" "${DOCKER[@]}" pull "$ref" >"$log" 2>&1; then
    FAILED_LOGS+=("$log"); bad "$name" "docker pull $ref failed: $(tail -n 2 "$log" | tr '\n' ' ' | cut -c1-400)"
    return 0
  fi
  got=$("${DOCKER[@]}" image inspect --format '{{range .RepoDigests}}{{.}} {{end}}' "$ref" 2>>"$log")
  [[ " $got" == *"@$want "* ]] || why+="RepoDigests '$got', want @$want; "
  # dockerd names no upstream (no ?ns=, no prefix): the mirror's default, docker.io, serves it.
  mirror_served "$m" "path=/v2/$repo/manifests/[^ ]* upstream=\"?docker.io" \
    || why+="the mirror logged no 200 for /v2/$repo/manifests/ on docker.io: dockerd did not use the mirror; "
  if [ -z "$why" ]; then DOCKER_PULL_OK=1; ok "$name (${want:0:19}…; the mirror's access log shows the pull)"
  else FAILED_LOGS+=("$log"); bad "$name" "$why"; fi
}
if [ "$DOCKERD_OK" = 1 ]; then
  docker_pull_check "4a docker pull library/small:latest through registry-mirrors ($DOCKERD_MODE)" library/small:latest small
  # Does dockerd check the mirror's certificate? Put another CA in certs.d
  # and pull another image: it must fail on the certificate, without a
  # request reaching the mirror.
  if [ "$DOCKER_PULL_OK" = 1 ] && ! over_budget "4b dockerd with another CA"; then
    cp "$OTHER_CA" "$DOCKER_CERT_DIR/ca.crt"
    log="$LOGS/docker-pull-wrong-ca.log"
    m=$(mark_log "$LOGS/mirrorgate.log"); md=$(mark_log "$LOGS/dockerd.log")
    if timeout "$(cmd_timeout)" "${DOCKER[@]}" pull library/alpine:3 >"$log" 2>&1; then
      if [ "$DOCKERD_MODE" = loopback ] && mirror_served "$m" 'path=/v2/library/alpine/manifests/'; then
        skipped "4b dockerd verifies the mirror's certificate" "dockerd pulled through the mirror with another CA installed: it does not verify registries on 127.0.0.0/8 ($("${DOCKER[@]}" info --format '{{json .RegistryConfig.InsecureRegistryCIDRs}}' 2>/dev/null | tr -d '\n')), and no mount namespace was available to hide that the name is local"
      else
        FAILED_LOGS+=("$log"); bad "4b dockerd rejects the mirror when trusting another CA" "the pull succeeded ($DOCKERD_MODE mode)"
      fi
    elif mirror_served "$m" 'path=/v2/library/alpine/'; then
      FAILED_LOGS+=("$log"); bad "4b dockerd rejects the mirror when trusting another CA" "the pull failed, but the mirror served requests for library/alpine"
    elif since "$LOGS/dockerd.log" "$md" | grep -qiE 'x509|certificate'; then
      ok "4b dockerd trusting another CA fails: $(since "$LOGS/dockerd.log" "$md" | grep -m1 -oiE 'x509: [a-z ]+' | head -n 1)"
    else
      FAILED_LOGS+=("$log"); bad "4b dockerd rejects another CA" "failed, but not on the certificate: $(tail -n 2 "$log" | tr '\n' ' ')"
    fi
    cp "$GEN/docker/certs.d/$MIRROR/ca.crt" "$DOCKER_CERT_DIR/ca.crt"
    docker_pull_check "4c docker pull library/alpine:3 with the generated CA back" library/alpine:3 alpine
  fi
  if [ "$DOCKERD_MODE" = verify ]; then
    info "CONNECT proxy: $(grep -c '^allow' "$LOGS/connect-proxy.log") tunnels to $MIRROR, refused: $(grep '^deny' "$LOGS/connect-proxy.log" | sort | uniq -c | tr '\n' ';' | cut -c1-200)"
  fi
fi

# ----------------------------------------------------------------- 5. the end
step "5. the mirror's store, host files restored"
search="$MIRROR_DATA/blobs"; [ -d "$search" ] || search="$MIRROR_DATA"
nfiles=0; corrupt=""
while IFS= read -r -d '' f; do
  nfiles=$((nfiles+1))
  [ "$(sha256_of "$f")" = "$(basename "$f")" ] || corrupt+=" ${f#"$MIRROR_DATA"/}"
done < <(find "$search" -type f -regextype posix-extended -regex '.*/[0-9a-f]{64}' -print0 2>/dev/null)
if [ -n "$corrupt" ]; then bad "5a store verified" "files not matching their digest:$corrupt"
elif [ "$nfiles" = 0 ]; then bad "5a store verified" "no 64-hex files under $search"
else ok "5a store verified: $nfiles files hash to their names"; fi
if mirror_dead; then bad "5b mirror alive" "$MIRROR_DEAD"; else ok "5b mirror alive after every client"; fi
if [ "${MIRROR_EXPECT_REDIRECT:-0}" = 1 ]; then
  n=$(count_lines 'cache="?redirect' "$LOGS/mirrorgate.log")
  if [ "$n" -gt 0 ]; then ok "5d $n cached blob GETs answered with a 307 to the store, and the clients followed them"
  else bad "5d redirects" "the mirror logged no cache=redirect response"; fi
fi
if [ -n "${MIRROR_STORAGE_TOML:-}" ]; then
  if "${MG[@]}" verify --config "$CONF/mirrorgate.toml" >"$LOGS/verify.log" 2>&1; then
    ok "5e the bucket verified: $(head -n 1 "$LOGS/verify.log")"
  else FAILED_LOGS+=("$LOGS/verify.log"); bad "5e the bucket verified" "$(tail -n 2 "$LOGS/verify.log" | tr '\n' ' ')"; fi
fi

restore_host    # stops dockerd first (it uses /run/docker and certs.d)
left=""
cmp -s /etc/hosts "$W/etc-hosts.orig" || left+="/etc/hosts differs from before the run; "
[ -z "$DOCKER_CERT_DIR" ] || [ ! -e "$DOCKER_CERT_DIR" ] || left+="$DOCKER_CERT_DIR still exists; "
if [ -z "$left" ]; then ok "5c /etc/hosts and /etc/docker restored"; else bad "5c host files restored" "$left"; fi

summary "TLS system test" || exit 1
