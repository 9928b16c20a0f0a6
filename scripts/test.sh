#!/usr/bin/env bash
# The whole test suite, on a fresh Debian 12 machine (run as root):
#   1. lints: cargo fmt --check, clippy -D warnings, rustdoc -D warnings
#   2. unit + hermetic end-to-end tests (cargo test; fake upstreams on loopback)
#   3. benches compile (cargo bench --no-run)
#   4. system test with real parts: installs docker-registry (CNCF
#      distribution), skopeo and containerd from apt, and pulls through the
#      mirror with skopeo and ctr (tests/system/run.sh)
#   5. TLS system test: one TLS listener, clients set up only from
#      `mirrorgate ca init` + `client-config`: ctr, skopeo, podman, dockerd
#      (tests/system/tls.sh; also installs podman and docker.io if it can)
#   6. the end-to-end benchmark in its short mode (benches/e2e.sh --quick,
#      debug binary): checks that it runs and prints its table; its figures
#      are not judged here (speed is never asserted in a test)
# Exits non-zero if anything fails. Set SKIP_SYSTEM=1 to skip steps 4 to 6,
# SKIP_BENCH=1 to skip step 6.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==== %s ====\n' "$*"; }

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy --all-targets -D warnings"
cargo clippy --all-targets --locked -- -D warnings

step "cargo test"
cargo test --locked

step "cargo doc -D warnings"
RUSTDOCFLAGS="-D warnings" cargo doc --no-deps --locked

step "cargo bench --no-run"
cargo bench --no-run --locked

if [ "${SKIP_SYSTEM:-0}" != 1 ]; then
  step "system test: real registry, skopeo, containerd"
  cargo build --locked
  MIRRORGATE_BIN="$PWD/target/debug/mirrorgate" bash tests/system/run.sh

  step "TLS system test: one TLS port, ctr, skopeo, podman, dockerd"
  MIRRORGATE_BIN="$PWD/target/debug/mirrorgate" bash tests/system/tls.sh

  if [ "${SKIP_BENCH:-0}" != 1 ]; then
    step "end-to-end benchmark, short mode (runs; figures not judged)"
    MIRRORGATE_BIN="$PWD/target/debug/mirrorgate" bash benches/e2e.sh --quick
  fi
fi
echo
echo "scripts/test.sh: all steps passed"
