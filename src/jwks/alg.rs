//! The signature algorithms realmgate accepts, and sets of them.

use aws_lc_rs::signature as sig;
use serde::{Deserialize, Serialize};

/// Signature algorithms realmgate accepts. HMAC and `none` are deliberately absent: a
/// realm's public key must never double as an HMAC secret.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Alg {
    RS256,
    RS384,
    RS512,
    PS256,
    PS384,
    PS512,
    ES256,
    ES384,
    EdDSA,
}

impl Alg {
    pub const ALL: [Alg; 9] = [
        Alg::RS256,
        Alg::RS384,
        Alg::RS512,
        Alg::PS256,
        Alg::PS384,
        Alg::PS512,
        Alg::ES256,
        Alg::ES384,
        Alg::EdDSA,
    ];

    /// Parses a JOSE `alg` name (exact, case-sensitive as RFC 7518 requires).
    pub fn from_name(name: &str) -> Option<Alg> {
        Some(match name {
            "RS256" => Alg::RS256,
            "RS384" => Alg::RS384,
            "RS512" => Alg::RS512,
            "PS256" => Alg::PS256,
            "PS384" => Alg::PS384,
            "PS512" => Alg::PS512,
            "ES256" => Alg::ES256,
            "ES384" => Alg::ES384,
            "EdDSA" => Alg::EdDSA,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Alg::RS256 => "RS256",
            Alg::RS384 => "RS384",
            Alg::RS512 => "RS512",
            Alg::PS256 => "PS256",
            Alg::PS384 => "PS384",
            Alg::PS512 => "PS512",
            Alg::ES256 => "ES256",
            Alg::ES384 => "ES384",
            Alg::EdDSA => "EdDSA",
        }
    }

    fn bit(self) -> u16 {
        1 << (self as u16)
    }

    pub(super) fn rsa_params(self) -> Option<&'static sig::RsaParameters> {
        Some(match self {
            Alg::RS256 => &sig::RSA_PKCS1_2048_8192_SHA256,
            Alg::RS384 => &sig::RSA_PKCS1_2048_8192_SHA384,
            Alg::RS512 => &sig::RSA_PKCS1_2048_8192_SHA512,
            Alg::PS256 => &sig::RSA_PSS_2048_8192_SHA256,
            Alg::PS384 => &sig::RSA_PSS_2048_8192_SHA384,
            Alg::PS512 => &sig::RSA_PSS_2048_8192_SHA512,
            _ => return None,
        })
    }
}

impl std::fmt::Display for Alg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Alg {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Alg::from_name(s).ok_or_else(|| {
            format!("unsupported algorithm {s:?} (allowed: RS256/384/512, PS256/384/512, ES256/384, EdDSA)")
        })
    }
}

/// A set of [`Alg`]s as a bit mask (copy, no allocation on the request path).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AlgSet(u16);

impl AlgSet {
    pub fn from_slice(algs: &[Alg]) -> Self {
        AlgSet(algs.iter().fold(0, |m, a| m | a.bit()))
    }
    pub fn contains(self, alg: Alg) -> bool {
        self.0 & alg.bit() != 0
    }
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
    pub fn iter(self) -> impl Iterator<Item = Alg> {
        Alg::ALL.into_iter().filter(move |a| self.contains(*a))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn alg_names_and_sets() {
        for a in Alg::ALL {
            assert_eq!(Alg::from_name(a.name()), Some(a));
            assert_eq!(a.name().parse::<Alg>().unwrap(), a);
        }
        for bad in ["none", "HS256", "rs256", "RSA-OAEP", ""] {
            assert_eq!(Alg::from_name(bad), None, "{bad}");
        }
        let s = AlgSet::from_slice(&[Alg::RS256, Alg::ES256]);
        assert!(s.contains(Alg::RS256) && s.contains(Alg::ES256) && !s.contains(Alg::PS256));
        assert_eq!(s.iter().collect::<Vec<_>>(), vec![Alg::RS256, Alg::ES256]);
        assert!(AlgSet::default().is_empty());
    }
}
