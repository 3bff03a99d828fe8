//! The `prima` command line.
#![forbid(unsafe_code)]

fn main() {}
