//! Integration tests of chainmail against real peers, and their test helpers.
#![forbid(unsafe_code)]
