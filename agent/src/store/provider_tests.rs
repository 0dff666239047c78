//! Providers in the store: encryption at rest, rotation, attachment rules,
//! and the version 1 -> 2 schema upgrade.

use std::{collections::BTreeMap, fmt::Debug, os::unix::fs::PermissionsExt};

use super::{
    secrets::{KEY_FILE, KEY_LEN},
    tests::{chunk, create, entry, is_conflict, open, revision},
    *,
};

fn credentials(pairs: &[(&str, &str)]) -> BTreeMap<String, SecretValue> {
    pairs
        .iter()
        .map(|(key, value)| (key.to_string(), SecretValue::from(*value)))
        .collect()
}

async fn put(
    store: &SqliteStore,
    name: &str,
    provider_type: &str,
    pairs: &[(&str, &str)],
) -> ProviderRecord {
    store
        .put_provider(ProviderChange::Create(ProviderRecord::new(
            name,
            provider_type,
            credentials(pairs),
        )))
        .await
        .unwrap()
}

async fn attach(store: &SqliteStore, sandbox: &str, providers: &[&str]) -> Result<(), StoreError> {
    store
        .commit(ChangeSet {
            attach_providers: providers.iter().map(|p| p.to_string()).collect(),
            ..ChangeSet::for_sandbox(sandbox)
        })
        .await
}

async fn detach(store: &SqliteStore, sandbox: &str, providers: &[&str]) -> Result<(), StoreError> {
    store
        .commit(ChangeSet {
            detach_providers: providers.iter().map(|p| p.to_string()).collect(),
            ..ChangeSet::for_sandbox(sandbox)
        })
        .await
}

fn update(name: &str, set: &[(&str, &str)], remove: &[&str]) -> ProviderChange {
    ProviderChange::Update {
        name: name.into(),
        set: credentials(set),
        remove: remove.iter().map(|k| k.to_string()).collect(),
    }
}

fn conflict<T: Debug>(result: Result<T, StoreError>) -> String {
    match result {
        Err(StoreError::Conflict(message)) => message,
        other => panic!("expected a conflict, got {other:?}"),
    }
}

fn corrupt<T: Debug>(result: Result<T, StoreError>) -> String {
    match result {
        Err(StoreError::Corrupt(message)) => message,
        other => panic!("expected corrupt, got {other:?}"),
    }
}

fn invalid<T: Debug>(result: Result<T, StoreError>) -> String {
    match result {
        Err(StoreError::Invalid(message)) => message,
        other => panic!("expected invalid, got {other:?}"),
    }
}

fn open_error(result: Result<SqliteStore, StoreError>) -> String {
    match result {
        Err(e) => e.to_string(),
        Ok(_) => panic!("expected the store to refuse to open"),
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test]
async fn providers_round_trip_with_their_secrets_and_survive_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    let github = put(
        &store,
        "github",
        "github",
        &[("GITHUB_TOKEN", "ghp_one"), ("GH_HOST", "github.com")],
    )
    .await;
    assert_eq!(github.revision, 1);
    assert!(github.created_unix_ms > 0);
    assert_eq!(github.created_unix_ms, github.updated_unix_ms);
    // No type and no credentials is a valid provider too.
    let bare = put(&store, "bare", "", &[]).await;

    assert_eq!(
        store.provider("github").await.unwrap(),
        Some(github.clone())
    );
    assert_eq!(
        store.providers().await.unwrap(),
        [bare.clone(), github.clone()]
    );
    assert_eq!(store.provider("missing").await.unwrap(), None);
    let token = &github.credentials["GITHUB_TOKEN"];
    assert_eq!(token.expose(), "ghp_one");

    store.close().await;
    drop(store);
    let store = open(dir.path()).await;
    assert_eq!(store.providers().await.unwrap(), [bare, github]);
}

