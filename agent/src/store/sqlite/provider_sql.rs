//! The provider tables of the SQLite backend: providers, their sealed
//! credentials, and their attachment to sandboxes. Every function runs on
//! the connection it is given, so writes join the caller's transaction.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::Path,
};

use sqlx::{SqliteConnection, sqlite::SqliteRow};

use super::{column, db_error, from_i64, to_i64};
use crate::store::{
    MAX_PROVIDERS_PER_SANDBOX, ProviderRecord, SecretValue, StoreError,
    providers::check_credential_count, secrets::SecretKey,
};

/// Providers joined with their credentials, one row per credential (one
/// row with NULL key for a provider without any).
const SELECT_PROVIDERS: &str = "\
    SELECT p.name, p.type, p.created_unix_ms, p.updated_unix_ms, p.revision, c.key, c.sealed \
    FROM providers p LEFT JOIN provider_credentials c ON c.provider = p.name \
    WHERE ?1 IS NULL OR p.name = ?1 \
    ORDER BY p.name, c.key";

/// Every provider (or only `only`) with its credentials opened. One
/// statement, so one consistent snapshot even while a rotation commits.
pub(super) async fn read_providers(
    conn: &mut SqliteConnection,
    path: &Path,
    secrets: &SecretKey,
    only: Option<&str>,
) -> Result<Vec<ProviderRecord>, StoreError> {
    let doing = match only {
        Some(name) => format!("reading provider `{name}`"),
        None => "listing providers".to_string(),
    };
    let rows = sqlx::query(SELECT_PROVIDERS)
        .bind(only)
        .fetch_all(&mut *conn)
        .await
        .map_err(|e| db_error(path, &doing, e))?;
    let mut providers: Vec<ProviderRecord> = Vec::new();
    for row in &rows {
        let name: String = column(row, "name", "providers", "?")?;
        if providers.last().is_none_or(|last| last.name != name) {
            providers.push(decode_provider(row, &name)?);
        }
        let key: Option<String> = column(row, "key", "provider_credentials", &name)?;
        let Some(key) = key else { continue };
        let slot = format!("{name}/{key}");
        let sealed: Vec<u8> = column(row, "sealed", "provider_credentials", &slot)?;
        let value = secrets.open(&name, &key, &sealed)?;
        if let Some(provider) = providers.last_mut() {
            provider.credentials.insert(key, value);
        }
    }
    Ok(providers)
}

/// The provider row without its credentials.
async fn provider_row(
    conn: &mut SqliteConnection,
    path: &Path,
    name: &str,
) -> Result<Option<ProviderRecord>, StoreError> {
    let row = sqlx::query(
        "SELECT name, type, created_unix_ms, updated_unix_ms, revision \
         FROM providers WHERE name = ?1",
    )
    .bind(name)
    .fetch_optional(&mut *conn)
    .await
    .map_err(|e| db_error(path, &format!("looking up provider `{name}`"), e))?;
    row.map(|row| decode_provider(&row, name)).transpose()
}

fn decode_provider(row: &SqliteRow, name: &str) -> Result<ProviderRecord, StoreError> {
    let created: i64 = column(row, "created_unix_ms", "providers", name)?;
    let updated: i64 = column(row, "updated_unix_ms", "providers", name)?;
    let revision: i64 = column(row, "revision", "providers", name)?;
    Ok(ProviderRecord {
        name: name.to_string(),
        provider_type: column(row, "type", "providers", name)?,
        credentials: BTreeMap::new(),
        created_unix_ms: from_i64(created, "providers", name, "created_unix_ms")?,
        updated_unix_ms: from_i64(updated, "providers", name, "updated_unix_ms")?,
        revision: from_i64(revision, "providers", name, "revision")?,
    })
}

fn not_found(name: &str) -> StoreError {
    StoreError::Conflict(format!("provider '{name}' not found"))
}

/// Inserts a new provider (revision 1, created and updated `now`).
pub(super) async fn create_provider(
    conn: &mut SqliteConnection,
    path: &Path,
    secrets: &SecretKey,
    record: &ProviderRecord,
    now: u64,
) -> Result<ProviderRecord, StoreError> {
    let name = record.name.as_str();
    if provider_row(conn, path, name).await?.is_some() {
        return Err(StoreError::Conflict(format!(
            "a provider named `{name}` already exists; change its credentials with \
             `portcullis provider update {name}`, or delete it first"
        )));
    }
    let stamp = to_i64(now, "creation time of provider", name)?;
    sqlx::query(
        "INSERT INTO providers (name, type, created_unix_ms, updated_unix_ms, revision) \
         VALUES (?1, ?2, ?3, ?3, 1)",
    )
    .bind(name)
    .bind(&record.provider_type)
    .bind(stamp)
    .execute(&mut *conn)
    .await
    .map_err(|e| db_error(path, &format!("inserting provider `{name}`"), e))?;
    for (key, value) in &record.credentials {
        put_credential(conn, path, secrets, name, key, value).await?;
    }
    Ok(ProviderRecord {
        created_unix_ms: now,
        updated_unix_ms: now,
        revision: 1,
        ..record.clone()
    })
}

