//! The SQLite backend: one database file in the state directory, WAL
//! journal with full fsync, every write one `BEGIN IMMEDIATE` transaction.
//! Credential values are sealed with the key of `secrets.key` before they
//! reach the database (see `secrets.rs`); the provider tables live in
//! `sqlite/provider_sql.rs`.

mod provider_sql;

use std::{
    fs,
    os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use sqlx::{
    Row, SqliteConnection, SqlitePool,
    sqlite::{
        SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow, SqliteSynchronous,
    },
};

use super::{
    ApprovalMode, ChangeSet, HISTORY_LIMIT, ProviderChange, ProviderRecord, REVISION_LIMIT,
    Revision, RevisionStatus, SandboxRow, Store, StoreError,
    providers::{check_provider_change, check_provider_name},
    secrets::SecretKey,
};
use crate::{
    drafts::{Chunk, ChunkStatus, HistoryEntry},
    sandbox::registry::{SandboxName, SandboxRecord},
};

/// The database file inside the state directory.
pub const DB_FILE: &str = "portcullis.db";
/// The schema this code reads and writes.
pub const SCHEMA_VERSION: u32 = 2;

/// The steps from an empty database to the current schema: step N brings
/// a version N-1 database to version N. Each is idempotent (`IF NOT
/// EXISTS`), and all steps above the stored version run in the open's one
/// transaction, so an interrupted upgrade leaves the old version intact.
const MIGRATIONS: [(u32, &str); 2] = [(1, SCHEMA_V1), (2, SCHEMA_V2_PROVIDERS)];

/// Version 1: sandboxes, revisions, chunks, history.
const SCHEMA_V1: &str = r#"
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY NOT NULL,
    value TEXT NOT NULL
) STRICT;

CREATE TABLE IF NOT EXISTS sandboxes (
    name          TEXT PRIMARY KEY NOT NULL,
    id            INTEGER NOT NULL UNIQUE,
    cgroup_path   TEXT NOT NULL,
    adopted       INTEGER NOT NULL,
    created_unix  INTEGER NOT NULL,
    approval_mode TEXT NOT NULL DEFAULT 'manual'
) STRICT;

CREATE TABLE IF NOT EXISTS revisions (
    sandbox         TEXT NOT NULL REFERENCES sandboxes (name) ON DELETE CASCADE,
    version         INTEGER NOT NULL,
    hash            TEXT NOT NULL,
    status          TEXT NOT NULL,
    source          TEXT NOT NULL,
    provenance      TEXT NOT NULL,
    created_unix_ms INTEGER NOT NULL,
    error           TEXT,
    yaml            TEXT,
    PRIMARY KEY (sandbox, version)
) STRICT;
CREATE INDEX IF NOT EXISTS revisions_by_status ON revisions (sandbox, status, version);

-- The whole chunk is the JSON payload; the other columns are copies for
-- filtering and ordering.
CREATE TABLE IF NOT EXISTS chunks (
    id            TEXT PRIMARY KEY NOT NULL,
    sandbox       TEXT NOT NULL REFERENCES sandboxes (name) ON DELETE CASCADE,
    status        TEXT NOT NULL,
    created_at_ms INTEGER NOT NULL,
    host          TEXT,
    port          INTEGER,
    binary        TEXT,
    payload       TEXT NOT NULL
) STRICT;
CREATE INDEX IF NOT EXISTS chunks_by_status ON chunks (sandbox, status, created_at_ms);
CREATE INDEX IF NOT EXISTS chunks_by_observation ON chunks (sandbox, host, port, binary);

CREATE TABLE IF NOT EXISTS history (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    sandbox      TEXT NOT NULL REFERENCES sandboxes (name) ON DELETE CASCADE,
    timestamp_ms INTEGER NOT NULL,
    event_type   TEXT NOT NULL,
    chunk_id     TEXT NOT NULL,
    actor        TEXT NOT NULL,
    description  TEXT NOT NULL
) STRICT;
CREATE INDEX IF NOT EXISTS history_by_sandbox ON history (sandbox, seq);
"#;

/// Version 2: providers, their sealed credentials (`nonce || ciphertext ||
/// tag`, never plaintext), and their attachment to sandboxes.
const SCHEMA_V2_PROVIDERS: &str = r#"
CREATE TABLE IF NOT EXISTS providers (
    name            TEXT PRIMARY KEY NOT NULL,
    type            TEXT NOT NULL,
    created_unix_ms INTEGER NOT NULL,
    updated_unix_ms INTEGER NOT NULL,
    revision        INTEGER NOT NULL
) STRICT;

CREATE TABLE IF NOT EXISTS provider_credentials (
    provider TEXT NOT NULL REFERENCES providers (name) ON DELETE CASCADE,
    key      TEXT NOT NULL,
    sealed   BLOB NOT NULL,
    PRIMARY KEY (provider, key)
) STRICT;

