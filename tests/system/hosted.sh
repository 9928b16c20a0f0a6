#!/usr/bin/env bash
# mirrorgate hosted namespaces (the OCI push API) with real clients, on the
# filesystem store and then on S3 (SeaweedFS): one `mirrorgate serve` per
# backend, plain HTTP on 127.0.0.1, a `[[hosted]] name = "local"` namespace
# beside the docker.io/ghcr.io/quay.io stand-ins (CNCF distribution, as in
# run.sh), `[auth] htpasswd` with `anonymous = false`: user `ci` may push,
# user `reader` may only pull. Run as root:
#
#   bash tests/system/hosted.sh
#
# Each round (fs, then s3) checks:
#   1  skopeo copy dir: -> local/: Docker v2s2, OCI, an OCI index (--all), and
#      a 20 MiB layer (more than one S3 part); ctr pulls each back
#      (hosts.toml, --user): digest, unpacked chain ID; tags/list
#   2  podman push: an image from `podman pull dir:` (layers compressed by
#      podman: a real upload), and one pulled through the mirror and retagged
#      (layers mounted from docker.io/library/small); skopeo pulls them back
#   3  buildah from <the mirror's docker.io/library/alpine:3>, copy a file,
#      commit, push; skopeo pulls it back; alpine's layer is not uploaded
#   4  dockerd: docker pull through the mirror, docker build (legacy
#      builder, COPY only), docker push (only the new layer and the config
#      uploaded); docker pull of a skopeo-pushed image; that image retagged
#      and pushed: its layers mounted from local/app. skopeo pulls back.
#      SKIP when dockerd cannot run
#   5  ctr images import + ctr images push (--hosts-dir, --user), to the path
#      prefix and to a listener pinned to the namespace; skopeo pulls back
#   6  base-layer dedup: skopeo pulls alpine:3 through the mirror, then pushes
#      an image on top of it: the access log shows a HEAD 200 on alpine's
#      layer and uploads of only the new layer and the config
#   7  four concurrent skopeo pushes of images sharing every blob
#   8  curl: an index naming a manifest never pushed -> 400
#      MANIFEST_BLOB_UNKNOWN, no tag left; the same for an image manifest with
#      a missing layer; a hand-made index over pushed manifests -> 201
#   9  anonymous push refused (skopeo fails; POST, manifest PUT -> 401),
#      nothing created
#   10 `reader` (not in push = [...]) gets 403 on POST, manifest PUT, DELETE
#      and with skopeo, but pulls; a wrong password gets 401
#   12 skopeo delete: refused for reader; for ci the tag and the manifest go
#   11 (last) the mirror is alive, no panic in its log, `mirrorgate verify`
#      re-hashes the store
# Client logs and the mirror's log (with its access log) are in the work dir.
#
# Environment:
#   MIRRORGATE_BIN      mirror binary (default: <repo>/target/debug/mirrorgate)
#   KEEP_WORKDIR=1      keep the temp dir (configs, logs, data)
#   SYSTEM_TEST_BUDGET  seconds for both rounds (default 300); later checks
#                       fail as "not run"
#   HOSTED_ROUNDS       "fs s3" (default), or one of them
# Output: PASS:/FAIL:/SKIP: lines, then "N passed, M failed, K skipped".
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=lib.sh disable=SC2034  # lib.sh reads variables set here
. "$HERE/lib.sh"
BUDGET="${SYSTEM_TEST_BUDGET:-300}"
ROUNDS="${HOSTED_ROUNDS:-fs s3}"
DEAD_PROXY="http://127.0.0.1:9"   # nothing listens there
PUSHER=ci; PUSHER_PASS=cipass; READER=reader; READER_PASS=readerpass
CI="$PUSHER:$PUSHER_PASS"; RD="$READER:$READER_PASS"

