//! # rewarddance-proto
//!
//! The generated Rust types and tonic client/server stubs for the public API,
//! `proto/rewarddance/v1/reward.proto` (package `rewarddance.v1`), and the [`codec`] they use (it
//! only chooses the status of a message that does not decode). Nothing else lives here: the
//! server and any Rust client depend on this crate, the proto file is the documentation.

#![warn(missing_docs)]

pub mod codec;

/// Package `rewarddance.v1`: messages, the `RewardService` client and server.
#[allow(missing_docs, clippy::all)]
pub mod v1 {
    tonic::include_proto!("rewarddance.v1");
}

/// Encoded `FileDescriptorSet` of the API, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    tonic::include_file_descriptor_set!("rewarddance_descriptor");

/// Fully-qualified service name, as registered with gRPC health checking.
pub const SERVICE_NAME: &str = "rewarddance.v1.RewardService";
