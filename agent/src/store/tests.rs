use std::{os::unix::fs::PermissionsExt, path::Path, time::Duration};

use serde_json::json;

use super::{legacy::import_legacy, *};
use crate::sandbox::registry::SandboxName;

pub(super) fn sandbox_row(name: &str, id: u32) -> SandboxRow {
    SandboxRow {
        record: SandboxRecord {
            name: SandboxName::try_from(name).unwrap(),
            id,
            cgroup_path: format!("/sys/fs/cgroup/portcullis/{name}").into(),
            adopted: id.is_multiple_of(2),
            created_unix: 1_700_000_000 + u64::from(id),
        },
        approval_mode: ApprovalMode::Manual,
    }
}

pub(super) fn revision(version: u64, status: RevisionStatus) -> Revision {
    let loaded = status != RevisionStatus::Failed;
    Revision {
        version,
        hash: if loaded {
            format!("{version:064x}")
        } else {
            String::new()
        },
        status,
        source: format!("policy-{version}.yaml"),
        provenance: "operator".into(),
        created_unix_ms: 1_700_000_000_000 + version,
        error: (!loaded).then(|| format!("version {version} does not validate")),
        yaml: loaded.then(|| format!("version: 1\n# {version}\n")),
    }
}

pub(super) fn chunk(sandbox: &str, id: &str, created_at_ms: i64, status: ChunkStatus) -> Chunk {
    let decided = status.is_decided();
    Chunk {
        id: id.into(),
        sandbox: sandbox.into(),
        status,
        rule_name: format!("allow_{id}"),
        proposed_rule: json!({
            "name": format!("allow_{id}"),
            "endpoints": [{"host": "API.example.test", "ports": [443], "enforcement": "enforce"}],
            "binaries": [{"path": "/usr/bin/curl"}],
        }),
        rationale: "fetch the weather".into(),
        confidence: 0.85,
        stage: "agent".into(),
        analysis_mode: "agent_authored".into(),
        binary: "/usr/bin/curl".into(),
        hit_count: 3,
        created_at_ms,
        first_seen_ms: created_at_ms - 10,
        last_seen_ms: created_at_ms + 10,
        decided_at_ms: decided.then_some(created_at_ms + 100),
        validation_result: "prover: no new findings".into(),
        rejection_reason: if status == ChunkStatus::Rejected {
            "not needed".into()
        } else {
            String::new()
        },
        application_error: String::new(),
        review_token: format!("token-{id}"),
        current_effective_policy_hash: "aa".repeat(32),
        candidate_effective_policy_hash: "bb".repeat(32),
        current_effective_policy: "version: 1\n".into(),
        candidate_effective_policy: "version: 1\nnetwork_policies: {}\n".into(),
        grant: decided.then(|| json!({"rule": format!("allow_{id}"), "binary": "/usr/bin/curl"})),
        approved_policy_version: (status == ChunkStatus::Approved).then_some(7),
        provider_request: None,
        decided_by: String::new(),
    }
}

pub(super) fn entry(timestamp_ms: i64, event_type: &str, chunk_id: &str) -> HistoryEntry {
    HistoryEntry {
        timestamp_ms,
        event_type: event_type.into(),
        description: format!("Rule 'allow_{chunk_id}' {event_type}"),
        chunk_id: chunk_id.into(),
        actor: "operator:1000".into(),
    }
}

pub(super) async fn open(dir: &Path) -> SqliteStore {
    SqliteStore::open(dir).await.unwrap()
}

pub(super) async fn create(store: &SqliteStore, name: &str) -> SandboxRow {
    let id = store.allocate_sandbox_id().await.unwrap();
    let row = sandbox_row(name, id);
    store
        .commit(ChangeSet {
            create_sandbox: Some(row.clone()),
            ..ChangeSet::for_sandbox(name)
        })
        .await
        .unwrap();
    row
}

pub(super) fn is_conflict(result: Result<(), StoreError>) -> String {
    match result {
        Err(StoreError::Conflict(message)) => message,
        other => panic!("expected a conflict, got {other:?}"),
    }
}

