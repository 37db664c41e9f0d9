//! From a Redis read to [`RawGrants`]: keys Redis did not hold are asked of the loader (all at
//! once), and found answers are written back when configured.

use std::sync::Arc;

use futures::future::join_all;
use tracing::debug;

use super::keys::{role_key, user_key};
use super::link::{Fetched, Link, Read};
use super::loader::Subject;
use super::{GrantStore, RawGrants};

impl<T: Send + Sync + 'static> GrantStore<T> {
    /// None when a key the loader had to answer got no answer (fail closed). Without a loader
    /// an absent key is an empty set, as it always was. `slots` are the identity's generation
    /// slots (tenant first). Each key's generation is read just before its loader call: an
    /// invalidation after that point voids the answer (for the negative cache and write-back),
    /// one before it happened before the source was read.
    pub(super) async fn fill(
        &self,
        link: &Arc<Link>,
        tenant: &str,
        sub: &str,
        fetched: Fetched,
        slots: &[u16],
    ) -> Option<RawGrants> {
        let Fetched { user, roles } = fetched;
        let Some(loader) = &self.loader else {
            return Some(RawGrants {
                user: user.map(Read::into_members).unwrap_or_default(),
                roles: roles
                    .into_iter()
                    .map(|(r, read)| (r, read.into_members()))
                    .collect(),
            });
        };
        let tenant_slot = slots.first().copied().unwrap_or_default();
        let key_generation = |slot: u16| self.generation(&[tenant_slot, slot]);
        // Which keys to ask, with each key's generation before Redis was read.
        let mut asks: Vec<(Subject<'_>, u64)> = Vec::new();
        if matches!(user, Some(Read::Absent)) && loader.loads(&Subject::User(sub)) {
            asks.push((
                Subject::User(sub),
                key_generation(self.user_slot(tenant, sub)),
            ));
        }
        for (role, read) in &roles {
            if matches!(read, Read::Absent) && loader.loads(&Subject::Role(role)) {
                asks.push((
                    Subject::Role(role),
                    key_generation(self.role_slot(tenant, role)),
                ));
            }
        }
        let answers = join_all(
            asks.iter()
                .map(|&(subject, generation)| loader.codes(tenant, subject, generation)),
        )
        .await;
        let mut loaded: Vec<(Subject<'_>, Arc<[String]>)> = Vec::with_capacity(answers.len());
        for ((subject, generation), answer) in asks.iter().zip(answers) {
            let codes = answer?;
            if let Some(ttls) = loader.write_back {
                if !codes.is_empty() {
                    let slot = match subject {
                        Subject::User(u) => self.user_slot(tenant, u),
                        Subject::Role(r) => self.role_slot(tenant, r),
                    };
                    // Changed while the loader ran: the answer may predate the change.
                    if key_generation(slot) != *generation {
                        loader.write_back_skipped();
                    } else {
                        let (key, ttl) = match subject {
                            Subject::User(u) => {
                                (user_key(&link.key_prefix, tenant, u), ttls.user_ttl)
                            }
                            Subject::Role(r) => {
                                (role_key(&link.key_prefix, tenant, r), ttls.role_ttl)
                            }
                        };
                        if let Some(key) = key {
                            let (link, loader, codes) =
                                (Arc::clone(link), Arc::clone(loader), Arc::clone(&codes));
                            // Off the request path: the answer is already in hand.
                            tokio::spawn(async move {
                                let ok = link.write_back(&key, &codes, ttl).await;
                                loader.wrote_back(ok);
                                debug!(ok, "grant set written back to redis");
                            });
                        }
                    }
                }
            }
            loaded.push((*subject, codes));
        }
        let mut from_loader = |s: Subject<'_>| {
            loaded
                .iter()
                .position(|(k, _)| *k == s)
                .map(|i| loaded.swap_remove(i).1.to_vec())
        };
        let user = match user {
            Some(Read::Absent) => from_loader(Subject::User(sub)).unwrap_or_default(),
            other => other.map(Read::into_members).unwrap_or_default(),
        };
        let roles = roles
            .iter()
            .map(|(role, read)| {
                let members = match read {
                    Read::Absent => from_loader(Subject::Role(role)).unwrap_or_default(),
                    Read::Members(m) => m.clone(),
                };
                (role.clone(), members)
            })
            .collect();
        Some(RawGrants { user, roles })
    }
}

impl Read {
    fn into_members(self) -> Vec<String> {
        match self {
            Read::Members(m) => m,
            Read::Absent => Vec::new(),
        }
    }
}
