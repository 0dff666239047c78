//! TLS support: the local certificate authority used to terminate TLS for
//! L7 inspection and for answering L4 denials, and the trust bundle that
//! sandboxed processes use to trust it.

pub mod ca;
pub mod leaf;
pub mod upstream;

pub use ca::{
    CA_CERT_FILE, CA_KEY_FILE, CertificateAuthority, SYSTEM_ROOT_CANDIDATES, write_trust_bundle,
};