#[tokio::test]
async fn sandboxes_round_trip_with_their_approval_mode() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    let beta = create(&store, "beta").await;
    let mut alpha = sandbox_row("alpha", store.allocate_sandbox_id().await.unwrap());
    alpha.approval_mode = ApprovalMode::Auto;
    store
        .commit(ChangeSet {
            create_sandbox: Some(alpha.clone()),
            ..ChangeSet::for_sandbox("alpha")
        })
        .await
        .unwrap();
    assert_eq!(store.sandboxes().await.unwrap(), [alpha, beta.clone()]);

    store
        .commit(ChangeSet {
            set_approval_mode: Some(ApprovalMode::Auto),
            ..ChangeSet::for_sandbox("beta")
        })
        .await
        .unwrap();
    let rows = store.sandboxes().await.unwrap();
    assert_eq!(rows[1].approval_mode, ApprovalMode::Auto);
    assert_eq!(rows[1].record, beta.record);
}

#[test]
fn approval_modes_parse_strictly_and_read_safely() {
    assert_eq!(ApprovalMode::parse("auto"), Ok(ApprovalMode::Auto));
    assert_eq!("manual".parse(), Ok(ApprovalMode::Manual));
    let err = ApprovalMode::parse("Auto").unwrap_err().to_string();
    assert_eq!(err, "unknown approval mode `Auto`: use `manual` or `auto`");
    assert_eq!(ApprovalMode::from_stored("auto"), ApprovalMode::Auto);
    for foreign in ["AUTO", "auto ", "yes", ""] {
        assert_eq!(ApprovalMode::from_stored(foreign), ApprovalMode::Manual);
    }
    assert_eq!(ApprovalMode::default(), ApprovalMode::Manual);
}

#[tokio::test]
async fn revisions_round_trip_and_loaded_supersedes_loaded() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    create(&store, "demo").await;
    assert_eq!(store.current_revision("demo").await.unwrap(), None);

    let statuses = [
        RevisionStatus::Loaded,
        RevisionStatus::Failed,
        RevisionStatus::Loaded,
    ];
    for (version, status) in (1..).zip(statuses) {
        store
            .commit(ChangeSet {
                revision: Some(revision(version, status)),
                ..ChangeSet::for_sandbox("demo")
            })
            .await
            .unwrap();
    }
    let stored = store.revisions("demo").await.unwrap();
    assert_eq!(
        stored,
        [
            revision(1, RevisionStatus::Superseded),
            revision(2, RevisionStatus::Failed),
            revision(3, RevisionStatus::Loaded),
        ]
    );
    assert_eq!(
        store.current_revision("demo").await.unwrap(),
        Some(revision(3, RevisionStatus::Loaded))
    );
    assert!(store.revisions("other").await.unwrap().is_empty());
}

#[tokio::test]
async fn a_failed_revision_leaves_the_loaded_one_in_force() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    create(&store, "demo").await;
    for (version, status) in [(1, RevisionStatus::Loaded), (2, RevisionStatus::Failed)] {
        store
            .commit(ChangeSet {
                revision: Some(revision(version, status)),
                ..ChangeSet::for_sandbox("demo")
            })
            .await
            .unwrap();
    }
    let current = store.current_revision("demo").await.unwrap().unwrap();
    assert_eq!(current.version, 1);
}

