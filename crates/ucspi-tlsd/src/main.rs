//! A UCSPI-TLS server: lets its application start TLS on demand.
#![forbid(unsafe_code)]

fn main() {}
