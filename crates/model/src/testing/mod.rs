//! Support for tests and `rewarddance parity`, not used on request paths: reading the
//! committed parity fixtures.

pub mod fixtures;