#[tokio::test]
async fn chunks_round_trip_newest_first_with_a_status_filter() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    create(&store, "demo").await;
    create(&store, "other").await;
    let old = chunk("demo", "c-old", 1_000, ChunkStatus::Pending);
    let tie_b = chunk("demo", "c-b", 2_000, ChunkStatus::Approved);
    let tie_a = chunk("demo", "c-a", 2_000, ChunkStatus::Pending);
    let new = chunk("demo", "c-new", 3_000, ChunkStatus::Rejected);
    store
        .commit(ChangeSet {
            upsert_chunks: vec![old.clone(), tie_b.clone(), new.clone(), tie_a.clone()],
            ..ChangeSet::for_sandbox("demo")
        })
        .await
        .unwrap();
    store
        .commit(ChangeSet {
            upsert_chunks: vec![chunk("other", "c-x", 5_000, ChunkStatus::Pending)],
            ..ChangeSet::for_sandbox("other")
        })
        .await
        .unwrap();

    let all = store.chunks("demo", None).await.unwrap();
    assert_eq!(
        all,
        [new.clone(), tie_a.clone(), tie_b.clone(), old.clone()]
    );
    let pending = store
        .chunks("demo", Some(ChunkStatus::Pending))
        .await
        .unwrap();
    assert_eq!(pending, [tie_a, old]);
    let approved = store
        .chunks("demo", Some(ChunkStatus::Approved))
        .await
        .unwrap();
    assert_eq!(approved, [tie_b]);

    assert_eq!(store.chunk("demo", "c-new").await.unwrap(), Some(new));
    // A chunk id of another sandbox is not found (§5.8).
    assert_eq!(store.chunk("demo", "c-x").await.unwrap(), None);
    assert_eq!(store.chunk("demo", "missing").await.unwrap(), None);
}

#[tokio::test]
async fn upsert_replaces_delete_removes_and_ids_stay_with_their_sandbox() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    create(&store, "demo").await;
    create(&store, "other").await;
    let pending = chunk("demo", "c-1", 1_000, ChunkStatus::Pending);
    store
        .commit(ChangeSet {
            upsert_chunks: vec![
                pending.clone(),
                chunk("demo", "c-2", 900, ChunkStatus::Pending),
            ],
            ..ChangeSet::for_sandbox("demo")
        })
        .await
        .unwrap();

    let mut approved = pending.clone();
    approved.status = ChunkStatus::Approved;
    approved.hit_count = 9;
    approved.approved_policy_version = Some(4);
    store
        .commit(ChangeSet {
            upsert_chunks: vec![approved.clone()],
            delete_chunks: vec!["c-2".into(), "unknown".into()],
            ..ChangeSet::for_sandbox("demo")
        })
        .await
        .unwrap();
    assert_eq!(
        store.chunks("demo", None).await.unwrap(),
        [approved.clone()]
    );
    assert!(
        store
            .chunks("demo", Some(ChunkStatus::Pending))
            .await
            .unwrap()
            .is_empty()
    );

    // Writing c-1 as a chunk of another sandbox must not take it over.
    let message = is_conflict(
        store
            .commit(ChangeSet {
                upsert_chunks: vec![chunk("other", "c-1", 1, ChunkStatus::Pending)],
                ..ChangeSet::for_sandbox("other")
            })
            .await,
    );
    assert!(message.contains("c-1"), "{message}");
    assert_eq!(store.chunk("demo", "c-1").await.unwrap(), Some(approved));
}

#[tokio::test]
async fn history_is_kept_in_order_and_pruned_to_its_limit() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    create(&store, "demo").await;
    // Out-of-order timestamps: the order of appending is what counts.
    let first = vec![entry(50, "proposed", "c-1"), entry(10, "approved", "c-1")];
    let second = vec![entry(30, "undone", "c-1")];
    for batch in [first.clone(), second.clone()] {
        store
            .commit(ChangeSet {
                history: batch,
                ..ChangeSet::for_sandbox("demo")
            })
            .await
            .unwrap();
    }
    let expected: Vec<_> = first.into_iter().chain(second).collect();
    assert_eq!(store.history("demo").await.unwrap(), expected);

    let many: Vec<_> = (0..HISTORY_LIMIT as i64 + 5)
        .map(|i| entry(1_000 + i, "proposed", &format!("n-{i}")))
        .collect();
    store
        .commit(ChangeSet {
            history: many.clone(),
            ..ChangeSet::for_sandbox("demo")
        })
        .await
        .unwrap();
    let kept = store.history("demo").await.unwrap();
    assert_eq!(kept.len(), HISTORY_LIMIT);
    assert_eq!(kept, many[5..]);
}

