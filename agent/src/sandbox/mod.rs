//! Sandboxes: cgroup v2 directories whose sockets the kernel programs capture.

pub mod cgroup;
pub mod registry;
pub mod spawn;

pub use registry::{SandboxName, SandboxRecord};
