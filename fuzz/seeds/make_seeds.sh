#!/usr/bin/env bash
# Writes the hand-made seed inputs into fuzz/seeds/<target>/ (fuzz/corpus/<target>/ is the
# minimised corpus libFuzzer grew from them; replay.sh and `cargo test` run both). Tokens are signed with testdata/jwt/rsa_a.pem (kid k1), the key the
# token target installs for realm tenant-acme; times are relative to realmgate::fuzzing::FIXED_NOW.
# Input layouts are documented on each function in src/fuzzing.rs.
set -euo pipefail
cd "$(dirname "$0")/../.."
C=fuzz/seeds
mkdir -p $C/{host,path_route,token,permission,jwks,config}

seed() { # seed <target> <name> <content, backslash escapes like \n and \x01 expanded>
  printf '%b' "$3" > "$C/$1/$2.bin"
}

# host: flags \n method \n target \n host [\n host...]   (flags bit 0 = HTTP/2)
seed host plain      '0\nGET\n/api/v1/users\nacme.test'
seed host port       '0\nGET\n/\nacme.test:8443'
seed host upper-dot  '0\nGET\n/\nACME.Test.'
seed host absolute   '0\nGET\nhttp://acme.test/api/v1/me?x=1\nacme.test'
seed host abs-port   '0\nGET\nhttps://acme.test:443/x\nACME.test.:443'
seed host abs-mism   '0\nGET\nhttp://frozen.test/x\nacme.test'
seed host abs-nohost '1\nGET\nhttp://app.acme-corp.test/\n'
seed host h2         '1\nPOST\n/api/v1/users\nacme.test'
seed host dup        '0\nGET\n/\nacme.test\nfrozen.test'
seed host ipv6       '0\nGET\n/\n[::1]:8080'
seed host ipv6-long  '0\nGET\nhttp://[0:0:0:0:0:0:0:1]/\n[::1]'
seed host ipv4       '0\nGET\n/\n127.0.0.1:80'
seed host userinfo   '0\nGET\nhttp://evil@acme.test/\nacme.test'
seed host pattern    '0\nGET\n/\nglobex.apps.test'
seed host regex      '0\nGET\n/\ninitech.eu.test'
seed host star       '0\nOPTIONS\n*\nacme.test'
seed host connect    '0\nCONNECT\nacme.test:443\nacme.test:443'
seed host idn        '0\nGET\n/\nxn--bcher-kva.apps.test'

# path_route: variant byte (bit 0: 0 = default paths, 1 = reject //, case-insensitive,
# %25xx allowed), method byte (index into GET HEAD POST PUT DELETE PATCH), raw target
p() { seed path_route "$1" "$2"; }
p users        '\x00\x00/api/v1/users/42'
p users-del    '\x00\x04/api/v1/users/42'
p head         '\x00\x01/api/v1/users'
p trailing     '\x00\x00/api/v1/users/'
p dot2e        '\x00\x00/public/%2e%2e/api/v1/users'
p dot2e-mixed  '\x00\x00/api/v1/.%2E/admin'
p enc-slash    '\x00\x00/api%2fv1/users'
p double-slash '\x00\x00//api//v1///users'
p double-rej   '\x01\x00//api/v1/users'
p semicolon    '\x00\x00/api/v1/users;jsessionid=1'
p enc-semi     '\x00\x00/api/v1/users%3Bx'
p dbl-enc      '\x00\x00/api/v1/%252e%252e/admin'
p dbl-allow    '\x01\x00/api/v1/pct/a%2525b'
p pct-literal  '\x00\x00/api/v1/pct/a%25b'
p overlong     '\x00\x00/api/v1/%c0%ae%c0%ae/admin'
p overlong-sl  '\x00\x00/api%c0%afv1'
p unreserved   '\x00\x00/%61pi/v1/users/%7e1'
p colon        '\x02\x00/api/v1/items%3abatch'
p colon-raw    '\x00\x02/api/v1/items:batch'
p space        '\x00\x00/api/v1/files/a%20b'
p utf8         '\x00\x00/api/v1/caf%c3%a9'
p case         '\x01\x00/ADMIN/PANEL'
p case-sens    '\x00\x00/admin/panel'
p tilde        '\x00\x00/%7Eadmin/x'
p tenant-rule  '\x00\x00/api/v1/users/me'
p query        '\x00\x00/api/v1/me?redirect=/../admin&x=%2F'
p absolute     '\x00\x00http://acme.test//api/v1/me?x'
p backslash    '\x00\x00/api\\v1/users'
p braces       '\x00\x00/docs/{x}|y'
p fragment     '\x00\x00/api/v1/me#frag'
p null         '\x00\x00/api/v1/me%00'

