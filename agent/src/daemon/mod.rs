//! `portcullis agent`: the long-running daemon. It owns the datapath, the
//! sandboxes, the proxy and DNS listeners and the control socket.

pub mod drafts;
mod events;
pub mod policies;
pub mod providers;
pub mod sandboxes;

use std::{
    net::{Ipv4Addr, Ipv6Addr, SocketAddr},
    path::PathBuf,
    sync::{
        Arc, Mutex, RwLock,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use aya::maps::{MapData, RingBuf};
use portcullis_common::DatapathConfig;
use tokio::net::{TcpListener, UdpSocket};

use crate::{
    audit::AuditLog,
    config::AgentConfig,
    datapath::{self, Datapath, PinLayout},
    dns::{
        DnsResponder, HostsThenSystem, SyntheticAnswers,
        hosts::HostsTable,
        synthetic::{PoolConfig, SandboxPools},
    },
    identity::ProcessTable,
    sandbox::cgroup,
    store::Store,
    tls::CertificateAuthority,
};

pub use sandboxes::{SandboxIndex, SandboxView};

/// Counters the status command reports.
#[derive(Default)]
pub struct Stats {
    pub connections_total: AtomicU64,
    pub connections_active: AtomicU64,
    pub connections_denied: AtomicU64,
    pub lookup_misses: AtomicU64,
    pub kernel_denials_seen: AtomicU64,
    /// `POST /v1/proposals` refused because a sandbox sent too many.
    pub proposals_rate_limited: AtomicU64,
}

impl Stats {
    pub fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// State shared by every task of the daemon.
pub struct Agent {
    pub config: AgentConfig,
    pub cgroup_root: PathBuf,
    pub datapath: Mutex<Datapath>,
    pub processes: Mutex<ProcessTable>,
    process_ring: Mutex<RingBuf<MapData>>,
    pub sandboxes: RwLock<SandboxIndex>,
    /// Synthetic DNS answers, name <-> address, one pool per sandbox.
    pub pools: Arc<SandboxPools>,
    /// Upstream resolution, after a policy allowed a connection.
    pub resolver: Arc<HostsThenSystem>,
    pub stats: Stats,
    pub audit: AuditLog,
    pub started: Instant,
    pub proxy_addrs: Vec<SocketAddr>,
    pub dns_addrs: Vec<SocketAddr>,
    /// Leaf certificates for TLS termination; None if the CA is unusable,
    /// in which case TLS to inspected endpoints is refused.
    pub leaves: Option<Arc<crate::tls::leaf::LeafCache>>,
    /// Upstream TLS client configs by the ALPN list they offer.
    upstream_tls: std::collections::HashMap<Vec<Vec<u8>>, Arc<rustls::ClientConfig>>,
    /// Sandboxes, policy revisions, chunks and decisions, durably.
    pub store: Arc<dyn Store>,
    /// Serialises every change to sandboxes, policies and chunks, so each
    /// operation sees what the previous one committed.
    pub writer: tokio::sync::Mutex<()>,
    /// Chunks as they are proposed and decided: `WatchDrafts`, `/wait`.
    pub drafts: tokio::sync::broadcast::Sender<drafts::DraftUpdate>,
    /// Providers and attachments; secrets live here in memory only.
    pub providers: RwLock<providers::ProviderCache>,
    /// Proposal budget per sandbox (`policy.local` flood control).
    pub proposal_limiter: Mutex<crate::local_api::rate::ProposalLimiter>,
}

/// Preconditions every privileged command shares, with errors that say
/// what to do.
pub fn require_root(what: &str) -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("{what} must run as root: it loads BPF programs and manages cgroups (try `sudo`)");
    }
    Ok(())
}

/// Descriptors the agent asks for. Each proxied connection holds two
/// sockets (a splice relay two pipes more), so the usual soft limit of
/// 1024 would cap the proxy at a few hundred connections.
const FD_LIMIT: u64 = 1 << 20;

/// Raises the descriptor limit to [`FD_LIMIT`] (root may raise the hard
/// limit, up to `fs.nr_open`), or at least the soft limit to the hard one.
fn raise_fd_limit() {
    let nr_open = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or(FD_LIMIT);
    let mut current = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut current) } != 0 {
        return;
    }
    let wanted = FD_LIMIT.min(nr_open).max(current.rlim_max);
    for max in [wanted, current.rlim_max] {
        let limit = libc::rlimit {
            rlim_cur: max,
            rlim_max: max,
        };
        // SAFETY: setrlimit reads the struct we pass.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } == 0 {
            log::debug!("descriptor limit {max}");
            return;
        }
    }
    log::warn!(
        "could not raise the descriptor limit from {}: the proxy may refuse connections \
         under load",
        current.rlim_cur
    );
}

