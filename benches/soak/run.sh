#!/usr/bin/env bash
# Soak: realmgate for MINUTES (default 10) on loopback under a hostile mix while keys rotate
# and the config reloads every 30 s. Not part of `cargo test`; see benches/soak/soak.py.
#
#   benches/soak/run.sh [--minutes N] [--tenants N] [--no-build]
#
# Needs nginx (apt-get install nginx-light), python3 with cryptography (pip install
# cryptography) and taskset. Results: target/soak/report.md and report.json. Bounded: every
# client loop stops at the deadline, and the processes are stopped on exit.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
minutes=10; tenants=1000; build=1
while [ $# -gt 0 ]; do
  case "$1" in
    --minutes) minutes="$2"; shift ;;
    --tenants) tenants="$2"; shift ;;
    --no-build) build=0 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac; shift
done
for t in nginx python3 taskset; do
  command -v $t >/dev/null || { echo "missing $t" >&2; exit 2; }
done
python3 -c 'import cryptography' 2>/dev/null || { echo "missing cryptography (pip install cryptography)" >&2; exit 2; }
tgt=${CARGO_TARGET_DIR:-$repo/target}
if [ "$build" = 1 ]; then (cd "$repo" && cargo build --release --bin realmgate -q); fi
out="$repo/target/soak"
exec timeout $(( minutes * 60 + 300 )) python3 "$here/soak.py" --gateway "$tgt/release/realmgate" \
  --minutes "$minutes" --tenants "$tenants" --out "$out"
