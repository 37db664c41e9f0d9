"""Distinct valid tokens and the 10 000-tenant config for benches/load/run.sh.

Usage: python3 mint_many.py KEYDIR COUNT OUT_TOKENS|- OUT_RSS_YAML

Tokens have the same claims as /work/shared/bench/mint.py's good.jwt (same issuer, audience,
roles and size), a distinct `sub` and `jti` each, signed with KEYDIR/rsa.pem (kid bench-key-1)
and valid for 7 days, one per line. The YAML is realmgate-bench.yaml's setup with 10 000
tenants, each in its own realm whose keys come from KEYDIR/jwks.json (no IdP needed); acme is
one of them.
"""
import base64, json, os, sys, time, uuid

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding

keydir, count, out_tokens, out_yaml = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
key = serialization.load_pem_private_key(open(f"{keydir}/rsa.pem", "rb").read(), password=None)
iss = "http://127.0.0.1:18080/realms/tenant-acme"
now = int(time.time())


def b64(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=")


header = b64(json.dumps({"alg": "RS256", "typ": "JWT", "kid": "bench-key-1"}, separators=(",", ":")).encode())
if out_tokens == "-":
    count = 0
else:
    f = open(out_tokens + ".tmp", "w")
for i in range(count):
    claims = {"iss": iss, "sub": f"0b8d4a8e-0000-4000-8000-{i:012d}", "aud": "qa-platform-backend",
              "azp": "qa-platform-backend", "typ": "Bearer", "exp": now + 7 * 86400, "iat": now,
              "jti": str(uuid.uuid4()), "preferred_username": f"user{i}", "email": f"user{i}@acme.test",
              "realm_access": {"roles": ["tenant_admin", "viewer"]}, "scope": "openid profile email"}
    signing_input = header + b"." + b64(json.dumps(claims, separators=(",", ":")).encode())
    sig = key.sign(signing_input, padding.PKCS1v15(), hashes.SHA256())
    f.write((signing_input + b"." + b64(sig)).decode() + "\n")
if out_tokens != "-":
    f.close()
    os.replace(out_tokens + ".tmp", out_tokens)

lines = open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "realmgate-bench.yaml")).read()
head, _, _ = lines.partition("tenants:\n")
head = head.replace(
    '  realms:\n    tenant-acme:\n      jwks_file: "${BENCH_KEYS}/jwks.json"\n', "  realms:\n")
y = [head]
ids = ["acme"] + [f"t{i:05d}" for i in range(1, 10000)]
for t in ids:
    y.append(f'    tenant-{t}: {{jwks_file: "${{BENCH_KEYS}}/jwks.json"}}\n')
y.append("tenants:\n")
for t in ids:
    host = "acme.qa.example.test" if t == "acme" else f"{t}.qa.example.test"
    y.append(f"  - {{id: {t}, realm: tenant-{t}, hosts: [{host}]}}\n")
_, _, tail = lines.partition("roles:\n")
y.append("roles:\n" + tail)
open(out_yaml, "w").write("".join(y))
print("ok", count, "tokens;", len(ids), "tenants")
