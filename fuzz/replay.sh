#!/usr/bin/env bash
# Regression check: runs every fuzz target over its committed corpus and hand-made seeds once
# (-runs=0 executes the inputs only, no fuzzing). Needs nightly and cargo-fuzz. Fails on the first target
# that crashes, panics or breaks an invariant.
set -euo pipefail
cd "$(dirname "$0")"
targets=(host path_route token permission jwks config)
# One build for all targets, so each run below only executes.
cargo +nightly fuzz build
for t in "${targets[@]}"; do
  start=$(date +%s)
  if ! out=$(cargo +nightly fuzz run "$t" "corpus/$t" "seeds/$t" -- -runs=0 2>&1); then
    printf '%s\n' "$out" | tail -40
    echo "fuzz replay: $t FAILED" >&2
    exit 1
  fi
  n=$(find "corpus/$t" "seeds/$t" -type f | wc -l)
  echo "fuzz replay: $t ok ($n inputs, $(( $(date +%s) - start ))s)"
done