/// Runs the daemon until SIGINT or SIGTERM.
pub async fn run(config: AgentConfig) -> Result<()> {
    require_root("`portcullis agent`")?;
    raise_fd_limit();
    let cgroup_root = cgroup::cgroup2_root()?;
    for dir in [&config.state_dir, &config.run_dir, &config.log_dir] {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let (audit, audit_task) = AuditLog::start(crate::audit::AuditConfig {
        dir: config.log_dir.clone(),
        keep_days: config.log_keep_days,
        queue: 65536,
    });

    // The CA and trust bundle exist before any sandbox runs, so a workload's
    // environment never changes under it.
    let ca = Arc::new(CertificateAuthority::load_or_create(&config.ca_dir())?);
    crate::tls::write_trust_bundle(
        ca.cert_pem(),
        &crate::tls::SYSTEM_ROOT_CANDIDATES
            .iter()
            .map(PathBuf::from)
            .collect::<Vec<_>>(),
        &config.trust_bundle(),
    )?;

    let leaves = match crate::tls::leaf::LeafCache::new(ca.clone()) {
        Ok(leaves) => Some(Arc::new(leaves)),
        Err(e) => {
            log::error!("TLS termination unavailable: {e}");
            None
        }
    };
    let roots = crate::tls::upstream::TrustRoots::load(&config.upstream_extra_roots)
        .context("loading upstream TLS roots (upstream_extra_roots)")?;
    log::info!("upstream TLS trusts {roots}");
    let mut upstream_tls = std::collections::HashMap::new();
    for alpn in [
        vec![b"h2".to_vec(), b"http/1.1".to_vec()],
        vec![b"http/1.1".to_vec()],
        vec![b"h2".to_vec()],
        vec![],
    ] {
        let refs: Vec<&[u8]> = alpn.iter().map(Vec::as_slice).collect();
        upstream_tls.insert(
            alpn.clone(),
            crate::tls::upstream::client_config_with_roots(&roots, &refs)?,
        );
    }

    crate::local_api::install_skill(&config.skill_dirs)?;

    datapath::tracefs::ensure_mounted()?;
    let fork_offset = datapath::tracefs::fork_child_pid_offset().unwrap_or_else(|e| {
        log::warn!("fork tracking disabled: {e:#}");
        0
    });
    let mut dp = Datapath::load(
        PinLayout::new(&config.bpffs_dir),
        config.bpf_object.as_deref(),
    )?;
    let logger = dp.take_logger();
    let (denial_ring, process_ring) = dp.take_rings()?;

    // Listeners before the kernel is told about them: a redirected connect
    // must find someone listening.
    let proxy_addrs = vec![
        SocketAddr::new(Ipv4Addr::LOCALHOST.into(), config.proxy_port),
        SocketAddr::new(Ipv6Addr::LOCALHOST.into(), config.proxy_port),
    ];
    let dns_addrs = vec![
        SocketAddr::new(Ipv4Addr::LOCALHOST.into(), config.dns_port),
        SocketAddr::new(Ipv6Addr::LOCALHOST.into(), config.dns_port),
    ];
    let mut tcp_listeners = Vec::new();
    for addr in &proxy_addrs {
        tcp_listeners.push(bind_tcp(*addr)?);
    }
    let mut udp_sockets = Vec::new();
    for addr in &dns_addrs {
        udp_sockets.push(UdpSocket::bind(addr).await.with_context(|| {
            format!("binding the DNS responder on {addr}: is another agent running?")
        })?);
    }

    dp.configure(DatapathConfig {
        proxy_ip4: u32::from_ne_bytes(config.proxy_ip4().octets()),
        proxy_ip6: ip6_words(config.proxy_ip6()),
        dns_ip4: u32::from_ne_bytes(Ipv4Addr::LOCALHOST.octets()),
        dns_ip6: ip6_words(Ipv6Addr::LOCALHOST),
        proxy_port: config.proxy_port,
        dns_port: config.dns_port,
        self_mark: config.self_mark,
        ready: 1,
        fork_child_pid_offset: fork_offset,
    })?;
    dp.attach_tracepoints()?;

    let mut hosts = HostsTable::default();
    if let Some(path) = &config.hosts_file {
        hosts = HostsTable::load(path).with_context(|| format!("hosts_file {}", path.display()))?;
        for w in hosts.warnings() {
            log::warn!("hosts_file {}: {w}", path.display());
        }
    }
    let pools = Arc::new(SandboxPools::new(
        PoolConfig {
            v4: config.dns_pool_v4,
            v6: config.dns_pool_v6,
            ttl: Duration::from_secs(u64::from(config.dns_ttl_seconds)),
            ..PoolConfig::default()
        },
        &[crate::deny::routes::HOST],
    )?);
    let resolver = Arc::new(HostsThenSystem::with_etc_hosts(hosts)?);
    let store = crate::store::SqliteStore::open(&config.state_dir).await?;
    let imported = crate::store::legacy::import_legacy(&store, &config.state_dir).await?;
    if imported > 0 {
        log::info!("imported {imported} sandbox(es) from the JSON state of an earlier version");
    }
    let provider_cache = providers::ProviderCache::load(&store, config.provider_rules).await?;
    let index = SandboxIndex::new(&config, &cgroup_root);
    let agent = Arc::new(Agent {
        config: config.clone(),
        cgroup_root,
        datapath: Mutex::new(dp),
        processes: Mutex::new(ProcessTable::new(65536)),
        process_ring: Mutex::new(process_ring),
        sandboxes: RwLock::new(index),
        pools: pools.clone(),
        resolver,
        stats: Stats::default(),
        audit: audit.clone(),
        started: Instant::now(),
        proxy_addrs: proxy_addrs.clone(),
        dns_addrs: dns_addrs.clone(),
        leaves,
        upstream_tls,
        store: Arc::new(store),
        writer: tokio::sync::Mutex::new(()),
        drafts: drafts::update_channel(),
        providers: RwLock::new(provider_cache),
        proposal_limiter: Mutex::default(),
    });
    // Re-attach sandboxes of a previous run: pinned links are kept as they
    // are; anything missing (a fresh bpffs after reboot) is attached again.
    sandboxes::restore(&agent).await?;

    let responder = Arc::new(DnsResponder::new(
        Arc::new(SyntheticAnswers(pools)),
        Duration::from_secs(u64::from(config.dns_ttl_seconds)),
    ));
    for socket in udp_sockets {
        let responder = responder.clone();
        tokio::spawn(async move {
            if let Err(e) = responder.serve(socket).await {
                log::error!("DNS responder stopped: {e}");
            }
        });
    }
    for listener in tcp_listeners {
        tokio::spawn(crate::proxy::serve(agent.clone(), listener));
    }
    events::spawn_readers(agent.clone(), denial_ring, logger)?;
    let control = crate::control::server::serve(agent.clone()).await?;

    std::fs::write(config.pid_file(), format!("{}\n", std::process::id()))?;
    agent
        .audit
        .log(crate::audit::AppLifecycle::started().into());
    // Tests and scripts wait for this line rather than sleeping.
    println!(
        "portcullis: ready (proxy {}, dns {}, control {})",
        proxy_addrs
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(" "),
        dns_addrs
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(" "),
        config.control_socket().display()
    );

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    log::info!(
        "stopping; sandbox programs stay attached and refuse connections until the agent returns"
    );
    agent
        .audit
        .log(crate::audit::AppLifecycle::stopped(None).into());
    control.abort();
    let _ = std::fs::remove_file(config.control_socket());
    let _ = std::fs::remove_file(config.pid_file());
    if let Err(e) = agent.audit.flush().await {
        log::warn!("audit log not flushed on stop: {e}");
    }
    drop(audit_task);
    Ok(())
}

fn bind_tcp(addr: SocketAddr) -> Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr).with_context(|| {
        format!("binding the transparent listener on {addr}: is another agent running?")
    })?;
    Ok(socket.listen(4096)?)
}

