#!/usr/bin/env bash
# Loopback load comparison of realmgate against its upstream and its peers, in one run.
#
#   benches/load/run.sh [--quick] [--dur S] [--reps N] [--no-build] [--no-rate] [--no-rss]
#                       [--profile ROW] [--only ROW,ROW,...]
#
# Rows (every proxy on core 0 with one worker; upstream nginx and the load generator on core 1):
#   direct              wrk straight to the upstream (nginx `return 200`): the limit
#   nginx-proxy         nginx reverse proxy, upstream keep-alive
#   haproxy-plain       HAProxy reverse proxy
#   haproxy-jwt         HAProxy jwt_verify: alg pinned, iss + exp checked, RS256 on every request
#   haproxy-jwt-many    the same with a distinct token per request (same wrk Lua as rg-many)
#   pingora-bare        a Pingora 0.9 ProxyHttp that only forwards: the framework's ceiling
#   rg-public           realmgate, public route (tenant + route, no token)
#   rg-guarded          realmgate, guarded route, one repeated valid token (cache hits)
#   rg-many             realmgate, guarded route, a distinct valid token per request: every
#                       request is a token-cache miss (RSA verify) and a new user's permission
#                       compile; 100 000 tokens rotate through a 1 024-entry token cache
#   rg-401-badsig       realmgate refusing a bad signature (RSA verify, then 401)
#   rg-401-expired      realmgate refusing an expired token (claims check, no RSA, 401)
#   rg-guarded-warn     rg-guarded with logging.level warn (no per-request audit event)
#   rg-redis            rg-guarded with Redis grants in use: the route's permission exists only
#                       in the user's Redis set, client tracking is on (needs Redis on
#                       127.0.0.1:6379; the row is skipped, saying so, without it)
# Throughput: wrk -t1 -c64; latency: wrk -t1 -c4 (p50/p99/p99.9 from wrk's histogram).
# Each rep runs every row once (rows interleaved, so drift hits all rows alike); the table
# shows medians over reps, as ratios to direct and to pingora-bare of the same run.
# Then, unless disabled: a rate-controlled run at 2 000 req/s (oha, latency-corrected; again
# with core 0 kept awake, the "+awake" rows) and realmgate's RSS idle, with 10 000 tenants,
# and with 100 000 distinct tokens cached.
#
# Peers and token minting come from the shared harness, ../shared/bench relative to the repo
# (override: SHARED_BENCH). Keys, tokens, builds and results go to $BENCH_WORK (default
# target/peer-bench). Builds honour CARGO_TARGET_DIR. Loopback only; every loop is bounded.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
shared=${SHARED_BENCH:-$repo/../shared/bench}
work=${BENCH_WORK:-$repo/target/peer-bench}
dur=8; reps=3; build=1; rate=1; rss=1; profile=""; only=""
rate_dur=10; rate_qps=2000; many_count=100000
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) dur=3; reps=1; rate_dur=5 ;;
    --dur) dur="$2"; shift ;;
    --reps) reps="$2"; shift ;;
    --no-build) build=0 ;;
    --no-rate) rate=0 ;;
    --no-rss) rss=0 ;;
    --profile) profile="$2"; shift ;;
    --only) only="$2"; shift ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac; shift
done

for t in nginx haproxy wrk taskset chrt curl python3 openssl; do
  command -v $t >/dev/null || { echo "missing $t (apt-get install nginx-light haproxy wrk)" >&2; exit 2; }
done
python3 -c 'import jwt, cryptography' 2>/dev/null || { echo "missing pyjwt/cryptography (pip install pyjwt cryptography)" >&2; exit 2; }
[ -f "$shared/mint.py" ] && [ -d "$shared/pingora-passthrough" ] || { echo "shared harness not found at $shared (set SHARED_BENCH)" >&2; exit 2; }
[ "$(nproc)" -ge 2 ] || { echo "needs 2 cores (proxies on core 0, load on core 1)" >&2; exit 2; }
have_oha=0; command -v oha >/dev/null && have_oha=1
if [ "$rate" = 1 ] && [ $have_oha = 0 ]; then
  echo "note: oha not installed (cargo install oha --locked); the rate-controlled run is skipped" >&2; rate=0
