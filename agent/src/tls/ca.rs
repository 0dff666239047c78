//! The Portcullis local CA: created once, kept on disk, reloaded on start.
//!
//! The private key is the most sensitive file Portcullis owns: anyone who
//! reads it can impersonate every host to the sandbox. It is created with
//! mode 0600 from the first byte, and a looser mode found on load is fixed.

use std::fmt;
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{ErrorKind, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context, bail};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, SerialNumber,
};
use time::{Duration, OffsetDateTime};

/// CA certificate file name inside the CA directory.
pub const CA_CERT_FILE: &str = "ca.crt";
/// CA private key file name inside the CA directory.
pub const CA_KEY_FILE: &str = "ca.key";

/// System root bundles, most common first (Debian/Ubuntu/Alpine,
/// Fedora/RHEL, macOS-style/others).
pub const SYSTEM_ROOT_CANDIDATES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/cert.pem",
];

const CA_COMMON_NAME: &str = "Portcullis Local CA";
const CA_ORGANIZATION: &str = "Portcullis";
/// Backdating absorbs clock skew between host and sandboxed clients.
const CA_BACKDATE: Duration = Duration::days(1);
/// Ten years, counting leap days.
const CA_LIFETIME: Duration = Duration::days(3653);

const DIR_MODE: u32 = 0o700;
const KEY_MODE: u32 = 0o600;
const CERT_MODE: u32 = 0o644;
/// Trust bundle and its directories: sandboxed processes run as `nobody`
/// and must be able to reach and read it.
const BUNDLE_MODE: u32 = 0o644;
const BUNDLE_DIR_MODE: u32 = 0o755;

const PEM_CERT_BEGIN: &str = "-----BEGIN CERTIFICATE-----";
const PEM_CERT_END: &str = "-----END CERTIFICATE-----";

/// The local CA: its certificate and the issuer (name + key) that signs
/// leaf certificates.
pub struct CertificateAuthority {
    cert_pem: String,
    cert_der: Vec<u8>,
    /// Signs leaves in `mint_leaf` with `params.signed_by(.., &issuer)`.
    issuer: Issuer<'static, KeyPair>,
}

impl fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // `Issuer`'s Debug elides the signing key.
        f.debug_struct("CertificateAuthority")
            .field("issuer", &self.issuer)
            .finish_non_exhaustive()
    }
}

impl CertificateAuthority {
    /// Loads `dir/ca.crt` + `dir/ca.key`, or creates them if neither
    /// exists. `dir` is created with mode 0700 if missing.
    pub fn load_or_create(dir: &Path) -> anyhow::Result<Self> {
        let cert_path = dir.join(CA_CERT_FILE);
        let key_path = dir.join(CA_KEY_FILE);
        prepare_private_dir(dir)?;
        let cert_exists = exists(&cert_path)?;
        let key_exists = exists(&key_path)?;
        match (cert_exists, key_exists) {
            (true, true) => Self::load(&cert_path, &key_path),
            (false, false) => {
                let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
                    .context("generating the CA key (ECDSA P-256)")?;
                // Key first: a crash before the certificate lands leaves
                // the recoverable state handled below.
                write_atomic(&key_path, key.serialize_pem().as_bytes(), KEY_MODE)?;
                let ca = Self::issue(key, &cert_path)?;
                log::info!("created local CA {}", cert_path.display());
                Ok(ca)
            }
            (false, true) => {
                log::warn!(
                    "{} exists without {}; issuing a new CA certificate for the existing key",
                    key_path.display(),
                    cert_path.display()
                );
                let key = read_key(&key_path)?;
                Self::issue(key, &cert_path)
            }
            (true, false) => bail!(
                "{} exists but {} is missing; refusing to replace a CA that clients may \
                 already trust (remove {} to create a new CA)",
                cert_path.display(),
                key_path.display(),
                cert_path.display()
            ),
        }
    }

    /// The CA certificate, PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA certificate, DER (for TLS certificate chains).
    pub fn cert_der(&self) -> &[u8] {
        &self.cert_der
    }

