//! The libraries the scripts get beyond the core API (entries of
//! [`crate::script::MODULES`]).

pub mod pg;
mod pg_array;
