//! realmgate: multi-tenant authentication gateway on Pingora.

pub mod tenant;