fi

source "$here/prepare.sh"

# --- processes ------------------------------------------------------------------------------
tmp=$(mktemp -d); pids=()
cleanup() {
  if [ "${have_redis:-0}" = 1 ]; then redis-cli -h 127.0.0.1 -p 6379 DEL "rgbench:tenant:acme:user:0b8d4a8e-0000-4000-8000-00000000a001:permissions" >/dev/null 2>&1 || true; fi
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  sleep 0.5
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'echo "failed; process log:" >&2; tail -50 "$tmp/procs.log" >&2 2>/dev/null' ERR
mkdir -p "$tmp/ngx" "$tmp/ngx2"
cat > "$tmp/up.conf" <<NGX
worker_processes 1; pid $tmp/up.pid; error_log $tmp/up.err;
events { worker_connections 8192; }
http { access_log off; keepalive_requests 10000000;
  client_body_temp_path $tmp/ngx; proxy_temp_path $tmp/ngx; fastcgi_temp_path $tmp/ngx; uwsgi_temp_path $tmp/ngx; scgi_temp_path $tmp/ngx;
  server { listen 127.0.0.1:18000; location / { return 200 "ok"; } } }
NGX
cat > "$tmp/px.conf" <<NGX
worker_processes 1; pid $tmp/px.pid; error_log $tmp/px.err;
events { worker_connections 8192; }
http { access_log off; keepalive_requests 10000000;
  client_body_temp_path $tmp/ngx2; proxy_temp_path $tmp/ngx2; fastcgi_temp_path $tmp/ngx2; uwsgi_temp_path $tmp/ngx2; scgi_temp_path $tmp/ngx2;
  upstream up { server 127.0.0.1:18000; keepalive 128; }
  server { listen 127.0.0.1:18001; location / { proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection ""; } } }
NGX
# Same HAProxy setup as the shared harness.
cat > "$tmp/hap.cfg" <<HAP
global
  nbthread 1
  maxconn 8000
defaults
  mode http
  timeout connect 2s
  timeout client 30s
  timeout server 30s
  option http-keep-alive
frontend plain
  bind 127.0.0.1:18002
  default_backend up
frontend jwt
  bind 127.0.0.1:18003
  http-request set-var(txn.bearer) http_auth_bearer
  http-request set-var(txn.alg) var(txn.bearer),jwt_header_query('\$.alg')
  http-request set-var(txn.iss) var(txn.bearer),jwt_payload_query('\$.iss')
  http-request set-var(txn.exp) var(txn.bearer),jwt_payload_query('\$.exp','int')
  http-request set-var(txn.now) date()
  http-request deny status 401 unless { var(txn.alg) -m str RS256 }
  http-request deny status 401 unless { var(txn.iss) -m str http://127.0.0.1:18080/realms/tenant-acme }
  http-request deny status 401 unless { var(txn.exp),sub(txn.now) -m int gt 0 }
  http-request deny status 401 unless { var(txn.bearer),jwt_verify("RS256","$keys/rsa.pub.pem") -m int 1 }
  default_backend up
backend up
  http-reuse always
  server s1 127.0.0.1:18000
HAP
start() { local core=$1; shift; taskset -c "$core" "$@" >>"$tmp/procs.log" 2>&1 & pids+=($!); }
# realmgate instance: NAME PROXY_PORT ADMIN_PORT CONFIG [VAR=VALUE...]; its stdout/stderr
# (audit events included) go to $work/logs/NAME.log, truncated at start.
start_rg() { local name=$1 port=$2 admin=$3 conf=$4; shift 4
  mkdir -p "$tmp/$name"; : > "$work/logs/$name.log"
  env BENCH_KEYS="$keys" RG_RUN="$tmp/$name" RG_PROXY="127.0.0.1:$port" RG_ADMIN="127.0.0.1:$admin" "$@" \
    taskset -c 0 "$rg" run --config "$conf" >>"$work/logs/$name.log" 2>&1 &
  pids+=($!); eval "pid_$name=$!"; }
wait_port() { for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$1) 2>/dev/null && return 0; sleep 0.1; done; echo "port $1 never opened" >&2; return 1; }
wait_ready() { for _ in $(seq 300); do [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$1/readyz")" = 200 ] && return 0; sleep 0.1; done; echo "admin $1 never ready" >&2; return 1; }
rss_kib() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }

conf="$here/realmgate-bench.yaml"
start 1 nginx -p "$tmp" -c "$tmp/up.conf" -g 'daemon off;'
start 0 nginx -p "$tmp" -c "$tmp/px.conf" -g 'daemon off;'
start 0 haproxy -f "$tmp/hap.cfg" -db
start 0 "$pt" 127.0.0.1:18004 127.0.0.1:18000 1
start_rg main 18443 18444 "$conf"
start_rg miss 18445 18446 "$conf" RG_TOKEN_CACHE=1024
start_rg warn 18447 18448 "$conf" RG_LOG_LEVEL=warn
have_redis=0
if command -v redis-cli >/dev/null && [ "$(redis-cli -h 127.0.0.1 -p 6379 PING 2>/dev/null)" = PONG ]; then
  have_redis=1
  # The bench token's sub (mint.py) gets the route's permission in Redis only.
  redis-cli -h 127.0.0.1 -p 6379 SADD "rgbench:tenant:acme:user:0b8d4a8e-0000-4000-8000-00000000a001:permissions" reports.export.tenant >/dev/null
  { cat "$conf"; printf 'redis:\n  url: "redis://127.0.0.1:6379"\n  key_prefix: "rgbench:"\n  channel: "rgbench:invalidate"\n  invalidation: tracking\n'; } > "$tmp/redis.yaml"
  start_rg redis 18449 18450 "$tmp/redis.yaml"
else
  echo "note: no Redis on 127.0.0.1:6379; the rg-redis row is skipped" >&2
fi
for p in 18000 18001 18002 18003 18004 18443 18445 18447; do wait_port "$p"; done
for a in 18444 18446 18448; do wait_ready "$a"; done
if [ $have_redis = 1 ]; then
  wait_port 18449; wait_ready 18450
  for _ in $(seq 50); do curl -s http://127.0.0.1:18450/readyz | grep -q '"invalidation":"tracking"' && break; sleep 0.1; done
fi
sleep 1
rss_idle_main=$(rss_kib "$pid_main")

host="acme.qa.example.test"
good=$(cat "$keys/good.jwt"); badsig=$(cat "$keys/badsig.jwt"); expired=$(cat "$keys/expired.jwt")
code() { curl -s -o /dev/null -w '%{http_code}' -H "Host: $host" ${2:+-H "Authorization: Bearer $2"} "http://127.0.0.1:$1${3:-/api/v1/me}"; }
sanity="haproxy-jwt: good=$(code 18003 "$good") badsig=$(code 18003 "$badsig") expired=$(code 18003 "$expired") none=$(code 18003 '')"
for p in 18443 18445 18447; do
  sanity+=$'\n'"realmgate :$p: good=$(code $p "$good") public=$(code $p '' /api/v1/status) badsig=$(code $p "$badsig") expired=$(code $p "$expired") none=$(code $p '') first-of-many=$(code $p "$(head -1 "$many")")"
done
if [ $have_redis = 1 ]; then
  sanity+=$'\n'"realmgate :18449 (redis): granted=$(code 18449 "$good" /api/v1/granted) without-redis=$(code 18443 "$good" /api/v1/granted) mode=$(curl -s http://127.0.0.1:18450/readyz | grep -o '"invalidation":"[a-z]*"')"
  if ! echo "$sanity" | grep -q 'granted=200 without-redis=403 mode="invalidation":"tracking"'; then
    echo "$sanity"; echo "sanity check failed (rg-redis)" >&2; exit 1
  fi
fi
echo "$sanity"
if echo "$sanity" | grep -q 'good=[^2]\|public=[^2]\|badsig=[^4]\|expired=[^4]\|none=[^4]\|first-of-many=[^2]'; then
  echo "sanity check failed" >&2; exit 1
fi