#[tokio::test]
async fn revisions_are_pruned_but_never_the_one_in_force() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    let total = REVISION_LIMIT as u64 + 5;
    let revisions: Vec<_> = (1..=total)
        .map(|v| {
            let status = if v == 3 {
                RevisionStatus::Loaded
            } else {
                RevisionStatus::Failed
            };
            revision(v, status)
        })
        .collect();
    assert!(
        store
            .import_sandbox(&sandbox_row("demo", 1), &revisions)
            .await
            .unwrap()
    );
    store
        .commit(ChangeSet {
            revision: Some(revision(total + 1, RevisionStatus::Failed)),
            ..ChangeSet::for_sandbox("demo")
        })
        .await
        .unwrap();

    let kept = store.revisions("demo").await.unwrap();
    assert_eq!(kept.len(), REVISION_LIMIT);
    assert_eq!(kept[0], revision(3, RevisionStatus::Loaded));
    let newest: Vec<u64> = kept[1..].iter().map(|r| r.version).collect();
    let expected: Vec<u64> = (total + 1 - (REVISION_LIMIT as u64 - 2)..=total + 1).collect();
    assert_eq!(newest, expected);
    assert_eq!(
        store
            .current_revision("demo")
            .await
            .unwrap()
            .unwrap()
            .version,
        3
    );
}

#[tokio::test]
async fn a_conflicting_revision_rolls_back_the_whole_change() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    create(&store, "demo").await;
    store
        .commit(ChangeSet {
            revision: Some(revision(1, RevisionStatus::Loaded)),
            upsert_chunks: vec![chunk("demo", "c-1", 1, ChunkStatus::Pending)],
            history: vec![entry(1, "proposed", "c-1")],
            ..ChangeSet::for_sandbox("demo")
        })
        .await
        .unwrap();

    let mut approved = chunk("demo", "c-1", 1, ChunkStatus::Approved);
    approved.approved_policy_version = Some(1);
    // Version 1 again: someone else already wrote it.
    let message = is_conflict(
        store
            .commit(ChangeSet {
                set_approval_mode: Some(ApprovalMode::Auto),
                revision: Some(revision(1, RevisionStatus::Loaded)),
                upsert_chunks: vec![approved, chunk("demo", "c-2", 2, ChunkStatus::Pending)],
                delete_chunks: vec!["c-1".into()],
                history: vec![entry(2, "approved", "c-1")],
                ..ChangeSet::for_sandbox("demo")
            })
            .await,
    );
    assert!(message.contains("latest one (1)"), "{message}");

    assert_eq!(
        store.chunks("demo", None).await.unwrap(),
        [chunk("demo", "c-1", 1, ChunkStatus::Pending)]
    );
    assert_eq!(
        store.history("demo").await.unwrap(),
        [entry(1, "proposed", "c-1")]
    );
    assert_eq!(
        store.revisions("demo").await.unwrap(),
        [revision(1, RevisionStatus::Loaded)]
    );
    assert_eq!(
        store.sandboxes().await.unwrap()[0].approval_mode,
        ApprovalMode::Manual
    );
}

#[tokio::test]
async fn expect_latest_version_detects_a_concurrent_policy_change() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    create(&store, "demo").await;
    // No revision yet: the latest version is 0.
    store
        .commit(ChangeSet {
            expect_latest_version: Some(0),
            revision: Some(revision(1, RevisionStatus::Loaded)),
            ..ChangeSet::for_sandbox("demo")
        })
        .await
        .unwrap();
    let message = is_conflict(
        store
            .commit(ChangeSet {
                expect_latest_version: Some(0),
                history: vec![entry(1, "approved", "c-1")],
                ..ChangeSet::for_sandbox("demo")
            })
            .await,
    );
    assert!(
        message.contains("latest version is 1, expected 0"),
        "{message}"
    );
    assert!(store.history("demo").await.unwrap().is_empty());
    store
        .commit(ChangeSet {
            expect_latest_version: Some(1),
            history: vec![entry(1, "approved", "c-1")],
            ..ChangeSet::for_sandbox("demo")
        })
        .await
        .unwrap();
}