# ----------------------------------------------------------------- host files
# dockerd 20.10 hard-codes /run/docker and /etc/docker/key.json: removed at
# exit when this script's dockerd created them (as tls.sh does).
CREATED_PATHS=()
track_new() { [ -e "$1" ] || CREATED_PATHS+=("$1"); }
host_files_restore() {
  local i p
  for ((i=${#CREATED_PATHS[@]}-1; i>=0; i--)); do
    p="${CREATED_PATHS[$i]}"
    if [ -d "$p" ] && [ ! -L "$p" ]; then rm -rf -- "$p"; else rm -f -- "$p"; fi
  done
  CREATED_PATHS=()
}
DOCKERD_PID=""
stop_dockerd() {
  [ -n "$DOCKERD_PID" ] || return 0
  kill -TERM "$DOCKERD_PID" 2>/dev/null || true
  for _ in $(seq 1 100); do kill -0 "$DOCKERD_PID" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$DOCKERD_PID" 2>/dev/null || true
  wait "$DOCKERD_PID" 2>/dev/null || true
  DOCKERD_PID=""
}
restore_host() { stop_dockerd; host_files_restore; }
CLEANUP_HOOKS+=(restore_host)

# ----------------------------------------------------------------- setup
step "dependencies"
bash "$HERE/install-deps.sh" --push || setup_failed "install-deps.sh --push failed"
make_workdir mirrorgate-hosted
echo "work dir: $W"
read -r HUB_PORT GHCR_PORT QUAY_PORT P_FS P_S3 PIN_FS PIN_S3 <<<"$(free_ports 7)"
echo "ports: hub=$HUB_PORT ghcr=$GHCR_PORT quay=$QUAY_PORT mirror fs=$P_FS (pinned to local: $PIN_FS) s3=$P_S3 (pinned: $PIN_S3)"

step "upstream stand-ins: PKI, images, registries, seeding"
make_pki
make_images
start_upstreams
setup_skopeo
seed_upstreams
find_mirror_bin

# More images, in mkimages.py's dir: format and added to its summary (img):
#   podimg     fresh layers, for podman's own upload (it recompresses them)
#   ctrimg     fresh OCI image, for ctr's upload (oci-archive: holds OCI only)
#   nsimg      fresh OCI image, for ctr's upload to the pinned listener
#   big        one 20 MiB layer: an upload of more than one S3 part
#   conc       fresh layers, shared by conc (Docker v2s2) and conc-oci (OCI)
#   dedup      alpine's layer + one new layer, new config
python3 - "$LIB_DIR" "$W/images" >"$LOGS/mkextra.log" 2>&1 <<'EOF' || setup_failed "extra images" "$LOGS/mkextra.log"
import json, os, random, sys
sys.path.insert(0, sys.argv[1])
import mkimages as mk
out = sys.argv[2]
summary = json.load(open(os.path.join(out, "images.json")))
K = mk.KiB
amd64 = mk.Platform("amd64")
rng = lambda n: random.Random("hosted.sh/%s" % n)
summary["podimg"] = mk.single(os.path.join(out, "podimg"), mk.ImageContent(rng("podimg"), "podimg", amd64, [300 * K, 200 * K]), False)
summary["ctrimg"] = mk.single(os.path.join(out, "ctrimg"), mk.ImageContent(rng("ctrimg"), "ctrimg", amd64, [400 * K]), True)
summary["nsimg"] = mk.single(os.path.join(out, "nsimg"), mk.ImageContent(rng("nsimg"), "nsimg", amd64, [200 * K, 100 * K]), True)
conc = mk.ImageContent(rng("conc"), "conc", amd64, [512 * K, 512 * K, 256 * K])
# one 20 MiB layer (level 1, random: about as big gzip'd): more than one S3 part (8 MiB)
summary["big"] = mk.single(os.path.join(out, "big"), mk.ImageContent(rng("big"), "big", amd64, [20 * 1024 * K], level=1), False)
summary["conc"] = mk.single(os.path.join(out, "conc"), conc, False)
summary["conc-oci"] = mk.single(os.path.join(out, "conc-oci"), conc, True)
# alpine exactly as mkimages.py made it (default seed), plus a new layer
base = mk.ImageContent(random.Random("%d/%s" % (20240601, "alpine")), "alpine", amd64, [192 * K])
assert base.layers[0].digest == summary["alpine"]["layers"][0], "alpine's layer differs from mkimages.py's"
new = mk.ImageContent(rng("dedup"), "dedup", amd64, [96 * K])
cfg = json.loads(base.config.data)
ncfg = json.loads(new.config.data)
cfg["rootfs"]["diff_ids"] += ncfg["rootfs"]["diff_ids"]
cfg["history"] += ncfg["history"]
cfg["config"]["Labels"] = {"org.mirrorgate.test": "dedup"}
d = mk.ImageContent.__new__(mk.ImageContent)
d.name, d.platform = "dedup", amd64
d.layers = base.layers + new.layers
d.config = mk.Blob(mk.jbytes(cfg), mk.MT_DOCKER_CONFIG)
summary["dedup"] = mk.single(os.path.join(out, "dedup"), d, False)
mk.write_file(os.path.join(out, "images.json"), (json.dumps(summary, indent=2, sort_keys=True) + "\n").encode())
EOF
info "extra images: $(jq -c '{podimg, ctrimg, nsimg, big, conc, "conc-oci", dedup} | map_values(.digest[7:19])' "$IMAGES")"
diff_ids() { jq -c '.rootfs.diff_ids' "$1"; }   # CONFIG_FILE -> JSON array
src_diff_ids() { diff_ids "$W/images/$1/$(img ".\"$1\".config" | cut -c8-)"; }

# the mirror's users: ci pushes, reader only pulls
htpasswd -Bbc "$CONF/users.htpasswd" "$PUSHER" "$PUSHER_PASS" >/dev/null 2>&1 \
  && htpasswd -Bb "$CONF/users.htpasswd" "$READER" "$READER_PASS" >/dev/null 2>&1 \
  || setup_failed "htpasswd for the mirror's users"

if [[ " $ROUNDS " == *" s3 "* ]]; then start_weed "$W/weed"; fi
start_containerd "containerd"
CTR_AUTH=(--user "$RD")

# podman and buildah: private storage per round, nothing from the host's
# containers config, a dead proxy for anything but 127.0.0.1.
printf '[engine]\nevents_logger = "none"\ncgroup_manager = "cgroupfs"\n' >"$CONF/containers.conf"
PODMAN_OK=0; BUILDAH_OK=0; DOCKERD_AVAILABLE=0
command -v podman >/dev/null 2>&1 && PODMAN_OK=1
command -v buildah >/dev/null 2>&1 && BUILDAH_OK=1
DOCKER_BIN=$(command -v /usr/bin/docker || command -v docker || true)
command -v dockerd >/dev/null 2>&1 && [ -n "$DOCKER_BIN" ] && DOCKERD_AVAILABLE=1
CONTAINERS_ENV=(env CONTAINERS_REGISTRIES_CONF="$CONF/registries.conf" CONTAINERS_CONF="$CONF/containers.conf"
                REGISTRY_AUTH_FILE="$CONF/auth.json" HTTPS_PROXY="$DEAD_PROXY" HTTP_PROXY="$DEAD_PROXY"
                NO_PROXY="127.0.0.1")

# docker build context: one new file on top of the mirror's alpine
mkdir -p "$W/dctx"
head -c $((80*1024)) /dev/urandom >"$W/dctx/payload.bin"

# ----------------------------------------------------------------- helpers
MG_LOG=""                                    # the current round's mirror log
mark() { wc -l <"$MG_LOG"; }                 # -> current line count
since() { tail -n +"$(($1+1))" "$MG_LOG"; }  # MARK -> lines added since
access_since() { since "$1" | grep -F 'mirrorgate::access' || true; }
logged() { access_since "$1" | grep -qE "$2"; }
wait_logged() { wait_until 10 "$MIRROR_PID" logged "$1" "$2" || true; }  # the log line follows the answer
# Upload requests (POST/PATCH/PUT on blobs/uploads) for local/REPO since MARK.
uploads_since() { access_since "$1" | grep -E "method=(POST|PATCH|PUT) path=/v2/local/$2/blobs/uploads/" || true; }
# The digests committed into local/REPO (201 on a ?digest= PUT or POST), sorted.
committed() {
  uploads_since "$1" "$2" | grep -E 'status=201' | grep -oE '[?&]digest=sha256(:|%3[Aa])[0-9a-f]{64}' \
    | sed -E 's/.*(:|%3[Aa])/sha256:/' | sort -u
}
uploads_summary() { # MARK REPO -> "N POST, N PATCH, N PUT, N mount"
  local u; u=$(uploads_since "$1" "$2")
  printf '%s POST, %s PATCH, %s PUT, %s mounts' "$(grep -c 'method=POST' <<<"$u" || true)" \
    "$(grep -c 'method=PATCH' <<<"$u" || true)" "$(grep -c 'method=PUT' <<<"$u" || true)" \
    "$(grep -E 'method=POST' <<<"$u" | grep -c 'mount=' || true)"
}
short() { tr '\n' ' ' | cut -c1-"${1:-500}"; }
errtail() { grep -vE '^(Copying|Writing|Storing|Getting|Getting image source)' "$1" | tail -n "${2:-3}" | short 600; }
sorted_lines() { printf '%s\n' "$@" | grep -v '^$' | sort -u; }

OUTN=0
# skopeo copy dir:W/images/IMAGE -> docker://REG/REF as CREDS: PUSH_DIGEST
skopeo_push() { # LOG IMAGE REF CREDS|- [--all]
  local log="$1" image="$2" ref="$3" creds="$4" extra=() cflags=()
  [ "${5:-}" = --all ] && extra=(--all)
  [ "$creds" != - ] && cflags=(--dest-creds "$creds")
  PUSH_DIGEST=""
  echo "skopeo copy ${extra[*]} dir:$W/images/$image docker://$REG/$ref" >"$log"
  timeout "$(cmd_timeout)" "${SKOPEO[@]}" copy "${extra[@]}" --dest-tls-verify=false "${cflags[@]}" \
    --digestfile "$log.digest" "dir:$W/images/$image" "docker://$REG/$ref" >>"$log" 2>&1 || return 1
  PUSH_DIGEST=$(cat "$log.digest")
}
# skopeo copy docker://REG/REF -> dir:OUT as reader: PULLED (the manifest's digest)
skopeo_pull() { # REF OUT [--all]
  local ref="$1" out="$2" extra=()
  [ "${3:-}" = --all ] && extra=(--all)
  PULLED=""
  rm -rf "$out"
  echo "skopeo copy ${extra[*]} docker://$REG/$ref dir:$out" >"$out.log"
  timeout "$(cmd_timeout)" "${SKOPEO[@]}" copy "${extra[@]}" --src-tls-verify=false --src-creds "$RD" \
    "docker://$REG/$ref" "dir:$out" >>"$out.log" 2>&1 || return 1
  PULLED="sha256:$(sha256_of "$out/manifest.json")"
}
# Pulls REF back with skopeo and compares: the manifest digest with WANT,
# every blob with its name. Sets WHY (empty when fine) and OUT.
pull_back() { # REF WANT_DIGEST
  OUTN=$((OUTN+1)); OUT="$W/out/$ROUND-$OUTN"; WHY=""
  if ! skopeo_pull "$1" "$OUT"; then
    FAILED_LOGS+=("$OUT.log"); WHY="skopeo pull-back of $1 failed: $(errtail "$OUT.log")"; return 0
  fi
  [ "$PULLED" = "$2" ] || WHY+="pulled back manifest $PULLED, pushed $2; "
  local v; v=$(verify_dir "$OUT") || WHY+="blob check: $(short 200 <<<"$v"); "
}
man_layers() { jq -r '.layers[].digest' "$1/manifest.json"; }
man_config() { jq -r '.config.digest' "$1/manifest.json"; }
cfg_file() { echo "$1/$(man_config "$1" | cut -c8-)"; }
curl_api() { # METHOD URL CREDS|- [curl args] -> "STATUS" ; body in W/curl.body, headers in W/curl.hdr
  local method="$1" url="$2" creds="$3" auth=(); shift 3
  [ "$creds" != - ] && auth=(-u "$creds")
  curl -sS --max-time 30 -X "$method" "${auth[@]}" -o "$W/curl.body" -D "$W/curl.hdr" -w '%{http_code}' "$@" "$url" 2>"$W/curl.err" || true
}
err_code() { jq -r '.errors[0].code // empty' "$W/curl.body" 2>/dev/null || true; }

# ----------------------------------------------------------------- a round
start_mirror() { # ROUND PORT PINNED_PORT
  local cfg="$CONF/mirrorgate-$1.toml"
  {
    cat <<EOF
# generated by tests/system/hosted.sh, round $1
[storage]
root = "$W/mirror-$1"

[auth]
htpasswd = "$CONF/users.htpasswd"
anonymous = false

[[listener]]
addr = "$IP:$2"

[[listener]]   # pinned to the hosted namespace: /v2/<repo>/... is local/<repo>
addr = "$IP:$3"
upstream = "local"

[[hosted]]
name = "local"
push = ["$PUSHER"]
anonymous_push = false
delete = true
upload_timeout = "1h"
gc_interval = "1h"

EOF
    upstreams_toml
    if [ "$1" = s3 ]; then printf '\n'; s3_table "hosted-$$" ""; fi
  } >"$cfg"
  MG_CONF="$cfg"
  MG_LOG="$LOGS/mirrorgate-$1.log"
  ln -sfn "mirrorgate-$1.log" "$LOGS/mirrorgate.log"   # lib.sh's mirror_dead and dump_logs read this name
  env HUB_PASSWORD="$HUB_PASS" "$BIN" check-config "$cfg" >"$LOGS/check-config-$1.log" 2>&1 \
    || setup_failed "mirrorgate check-config rejected $cfg" "$LOGS/check-config-$1.log"
  start_bg "$MG_LOG" "$MG_LOG" env HUB_PASSWORD="$HUB_PASS" RUST_LOG="${RUST_LOG:-info}" NO_COLOR=1 \
    "$BIN" serve --config "$cfg"
  MIRROR_PID=$LAST_PID; MIRROR_DEAD=""
  mirror_up() { [ "$(curl -s -o /dev/null -w '%{http_code}' -u "$RD" "http://$REG/v2/")" = 200 ]; }
  if ! wait_until 30 "$MIRROR_PID" mirror_up; then
    mirror_dead && setup_failed "$MIRROR_DEAD" "$MG_LOG"
    setup_failed "mirrorgate ($1) did not answer 200 on http://$REG/v2/ within 30s" "$MG_LOG"
  fi
  echo "mirrorgate ($1): pid $MIRROR_PID on $REG ($BIN)"
}
stop_mirror() {
  kill -TERM "$MIRROR_PID" 2>/dev/null || true
  wait_until 20 - sh -c "! kill -0 $MIRROR_PID" || kill -KILL "$MIRROR_PID" 2>/dev/null || true
  wait "$MIRROR_PID" 2>/dev/null || true
  MIRROR_PID=""
}

# 1 ------------------------------------------------------------------------
check_1() {
  local name ref image all log
  step "$ROUND 1. skopeo pushes v2s2, OCI, an OCI index; ctr pulls them back"
  for spec in "1a small local/app:v1" "1b small-oci local/app:oci" "1c multi-oci local/multi:oci --all" "1d big local/big:v1"; do
    read -r name image ref all <<<"$spec"
    over_budget "$R $name skopeo push $image" && continue
    log="$LOGS/$ROUND-push-$name.log"
    if ! skopeo_push "$log" "$image" "$ref" "$CI" "$all"; then
      FAILED_LOGS+=("$log"); bad "$R $name skopeo copy ${all:+--all }dir:$image -> $ref" "$(errtail "$log")"; continue
    fi
    if [ "$PUSH_DIGEST" = "$(img ".\"$image\".digest")" ]; then
      ok "$R $name skopeo copy ${all:+--all }dir:$image -> $REG/$ref ($(img ".\"$image\".mediaType" | sed 's/.*\.//'), ${PUSH_DIGEST:0:19}…)"
    else
      bad "$R $name skopeo copy dir:$image -> $ref" "the push reported $PUSH_DIGEST, the source is $(img ".\"$image\".digest")"
    fi
    local cfg; cfg=$(img ".\"$image\" | .config // .instances.\"linux/amd64\".config")
    ctr_check "$R $name ctr pulls back $REG/$ref" "$REG/$ref" "$image" "$cfg"
  done
  over_budget "$R 1e tags/list" && return 0
  local code; code=$(curl_api GET "http://$REG/v2/local/app/tags/list" "$RD")
  if [ "$code" = 200 ] && [ "$(jq -c '.tags | sort' "$W/curl.body")" = '["oci","v1"]' ]; then
    ok "$R 1e GET /v2/local/app/tags/list as reader: $(jq -c . "$W/curl.body")"
  else bad "$R 1e tags/list" "status $code: $(short 300 <"$W/curl.body")"; fi
  return 0
}

# 2 ------------------------------------------------------------------------
check_2() {
  step "$ROUND 2. podman push"
  if [ "$PODMAN_OK" = 0 ]; then skipped "$R 2 podman" "podman is not installed"; return 0; fi
  local PD="$W/podman-$ROUND"; mkdir -p "$PD/tmp"
  printf '[storage]\ndriver = "vfs"\nrunroot = "%s/run"\ngraphroot = "%s/root"\n' "$PD" "$PD" >"$PD/storage.conf"
  PODMAN=("${CONTAINERS_ENV[@]}" CONTAINERS_STORAGE_CONF="$PD/storage.conf"
          podman --root "$PD/root" --runroot "$PD/run" --storage-driver vfs --cgroup-manager cgroupfs
          --events-backend none --tmpdir "$PD/tmp")
  if ! "${PODMAN[@]}" info >"$LOGS/podman-info.log" 2>&1; then
    skipped "$R 2 podman" "podman does not run here: $(grep -m1 -iE 'error' "$LOGS/podman-info.log" | cut -c1-200)"
    return 0
  fi
  local log id m why
  # 2a: a local image (from dir:), whose layers podman compresses itself
  if ! over_budget "$R 2a podman push"; then
    log="$LOGS/$ROUND-podman-2a.log"
    if ! id=$(timeout "$(cmd_timeout)" "${PODMAN[@]}" pull -q --signature-policy "$CONF/policy.json" \
          "dir:$W/images/podimg" 2>"$log"); then
      FAILED_LOGS+=("$log"); bad "$R 2a podman pull dir:podimg" "$(errtail "$log")"
    else
      m=$(mark)
      if ! timeout "$(cmd_timeout)" "${PODMAN[@]}" push --tls-verify=false --creds "$CI" \
           --signature-policy "$CONF/policy.json" --digestfile "$log.digest" \
           "$id" "docker://$REG/local/podapp:v1" >>"$log" 2>&1; then
        FAILED_LOGS+=("$log"); bad "$R 2a podman push -> local/podapp:v1" "$(errtail "$log")"
      else
        local d; d=$(cat "$log.digest")
        pull_back local/podapp:v1 "$d"; why="$WHY"
        if [ -z "$WHY" ]; then
          [ "$(diff_ids "$(cfg_file "$OUT")")" = "$(src_diff_ids podimg)" ] || why+="diff_ids differ from the source image's; "
        fi
        if [ -z "$why" ]; then
          ok "$R 2a podman push of a dir: image -> local/podapp:v1 (${d:0:19}…), skopeo pulls it back, same diff_ids [$(uploads_summary "$m" podapp)]"
        else bad "$R 2a podman push -> local/podapp:v1" "$why"; fi
      fi
    fi
  fi
  # 2b: an image podman pulled through the mirror, retagged into local/
  if ! over_budget "$R 2b podman pull + push"; then
    log="$LOGS/$ROUND-podman-2b.log"
    local src="$REG/docker.io/library/small:latest"
    if ! timeout "$(cmd_timeout)" "${PODMAN[@]}" pull --tls-verify=false --creds "$RD" \
         --signature-policy "$CONF/policy.json" "$src" >"$log" 2>&1; then
      FAILED_LOGS+=("$log"); bad "$R 2b podman pull $src" "$(errtail "$log")"; return 0
    fi
    m=$(mark)
    if ! timeout "$(cmd_timeout)" "${PODMAN[@]}" push --tls-verify=false --creds "$CI" \
         --signature-policy "$CONF/policy.json" --digestfile "$log.digest" \
         "$src" "docker://$REG/local/podsmall:v1" >>"$log" 2>&1; then
      FAILED_LOGS+=("$log"); bad "$R 2b podman push $src -> local/podsmall:v1" "$(errtail "$log")"; return 0
    fi
    local d; d=$(cat "$log.digest")
    wait_logged "$m" 'method=PUT path=/v2/local/podsmall/manifests/'
    pull_back local/podsmall:v1 "$d"; why="$WHY"
    if [ -z "$WHY" ]; then
      [ "$(man_layers "$OUT" | tr '\n' ' ')" = "$(img '.small.layers | join(" ")') " ] \
        || why+="layers $(man_layers "$OUT" | cut -c8-19 | tr '\n' ' ') are not small's (recompressed?); "
      local up; up=$(committed "$m" podsmall | grep -Fxf <(img '.small.layers[]') || true)
      [ -z "$up" ] || why+="small's layers were uploaded again: $(short 200 <<<"$up"); "
    fi
    if [ -z "$why" ]; then
      ok "$R 2b podman pull $src, push -> local/podsmall:v1 (${d:0:19}…$([ "$d" = "$(img .small.digest)" ] && echo ", the source's digest")), layers not uploaded again [$(uploads_summary "$m" podsmall)]"
    else FAILED_LOGS+=("$log"); bad "$R 2b podman push of a mirrored image" "$why"; fi
  fi
  return 0
}

# 3 ------------------------------------------------------------------------
check_3() {
  step "$ROUND 3. buildah from the mirror's alpine, copy, commit, push"
  if [ "$BUILDAH_OK" = 0 ]; then skipped "$R 3 buildah" "buildah is not installed"; return 0; fi
  over_budget "$R 3 buildah" && return 0
  local BD="$W/buildah-$ROUND" log="$LOGS/$ROUND-buildah.log" m d why ctr_name
  mkdir -p "$BD/tmp"
  printf '[storage]\ndriver = "vfs"\nrunroot = "%s/run"\ngraphroot = "%s/root"\n' "$BD" "$BD" >"$BD/storage.conf"
  local BUILDAH=("${CONTAINERS_ENV[@]}" CONTAINERS_STORAGE_CONF="$BD/storage.conf" TMPDIR="$BD/tmp"
                 buildah --root "$BD/root" --runroot "$BD/run" --storage-driver vfs)
  echo "hello from buildah ($ROUND)" >"$BD/hello.txt"
  local src="$REG/docker.io/library/alpine:3"
  if ! ctr_name=$(timeout "$(cmd_timeout)" "${BUILDAH[@]}" from --tls-verify=false --creds "$RD" \
        --signature-policy "$CONF/policy.json" --pull-always -q "$src" 2>"$log"); then
    FAILED_LOGS+=("$log"); bad "$R 3 buildah from $src" "$(errtail "$log")"; return 0
  fi
  if ! { timeout "$(cmd_timeout)" "${BUILDAH[@]}" copy "$ctr_name" "$BD/hello.txt" /hello.txt &&
         timeout "$(cmd_timeout)" "${BUILDAH[@]}" config --label org.mirrorgate.test=buildah "$ctr_name" &&
         timeout "$(cmd_timeout)" "${BUILDAH[@]}" commit --signature-policy "$CONF/policy.json" "$ctr_name" localhost/bapp:v1; } >>"$log" 2>&1; then
    FAILED_LOGS+=("$log"); bad "$R 3 buildah copy/commit" "$(errtail "$log")"; return 0
  fi
  m=$(mark)
  if ! timeout "$(cmd_timeout)" "${BUILDAH[@]}" push --tls-verify=false --creds "$CI" \
       --signature-policy "$CONF/policy.json" --digestfile "$log.digest" \
       localhost/bapp:v1 "docker://$REG/local/bapp:v1" >>"$log" 2>&1; then
    FAILED_LOGS+=("$log"); bad "$R 3 buildah push -> local/bapp:v1" "$(errtail "$log")"; return 0
  fi
  d=$(cat "$log.digest")
  wait_logged "$m" 'method=PUT path=/v2/local/bapp/manifests/'
  pull_back local/bapp:v1 "$d"; why="$WHY"
  if [ -n "$WHY" ]; then bad "$R 3 buildah push -> local/bapp:v1" "$why"; return 0; fi
  local alpine_layer; alpine_layer=$(img '.alpine.layers[0]')
  local layers; layers=$(man_layers "$OUT")
  [ "$(head -n 1 <<<"$layers")" = "$alpine_layer" ] || why+="first layer $(head -n 1 <<<"$layers"), not alpine's $alpine_layer; "
  [ "$(wc -l <<<"$layers")" = 2 ] || why+="$(wc -l <<<"$layers") layers, want 2; "
  [ "$(jq -r '.rootfs.diff_ids[0]' "$(cfg_file "$OUT")")" = "$(src_diff_ids alpine | jq -r '.[0]')" ] || why+="diff_ids[0] is not alpine's; "
  # only the new layer and the config were uploaded
  local want got
  want=$(sorted_lines "$(man_config "$OUT")" "$(tail -n +2 <<<"$layers")")
  got=$(committed "$m" bapp)
  [ "$got" = "$want" ] || why+="uploads committed [$(short 300 <<<"$got")], want the new layer and config [$(short 300 <<<"$want")]; "
  local how="HEAD 200"
  if logged "$m" "method=POST path=/v2/local/bapp/blobs/uploads/\\?[^ ]*mount=sha256(:|%3[Aa])${alpine_layer#sha256:}[^ ]* .*status=201"; then how="mounted from the mirror"
  elif ! logged "$m" "method=HEAD path=/v2/local/bapp/blobs/$alpine_layer .*status=200"; then how="neither a 200 HEAD nor a 201 mount logged"; fi
  if [ -z "$why" ]; then
    ok "$R 3 buildah from $src + copy + commit + push -> local/bapp:v1 (${d:0:19}…); skopeo pulls it back; alpine's layer reused ($how), only the new layer and config uploaded [$(uploads_summary "$m" bapp)]"
  else FAILED_LOGS+=("$log"); bad "$R 3 buildah push -> local/bapp:v1" "$why"; fi
  return 0
}

# 4 ------------------------------------------------------------------------
check_4() {
  step "$ROUND 4. dockerd: pull through the mirror, build, push"
  if [ "$DOCKERD_AVAILABLE" = 0 ]; then skipped "$R 4 dockerd" "dockerd or the docker client is not installed (apt package docker.io unavailable)"; return 0; fi
  over_budget "$R 4 dockerd" && return 0
  local DK="$W/docker-$ROUND"
  mkdir -p "$DK/root" "$DK/exec" "$DK/client"
  printf '{"insecure-registries": ["%s"]}\n' "$REG" >"$DK/daemon.json"
  track_new /run/docker; track_new /etc/docker/key.json
  EXTRA_LOGS+=("$LOGS/$ROUND-dockerd.log")
  local ctrd=()
  [ "$CTR_OK" = 1 ] && ctrd=(--containerd "$SOCK")
  start_bg "$LOGS/$ROUND-dockerd.log" "$LOGS/$ROUND-dockerd.log" \
    env HTTPS_PROXY="$DEAD_PROXY" HTTP_PROXY="$DEAD_PROXY" NO_PROXY="127.0.0.1" \
    dockerd --config-file "$DK/daemon.json" --data-root "$DK/root" --exec-root "$DK/exec" \
      --pidfile "$DK/dockerd.pid" -H "unix://$DK/docker.sock" \
      --iptables=false --ip-masq=false --ip-forward=false --bridge=none --storage-driver=vfs \
      --userland-proxy=false "${ctrd[@]}" --containerd-namespace mirrorgate-test-moby \
      --containerd-plugins-namespace mirrorgate-test-moby-plugins
  DOCKERD_PID=$LAST_PID
  DOCKER=(env DOCKER_CONFIG="$DK/client" DOCKER_BUILDKIT=0 "$DOCKER_BIN" -H "unix://$DK/docker.sock")
  if ! wait_until 40 "$DOCKERD_PID" "${DOCKER[@]}" version; then
    if kill -0 "$DOCKERD_PID" 2>/dev/null; then
      skipped "$R 4 dockerd" "dockerd did not answer within 40s: $(grep -m1 -iE 'level=(error|fatal)' "$LOGS/$ROUND-dockerd.log" | cut -c1-200)"
    else
      skipped "$R 4 dockerd" "dockerd cannot run here: $( { grep -iE 'level=(error|fatal)|failed' "$LOGS/$ROUND-dockerd.log" || grep -v '^$' "$LOGS/$ROUND-dockerd.log"; } | tail -n 1 | cut -c1-250)"
    fi
    stop_dockerd; return 0
  fi
  info "dockerd $("${DOCKER[@]}" version --format '{{.Server.Version}}' 2>/dev/null), insecure: $("${DOCKER[@]}" info --format '{{json .RegistryConfig.IndexConfigs}}' 2>/dev/null | jq -c "[.[] | select(.Secure == false) | .Name]" 2>/dev/null)"
  local log="$LOGS/$ROUND-docker.log" m d why src="$REG/docker.io/library/alpine:3" tag="$REG/local/dapp:v1"
  # 4a: login, pull through the mirror, build, push
  if ! printf '%s' "$PUSHER_PASS" | timeout "$(cmd_timeout)" "${DOCKER[@]}" login -u "$PUSHER" --password-stdin "$REG" >"$log" 2>&1; then
    FAILED_LOGS+=("$log"); bad "$R 4a docker login $REG" "$(errtail "$log")"; stop_dockerd; return 0
  fi
  if ! timeout "$(cmd_timeout)" "${DOCKER[@]}" pull "$src" >>"$log" 2>&1; then
    FAILED_LOGS+=("$log"); bad "$R 4a docker pull $src" "$(errtail "$log")"; stop_dockerd; return 0
  fi
  printf 'FROM %s\nCOPY payload.bin /payload.bin\nLABEL org.mirrorgate.test=docker\n' "$src" >"$W/dctx/Dockerfile"
  if ! timeout "$(cmd_timeout)" "${DOCKER[@]}" build -t "$tag" "$W/dctx" >>"$log" 2>&1; then
    FAILED_LOGS+=("$log"); bad "$R 4a docker build (FROM the mirror's alpine, COPY)" "$(errtail "$log")"; stop_dockerd; return 0
  fi
  m=$(mark)
  if ! timeout "$(cmd_timeout)" "${DOCKER[@]}" push "$tag" >"$log.push" 2>&1; then
    cat "$log.push" >>"$log"; FAILED_LOGS+=("$log"); bad "$R 4a docker push $tag" "$(errtail "$log.push")"
  else
    cat "$log.push" >>"$log"
    d=$(grep -oE 'digest: sha256:[0-9a-f]{64}' "$log.push" | tail -n 1 | cut -d' ' -f2)
    wait_logged "$m" 'method=PUT path=/v2/local/dapp/manifests/'
    pull_back local/dapp:v1 "$d"; why="$WHY"
    local alpine_layer; alpine_layer=$(img '.alpine.layers[0]')
    if [ -z "$WHY" ]; then
      local layers; layers=$(man_layers "$OUT")
      [ "$(head -n 1 <<<"$layers")" = "$alpine_layer" ] || why+="first layer is not alpine's; "
      [ "$("${DOCKER[@]}" image inspect --format '{{.Id}}' "$tag" 2>/dev/null)" = "$(man_config "$OUT")" ] \
        || why+="the pulled config is not the built image's ID; "
      local want got
      want=$(sorted_lines "$(man_config "$OUT")" "$(tail -n +2 <<<"$layers")")
      got=$(committed "$m" dapp)
      [ "$got" = "$want" ] || why+="uploads committed [$(short 300 <<<"$got")], want the new layer and config [$(short 300 <<<"$want")]; "
    fi
    if [ -z "$why" ]; then
      ok "$R 4a docker pull $src, build, push $tag (${d:0:19}…; \"$(grep -m1 -oE 'Mounted from [^ ]+|Layer already exists' "$log.push" || echo 'uploaded')\" for alpine's layer); skopeo pulls it back [$(uploads_summary "$m" dapp)]"
    else bad "$R 4a docker push $tag" "$why"; fi
  fi
  # 4b: docker pulls what skopeo pushed (1a)
  if ! over_budget "$R 4b docker pull local/app:v1"; then
    local ref="$REG/local/app:v1"
    if ! timeout "$(cmd_timeout)" "${DOCKER[@]}" pull "$ref" >>"$log" 2>&1; then
      FAILED_LOGS+=("$log"); bad "$R 4b docker pull $ref" "$(errtail "$log")"
    else
      local rd; rd=$("${DOCKER[@]}" image inspect --format '{{range .RepoDigests}}{{.}} {{end}}' "$ref" 2>/dev/null)
      if [[ " $rd" == *"@$(img .small.digest) "* ]]; then ok "$R 4b docker pull $ref (pushed by skopeo): RepoDigests @$(img .small.digest | cut -c1-19)…"
      else bad "$R 4b docker pull $ref" "RepoDigests '$rd', want @$(img .small.digest)"; fi
      # 4c: retag into another repository and push: docker mounts every
      # layer from local/app (a hosted-to-hosted mount), uploads only the config
      if ! over_budget "$R 4c docker push by mounts"; then
        local copy="$REG/local/dcopy:v1"
        m=$(mark)
        if ! { "${DOCKER[@]}" tag "$ref" "$copy" && timeout "$(cmd_timeout)" "${DOCKER[@]}" push "$copy"; } >"$log.push2" 2>&1; then
          cat "$log.push2" >>"$log"; FAILED_LOGS+=("$log"); bad "$R 4c docker push $copy" "$(errtail "$log.push2")"
        else
          cat "$log.push2" >>"$log"
          d=$(grep -oE 'digest: sha256:[0-9a-f]{64}' "$log.push2" | tail -n 1 | cut -d' ' -f2)
          wait_logged "$m" 'method=PUT path=/v2/local/dcopy/manifests/'
          pull_back local/dcopy:v1 "$d"; why="$WHY"
          if [ -z "$WHY" ]; then
            [ "$(man_layers "$OUT" | tr '\n' ' ')" = "$(img '.small.layers | join(" ")') " ] || why+="layers are not small's; "
            # docker uploads the config (it mounts only layers)
            local got; got=$(committed "$m" dcopy | grep -vxF "$(man_config "$OUT")" || true)
            [ -z "$got" ] || why+="layers were uploaded, not mounted: $(short 300 <<<"$got"); "
          fi
          local mounted; mounted=$(grep -c 'Mounted from local/app' "$log.push2" || true)
          if [ -z "$why" ]; then ok "$R 4c docker tag + push $copy: $mounted layers \"Mounted from local/app\", only the config uploaded [$(uploads_summary "$m" dcopy)]; skopeo pulls it back (${d:0:19}…)"
          else bad "$R 4c docker push $copy" "$why"; fi
        fi
      fi
    fi
  fi
  stop_dockerd
  return 0
}

# 5 ------------------------------------------------------------------------
check_5() {
  step "$ROUND 5. ctr images import + push"
  [ "$CTR_OK" = 1 ] || { bad "$R 5 ctr push" "no containerd"; return 0; }
  over_budget "$R 5 ctr push" && return 0
  local log="$LOGS/$ROUND-ctr-push.log" arch="$W/ctrimg-$ROUND.tar" ref="$REG/local/ctrapp:v1" m
  if ! { timeout "$(cmd_timeout)" "${SKOPEO[@]}" copy "dir:$W/images/ctrimg" "oci-archive:$arch:v1" &&
         timeout "$(cmd_timeout)" "${CTR[@]}" images import --base-name "$REG/local/ctrapp" --no-unpack "$arch"; } >"$log" 2>&1; then
    FAILED_LOGS+=("$log"); bad "$R 5 ctr images import" "$(errtail "$log")"; return 0
  fi
  local have; have=$(ctrq images ls 2>/dev/null | awk -v r="$ref" '$1==r{print $3}')
  [ "$have" = "$(img .ctrimg.digest)" ] || { FAILED_LOGS+=("$log"); bad "$R 5 ctr images import" "imported '$have' as $ref, want $(img .ctrimg.digest)"; return 0; }
  m=$(mark)
  if ! timeout "$(cmd_timeout)" "${CTR[@]}" images push --hosts-dir "$HOSTS" --user "$CI" "$ref" >>"$log" 2>&1; then
    FAILED_LOGS+=("$log"); bad "$R 5 ctr images push $ref" "$(errtail "$log")"; return 0
  fi
  wait_logged "$m" 'method=PUT path=/v2/local/ctrapp/manifests/'
  pull_back local/ctrapp:v1 "$(img .ctrimg.digest)"; local why="$WHY"
  if [ -z "$WHY" ] && ! diff -rq "$W/images/ctrimg" "$OUT" >/dev/null 2>&1; then why+="differs from the source image; "; fi
  local want got
  want=$(sorted_lines "$(img .ctrimg.config)" "$(img '.ctrimg.layers[]')")
  got=$(committed "$m" ctrapp)
  [ "$got" = "$want" ] || why+="uploads committed [$(short 300 <<<"$got")], want config + layer; "
  if [ -z "$why" ]; then ok "$R 5a ctr images push --hosts-dir --user ci $ref; skopeo pulls back the same bytes (${PULLED:0:19}…) [$(uploads_summary "$m" ctrapp)]"
  else FAILED_LOGS+=("$log"); bad "$R 5a ctr images push $ref" "$why"; fi
  # 5b: another image pushed to the listener pinned to local (no prefix in
  # the path); the Locations must stay on that listener's path shape.
  over_budget "$R 5b ctr push to the pinned listener" && return 0
  local nref="$PINNED/ctrns:v1"
  arch="$W/nsimg-$ROUND.tar"
  if ! { timeout "$(cmd_timeout)" "${SKOPEO[@]}" copy "dir:$W/images/nsimg" "oci-archive:$arch:v1" &&
         timeout "$(cmd_timeout)" "${CTR[@]}" images import --base-name "$PINNED/ctrns" --no-unpack "$arch"; } >>"$log" 2>&1; then
    FAILED_LOGS+=("$log"); bad "$R 5b ctr images import nsimg" "$(errtail "$log")"; return 0
  fi
  m=$(mark)
  if ! timeout "$(cmd_timeout)" "${CTR[@]}" images push --hosts-dir "$HOSTS" --user "$CI" "$nref" >>"$log" 2>&1; then
    FAILED_LOGS+=("$log"); bad "$R 5b ctr images push $nref (pinned listener)" "$(errtail "$log")"; return 0
  fi
  wait_logged "$m" 'method=PUT path=/v2/ctrns/manifests/'
  why=""
  logged "$m" "method=PUT path=/v2/ctrns/manifests/v1 upstream=\"local\" status=201" \
    || why+="no 201 for PUT /v2/ctrns/manifests/v1 on local in the access log: $(access_since "$m" | grep -F 'manifests' | short 300); "
  got=$(access_since "$m" | grep -E "method=(POST|PATCH|PUT) path=/v2/ctrns/blobs/uploads/" | grep -E 'status=201' \
    | grep -oE '[?&]digest=sha256(:|%3[Aa])[0-9a-f]{64}' | sed -E 's/.*(:|%3[Aa])/sha256:/' | sort -u)
  want=$(sorted_lines "$(img .nsimg.config)" "$(img '.nsimg.layers[]')")
  [ "$got" = "$want" ] || why+="uploads committed on the pinned listener [$(short 300 <<<"$got")], want config + 2 layers; "
  pull_back local/ctrns:v1 "$(img .nsimg.digest)"; why+="$WHY"
  if [ -z "$why" ]; then ok "$R 5b ctr images push $nref (listener pinned to local): uploads and manifest in local/ctrns; skopeo pulls it back as $REG/local/ctrns:v1 [$(access_since "$m" | grep -E "path=/v2/ctrns/blobs/uploads/" | grep -cE 'method=(POST|PUT)' || true) POST/PUT]"
  else FAILED_LOGS+=("$log"); bad "$R 5b ctr images push $nref (pinned listener)" "$why"; fi
  return 0
}

# 6 ------------------------------------------------------------------------
check_6() {
  step "$ROUND 6. base-layer dedup: alpine through the mirror, then an image on it"
  over_budget "$R 6 dedup" && return 0
  OUTN=$((OUTN+1)); local out="$W/out/$ROUND-$OUTN-alpine"
  if ! skopeo_pull docker.io/library/alpine:3 "$out"; then
    FAILED_LOGS+=("$out.log"); bad "$R 6a skopeo pulls docker.io/library/alpine:3 through the mirror" "$(errtail "$out.log")"; return 0
  fi
  if [ "$PULLED" = "$(img .alpine.digest)" ]; then ok "$R 6a skopeo pulls docker.io/library/alpine:3 through the mirror (${PULLED:0:19}…)"
  else bad "$R 6a alpine through the mirror" "digest $PULLED, want $(img .alpine.digest)"; return 0; fi
  local m log="$LOGS/$ROUND-push-dedup.log" alpine_layer why=""
  alpine_layer=$(img '.alpine.layers[0]')
  m=$(mark)
  if ! skopeo_push "$log" dedup local/dedup:v1 "$CI"; then
    FAILED_LOGS+=("$log"); bad "$R 6b skopeo push of an image on alpine" "$(errtail "$log")"; return 0
  fi
  wait_logged "$m" 'method=PUT path=/v2/local/dedup/manifests/'
  local want got
  want=$(sorted_lines "$(img .dedup.config)" "$(img '.dedup.layers[1]')")
  got=$(committed "$m" dedup)
  [ "$got" = "$want" ] || why+="uploads committed [$(short 300 <<<"$got")], want only the new layer and config [$(short 300 <<<"$want")]; "
  local data; data=$(uploads_since "$m" dedup | grep -F "${alpine_layer#sha256:}" || true)
  [ -z "$data" ] || why+="an upload request names alpine's layer: $(short 300 <<<"$data"); "
  logged "$m" "method=HEAD path=/v2/local/dedup/blobs/$alpine_layer .*status=200" \
    || why+="no HEAD /v2/local/dedup/blobs/$alpine_layer answered 200: $(access_since "$m" | grep -F "blobs/$alpine_layer" | short 300); "
  local n_post; n_post=$(uploads_since "$m" dedup | grep -c 'method=POST' || true)
  [ "$n_post" = 2 ] || why+="$n_post upload sessions (POST), want 2; "
  pull_back local/dedup:v1 "$(img .dedup.digest)"; why+="$WHY"
  if [ -z "$why" ]; then
    ok "$R 6b skopeo push of alpine + 1 layer -> local/dedup:v1: HEAD on alpine's layer answered 200, only the new layer and config uploaded [$(uploads_summary "$m" dedup)]; pulled back intact"
  else FAILED_LOGS+=("$log"); bad "$R 6b dedup of alpine's layer" "$why"; fi
  return 0
}

# 7 ------------------------------------------------------------------------
check_7() {
  step "$ROUND 7. concurrent pushes of images sharing every blob"
  over_budget "$R 7 concurrent pushes" && return 0
  local specs=("conc local/conc-a:v1" "conc-oci local/conc-b:v1" "conc local/conc-c:v1" "conc-oci local/conc-a:oci")
  local pids=() i image ref log m failed="" why=""
  m=$(mark)
  for i in "${!specs[@]}"; do
    read -r image ref <<<"${specs[$i]}"
    log="$LOGS/$ROUND-conc-$i.log"
    ( skopeo_push "$log" "$image" "$ref" "$CI" ) &
    pids+=($!)
  done
  for i in "${!specs[@]}"; do
    wait "${pids[$i]}" || failed+=" ${specs[$i]#* }"
  done
  if [ -n "$failed" ]; then
    for i in "${!specs[@]}"; do FAILED_LOGS+=("$LOGS/$ROUND-conc-$i.log"); done
    bad "$R 7 four concurrent skopeo pushes" "failed:$failed: $(errtail "$LOGS/$ROUND-conc-0.log" 2)"; return 0
  fi
  for i in "${!specs[@]}"; do
    read -r image ref <<<"${specs[$i]}"
    pull_back "$ref" "$(img ".\"$image\".digest")"
    if [ -n "$WHY" ]; then why+="$ref: $WHY"
    elif ! diff -rq "$W/images/$image" "$OUT" >/dev/null 2>&1; then why+="$ref differs from $image; "; fi
  done
  local commits; commits=$(uploads_since "$m" 'conc-[abc]' | grep -E 'method=(PUT|POST)' | grep -E 'status=201' | grep -cE '[?&]digest=' || true)
  if [ -z "$why" ]; then
    ok "$R 7 four concurrent skopeo pushes (v2s2 and OCI, same config and layers, 3 repos) all pulled back intact ($commits blob commits for 4 distinct blobs)"
  else bad "$R 7 concurrent pushes" "$why"; fi
  return 0
}

# 8 ------------------------------------------------------------------------
check_8() {
  step "$ROUND 8. manifests naming content never pushed"
  over_budget "$R 8 missing children" && return 0
  local ghost code body
  ghost="sha256:$(printf 'never pushed %s %s' "$ROUND" "$$" | sha256sum | cut -d' ' -f1)"
  body=$(jq -cn --arg d "$ghost" '{schemaVersion: 2, mediaType: "application/vnd.oci.image.index.v1+json",
    manifests: [{mediaType: "application/vnd.oci.image.manifest.v1+json", digest: $d, size: 1234,
                 platform: {architecture: "amd64", os: "linux"}}]}')
  code=$(curl_api PUT "http://$REG/v2/local/broken/manifests/v1" "$CI" \
    -H 'Content-Type: application/vnd.oci.image.index.v1+json' --data-binary "$body")
  if [ "$code" = 400 ] && [ "$(err_code)" = MANIFEST_BLOB_UNKNOWN ]; then
    ok "$R 8a PUT an OCI index whose child $ghost was never pushed: 400 MANIFEST_BLOB_UNKNOWN ($(jq -r '.errors[0].message' "$W/curl.body" | cut -c1-100))"
  else bad "$R 8a PUT an index with a missing child" "status $code, body $(short 300 <"$W/curl.body"), want 400 MANIFEST_BLOB_UNKNOWN"; fi
  code=$(curl_api GET "http://$REG/v2/local/broken/manifests/v1" "$RD" -H "Accept: $ACCEPT")
  if [ "$code" = 404 ]; then ok "$R 8a' the refused index left no tag (GET -> 404 $(err_code))"
  else bad "$R 8a' the refused index left no tag" "GET local/broken/manifests/v1 -> $code"; fi
  # an image manifest whose layer is missing (its config was pushed in 1a)
  body=$(jq -cn --arg c "$(img .small.config)" --argjson cs "$(stat -c %s "$W/images/small/$(img .small.config | cut -c8-)")" --arg l "$ghost" \
    '{schemaVersion: 2, mediaType: "application/vnd.oci.image.manifest.v1+json",
      config: {mediaType: "application/vnd.oci.image.config.v1+json", digest: $c, size: $cs},
      layers: [{mediaType: "application/vnd.oci.image.layer.v1.tar+gzip", digest: $l, size: 1234}]}')
  code=$(curl_api PUT "http://$REG/v2/local/app/manifests/broken" "$CI" \
    -H 'Content-Type: application/vnd.oci.image.manifest.v1+json' --data-binary "$body")
  if [ "$code" = 400 ] && [ "$(err_code)" = MANIFEST_BLOB_UNKNOWN ]; then
    ok "$R 8b PUT an image manifest whose layer was never pushed: 400 MANIFEST_BLOB_UNKNOWN"
  else bad "$R 8b PUT an image manifest with a missing layer" "status $code, body $(short 300 <"$W/curl.body"), want 400 MANIFEST_BLOB_UNKNOWN"; fi
  # positive control: an index over the manifests pushed in 1a and 1b
  body=$(jq -cn --arg a "$(img .small.digest)" --argjson asz "$(stat -c %s "$W/images/small/manifest.json")" \
    --arg b "$(img '."small-oci".digest')" --argjson bsz "$(stat -c %s "$W/images/small-oci/manifest.json")" \
    '{schemaVersion: 2, mediaType: "application/vnd.oci.image.index.v1+json", manifests: [
      {mediaType: "application/vnd.docker.distribution.manifest.v2+json", digest: $a, size: $asz, platform: {architecture: "amd64", os: "linux"}},
      {mediaType: "application/vnd.oci.image.manifest.v1+json", digest: $b, size: $bsz, platform: {architecture: "amd64", os: "linux", variant: "oci"}}]}')
  printf '%s' "$body" >"$W/index-$ROUND.json"
  local want; want="sha256:$(sha256_of "$W/index-$ROUND.json")"
  code=$(curl_api PUT "http://$REG/v2/local/app/manifests/index" "$CI" \
    -H 'Content-Type: application/vnd.oci.image.index.v1+json' --data-binary "@$W/index-$ROUND.json")
  local got; got=$(tr -d '\r' <"$W/curl.hdr" | awk 'tolower($1)=="docker-content-digest:"{print $2}')
  if [ "$code" = 201 ] && [ "$got" = "$want" ]; then
    code=$(curl_api GET "http://$REG/v2/local/app/manifests/index" "$RD" -H "Accept: $ACCEPT")
    if [ "$code" = 200 ] && cmp -s "$W/curl.body" "$W/index-$ROUND.json"; then
      ok "$R 8c PUT a hand-made index over the pushed manifests: 201, Docker-Content-Digest ${want:0:19}…, GET returns it byte for byte"
    else bad "$R 8c GET the hand-made index" "status $code, body differs"; fi
  else bad "$R 8c PUT a hand-made index over pushed manifests" "status $code, digest '$got' (want $want), body $(short 300 <"$W/curl.body")"; fi
  return 0
}