-- A provider cannot be deleted while attached; a sandbox takes its
-- attachments with it.
CREATE TABLE IF NOT EXISTS sandbox_providers (
    sandbox  TEXT NOT NULL REFERENCES sandboxes (name) ON DELETE CASCADE,
    provider TEXT NOT NULL REFERENCES providers (name) ON DELETE RESTRICT,
    position INTEGER NOT NULL,
    PRIMARY KEY (sandbox, provider)
) STRICT;
CREATE INDEX IF NOT EXISTS sandbox_providers_by_provider ON sandbox_providers (provider);
"#;

pub struct SqliteStore {
    pool: SqlitePool,
    path: PathBuf,
    /// Seals and opens credential values.
    secrets: SecretKey,
    /// Writes serialise in SQLite anyway; queueing them here keeps waiting
    /// writers out of SQLite's busy-retry loop and its 5 s timeout.
    write_lock: tokio::sync::Mutex<()>,
}

impl SqliteStore {
    /// Opens (creating if missing) `state_dir/portcullis.db`.
    pub async fn open(state_dir: &Path) -> Result<SqliteStore, StoreError> {
        // The directory also holds the sandboxes' trust bundle, which
        // workloads must reach; the database file itself is 0600.
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(state_dir)
            .map_err(|e| {
                StoreError::Backend(format!(
                    "cannot create state directory {}: {e}",
                    state_dir.display()
                ))
            })?;
        let path = state_dir.join(DB_FILE);
        create_private_file(&path)?;

        let options = SqliteConnectOptions::new()
            .filename(&path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(5));
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await
            .map_err(|e| db_error(&path, "opening", e))?;
        migrate(&pool, &path).await?;
        let secrets = load_secret_key(&pool, &path, state_dir).await?;
        Ok(SqliteStore {
            pool,
            path,
            secrets,
            write_lock: tokio::sync::Mutex::new(()),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Closes every connection; later calls fail. Dropping the store also
    /// closes them, but in the background.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// The pool, for tests that tamper with rows directly.
    #[cfg(test)]
    pub(super) fn pool_for_tests(&self) -> SqlitePool {
        self.pool.clone()
    }

    /// Makes sure ids below `at_least` are never handed out (legacy import:
    /// the old registry's counter may be ahead of its highest live id).
    pub async fn raise_next_sandbox_id(&self, at_least: u32) -> Result<(), StoreError> {
        let _writer = self.write_lock.lock().await;
        let mut tx = self.begin_write().await?;
        let next = next_sandbox_id(&mut tx, &self.path).await?;
        if u64::from(at_least) > next {
            set_meta(&mut tx, &self.path, "next_sandbox_id", u64::from(at_least)).await?;
        }
        tx.commit()
            .await
            .map_err(|e| db_error(&self.path, "committing the sandbox id counter", e))
    }

    /// Inserts a sandbox with its revisions as they are (legacy import:
    /// versions may have gaps where old ones were pruned), in one
    /// transaction. Returns false, changing nothing, if the name exists.
    pub async fn import_sandbox(
        &self,
        row: &SandboxRow,
        revisions: &[Revision],
    ) -> Result<bool, StoreError> {
        let name = row.record.name.as_str();
        for pair in revisions.windows(2) {
            if pair[0].version >= pair[1].version {
                return Err(StoreError::Invalid(format!(
                    "revisions of `{name}` to import are not in increasing version order \
                     ({} before {})",
                    pair[0].version, pair[1].version
                )));
            }
        }
        // At most one revision is in force: the newest Loaded one.
        let in_force = revisions
            .iter()
            .rposition(|r| r.status == RevisionStatus::Loaded);

        let _writer = self.write_lock.lock().await;
        let mut tx = self.begin_write().await?;
        if sandbox_exists(&mut tx, &self.path, name).await? {
            return Ok(false);
        }
        create_sandbox(&mut tx, &self.path, row).await?;
        for (index, revision) in revisions.iter().enumerate() {
            let mut revision = revision.clone();
            if revision.status == RevisionStatus::Loaded && Some(index) != in_force {
                revision.status = RevisionStatus::Superseded;
            }
            insert_revision(&mut tx, &self.path, name, &revision).await?;
        }
        prune_revisions(&mut tx, &self.path, name).await?;
        tx.commit()
            .await
            .map_err(|e| db_error(&self.path, &format!("committing the import of `{name}`"), e))?;
        Ok(true)
    }

    /// `BEGIN IMMEDIATE` takes the write lock up front, so a transaction
    /// that reads then writes cannot fail half-way on a lock upgrade.
    async fn begin_write(&self) -> Result<sqlx::SqliteTransaction<'static>, StoreError> {
        begin_write(&self.pool, &self.path).await
    }

    /// A connection for reads.
    async fn reader(&self) -> Result<sqlx::pool::PoolConnection<sqlx::Sqlite>, StoreError> {
        self.pool
            .acquire()
            .await
            .map_err(|e| db_error(&self.path, "taking a database connection", e))
    }
}

async fn begin_write(
    pool: &SqlitePool,
    path: &Path,
) -> Result<sqlx::SqliteTransaction<'static>, StoreError> {
    pool.begin_with("BEGIN IMMEDIATE")
        .await
        .map_err(|e| db_error(path, "starting a write transaction", e))
}

/// Creates the schema, or brings an older one of ours up to date in one
/// transaction; refuses a newer one.
async fn migrate(pool: &SqlitePool, path: &Path) -> Result<(), StoreError> {
    let mut tx = begin_write(pool, path).await?;
    let has_meta: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = 'meta'",
    )
    .fetch_one(&mut *tx)
    .await
    .map_err(|e| db_error(path, "reading the schema", e))?;
    let stored = if has_meta > 0 {
        get_meta(&mut tx, path, "schema_version")
            .await?
            .unwrap_or(0)
    } else {
        0
    };
    if stored > u64::from(SCHEMA_VERSION) {
        return Err(StoreError::Backend(format!(
            "database {} has schema version {stored}, newer than this agent \
             understands ({SCHEMA_VERSION}); upgrade portcullis, or move the file \
             away to start from an empty store",
            path.display()
        )));
    }
    for (version, step) in MIGRATIONS {
        if u64::from(version) <= stored {
            continue;
        }
        sqlx::raw_sql(step).execute(&mut *tx).await.map_err(|e| {
            db_error(
                path,
                &format!("bringing the schema from version {stored} to {version}"),
                e,
            )
        })?;
    }
    if stored < u64::from(SCHEMA_VERSION) {
        set_meta(&mut tx, path, "schema_version", u64::from(SCHEMA_VERSION)).await?;
    }
    tx.commit()
        .await
        .map_err(|e| db_error(path, "committing the schema", e))
}

