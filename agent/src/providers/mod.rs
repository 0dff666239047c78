//! Providers: credentials attached to a sandbox and how the proxy resolves their placeholders.

pub mod placeholder;
pub mod profile;