#[tokio::test]
async fn plaintext_never_reaches_the_database_files() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    let first = "sk-PORTCULLIS-canary-0f9e8d7c6b5a";
    let rotated = "sk-PORTCULLIS-canary-rotated-1a2b3c";
    put(&store, "openai", "openai", &[("OPENAI_API_KEY", first)]).await;
    store
        .put_provider(update("openai", &[("OPENAI_API_KEY", rotated)], &[]))
        .await
        .unwrap();
    let read = store.provider("openai").await.unwrap().unwrap();
    assert_eq!(read.credentials["OPENAI_API_KEY"].expose(), rotated);

    let files = ["portcullis.db", "portcullis.db-wal", "portcullis.db-shm"];
    let scan = |when: &str| {
        for file in files {
            let Ok(bytes) = std::fs::read(dir.path().join(file)) else {
                continue;
            };
            for secret in [first, rotated] {
                assert!(
                    !contains(&bytes, secret.as_bytes()),
                    "{file} holds a plaintext secret {when}"
                );
            }
        }
    };
    scan("before the checkpoint");
    sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
        .execute(&store.pool_for_tests())
        .await
        .unwrap();
    store.close().await;
    drop(store);
    scan("after the checkpoint");
    // The scan reads what it should: the provider name is stored in clear.
    let db = std::fs::read(dir.path().join("portcullis.db")).unwrap();
    assert!(contains(&db, b"OPENAI_API_KEY"));
}

#[tokio::test]
async fn the_key_file_is_created_private_and_kept() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let store = open(&state).await;
    put(&store, "github", "github", &[("GITHUB_TOKEN", "ghp_one")]).await;
    let key_path = state.join(KEY_FILE);
    let metadata = std::fs::metadata(&key_path).unwrap();
    assert_eq!(metadata.permissions().mode() & 0o777, 0o600);
    assert_eq!(metadata.len(), KEY_LEN as u64);
    let key = std::fs::read(&key_path).unwrap();
    store.close().await;
    drop(store);

    // A reopen uses the same key, and nothing is left aside.
    let store = open(&state).await;
    assert_eq!(std::fs::read(&key_path).unwrap(), key);
    assert!(store.provider("github").await.unwrap().is_some());
    let strays: Vec<_> = std::fs::read_dir(&state)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".tmp"))
        .collect();
    assert!(strays.is_empty(), "{strays:?}");
}

#[tokio::test]
async fn a_key_file_open_to_others_or_of_the_wrong_size_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    store.close().await;
    drop(store);
    let key_path = dir.path().join(KEY_FILE);

    std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let err = open_error(SqliteStore::open(dir.path()).await);
    assert!(err.contains("secrets.key has mode 0644"), "{err}");
    assert!(err.contains("chmod 600"), "{err}");

    std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::write(&key_path, [7u8; 16]).unwrap();
    let err = open_error(SqliteStore::open(dir.path()).await);
    assert!(
        err.contains("secrets.key holds 16 bytes, not the 32"),
        "{err}"
    );

    let elsewhere = dir.path().join("real.key");
    std::fs::remove_file(&key_path).unwrap();
    std::fs::write(&elsewhere, [7u8; KEY_LEN]).unwrap();
    std::os::unix::fs::symlink(&elsewhere, &key_path).unwrap();
    let err = open_error(SqliteStore::open(dir.path()).await);
    assert!(err.contains("not a symbolic link"), "{err}");
}

#[tokio::test]
async fn a_missing_key_is_recreated_only_while_nothing_is_sealed() {
    let dir = tempfile::tempdir().unwrap();
    let key_path = dir.path().join(KEY_FILE);
    let store = open(dir.path()).await;
    put(&store, "bare", "", &[]).await;
    store.close().await;
    drop(store);

    // No credential depends on the key yet: a new one is made.
    std::fs::remove_file(&key_path).unwrap();
    let store = open(dir.path()).await;
    assert!(key_path.exists());
    put(&store, "github", "github", &[("GITHUB_TOKEN", "ghp_one")]).await;
    store.close().await;
    drop(store);

    std::fs::remove_file(&key_path).unwrap();
    let err = open_error(SqliteStore::open(dir.path()).await);
    assert!(err.contains("secrets.key is missing"), "{err}");
    assert!(err.contains("holds 1 provider credentials"), "{err}");
    assert!(!key_path.exists());
}

