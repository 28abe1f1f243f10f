//! Benchmark drivers for chainmail.
#![forbid(unsafe_code)]
