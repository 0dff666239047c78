//! Portcullis: transparent, per-binary egress control for sandboxed
//! workloads. The binary `portcullis` is a thin shell over this library.

pub mod accept;
pub mod audit;
pub mod cli;
pub mod config;
pub mod control;
pub mod daemon;
pub mod datapath;
pub mod deny;
pub mod dns;
pub mod drafts;
pub mod identity;
pub mod inbox;
pub mod local_api;
pub mod policy;
pub mod providers;
pub mod proxy;
pub mod sandbox;
pub mod store;
pub mod tls;
