//! Generated gRPC code for `proto/ferry/v1/ferry.proto` (package `ferry.v1`).

#[allow(clippy::all, missing_docs)]
pub mod v1 {
    tonic::include_proto!("ferry.v1");
}

pub use v1::*;