# --- closed-loop rows -----------------------------------------------------------------------
# name|port|path|token (literal, "none", or "@many" for the rotating Lua script)
rows=(
  "direct|18000|/api/v1/me|$good"
  "nginx-proxy|18001|/api/v1/me|$good"
  "haproxy-plain|18002|/api/v1/me|$good"
  "haproxy-jwt|18003|/api/v1/me|$good"
  "haproxy-jwt-many|18003|/api/v1/me|@many"
  "pingora-bare|18004|/api/v1/me|$good"
  "rg-public|18443|/api/v1/status|none"
  "rg-guarded|18443|/api/v1/me|$good"
  "rg-many|18445|/api/v1/me|@many"
  "rg-401-badsig|18443|/api/v1/me|$badsig"
  "rg-401-expired|18443|/api/v1/me|$expired"
  "rg-guarded-warn|18447|/api/v1/me|$good"
)
[ $have_redis = 1 ] && rows+=("rg-redis|18449|/api/v1/granted|$good")
selected() { [ -z "$only" ] || [[ ",$only,direct,pingora-bare," == *",$1,"* ]]; }
many_offset=0
# wrk run -> "rps p50 p99 p999 non2xx sockerr requests"
measure() { local port=$1 path=$2 token=$3 conns=$4 d=$5
  local args=(-t1 -c"$conns" -d"${d}s" -H "Host: $host")
  if [ "$token" = "@many" ]; then
    args+=(-s "$here/many.lua" "http://127.0.0.1:$port$path" -- "$many" "$many_offset")
    many_offset=$((many_offset + 7919))
  else
    [ "$token" != none ] && args+=(-H "Authorization: Bearer $token")
    args+=(-s "$here/report.lua" "http://127.0.0.1:$port$path")
  fi
  taskset -c 1 wrk "${args[@]}" 2>&1 | awk '/^RESULT/ {print $2, $3, $4, $5, $6, $7, $8; found=1} END {if (!found) print "0 0 0 0 0 1 0"}'
}
raw="$work/results-raw.tsv"; : > "$raw"
uptime_before=$(uptime)
echo "closed loop: ${dur}s per run, $reps rep(s), $(uptime | sed 's/.*load/load/')"
for rep in $(seq "$reps"); do
  for r in "${rows[@]}"; do
    IFS='|' read -r name port path token <<<"$r"
    selected "$name" || continue
    read -r rps _ _ _ n2 se nreq < <(measure "$port" "$path" "$token" 64 "$dur")
    read -r _ p50 p99 p999 ln2 lse _ < <(measure "$port" "$path" "$token" 4 "$dur")
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$rep" "$name" "$rps" "$p50" "$p99" "$p999" "$((n2 + ln2))" "$((se + lse))" "$nreq" >> "$raw"
    printf '  rep %s %-17s %8.0f rps  p50 %5d us  p99 %5d us  p99.9 %5d us  non2xx %s  sockerr %s\n' "$rep" "$name" "$rps" "$p50" "$p99" "$p999" "$((n2 + ln2))" "$((se + lse))"
  done
done
uptime_after=$(uptime)
# Verify that rg-many really missed the token cache.
miss_stats=$(curl -s http://127.0.0.1:18446/metrics | awk '/^realmgate_token_cache_total/ {printf "%s ", $0}')

# --- optional profile -----------------------------------------------------------------------
if [ -n "$profile" ] && command -v perf >/dev/null; then
  for r in "${rows[@]}"; do
    IFS='|' read -r name port path token <<<"$r"
    [ "$name" = "$profile" ] || continue
    case $port in 18443) ppid=$pid_main ;; 18445) ppid=$pid_miss ;; 18447) ppid=$pid_warn ;; 18449) ppid=$pid_redis ;; *) echo "profile: $name is not a realmgate row" >&2; continue ;; esac
    perf record -F 1999 -g -p "$ppid" -o "$work/perf-$name.data" -- sleep "$dur" >/dev/null 2>&1 &
    perf_pid=$!
    measure "$port" "$path" "$token" 64 "$dur" >/dev/null
    wait $perf_pid || true
    perf report -i "$work/perf-$name.data" --no-children --percent-limit 1 --stdio 2>/dev/null | grep -v '^$' | head -120 > "$work/perf-$name.txt"
    perf report -i "$work/perf-$name.data" --children --percent-limit 2 --stdio -g none 2>/dev/null | grep -v '^$' | head -80 > "$work/perf-$name-children.txt"
    echo "profile written: $work/perf-$name.txt, $work/perf-$name-children.txt"
  done
