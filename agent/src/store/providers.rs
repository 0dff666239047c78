//! Providers (reference §6.1): named sets of credentials a sandbox can be
//! given, and the limits the store holds them to. The store is the last
//! line of validation; the CLI and API check the same rules earlier with
//! these functions.

use std::collections::BTreeMap;

use super::{StoreError, secrets::SecretValue};

/// Providers attached to one sandbox at most (§6.2).
pub const MAX_PROVIDERS_PER_SANDBOX: usize = 32;
/// Credentials of one provider at most (§6.1).
pub const MAX_CREDENTIALS_PER_PROVIDER: usize = 32;
/// Bytes of one credential value at most.
pub const MAX_CREDENTIAL_VALUE_BYTES: usize = 16 * 1024;
/// Bytes of a provider name at most.
pub const MAX_PROVIDER_NAME_BYTES: usize = 63;
/// Bytes of a provider type at most (§6.1).
pub const MAX_PROVIDER_TYPE_BYTES: usize = 64;
/// Bytes of a credential key at most.
pub const MAX_CREDENTIAL_KEY_BYTES: usize = 128;

/// One provider with its credentials in plaintext. The database only ever
/// holds the values sealed (see `secrets.rs`); `Debug` shows them as
/// `[REDACTED]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProviderRecord {
    pub name: String,
    /// The profile id (`github`, `claude-code`, ...) as validated by the
    /// caller against the profiles; empty for a provider without one.
    pub provider_type: String,
    /// Environment variable name -> value.
    pub credentials: BTreeMap<String, SecretValue>,
    pub created_unix_ms: u64,
    pub updated_unix_ms: u64,
    /// 1 when created, bumped on every update (rotation).
    pub revision: u64,
}

impl ProviderRecord {
    /// A provider to create; the store assigns the timestamps and revision.
    pub fn new(
        name: impl Into<String>,
        provider_type: impl Into<String>,
        credentials: BTreeMap<String, SecretValue>,
    ) -> Self {
        Self {
            name: name.into(),
            provider_type: provider_type.into(),
            credentials,
            created_unix_ms: 0,
            updated_unix_ms: 0,
            revision: 0,
        }
    }
}

/// One write to the providers, applied in one transaction.
#[derive(Debug)]
pub enum ProviderChange {
    /// Inserts the provider with revision 1, both timestamps set to now
    /// (the record's own timestamps and revision are ignored). Conflict if
    /// the name is taken.
    Create(ProviderRecord),
    /// Rotation: sets (adds or replaces) and removes credentials all at
    /// once, bumping the revision. Conflict if the provider is missing, if
    /// a key to remove is not there, or if an added key is already given by
    /// another provider attached to a sandbox this one is attached to.
    Update {
        name: String,
        set: BTreeMap<String, SecretValue>,
        remove: Vec<String>,
    },
    /// Deletes the provider and its credentials. Conflict, naming the
    /// sandboxes, while it is attached anywhere. Returns the record as it
    /// was, without its credentials (which need not decrypt: a provider
    /// whose secrets no longer open can still be deleted).
    Delete { name: String },
}

impl ProviderChange {
    /// The provider this change is about.
    pub fn name(&self) -> &str {
        match self {
            Self::Create(record) => &record.name,
            Self::Update { name, .. } | Self::Delete { name } => name,
        }
    }
}

/// A provider name, key, type or value the store cannot take; the message
/// names the field and the rule, never a credential value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidProviderField(pub String);

impl From<InvalidProviderField> for StoreError {
    fn from(e: InvalidProviderField) -> Self {
        StoreError::Invalid(e.0)
    }
}

/// `[a-z0-9][a-z0-9_-]{0,62}`.
pub fn check_provider_name(name: &str) -> Result<(), InvalidProviderField> {
    let bytes = name.as_bytes();
    let valid = !bytes.is_empty()
        && bytes.len() <= MAX_PROVIDER_NAME_BYTES
        && matches!(bytes[0], b'a'..=b'z' | b'0'..=b'9')
        && bytes
            .iter()
            .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'_' | b'-'));
    if valid {
        return Ok(());
    }
    Err(InvalidProviderField(format!(
        "provider name `{}` is not valid: use 1 to {MAX_PROVIDER_NAME_BYTES} lower-case \
         letters, digits, `-` and `_`, starting with a letter or digit",
        name.escape_debug()
    )))
}

