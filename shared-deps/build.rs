//! Empty: it exists so that the `[build-dependencies]` of this crate take part in the host
//! side's feature unification (see Cargo.toml).
fn main() {}