# permission: requirement \n grant \n grant...
q() { seed permission "$1" "$2"; }
q own        'users.read.own\nusers.read.own'
q team       'users.read.team\nusers.*.tenant'
q wild-all   'calls.delete.tenant\n*.*.*'
q wild-res   'reports.read.tenant\n*.read.team\nreports.read.own'
q wild-scope 'users.write.tenant\nusers.write.*'
q unknown    'users.read.own\nusers.read.galaxy\nUsers.read.own\nusers..own'
q mixed      'calls.read.team\ncalls.*.own\n*.read.team\nbilling.read.tenant\nusers.*.tenant'
q bad-req    'users.*.own\nusers.read.own'
q long       "a.b.c\\n$(printf 'a%.0s' {1..210}).b.c"

# jwks: documents
k() { printf '%s' "$2" > "$C/jwks/$1.bin"; }
RSA=$(cat testdata/jwt/rsa_a.jwk.json)
N=$(sed -E 's/.*"n": "([^"]*)".*/\1/' testdata/jwt/rsa_a.jwk.json)
k keycloak "{\"keys\":[{\"kid\":\"k1\",\"kty\":\"RSA\",\"alg\":\"RS256\",\"use\":\"sig\",\"n\":\"$N\",\"e\":\"AQAB\",\"x5c\":[\"MIIC\"],\"x5t\":\"abc\",\"x5t#S256\":\"def\"},{\"kid\":\"enc1\",\"kty\":\"RSA\",\"alg\":\"RSA-OAEP\",\"use\":\"enc\",\"n\":\"$N\",\"e\":\"AQAB\"}]}"
k single   "{\"keys\":[$RSA]}"
k nokid    "{\"keys\":[{\"kty\":\"RSA\",\"n\":\"$N\",\"e\":\"AQAB\"}]}"
k dupkid   "{\"keys\":[$RSA,$RSA]}"
k ec       '{"keys":[{"kty":"EC","crv":"P-256","kid":"e1","x":"QsqyW7GChZi5LbJax-9DM4s1WTCodKZdT6scRS-u_cQ","y":"nSS6Sslsan3Ii2mdILoKIWN7shvIMZX_wWavWWHeIPQ","alg":"ES256"}]}'
k okp      '{"keys":[{"kty":"OKP","crv":"Ed25519","kid":"o1","x":"EeWNdqSAi9lU8P9nPuc38oAP8hM4IHj-q-ChcbMCLqg"}]}'
k oct      '{"keys":[{"kty":"oct","k":"c2VjcmV0","kid":"h","alg":"HS256"}]}'
k small    "$(printf '{"keys":[%s]}' "$(cat testdata/jwt/rsa_small.jwk.json)")"
k empty    '{"keys":[]}'
k junk     '{"keys":[1,"x",null,{"kty":"RSA"}]}'

# config
cp config/realmgate.example.yaml "$C/config/example.bin"
cat > "$C/config/minimal.bin" <<'YAML'
listen: {proxy: "127.0.0.1:1", admin: "127.0.0.1:2"}
upstream: {default: "127.0.0.1:3"}
keycloak: {base_url: "http://127.0.0.1:9", audiences: [backend]}
tenants:
  - {id: acme, realm: tenant-acme, hosts: [acme.test]}
routes:
  - {path: "/users/{id}", methods: [GET], permission: users.read.own}
YAML
cat > "$C/config/patterns.bin" <<'YAML'
listen: {proxy: "127.0.0.1:1", admin: "${ADMIN:-127.0.0.1:2}"}
upstream: {default: "127.0.0.1:3"}
keycloak: {base_url: "http://127.0.0.1:9", audiences: [backend], permissions_claim: perms}
default_policy: authenticated
tenants:
  - id: acme
    realm: tenant-acme
    hosts: [acme.test]
    routes: [{path: "/x/**", public: true}]
    roles: {viewer: ["x.read.own"]}
host_patterns:
  - {pattern: "{tenant}.apps.test", realm: "tenant-{tenant}"}
  - {regex: "(?P<tenant>[a-z]+)\\.eu\\.test", realm: "tenant-{tenant}"}
scopes: [own, team, tenant]
roles: {admin: ["*.*.*"]}
paths: {slashes: reject, case_sensitive: false, double_encoding: allow}
YAML
printf 'tenants: [{id: a, realm: r, hosts: ["bad..host"]}]\nroutes: [{path: "/a/", public: true}]\n' > "$C/config/invalid.bin"