# 9 ------------------------------------------------------------------------
check_9() {
  step "$ROUND 9. anonymous push refused"
  over_budget "$R 9 anonymous push" && return 0
  local log="$LOGS/$ROUND-anon-push.log" code
  if skopeo_push "$log" small local/anon:v1 -; then
    bad "$R 9a skopeo copy without --dest-creds is refused" "the push succeeded ($PUSH_DIGEST)"
  elif grep -qiE 'unauthorized|authentication required|401' "$log"; then
    ok "$R 9a skopeo copy without --dest-creds fails: $(grep -m1 -oiE '(unauthorized|authentication required)[^"]{0,80}' "$log" | head -n 1)"
  else FAILED_LOGS+=("$log"); bad "$R 9a skopeo copy without creds" "failed, but not on authentication: $(errtail "$log")"; fi
  code=$(curl_api POST "http://$REG/v2/local/anon/blobs/uploads/" -)
  local challenge; challenge=$(tr -d '\r' <"$W/curl.hdr" | grep -i '^www-authenticate:' | cut -d' ' -f2- || true)
  if [ "$code" = 401 ] && [[ "$challenge" == Basic* ]]; then ok "$R 9b POST /v2/local/anon/blobs/uploads/ without credentials: 401 $(err_code), WWW-Authenticate: $challenge"
  else bad "$R 9b anonymous POST /blobs/uploads/" "status $code, WWW-Authenticate '$challenge', body $(short 200 <"$W/curl.body")"; fi
  code=$(curl_api PUT "http://$REG/v2/local/anon/manifests/v1" - -H "Content-Type: $(img .small.mediaType)" \
    --data-binary "@$W/images/small/manifest.json")
  if [ "$code" = 401 ]; then ok "$R 9c anonymous manifest PUT: 401"
  else bad "$R 9c anonymous manifest PUT" "status $code, body $(short 200 <"$W/curl.body")"; fi
  code=$(curl_api GET "http://$REG/v2/local/anon/tags/list" "$RD")
  if [ "$code" = 404 ]; then ok "$R 9d nothing was created: GET /v2/local/anon/tags/list -> 404 $(err_code)"
  else bad "$R 9d anonymous pushes created nothing" "tags/list -> $code $(short 200 <"$W/curl.body")"; fi
  return 0
}