fn ip6_words(ip: Ipv6Addr) -> portcullis_common::Addr6 {
    let o = ip.octets();
    std::array::from_fn(|i| {
        u32::from_ne_bytes([o[i * 4], o[i * 4 + 1], o[i * 4 + 2], o[i * 4 + 3]])
    })
}

impl Agent {
    /// The provider cache, for reading.
    pub fn providers(&self) -> std::sync::RwLockReadGuard<'_, providers::ProviderCache> {
        self.providers.read().unwrap_or_else(|p| p.into_inner())
    }

    /// A live sandbox by name.
    pub fn sandbox(&self, name: &str) -> Option<SandboxView> {
        self.sandboxes
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .cloned()
    }

    /// Applies every process event queued so far. The proxy calls this
    /// before resolving a connection: the exec that preceded a connect is
    /// already in the ring by then, so attribution never races the reader.
    pub fn drain_process_events(&self) {
        let mut ring = self.process_ring.lock().unwrap_or_else(|p| p.into_inner());
        let mut table = self.processes.lock().unwrap_or_else(|p| p.into_inner());
        while let Some(item) = ring.next() {
            if let Some(event) = events::read_pod::<portcullis_common::ProcessEvent>(&item) {
                let exe_now = events::exe_if_current(&event);
                table.apply(&event, exe_now);
            }
        }
    }

    /// Who made a call the kernel recorded: the sandbox (by cgroup) and the
    /// process image at the time of the call. Shared by the proxy and the
    /// kernel-denial reader so both attribute the same way.
    pub fn attribute(
        &self,
        record: &portcullis_common::ConnectRecord,
    ) -> (
        Option<SandboxView>,
        Result<crate::identity::Identity, crate::identity::IdentityError>,
    ) {
        self.drain_process_events();
        let sandbox = self
            .sandboxes
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .find(record.cgroup_id, record.tgid)
            .cloned();
        let identity = self
            .processes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .resolve(
                record.tgid,
                record.boot_ns,
                sandbox.as_ref().map(|s| s.cgroup_rel.as_path()),
                &crate::identity::procfs::ProcFs::default(),
            );
        (sandbox, identity)
    }

    /// The upstream TLS client config offering `alpn`.
    pub fn upstream_tls(&self, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
        let key: Vec<Vec<u8>> = alpn.iter().map(|p| p.to_vec()).collect();
        self.upstream_tls
            .get(&key)
            .or_else(|| self.upstream_tls.get(&Vec::new()))
            .cloned()
            .expect("a config without ALPN is always built")
    }

    pub fn process_ring_fd(&self) -> std::os::fd::RawFd {
        use std::os::fd::AsRawFd;
        self.process_ring
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_raw_fd()
    }
}