#[tokio::test]
async fn creating_a_taken_name_or_id_conflicts() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    let demo = create(&store, "demo").await;
    let message = is_conflict(
        store
            .commit(ChangeSet {
                create_sandbox: Some(sandbox_row("demo", 99)),
                ..ChangeSet::for_sandbox("demo")
            })
            .await,
    );
    assert!(message.contains("`demo` already exists"), "{message}");
    let message = is_conflict(
        store
            .commit(ChangeSet {
                create_sandbox: Some(sandbox_row("other", demo.record.id)),
                ..ChangeSet::for_sandbox("other")
            })
            .await,
    );
    assert!(message.contains("already used by `demo`"), "{message}");
    assert_eq!(store.sandboxes().await.unwrap(), [demo]);
}

#[tokio::test]
async fn changes_to_a_missing_sandbox_conflict_and_contradictions_are_invalid() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    let message = is_conflict(
        store
            .commit(ChangeSet {
                history: vec![entry(1, "proposed", "c-1")],
                ..ChangeSet::for_sandbox("ghost")
            })
            .await,
    );
    assert!(message.contains("no sandbox `ghost`"), "{message}");

    create(&store, "demo").await;
    let mut nan = chunk("demo", "c-1", 1, ChunkStatus::Pending);
    nan.confidence = f64::NAN;
    let invalid = [
        ChangeSet {
            delete_sandbox: true,
            history: vec![entry(1, "cleared", "")],
            ..ChangeSet::for_sandbox("demo")
        },
        ChangeSet {
            upsert_chunks: vec![chunk("other", "c-1", 1, ChunkStatus::Pending)],
            ..ChangeSet::for_sandbox("demo")
        },
        ChangeSet {
            create_sandbox: Some(sandbox_row("other", 50)),
            ..ChangeSet::for_sandbox("demo")
        },
        ChangeSet {
            upsert_chunks: vec![nan],
            ..ChangeSet::for_sandbox("demo")
        },
    ];
    for change in invalid {
        let result = store.commit(change).await;
        assert!(matches!(result, Err(StoreError::Invalid(_))), "{result:?}");
    }
    assert!(store.chunks("demo", None).await.unwrap().is_empty());
}

#[tokio::test]
async fn deleting_a_sandbox_deletes_everything_of_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    create(&store, "demo").await;
    let other = create(&store, "other").await;
    for name in ["demo", "other"] {
        store
            .commit(ChangeSet {
                revision: Some(revision(1, RevisionStatus::Loaded)),
                upsert_chunks: vec![chunk(name, &format!("{name}-c"), 1, ChunkStatus::Pending)],
                history: vec![entry(1, "proposed", &format!("{name}-c"))],
                ..ChangeSet::for_sandbox(name)
            })
            .await
            .unwrap();
    }
    store
        .commit(ChangeSet {
            delete_sandbox: true,
            ..ChangeSet::for_sandbox("demo")
        })
        .await
        .unwrap();

    assert_eq!(store.sandboxes().await.unwrap(), [other]);
    assert!(store.revisions("demo").await.unwrap().is_empty());
    assert!(store.chunks("demo", None).await.unwrap().is_empty());
    assert!(store.history("demo").await.unwrap().is_empty());
    assert_eq!(store.revisions("other").await.unwrap().len(), 1);
    assert_eq!(store.chunks("other", None).await.unwrap().len(), 1);
    assert_eq!(store.history("other").await.unwrap().len(), 1);

    // A new sandbox of the same name starts from nothing.
    create(&store, "demo").await;
    assert!(store.revisions("demo").await.unwrap().is_empty());
    assert!(store.chunk("demo", "demo-c").await.unwrap().is_none());
}