# 10 -----------------------------------------------------------------------
check_10() {
  step "$ROUND 10. a user not in push = [...]"
  over_budget "$R 10 reader" && return 0
  local code log="$LOGS/$ROUND-reader-push.log"
  code=$(curl_api POST "http://$REG/v2/local/app/blobs/uploads/" "$RD")
  if [ "$code" = 403 ] && [ "$(err_code)" = DENIED ]; then ok "$R 10a POST /v2/local/app/blobs/uploads/ as reader: 403 DENIED ($(jq -r '.errors[0].message' "$W/curl.body"))"
  else bad "$R 10a reader's POST /blobs/uploads/" "status $code, body $(short 200 <"$W/curl.body"), want 403 DENIED"; fi
  code=$(curl_api PUT "http://$REG/v2/local/app/manifests/reader" "$RD" -H "Content-Type: $(img .small.mediaType)" \
    --data-binary "@$W/images/small/manifest.json")
  if [ "$code" = 403 ]; then ok "$R 10b reader's manifest PUT (blobs all present): 403 $(err_code)"
  else bad "$R 10b reader's manifest PUT" "status $code, body $(short 200 <"$W/curl.body")"; fi
  code=$(curl_api DELETE "http://$REG/v2/local/app/manifests/v1" "$RD")
  if [ "$code" = 403 ]; then ok "$R 10c reader's DELETE of a tag: 403 $(err_code)"
  else bad "$R 10c reader's DELETE" "status $code, body $(short 200 <"$W/curl.body")"; fi
  if skopeo_push "$log" small-oci local/readerapp:v1 "$RD"; then
    bad "$R 10d skopeo push as reader is refused" "the push succeeded"
  elif grep -qiE 'denied|403|may not push' "$log"; then
    ok "$R 10d skopeo push as reader fails: $(grep -m1 -oiE '(denied|may not push)[^"]{0,80}' "$log" | head -n 1)"
  else FAILED_LOGS+=("$log"); bad "$R 10d skopeo push as reader" "failed, but not as denied: $(errtail "$log")"; fi
  pull_back local/app:v1 "$(img .small.digest)"
  if [ -z "$WHY" ] && diff -rq "$W/images/small" "$OUT" >/dev/null 2>&1; then ok "$R 10e reader pulls local/app:v1 with skopeo: the pushed bytes"
  else bad "$R 10e reader pulls local/app:v1" "${WHY:-differs from the source}"; fi
  code=$(curl_api GET "http://$REG/v2/local/app/tags/list" "$READER:wrong")
  if [ "$code" = 401 ]; then ok "$R 10f a wrong password: 401"
  else bad "$R 10f wrong password" "status $code"; fi
  return 0
}

