//! OCSF 1.8.0 audit events, written as JSON lines plus the one-line
//! shorthand of OpenShell (reference §7).
//!
//! - [`event`]: the event model and constructors (`NetworkActivity::denied`,
//!   `ConfigStateChange::policy_loaded`, ...).
//! - [`shorthand`]: the one-line rendering that `GET /v1/denials` serves.
//! - [`writer`]: [`AuditLog`], a non-blocking handle in front of a writer
//!   that keeps daily `ocsf.*.log` / `portcullis.*.log` files.
//! - [`text`]: redaction and single-line hygiene shared by all of them.
//!
//! Secrets never reach these logs: constructors drop query strings, flatten
//! control characters and bound every free-text field.

pub mod enums;
pub mod event;
pub mod proposals;
pub mod shorthand;
pub mod text;
pub mod writer;

pub use enums::{Action, Disposition, Severity, State, Status};
pub use event::{
    AppLifecycle, AuditEvent, ConfigStateChange, ConnectionFacts, DenyCause, DetectionFinding,
    Engine, HttpActivity, HttpRequestFacts, Inspection, NetworkActivity, PolicyFacts, PolicyLoad,
    ProcessFacts, SsrfKind, Transport,
};
pub use proposals::{AutoApproval, DecidedVersion};
pub use shorthand::{format_timestamp, shorthand, shorthand_line};
pub use text::{redact_query, redact_query_text};
pub use writer::{AuditConfig, AuditError, AuditLog};