#[tokio::test]
async fn sandbox_ids_are_never_reused() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    let first = create(&store, "first").await;
    let second = create(&store, "second").await;
    assert_eq!((first.record.id, second.record.id), (1, 2));
    store
        .commit(ChangeSet {
            delete_sandbox: true,
            ..ChangeSet::for_sandbox("second")
        })
        .await
        .unwrap();
    assert_eq!(store.allocate_sandbox_id().await.unwrap(), 3);

    // An id chosen by the caller moves the counter past it.
    store
        .commit(ChangeSet {
            create_sandbox: Some(sandbox_row("chosen", 40)),
            ..ChangeSet::for_sandbox("chosen")
        })
        .await
        .unwrap();
    drop(store);
    let store = open(dir.path()).await;
    assert_eq!(store.allocate_sandbox_id().await.unwrap(), 41);
}

#[tokio::test]
async fn everything_survives_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    let mut demo = create(&store, "demo").await;
    demo.approval_mode = ApprovalMode::Auto;
    let chunks = vec![
        chunk("demo", "c-1", 1, ChunkStatus::Approved),
        chunk("demo", "c-2", 2, ChunkStatus::Rejected),
    ];
    let history = vec![entry(1, "proposed", "c-1"), entry(2, "approved", "c-1")];
    store
        .commit(ChangeSet {
            set_approval_mode: Some(ApprovalMode::Auto),
            revision: Some(revision(1, RevisionStatus::Loaded)),
            upsert_chunks: chunks.clone(),
            history: history.clone(),
            ..ChangeSet::for_sandbox("demo")
        })
        .await
        .unwrap();
    store.close().await;
    drop(store);

    let store = open(dir.path()).await;
    assert_eq!(store.sandboxes().await.unwrap(), [demo]);
    assert_eq!(
        store.revisions("demo").await.unwrap(),
        [revision(1, RevisionStatus::Loaded)]
    );
    let mut newest_first = chunks;
    newest_first.reverse();
    assert_eq!(store.chunks("demo", None).await.unwrap(), newest_first);
    assert_eq!(store.history("demo").await.unwrap(), history);
    assert_eq!(store.allocate_sandbox_id().await.unwrap(), 2);
}

#[tokio::test]
async fn the_database_is_private_to_its_owner() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let store = open(&state).await;
    create(&store, "demo").await;
    for file in ["portcullis.db", "portcullis.db-wal"] {
        let mode = std::fs::metadata(state.join(file))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{file}");
    }
    // Traversable: the sandboxes' trust bundle lives below it too.
    let mode = std::fs::metadata(&state).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o755);
}

#[tokio::test]
async fn an_existing_loose_database_file_is_tightened() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(sqlite::DB_FILE);
    std::fs::write(&path, b"").unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let _store = open(dir.path()).await;
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
}

#[tokio::test]
async fn a_newer_schema_is_refused_with_a_message() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    sqlx::query("UPDATE meta SET value = '3' WHERE key = 'schema_version'")
        .execute(&store.pool_for_tests())
        .await
        .unwrap();
    store.close().await;
    drop(store);

    let err = SqliteStore::open(dir.path())
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("portcullis.db has schema version 3"), "{err}");
    assert!(err.contains("upgrade portcullis"), "{err}");
}

#[tokio::test]
async fn a_row_that_no_longer_decodes_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    create(&store, "demo").await;
    store
        .commit(ChangeSet {
            upsert_chunks: vec![chunk("demo", "c-1", 1, ChunkStatus::Pending)],
            ..ChangeSet::for_sandbox("demo")
        })
        .await
        .unwrap();
    sqlx::query("UPDATE chunks SET payload = '{\"id\": 1}' WHERE id = 'c-1'")
        .execute(&store.pool_for_tests())
        .await
        .unwrap();
    match store.chunks("demo", None).await {
        Err(StoreError::Corrupt(message)) => {
            assert!(message.contains("chunks row c-1"), "{message}")
        }
        other => panic!("expected corrupt, got {other:?}"),
    }
}