    /// Signs a leaf certificate for `leaf_key` with the CA key. `params`
    /// gets a fresh random serial here (an issuer must never repeat one);
    /// names, usages and validity are the caller's (`tls::leaf`).
    pub fn mint_leaf(
        &self,
        mut params: CertificateParams,
        leaf_key: &impl rcgen::PublicKeyData,
    ) -> anyhow::Result<rcgen::Certificate> {
        params.serial_number = Some(SerialNumber::from_slice(&random_serial()?));
        params
            .signed_by(leaf_key, &self.issuer)
            .context("signing a leaf certificate with the CA key")
    }

    fn load(cert_path: &Path, key_path: &Path) -> anyhow::Result<Self> {
        let key = read_key(key_path)?;
        let cert_pem = fs::read_to_string(cert_path)
            .with_context(|| format!("reading CA certificate {}", cert_path.display()))?;
        let cert_der = pem_certificate_der(&cert_pem).with_context(|| {
            format!(
                "CA certificate {} holds no valid PEM CERTIFICATE block",
                cert_path.display()
            )
        })?;
        // A mismatched pair would mint leaves no client can verify.
        if !contains(&cert_der, key.public_key_raw()) {
            bail!(
                "CA key {} does not belong to CA certificate {}",
                key_path.display(),
                cert_path.display()
            );
        }
        let issuer = Issuer::from_ca_cert_pem(&cert_pem, key)
            .with_context(|| format!("parsing CA certificate {}", cert_path.display()))?;
        Ok(Self {
            cert_pem,
            cert_der,
            issuer,
        })
    }

    /// Self-signs a new CA certificate for `key` and writes it.
    fn issue(key: KeyPair, cert_path: &Path) -> anyhow::Result<Self> {
        let params = ca_params(OffsetDateTime::now_utc(), random_serial()?)?;
        let cert = params
            .self_signed(&key)
            .context("self-signing the CA certificate")?;
        let cert_pem = cert.pem();
        write_atomic(cert_path, cert_pem.as_bytes(), CERT_MODE)?;
        Ok(Self {
            cert_pem,
            cert_der: cert.der().to_vec(),
            issuer: Issuer::new(params, key),
        })
    }
}

/// Parameters of the CA certificate issued at `now`.
fn ca_params(now: OffsetDateTime, serial: Vec<u8>) -> anyhow::Result<CertificateParams> {
    let now = now.replace_nanosecond(0).unwrap_or(now);
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, CA_COMMON_NAME);
    name.push(DnType::OrganizationName, CA_ORGANIZATION);

    let mut params = CertificateParams::default();
    params.distinguished_name = name;
    // pathlen 0: this CA signs leaves only, never another CA.
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = now
        .checked_sub(CA_BACKDATE)
        .context("CA validity start is out of range")?;
    params.not_after = now
        .checked_add(CA_LIFETIME)
        .context("CA validity end is out of range")?;
    params.serial_number = Some(SerialNumber::from_slice(&serial));
    Ok(params)
}

/// 128 random bits, positive and without a leading zero byte. A fresh
/// serial per issuance: clients reject two certificates from one issuer
/// with the same serial.
fn random_serial() -> anyhow::Result<Vec<u8>> {
    let mut serial = vec![0u8; 16];
    File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut serial))
        .context("reading /dev/urandom for a certificate serial")?;
    serial[0] = (serial[0] & 0x7f) | 0x40;
    Ok(serial)
}

