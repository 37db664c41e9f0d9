//! HTTP primitives the request path shares, pure and Pingora-shaped: where the host and
//! target are read (`request_target`), the header hygiene and forwarding headers
//! (`headers`), the one answer type (`answer`) and the one writer every answer of the gateway
//! goes through (`respond`).

pub mod answer;
pub mod headers;
pub mod request_target;
pub mod respond;
