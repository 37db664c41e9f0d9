# Sourced by run.sh and callgrind.sh: release builds of realmgate and the bare-Pingora
# passthrough (same Cargo.lock), the bench keys and tokens. Expects: repo, shared, work,
# here, build (1 = rebuild), many_count.
mkdir -p "$work/bin" "$work/keys" "$work/logs"
work=$(cd "$work" && pwd)
keys="$work/keys"

# --- builds -------------------------------------------------------------------------------
if [ "$build" = 1 ] || [ ! -x "$work/bin/realmgate" ] || [ ! -x "$work/bin/pingora-passthrough" ]; then
  echo "building realmgate (release)..."
  (cd "$repo" && cargo build --release --bin realmgate -q)
  tgt=${CARGO_TARGET_DIR:-$repo/target}
  cp "$tgt/release/realmgate" "$work/bin/realmgate"
  # The passthrough is built from a copy (the shared folder is read-only), with realmgate's
  # Cargo.lock so both use the same pingora and dependency versions.
  echo "building pingora-passthrough (release)..."
  rm -rf "$work/pingora-passthrough"; cp -r "$shared/pingora-passthrough" "$work/pingora-passthrough"
  chmod -R u+w "$work/pingora-passthrough"; cp "$repo/Cargo.lock" "$work/pingora-passthrough/"
  pt_target=${CARGO_TARGET_DIR:-$work/pt-target}
  cargo build --release -q --manifest-path "$work/pingora-passthrough/Cargo.toml" --target-dir "$pt_target"
  cp "$pt_target/release/pingora-passthrough" "$work/bin/pingora-passthrough"
fi
rg="$work/bin/realmgate"; pt="$work/bin/pingora-passthrough"

# --- keys and tokens ------------------------------------------------------------------------
if [ ! -f "$keys/rsa.pem" ]; then
  openssl genrsa -out "$keys/rsa.pem" 2048 2>/dev/null
  openssl rsa -in "$keys/rsa.pem" -pubout -out "$keys/rsa.pub.pem" 2>/dev/null
fi
# good/expired/badsig tokens (valid 1 h) and jwks.json; mint.py is slow (it re-reads the PEM
# per token), so only re-mint when good.jwt is missing or older than 30 minutes.
if [ ! -s "$keys/good.jwt" ] || [ "$keys/rsa.pem" -nt "$keys/good.jwt" ] || [ -n "$(find "$keys/good.jwt" -mmin +30)" ]; then
  echo "minting tokens with $shared/mint.py..."
  python3 "$shared/mint.py" "$keys" >/dev/null
fi
many="$keys/many100k.jwt"
if [ ! -s "$many" ] || [ "$keys/rsa.pem" -nt "$many" ] || [ -n "$(find "$many" -mmin +8000)" ]; then
  echo "minting $many_count distinct tokens (one-off, a few minutes)..."
  python3 "$here/mint_many.py" "$keys" "$many_count" "$many" "$work/realmgate-rss.yaml"
else
  python3 "$here/mint_many.py" "$keys" 0 - "$work/realmgate-rss.yaml" >/dev/null
fi

