//! realmgate: a multi-tenant authentication gateway on Pingora.
//!
//! Every request is mapped from its `Host` to a tenant and that tenant's Keycloak realm, its
//! access token is verified against the realm's JWKS, the route's `resource.action.scope`
//! permission is enforced, and the client's identity headers are replaced by verified ones
//! before the request reaches the upstream. The request path lives in [`proxy`]; every step it
//! takes is a call into a pure module below it.
#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]

pub mod app;
pub mod assertion;
pub mod authz;
pub mod config;
pub mod config_error;
pub mod decision;
pub mod downstream;
pub mod grants;
pub mod http;
pub mod jwks;
pub mod limits;
pub mod metrics;
pub mod proxy;
pub mod revocation;
pub mod state;
pub mod telemetry;
pub mod tenant;
#[cfg(feature = "testkit")]
pub mod testkit;
pub mod verify;