/// Rotation: sets and removes credentials, bumps the revision, and returns
/// the provider as it now is.
pub(super) async fn update_provider(
    conn: &mut SqliteConnection,
    path: &Path,
    secrets: &SecretKey,
    name: &str,
    set: &BTreeMap<String, SecretValue>,
    remove: &[String],
    now: u64,
) -> Result<ProviderRecord, StoreError> {
    if provider_row(conn, path, name).await?.is_none() {
        return Err(not_found(name));
    }
    let keys: BTreeSet<String> =
        sqlx::query_scalar("SELECT key FROM provider_credentials WHERE provider = ?1")
            .bind(name)
            .fetch_all(&mut *conn)
            .await
            .map_err(|e| db_error(path, &format!("reading credential keys of `{name}`"), e))?
            .into_iter()
            .collect();
    if let Some(missing) = remove.iter().find(|key| !keys.contains(*key)) {
        return Err(StoreError::Conflict(format!(
            "provider `{name}` has no credential `{missing}` to remove (was it removed \
             meanwhile?)"
        )));
    }
    let removed: BTreeSet<&String> = remove.iter().collect();
    let kept = keys.iter().filter(|key| !removed.contains(key)).count();
    let added = set.keys().filter(|key| !keys.contains(*key)).count();
    check_credential_count(name, kept + added)?;

    for key in remove {
        sqlx::query("DELETE FROM provider_credentials WHERE provider = ?1 AND key = ?2")
            .bind(name)
            .bind(key)
            .execute(&mut *conn)
            .await
            .map_err(|e| db_error(path, &format!("removing credential `{key}` of `{name}`"), e))?;
    }
    for (key, value) in set {
        put_credential(conn, path, secrets, name, key, value).await?;
    }
    for sandbox in sandboxes_attached_to(conn, path, name).await? {
        if let Some(clash) = shared_credential_key(conn, path, &sandbox).await? {
            let other = if clash.first == name {
                &clash.second
            } else {
                &clash.first
            };
            return Err(StoreError::Conflict(format!(
                "provider `{name}` cannot get credential `{}`: provider `{other}`, also \
                 attached to sandbox `{sandbox}`, already gives it; the providers of a \
                 sandbox must not share a credential key",
                clash.key
            )));
        }
    }
    sqlx::query(
        "UPDATE providers SET updated_unix_ms = MAX(updated_unix_ms, ?2), \
         revision = revision + 1 WHERE name = ?1",
    )
    .bind(name)
    .bind(to_i64(now, "update time of provider", name)?)
    .execute(&mut *conn)
    .await
    .map_err(|e| {
        db_error(
            path,
            &format!("bumping the revision of provider `{name}`"),
            e,
        )
    })?;

    read_providers(conn, path, secrets, Some(name))
        .await?
        .pop()
        .ok_or_else(|| not_found(name))
}

/// Deletes a provider attached nowhere; returns it without credentials.
pub(super) async fn delete_provider(
    conn: &mut SqliteConnection,
    path: &Path,
    name: &str,
) -> Result<ProviderRecord, StoreError> {
    let record = provider_row(conn, path, name)
        .await?
        .ok_or_else(|| not_found(name))?;
    let sandboxes = sandboxes_attached_to(conn, path, name).await?;
    if !sandboxes.is_empty() {
        let list = sandboxes
            .iter()
            .map(|s| format!("`{s}`"))
            .collect::<Vec<_>>()
            .join(", ");
        return Err(StoreError::Conflict(format!(
            "provider `{name}` is attached to sandbox {list}; detach it first with \
             `portcullis sandbox provider detach SANDBOX {name}`"
        )));
    }
    sqlx::query("DELETE FROM providers WHERE name = ?1")
        .bind(name)
        .execute(&mut *conn)
        .await
        .map_err(|e| db_error(path, &format!("deleting provider `{name}`"), e))?;
    Ok(record)
}

async fn put_credential(
    conn: &mut SqliteConnection,
    path: &Path,
    secrets: &SecretKey,
    provider: &str,
    key: &str,
    value: &SecretValue,
) -> Result<(), StoreError> {
    let sealed = secrets.seal(provider, key, value)?;
    sqlx::query(
        "INSERT INTO provider_credentials (provider, key, sealed) VALUES (?1, ?2, ?3) \
         ON CONFLICT (provider, key) DO UPDATE SET sealed = excluded.sealed",
    )
    .bind(provider)
    .bind(key)
    .bind(sealed)
    .execute(&mut *conn)
    .await
    .map_err(|e| {
        db_error(
            path,
            &format!("writing credential `{key}` of `{provider}`"),
            e,
        )
    })?;
    Ok(())
}

/// Sandboxes a provider is attached to, by name.
async fn sandboxes_attached_to(
    conn: &mut SqliteConnection,
    path: &Path,
    provider: &str,
) -> Result<Vec<String>, StoreError> {
    sqlx::query_scalar("SELECT sandbox FROM sandbox_providers WHERE provider = ?1 ORDER BY sandbox")
        .bind(provider)
        .fetch_all(&mut *conn)
        .await
        .map_err(|e| {
            db_error(
                path,
                &format!("finding the sandboxes provider `{provider}` is attached to"),
                e,
            )
        })
}

