//! `rediss://` works: grants are read from a TLS-only `redis-server` child, verified against
//! a CA given through `SSL_CERT_FILE` (rustls-native-certs honours it), and a server whose
//! certificate is not trusted is never used. The variable must be in the environment before
//! any TLS client is built, and changing a running process's environment is racy (and banned
//! by `.clippy.toml`), so the test makes its certificates, then runs itself again as a child
//! process with `SSL_CERT_FILE` set from the start.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use realmgate::grants::{GrantKey, GrantSettings, GrantSource, GrantStore};

fn openssl(args: &[&str], dir: &Path) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl must be installed");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA and a server certificate for 127.0.0.1 signed by it, in `dir`.
fn make_certs(dir: &Path, ca: &str) {
    openssl(
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=realmgate test CA",
            "-keyout",
            &format!("{ca}.key"),
            "-out",
            &format!("{ca}.pem"),
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign",
        ],
        dir,
    );
    openssl(
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=127.0.0.1",
            "-keyout",
            &format!("{ca}-server.key"),
            "-out",
            &format!("{ca}-server.csr"),
        ],
        dir,
    );
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    openssl(
        &[
            "x509",
            "-req",
            "-in",
            &format!("{ca}-server.csr"),
            "-CA",
            &format!("{ca}.pem"),
            "-CAkey",
            &format!("{ca}.key"),
            "-CAcreateserial",
            "-days",
            "1",
            "-extfile",
            "ext.cnf",
            "-out",
            &format!("{ca}-server.pem"),
        ],
        dir,
    );
}

struct TlsRedis {
    child: Child,
    port: u16,
}

impl Drop for TlsRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_tls_redis(dir: &Path, ca: &str) -> TlsRedis {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new("redis-server")
        .args([
            "--port",
            "0",
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .args(["--tls-port", &port.to_string(), "--tls-auth-clients", "no"])
        .arg("--tls-cert-file")
        .arg(dir.join(format!("{ca}-server.pem")))
        .arg("--tls-key-file")
        .arg(dir.join(format!("{ca}-server.key")))
        .arg("--tls-ca-cert-file")
        .arg(dir.join(format!("{ca}.pem")))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server must be installed (with TLS support)");
    let deadline = Instant::now() + Duration::from_secs(5);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "redis-server --tls-port did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    TlsRedis { child, port }
}

fn compile(src: &GrantSource) -> (&'static str, BTreeSet<String>) {
    match src {
        GrantSource::Redis(raw) => ("redis", raw.user.iter().cloned().collect()),
        GrantSource::Unavailable => ("unavailable", BTreeSet::new()),
        GrantSource::Disabled => ("disabled", BTreeSet::new()),
    }
}

/// Set (to the certificate folder) only in the child run of this test.
const CERT_DIR: &str = "REALMGATE_TEST_REDIS_TLS_CERTS";
const TEST: &str = "rediss_urls_connect_with_verified_tls";

#[tokio::test]
async fn rediss_urls_connect_with_verified_tls() {
    match std::env::var_os(CERT_DIR) {
        Some(dir) => check_tls_grants(Path::new(&dir)).await,
        None => run_as_child(),
    }
}

/// Makes both CAs, then runs this test again in a child process whose environment trusts
/// only the first, and passes when the child ran it and passed.
fn run_as_child() {
    let dir = tempfile::tempdir().unwrap();
    make_certs(dir.path(), "trusted");
    make_certs(dir.path(), "untrusted");
    let out = Command::new(std::env::current_exe().unwrap())
        .args([TEST, "--exact", "--nocapture", "--test-threads=1"])
        .env("SSL_CERT_FILE", dir.path().join("trusted.pem"))
        .env(CERT_DIR, dir.path())
        .output()
        .expect("the test binary runs itself");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "child run failed:\n{stdout}\n{stderr}"
    );
}

/// The test proper, in a process that trusts only the `trusted` CA.
async fn check_tls_grants(dir: &Path) {
    let good = start_tls_redis(dir, "trusted");
    let bad = start_tls_redis(dir, "untrusted");

    let url = format!("rediss://127.0.0.1:{}", good.port);
    let store = GrantStore::new(Some(GrantSettings {
        url: url.clone(),
        command_timeout: Duration::from_secs(3),
        connect_timeout: Duration::from_secs(3),
        ..GrantSettings::default()
    }))
    .unwrap();
    let mut admin = redis::Client::open(url.as_str())
        .unwrap()
        .get_connection_with_timeout(Duration::from_secs(3))
        .expect("a rediss:// connection to the TLS-only server");
    let _: i64 = redis::cmd("SADD")
        .arg("tenant:acme:user:alice:permissions")
        .arg("users.read.own")
        .query(&mut admin)
        .unwrap();
    let got = store
        .effective(&GrantKey::new("acme", "alice", &[]), compile)
        .await;
    assert_eq!(got.0, "redis");
    assert!(got.1.contains("users.read.own"), "{got:?}");

    // A server whose certificate chains to an unknown CA is never used: grants fail closed.
    let store = GrantStore::new(Some(GrantSettings {
        url: format!("rediss://127.0.0.1:{}", bad.port),
        command_timeout: Duration::from_millis(500),
        ..GrantSettings::default()
    }))
    .unwrap();
    let got = store
        .effective(&GrantKey::new("acme", "alice", &[]), compile)
        .await;
    assert_eq!(got.0, "unavailable", "{got:?}");
}
