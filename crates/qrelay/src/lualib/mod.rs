//! The libraries the seed documents beyond the core, each a
//! [`Module`](crate::script::Module) listed in `script::MODULES`.

pub mod json;
pub mod jwt;
pub mod sodium;
