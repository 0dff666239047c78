//! Portcullis: transparent, per-binary egress control for sandboxed
//! workloads. The binary `portcullis` is a thin shell over this library.

pub mod audit;
pub mod cli;
pub mod config;
pub mod control;
pub mod daemon;
pub mod datapath;
pub mod dns;
pub mod identity;
pub mod policy;
pub mod proxy;
pub mod sandbox;
pub mod tls;

/// The sandbox-local policy API's name, answered by the agent's DNS.
pub const POLICY_LOCAL_HOST: &str = "policy.local";