# 12 -----------------------------------------------------------------------
check_12() {
  step "$ROUND 12. skopeo delete (delete = true)"
  over_budget "$R 12 skopeo delete" && return 0
  local log="$LOGS/$ROUND-delete.log" code d
  d=$(cat "$LOGS/$ROUND-podman-2a.log.digest" 2>/dev/null || true)
  if [ -z "$d" ]; then skipped "$R 12 skopeo delete" "nothing to delete: podman's push (2a) did not run"; return 0; fi
  if ! timeout "$(cmd_timeout)" "${SKOPEO[@]}" delete --tls-verify=false --creds "$RD" "docker://$REG/local/podapp:v1" >"$log" 2>&1 \
     && grep -qiE 'denied|403' "$log"; then
    ok "$R 12a skopeo delete as reader: refused $(grep -m1 -oE '\(403 [A-Za-z]+\)' "$log")"
  else FAILED_LOGS+=("$log"); bad "$R 12a skopeo delete as reader is refused" "$(errtail "$log")"; fi
  if ! timeout "$(cmd_timeout)" "${SKOPEO[@]}" delete --tls-verify=false --creds "$CI" "docker://$REG/local/podapp:v1" >>"$log" 2>&1; then
    FAILED_LOGS+=("$log"); bad "$R 12b skopeo delete local/podapp:v1" "$(errtail "$log")"; return 0
  fi
  local why="" c1 c2 c3
  c1=$(curl_api GET "http://$REG/v2/local/podapp/manifests/v1" "$RD" -H "Accept: $ACCEPT")
  c2=$(curl_api GET "http://$REG/v2/local/podapp/manifests/$d" "$RD" -H "Accept: $ACCEPT")
  c3=$(curl_api GET "http://$REG/v2/local/podapp/tags/list" "$RD")
  [ "$c1" = 404 ] || why+="GET the tag -> $c1; "
  [ "$c2" = 404 ] || why+="GET the digest -> $c2; "
  [ "$c3" = 404 ] || [ "$(jq -c '.tags' "$W/curl.body" 2>/dev/null)" = '[]' ] || why+="tags/list -> $c3 $(short 200 <"$W/curl.body"); "
  pull_back local/app:v1 "$(img .small.digest)"; [ -z "$WHY" ] || why+="local/app:v1 after the delete: $WHY"
  if [ -z "$why" ]; then ok "$R 12b skopeo delete local/podapp:v1 (DELETE by digest): the tag and the manifest are gone (404), local/app:v1 still pulls"
  else bad "$R 12b skopeo delete local/podapp:v1" "$why"; fi
  return 0
}