/// Reads and parses a private key, first tightening a loose mode.
fn read_key(path: &Path) -> anyhow::Result<KeyPair> {
    let meta =
        fs::metadata(path).with_context(|| format!("inspecting CA key {}", path.display()))?;
    if !meta.is_file() {
        bail!("CA key {} is not a regular file", path.display());
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode != KEY_MODE {
        log::warn!(
            "CA key {} had mode {mode:04o}; setting it to {KEY_MODE:04o}",
            path.display()
        );
        fs::set_permissions(path, fs::Permissions::from_mode(KEY_MODE))
            .with_context(|| format!("setting mode of CA key {}", path.display()))?;
    }
    let pem =
        fs::read_to_string(path).with_context(|| format!("reading CA key {}", path.display()))?;
    KeyPair::from_pem(&pem).with_context(|| format!("parsing CA key {}", path.display()))
}

/// Creates the CA directory 0700 if missing; removes group/other write
/// from an existing one, since whoever can write it can swap the key.
fn prepare_private_dir(dir: &Path) -> anyhow::Result<()> {
    DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(dir)
        .with_context(|| format!("creating CA directory {}", dir.display()))?;
    let mode = fs::metadata(dir)
        .with_context(|| format!("inspecting CA directory {}", dir.display()))?
        .permissions()
        .mode()
        & 0o7777;
    if mode & 0o022 != 0 {
        let tightened = mode & !0o022;
        log::warn!(
            "CA directory {} was writable by other users (mode {mode:04o}); setting {tightened:04o}",
            dir.display()
        );
        fs::set_permissions(dir, fs::Permissions::from_mode(tightened))
            .with_context(|| format!("setting mode of CA directory {}", dir.display()))?;
    }
    Ok(())
}

/// Writes the CA certificate after the system roots into `out` (mode 0644,
/// missing parent directories 0755), atomically. Uses the first existing
/// bundle in `system_roots`; with none, the bundle holds only the CA.
pub fn write_trust_bundle(
    ca_cert_pem: &str,
    system_roots: &[PathBuf],
    out: &Path,
) -> anyhow::Result<()> {
    if pem_certificate_der(ca_cert_pem).is_none() {
        bail!(
            "the CA certificate given for trust bundle {} is not PEM",
            out.display()
        );
    }
    let mut roots = None;
    for candidate in system_roots {
        if exists(candidate)? {
            let text = fs::read_to_string(candidate)
                .with_context(|| format!("reading system root bundle {}", candidate.display()))?;
            roots = Some(text);
            break;
        }
    }
    let bundle = match roots {
        Some(roots) => bundle_text(&roots, ca_cert_pem),
        None => {
            log::warn!(
                "no system root bundle found (tried {}); {} trusts only the Portcullis CA",
                system_roots
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
                out.display()
            );
            bundle_text("", ca_cert_pem)
        }
    };
    let parent = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .with_context(|| format!("trust bundle path {} has no directory", out.display()))?;
    create_public_dirs(parent)?;
    warn_if_not_traversable(parent);
    write_atomic(out, bundle.as_bytes(), BUNDLE_MODE)
}

/// System roots, then the CA, each ending in a newline. The CA is not
/// appended twice if the roots already carry it (out == system bundle).
fn bundle_text(roots: &str, ca_cert_pem: &str) -> String {
    let ca = ca_cert_pem.trim();
    let mut out = String::with_capacity(roots.len() + ca.len() + 2);
    out.push_str(roots);
    if !out.is_empty() && !out.ends_with('\n') {
        out.push('\n');
    }
    if !roots.contains(ca) {
        out.push_str(ca);
        out.push('\n');
    }
    out
}

/// Creates the missing directories of `path`, each with mode 0755 set
/// explicitly (a restrictive umask must not hide the bundle).
fn create_public_dirs(path: &Path) -> anyhow::Result<()> {
    let mut missing = Vec::new();
    let mut current = Some(path);
    while let Some(dir) = current.filter(|d| !d.as_os_str().is_empty()) {
        if exists(dir)? {
            break;
        }
        missing.push(dir);
        current = dir.parent();
    }
    for dir in missing.into_iter().rev() {
        match DirBuilder::new().mode(BUNDLE_DIR_MODE).create(dir) {
            Ok(()) => fs::set_permissions(dir, fs::Permissions::from_mode(BUNDLE_DIR_MODE))
                .with_context(|| format!("setting mode of {}", dir.display()))?,
            // Created concurrently by someone else: theirs to configure.
            Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
            Err(e) => {
                return Err(e).with_context(|| format!("creating directory {}", dir.display()));
            }
        }
    }
    Ok(())
}

/// Sandboxed users need search permission on every ancestor directory.
fn warn_if_not_traversable(dir: &Path) {
    for ancestor in dir.ancestors() {
        if let Ok(meta) = fs::metadata(ancestor)
            && meta.permissions().mode() & 0o001 == 0
        {
            log::warn!(
                "{} is not searchable by other users; sandboxed processes may not reach \
                 the trust bundle",
                ancestor.display()
            );
            return;
        }
    }
}

fn exists(path: &Path) -> anyhow::Result<bool> {
    path.try_exists()
        .with_context(|| format!("checking whether {} exists", path.display()))
}

/// Writes `contents` to `path` via a temporary file in the same directory:
/// created with `mode` (never wider, even briefly), fsynced, renamed.
fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> anyhow::Result<()> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let dir = path
        .parent()
        .with_context(|| format!("{} has no parent directory", path.display()))?;
    let name = path
        .file_name()
        .with_context(|| format!("{} has no file name", path.display()))?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}-{}",
        name.to_string_lossy(),
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let result = (|| -> std::io::Result<()> {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        // The umask may have narrowed `mode`; set it exactly.
        file.set_permissions(fs::Permissions::from_mode(mode))?;
        file.write_all(contents)?;
        file.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp);
        return Err(e).with_context(|| format!("writing {}", path.display()));
    }
    // Persist the rename. Some filesystems refuse fsync on directories;
    // the file itself is already durable, so this is best effort.
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// DER of the first `CERTIFICATE` block in `pem`.
fn pem_certificate_der(pem: &str) -> Option<Vec<u8>> {
    let start = pem.find(PEM_CERT_BEGIN)? + PEM_CERT_BEGIN.len();
    let len = pem[start..].find(PEM_CERT_END)?;
    let der = base64_decode(&pem[start..start + len])?;
    (!der.is_empty()).then_some(der)
}