/// Loads `secrets.key`, creating it only while no sealed credential exists:
/// a new key could not open them, and a store mixing two keys is worse
/// than one that refuses to start.
async fn load_secret_key(
    pool: &SqlitePool,
    path: &Path,
    state_dir: &Path,
) -> Result<SecretKey, StoreError> {
    if let Some(key) = SecretKey::load(state_dir)? {
        return Ok(key);
    }
    let mut conn = pool
        .acquire()
        .await
        .map_err(|e| db_error(path, "taking a database connection", e))?;
    let sealed = provider_sql::sealed_credential_count(&mut conn, path).await?;
    if sealed > 0 {
        let key_path = state_dir.join(super::secrets::KEY_FILE);
        return Err(StoreError::Backend(format!(
            "secret key file {} is missing, but database {} holds {sealed} provider \
             credentials sealed with it; restore the key file from a backup, or give the \
             credentials up with `sqlite3 {} 'DELETE FROM provider_credentials'` and set \
             them again",
            key_path.display(),
            path.display(),
            path.display()
        )));
    }
    SecretKey::create(state_dir)
}

#[async_trait::async_trait]
impl Store for SqliteStore {
    async fn sandboxes(&self) -> Result<Vec<SandboxRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT name, id, cgroup_path, adopted, created_unix, approval_mode \
             FROM sandboxes ORDER BY name",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(|e| db_error(&self.path, "listing sandboxes", e))?;
        rows.iter().map(decode_sandbox).collect()
    }

    async fn allocate_sandbox_id(&self) -> Result<u32, StoreError> {
        let path = &self.path;
        let _writer = self.write_lock.lock().await;
        let mut tx = self.begin_write().await?;
        let next = next_sandbox_id(&mut tx, path).await?;
        let id = u32::try_from(next).map_err(|_| {
            StoreError::Conflict(format!(
                "database {}: all sandbox ids are used up (next would be {next})",
                path.display()
            ))
        })?;
        set_meta(&mut tx, path, "next_sandbox_id", next + 1).await?;
        tx.commit()
            .await
            .map_err(|e| db_error(path, "committing a new sandbox id", e))?;
        Ok(id)
    }

    async fn revisions(&self, sandbox: &str) -> Result<Vec<Revision>, StoreError> {
        let rows = sqlx::query(
            "SELECT version, hash, status, source, provenance, created_unix_ms, error, yaml \
             FROM revisions WHERE sandbox = ?1 ORDER BY version",
        )
        .bind(sandbox)
        .fetch_all(&self.pool)
        .await
        .map_err(|e| db_error(&self.path, &format!("reading revisions of `{sandbox}`"), e))?;
        rows.iter()
            .map(|row| decode_revision(sandbox, row))
            .collect()
    }

    async fn current_revision(&self, sandbox: &str) -> Result<Option<Revision>, StoreError> {
        let row = sqlx::query(
            "SELECT version, hash, status, source, provenance, created_unix_ms, error, yaml \
             FROM revisions WHERE sandbox = ?1 AND status = 'loaded' \
             ORDER BY version DESC LIMIT 1",
        )
        .bind(sandbox)
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| {
            db_error(
                &self.path,
                &format!("reading the revision in force of `{sandbox}`"),
                e,
            )
        })?;
        row.map(|row| decode_revision(sandbox, &row)).transpose()
    }

    async fn chunks(
        &self,
        sandbox: &str,
        status: Option<ChunkStatus>,
    ) -> Result<Vec<Chunk>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, payload FROM chunks \
             WHERE sandbox = ?1 AND (?2 IS NULL OR status = ?2) \
             ORDER BY created_at_ms DESC, id",
        )
        .bind(sandbox)
        .bind(status.map(ChunkStatus::as_str))
        .fetch_all(&self.pool)
        .await
        .map_err(|e| db_error(&self.path, &format!("reading chunks of `{sandbox}`"), e))?;
        rows.iter().map(decode_chunk).collect()
    }

    async fn chunk(&self, sandbox: &str, id: &str) -> Result<Option<Chunk>, StoreError> {
        let row = sqlx::query("SELECT id, payload FROM chunks WHERE sandbox = ?1 AND id = ?2")
            .bind(sandbox)
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| db_error(&self.path, &format!("reading chunk {id} of `{sandbox}`"), e))?;
        row.as_ref().map(decode_chunk).transpose()
    }

    async fn history(&self, sandbox: &str) -> Result<Vec<HistoryEntry>, StoreError> {
        let rows = sqlx::query(
            "SELECT seq, timestamp_ms, event_type, chunk_id, actor, description \
             FROM history WHERE sandbox = ?1 ORDER BY seq",
        )
        .bind(sandbox)
        .fetch_all(&self.pool)
        .await
        .map_err(|e| db_error(&self.path, &format!("reading history of `{sandbox}`"), e))?;
        rows.iter().map(decode_history).collect()
    }

    async fn commit(&self, change: ChangeSet) -> Result<(), StoreError> {
        check_change(&change)?;
        let _writer = self.write_lock.lock().await;
        let mut tx = self.begin_write().await?;
        // An error returns before `commit`; dropping `tx` rolls back.
        apply_change(&mut tx, &self.path, &change).await?;
        tx.commit().await.map_err(|e| {
            db_error(
                &self.path,
                &format!("committing a change to `{}`", change.sandbox),
                e,
            )
        })
    }

    async fn providers(&self) -> Result<Vec<ProviderRecord>, StoreError> {
        let mut conn = self.reader().await?;
        provider_sql::read_providers(&mut conn, &self.path, &self.secrets, None).await
    }

    async fn provider(&self, name: &str) -> Result<Option<ProviderRecord>, StoreError> {
        let mut conn = self.reader().await?;
        let found =
            provider_sql::read_providers(&mut conn, &self.path, &self.secrets, Some(name)).await?;
        Ok(found.into_iter().next())
    }

    async fn put_provider(&self, change: ProviderChange) -> Result<ProviderRecord, StoreError> {
        check_provider_change(&change)?;
        let path = &self.path;
        let now = now_unix_ms();
        let _writer = self.write_lock.lock().await;
        let mut tx = self.begin_write().await?;
        // An error returns before `commit`; dropping `tx` rolls back.
        let record = match &change {
            ProviderChange::Create(record) => {
                provider_sql::create_provider(&mut tx, path, &self.secrets, record, now).await?
            }
            ProviderChange::Update { name, set, remove } => {
                provider_sql::update_provider(&mut tx, path, &self.secrets, name, set, remove, now)
                    .await?
            }
            ProviderChange::Delete { name } => {
                provider_sql::delete_provider(&mut tx, path, name).await?
            }
        };
        tx.commit().await.map_err(|e| {
            db_error(
                path,
                &format!("committing a change to provider `{}`", change.name()),
                e,
            )
        })?;
        Ok(record)
    }

    async fn attached(&self, sandbox: &str) -> Result<Vec<String>, StoreError> {
        let mut conn = self.reader().await?;
        provider_sql::attached_providers(&mut conn, &self.path, sandbox).await
    }
}