/// Providers attached to a sandbox, in attachment order.
pub(super) async fn attached_providers(
    conn: &mut SqliteConnection,
    path: &Path,
    sandbox: &str,
) -> Result<Vec<String>, StoreError> {
    sqlx::query_scalar(
        "SELECT provider FROM sandbox_providers WHERE sandbox = ?1 ORDER BY position",
    )
    .bind(sandbox)
    .fetch_all(&mut *conn)
    .await
    .map_err(|e| db_error(path, &format!("reading providers of `{sandbox}`"), e))
}

/// Detaches each provider; one not attached is left alone.
pub(super) async fn detach_providers(
    conn: &mut SqliteConnection,
    path: &Path,
    sandbox: &str,
    providers: &[String],
) -> Result<(), StoreError> {
    for provider in providers {
        sqlx::query("DELETE FROM sandbox_providers WHERE sandbox = ?1 AND provider = ?2")
            .bind(sandbox)
            .bind(provider)
            .execute(&mut *conn)
            .await
            .map_err(|e| {
                db_error(
                    path,
                    &format!("detaching provider `{provider}` from `{sandbox}`"),
                    e,
                )
            })?;
    }
    Ok(())
}

/// Attaches each provider after those already attached; one already
/// attached keeps its place. Then checks the limit and the credential keys.
pub(super) async fn attach_providers(
    conn: &mut SqliteConnection,
    path: &Path,
    sandbox: &str,
    providers: &[String],
) -> Result<(), StoreError> {
    if providers.is_empty() {
        return Ok(());
    }
    for provider in providers {
        if provider_row(conn, path, provider).await?.is_none() {
            return Err(not_found(provider));
        }
        sqlx::query(
            "INSERT INTO sandbox_providers (sandbox, provider, position) \
             SELECT ?1, ?2, COALESCE(MAX(position), 0) + 1 FROM sandbox_providers \
             WHERE sandbox = ?1 \
             ON CONFLICT (sandbox, provider) DO NOTHING",
        )
        .bind(sandbox)
        .bind(provider)
        .execute(&mut *conn)
        .await
        .map_err(|e| {
            db_error(
                path,
                &format!("attaching provider `{provider}` to `{sandbox}`"),
                e,
            )
        })?;
    }

    let count: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM sandbox_providers WHERE sandbox = ?1")
            .bind(sandbox)
            .fetch_one(&mut *conn)
            .await
            .map_err(|e| db_error(path, &format!("counting providers of `{sandbox}`"), e))?;
    if usize::try_from(count).unwrap_or(usize::MAX) > MAX_PROVIDERS_PER_SANDBOX {
        return Err(StoreError::Conflict(format!(
            "sandbox `{sandbox}` would have {count} providers attached, more than the limit \
             of {MAX_PROVIDERS_PER_SANDBOX}; detach one first"
        )));
    }
    if let Some(clash) = shared_credential_key(conn, path, sandbox).await? {
        return Err(StoreError::Conflict(format!(
            "credential key `{}` would be given to sandbox `{sandbox}` twice, by provider \
             `{}` and by provider `{}`; the providers of a sandbox must not share a \
             credential key: detach one, or remove the key from one with \
             `portcullis provider update`",
            clash.key, clash.first, clash.second
        )));
    }
    Ok(())
}

/// A credential key given by two providers attached to one sandbox.
struct SharedKey {
    /// Attached earlier.
    first: String,
    second: String,
    key: String,
}

/// The first credential key two providers of `sandbox` share, if any.
async fn shared_credential_key(
    conn: &mut SqliteConnection,
    path: &Path,
    sandbox: &str,
) -> Result<Option<SharedKey>, StoreError> {
    let found: Option<(String, String, String)> = sqlx::query_as(
        "SELECT a.provider, b.provider, ca.key \
         FROM sandbox_providers a \
         JOIN sandbox_providers b ON b.sandbox = a.sandbox AND b.position > a.position \
         JOIN provider_credentials ca ON ca.provider = a.provider \
         JOIN provider_credentials cb ON cb.provider = b.provider AND cb.key = ca.key \
         WHERE a.sandbox = ?1 \
         ORDER BY b.position, a.position, ca.key LIMIT 1",
    )
    .bind(sandbox)
    .fetch_optional(&mut *conn)
    .await
    .map_err(|e| {
        db_error(
            path,
            &format!("checking the credential keys of the providers of `{sandbox}`"),
            e,
        )
    })?;
    Ok(found.map(|(first, second, key)| SharedKey { first, second, key }))
}

/// How many sealed credentials the database holds.
pub(super) async fn sealed_credential_count(
    conn: &mut SqliteConnection,
    path: &Path,
) -> Result<i64, StoreError> {
    sqlx::query_scalar("SELECT COUNT(*) FROM provider_credentials")
        .fetch_one(&mut *conn)
        .await
        .map_err(|e| db_error(path, "counting sealed credentials", e))
}