fi

# --- rate-controlled run --------------------------------------------------------------------
rate_raw="$work/results-rate.tsv"; : > "$rate_raw"
if [ "$rate" = 1 ]; then
  echo "rate-controlled: $rate_qps req/s for ${rate_dur}s (oha, latency correction), $reps rep(s)"
  rate_rows=("direct|18000|$good" "pingora-bare|18004|$good" "haproxy-jwt|18003|$good" "rg-guarded|18443|$good" "rg-public|18443|none")
  # The same rows again with core 0 kept awake by a SCHED_IDLE busy loop (it yields to any
  # runnable task at once): a mostly idle vCPU halts between requests, and its wake-up
  # latency, not the proxy, then dominates p99. The "+awake" rows separate the two.
  awake_rows=("direct+awake|18000|$good" "pingora-bare+awake|18004|$good" "rg-guarded+awake|18443|$good")
  for rep in $(seq "$reps"); do
    for r in "${rate_rows[@]}" "${awake_rows[@]}"; do
      IFS='|' read -r name port token <<<"$r"
      spin=""
      if [[ $name == *+awake ]]; then
        taskset -c 0 chrt -i 0 sh -c 'while :; do :; done' & spin=$!; pids+=("$spin")
      fi
      path=/api/v1/me; [ "$name" = rg-public ] && path=/api/v1/status
      hdr=(-H "Host: $host"); [ "$token" != none ] && hdr+=(-H "Authorization: Bearer $token")
      taskset -c 1 oha -z "${rate_dur}s" -q "$rate_qps" -c 16 --latency-correction --no-tui \
        --output-format json "${hdr[@]}" "http://127.0.0.1:$port$path" > "$tmp/oha.json" 2>/dev/null || true
      python3 - "$tmp/oha.json" "$rep" "$name" >> "$rate_raw" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
p = d.get("latencyPercentiles", {})
s = d.get("summary", {})
codes = d.get("statusCodeDistribution", {})
ok = sum(v for k, v in codes.items() if k.startswith("2"))
us = lambda k: round(float(p.get(k) or 0) * 1e6)
print(f"{sys.argv[2]}\t{sys.argv[3]}\t{s.get('requestsPerSec', 0):.0f}\t{us('p50')}\t{us('p99')}\t{us('p99.9')}\t{ok}")
PY
      [ -n "$spin" ] && { kill "$spin"; wait "$spin" 2>/dev/null || true; }
      tail -1 "$rate_raw" | awk -F'\t' '{printf "  rep %s %-19s %6s rps  p50 %5s us  p99 %5s us  p99.9 %5s us  2xx %s\n", $1, $2, $3, $4, $5, $6, $7}'
    done
  done
fi