fn now_unix_ms() -> u64 {
    let since_epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    u64::try_from(since_epoch.as_millis()).unwrap_or(u64::MAX)
}

/// Creates the database file readable by its owner only before SQLite
/// opens it; SQLite gives the WAL and shm files the same mode.
fn create_private_file(path: &Path) -> Result<(), StoreError> {
    let failed = |e: std::io::Error| {
        StoreError::Backend(format!("cannot create database {}: {e}", path.display()))
    };
    fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
        .map_err(failed)?;
    // A file that already existed keeps its mode otherwise.
    fs::set_permissions(path, fs::Permissions::from_mode(0o600)).map_err(failed)
}

/// Checks what can be checked without the database: shape, not state.
fn check_change(change: &ChangeSet) -> Result<(), StoreError> {
    let sandbox = &change.sandbox;
    if change.delete_sandbox
        && (change.create_sandbox.is_some()
            || change.set_approval_mode.is_some()
            || change.revision.is_some()
            || !change.upsert_chunks.is_empty()
            || !change.delete_chunks.is_empty()
            || !change.history.is_empty()
            || !change.attach_providers.is_empty()
            || !change.detach_providers.is_empty())
    {
        return Err(StoreError::Invalid(format!(
            "deleting sandbox `{sandbox}` cannot be combined with other changes to it"
        )));
    }
    if let Some(row) = &change.create_sandbox
        && row.record.name.as_str() != sandbox
    {
        return Err(StoreError::Invalid(format!(
            "change to `{sandbox}` creates a sandbox named `{}`",
            row.record.name
        )));
    }
    for chunk in &change.upsert_chunks {
        if chunk.sandbox != *sandbox {
            return Err(StoreError::Invalid(format!(
                "change to `{sandbox}` writes chunk {} of sandbox `{}`",
                chunk.id, chunk.sandbox
            )));
        }
        // serde_json writes NaN as null, which would not read back.
        if !chunk.confidence.is_finite() {
            return Err(StoreError::Invalid(format!(
                "chunk {} of `{sandbox}` has confidence {}, not a finite number",
                chunk.id, chunk.confidence
            )));
        }
    }
    for provider in change
        .attach_providers
        .iter()
        .chain(&change.detach_providers)
    {
        check_provider_name(provider)?;
    }
    if let Some(both) = change
        .attach_providers
        .iter()
        .find(|p| change.detach_providers.contains(p))
    {
        return Err(StoreError::Invalid(format!(
            "change to `{sandbox}` both attaches and detaches provider `{both}`"
        )));
    }
    Ok(())
}