/// Standard base64 with padding; whitespace is ignored.
fn base64_decode(text: &str) -> Option<Vec<u8>> {
    fn value(c: u8) -> Option<u32> {
        Some(u32::from(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        }))
    }
    let symbols: Vec<u8> = text.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    if !symbols.len().is_multiple_of(4) {
        return None;
    }
    let mut out = Vec::with_capacity(symbols.len() / 4 * 3);
    let chunks = symbols.len() / 4;
    for (i, chunk) in symbols.chunks(4).enumerate() {
        let pad = chunk.iter().rev().take_while(|&&b| b == b'=').count();
        // Padding only at the very end, at most two.
        if pad > 2 || (pad > 0 && i + 1 != chunks) {
            return None;
        }
        let mut n = 0u32;
        for &b in &chunk[..4 - pad] {
            n = (n << 6) | value(b)?;
        }
        n <<= 6 * pad as u32;
        let bytes = n.to_be_bytes();
        out.extend_from_slice(&bytes[1..4 - pad]);
    }
    Some(out)
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn base64_decodes_standard_text() {
        assert_eq!(base64_decode("").unwrap(), b"");
        assert_eq!(base64_decode("Zg==").unwrap(), b"f");
        assert_eq!(base64_decode("Zm8=").unwrap(), b"fo");
        assert_eq!(base64_decode("Zm9v").unwrap(), b"foo");
        assert_eq!(base64_decode("Zm9v\nYmFy\n").unwrap(), b"foobar");
        assert!(base64_decode("Zm9").is_none());
        assert!(base64_decode("Zg==Zm9v").is_none());
        assert!(base64_decode("Z===").is_none());
        assert!(base64_decode("Zm9*").is_none());
    }

    #[test]
    fn ca_params_are_a_constrained_ca() {
        let now = OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap();
        let p = ca_params(now, vec![0x41; 16]).unwrap();
        assert_eq!(p.is_ca, IsCa::Ca(BasicConstraints::Constrained(0)));
        assert_eq!(
            p.key_usages,
            [
                KeyUsagePurpose::KeyCertSign,
                KeyUsagePurpose::CrlSign,
                KeyUsagePurpose::DigitalSignature
            ]
        );
        assert_eq!(p.not_before, now - Duration::days(1));
        assert_eq!(p.not_after, now + Duration::days(3653));
        let names: Vec<_> = p.distinguished_name.iter().collect();
        assert_eq!(names.len(), 2);
    }

    #[test]
    fn create_then_reload_yields_same_ca() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("state/ca");
        let created = CertificateAuthority::load_or_create(&dir).unwrap();
        assert!(created.cert_pem().starts_with(PEM_CERT_BEGIN));
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&dir.join(CA_KEY_FILE)), 0o600);
        assert_eq!(mode(&dir.join(CA_CERT_FILE)), 0o644);

        let reloaded = CertificateAuthority::load_or_create(&dir).unwrap();
        assert_eq!(created.cert_pem(), reloaded.cert_pem());
        assert_eq!(created.cert_der(), reloaded.cert_der());
        assert_eq!(
            pem_certificate_der(reloaded.cert_pem()).unwrap(),
            reloaded.cert_der()
        );
        // No temporary files are left behind.
        let names: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
        // The reloaded issuer can sign a leaf.
        let leaf_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let leaf = CertificateParams::new(vec!["example.com".to_string()])
            .unwrap()
            .signed_by(&leaf_key, &reloaded.issuer)
            .unwrap();
        assert!(!leaf.der().is_empty());
        // Debug never prints key material.
        let debug = format!("{reloaded:?}");
        assert!(!debug.contains("PRIVATE"));
    }

    #[test]
    fn loose_key_mode_is_fixed() {
        let tmp = tempfile::tempdir().unwrap();
        CertificateAuthority::load_or_create(tmp.path()).unwrap();
        let key = tmp.path().join(CA_KEY_FILE);
        fs::set_permissions(&key, fs::Permissions::from_mode(0o644)).unwrap();
        CertificateAuthority::load_or_create(tmp.path()).unwrap();
        assert_eq!(mode(&key), 0o600);
    }

    #[test]
    fn world_writable_dir_is_tightened() {
        let tmp = tempfile::tempdir().unwrap();
        fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o777)).unwrap();
        CertificateAuthority::load_or_create(tmp.path()).unwrap();
        assert_eq!(mode(tmp.path()), 0o755);
    }

    #[test]
    fn corrupt_key_error_names_the_file() {
        let tmp = tempfile::tempdir().unwrap();
        CertificateAuthority::load_or_create(tmp.path()).unwrap();
        let key = tmp.path().join(CA_KEY_FILE);
        fs::write(
            &key,
            "-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n",
        )
        .unwrap();
        let err = CertificateAuthority::load_or_create(tmp.path()).unwrap_err();
        let text = format!("{err:#}");
        assert!(text.contains(&key.display().to_string()), "{text}");
        assert!(text.contains("parsing CA key"), "{text}");
    }

    #[test]
    fn corrupt_cert_error_names_the_file() {
        let tmp = tempfile::tempdir().unwrap();
        CertificateAuthority::load_or_create(tmp.path()).unwrap();
        let cert = tmp.path().join(CA_CERT_FILE);
        fs::write(&cert, "garbage").unwrap();
        let err = CertificateAuthority::load_or_create(tmp.path()).unwrap_err();
        let text = format!("{err:#}");
        assert!(text.contains(&cert.display().to_string()), "{text}");
    }

    #[test]
    fn mismatched_pair_is_rejected() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        CertificateAuthority::load_or_create(a.path()).unwrap();
        CertificateAuthority::load_or_create(b.path()).unwrap();
        fs::copy(b.path().join(CA_KEY_FILE), a.path().join(CA_KEY_FILE)).unwrap();
        let err = CertificateAuthority::load_or_create(a.path()).unwrap_err();
        assert!(format!("{err:#}").contains("does not belong"), "{err:#}");
    }

    #[test]
    fn key_without_cert_is_reissued_with_same_key() {
        let tmp = tempfile::tempdir().unwrap();
        let first = CertificateAuthority::load_or_create(tmp.path()).unwrap();
        let key_before = fs::read(tmp.path().join(CA_KEY_FILE)).unwrap();
        fs::remove_file(tmp.path().join(CA_CERT_FILE)).unwrap();
        let second = CertificateAuthority::load_or_create(tmp.path()).unwrap();
        assert_ne!(first.cert_pem(), second.cert_pem());
        assert_eq!(fs::read(tmp.path().join(CA_KEY_FILE)).unwrap(), key_before);
        // And it reloads cleanly.
        let third = CertificateAuthority::load_or_create(tmp.path()).unwrap();
        assert_eq!(second.cert_pem(), third.cert_pem());
    }

    #[test]
    fn cert_without_key_is_an_error() {
        let tmp = tempfile::tempdir().unwrap();
        CertificateAuthority::load_or_create(tmp.path()).unwrap();
        fs::remove_file(tmp.path().join(CA_KEY_FILE)).unwrap();
        let err = CertificateAuthority::load_or_create(tmp.path()).unwrap_err();
        assert!(format!("{err}").contains("refusing to replace"), "{err}");
    }

    #[test]
    fn bundle_holds_system_roots_then_ca() {
        let tmp = tempfile::tempdir().unwrap();
        let ca = CertificateAuthority::load_or_create(&tmp.path().join("ca")).unwrap();
        let roots = tmp.path().join("roots.pem");
        fs::write(
            &roots,
            "-----BEGIN CERTIFICATE-----\nSYSTEM\n-----END CERTIFICATE-----",
        )
        .unwrap();
        let candidates = vec![tmp.path().join("missing.pem"), roots];
        let out = tmp.path().join("run/portcullis/trust/bundle.pem");
        write_trust_bundle(ca.cert_pem(), &candidates, &out).unwrap();

        let text = fs::read_to_string(&out).unwrap();
        assert!(
            text.starts_with("-----BEGIN CERTIFICATE-----\nSYSTEM\n-----END CERTIFICATE-----\n")
        );
        assert!(text.ends_with(&format!("{}\n", ca.cert_pem().trim())));
        assert_eq!(mode(&out), 0o644);
        assert_eq!(mode(&tmp.path().join("run")), 0o755);
        assert_eq!(mode(&tmp.path().join("run/portcullis/trust")), 0o755);

        // Rewriting is idempotent.
        write_trust_bundle(ca.cert_pem(), &candidates, &out).unwrap();
        assert_eq!(fs::read_to_string(&out).unwrap(), text);
    }

    #[test]
    fn bundle_without_system_roots_holds_only_ca() {
        let tmp = tempfile::tempdir().unwrap();
        let ca = CertificateAuthority::load_or_create(tmp.path()).unwrap();
        let out = tmp.path().join("bundle.pem");
        write_trust_bundle(ca.cert_pem(), &[tmp.path().join("nope.pem")], &out).unwrap();
        assert_eq!(
            fs::read_to_string(&out).unwrap(),
            format!("{}\n", ca.cert_pem().trim())
        );
    }

    #[test]
    fn bundle_rejects_non_pem_ca() {
        let tmp = tempfile::tempdir().unwrap();
        let err = write_trust_bundle("nope", &[], &tmp.path().join("b.pem")).unwrap_err();
        assert!(format!("{err}").contains("not PEM"));
    }

    #[test]
    fn bundle_text_does_not_duplicate_ca() {
        let ca = "-----BEGIN CERTIFICATE-----\nQ0E=\n-----END CERTIFICATE-----\n";
        assert_eq!(bundle_text("", ca), ca);
        assert_eq!(bundle_text("R", ca), format!("R\n{ca}"));
        let both = format!("R\n{ca}");
        assert_eq!(bundle_text(&both, ca), both);
    }

    #[test]
    fn system_candidates_are_absolute() {
        assert!(SYSTEM_ROOT_CANDIDATES.iter().all(|p| p.starts_with('/')));
    }
}
