//! rto's plugin ABI, shared by the host and every plugin.
//!
//! - [`ffi`]: the `#[repr(C)]` descriptor (`rto_plugin_v1`), buffers, host callbacks, status codes.
//! - [`protocol`]: the JSON that crosses it, versioned on its own.
//! - [`Backend`]: the safe trait a plugin author implements; [`export_plugin!`] writes every `unsafe` line.
//! - [`client`]: the host's safe view of a descriptor (handshake, describe, create, invoke).
//!
//! A plugin in full:
//!
//! ```ignore
//! struct Echo;
//! impl api::Backend for Echo {
//!     const NAME: &'static str = "echo";
//!     const VERSION: &'static str = "0.1.0";
//!     const KIND: api::Kind = api::Kind::Judge;
//!     fn ops() -> Vec<api::protocol::OpInfo> { vec![api::op("echo", "copies its input")] }
//!     fn create(_: &serde_json::Value) -> Result<Self, api::Error> { Ok(Echo) }
//!     fn validate(&self, _: &str, _: &serde_json::Value, _: &[String]) -> Result<(), api::Error> { Ok(()) }
//!     fn invoke(&mut self, _: &str, ctx: &mut api::OpContext<'_>) -> Result<serde_json::Value, api::Error> {
//!         std::fs::copy(ctx.input("in")?, ctx.out_dir.join("out"))?;
//!         Ok(serde_json::json!({}))
//!     }
//! }
//! api::export_plugin!(Echo);
//! ```

pub mod backend;
pub mod client;
pub mod export;
pub mod ffi;
pub mod jsonl;
pub mod params;
pub mod protocol;

pub use backend::{Backend, Error, Host, Kind, OpContext};

/// Build information baked into every descriptor.
pub const BUILD_INFO: &str = concat!("rto-plugin-api ", env!("CARGO_PKG_VERSION"));

/// An [`protocol::OpInfo`] with no environment facts.
pub fn op(name: &str, summary: &str) -> protocol::OpInfo {
    protocol::OpInfo { name: name.into(), summary: summary.into(), env_facts: vec![], unkeyed_params: vec![] }
}
