//! Composition and the operator's surfaces: the server assembly (`server`), the admin
//! listener (`admin`, read-only), the operator's write listener (`operator`), `realmgate explain` and `realmgate demo`. The top floor: it imports
//! every domain, nothing imports it.

pub mod admin;
pub mod demo;
pub mod explain;
pub mod operator;
pub mod server;
