//! TLS to upstream servers, on behalf of sandboxed clients whose TLS the
//! proxy terminated.
//!
//! Upstream certificates are always verified: against the system root
//! bundle plus any extra roots from configuration (tests use those to
//! trust a local test CA). There is no way to turn verification off.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use rustls::{ClientConfig, RootCertStore};

use super::ca::SYSTEM_ROOT_CANDIDATES;

/// The roots upstream certificates are verified against, with where they
/// came from for diagnostics.
#[derive(Clone)]
pub struct TrustRoots {
    store: RootCertStore,
    system_bundle: Option<PathBuf>,
    system_roots: usize,
    system_skipped: usize,
    extra_roots: usize,
}

impl fmt::Debug for TrustRoots {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TrustRoots")
            .field("system_bundle", &self.system_bundle)
            .field("system_roots", &self.system_roots)
            .field("system_skipped", &self.system_skipped)
            .field("extra_roots", &self.extra_roots)
            .finish_non_exhaustive()
    }
}

impl TrustRoots {
    /// The first existing bundle of [`SYSTEM_ROOT_CANDIDATES`] plus every
    /// certificate in each of `extra_roots` (PEM files).
    pub fn load(extra_roots: &[PathBuf]) -> anyhow::Result<Self> {
        let candidates: Vec<PathBuf> = SYSTEM_ROOT_CANDIDATES.iter().map(PathBuf::from).collect();
        Self::load_with_system(&candidates, extra_roots)
    }

    /// Like [`TrustRoots::load`], with the system bundle looked for at
    /// `system_candidates` instead.
    ///
    /// Certificates of the system bundle that cannot serve as trust
    /// anchors are skipped (and counted); an extra root that cannot is an
    /// error, as is a file without certificates. Errors name the file. No
    /// roots at all is an error too: nothing upstream could be verified.
    pub fn load_with_system(
        system_candidates: &[PathBuf],
        extra_roots: &[PathBuf],
    ) -> anyhow::Result<Self> {
        let mut store = RootCertStore::empty();
        let mut system_bundle = None;
        let (mut system_roots, mut system_skipped) = (0, 0);
        for candidate in system_candidates {
            let exists = candidate
                .try_exists()
                .with_context(|| format!("checking whether {} exists", candidate.display()))?;
            if exists {
                let certs = read_pem_certs(candidate, "system root bundle")?;
                (system_roots, system_skipped) = store.add_parsable_certificates(certs);
                system_bundle = Some(candidate.clone());
                break;
            }
        }
        match &system_bundle {
            Some(path) if system_skipped > 0 => log::warn!(
                "skipped {system_skipped} unusable certificates of system root bundle {}",
                path.display()
            ),
            Some(_) => {}
            None => log::warn!(
                "no system root bundle found (tried {}); upstream TLS trusts only \
                 configured extra roots",
                display_paths(system_candidates)
            ),
        }

        let mut extra = 0;
        for path in extra_roots {
            let certs = read_pem_certs(path, "extra root file")?;
            if certs.is_empty() {
                bail!(
                    "extra root file {} holds no PEM certificate",
                    path.display()
                );
            }
            for (i, cert) in certs.into_iter().enumerate() {
                store.add(cert).with_context(|| {
                    format!(
                        "certificate {} of extra root file {} is not a usable trust anchor",
                        i + 1,
                        path.display()
                    )
                })?;
                extra += 1;
            }
        }
        if store.is_empty() {
            bail!(
                "no trust roots for upstream TLS: no system root bundle (tried {}) and no \
                 extra roots configured",
                display_paths(system_candidates)
            );
        }
        Ok(Self {
            store,
            system_bundle,
            system_roots,
            system_skipped,
            extra_roots: extra,
        })
    }

    /// How many trust anchors there are in all.
    pub fn len(&self) -> usize {
        self.store.len()
    }

    /// Whether there are none (never, for a loaded value).
    pub fn is_empty(&self) -> bool {
        self.store.is_empty()
    }

    /// The system bundle used, if one was found.
    pub fn system_bundle(&self) -> Option<&Path> {
        self.system_bundle.as_deref()
    }

    /// Anchors from the system bundle.
    pub fn system_roots(&self) -> usize {
        self.system_roots
    }

    /// Certificates of the system bundle skipped as unusable.
    pub fn system_skipped(&self) -> usize {
        self.system_skipped
    }

    /// Anchors from the extra root files.
    pub fn extra_roots(&self) -> usize {
        self.extra_roots
    }
}

impl fmt::Display for TrustRoots {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.system_bundle {
            Some(path) => write!(
                f,
                "{} system roots from {}",
                self.system_roots,
                path.display()
            )?,
            None => write!(f, "no system roots")?,
        }
        write!(f, ", {} extra roots", self.extra_roots)
    }
}