#[tokio::test]
async fn a_replaced_key_fails_reads_naming_the_provider_and_allows_delete() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    put(&store, "github", "github", &[("GITHUB_TOKEN", "ghp_one")]).await;
    store.close().await;
    drop(store);
    std::fs::write(dir.path().join(KEY_FILE), [0x5au8; KEY_LEN]).unwrap();

    let store = open(dir.path()).await;
    let message = corrupt(store.provider("github").await);
    assert!(message.contains("github/GITHUB_TOKEN"), "{message}");
    assert!(message.contains("does not decrypt"), "{message}");
    assert!(!message.contains("ghp_one"), "{message}");
    corrupt(store.providers().await);
    // A provider whose secrets no longer open can still be removed.
    let deleted = store
        .put_provider(ProviderChange::Delete {
            name: "github".into(),
        })
        .await
        .unwrap();
    assert_eq!(deleted.name, "github");
    assert!(deleted.credentials.is_empty());
    assert_eq!(store.providers().await.unwrap(), []);
}

#[tokio::test]
async fn sealed_values_open_only_in_their_own_slot() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    put(&store, "one", "", &[("A", "value-a"), ("B", "value-b")]).await;
    put(&store, "two", "", &[("A", "value-two-a")]).await;
    let pool = store.pool_for_tests();

    // Swap the values of two keys of one provider.
    sqlx::query(
        "UPDATE provider_credentials SET sealed = CASE key \
             WHEN 'A' THEN (SELECT sealed FROM provider_credentials WHERE provider = 'one' AND key = 'B') \
             ELSE (SELECT sealed FROM provider_credentials WHERE provider = 'one' AND key = 'A') END \
         WHERE provider = 'one'",
    )
    .execute(&pool)
    .await
    .unwrap();
    let message = corrupt(store.provider("one").await);
    assert!(
        message.contains("provider_credentials row one/"),
        "{message}"
    );
    assert!(store.provider("two").await.unwrap().is_some());

    // Copy a value of the same key name from another provider.
    sqlx::query(
        "UPDATE provider_credentials SET sealed = \
             (SELECT sealed FROM provider_credentials WHERE provider = 'one' AND key = 'A') \
         WHERE provider = 'two' AND key = 'A'",
    )
    .execute(&pool)
    .await
    .unwrap();
    let message = corrupt(store.provider("two").await);
    assert!(
        message.contains("provider_credentials row two/A"),
        "{message}"
    );

    // A truncated value is named, not a panic.
    sqlx::query("UPDATE provider_credentials SET sealed = x'0102' WHERE provider = 'two'")
        .execute(&pool)
        .await
        .unwrap();
    let message = corrupt(store.provider("two").await);
    assert!(
        message.contains("shorter than a nonce and a tag"),
        "{message}"
    );
}

#[tokio::test]
async fn an_update_swaps_values_atomically_and_bumps_the_revision() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    let created = put(
        &store,
        "aws",
        "aws",
        &[
            ("AWS_ACCESS_KEY_ID", "AKIA1"),
            ("AWS_SECRET_ACCESS_KEY", "s1"),
        ],
    )
    .await;

    let rotated = store
        .put_provider(update(
            "aws",
            &[("AWS_SECRET_ACCESS_KEY", "s2"), ("AWS_SESSION_TOKEN", "t2")],
            &["AWS_ACCESS_KEY_ID"],
        ))
        .await
        .unwrap();
    assert_eq!(rotated.revision, 2);
    assert_eq!(rotated.created_unix_ms, created.created_unix_ms);
    assert!(rotated.updated_unix_ms >= created.updated_unix_ms);
    assert_eq!(
        rotated.credentials,
        credentials(&[("AWS_SECRET_ACCESS_KEY", "s2"), ("AWS_SESSION_TOKEN", "t2")])
    );
    assert_eq!(store.provider("aws").await.unwrap(), Some(rotated.clone()));

    // A failing update changes nothing, not even the values it would set.
    let message = conflict(
        store
            .put_provider(update("aws", &[("AWS_SECRET_ACCESS_KEY", "s3")], &["NOPE"]))
            .await,
    );
    assert!(message.contains("has no credential `NOPE`"), "{message}");
    let too_many: Vec<(String, String)> = (0..31).map(|i| (format!("K{i}"), "v".into())).collect();
    let too_many: Vec<(&str, &str)> = too_many
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let message = invalid(store.put_provider(update("aws", &too_many, &[])).await);
    assert!(message.contains("would have 33 credentials"), "{message}");
    assert_eq!(store.provider("aws").await.unwrap(), Some(rotated));

    let message = conflict(store.put_provider(update("gone", &[("K", "v")], &[])).await);
    assert_eq!(message, "provider 'gone' not found");
}