async fn apply_change(
    conn: &mut SqliteConnection,
    path: &Path,
    change: &ChangeSet,
) -> Result<(), StoreError> {
    let sandbox = change.sandbox.as_str();
    if let Some(row) = &change.create_sandbox {
        create_sandbox(conn, path, row).await?;
    } else if !sandbox_exists(conn, path, sandbox).await? {
        return Err(StoreError::Conflict(format!(
            "there is no sandbox `{sandbox}` (was it deleted meanwhile?)"
        )));
    }

    let latest = latest_version(conn, path, sandbox).await?;
    if let Some(expected) = change.expect_latest_version
        && expected != latest
    {
        return Err(StoreError::Conflict(format!(
            "the policy of `{sandbox}` changed meanwhile: latest version is {latest}, \
             expected {expected}; refetch and try again"
        )));
    }

    if change.delete_sandbox {
        sqlx::query("DELETE FROM sandboxes WHERE name = ?1")
            .bind(sandbox)
            .execute(&mut *conn)
            .await
            .map_err(|e| db_error(path, &format!("deleting sandbox `{sandbox}`"), e))?;
        return Ok(());
    }

    if let Some(mode) = change.set_approval_mode {
        sqlx::query("UPDATE sandboxes SET approval_mode = ?2 WHERE name = ?1")
            .bind(sandbox)
            .bind(mode.as_str())
            .execute(&mut *conn)
            .await
            .map_err(|e| {
                db_error(
                    path,
                    &format!("setting the approval mode of `{sandbox}`"),
                    e,
                )
            })?;
    }

    if let Some(revision) = &change.revision {
        append_revision(conn, path, sandbox, latest, revision).await?;
    }

    for id in &change.delete_chunks {
        sqlx::query("DELETE FROM chunks WHERE sandbox = ?1 AND id = ?2")
            .bind(sandbox)
            .bind(id)
            .execute(&mut *conn)
            .await
            .map_err(|e| db_error(path, &format!("deleting chunk {id} of `{sandbox}`"), e))?;
    }
    for chunk in &change.upsert_chunks {
        upsert_chunk(conn, path, chunk).await?;
    }

    if !change.history.is_empty() {
        for entry in &change.history {
            insert_history(conn, path, sandbox, entry).await?;
        }
        prune_history(conn, path, sandbox).await?;
    }

    provider_sql::detach_providers(conn, path, sandbox, &change.detach_providers).await?;
    provider_sql::attach_providers(conn, path, sandbox, &change.attach_providers).await?;
    Ok(())
}

async fn create_sandbox(
    conn: &mut SqliteConnection,
    path: &Path,
    row: &SandboxRow,
) -> Result<(), StoreError> {
    let name = row.record.name.as_str();
    if sandbox_exists(conn, path, name).await? {
        return Err(StoreError::Conflict(format!(
            "a sandbox named `{name}` already exists"
        )));
    }
    let holder: Option<String> = sqlx::query_scalar("SELECT name FROM sandboxes WHERE id = ?1")
        .bind(i64::from(row.record.id))
        .fetch_optional(&mut *conn)
        .await
        .map_err(|e| db_error(path, &format!("checking sandbox id {}", row.record.id), e))?;
    if let Some(holder) = holder {
        return Err(StoreError::Conflict(format!(
            "sandbox id {} is already used by `{holder}`",
            row.record.id
        )));
    }
    insert_sandbox(conn, path, row).await?;
    // An id chosen outside allocate_sandbox_id must not be handed out later.
    let next = next_sandbox_id(conn, path).await?;
    let after = u64::from(row.record.id) + 1;
    if after > next {
        set_meta(conn, path, "next_sandbox_id", after).await?;
    }
    Ok(())
}