#[tokio::test]
async fn concurrent_commits_all_land() {
    let dir = tempfile::tempdir().unwrap();
    let store = std::sync::Arc::new(open(dir.path()).await);
    create(&store, "demo").await;
    create(&store, "other").await;
    let writers: Vec<_> = ["demo", "demo", "other"]
        .into_iter()
        .enumerate()
        .map(|(writer, name)| {
            let store = store.clone();
            tokio::spawn(async move {
                for i in 0..25 {
                    let id = format!("w{writer}-{i}");
                    store
                        .commit(ChangeSet {
                            upsert_chunks: vec![chunk(name, &id, i, ChunkStatus::Pending)],
                            history: vec![entry(i, "proposed", &id)],
                            ..ChangeSet::for_sandbox(name)
                        })
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    for writer in writers {
        writer.await.unwrap();
    }
    assert_eq!(store.chunks("demo", None).await.unwrap().len(), 50);
    assert_eq!(store.history("demo").await.unwrap().len(), 50);
    assert_eq!(store.chunks("other", None).await.unwrap().len(), 25);
}

#[tokio::test]
async fn legacy_files_are_imported_once_and_renamed() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path();
    std::fs::write(
        state.join("sandboxes.json"),
        r#"{
  "next_id": 7,
  "sandboxes": {
    "demo": {"name": "demo", "id": 2, "cgroup_path": "/sys/fs/cgroup/portcullis/demo",
             "adopted": false, "created_unix": 1700000000},
    "adopted": {"name": "adopted", "id": 5, "cgroup_path": "/sys/fs/cgroup/user.slice/x",
                "adopted": true, "created_unix": 1700000001}
  }
}"#,
    )
    .unwrap();
    std::fs::create_dir(state.join("policies")).unwrap();
    std::fs::write(
        state.join("policies/demo.json"),
        r#"{"revisions": [
  {"version": 4, "hash": "ab", "status": "superseded", "source": "a.yaml",
   "created_unix_ms": 10, "error": null, "yaml": "version: 1\n"},
  {"version": 5, "hash": "", "status": "failed", "source": "bad.yaml",
   "created_unix_ms": 11, "error": "bad.yaml: version 2 is not supported", "yaml": null},
  {"version": 6, "hash": "cd", "status": "loaded", "source": "b.yaml",
   "created_unix_ms": 12, "error": null, "yaml": "version: 1\nnetwork_policies: {}\n"}
]}"#,
    )
    .unwrap();
    std::fs::write(state.join("policies/ghost.json"), r#"{"revisions": []}"#).unwrap();

    let store = open(state).await;
    assert_eq!(import_legacy(&store, state).await.unwrap(), 2);

    let rows = store.sandboxes().await.unwrap();
    let names: Vec<_> = rows.iter().map(|r| r.record.name.as_str()).collect();
    assert_eq!(names, ["adopted", "demo"]);
    assert!(rows[0].record.adopted);
    assert_eq!(rows[1].record.id, 2);
    assert_eq!(rows[1].approval_mode, ApprovalMode::Manual);
    let revisions = store.revisions("demo").await.unwrap();
    let versions: Vec<_> = revisions.iter().map(|r| r.version).collect();
    assert_eq!(versions, [4, 5, 6]);
    assert!(revisions.iter().all(|r| r.provenance == "import"));
    assert_eq!(
        revisions[1].error.as_deref(),
        Some("bad.yaml: version 2 is not supported")
    );
    let current = store.current_revision("demo").await.unwrap().unwrap();
    assert_eq!((current.version, current.hash.as_str()), (6, "cd"));
    // The old counter was ahead of the highest id: honour it.
    assert_eq!(store.allocate_sandbox_id().await.unwrap(), 7);
    // The next policy version follows the imported ones.
    store
        .commit(ChangeSet {
            revision: Some(revision(7, RevisionStatus::Loaded)),
            ..ChangeSet::for_sandbox("demo")
        })
        .await
        .unwrap();

    assert!(!state.join("sandboxes.json").exists());
    assert!(state.join("sandboxes.json.imported").exists());
    assert!(state.join("policies/demo.json.imported").exists());
    assert!(state.join("policies/ghost.json.orphaned").exists());
    assert_eq!(import_legacy(&store, state).await.unwrap(), 0);
}

#[tokio::test]
async fn an_interrupted_legacy_import_resumes_without_duplicates() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path();
    std::fs::write(
        state.join("sandboxes.json"),
        r#"{"next_id": 3, "sandboxes": {
  "a": {"name": "a", "id": 1, "cgroup_path": "/c/a", "adopted": false, "created_unix": 1},
  "b": {"name": "b", "id": 2, "cgroup_path": "/c/b", "adopted": false, "created_unix": 2}}}"#,
    )
    .unwrap();
    let store = open(state).await;
    // As if the first run died after importing `a`.
    assert!(
        store
            .import_sandbox(&sandbox_row("a", 1), &[])
            .await
            .unwrap()
    );
    assert_eq!(import_legacy(&store, state).await.unwrap(), 1);
    assert_eq!(store.sandboxes().await.unwrap().len(), 2);
}

