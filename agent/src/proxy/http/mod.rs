//! The pure building blocks of the L7 HTTP layer: no sockets, no clocks.
//!
//! - [`canonical`] turns a request target into the one spelling that is
//!   both judged by the policy and sent upstream (reference §2.7).
//! - [`decide`] judges a request against the endpoints that matched the
//!   connection at L4 (§1.4, §2.7).
//!
//! The denial bodies these decisions lead to are built in [`crate::deny`].

pub mod canonical;
pub mod decide;
