//! Encryption at rest of provider credentials.
//!
//! One 32-byte key lives in `state_dir/secrets.key`, readable by its owner
//! (root) only. Each value is sealed with AES-256-GCM under a fresh random
//! 96-bit nonce and stored as `nonce || ciphertext || tag`. The associated
//! data is `provider \0 key`, so a sealed value only opens in the slot it
//! was written for: copying it to another credential or another provider
//! makes it fail to open rather than hand out the wrong secret.

use std::{
    fs,
    io::{ErrorKind, Read, Write},
    os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
};

use ring::{
    aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey},
    rand::{SecureRandom, SystemRandom},
};

use super::StoreError;

/// The key file inside the state directory.
pub const KEY_FILE: &str = "secrets.key";
/// AES-256: the key file holds exactly this many bytes.
pub const KEY_LEN: usize = 32;
/// The GCM tag appended to every ciphertext.
const TAG_LEN: usize = 16;

/// A credential value in plaintext, as the API hands it out. It prints as
/// `[REDACTED]` and cannot be serialised, so it does not leak into logs,
/// error messages or JSON by accident; read it with [`SecretValue::expose`].
#[derive(Clone, PartialEq, Eq)]
pub struct SecretValue(String);

impl SecretValue {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The plaintext. Call this only where the value is put to use.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[REDACTED]")
    }
}

impl std::fmt::Display for SecretValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[REDACTED]")
    }
}

impl From<String> for SecretValue {
    fn from(value: String) -> Self {
        Self(value)
    }
}

impl From<&str> for SecretValue {
    fn from(value: &str) -> Self {
        Self(value.to_string())
    }
}

/// The loaded key of `secrets.key`, able to seal and open values.
pub struct SecretKey {
    key: LessSafeKey,
    rng: SystemRandom,
    path: PathBuf,
}

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SecretKey({}: [REDACTED])", self.path.display())
    }
}

impl SecretKey {
    /// Loads `state_dir/secrets.key`; `Ok(None)` if there is no such file.
    /// Refuses a key file that is not a regular file, is not owned by this
    /// process's user, is readable or writable by group or others, or does
    /// not hold exactly 32 bytes.
    pub fn load(state_dir: &Path) -> Result<Option<SecretKey>, StoreError> {
        let path = state_dir.join(KEY_FILE);
        let mut file = match fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
        {
            Ok(file) => file,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(StoreError::Backend(format!(
                    "cannot open secret key file {}: {e} (it must be a regular file, \
                     not a symbolic link)",
                    path.display()
                )));
            }
        };
        let metadata = file.metadata().map_err(|e| {
            StoreError::Backend(format!(
                "cannot inspect secret key file {}: {e}",
                path.display()
            ))
        })?;
        check_key_file(&path, &metadata)?;

