//! Policy YAML parser, then the draft validator on what it accepts.
//! Invariants: never panics; the hash is 64 lowercase hex digits; the
//! canonical form parses back to the same hash (merge and revoke re-parse
//! it); a policy has no new findings against itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis_agent::drafts::validator::{self, CredentialSet, CredentialTarget};
use portcullis_agent::policy::Policy;

fuzz_target!(|data: &[u8]| {
    let Ok(yaml) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(policy) = Policy::parse("fuzz.yaml", yaml) else {
        return;
    };
    let hash = policy.hash();
    assert!(
        hash.len() == 64 && hash.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')),
        "bad hash {hash:?}"
    );
    // No size limit: the canonical JSON may be longer than the YAML.
    let canonical = portcullis_agent::policy::document_text(&policy.canonical_json());
    match Policy::parse_with_limit("canonical", &canonical, usize::MAX) {
        Ok(again) => assert_eq!(
            again.hash(),
            hash,
            "canonical form re-parsed differently: {canonical}"
        ),
        Err(e) => panic!("canonical form does not parse back: {e}\n{canonical}"),
    }

    let creds = CredentialSet {
        targets: vec![
            CredentialTarget {
                provider: "github".into(),
                host: "*.github.com".into(),
                ports: vec![443],
            },
            CredentialTarget {
                provider: "internal".into(),
                host: "10.0.0.5".into(),
                ports: vec![],
            },
        ],
    };
    let _ = validator::findings(&policy, &creds);
    let new = validator::new_findings(&Policy::deny_all(), &policy, &creds);
    let _ = validator::validation_result(&new);
    assert!(validator::new_findings(&policy, &policy, &creds).is_empty());
    for rule in policy.rules() {
        let _ = validator::security_notes(rule);
    }
});
