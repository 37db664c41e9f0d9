//! TLS termination on the proxy listener (rustls), end to end.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Command;

use common::*;

#[tokio::test]
async fn tls_listener_terminates_and_routes_by_host() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let ok = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=acme.qa.example.com",
        ])
        .args(["-addext", "subjectAltName=DNS:acme.qa.example.com"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl must be installed")
        .status
        .success();
    assert!(ok, "openssl could not make a test certificate");
    let up = Upstream::start().await;
    let template = TestConfig::new("http://127.0.0.1:9")
        .threads(1)
        .tls(&cert, &key)
        .keycloak("require_keys_for_ready: false")
        .with(
            r#"
tenants:
  - {id: acme, realm: tenant-acme, hosts: [acme.qa.example.com]}
routes:
  - {path: "/public/**", public: true}
"#,
        );
    let gw = Gateway::start(&template, up.addr);
    let https = reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .resolve("acme.qa.example.com", gw.proxy)
        .build()
        .unwrap();
    let url = format!("https://acme.qa.example.com:{}/public/x", gw.proxy.port());
    let r = https
        .get(&url)
        .header("x-tenant-id", "evil")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let seen = up.last();
    assert_eq!(seen.header("x-tenant-id"), Some("acme"));
    assert_eq!(seen.header("x-forwarded-proto"), Some("https"));
    // Plain HTTP on the TLS port is not served.
    let plain = client()
        .get(gw.url("/public/x"))
        .header("host", "acme.qa.example.com")
        .send()
        .await;
    assert!(plain.map(|r| !r.status().is_success()).unwrap_or(true));
}
