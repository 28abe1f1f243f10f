//! Adds STARTTLS to a plain SMTP server, under a UCSPI-TLS server.
#![forbid(unsafe_code)]

fn main() {}