async fn insert_sandbox(
    conn: &mut SqliteConnection,
    path: &Path,
    row: &SandboxRow,
) -> Result<(), StoreError> {
    let record = &row.record;
    let name = record.name.as_str();
    let cgroup_path = record.cgroup_path.to_str().ok_or_else(|| {
        StoreError::Invalid(format!(
            "cgroup path {} of sandbox `{name}` is not UTF-8",
            record.cgroup_path.display()
        ))
    })?;
    sqlx::query(
        "INSERT INTO sandboxes (name, id, cgroup_path, adopted, created_unix, approval_mode) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )
    .bind(name)
    .bind(i64::from(record.id))
    .bind(cgroup_path)
    .bind(record.adopted)
    .bind(to_i64(
        record.created_unix,
        "created_unix of sandbox",
        name,
    )?)
    .bind(row.approval_mode.as_str())
    .execute(&mut *conn)
    .await
    .map_err(|e| db_error(path, &format!("inserting sandbox `{name}`"), e))?;
    Ok(())
}

async fn sandbox_exists(
    conn: &mut SqliteConnection,
    path: &Path,
    sandbox: &str,
) -> Result<bool, StoreError> {
    let found: Option<i64> = sqlx::query_scalar("SELECT 1 FROM sandboxes WHERE name = ?1")
        .bind(sandbox)
        .fetch_optional(&mut *conn)
        .await
        .map_err(|e| db_error(path, &format!("looking up sandbox `{sandbox}`"), e))?;
    Ok(found.is_some())
}

/// The next id to hand out: the stored counter, but never at or below an
/// id in use (a counter lost to an old bug must not cause reuse).
async fn next_sandbox_id(conn: &mut SqliteConnection, path: &Path) -> Result<u64, StoreError> {
    let stored = get_meta(conn, path, "next_sandbox_id").await?.unwrap_or(1);
    let highest: i64 = sqlx::query_scalar("SELECT COALESCE(MAX(id), 0) FROM sandboxes")
        .fetch_one(&mut *conn)
        .await
        .map_err(|e| db_error(path, "reading the highest sandbox id", e))?;
    let after_highest = u64::try_from(highest).unwrap_or(0) + 1;
    Ok(stored.max(after_highest).max(1))
}

async fn get_meta(
    conn: &mut SqliteConnection,
    path: &Path,
    key: &str,
) -> Result<Option<u64>, StoreError> {
    let value: Option<String> = sqlx::query_scalar("SELECT value FROM meta WHERE key = ?1")
        .bind(key)
        .fetch_optional(&mut *conn)
        .await
        .map_err(|e| db_error(path, &format!("reading meta `{key}`"), e))?;
    value
        .map(|v| {
            v.parse::<u64>().map_err(|_| {
                StoreError::Corrupt(format!(
                    "meta row `{key}` in {} holds `{v}`, not a number",
                    path.display()
                ))
            })
        })
        .transpose()
}

async fn set_meta(
    conn: &mut SqliteConnection,
    path: &Path,
    key: &str,
    value: u64,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO meta (key, value) VALUES (?1, ?2) \
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
    )
    .bind(key)
    .bind(value.to_string())
    .execute(&mut *conn)
    .await
    .map_err(|e| db_error(path, &format!("writing meta `{key}`"), e))?;
    Ok(())
}

async fn latest_version(
    conn: &mut SqliteConnection,
    path: &Path,
    sandbox: &str,
) -> Result<u64, StoreError> {
    let latest: i64 =
        sqlx::query_scalar("SELECT COALESCE(MAX(version), 0) FROM revisions WHERE sandbox = ?1")
            .bind(sandbox)
            .fetch_one(&mut *conn)
            .await
            .map_err(|e| {
                db_error(
                    path,
                    &format!("reading the latest revision of `{sandbox}`"),
                    e,
                )
            })?;
    u64::try_from(latest).map_err(|_| {
        StoreError::Corrupt(format!(
            "revisions of `{sandbox}` have a negative version {latest}"
        ))
    })
}

async fn append_revision(
    conn: &mut SqliteConnection,
    path: &Path,
    sandbox: &str,
    latest: u64,
    revision: &Revision,
) -> Result<(), StoreError> {
    if revision.version != latest + 1 {
        return Err(StoreError::Conflict(format!(
            "revision {} of `{sandbox}` does not follow the latest one ({latest}); \
             refetch and try again",
            revision.version
        )));
    }
    if revision.status == RevisionStatus::Loaded {
        sqlx::query(
            "UPDATE revisions SET status = 'superseded' WHERE sandbox = ?1 AND status = 'loaded'",
        )
        .bind(sandbox)
        .execute(&mut *conn)
        .await
        .map_err(|e| {
            db_error(
                path,
                &format!("superseding the revision in force of `{sandbox}`"),
                e,
            )
        })?;
    }
    insert_revision(conn, path, sandbox, revision).await?;
    prune_revisions(conn, path, sandbox).await
}