#[tokio::test]
async fn creating_a_taken_name_or_deleting_a_missing_one_conflicts() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    let first = put(&store, "github", "github", &[("GITHUB_TOKEN", "one")]).await;
    let again = ProviderRecord::new("github", "github", credentials(&[("GITHUB_TOKEN", "two")]));
    let message = conflict(store.put_provider(ProviderChange::Create(again)).await);
    assert!(
        message.contains("a provider named `github` already exists"),
        "{message}"
    );
    assert_eq!(store.provider("github").await.unwrap(), Some(first));

    let message = conflict(
        store
            .put_provider(ProviderChange::Delete {
                name: "gone".into(),
            })
            .await,
    );
    assert_eq!(message, "provider 'gone' not found");
}

#[tokio::test]
async fn delete_is_refused_while_attached_and_takes_the_credentials_along() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    create(&store, "alpha").await;
    create(&store, "beta").await;
    put(&store, "github", "github", &[("GITHUB_TOKEN", "one")]).await;
    attach(&store, "beta", &["github"]).await.unwrap();
    attach(&store, "alpha", &["github"]).await.unwrap();

    let delete = || ProviderChange::Delete {
        name: "github".into(),
    };
    let message = conflict(store.put_provider(delete()).await);
    assert!(
        message.contains("attached to sandbox `alpha`, `beta`"),
        "{message}"
    );
    assert!(store.provider("github").await.unwrap().is_some());

    detach(&store, "alpha", &["github"]).await.unwrap();
    detach(&store, "beta", &["github"]).await.unwrap();
    store.put_provider(delete()).await.unwrap();
    assert_eq!(store.provider("github").await.unwrap(), None);
    let left: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM provider_credentials")
        .fetch_one(&store.pool_for_tests())
        .await
        .unwrap();
    assert_eq!(left, 0);
}

#[tokio::test]
async fn attach_and_detach_are_idempotent_and_keep_attachment_order() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    create(&store, "demo").await;
    for name in ["zeta", "alpha", "mid"] {
        put(&store, name, "", &[]).await;
    }
    attach(&store, "demo", &["zeta", "alpha"]).await.unwrap();
    attach(&store, "demo", &["zeta"]).await.unwrap();
    attach(&store, "demo", &["mid", "mid", "alpha"])
        .await
        .unwrap();
    assert_eq!(
        store.attached("demo").await.unwrap(),
        ["zeta", "alpha", "mid"]
    );

    detach(&store, "demo", &["alpha", "never-attached"])
        .await
        .unwrap();
    detach(&store, "demo", &["alpha"]).await.unwrap();
    assert_eq!(store.attached("demo").await.unwrap(), ["zeta", "mid"]);
    attach(&store, "demo", &["alpha"]).await.unwrap();
    assert_eq!(
        store.attached("demo").await.unwrap(),
        ["zeta", "mid", "alpha"]
    );
    assert!(store.attached("unknown").await.unwrap().is_empty());

    store.close().await;
    drop(store);
    let store = open(dir.path()).await;
    assert_eq!(
        store.attached("demo").await.unwrap(),
        ["zeta", "mid", "alpha"]
    );
}

#[tokio::test]
async fn attaching_a_missing_provider_rolls_back_the_whole_change() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    create(&store, "demo").await;
    put(&store, "github", "github", &[]).await;
    let message = is_conflict(
        store
            .commit(ChangeSet {
                revision: Some(revision(1, RevisionStatus::Loaded)),
                history: vec![entry(1, "attached", "-")],
                attach_providers: vec!["github".into(), "gitlab".into()],
                ..ChangeSet::for_sandbox("demo")
            })
            .await,
    );
    assert_eq!(message, "provider 'gitlab' not found");
    assert!(store.attached("demo").await.unwrap().is_empty());
    assert!(store.revisions("demo").await.unwrap().is_empty());
    assert!(store.history("demo").await.unwrap().is_empty());

    // Attaching to a sandbox that does not exist conflicts too.
    is_conflict(attach(&store, "ghost", &["github"]).await);
}

