"""Soak: realmgate under a realistic, hostile mix for a bounded time, on loopback.

Usage: python3 soak.py --gateway BIN --minutes 10 --out DIR [--tenants 1000] [--conns 24]

Runs, in one process: a Keycloak-shaped IdP for every tenant's realm whose signing keys
rotate every 60 s (the JWKS publishes the previous, current and next key; tokens are signed
with the current one); nginx as the upstream (`return 200`); realmgate with 1 000 tenants,
its config file rewritten (a valid change) every 30 s so it reloads live; and the clients:
keep-alive connections sending a mix of valid, expired, forged, cross-tenant, missing-token
and public requests, pipelined batches, slowloris heads and idle connections.

Every answer is checked against what that request must get (valid and public: 200; the
rest: 401; pipelined batches: each in order; slowloris: cut at the head deadline with no
answer). Reported: requests by outcome class, unexpected answers (any 5xx is one), RSS and
open file descriptors every 10 s, p50/p99 of checked requests per minute, reloads applied.
Tokens live 5 minutes (Keycloak's default access-token lifespan) and the token cache holds
2 000, so the run reaches every cache bound within its first minutes: RSS must then stay flat.
Writes DIR/report.json and DIR/report.md; exits non-zero on any unexpected answer.
"""
import argparse
import asyncio
import base64
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

AUD = "soak-backend"
ROTATE_SECS = 60