#[tokio::test]
async fn a_corrupt_legacy_file_is_named_and_left_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path();
    std::fs::write(state.join("sandboxes.json"), b"{").unwrap();
    let store = open(state).await;
    match import_legacy(&store, state).await {
        Err(StoreError::Corrupt(message)) => {
            assert!(
                message.contains("sandboxes.json does not decode"),
                "{message}"
            )
        }
        other => panic!("expected corrupt, got {other:?}"),
    }
    assert!(state.join("sandboxes.json").exists());
}

const CRASH_DIR_ENV: &str = "PORTCULLIS_STORE_CRASH_TEST_DIR";

/// The child half of `kill_9_mid_commit_leaves_a_consistent_store`: does
/// nothing unless that test started it, then approves chunks until killed.
#[tokio::test]
async fn crash_child_approves_until_killed() {
    let Some(dir) = std::env::var_os(CRASH_DIR_ENV) else {
        return;
    };
    let store = open(Path::new(&dir)).await;
    create(&store, "crash").await;
    for version in 1.. {
        let id = format!("c-{version}");
        let mut approved = chunk("crash", &id, version as i64, ChunkStatus::Approved);
        approved.approved_policy_version = Some(version);
        store
            .commit(ChangeSet {
                expect_latest_version: Some(version - 1),
                revision: Some(revision(version, RevisionStatus::Loaded)),
                upsert_chunks: vec![approved],
                history: vec![entry(version as i64, "approved", &id)],
                ..ChangeSet::for_sandbox("crash")
            })
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn kill_9_mid_commit_leaves_a_consistent_store() {
    let dir = tempfile::tempdir().unwrap();
    // The test harness names tests by path without the crate.
    let module = module_path!().split_once("::").map_or("", |(_, rest)| rest);
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            &format!("{module}::crash_child_approves_until_killed"),
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CRASH_DIR_ENV, dir.path())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();

    // Reading while the child writes: WAL readers do not block the writer.
    let store = open(dir.path()).await;
    while store.revisions("crash").await.unwrap().len() < 20 {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the writer died by itself"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    store.close().await;
    drop(store);

    let store = open(dir.path()).await;
    let revisions = store.revisions("crash").await.unwrap();
    let chunks = store.chunks("crash", None).await.unwrap();
    let history = store.history("crash").await.unwrap();
    let latest = revisions.len() as u64;
    assert!(latest >= 20);
    // Every approval landed whole or not at all.
    assert_eq!(chunks.len() as u64, latest);
    assert_eq!(history.len() as u64, latest);
    for (version, r) in (1..).zip(&revisions) {
        assert_eq!(r.version, version);
        let expected = if version == latest {
            RevisionStatus::Loaded
        } else {
            RevisionStatus::Superseded
        };
        assert_eq!(r.status, expected, "version {version}");
        let chunk = store.chunk("crash", &format!("c-{version}")).await.unwrap();
        assert_eq!(chunk.unwrap().approved_policy_version, Some(version));
    }
}