/// Empty (no type), or a profile id: an ASCII letter or digit, then
/// letters, digits, `-`, `_` or `.`, at most 64 bytes.
pub fn check_provider_type(
    provider: &str,
    provider_type: &str,
) -> Result<(), InvalidProviderField> {
    let bytes = provider_type.as_bytes();
    let valid = bytes.is_empty()
        || (bytes.len() <= MAX_PROVIDER_TYPE_BYTES
            && bytes[0].is_ascii_alphanumeric()
            && bytes
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.')));
    if valid {
        return Ok(());
    }
    Err(InvalidProviderField(format!(
        "type `{}` of provider `{provider}` is not valid: use a profile id of at most \
         {MAX_PROVIDER_TYPE_BYTES} letters, digits, `-`, `_` and `.`, or no type",
        provider_type.escape_debug()
    )))
}

/// `[A-Za-z_][A-Za-z0-9_]{0,127}`, and not of the forms `v<digits>_...`
/// or `s<64 hex>_...`, which credential placeholders reserve (§6.4); the
/// same rule as `providers::placeholder::valid_key`.
pub fn check_credential_key(provider: &str, key: &str) -> Result<(), InvalidProviderField> {
    let bytes = key.as_bytes();
    let valid = !bytes.is_empty()
        && bytes.len() <= MAX_CREDENTIAL_KEY_BYTES
        && (bytes[0].is_ascii_alphabetic() || bytes[0] == b'_')
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || *b == b'_');
    if !valid {
        return Err(InvalidProviderField(format!(
            "credential key `{}` of provider `{provider}` is not valid: use 1 to \
             {MAX_CREDENTIAL_KEY_BYTES} ASCII letters, digits and `_`, not starting with \
             a digit (an environment variable name)",
            key.escape_debug()
        )));
    }
    if is_reserved_credential_key(key) {
        return Err(InvalidProviderField(format!(
            "credential key `{key}` of provider `{provider}` is reserved: keys of the form \
             `v<digits>_...` or `s<64 hex digits>_...` name credential placeholder \
             generations; choose another name"
        )));
    }
    Ok(())
}

fn is_reserved_credential_key(key: &str) -> bool {
    let generation = |rest: &str, digit: fn(&u8) -> bool, exact: Option<usize>| {
        rest.split_once('_').is_some_and(|(digits, _)| {
            !digits.is_empty()
                && digits.as_bytes().iter().all(digit)
                && exact.is_none_or(|n| digits.len() == n)
        })
    };
    if let Some(rest) = key.strip_prefix('v') {
        return generation(rest, u8::is_ascii_digit, None);
    }
    if let Some(rest) = key.strip_prefix('s') {
        // Either case, as `providers/placeholder.rs` reads them.
        return generation(rest, u8::is_ascii_hexdigit, Some(64));
    }
    false
}

/// At most 16 KiB, and no NUL, CR or LF (they could split a header or an
/// environment entry). The message gives the length, never the value.
pub fn check_credential_value(
    provider: &str,
    key: &str,
    value: &SecretValue,
) -> Result<(), InvalidProviderField> {
    let bytes = value.expose().as_bytes();
    if bytes.len() > MAX_CREDENTIAL_VALUE_BYTES {
        return Err(InvalidProviderField(format!(
            "value of credential `{key}` of provider `{provider}` is {} bytes, more than \
             the limit of {MAX_CREDENTIAL_VALUE_BYTES}",
            bytes.len()
        )));
    }
    if let Some(at) = bytes.iter().position(|b| matches!(b, 0 | b'\r' | b'\n')) {
        let what = match bytes[at] {
            0 => "a NUL byte",
            b'\r' => "a carriage return",
            _ => "a line feed",
        };
        return Err(InvalidProviderField(format!(
            "value of credential `{key}` of provider `{provider}` contains {what} (at byte \
             {at}); values must be a single line without NUL"
        )));
    }
    Ok(())
}

/// The number of credentials a provider would end up with.
pub fn check_credential_count(provider: &str, count: usize) -> Result<(), InvalidProviderField> {
    if count > MAX_CREDENTIALS_PER_PROVIDER {
        return Err(InvalidProviderField(format!(
            "provider `{provider}` would have {count} credentials, more than the limit of \
             {MAX_CREDENTIALS_PER_PROVIDER}"
        )));
    }
    Ok(())
}

/// Everything about a change that can be checked without the database.
pub(super) fn check_provider_change(change: &ProviderChange) -> Result<(), InvalidProviderField> {
    let name = change.name();
    check_provider_name(name)?;
    match change {
        ProviderChange::Create(record) => {
            check_provider_type(name, &record.provider_type)?;
            check_credential_count(name, record.credentials.len())?;
            check_credentials(name, &record.credentials)?;
        }
        ProviderChange::Update { set, remove, .. } => {
            if set.is_empty() && remove.is_empty() {
                return Err(InvalidProviderField(format!(
                    "update of provider `{name}` neither sets nor removes a credential"
                )));
            }
            check_credentials(name, set)?;
            for key in remove {
                check_credential_key(name, key)?;
                if set.contains_key(key) {
                    return Err(InvalidProviderField(format!(
                        "update of provider `{name}` both sets and removes credential `{key}`"
                    )));
                }
            }
        }
        ProviderChange::Delete { .. } => {}
    }
    Ok(())
}

fn check_credentials(
    provider: &str,
    credentials: &BTreeMap<String, SecretValue>,
) -> Result<(), InvalidProviderField> {
    for (key, value) in credentials {
        check_credential_key(provider, key)?;
        check_credential_value(provider, key, value)?;
    }
    Ok(())
}