#[tokio::test]
async fn at_most_32_providers_per_sandbox() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    create(&store, "demo").await;
    let names: Vec<String> = (0..=MAX_PROVIDERS_PER_SANDBOX)
        .map(|i| format!("p{i:02}"))
        .collect();
    for name in &names {
        put(&store, name, "", &[]).await;
    }
    let first_32: Vec<&str> = names[..32].iter().map(String::as_str).collect();
    attach(&store, "demo", &first_32).await.unwrap();
    let message = is_conflict(attach(&store, "demo", &["p32"]).await);
    assert!(
        message.contains("would have 33 providers attached, more than the limit of 32"),
        "{message}"
    );
    assert_eq!(store.attached("demo").await.unwrap().len(), 32);
    // Re-attaching an attached one at the limit is still fine.
    attach(&store, "demo", &["p00"]).await.unwrap();
    // A swap in one change stays within the limit: detaches go first.
    store
        .commit(ChangeSet {
            detach_providers: vec!["p00".into()],
            attach_providers: vec!["p32".into()],
            ..ChangeSet::for_sandbox("demo")
        })
        .await
        .unwrap();
    let attached = store.attached("demo").await.unwrap();
    assert_eq!(attached.len(), 32);
    assert_eq!(attached.last().map(String::as_str), Some("p32"));
}

#[tokio::test]
async fn a_credential_key_given_by_two_attached_providers_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    create(&store, "demo").await;
    create(&store, "other").await;
    put(
        &store,
        "work",
        "github",
        &[("GITHUB_TOKEN", "w"), ("A", "a")],
    )
    .await;
    put(&store, "personal", "github", &[("GITHUB_TOKEN", "p")]).await;

    let message = is_conflict(attach(&store, "demo", &["work", "personal"]).await);
    assert!(
        message.contains("credential key `GITHUB_TOKEN`"),
        "{message}"
    );
    assert!(
        message.contains("by provider `work` and by provider `personal`"),
        "{message}"
    );
    assert!(store.attached("demo").await.unwrap().is_empty());

    attach(&store, "demo", &["work"]).await.unwrap();
    is_conflict(attach(&store, "demo", &["personal"]).await);
    assert_eq!(store.attached("demo").await.unwrap(), ["work"]);
    // Each sandbox on its own is fine.
    attach(&store, "other", &["personal"]).await.unwrap();
}

#[tokio::test]
async fn an_update_adding_a_key_another_attached_provider_gives_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    create(&store, "demo").await;
    put(&store, "github", "github", &[("GITHUB_TOKEN", "g")]).await;
    let openai = put(&store, "openai", "openai", &[("OPENAI_API_KEY", "o")]).await;
    attach(&store, "demo", &["github", "openai"]).await.unwrap();

    let message = conflict(
        store
            .put_provider(update(
                "openai",
                &[("OPENAI_API_KEY", "o2"), ("GITHUB_TOKEN", "x")],
                &[],
            ))
            .await,
    );
    assert!(
        message.contains("provider `openai` cannot get credential `GITHUB_TOKEN`"),
        "{message}"
    );
    assert!(
        message.contains("`github`, also attached to sandbox `demo`"),
        "{message}"
    );
    assert_eq!(store.provider("openai").await.unwrap(), Some(openai));

    // Rotating a key it already has is fine while attached.
    let rotated = store
        .put_provider(update("openai", &[("OPENAI_API_KEY", "o2")], &[]))
        .await
        .unwrap();
    assert_eq!(rotated.revision, 2);
}

#[tokio::test]
async fn deleting_a_sandbox_takes_its_attachments_along() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    create(&store, "demo").await;
    put(&store, "github", "github", &[("GITHUB_TOKEN", "g")]).await;
    attach(&store, "demo", &["github"]).await.unwrap();
    store
        .commit(ChangeSet {
            delete_sandbox: true,
            ..ChangeSet::for_sandbox("demo")
        })
        .await
        .unwrap();
    assert!(store.attached("demo").await.unwrap().is_empty());
    // The provider stays, and is free to delete now.
    assert!(store.provider("github").await.unwrap().is_some());
    store
        .put_provider(ProviderChange::Delete {
            name: "github".into(),
        })
        .await
        .unwrap();
}