# 11 -----------------------------------------------------------------------
check_11() {
  step "$ROUND 11. the mirror and its store"
  if mirror_dead; then bad "$R 11a mirror alive" "$MIRROR_DEAD"; return 0; fi
  ok "$R 11a the mirror is alive after every client"
  local n; n=$(grep -cE ' (ERROR|WARN) ' "$MG_LOG" || true)
  if grep -q panicked "$MG_LOG"; then bad "$R 11b no panic in the mirror's log" "$(grep -m1 panicked "$MG_LOG" | cut -c1-300)"
  elif [ "$n" = 0 ]; then ok "$R 11b no ERROR, WARN or panic in the mirror's log"
  else info "$R: $n ERROR/WARN lines in the mirror's log, e.g.: $(grep -m3 -E ' (ERROR|WARN) ' "$MG_LOG" | cut -c1-300 | tr '\n' ' ')"
       ok "$R 11b no panic in the mirror's log ($n ERROR/WARN lines, shown above)"; fi
  over_budget "$R 11c verify" && return 0
  if timeout "$(cmd_timeout)" env HUB_PASSWORD="$HUB_PASS" "$BIN" verify --config "$MG_CONF" >"$LOGS/$ROUND-verify.log" 2>&1; then
    ok "$R 11c mirrorgate verify: $(head -n 1 "$LOGS/$ROUND-verify.log")"
  else FAILED_LOGS+=("$LOGS/$ROUND-verify.log"); bad "$R 11c mirrorgate verify" "$(tail -n 2 "$LOGS/$ROUND-verify.log" | short 300)"; fi
  return 0
}

