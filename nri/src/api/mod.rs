//! The NRI protocol types and ttrpc stubs, generated from `nri/proto/api.proto` by
//! `nri/scripts/regen-api.sh` (ttrpc-codegen, no protoc). Do not edit the generated files.

/// Protobuf messages of `nri.pkg.api.v1alpha1`.
pub mod api;
/// ttrpc clients, server traits and service tables for the `Runtime` and `Plugin` services.
pub mod api_ttrpc;

pub use api::*;
