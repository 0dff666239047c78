//! `POST /v1/proposals` body parser, then what the drafts engine does with
//! each addRule: `merge::propose`, `merge::add_rule` onto a fixed policy,
//! the validator. Invariants: never panics; revoking the merge's grant
//! restores the base policy exactly (`merge::revoke`'s contract).
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use portcullis_agent::drafts::proposal::{self, Operation};
use portcullis_agent::drafts::validator::{self, CredentialSet, CredentialTarget};
use portcullis_agent::policy::{Policy, merge};

static BASE: LazyLock<Policy> = LazyLock::new(|| {
    let yaml = "version: 1\nnetwork_policies:\n  github:\n    endpoints:\n      - { host: api.github.com, port: 443, protocol: rest, access: read-only, allowed_ips: [\"10.9.0.0/24\"] }\n      - { host: uploads.github.com, port: 443 }\n    binaries: [{ path: /usr/bin/curl }]\n";
    Policy::parse("base.yaml", yaml).expect("base policy parses")
});

fuzz_target!(|data: &[u8]| {
    let Ok(proposal) = proposal::parse(data) else {
        return;
    };
    let creds = CredentialSet {
        targets: vec![CredentialTarget {
            provider: "github".into(),
            host: "api.github.com".into(),
            ports: vec![],
        }],
    };
    for op in &proposal.operations {
        let Operation::AddRule { rule_name, rule } = op else {
            continue;
        };
        let Ok(proposed) = merge::propose(rule_name, rule) else {
            continue;
        };
        let Ok(merged) = merge::add_rule(&BASE, &proposed) else {
            continue;
        };
        let _ =
            validator::validation_result(&validator::new_findings(&BASE, &merged.policy, &creds));
        if let Some(rule) = merged.policy.rule(&merged.target_rule) {
            let _ = validator::security_notes(rule);
        }
        match merge::revoke(&merged.policy, &merged.grant) {
            Ok(undone) => assert_eq!(
                undone.canonical_json(),
                BASE.canonical_json(),
                "revoke did not restore the base; grant {:?}",
                merged.grant
            ),
            Err(e) => panic!(
                "revoke of a fresh grant failed: {e}; grant {:?}",
                merged.grant
            ),
        }
    }
});
