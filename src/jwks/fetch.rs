//! Fetching a realm's keys (refresher side only): the HTTP client, OIDC discovery, JWKS and
//! key-file reads, size and redirect limits, and `Cache-Control: max-age`. Pure I/O: what a
//! result does to the realm is the store's (`KeyStore::apply`), when it runs the refresher's.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::realm::Realm;
use super::settings::{JwksSettings, Source};

/// A key document as read, with the response's `max-age` if any.
pub(super) struct Fetched {
    pub(super) doc: Vec<u8>,
    pub(super) max_age: Option<Duration>,
}

/// Why a fetch produced no document; decides the realm's state (see `KeyStore::apply`).
#[derive(Debug)]
pub(super) enum FetchError {
    /// The IdP answered 404: it does not know the realm.
    NotFound(String),
    /// A document arrived but must not be used (issuer mismatch, bad jwks_uri).
    Refused(String),
    /// Transport error, timeout, non-2xx, oversize, unreadable file.
    Failed(String),
}

/// `max-age` from a `Cache-Control` value; `None` when absent or when the response forbids
/// caching (`no-store`, `no-cache`). Pure.
pub fn parse_max_age(cache_control: &str) -> Option<Duration> {
    let mut max_age = None;
    for directive in cache_control.split(',') {
        let d = directive.trim();
        let lower = d.to_ascii_lowercase();
        if lower == "no-store" || lower == "no-cache" {
            return None;
        }
        if let Some(v) = lower.strip_prefix("max-age=") {
            max_age = v
                .trim_matches('"')
                .parse::<u64>()
                .ok()
                .map(Duration::from_secs);
        }
    }
    max_age
}