#[tokio::test]
async fn a_version_1_database_is_upgraded_in_place_keeping_everything() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    let demo = create(&store, "demo").await;
    store
        .commit(ChangeSet {
            set_approval_mode: Some(ApprovalMode::Auto),
            revision: Some(revision(1, RevisionStatus::Loaded)),
            upsert_chunks: vec![chunk("demo", "c-1", 1, ChunkStatus::Approved)],
            history: vec![entry(1, "approved", "c-1")],
            ..ChangeSet::for_sandbox("demo")
        })
        .await
        .unwrap();
    let sandboxes = store.sandboxes().await.unwrap();
    let revisions = store.revisions("demo").await.unwrap();
    let chunks = store.chunks("demo", None).await.unwrap();
    let history = store.history("demo").await.unwrap();
    // Turn it into what version 1 of the agent wrote: no provider tables.
    sqlx::raw_sql(
        "DROP TABLE sandbox_providers; DROP TABLE provider_credentials; DROP TABLE providers; \
         UPDATE meta SET value = '1' WHERE key = 'schema_version';",
    )
    .execute(&store.pool_for_tests())
    .await
    .unwrap();
    store.close().await;
    drop(store);
    std::fs::remove_file(dir.path().join(KEY_FILE)).unwrap();

    let store = open(dir.path()).await;
    assert_eq!(sandboxes[0].record, demo.record);
    assert_eq!(store.sandboxes().await.unwrap(), sandboxes);
    assert_eq!(store.revisions("demo").await.unwrap(), revisions);
    assert_eq!(store.chunks("demo", None).await.unwrap(), chunks);
    assert_eq!(store.history("demo").await.unwrap(), history);
    assert_eq!(store.allocate_sandbox_id().await.unwrap(), 2);
    let version: String = sqlx::query_scalar("SELECT value FROM meta WHERE key = 'schema_version'")
        .fetch_one(&store.pool_for_tests())
        .await
        .unwrap();
    assert_eq!(version, "2");
    put(&store, "github", "github", &[("GITHUB_TOKEN", "g")]).await;
    attach(&store, "demo", &["github"]).await.unwrap();
    assert_eq!(store.attached("demo").await.unwrap(), ["github"]);
}

#[tokio::test]
async fn debug_output_never_shows_a_secret() {
    let secret = "hunter2-do-not-print";
    let record = ProviderRecord::new("github", "github", credentials(&[("GITHUB_TOKEN", secret)]));
    let change = update("github", &[("GITHUB_TOKEN", secret)], &[]);
    for shown in [
        format!("{record:?}"),
        format!("{record:#?}"),
        format!("{change:?}"),
        format!("{:?}", SecretValue::from(secret)),
    ] {
        assert!(!shown.contains(secret), "{shown}");
        assert!(shown.contains("[REDACTED]"), "{shown}");
    }
    assert!(format!("{record:?}").contains("GITHUB_TOKEN"));
}

