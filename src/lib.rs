//! realmgate: multi-tenant authentication gateway on Pingora.