# ----------------------------------------------------------------- the rounds
for ROUND in $ROUNDS; do
  R="$ROUND"
  case "$ROUND" in fs) P=$P_FS; PIN=$PIN_FS;; s3) P=$P_S3; PIN=$PIN_S3;; *) setup_failed "unknown round $ROUND (HOSTED_ROUNDS: fs s3)";; esac
  REG="$IP:$P"; PINNED="$IP:$PIN"
  step "==== round $ROUND: mirrorgate on $REG, store: $([ "$ROUND" = s3 ] && echo "S3 (SeaweedFS 127.0.0.1:$S3_PORT)" || echo "filesystem")"
  start_mirror "$ROUND" "$P" "$PIN"
  HOSTS="$W/hosts-$ROUND"
  mkdir -p "$HOSTS/$REG"
  printf 'server = "http://%s"\n[host."http://%s"]\n  capabilities = ["pull", "resolve", "push"]\n' "$REG" "$REG" >"$HOSTS/$REG/hosts.toml"
  mkdir -p "$HOSTS/$PINNED"
  printf 'server = "http://%s"\n[host."http://%s"]\n  capabilities = ["pull", "resolve", "push"]\n' "$PINNED" "$PINNED" >"$HOSTS/$PINNED/hosts.toml"
  if [ "$CTR_OK" = 1 ]; then   # containerd starts each round without content, so it fetches every blob
    ctrq images ls -q 2>/dev/null | xargs -r "${CTR[@]}" images rm --sync >/dev/null 2>&1 || true
    info "containerd: $(ctrq images ls -q 2>/dev/null | wc -l) images, $(ctrq content ls -q 2>/dev/null | wc -l) blobs left from earlier rounds"
  fi
  check_1; check_2; check_3; check_4; check_5; check_6; check_7; check_8; check_9; check_10; check_12; check_11
  stop_mirror
done

summary "hosted system test"