async fn insert_revision(
    conn: &mut SqliteConnection,
    path: &Path,
    sandbox: &str,
    revision: &Revision,
) -> Result<(), StoreError> {
    let key = format!("{sandbox}/{}", revision.version);
    sqlx::query(
        "INSERT INTO revisions (sandbox, version, hash, status, source, provenance, \
         created_unix_ms, error, yaml) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
    )
    .bind(sandbox)
    .bind(to_i64(revision.version, "version of revision", &key)?)
    .bind(&revision.hash)
    .bind(revision.status.as_str())
    .bind(&revision.source)
    .bind(&revision.provenance)
    .bind(to_i64(
        revision.created_unix_ms,
        "created_unix_ms of revision",
        &key,
    )?)
    .bind(revision.error.as_deref())
    .bind(revision.yaml.as_deref())
    .execute(&mut *conn)
    .await
    .map_err(|e| db_error(path, &format!("inserting revision {key}"), e))?;
    Ok(())
}

/// Keeps the newest REVISION_LIMIT revisions, counting the one in force,
/// which is kept however old it is.
async fn prune_revisions(
    conn: &mut SqliteConnection,
    path: &Path,
    sandbox: &str,
) -> Result<(), StoreError> {
    sqlx::query(
        "DELETE FROM revisions WHERE sandbox = ?1 AND status != 'loaded' AND version IN ( \
             SELECT version FROM revisions WHERE sandbox = ?1 AND status != 'loaded' \
             ORDER BY version DESC LIMIT -1 OFFSET ?2 - ( \
                 SELECT COUNT(*) FROM revisions WHERE sandbox = ?1 AND status = 'loaded'))",
    )
    .bind(sandbox)
    .bind(REVISION_LIMIT as i64)
    .execute(&mut *conn)
    .await
    .map_err(|e| db_error(path, &format!("pruning old revisions of `{sandbox}`"), e))?;
    Ok(())
}

async fn upsert_chunk(
    conn: &mut SqliteConnection,
    path: &Path,
    chunk: &Chunk,
) -> Result<(), StoreError> {
    let payload = serde_json::to_string(chunk).map_err(|e| {
        StoreError::Invalid(format!("chunk {} cannot be serialised: {e}", chunk.id))
    })?;
    let observation = chunk.observation_key();
    let written = sqlx::query(
        "INSERT INTO chunks (id, sandbox, status, created_at_ms, host, port, binary, payload) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) \
         ON CONFLICT (id) DO UPDATE SET status = excluded.status, \
             created_at_ms = excluded.created_at_ms, host = excluded.host, \
             port = excluded.port, binary = excluded.binary, payload = excluded.payload \
         WHERE chunks.sandbox = excluded.sandbox",
    )
    .bind(&chunk.id)
    .bind(&chunk.sandbox)
    .bind(chunk.status.as_str())
    .bind(chunk.created_at_ms)
    .bind(observation.as_ref().map(|(host, _, _)| host.as_str()))
    .bind(observation.as_ref().map(|(_, port, _)| i64::from(*port)))
    .bind(observation.as_ref().map(|(_, _, binary)| binary.as_str()))
    .bind(payload)
    .execute(&mut *conn)
    .await
    .map_err(|e| {
        db_error(
            path,
            &format!("writing chunk {} of `{}`", chunk.id, chunk.sandbox),
            e,
        )
    })?;
    // The guard above leaves a chunk id of another sandbox untouched.
    if written.rows_affected() == 0 {
        return Err(StoreError::Conflict(format!(
            "chunk id {} already belongs to another sandbox than `{}`",
            chunk.id, chunk.sandbox
        )));
    }
    Ok(())
}

async fn insert_history(
    conn: &mut SqliteConnection,
    path: &Path,
    sandbox: &str,
    entry: &HistoryEntry,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO history (sandbox, timestamp_ms, event_type, chunk_id, actor, description) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )
    .bind(sandbox)
    .bind(entry.timestamp_ms)
    .bind(&entry.event_type)
    .bind(&entry.chunk_id)
    .bind(&entry.actor)
    .bind(&entry.description)
    .execute(&mut *conn)
    .await
    .map_err(|e| db_error(path, &format!("appending history of `{sandbox}`"), e))?;
    Ok(())
}

/// Keeps the newest HISTORY_LIMIT lines of one sandbox.
async fn prune_history(
    conn: &mut SqliteConnection,
    path: &Path,
    sandbox: &str,
) -> Result<(), StoreError> {
    // With fewer lines the subquery is NULL and nothing compares below it.
    sqlx::query(
        "DELETE FROM history WHERE sandbox = ?1 AND seq < ( \
             SELECT seq FROM history WHERE sandbox = ?1 ORDER BY seq DESC LIMIT 1 OFFSET ?2)",
    )
    .bind(sandbox)
    .bind(HISTORY_LIMIT as i64 - 1)
    .execute(&mut *conn)
    .await
    .map_err(|e| db_error(path, &format!("pruning old history of `{sandbox}`"), e))?;
    Ok(())
}