#[tokio::test]
async fn names_keys_types_and_values_out_of_bounds_are_refused_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    let create_with = |name: &str, provider_type: &str, key: &str, value: String| {
        ProviderChange::Create(ProviderRecord::new(
            name,
            provider_type,
            BTreeMap::from([(key.to_string(), SecretValue::from(value))]),
        ))
    };
    let long_name = "a".repeat(64);
    let long_key = format!("K{}", "x".repeat(128));
    let cases = [
        (
            create_with("GitHub", "", "K", "v".into()),
            "provider name `GitHub`",
        ),
        (
            create_with("-gh", "", "K", "v".into()),
            "provider name `-gh`",
        ),
        (
            create_with(&long_name, "", "K", "v".into()),
            "provider name `aaaa",
        ),
        (
            create_with("gh", "git hub", "K", "v".into()),
            "type `git hub` of provider `gh`",
        ),
        (
            create_with("gh", "", "1KEY", "v".into()),
            "credential key `1KEY`",
        ),
        (
            create_with("gh", "", "A-B", "v".into()),
            "credential key `A-B`",
        ),
        (
            create_with("gh", "", &long_key, "v".into()),
            "credential key `Kxxx",
        ),
        (
            create_with("gh", "", "v2_TOKEN", "v".into()),
            "`v2_TOKEN` of provider `gh` is reserved",
        ),
        (
            create_with("gh", "", "K", "x".repeat(16 * 1024 + 1)),
            "value of credential `K` of provider `gh` is 16385 bytes",
        ),
        (
            create_with("gh", "", "K", "secret\r\nX-Evil: 1".into()),
            "contains a carriage return",
        ),
        (
            create_with("gh", "", "K", "a\0b".into()),
            "contains a NUL byte",
        ),
        (update("gh", &[], &[]), "neither sets nor removes"),
        (
            update("gh", &[("K", "v")], &["K"]),
            "both sets and removes credential `K`",
        ),
    ];
    for (change, expected) in cases {
        let message = invalid(store.put_provider(change).await);
        assert!(message.contains(expected), "{message} lacks {expected}");
        assert!(!message.contains("secret"), "{message}");
    }
    let pairs: Vec<(String, String)> = (0..33).map(|i| (format!("K{i}"), "v".into())).collect();
    let pairs: Vec<(&str, &str)> = pairs
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let record = ProviderRecord::new("gh", "", credentials(&pairs));
    let message = invalid(store.put_provider(ProviderChange::Create(record)).await);
    assert!(message.contains("would have 33 credentials"), "{message}");
    // Exactly at the limits is fine.
    let at_limit = create_with(&"a".repeat(63), "claude-code", "K", "x".repeat(16 * 1024));
    store.put_provider(at_limit).await.unwrap();
    assert_eq!(store.providers().await.unwrap().len(), 1);
}

#[tokio::test]
async fn attachment_changes_that_contradict_themselves_are_invalid() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    create(&store, "demo").await;
    put(&store, "github", "github", &[]).await;
    let cases = [
        ChangeSet {
            delete_sandbox: true,
            detach_providers: vec!["github".into()],
            ..ChangeSet::for_sandbox("demo")
        },
        ChangeSet {
            attach_providers: vec!["github".into()],
            detach_providers: vec!["github".into()],
            ..ChangeSet::for_sandbox("demo")
        },
        ChangeSet {
            attach_providers: vec!["Not Valid".into()],
            ..ChangeSet::for_sandbox("demo")
        },
    ];
    for change in cases {
        invalid(store.commit(change).await);
    }
    assert!(store.attached("demo").await.unwrap().is_empty());
    assert_eq!(store.sandboxes().await.unwrap().len(), 1);
}

#[tokio::test]
async fn concurrent_rotations_all_land_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let store = std::sync::Arc::new(open(dir.path()).await);
    put(&store, "github", "github", &[("GITHUB_TOKEN", "0")]).await;
    let writers: Vec<_> = (0..4)
        .map(|writer| {
            let store = store.clone();
            tokio::spawn(async move {
                for i in 0..10 {
                    let value = format!("{writer}-{i}");
                    store
                        .put_provider(update("github", &[("GITHUB_TOKEN", &value)], &[]))
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    for writer in writers {
        writer.await.unwrap();
    }
    let github = store.provider("github").await.unwrap().unwrap();
    assert_eq!(github.revision, 41);
    assert!(github.credentials["GITHUB_TOKEN"].expose().ends_with("-9"));
}

#[test]
fn reserved_placeholder_keys_are_recognised() {
    use super::providers::check_credential_key;
    let hex = "0123456789abcdef".repeat(4);
    let upper = hex.to_uppercase();
    for reserved in [
        "v1_TOKEN",
        "v42_X",
        &format!("s{hex}_TOKEN"),
        &format!("s{upper}_TOKEN"),
    ] {
        assert!(check_credential_key("p", reserved).is_err(), "{reserved}");
    }
    for fine in [
        "v_TOKEN", "vX_TOKEN", "VERSION", "s1_TOKEN", "sk_live", "v1", "TOKEN",
    ] {
        assert!(check_credential_key("p", fine).is_ok(), "{fine}");
    }
}
