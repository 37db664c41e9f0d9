//! Test, fuzz and bench entry points, compiled only with the `testkit` feature (the crate's
//! own tests, benches and the fuzz targets turn it on; a production build has none of it).

pub mod authz;
pub mod fixture;
pub mod fuzzing;
