//! The compiled `revocation:` section (validated in `config`; see README, "Revocation").

use std::time::Duration;

/// What revocation does, as validated at load.
#[derive(Debug, Clone, PartialEq)]
pub struct RevocationSettings {
    pub enabled: bool,
    /// Seconds an entry is held after its time: the longest token lifetime plus leeway.
    pub hold_secs: u64,
    pub max_entries: usize,
    /// Clock leeway in seconds (`keycloak.leeway`).
    pub leeway_secs: u64,
    pub backchannel_path: String,
    pub not_before_path: String,
    /// Clients a logout token's `aud` (and a not-before push's `resource`) must name.
    pub audiences: Vec<Box<str>>,
    /// Seconds a logout token stays fresh after its `iat`.
    pub max_age_secs: u64,
    pub revoke_subject: bool,
    pub max_body_bytes: usize,
    pub rate_per_second: u32,
    /// Shared with other replicas through Redis; `None`: this replica only.
    pub replica: Option<ReplicaSettings>,
}

/// Where replicas meet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaSettings {
    pub url: String,
    pub channel: String,
    pub key: String,
    pub command_timeout: Duration,
}

impl Default for RevocationSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            hold_secs: 3600 + 30,
            max_entries: 100_000,
            leeway_secs: 30,
            backchannel_path: "/.realmgate/backchannel-logout".into(),
            not_before_path: "/.realmgate/k_push_not_before".into(),
            audiences: Vec::new(),
            max_age_secs: 120,
            revoke_subject: true,
            max_body_bytes: 16 * 1024,
            rate_per_second: 50,
            replica: None,
        }
    }
}