        let mut bytes = Vec::with_capacity(KEY_LEN + 1);
        file.read_to_end(&mut bytes).map_err(|e| {
            StoreError::Backend(format!(
                "cannot read secret key file {}: {e}",
                path.display()
            ))
        })?;
        let key = Self::from_bytes(&bytes, path);
        bytes.fill(0);
        key.map(Some)
    }

    /// Creates `state_dir/secrets.key` with a fresh random key, mode 0600.
    /// The file appears whole or not at all (written aside, then linked
    /// into place); if another process created it first, that key is
    /// loaded instead.
    pub fn create(state_dir: &Path) -> Result<SecretKey, StoreError> {
        let path = state_dir.join(KEY_FILE);
        let failed = |doing: &str, e: std::io::Error| {
            StoreError::Backend(format!(
                "cannot create secret key file {}: {doing}: {e}",
                path.display()
            ))
        };
        let rng = SystemRandom::new();
        let mut bytes = [0u8; KEY_LEN];
        rng.fill(&mut bytes).map_err(|_| {
            StoreError::Backend(format!(
                "cannot create secret key file {}: the system random generator failed",
                path.display()
            ))
        })?;

        let aside = state_dir.join(format!(".{KEY_FILE}.{}.tmp", std::process::id()));
        // A leftover from a crash of this same pid would block create_new.
        let _ = fs::remove_file(&aside);
        let written = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&aside)
            .and_then(|mut file| {
                file.write_all(&bytes)?;
                file.sync_all()
            });
        bytes.fill(0);
        if let Err(e) = written {
            let _ = fs::remove_file(&aside);
            return Err(failed("writing the new key", e));
        }
        let linked = fs::hard_link(&aside, &path);
        let _ = fs::remove_file(&aside);
        match linked {
            Ok(()) => {}
            // Another agent won the race; use its key.
            Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
            Err(e) => return Err(failed("moving the new key into place", e)),
        }
        fs::File::open(state_dir)
            .and_then(|dir| dir.sync_all())
            .map_err(|e| failed("syncing the state directory", e))?;
        Self::load(state_dir)?.ok_or_else(|| {
            StoreError::Backend(format!(
                "secret key file {} vanished right after it was created; is another \
                 process cleaning the state directory?",
                path.display()
            ))
        })
    }

    fn from_bytes(bytes: &[u8], path: PathBuf) -> Result<SecretKey, StoreError> {
        if bytes.len() != KEY_LEN {
            return Err(wrong_size(&path, bytes.len() as u64));
        }
        let key = UnboundKey::new(&AES_256_GCM, bytes)
            .map_err(|_| wrong_size(&path, bytes.len() as u64))?;
        Ok(SecretKey {
            key: LessSafeKey::new(key),
            rng: SystemRandom::new(),
            path,
        })
    }

    /// The key file this key was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Encrypts the value of credential `key` of `provider`.
    pub fn seal(
        &self,
        provider: &str,
        key: &str,
        value: &SecretValue,
    ) -> Result<Vec<u8>, StoreError> {
        let mut nonce = [0u8; NONCE_LEN];
        self.rng.fill(&mut nonce).map_err(|_| {
            StoreError::Backend(format!(
                "cannot encrypt credential `{key}` of provider `{provider}`: the system \
                 random generator failed"
            ))
        })?;
        let mut sealed = Vec::with_capacity(NONCE_LEN + value.0.len() + TAG_LEN);
        sealed.extend_from_slice(&nonce);
        let mut in_out = value.0.as_bytes().to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(associated_data(provider, key)),
                &mut in_out,
            )
            .map_err(|_| {
                StoreError::Invalid(format!(
                    "credential `{key}` of provider `{provider}` is too long to encrypt"
                ))
            })?;
        sealed.extend_from_slice(&in_out);
        Ok(sealed)
    }

    /// Decrypts what [`SecretKey::seal`] wrote for the same provider and
    /// key. Fails with [`StoreError::Corrupt`] naming both if the bytes were
    /// altered, moved from another slot, or sealed under another key.
    pub fn open(
        &self,
        provider: &str,
        key: &str,
        sealed: &[u8],
    ) -> Result<SecretValue, StoreError> {
        let corrupt = |what: &str| {
            StoreError::Corrupt(format!("provider_credentials row {provider}/{key}: {what}"))
        };
        if sealed.len() < NONCE_LEN + TAG_LEN {
            return Err(corrupt(&format!(
                "sealed value is {} bytes, shorter than a nonce and a tag",
                sealed.len()
            )));
        }
        let (nonce, ciphertext) = sealed.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce)
            .map_err(|_| corrupt("the nonce does not decode"))?;
        let mut in_out = ciphertext.to_vec();
        let plaintext = self
            .key
            .open_in_place(
                nonce,
                Aad::from(associated_data(provider, key)),
                &mut in_out,
            )
            .map_err(|_| {
                corrupt(&format!(
                    "the value does not decrypt: it was sealed under another key than {} \
                     (was the key file replaced?), or it was altered or copied from \
                     another credential; restore the original key file, or set the \
                     credential again with `portcullis provider update`",
                    self.path.display()
                ))
            })?;
        let value = String::from_utf8(plaintext.to_vec())
            .map_err(|_| corrupt("the decrypted value is not UTF-8"))?;
        in_out.fill(0);
        Ok(SecretValue(value))
    }
}

/// Binds a sealed value to its slot. Names never contain NUL (validated),
/// so the separator makes the encoding unambiguous.
fn associated_data(provider: &str, key: &str) -> Vec<u8> {
    let mut data = Vec::with_capacity(provider.len() + 1 + key.len());
    data.extend_from_slice(provider.as_bytes());
    data.push(0);
    data.extend_from_slice(key.as_bytes());
    data
}

fn check_key_file(path: &Path, metadata: &fs::Metadata) -> Result<(), StoreError> {
    let shown = path.display();
    if !metadata.is_file() {
        return Err(StoreError::Backend(format!(
            "secret key file {shown} is not a regular file; move it away (the store \
             creates a new key only while it holds no credentials)"
        )));
    }
    let owner = nix::unistd::geteuid().as_raw();
    if metadata.uid() != owner {
        return Err(StoreError::Backend(format!(
            "secret key file {shown} is owned by uid {}, not by uid {owner} running the \
             agent; run `chown {owner} {shown}` if it is the right key",
            metadata.uid()
        )));
    }
    let mode = metadata.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(StoreError::Backend(format!(
            "secret key file {shown} has mode {mode:04o}, which lets group or others \
             access it; run `chmod 600 {shown}`, and rotate the provider credentials \
             if someone else may have read it"
        )));
    }
    if metadata.len() != KEY_LEN as u64 {
        return Err(wrong_size(path, metadata.len()));
    }
    Ok(())
}

fn wrong_size(path: &Path, len: u64) -> StoreError {
    StoreError::Corrupt(format!(
        "secret key file {} holds {len} bytes, not the {KEY_LEN} of an AES-256 key; \
         restore it from a backup (a new key cannot open the stored credentials)",
        path.display()
    ))
}
