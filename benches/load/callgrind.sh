#!/usr/bin/env bash
# Instructions (and, with --cache-sim, cache misses) per request for every proxy row, counted
# by callgrind: exact and repeatable whatever else the machine is doing, so a VM's noise
# cannot hide or fake a change. BENCHMARKS.md's "Ir per request" figures come from here.
#
#   benches/load/callgrind.sh [--reps N] [--n REQUESTS] [--only ROW,ROW] [--cache-sim]
#                             [--no-build] [--out FILE] [--label TEXT] [--bin REALMGATE]
#                             [--keep DIR]   (keep the dumps, for callgrind_annotate)
#
# Each row: the proxy starts under valgrind on core 0, 300 warm-up requests, counters zeroed,
# then N requests (default 2 000) round-robin over 4 keep-alive connections (drive.py), a
# dump, and user-space instructions divided by N: for the proxy's worker thread (the thread
# that served the requests: the figure compared between commits) and for the whole process
# (worker plus every background thread). The worker figure is the steadier one: background
# threads tick on wall-clock timers (the log flusher every 100 ms, refreshers), so their share
# per request grows when a loaded machine makes the valgrind run slower. Reps are separate
# processes; the table shows the median and the spread. Rows are those of run.sh:
#   pingora-bare, rg-public, rg-guarded, rg-guarded-warn, rg-many, rg-401-badsig,
#   rg-401-expired, rg-redis (needs Redis on 127.0.0.1:6379).
# Extra rows from CALLGRIND_EXTRA, ';'-separated, each "name|path|token|status|VAR=V ...|config"
# (token: none, good, badsig, expired or @many; config: empty for realmgate-bench.yaml).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
shared=${SHARED_BENCH:-$repo/../shared/bench}
work=${BENCH_WORK:-$repo/target/peer-bench}
reps=3; n=2000; only=""; cache=0; build=1; out=""; many_count=100000; label=""; bin=""; keep=""
while [ $# -gt 0 ]; do
  case "$1" in
    --reps) reps="$2"; shift ;;
    --n) n="$2"; shift ;;
    --only) only="$2"; shift ;;
    --cache-sim) cache=1 ;;
    --no-build) build=0 ;;
    --out) out="$2"; shift ;;
    --label) label="$2"; shift ;;
    --bin) bin="$2"; build=0; shift ;;
    --keep) keep="$2"; shift ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac; shift
done
for t in valgrind callgrind_control nginx taskset curl python3 openssl; do
  command -v $t >/dev/null || { echo "missing $t (apt-get install valgrind nginx-light)" >&2; exit 2; }
done
[ -d "$shared/pingora-passthrough" ] || { echo "shared harness not found at $shared (set SHARED_BENCH)" >&2; exit 2; }
source "$here/prepare.sh"
# --bin: measure another realmgate build (e.g. the commit before, for an A/B/A comparison).
[ -n "$bin" ] && rg="$bin"

tmp=$(mktemp -d); pids=()
cleanup() {
  redis-cli -h 127.0.0.1 -p 6379 DEL "rgbench:tenant:acme:user:0b8d4a8e-0000-4000-8000-00000000a001:permissions" >/dev/null 2>&1 || true
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  sleep 0.3; for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  rm -rf "$tmp"
}
trap cleanup EXIT
mkdir -p "$tmp/ngx"
cat > "$tmp/up.conf" <<NGX
worker_processes 1; pid $tmp/up.pid; error_log $tmp/up.err;
events { worker_connections 1024; }
http { access_log off; keepalive_requests 10000000;
  client_body_temp_path $tmp/ngx; proxy_temp_path $tmp/ngx; fastcgi_temp_path $tmp/ngx; uwsgi_temp_path $tmp/ngx; scgi_temp_path $tmp/ngx;
  server { listen 127.0.0.1:18000; location / { return 200 "ok"; } } }
NGX
taskset -c 1 nginx -p "$tmp" -c "$tmp/up.conf" -g 'daemon off;' >/dev/null 2>&1 & pids+=($!)

have_redis=0
if command -v redis-cli >/dev/null && [ "$(redis-cli -h 127.0.0.1 -p 6379 PING 2>/dev/null)" = PONG ]; then
  have_redis=1
  redis-cli -h 127.0.0.1 -p 6379 SADD "rgbench:tenant:acme:user:0b8d4a8e-0000-4000-8000-00000000a001:permissions" reports.export.tenant >/dev/null
  { cat "$here/realmgate-bench.yaml"; printf 'redis:\n  url: "redis://127.0.0.1:6379"\n  key_prefix: "rgbench:"\n  channel: "rgbench:invalidate"\n  invalidation: tracking\n'; } > "$tmp/redis.yaml"
fi

host="acme.qa.example.test"
# name|path|token|expected status|env (space-separated VAR=VALUE)|config
rows=(
  "pingora-bare|/api/v1/me|good|200||"
  "rg-public|/api/v1/status|none|200||"
  "rg-guarded|/api/v1/me|good|200||"
  "rg-guarded-warn|/api/v1/me|good|200|RG_LOG_LEVEL=warn|"
  "rg-many|/api/v1/me|@many|200|RG_TOKEN_CACHE=1024|"
  "rg-401-badsig|/api/v1/me|badsig|401||"
  "rg-401-expired|/api/v1/me|expired|401||"
)
[ $have_redis = 1 ] && rows+=("rg-redis|/api/v1/granted|good|200||$tmp/redis.yaml")
[ -n "${CALLGRIND_EXTRA:-}" ] && IFS=';' read -r -a extra <<<"$CALLGRIND_EXTRA" && rows+=("${extra[@]}")
selected() { [ -z "$only" ] || [[ ",$only," == *",$1,"* ]]; }

