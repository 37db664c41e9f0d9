//! The http loader: `GET` the backend's own permission endpoint.
//!
//! Contract: `200` with a JSON array of permission codes (or an object whose `permissions`
//! member is one) is the set; `404` means "no such user / role here" and is an empty set;
//! anything else, a body over `max_body_bytes`, or a body that is not that JSON is an error
//! (the grant source becomes unavailable: fail closed). Redirects are not followed.

use std::time::Duration;

use reqwest::header::{HeaderName, HeaderValue, ACCEPT};
use reqwest::StatusCode;
use serde::Deserialize;

use super::settings::HttpSettings;
use super::template::Template;
use super::{field, FieldError, LoadError, PerSubject, Subject};

pub(super) struct HttpSource {
    client: reqwest::Client,
    urls: PerSubject<Template>,
    max_body: usize,
    secret: Option<(HeaderName, HeaderValue)>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Body {
    List(Vec<String>),
    Object { permissions: Vec<String> },
}

impl HttpSource {
    pub(super) fn new(s: &HttpSettings, timeout: Duration) -> Result<Self, FieldError> {
        let user = s
            .user_url
            .as_deref()
            .map(|u| Template::parse(u, "sub").map_err(|e| field("http.user_url", e)))
            .transpose()?;
        let role = s
            .role_url
            .as_deref()
            .map(|u| Template::parse(u, "role").map_err(|e| field("http.role_url", e)))
            .transpose()?;
        if user.is_none() && role.is_none() {
            return Err(field("http", "set user_url, role_url or both"));
        }
        let secret = match &s.secret {
            None => None,
            Some(v) => {
                let name = HeaderName::from_bytes(s.secret_header.as_bytes())
                    .map_err(|_| field("http.secret_header", "is not a valid header name"))?;
                let mut value = HeaderValue::from_str(v)
                    .map_err(|_| field("http.secret", "is not a valid header value"))?;
                value.set_sensitive(true);
                Some((name, value))
            }
        };
        let mut b = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .pool_idle_timeout(Duration::from_secs(30))
            .user_agent(concat!("realmgate/", env!("CARGO_PKG_VERSION")));
        if let Some(ca) = &s.ca_file {
            let pem = std::fs::read(ca)
                .map_err(|e| field("http.ca_file", format!("{}: {e}", ca.display())))?;
            for cert in reqwest::Certificate::from_pem_bundle(&pem).map_err(|_| {
                field(
                    "http.ca_file",
                    format!("{}: not a PEM bundle", ca.display()),
                )
            })? {
                b = b.add_root_certificate(cert);
            }
        }
        match (&s.client_cert, &s.client_key) {
            (Some(cert), Some(key)) => {
                let mut pem = std::fs::read(cert)
                    .map_err(|e| field("http.client_cert", format!("{}: {e}", cert.display())))?;
                pem.push(b'\n');
                pem.extend(
                    std::fs::read(key)
                        .map_err(|e| field("http.client_key", format!("{}: {e}", key.display())))?,
                );
                let id = reqwest::Identity::from_pem(&pem).map_err(|_| {
                    field(
                        "http.client_cert",
                        "with client_key is not a PEM certificate and private key",
                    )
                })?;
                b = b.identity(id);
            }
            (None, None) => {}
            _ => {
                return Err(field(
                    "http.client_key",
                    "set both client_cert and client_key, or neither",
                ))
            }
        }
        let client = b
            .build()
            .map_err(|e| field("http", format!("cannot build the client ({e})")))?;
        Ok(Self {
            client,
            urls: PerSubject { user, role },
            max_body: s.max_body_bytes,
            secret,
        })
    }

    pub(super) fn loads(&self, subject: &Subject<'_>) -> bool {
        self.urls.loads(subject)
    }

    pub(super) async fn fetch(
        &self,
        tenant: &str,
        subject: &Subject<'_>,
    ) -> Result<Vec<String>, LoadError> {
        let Some((template, value)) = self.urls.get(subject) else {
            return Ok(Vec::new());
        };
        let mut req = self
            .client
            .get(template.render(tenant, value))
            .header(ACCEPT, "application/json");
        if let Some((name, value)) = &self.secret {
            req = req.header(name.clone(), value.clone());
        }
        let mut resp = req.send().await.map_err(transport)?;
        match resp.status() {
            StatusCode::OK => {}
            StatusCode::NOT_FOUND => return Ok(Vec::new()),
            s => return Err(LoadError::Status(s.as_u16())),
        }
        if resp
            .content_length()
            .is_some_and(|n| n > self.max_body as u64)
        {
            return Err(LoadError::TooLarge);
        }
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(transport)? {
            if body.len() + chunk.len() > self.max_body {
                return Err(LoadError::TooLarge);
            }
            body.extend_from_slice(&chunk);
        }
        match serde_json::from_slice::<Body>(&body) {
            Ok(Body::List(v) | Body::Object { permissions: v }) => Ok(v),
            Err(_) => Err(LoadError::BadBody),
        }
    }
}

fn transport(e: reqwest::Error) -> LoadError {
    if e.is_timeout() {
        LoadError::Timeout
    } else {
        // Without the URL: it names users.
        LoadError::Transport(e.without_url().to_string())
    }
}
