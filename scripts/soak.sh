#!/usr/bin/env bash
# Runs the whole `cargo test` suite N times in a row (default 10) while one
# busy loop per core keeps the machine saturated, and reports every failure.
# A test that depends on timing (a guessed sleep, a race with a background
# commit) shows up here long before it reaches CI. Run as root, like the
# suite itself.
#
#   bash scripts/soak.sh            # 10 runs under load
#   bash scripts/soak.sh 3          # 3 runs
#   SOAK_LOAD=0 bash scripts/soak.sh   # no background load
#
# Logs of failed runs stay in $SOAK_DIR (default /tmp/mirrorgate-soak).
set -euo pipefail
cd "$(dirname "$0")/.."

runs="${1:-10}"
dir="${SOAK_DIR:-/tmp/mirrorgate-soak}"
mkdir -p "$dir"
rm -f "$dir"/run-*.log

cargo test --locked --no-run

load=()
stop_load() { [ "${#load[@]}" -eq 0 ] || kill "${load[@]}" 2>/dev/null || true; }
trap stop_load EXIT
if [ "${SOAK_LOAD:-1}" = 1 ]; then
  for _ in $(seq 1 "$(nproc)"); do
    yes >/dev/null &
    load+=("$!")
  done
  echo "soak: $(nproc) busy loops running (pids ${load[*]})"
fi

failed=0
for i in $(seq 1 "$runs"); do
  start=$SECONDS
  log="$dir/run-$i.log"
  if cargo test --locked >"$log" 2>&1; then
    echo "soak: run $i/$runs ok ($((SECONDS - start)) s)"
    rm -f "$log"
  else
    failed=$((failed + 1))
    echo "soak: run $i/$runs FAILED ($((SECONDS - start)) s); log: $log"
    grep -E '^test .* FAILED$|panicked at' "$log" | head -n 20 || true
  fi
done
echo "soak: $failed of $runs runs failed"
[ "$failed" = 0 ]