# --- RSS --------------------------------------------------------------------------------------
rss_lines=""
if [ "$rss" = 1 ]; then
  echo "RSS: realmgate with 10 000 tenants, driving $many_count distinct tokens..."
  # Stop the closed-loop instances first so the RSS instance has core 0 to itself.
  for p in "$pid_main" "$pid_miss" "$pid_warn"; do kill "$p" 2>/dev/null || true; done
  sleep 1
  start_rg rss 18449 18450 "$work/realmgate-rss.yaml"
  # Steady state, not the start-up burst: the key-file reads' blocking threads exit after
  # 10 s idle and jemalloc returns freed pages (the config parse's YAML values) within ~10 s.
  wait_port 18449; wait_ready 18450; sleep 15
  rss_idle_10k=$(rss_kib "$pid_rss")
  misses() { curl -s http://127.0.0.1:18450/metrics | awk '/^realmgate_token_cache_total\{result="miss"\}/ {print int($2)}'; }
  offset=0
  for chunk in $(seq 20); do
    m=$(misses); m=${m:-0}
    [ "$m" -ge "$many_count" ] && break
    taskset -c 1 wrk -t1 -c32 -d10s -H "Host: $host" -s "$here/many.lua" "http://127.0.0.1:18449/api/v1/me" -- "$many" "$m" >/dev/null 2>&1
  done
  sleep 15
  rss_loaded=$(rss_kib "$pid_rss")
  rss_stats=$(curl -s http://127.0.0.1:18450/metrics | awk '/^realmgate_(token|permission)_cache_total/ {printf "%s ", $0}')
  rss_lines="realmgate idle (1 tenant, bench config): $((rss_idle_main / 1024)) MiB ($rss_idle_main KiB)
realmgate idle with 10 000 tenants / 10 000 realms (keys loaded): $((rss_idle_10k / 1024)) MiB ($rss_idle_10k KiB)
realmgate with 10 000 tenants and $many_count distinct tokens verified and cached: $((rss_loaded / 1024)) MiB ($rss_loaded KiB)
cache counters after the drive: $rss_stats"
  echo "$rss_lines"
fi

# --- table ----------------------------------------------------------------------------------
out="$work/results-$(date -u +%Y%m%dT%H%M%SZ).md"
python3 - "$raw" "$rate_raw" > "$out" <<'PY'
import sys, statistics as st
from collections import defaultdict
rows = defaultdict(list); order = []
for line in open(sys.argv[1]):
    rep, name, *v = line.rstrip("\n").split("\t")
    if name not in rows: order.append(name)
    rows[name].append([float(x) for x in v])
med = lambda name, i: st.median(r[i] for r in rows[name])
d = med("direct", 0) if "direct" in rows else None
b = med("pingora-bare", 0) if "pingora-bare" in rows else None
bp50 = med("pingora-bare", 1) if b else None
bp99 = med("pingora-bare", 2) if b else None
print("| row | rps (64 conns) | x direct | x bare Pingora | p50 us | p99 us | p99.9 us | p50 / p99 x bare | non-2xx | reps |")
print("|---|---|---|---|---|---|---|---|---|---|")
for n in order:
    rps = med(n, 0); p50, p99, p999 = med(n, 1), med(n, 2), med(n, 3)
    non2 = int(sum(r[4] for r in rows[n]))
    print(f"| {n} | {rps:.0f} | {rps/d:.2f} | {rps/b:.2f} | {p50:.0f} | {p99:.0f} | {p999:.0f} | "
          f"{p50/bp50:.2f} / {p99/bp99:.2f} | {non2} | {len(rows[n])} |")
rate = defaultdict(list); rorder = []
for line in open(sys.argv[2]):
    rep, name, rps, p50, p99, p999, ok = line.rstrip("\n").split("\t")
    if name not in rate: rorder.append(name)
    rate[name].append((float(rps), float(p50), float(p99), float(p999), int(ok)))
if rate:
    print()
    print("| row (fixed 2 000 req/s) | achieved rps | p50 us | p99 us | p99.9 us | added p99 over direct us |")
    print("|---|---|---|---|---|---|")
    for n in rorder:
        # "+awake" rows are compared with direct+awake, the others with direct.
        base = "direct+awake" if n.endswith("+awake") else "direct"
        dp99 = st.median(x[2] for x in rate[base]) if base in rate else 0
        m = lambda i: st.median(x[i] for x in rate[n])
        print(f"| {n} | {m(0):.0f} | {m(1):.0f} | {m(2):.0f} | {m(3):.0f} | {m(2) - dp99:+.0f} |")
PY
{
  echo
  echo "sanity: $sanity" | sed 's/^/    /'
  echo
  echo "rg-many token cache counters (1 024-entry cache): $miss_stats"
  [ -n "$rss_lines" ] && { echo; echo "$rss_lines"; }
  echo
  echo "($(date -u '+%F %H:%M UTC'), $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), kernel $(uname -r);"
  echo " closed loop ${dur}s x $reps reps, medians; proxies on core 0 (one worker each), upstream + load generator on core 1;"
  echo " load before: ${uptime_before##*load average: }; after: ${uptime_after##*load average: })"
} >> "$out"
echo; cat "$out"; echo; echo "results: $out (raw: $raw, $rate_raw)"