def b64(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


class KeyRing:
    """RSA keys by generation; generation g is current during [g*60 s, (g+1)*60 s)."""

    def __init__(self):
        self.t0 = time.time()
        self.keys = {}
        self.docs = {}
        self.lock = threading.Lock()

    def gen(self):
        return int((time.time() - self.t0) // ROTATE_SECS)

    def key(self, g):
        with self.lock:
            if g not in self.keys:
                self.keys[g] = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            return self.keys[g]

    def jwk(self, g):
        n = self.key(g).public_key().public_numbers()
        to_b = lambda i: i.to_bytes((i.bit_length() + 7) // 8, "big")
        return {"kty": "RSA", "use": "sig", "alg": "RS256", "kid": f"soak-{g}", "n": b64(to_b(n.n)), "e": b64(to_b(n.e))}

    def jwks(self):
        g = self.gen()
        with self.lock:
            cached = self.docs.get(g)
        if cached is None:
            cached = {"keys": [self.jwk(x) for x in (g - 1, g, g + 1) if x >= 0]}
            with self.lock:
                self.docs[g] = cached
        return cached


def idp_server(ring, port):
    base = f"http://127.0.0.1:{port}"

    class H(BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def do_GET(self):
            parts = self.path.split("/")
            # /realms/{r}/.well-known/openid-configuration | /realms/{r}/protocol/openid-connect/certs
            if len(parts) >= 4 and parts[1] == "realms":
                realm = parts[2]
                if self.path.endswith("/.well-known/openid-configuration"):
                    body = {"issuer": f"{base}/realms/{realm}", "jwks_uri": f"{base}/realms/{realm}/protocol/openid-connect/certs"}
                elif self.path.endswith("/certs"):
                    body = ring.jwks()
                else:
                    body = None
                if body is not None:
                    data = json.dumps(body).encode()
                    try:
                        self.send_response(200)
                        self.send_header("content-type", "application/json")
                        self.send_header("content-length", str(len(data)))
                        self.end_headers()
                        self.wfile.write(data)
                    except (BrokenPipeError, ConnectionResetError):
                        pass  # the gateway gave up on this fetch (or is shutting down)
                    return
            self.send_response(404)
            self.send_header("content-length", "0")
            self.end_headers()

    srv = ThreadingHTTPServer(("127.0.0.1", port), H)
    srv.daemon_threads = True
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return base


class Minter:
    """Tokens per (tenant, kind, generation), signed once and reused within a generation."""

    def __init__(self, ring, base):
        self.ring, self.base, self.cache = ring, base, {}

    def token(self, tenant, kind):
        g = self.ring.gen()
        k = (tenant, kind, g)
        t = self.cache.get(k)
        if t is None:
            now = int(time.time())
            claims = {"iss": f"{self.base}/realms/realm-{tenant}", "sub": f"user-{tenant}", "aud": AUD, "typ": "Bearer",
                      "azp": AUD, "iat": now - 5, "exp": now + 300, "realm_access": {"roles": ["viewer"]}}
            if kind == "expired":
                claims["exp"], claims["iat"] = now - 600, now - 1200
            header = b64(json.dumps({"alg": "RS256", "typ": "JWT", "kid": f"soak-{g}"}).encode())
            si = f"{header}.{b64(json.dumps(claims).encode())}"
            sig = self.ring.key(g).sign(si.encode(), padding.PKCS1v15(), hashes.SHA256())
            t = f"{si}.{b64(sig)}"
            if kind == "forged":
                t = t[:-8] + ("AAAAAAAA" if not t.endswith("AAAAAAAA") else "BBBBBBBB")
            if len(self.cache) > 20000:
                self.cache.clear()
            self.cache[k] = t
        return t


def config_yaml(tenants, proxy, admin, upstream, base, reload_n):
    lines = [
        f'listen: {{proxy: "{proxy}", admin: "{admin}"}}',
        "server: {threads: 1, watch_config: true, grace_period: 0s, graceful_shutdown_timeout: 1s,",
        f'  pid_file: "{tempfile.gettempdir()}/rg-soak.pid", upgrade_sock: "{tempfile.gettempdir()}/rg-soak.sock"}}',
        f'upstream: {{default: "{upstream}"}}',
        # A token cache the run fills within minutes (it holds ~2 of the minter's generations),
        # so RSS shows the bound being reached, then held.
        f'keycloak: {{base_url: "{base}", audiences: [{AUD}], jwks_refresh: 30s, jwks_min_refetch_interval: 5s,',
        "  token_cache_size: 2000}",
        "downstream: {idle_timeout: 5s, head_timeout: 3s}",
        # The value the reloads toggle: valid either way, visible in the config only.
        f"limits: {{max_body_bytes: {1048576 + (reload_n % 2)}}}",
        "roles: {viewer: [\"users.read.own\"]}",
        "routes:",
        '  - {path: "/health", public: true}',
        '  - {path: "/api/users/{id}", methods: [GET], permission: users.read.own}',
        "default_policy: deny",
        "logging: {level: warn, access_log: false}",
        "tenants:",
    ]
    for t in tenants:
        lines.append(f"  - {{id: {t}, realm: realm-{t}, hosts: [{t}.soak.test]}}")
    return "\n".join(lines) + "\n"


class Stats:
    def __init__(self):
        self.by_class = {}
        self.unexpected = []
        self.lat = {}  # minute -> [seconds]

    def record(self, cls, ok, detail, latency=None, minute=None):
        c = self.by_class.setdefault(cls, {"ok": 0, "unexpected": 0})
        if ok:
            c["ok"] += 1
        else:
            c["unexpected"] += 1
            if len(self.unexpected) < 50:
                self.unexpected.append(f"{cls}: {detail}")
        if latency is not None and minute is not None:
            self.lat.setdefault(minute, []).append(latency)


async def read_response(reader):
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    if length:
        await reader.readexactly(length)
    return status


def request(host, path, token):
    auth = f"authorization: Bearer {token}\r\n" if token else ""
    return f"GET {path} HTTP/1.1\r\nhost: {host}\r\n{auth}\r\n".encode()


async def client_loop(addr, tenants, minter, stats, deadline, t_start, rng):
    """One keep-alive connection sending single requests and pipelined batches."""
    reader = writer = None
    while time.time() < deadline:
        try:
            if writer is None:
                reader, writer = await asyncio.open_connection(*addr)
            t = rng.choice(tenants)
            other = rng.choice(tenants)
            while other == t:
                other = rng.choice(tenants)
            kind = rng.choices(["valid", "expired", "forged", "cross", "missing", "public", "pipelined"],
                               [50, 8, 8, 8, 8, 10, 8])[0]
            host = f"{t}.soak.test"
            path = f"/api/users/{rng.randint(1, 99999)}"
            if kind == "pipelined":
                batch = [(request(host, path, minter.token(t, "valid")), 200),
                         (request(host, path, None), 401),
                         (request(host, path, minter.token(other, "valid")), 401)]
                writer.write(b"".join(r for r, _ in batch))
                await writer.drain()
                got = [await read_response(reader) for _ in batch]
                want = [w for _, w in batch]
                stats.record(kind, got == want, f"{got} != {want}")
                continue
            if kind == "public":
                req, want = request(host, "/health", None), 200
            elif kind == "valid":
                req, want = request(host, path, minter.token(t, "valid")), 200
            elif kind == "cross":
                req, want = request(host, path, minter.token(other, "valid")), 401
            elif kind == "missing":
                req, want = request(host, path, None), 401
            else:
                req, want = request(host, path, minter.token(t, kind)), 401
            started = time.time()
            writer.write(req)
            await writer.drain()
            status = await read_response(reader)
            took = time.time() - started
            stats.record(kind, status == want, f"status {status}, want {want}", took, int((started - t_start) // 60))
        except (asyncio.IncompleteReadError, ConnectionError, OSError) as e:
            # The gateway closes idle connections and after max_requests_per_connection:
            # reconnect; a close mid-answer is counted as unexpected.
            if writer is not None and not isinstance(e, asyncio.IncompleteReadError):
                stats.record("connection", False, repr(e))
            elif writer is not None:
                stats.record("reconnect", True, "")
            writer = None
    if writer is not None:
        writer.close()


async def slowloris_loop(addr, stats, deadline):
    """Trickles a head one byte every 0.5 s: must be cut at the 3 s head deadline, unanswered."""
    while time.time() < deadline:
        reader, writer = await asyncio.open_connection(*addr)
        head = b"GET /health HTTP/1.1\r\nhost: t0001.soak.test\r\nx-slow: " + b"a" * 200
        started, answered, cut = time.time(), False, False
        for b in head:
            try:
                writer.write(bytes([b]))
                await writer.drain()
                data = await asyncio.wait_for(reader.read(64), 0.5)
                if data:
                    answered = True
                else:
                    cut = True
                break
            except asyncio.TimeoutError:
                continue
            except (ConnectionError, OSError):
                cut = True
                break
        took = time.time() - started
        stats.record("slowloris", cut and not answered and 2.5 <= took <= 6, f"cut={cut} answered={answered} after {took:.1f}s")
        writer.close()


async def idle_loop(addr, stats, deadline):
    """Opens a connection and sends nothing: closed at the 5 s idle timeout."""
    while time.time() < deadline:
        reader, writer = await asyncio.open_connection(*addr)
        started = time.time()
        try:
            data = await asyncio.wait_for(reader.read(64), 15)
            ok = data == b""
        except asyncio.TimeoutError:
            ok = False
        except (ConnectionError, OSError):
            ok = True
        took = time.time() - started
        stats.record("idle", ok and 4.5 <= took <= 8, f"closed={ok} after {took:.1f}s")
        writer.close()


def proc_sample(pid):
    rss = 0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    return rss, fds


def pct(xs, p):
    if not xs:
        return None
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * p))]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gateway", required=True)
    ap.add_argument("--minutes", type=float, default=10)
    ap.add_argument("--tenants", type=int, default=1000)
    ap.add_argument("--conns", type=int, default=24)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix="rg-soak-")

    ring = KeyRing()
    ring.key(0), ring.key(1)
    base = idp_server(ring, free_port())
    minter = Minter(ring, base)
    tenants = [f"t{i:04d}" for i in range(1, a.tenants + 1)]

    up_port, proxy_port, admin_port = free_port(), free_port(), free_port()
    os.makedirs(f"{tmp}/ngx", exist_ok=True)
    with open(f"{tmp}/up.conf", "w") as f:
        f.write(f"worker_processes 1; pid {tmp}/up.pid; error_log {tmp}/up.err;\n"
                "events { worker_connections 8192; }\n"
                f"http {{ access_log off; keepalive_requests 10000000; client_body_temp_path {tmp}/ngx; proxy_temp_path {tmp}/ngx;"
                f" fastcgi_temp_path {tmp}/ngx; uwsgi_temp_path {tmp}/ngx; scgi_temp_path {tmp}/ngx;"
                f" server {{ listen 127.0.0.1:{up_port}; location / {{ return 200 \"ok\"; }} }} }}\n")
    procs = [subprocess.Popen(["nginx", "-p", tmp, "-c", f"{tmp}/up.conf", "-g", "daemon off;"])]
    cfg_path = f"{tmp}/realmgate.yaml"
    proxy, admin, upstream = f"127.0.0.1:{proxy_port}", f"127.0.0.1:{admin_port}", f"127.0.0.1:{up_port}"
    with open(cfg_path, "w") as f:
        f.write(config_yaml(tenants, proxy, admin, upstream, base, 0))
    log = open(f"{a.out}/realmgate.log", "w")
    gw = subprocess.Popen(["taskset", "-c", "0", a.gateway, "run", "--config", cfg_path], stdout=log, stderr=log)
    procs.append(gw)

    def metric(name):
        import urllib.request
        text = urllib.request.urlopen(f"http://{admin}/metrics", timeout=5).read().decode()
        return sum(float(l.rsplit(" ", 1)[1]) for l in text.splitlines() if l.startswith(name))

    try:
        import urllib.request
        for _ in range(600):
            try:
                if urllib.request.urlopen(f"http://{admin}/readyz", timeout=1).status == 200:
                    break
            except Exception:
                pass
            time.sleep(0.1)
        else:
            raise SystemExit("realmgate never became ready")
        stats = Stats()
        samples = []
        reloads = [0]
        t_start = time.time()
        deadline = t_start + a.minutes * 60

        async def sampler():
            while time.time() < deadline:
                rss, fds = proc_sample(gw.pid)
                samples.append({"t": round(time.time() - t_start), "rss_kib": rss, "fds": fds})
                await asyncio.sleep(10)

        async def reloader():
            n = 0
            while time.time() + 30 < deadline:
                await asyncio.sleep(30)
                n += 1
                with open(cfg_path + ".tmp", "w") as f:
                    f.write(config_yaml(tenants, proxy, admin, upstream, base, n))
                os.replace(cfg_path + ".tmp", cfg_path)
                reloads[0] = n

        async def run():
            addr = ("127.0.0.1", proxy_port)
            rng = random.Random(7)
            tasks = [client_loop(addr, tenants, minter, stats, deadline, t_start, random.Random(rng.random())) for _ in range(a.conns)]
            tasks += [slowloris_loop(addr, stats, deadline) for _ in range(4)]
            tasks += [idle_loop(addr, stats, deadline) for _ in range(8)]
            tasks += [sampler(), reloader()]
            await asyncio.gather(*tasks)

        asyncio.run(run())
        elapsed = time.time() - t_start
        final = proc_sample(gw.pid)
        reload_ok = metric('realmgate_config_reload_total{result="ok"}')
        reload_err = metric('realmgate_config_reload_total{result="error"}')
        fivexx = metric('realmgate_requests_total{status="5')
        # Whole minutes only: the last partial one holds a handful of requests.
        minutes = [m for m in sorted(stats.lat) if (m + 1) * 60 <= elapsed + 1]
        per_min = [{"minute": m + 1, "requests": len(stats.lat[m]), "p50_ms": round(pct(stats.lat[m], 0.5) * 1e3, 2),
                    "p99_ms": round(pct(stats.lat[m], 0.99) * 1e3, 2)} for m in minutes]
        total = sum(c["ok"] + c["unexpected"] for c in stats.by_class.values())
        unexpected = sum(c["unexpected"] for c in stats.by_class.values())
        report = {"minutes": round(elapsed / 60, 2), "tenants": a.tenants, "connections": a.conns, "checked": total,
                  "unexpected": unexpected, "gateway_5xx": fivexx, "by_class": stats.by_class,
                  "unexpected_samples": stats.unexpected, "reloads_written": reloads[0],
                  "reloads_ok": reload_ok, "reloads_error": reload_err, "key_generations": ring.gen() + 1,
                  "samples": samples + [{"t": round(elapsed), "rss_kib": final[0], "fds": final[1]}], "per_minute": per_min}
        with open(f"{a.out}/report.json", "w") as f:
            json.dump(report, f, indent=2)
        md = [f"# Soak: {report['minutes']} min, {a.tenants} tenants, {a.conns} client connections + 4 slowloris + 8 idle", "",
              f"Checked answers: {total} ({total / elapsed:.0f}/s); unexpected: {unexpected}; gateway 5xx: {fivexx:.0f}; "
              f"config reloads written {reloads[0]}, applied ok {reload_ok:.0f}, failed {reload_err:.0f}; key generations {ring.gen() + 1}.", "",
              "| class | as expected | unexpected |", "|---|---|---|"]
        for k, c in sorted(stats.by_class.items()):
            md.append(f"| {k} | {c['ok']} | {c['unexpected']} |")
        md += ["", "| t (s) | RSS (MiB) | open fds |", "|---|---|---|"]
        for s in report["samples"]:
            md.append(f"| {s['t']} | {s['rss_kib'] / 1024:.1f} | {s['fds']} |")
        md += ["", "| minute | requests | p50 (ms) | p99 (ms) |", "|---|---|---|---|"]
        for m in per_min:
            md.append(f"| {m['minute']} | {m['requests']} | {m['p50_ms']} | {m['p99_ms']} |")
        if stats.unexpected:
            md += ["", "Unexpected (first 50):", ""] + [f"- {u}" for u in stats.unexpected]
        with open(f"{a.out}/report.md", "w") as f:
            f.write("\n".join(md) + "\n")
        print("\n".join(md))
        sys.exit(1 if unexpected or fivexx else 0)
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()


if __name__ == "__main__":
    main()