token_arg() { case $1 in none) echo none ;; @many) echo "@$many:$2" ;; *) cat "$keys/$1.jwt" ;; esac; }
wait_port() { for _ in $(seq 600); do (exec 3<>/dev/tcp/127.0.0.1/$1) 2>/dev/null && return 0; sleep 0.1; done; echo "port $1 never opened" >&2; return 1; }
wait_ready() { for _ in $(seq 600); do [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$1/readyz")" = 200 ] && return 0; sleep 0.2; done; echo "admin $1 never ready" >&2; return 1; }

sim=(--cache-sim=no); [ $cache = 1 ] && sim=(--cache-sim=yes)
raw="$work/callgrind-raw.tsv"; : > "$raw"
offset=0
for rep in $(seq "$reps"); do
  for r in "${rows[@]}"; do
    IFS='|' read -r name path tok expect envs conf <<<"$r"
    selected "$name" || continue
    cgout="$tmp/cg.$name.$rep"
    vg=(valgrind --tool=callgrind "${sim[@]}" --separate-threads=yes --dump-instr=no --callgrind-out-file="$cgout")
    if [ "$name" = pingora-bare ]; then
      taskset -c 0 "${vg[@]}" "$pt" 127.0.0.1:18443 127.0.0.1:18000 1 >"$tmp/$name.log" 2>&1 &
      vpid=$!; pids+=($vpid); wait_port 18443
    else
      mkdir -p "$tmp/run"
      # shellcheck disable=SC2086
      env BENCH_KEYS="$keys" RG_RUN="$tmp/run" RG_PROXY=127.0.0.1:18443 RG_ADMIN=127.0.0.1:18444 $envs \
        taskset -c 0 "${vg[@]}" "$rg" run --config "${conf:-$here/realmgate-bench.yaml}" >"$tmp/$name.log" 2>&1 &
      vpid=$!; pids+=($vpid); wait_port 18443; wait_ready 18444
    fi
    t=$(token_arg "$tok" "$offset")
    taskset -c 1 python3 "$here/drive.py" 18443 "$host" "$path" "$t" 300 4 "$expect"
    callgrind_control -z "$vpid" >/dev/null
    offset=$((offset + 300))
    t=$(token_arg "$tok" "$offset")
    taskset -c 1 python3 "$here/drive.py" 18443 "$host" "$path" "$t" "$n" 4 "$expect"
    offset=$((offset + n))
    callgrind_control -d "$vpid" >/dev/null
    kill -INT "$vpid"; wait "$vpid" 2>/dev/null || true  # SIGINT: fast shutdown (SIGTERM waits out the grace period)
    # The dump after zeroing (".1-<thread>" files) holds exactly the N requests plus whatever
    # the background threads did meanwhile.
    python3 - "$rep" "$name" "$cgout" >> "$raw" <<'PY'
import glob, sys
rep, name, base = sys.argv[1:4]
events, threads = None, []
for f in sorted(glob.glob(base + ".1-*")):
    tot = None
    for line in open(f, errors="replace"):
        if line.startswith("events:") and events is None:
            events = line.split()[1:]
        if line.startswith(("totals:", "summary:")):
            tot = [int(x) for x in line.split()[1:]]
    if tot:
        threads.append(tot)
worker = max(threads, key=lambda t: t[0])
process = [sum(t[i] for t in threads) for i in range(len(worker))]
print(f"{rep}\t{name}\t{' '.join(events)}\t{' '.join(map(str, worker))}\t{' '.join(map(str, process))}")
PY
    tail -1 "$raw" | awk -F'\t' -v n="$n" '{split($4, w, " "); split($5, p, " "); printf "  rep %s %-17s %9.0f Ir/request (worker)  %9.0f (process)\n", $1, $2, w[1] / n, p[1] / n}'
    if [ -n "$keep" ]; then mkdir -p "$keep"; cp "$cgout".1-* "$keep/" 2>/dev/null || true; fi
    rm -f "$cgout"*
  done
done

table=$(python3 - "$raw" "$n" <<'PY'
import sys, statistics as st
from collections import OrderedDict
n = int(sys.argv[2]); rows = OrderedDict(); ev = None
for line in open(sys.argv[1]):
    rep, name, events, worker, process = line.rstrip("\n").split("\t")
    ev = events.split()
    rows.setdefault(name, []).append(([int(x) for x in worker.split()], [int(x) for x in process.split()]))
med = lambda vals, k, i: st.median(v[k][i] for v in vals) / n
bare = med(rows["pingora-bare"], 0, 0) if "pingora-bare" in rows else None
extra = [e for e in ("D1mr", "D1mw", "DLmr", "DLmw", "I1mr", "ILmr") if e in ev]
cols = ["worker Ir/request (median)", "min", "max", "x bare Pingora", "process Ir/request"]
print("| row | " + " | ".join(cols + [e + "/request" for e in extra]) + " |")
print("|---" * (1 + len(cols) + len(extra)) + "|")
for name, vals in rows.items():
    irs = [v[0][0] / n for v in vals]
    m = st.median(irs)
    cells = [f"{m:,.0f}", f"{min(irs):,.0f}", f"{max(irs):,.0f}", f"{m / bare:.3f}" if bare else "-",
             f"{med(vals, 1, 0):,.0f}"]
    for e in extra:
        cells.append(f"{med(vals, 0, ev.index(e)):.1f}")
    print(f"| {name} | " + " | ".join(cells) + " |")
PY
)
stamp="($(date -u '+%F %H:%M UTC'), ${label:-$(git -C "$repo" rev-parse --short HEAD)}, $n requests x $reps reps per row, cache-sim=$cache)"
echo; echo "$table"; echo; echo "$stamp"
if [ -n "$out" ]; then { echo "$table"; echo; echo "$stamp"; } > "$out"; fi