/// A client configuration for upstream TLS that verifies servers against
/// the system roots plus `extra_roots` (PEM files), offering `alpn` (e.g.
/// `[b"h2", b"http/1.1"]`; empty: no ALPN).
pub fn client_config(extra_roots: &[PathBuf], alpn: &[&[u8]]) -> anyhow::Result<Arc<ClientConfig>> {
    client_config_with_roots(&TrustRoots::load(extra_roots)?, alpn)
}

/// Like [`client_config`], with roots loaded once beforehand (say, one
/// load for the configurations of several ALPN lists).
pub fn client_config_with_roots(
    roots: &TrustRoots,
    alpn: &[&[u8]],
) -> anyhow::Result<Arc<ClientConfig>> {
    for protocol in alpn {
        if !(1..=255).contains(&protocol.len()) {
            bail!(
                "invalid ALPN protocol list: protocol names are 1 to 255 bytes, got {}",
                protocol.len()
            );
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("choosing TLS protocol versions for upstream TLS")?
        .with_root_certificates(roots.store.clone())
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// Every CERTIFICATE block of the PEM file at `path`; `what` names the
/// file's role in errors.
fn read_pem_certs(path: &Path, what: &str) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .with_context(|| format!("reading {what} {}", path.display()))
}

fn display_paths(paths: &[PathBuf]) -> String {
    paths
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::fs;

    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType,
        ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose,
    };
    use rustls::ServerConfig;
    use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};
    use tokio_rustls::{TlsAcceptor, TlsConnector};

    const UPSTREAM: &str = "upstream.example.test";

    /// Distinct CA names: a client holding an anchor of the same name
    /// would report `BadSignature` rather than `UnknownIssuer`.
    fn unique() -> u64 {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }

    /// A throwaway CA, not the Portcullis one, and a server leaf it signed.
    struct TestPki {
        ca_pem: String,
        server: Arc<ServerConfig>,
    }

    fn test_ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, format!("{name} {}", unique()));
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
    }

    fn test_pki(alpn: &[&[u8]]) -> TestPki {
        let ca = test_ca("Upstream Test CA");
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec![UPSTREAM.to_string()]).unwrap();
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let leaf = params.signed_by(&key, &ca).unwrap();
        let mut server =
            ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_no_client_auth()
                .with_single_cert(
                    vec![leaf.der().clone()],
                    PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
                )
                .unwrap();
        server.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        TestPki {
            ca_pem: ca.pem(),
            server: Arc::new(server),
        }
    }

    /// Handshake over localhost TCP; the negotiated ALPN protocol.
    async fn connect(
        server: Arc<ServerConfig>,
        client: Arc<ClientConfig>,
    ) -> Result<Option<Vec<u8>>, String> {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server_task = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let mut tls = TlsAcceptor::from(server).accept(tcp).await?;
            tls.write_all(b"ok").await?;
            tls.shutdown().await
        });
        let tcp = TcpStream::connect(addr).await.unwrap();
        let name = ServerName::try_from(UPSTREAM).unwrap();
        let result = async {
            let mut tls = TlsConnector::from(client).connect(name, tcp).await?;
            let mut buf = [0u8; 2];
            tls.read_exact(&mut buf).await?;
            assert_eq!(&buf, b"ok");
            Ok::<_, std::io::Error>(tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec))
        }
        .await
        .map_err(|e| e.to_string());
        let _ = server_task.await.unwrap();
        result
    }

    /// A stand-in system bundle holding an unrelated CA, so the tests do
    /// not depend on the machine's bundle.
    fn fake_system_bundle(dir: &Path) -> PathBuf {
        let path = dir.join("system.pem");
        fs::write(&path, test_ca("Unrelated Test CA").pem()).unwrap();
        path
    }

    #[tokio::test]
    async fn unknown_ca_is_rejected_unless_given_as_extra_root() {
        let tmp = tempfile::tempdir().unwrap();
        let system = vec![
            tmp.path().join("missing.pem"),
            fake_system_bundle(tmp.path()),
        ];
        let pki = test_pki(&[b"h2", b"http/1.1"]);

        let roots = TrustRoots::load_with_system(&system, &[]).unwrap();
        assert_eq!((roots.system_roots(), roots.extra_roots()), (1, 0));
        assert_eq!(roots.system_bundle(), Some(system[1].as_path()));
        let client = client_config_with_roots(&roots, &[b"h2", b"http/1.1"]).unwrap();
        let err = connect(pki.server.clone(), client).await.unwrap_err();
        assert!(
            err.contains("invalid peer certificate: UnknownIssuer"),
            "{err}"
        );

        let extra = tmp.path().join("test-ca.pem");
        fs::write(&extra, &pki.ca_pem).unwrap();
        let roots = TrustRoots::load_with_system(&system, std::slice::from_ref(&extra)).unwrap();
        assert_eq!((roots.len(), roots.extra_roots()), (2, 1));
        let client = client_config_with_roots(&roots, &[b"h2", b"http/1.1"]).unwrap();
        let alpn = connect(pki.server.clone(), client).await.unwrap();
        assert_eq!(alpn.as_deref(), Some(&b"h2"[..]));

        let client = client_config_with_roots(&roots, &[b"http/1.1"]).unwrap();
        let alpn = connect(pki.server, client).await.unwrap();
        assert_eq!(alpn.as_deref(), Some(&b"http/1.1"[..]));
    }

    #[tokio::test]
    async fn public_client_config_verifies_against_system_and_extra_roots() {
        let tmp = tempfile::tempdir().unwrap();
        let pki = test_pki(&[]);
        let extra = tmp.path().join("test-ca.pem");
        fs::write(&extra, &pki.ca_pem).unwrap();
        let has_system_bundle = SYSTEM_ROOT_CANDIDATES.iter().any(|p| Path::new(p).exists());

        match client_config(&[], &[]) {
            Ok(client) => {
                let err = connect(pki.server.clone(), client).await.unwrap_err();
                assert!(
                    err.contains("invalid peer certificate: UnknownIssuer"),
                    "{err}"
                );
            }
            // Only where the machine has no system bundle.
            Err(e) => assert!(!has_system_bundle, "{e:#}"),
        }
        let client = client_config(std::slice::from_ref(&extra), &[]).unwrap();
        assert_eq!(connect(pki.server, client).await.unwrap(), None);
        if has_system_bundle {
            let roots = TrustRoots::load(&[extra]).unwrap();
            assert!(roots.system_roots() > 0, "{roots:?}");
            assert_eq!(roots.extra_roots(), 1);
            assert!(roots.to_string().contains("system roots from /"), "{roots}");
        }
    }

    #[test]
    fn missing_extra_root_file_is_named() {
        let tmp = tempfile::tempdir().unwrap();
        let system = vec![fake_system_bundle(tmp.path())];
        let missing = tmp.path().join("no-such-ca.pem");
        let err =
            TrustRoots::load_with_system(&system, std::slice::from_ref(&missing)).unwrap_err();
        let text = format!("{err:#}");
        assert!(text.contains(&missing.display().to_string()), "{text}");
        let err = client_config(std::slice::from_ref(&missing), &[]).unwrap_err();
        assert!(format!("{err:#}").contains("no-such-ca.pem"), "{err:#}");
    }

    #[test]
    fn extra_root_without_certificates_is_named() {
        let tmp = tempfile::tempdir().unwrap();
        let system = vec![fake_system_bundle(tmp.path())];
        let empty = tmp.path().join("empty.pem");
        fs::write(&empty, "not a certificate\n").unwrap();
        let err = TrustRoots::load_with_system(&system, std::slice::from_ref(&empty)).unwrap_err();
        let text = format!("{err:#}");
        assert!(text.contains(&empty.display().to_string()), "{text}");
        assert!(text.contains("no PEM certificate"), "{text}");

        let corrupt = tmp.path().join("corrupt.pem");
        fs::write(
            &corrupt,
            "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let err =
            TrustRoots::load_with_system(&system, std::slice::from_ref(&corrupt)).unwrap_err();
        let text = format!("{err:#}");
        assert!(text.contains(&corrupt.display().to_string()), "{text}");

        let garbage = tmp.path().join("garbage.pem");
        fs::write(
            &garbage,
            "-----BEGIN CERTIFICATE-----\nZm9vYmFy\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let err =
            TrustRoots::load_with_system(&system, std::slice::from_ref(&garbage)).unwrap_err();
        let text = format!("{err:#}");
        assert!(text.contains("certificate 1 of extra root file"), "{text}");
        assert!(text.contains(&garbage.display().to_string()), "{text}");
    }

    #[test]
    fn no_roots_at_all_is_an_error() {
        let tmp = tempfile::tempdir().unwrap();
        let err = TrustRoots::load_with_system(&[tmp.path().join("none.pem")], &[]).unwrap_err();
        assert!(err.to_string().contains("no trust roots"), "{err}");
    }

    #[test]
    fn extra_roots_alone_suffice() {
        let tmp = tempfile::tempdir().unwrap();
        let extra = tmp.path().join("two.pem");
        fs::write(
            &extra,
            format!(
                "{}{}",
                test_ca("Unrelated Test CA").pem(),
                test_ca("Unrelated Test CA").pem()
            ),
        )
        .unwrap();
        let roots = TrustRoots::load_with_system(&[], &[extra]).unwrap();
        assert_eq!(roots.system_bundle(), None);
        assert_eq!((roots.len(), roots.extra_roots()), (2, 2));
        assert_eq!(roots.to_string(), "no system roots, 2 extra roots");
    }

    #[test]
    fn bad_alpn_is_an_error() {
        let tmp = tempfile::tempdir().unwrap();
        let roots = TrustRoots::load_with_system(&[fake_system_bundle(tmp.path())], &[]).unwrap();
        assert!(client_config_with_roots(&roots, &[b""]).is_err());
    }
}
