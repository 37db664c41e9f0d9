//! The endpoints the gateway answers itself on tenant hosts. The decision names them
//! (`Outcome::Endpoint`); each module here only does its own I/O (read the body, call the
//! domain, produce an `Answer`).

pub(crate) mod revocation;