pub(super) fn build_client(settings: &JwksSettings) -> Result<reqwest::Client, String> {
    // Redirects are followed only to the same scheme+host+port, at most 3 times: a JWKS
    // endpoint must not be able to send us to an attacker-chosen host.
    let policy = reqwest::redirect::Policy::custom(|attempt| {
        let same_origin = attempt.previous().first().is_some_and(|first| {
            first.scheme() == attempt.url().scheme()
                && first.host_str() == attempt.url().host_str()
                && first.port_or_known_default() == attempt.url().port_or_known_default()
        });
        if attempt.previous().len() > 3 || !same_origin {
            attempt.stop()
        } else {
            attempt.follow()
        }
    });
    reqwest::Client::builder()
        .connect_timeout(settings.connect_timeout)
        .timeout(settings.fetch_timeout)
        .redirect(policy)
        .user_agent(concat!("realmgate/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| format!("cannot build HTTP client: {e}"))
}

fn check_http_url(url: &str) -> Result<(), String> {
    let parsed = reqwest::Url::parse(url).map_err(|e| format!("bad URL {url:?}: {e}"))?;
    match parsed.scheme() {
        "http" | "https" => Ok(()),
        other => Err(format!("URL scheme {other:?} is not http(s)")),
    }
}

/// GETs a JSON document, reading the body in chunks and stopping past `limit` bytes.
async fn get_doc(
    client: Option<&reqwest::Client>,
    url: &str,
    limit: usize,
) -> Result<Fetched, FetchError> {
    let client = client.ok_or_else(|| FetchError::Failed("no HTTP client".into()))?;
    check_http_url(url).map_err(FetchError::Refused)?;
    let mut resp = client
        .get(url)
        .header(http::header::ACCEPT, "application/json")
        .send()
        .await
        .map_err(|e| FetchError::Failed(format!("GET {url}: {e}")))?;
    let status = resp.status();
    if status == http::StatusCode::NOT_FOUND {
        return Err(FetchError::NotFound(format!("GET {url}: 404")));
    }
    if !status.is_success() {
        return Err(FetchError::Failed(format!(
            "GET {url}: HTTP {}",
            status.as_u16()
        )));
    }
    if resp.content_length().is_some_and(|n| n > limit as u64) {
        return Err(FetchError::Failed(format!(
            "GET {url}: document larger than {limit} bytes"
        )));
    }
    let max_age = resp
        .headers()
        .get(http::header::CACHE_CONTROL)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_max_age);
    let mut body = Vec::new();
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| FetchError::Failed(format!("GET {url}: {e}")))?
    {
        if body.len() + chunk.len() > limit {
            return Err(FetchError::Failed(format!(
                "GET {url}: document larger than {limit} bytes"
            )));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Fetched { doc: body, max_age })
}

#[derive(Deserialize)]
struct Discovery {
    issuer: String,
    jwks_uri: String,
}

/// Runs OIDC discovery: the document's `issuer` must equal the expected issuer exactly.
async fn discover(
    client: Option<&reqwest::Client>,
    url: &str,
    issuer: &str,
    limit: usize,
) -> Result<String, FetchError> {
    let doc = get_doc(client, url, limit).await?;
    let d: Discovery = serde_json::from_slice(&doc.doc)
        .map_err(|e| FetchError::Failed(format!("discovery document at {url} unreadable: {e}")))?;
    if d.issuer != issuer {
        return Err(FetchError::Refused(format!(
            "discovery issuer {:?} differs from the expected {issuer:?}",
            d.issuer
        )));
    }
    check_http_url(&d.jwks_uri).map_err(FetchError::Refused)?;
    Ok(d.jwks_uri)
}

async fn read_file(path: PathBuf, limit: usize) -> Result<Fetched, FetchError> {
    let shown = path.display().to_string();
    let res = tokio::task::spawn_blocking(move || -> Result<Vec<u8>, String> {
        use std::io::Read;
        let f = std::fs::File::open(&path).map_err(|e| e.to_string())?;
        let mut buf = Vec::new();
        f.take(limit as u64 + 1)
            .read_to_end(&mut buf)
            .map_err(|e| e.to_string())?;
        if buf.len() > limit {
            return Err(format!("larger than {limit} bytes"));
        }
        Ok(buf)
    })
    .await
    .map_err(|e| FetchError::Failed(format!("reading {shown}: {e}")))?;
    res.map(|doc| Fetched { doc, max_age: None })
        .map_err(|e| FetchError::Failed(format!("reading {shown}: {e}")))
}

/// Reads `realm`'s key document from its source (a file, a JWKS URI, or OIDC discovery
/// then the JWKS URI it names, remembered until a fetch fails).
pub(super) async fn fetch_keys(
    client: Option<&reqwest::Client>,
    settings: &JwksSettings,
    realm: &Realm,
) -> Result<Fetched, FetchError> {
    let limit = settings.max_document_bytes;
    match &realm.spec.source {
        Source::File(path) => read_file(path.clone(), limit).await,
        Source::JwksUri(uri) => get_doc(client, uri, limit).await,
        Source::Discovery(url) => {
            let cached = realm.memo.lock().jwks_uri.clone();
            let uri = match cached {
                Some(u) => u,
                None => {
                    let u = discover(client, url, realm.issuer(), limit).await?;
                    realm.memo.lock().jwks_uri = Some(u.clone());
                    u
                }
            };
            let res = get_doc(client, &uri, limit).await;
            if res.is_err() {
                // Rediscover next time: the IdP may have moved its JWKS.
                realm.memo.lock().jwks_uri = None;
            }
            res
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::jwks::testkit::*;
    use crate::jwks::{system_clock, RealmOverride};
    use std::sync::Arc;
    use std::time::Instant;

    #[test]
    fn cache_control_max_age() {
        for (v, want) in [
            ("max-age=120", Some(120)),
            ("public, max-age=3600, must-revalidate", Some(3600)),
            ("Max-Age=7", Some(7)),
            ("no-cache", None),
            ("max-age=60, no-store", None),
            ("max-age=abc", None),
            ("", None),
        ] {
            assert_eq!(parse_max_age(v), want.map(Duration::from_secs), "{v:?}");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn discovery_issuer_mismatch_refuses_the_realm() {
        let idp = Idp::start().await;
        idp.set_keys("r-evil", vec![rsa_a().jwk("k1")]);
        idp.set_mode("r-evil", Mode::WrongIssuer);
        let (store, _stop) = start_store(test_settings(&idp.base), &["r-evil"], system_clock());
        assert!(
            wait_until(|| async { state_of(&store, "r-evil").unwrap().state != "not_loaded" })
                .await
        );
        let info = state_of(&store, "r-evil").unwrap();
        assert_eq!(info.state, "refused");
        assert!(info.last_error.unwrap().contains("discovery issuer"));
        assert!(info.kids.is_empty());
        assert_eq!(
            idp.hits("certs", "r-evil"),
            0,
            "keys are never fetched from a refused realm"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn document_size_limit_is_enforced() {
        let idp = Idp::start().await;
        idp.set_keys("r-huge", vec![rsa_a().jwk("k1")]);
        idp.set_mode("r-huge", Mode::Huge);
        let settings = JwksSettings {
            max_document_bytes: 16 * 1024,
            ..test_settings(&idp.base)
        };
        let (store, _stop) = start_store(settings, &["r-huge"], system_clock());
        assert!(
            wait_until(|| async { state_of(&store, "r-huge").unwrap().state != "not_loaded" })
                .await
        );
        let info = state_of(&store, "r-huge").unwrap();
        assert_eq!(info.state, "failed");
        assert!(info.last_error.unwrap().contains("larger than 16384 bytes"));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn garbage_and_hanging_idps_fail_cleanly() {
        let idp = Idp::start().await;
        for r in ["r-garbage", "r-hang"] {
            idp.set_keys(r, vec![rsa_a().jwk("k1")]);
        }
        idp.set_mode("r-garbage", Mode::Garbage);
        idp.set_mode("r-hang", Mode::Hang);
        let started = Instant::now();
        let (store, _stop) = start_store(
            test_settings(&idp.base),
            &["r-garbage", "r-hang"],
            system_clock(),
        );
        assert!(
            wait_until(|| async { store.describe().iter().all(|r| r.state != "not_loaded") }).await
        );
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "bounded by fetch_timeout"
        );
        for r in store.describe() {
            assert_eq!(r.state, "failed", "{r:?}");
        }
        let err = |r: &str| state_of(&store, r).unwrap().last_error.unwrap();
        assert!(
            err("r-garbage").contains("unreadable"),
            "{}",
            err("r-garbage")
        );
        assert!(err("r-hang").contains("GET"), "{}", err("r-hang"));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn redirects_only_within_the_same_origin() {
        let idp = Idp::start().await;
        for r in ["r-same", "r-other"] {
            idp.set_keys(r, vec![rsa_a().jwk("k1")]);
        }
        idp.set_mode("r-same", Mode::RedirectSameHost);
        idp.set_mode("r-other", Mode::RedirectOtherHost);
        let (store, _stop) = start_store(
            test_settings(&idp.base),
            &["r-same", "r-other"],
            system_clock(),
        );
        assert!(
            wait_until(|| async { store.describe().iter().all(|r| r.state != "not_loaded") }).await
        );
        assert_eq!(state_of(&store, "r-same").unwrap().state, "loaded");
        let other = state_of(&store, "r-other").unwrap();
        assert_eq!(other.state, "failed");
        assert!(other.last_error.unwrap().contains("302"));
        assert_eq!(idp.hits("certs-real", "r-other"), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn jwks_uri_override_skips_discovery_and_jwks_file_reloads() {
        let idp = Idp::start().await;
        idp.set_keys("ext", vec![rsa_a().jwk("ext-1")]);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jwks.json");
        std::fs::write(&path, jwks_doc(vec![rsa_b().jwk("file-1")])).unwrap();
        let mut settings = test_settings(&idp.base);
        settings.refresh = Duration::from_millis(200);
        Arc::make_mut(&mut settings.realm_overrides).insert(
            "ext".into(),
            RealmOverride {
                issuer: Some("https://issuer.example.com".into()),
                jwks_uri: Some(format!("{}/custom/ext/jwks.json", idp.base)),
                ..RealmOverride::default()
            },
        );
        Arc::make_mut(&mut settings.realm_overrides).insert(
            "airgap".into(),
            RealmOverride {
                jwks_file: Some(path.clone()),
                ..RealmOverride::default()
            },
        );
        let (store, _stop) = start_store(settings, &["ext", "airgap"], system_clock());
        assert!(wait_until(|| async { store.static_realms_ready() }).await);
        assert_eq!(
            state_of(&store, "ext").unwrap().kids,
            vec!["ext-1".to_string()]
        );
        assert_eq!(idp.hits("disco", "ext"), 0);
        assert!(idp.hits("custom", "ext") >= 1);
        assert_eq!(&*store.issuer_for("ext"), "https://issuer.example.com");
        assert_eq!(
            state_of(&store, "airgap").unwrap().kids,
            vec!["file-1".to_string()]
        );
        std::fs::write(&path, jwks_doc(vec![rsa_c().jwk("file-2")])).unwrap();
        assert!(
            wait_until(|| async {
                state_of(&store, "airgap").unwrap().kids == vec!["file-2".to_string()]
            })
            .await
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn fetch_reads_max_age_and_classifies_404() {
        let idp = Idp::start().await;
        idp.set_keys("r-cc", vec![rsa_a().jwk("k1")]);
        idp.set_cache_control("r-cc", "public, max-age=120");
        let client = build_client(&test_settings(&idp.base)).unwrap();
        let url = format!("{}/realms/r-cc/protocol/openid-connect/certs", idp.base);
        let doc = get_doc(Some(&client), &url, 1 << 20).await.unwrap();
        assert_eq!(doc.max_age, Some(Duration::from_secs(120)));
        let missing = format!("{}/realms/r-none/protocol/openid-connect/certs", idp.base);
        assert!(matches!(
            get_doc(Some(&client), &missing, 1 << 20).await,
            Err(FetchError::NotFound(_))
        ));
        assert!(matches!(
            get_doc(Some(&client), "file:///etc/passwd", 1 << 20).await,
            Err(FetchError::Refused(_))
        ));
        assert!(matches!(
            get_doc(None, &url, 1 << 20).await,
            Err(FetchError::Failed(_))
        ));
    }
}
