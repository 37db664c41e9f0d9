//! Keycloak's not-before push (the adapter protocol's `k_push_not_before` action): a JWS the
//! realm signs, POSTed as the request body to `{client admin URL}/k_push_not_before`, whose
//! payload is `{"id", "expiration", "resource", "action": "PUSH_NOT_BEFORE", "notBefore"}`.
//! Pure: the caller verifies the signature with the realm's keys once these checks pass.

use serde::Deserialize;

/// Why a not-before push was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NotBeforeError {
    #[error("the not-before push is not a signed JWS with valid JSON")]
    Malformed,
    #[error("the action is not PUSH_NOT_BEFORE")]
    WrongAction,
    #[error("the not-before push expired")]
    Expired,
    #[error("the not-before push names no configured client")]
    Resource,
    #[error("the not-before time is in the future")]
    Future,
}

impl NotBeforeError {
    pub fn code(self) -> &'static str {
        match self {
            NotBeforeError::Malformed => "malformed",
            NotBeforeError::WrongAction => "wrong_action",
            NotBeforeError::Expired => "expired",
            NotBeforeError::Resource => "resource_mismatch",
            NotBeforeError::Future => "not_before_in_future",
        }
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Raw {
    action: Option<String>,
    expiration: Option<u64>,
    resource: Option<String>,
    not_before: Option<u64>,
}

/// Validates a push; returns its not-before time (0: "clear", nothing to do).
pub fn validate(
    payload: &[u8],
    audiences: &[Box<str>],
    now: u64,
    leeway: u64,
) -> Result<u64, NotBeforeError> {
    let raw: Raw = serde_json::from_slice(payload).map_err(|_| NotBeforeError::Malformed)?;
    if raw.action.as_deref() != Some("PUSH_NOT_BEFORE") {
        return Err(NotBeforeError::WrongAction);
    }
    let expiration = raw.expiration.ok_or(NotBeforeError::Malformed)?;
    if now >= expiration.saturating_add(leeway) {
        return Err(NotBeforeError::Expired);
    }
    let resource = raw.resource.ok_or(NotBeforeError::Resource)?;
    if !audiences.iter().any(|a| **a == *resource) {
        return Err(NotBeforeError::Resource);
    }
    let nb = raw.not_before.ok_or(NotBeforeError::Malformed)?;
    if nb > now.saturating_add(leeway) {
        return Err(NotBeforeError::Future);
    }
    Ok(nb)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn push(v: serde_json::Value) -> Result<u64, NotBeforeError> {
        validate(v.to_string().as_bytes(), &["backend".into()], 1000, 5)
    }

    #[test]
    fn keycloak_push_is_read_and_checked() {
        let ok = json!({"id": "x", "expiration": 1030, "resource": "backend",
            "action": "PUSH_NOT_BEFORE", "notBefore": 990});
        assert_eq!(push(ok.clone()), Ok(990));
        let mut c = ok.clone();
        c["action"] = json!("LOGOUT");
        assert_eq!(push(c), Err(NotBeforeError::WrongAction));
        let mut c = ok.clone();
        c["expiration"] = json!(990);
        assert_eq!(push(c), Err(NotBeforeError::Expired));
        let mut c = ok.clone();
        c["resource"] = json!("other");
        assert_eq!(push(c), Err(NotBeforeError::Resource));
        let mut c = ok.clone();
        c["notBefore"] = json!(2000);
        assert_eq!(push(c), Err(NotBeforeError::Future));
        assert_eq!(
            validate(b"not json", &[], 0, 0),
            Err(NotBeforeError::Malformed)
        );
    }
}
