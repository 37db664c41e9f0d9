"""Sends exactly N requests over C keep-alive connections (round robin) and checks statuses.

Usage: python3 drive.py PORT HOST PATH TOKEN N C [EXPECT]
TOKEN is a literal bearer token, "none", or "@FILE[:OFFSET]" (the next line of FILE per
request, so every request presents a distinct token). EXPECT is the status every answer must
have (default 200); the script exits 1 on the first other status.

Used by callgrind.sh, where the proxy runs under valgrind: a closed loop of known length is
what makes "instructions per request" exact (wrk runs for a time, not a count).
"""
import http.client
import sys

port, host, path, token, n, conns = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]), int(sys.argv[6])
expect = int(sys.argv[7]) if len(sys.argv) > 7 else 200
tokens = None
if token.startswith("@"):
    spec = token[1:]
    fname, _, offset = spec.partition(":")
    with open(fname) as f:
        tokens = [line.strip() for line in f if line.strip()]
    start = int(offset or 0) % len(tokens)
    tokens = tokens[start:] + tokens[:start]
pool = [http.client.HTTPConnection("127.0.0.1", int(port), timeout=120) for _ in range(conns)]
for i in range(n):
    c = pool[i % conns]
    headers = {"Host": host}
    if tokens is not None:
        headers["Authorization"] = "Bearer " + tokens[i % len(tokens)]
    elif token != "none":
        headers["Authorization"] = "Bearer " + token
    c.request("GET", path, headers=headers)
    r = c.getresponse()
    r.read()
    if r.status != expect:
        print(f"request {i}: status {r.status}, expected {expect}", file=sys.stderr)
        sys.exit(1)