# token: shape byte, then either the token text (even) or header \xff claims \xff signature
# (odd; the target base64url-encodes each part)
NOW=1800000000
b64() { base64 -w0 | tr '+/' '-_' | tr -d '='; }
sign() { # sign <header-json> <claims-json> -> "h.c.s" on stdout; raw signature in $SIGFILE
  local h c s
  h=$(printf '%s' "$1" | b64); c=$(printf '%s' "$2" | b64)
  printf '%s.%s' "$h" "$c" | openssl dgst -sha256 -sign testdata/jwt/rsa_a.pem -binary > "$SIGFILE"
  s=$(b64 < "$SIGFILE")
  printf '%s.%s.%s' "$h" "$c" "$s"
}
SIGFILE=$(mktemp); trap 'rm -f "$SIGFILE"' EXIT
ISS="http://127.0.0.1:9/realms/tenant-acme"
HDR='{"alg":"RS256","typ":"JWT","kid":"k1"}'
FULL="{\"exp\":$((NOW + 315360000)),\"iat\":$NOW,\"jti\":\"0f3e\",\"iss\":\"$ISS\",\"aud\":[\"backend\",\"account\"],\"sub\":\"f81d4fae-7dec-11d0-a765-00a0c91e6bf6\",\"typ\":\"Bearer\",\"azp\":\"admin-ui\",\"preferred_username\":\"ada\",\"email\":\"ada@acme.test\",\"realm_access\":{\"roles\":[\"offline_access\",\"admin\"]},\"resource_access\":{\"backend\":{\"roles\":[\"viewer\"]},\"account\":{\"roles\":[\"manage-account\"]}},\"perms\":[\"users.read.own\",\"calls.*.team\"],\"address\":{\"country\":\"NL\"},\"tenant_tier\":\"gold\",\"scope\":\"openid email\"}"
tok() { # tok <name> <header> <claims>: both shapes
  local t; t=$(sign "$2" "$3")
  printf '0%s' "$t" > "$C/token/$1-text.bin"
  { printf '1%s\xff%s\xff' "$2" "$3"; cat "$SIGFILE"; } > "$C/token/$1-json.bin"
}
tok valid "$HDR" "$FULL"
tok at-jwt '{"alg":"RS256","typ":"at+jwt","kid":"k1"}' "{\"exp\":$((NOW + 600)),\"iss\":\"$ISS\",\"aud\":\"backend\",\"sub\":\"u-1\",\"perms\":\"users.read.own users.write.own\"}"
tok expired "$HDR" "{\"exp\":$((NOW - 3600)),\"iat\":$((NOW - 7200)),\"iss\":\"$ISS\",\"aud\":\"backend\",\"sub\":\"u-1\",\"typ\":\"Bearer\"}"
tok nbf "$HDR" "{\"exp\":$((NOW + 600)),\"nbf\":$((NOW + 300)),\"iss\":\"$ISS\",\"aud\":\"backend\",\"sub\":\"u-1\",\"typ\":\"Bearer\"}"
tok other-realm "$HDR" "{\"exp\":$((NOW + 600)),\"iss\":\"http://127.0.0.1:9/realms/tenant-globex\",\"aud\":\"backend\",\"sub\":\"u-1\",\"typ\":\"Bearer\"}"
tok azp-only "$HDR" "{\"exp\":$((NOW + 600)),\"iss\":\"$ISS\",\"azp\":\"backend\",\"sub\":\"u-1\",\"typ\":\"Bearer\"}"
tok refresh "$HDR" "{\"exp\":$((NOW + 600)),\"iss\":\"$ISS\",\"aud\":\"backend\",\"sub\":\"u-1\",\"typ\":\"Refresh\"}"
tok no-sub "$HDR" "{\"exp\":$((NOW + 600)),\"iss\":\"$ISS\",\"aud\":\"backend\",\"typ\":\"Bearer\"}"
tok unknown-kid '{"alg":"RS256","kid":"k2"}' "$FULL"
tok no-kid '{"alg":"RS256"}' "$FULL"
tok jku '{"alg":"RS256","kid":"k1","jku":"http://evil/jwks"}' "$FULL"
tok crit '{"alg":"RS256","kid":"k1","crit":["exp"]}' "$FULL"
tok ps256 '{"alg":"PS256","kid":"k1"}' "$FULL"
tok escaped '{"alg":"RS\u0032\u0035\u0036","kid":"k\u0031"}' "{\"exp\":$((NOW + 600)),\"iss\":\"http:\\/\\/127.0.0.1:9\\/realms\\/tenant-acme\",\"aud\":\"backend\",\"sub\":\"u\\u0000x\",\"typ\":\"Bearer\"}"
printf '0eyJhbGciOiJub25lIn0.eyJzdWIiOiJ1In0.' > "$C/token/alg-none.bin"
printf '0eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ1In0.c2ln' > "$C/token/hs256.bin"
printf '0a.b.c.d.e' > "$C/token/jwe.bin"
printf '0..' > "$C/token/dots.bin"
printf '1{"alg":"RS256","kid":"k1"}\xff{"exp":1e400,"aud":{"a":1},"sub":[1]}\xff' > "$C/token/types.bin"