fn decode_sandbox(row: &SqliteRow) -> Result<SandboxRow, StoreError> {
    let name: String = column(row, "name", "sandboxes", "?")?;
    let key = name.as_str();
    let id: i64 = column(row, "id", "sandboxes", key)?;
    let created_unix: i64 = column(row, "created_unix", "sandboxes", key)?;
    let approval_mode: String = column(row, "approval_mode", "sandboxes", key)?;
    let cgroup_path: String = column(row, "cgroup_path", "sandboxes", key)?;
    let record = SandboxRecord {
        id: u32::try_from(id).map_err(|_| {
            StoreError::Corrupt(format!("sandboxes row `{key}`: id {id} is out of range"))
        })?,
        cgroup_path: PathBuf::from(cgroup_path),
        adopted: column::<i64>(row, "adopted", "sandboxes", key)? != 0,
        created_unix: from_i64(created_unix, "sandboxes", key, "created_unix")?,
        name: SandboxName::try_from(name.clone())
            .map_err(|e| StoreError::Corrupt(format!("sandboxes row `{key}`: {e}")))?,
    };
    Ok(SandboxRow {
        record,
        approval_mode: ApprovalMode::from_stored(&approval_mode),
    })
}

fn decode_revision(sandbox: &str, row: &SqliteRow) -> Result<Revision, StoreError> {
    let version: i64 = column(row, "version", "revisions", sandbox)?;
    let key = format!("{sandbox}/{version}");
    let status: String = column(row, "status", "revisions", &key)?;
    let created_unix_ms: i64 = column(row, "created_unix_ms", "revisions", &key)?;
    Ok(Revision {
        version: from_i64(version, "revisions", &key, "version")?,
        hash: column(row, "hash", "revisions", &key)?,
        status: RevisionStatus::parse(&status).ok_or_else(|| {
            StoreError::Corrupt(format!("revisions row {key}: unknown status `{status}`"))
        })?,
        source: column(row, "source", "revisions", &key)?,
        provenance: column(row, "provenance", "revisions", &key)?,
        created_unix_ms: from_i64(created_unix_ms, "revisions", &key, "created_unix_ms")?,
        error: column(row, "error", "revisions", &key)?,
        yaml: column(row, "yaml", "revisions", &key)?,
    })
}

fn decode_chunk(row: &SqliteRow) -> Result<Chunk, StoreError> {
    let id: String = column(row, "id", "chunks", "?")?;
    let payload: String = column(row, "payload", "chunks", &id)?;
    let chunk: Chunk = serde_json::from_str(&payload).map_err(|e| {
        StoreError::Corrupt(format!("chunks row {id}: payload does not decode: {e}"))
    })?;
    if chunk.id != id {
        return Err(StoreError::Corrupt(format!(
            "chunks row {id}: payload is chunk {}",
            chunk.id
        )));
    }
    Ok(chunk)
}

fn decode_history(row: &SqliteRow) -> Result<HistoryEntry, StoreError> {
    let seq: i64 = column(row, "seq", "history", "?")?;
    let key = seq.to_string();
    Ok(HistoryEntry {
        timestamp_ms: column(row, "timestamp_ms", "history", &key)?,
        event_type: column(row, "event_type", "history", &key)?,
        description: column(row, "description", "history", &key)?,
        chunk_id: column(row, "chunk_id", "history", &key)?,
        actor: column(row, "actor", "history", &key)?,
    })
}

fn column<'r, T>(row: &'r SqliteRow, name: &str, table: &str, key: &str) -> Result<T, StoreError>
where
    T: sqlx::Decode<'r, sqlx::Sqlite> + sqlx::Type<sqlx::Sqlite>,
{
    row.try_get(name)
        .map_err(|e| StoreError::Corrupt(format!("{table} row {key}: column {name}: {e}")))
}

fn from_i64(value: i64, table: &str, key: &str, name: &str) -> Result<u64, StoreError> {
    u64::try_from(value).map_err(|_| {
        StoreError::Corrupt(format!("{table} row {key}: {name} is negative ({value})"))
    })
}

/// SQLite integers are signed 64-bit; larger values cannot be stored.
fn to_i64(value: u64, what: &str, key: &str) -> Result<i64, StoreError> {
    i64::try_from(value)
        .map_err(|_| StoreError::Invalid(format!("{what} {key} is {value}, too large to store")))
}

fn db_error(path: &Path, doing: &str, e: sqlx::Error) -> StoreError {
    // SQLITE_BUSY and its extended codes (BUSY_RECOVERY, BUSY_SNAPSHOT, ...).
    let busy = e
        .as_database_error()
        .and_then(|d| d.code())
        .and_then(|code| code.parse::<i32>().ok())
        .is_some_and(|code| code & 0xff == 5);
    if busy {
        return StoreError::Backend(format!(
            "database {}: {doing}: still locked by another writer after 5 s ({e}); \
             is a second agent running on this state directory?",
            path.display()
        ));
    }
    StoreError::Backend(format!("database {}: {doing}: {e}", path.display()))
}
