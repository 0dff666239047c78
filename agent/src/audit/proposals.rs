//! CONFIG (5019) events of the approval loop (reference §7.2): a chunk
//! proposed, approved (by an operator or automatically), rejected, or
//! removed again. `policy_loaded` in `event.rs` covers the reload.

use super::enums::{Severity, State, Status};
use super::event::ConfigStateChange;
use super::text::sanitize;

/// The reviewer's text in an audit event: one line, at most this many
/// characters, then `…` (reference §5.10 item 4).
const MAX_REASON_CHARS: usize = 200;

/// How an automatic approval came about, for the CONFIG bracket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AutoApproval {
    /// `agent_authored` or `mechanistic`.
    pub source: String,
    /// Where the approval mode came from: `sandbox` or `default`.
    pub resolved_from: String,
}

/// A policy version a decision produced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DecidedVersion {
    pub version: u64,
    pub hash: String,
}

fn chunk_event(
    sandbox: &str,
    chunk_id: &str,
    state: State,
    label: &str,
    severity: Severity,
    message: &str,
) -> ConfigStateChange {
    let mut event = ConfigStateChange::new(sandbox, state, label, severity, message)
        .with_unmapped("chunk_id", chunk_id);
    event.base.status = Some(Status::Success);
    event
}

fn with_version(event: ConfigStateChange, decided: &DecidedVersion) -> ConfigStateChange {
    event
        .with_unmapped("policy_version", decided.version.to_string())
        .with_unmapped("policy_hash", decided.hash.as_str())
}

/// Control characters flattened, bounded in characters (not bytes).
pub fn sanitized_reason(reason: &str) -> String {
    let flat = sanitize(reason, usize::MAX);
    if flat.chars().count() <= MAX_REASON_CHARS {
        return flat;
    }
    let mut cut: String = flat.chars().take(MAX_REASON_CHARS).collect();
    cut.push('…');
    cut
}

impl ConfigStateChange {
    /// An agent's proposal was accepted for review. `summary` is
    /// `<host>:<port>[ <METHOD> <path>][ by <binary>]`.
    pub fn proposal_accepted(sandbox: &str, chunk_id: &str, summary: &str) -> Self {
        chunk_event(
            sandbox,
            chunk_id,
            State::Other,
            "PROPOSED",
            Severity::Informational,
            &format!("agent_authored proposal chunk:{chunk_id} on {summary}"),
        )
    }

    /// A chunk was approved and written as `decided`.
    pub fn chunk_approved(
        sandbox: &str,
        chunk_id: &str,
        summary: &str,
        decided: &DecidedVersion,
        auto: Option<&AutoApproval>,
    ) -> Self {
        let message = match auto {
            Some(a) => format!(
                "auto-approved: no new prover findings (source={}) — chunk:{chunk_id} approved {summary}",
                a.source
            ),
            None => format!("chunk:{chunk_id} approved {summary}"),
        };
        let mut event = chunk_event(
            sandbox,
            chunk_id,
            State::Enabled,
            "APPROVED",
            Severity::Informational,
            &message,
        );
        if let Some(a) = auto {
            event = event
                .with_unmapped("auto", "true")
                .with_unmapped("source", a.source.as_str())
                .with_unmapped("prover_delta", "empty")
                .with_unmapped("resolved_from", a.resolved_from.as_str());
        }
        with_version(event, decided)
    }

    /// A chunk was rejected; an empty reason reads `(no guidance)`.
    pub fn chunk_rejected(sandbox: &str, chunk_id: &str, summary: &str, reason: &str) -> Self {
        let reason = sanitized_reason(reason);
        let said = if reason.is_empty() {
            "(no guidance)".to_string()
        } else {
            format!("reason:\"{reason}\"")
        };
        chunk_event(
            sandbox,
            chunk_id,
            State::Disabled,
            "REJECTED",
            Severity::Low,
            &format!("chunk:{chunk_id} rejected {summary} {said}"),
        )
        .with_unmapped("rejection_reason", reason)
    }

    /// What an approved chunk added was removed (reject or undo).
    pub fn chunk_removed(
        sandbox: &str,
        chunk_id: &str,
        summary: &str,
        decided: &DecidedVersion,
    ) -> Self {
        let event = chunk_event(
            sandbox,
            chunk_id,
            State::Disabled,
            "removed",
            Severity::Informational,
            &format!("chunk:{chunk_id} removed {summary}"),
        );
        with_version(event, decided)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{AuditEvent, shorthand};

    fn line(e: ConfigStateChange) -> String {
        shorthand(&AuditEvent::Config(e))
    }

    #[test]
    fn proposed_reads_like_openshell() {
        let l = line(ConfigStateChange::proposal_accepted(
            "sb",
            "c-1",
            "api.example:443 PUT /v1/x by /usr/bin/curl",
        ));
        assert_eq!(
            l,
            "CONFIG:PROPOSED [INFO] agent_authored proposal chunk:c-1 on api.example:443 PUT /v1/x by /usr/bin/curl"
        );
    }

    #[test]
    fn auto_approval_carries_its_bracket_in_order() {
        let l = line(ConfigStateChange::chunk_approved(
            "sb",
            "c-1",
            "add-rule r api.example:443",
            &DecidedVersion {
                version: 3,
                hash: "abc".into(),
            },
            Some(&AutoApproval {
                source: "agent_authored".into(),
                resolved_from: "sandbox".into(),
            }),
        ));
        assert!(
            l.starts_with("CONFIG:APPROVED [INFO] auto-approved: no new prover findings"),
            "{l}"
        );
        assert!(
            l.ends_with("[auto:true source:agent_authored prover_delta:empty resolved_from:sandbox version:3 hash:abc]"),
            "{l}"
        );
    }

    #[test]
    fn rejection_reason_is_flattened_and_bounded() {
        let long = format!("line one\nline two {}", "x".repeat(300));
        let e = ConfigStateChange::chunk_rejected("sb", "c-1", "r", &long);
        let reason = e.base.unmapped["rejection_reason"]
            .as_str()
            .unwrap()
            .to_string();
        assert!(!reason.contains('\n'));
        assert_eq!(reason.chars().count(), MAX_REASON_CHARS + 1);
        assert!(reason.ends_with('…'));
        let none = line(ConfigStateChange::chunk_rejected("sb", "c-2", "r", ""));
        assert!(none.ends_with("rejected r (no guidance)"), "{none}");
    }
}
