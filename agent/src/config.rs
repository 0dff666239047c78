//! Agent configuration: embedded defaults, optionally overridden by a YAML
//! file. Every command reads the same file, so the CLI finds the agent the
//! agent was told to be.

use std::{
    net::{Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
};

use anyhow::{Context, Result, bail};
use serde::Deserialize;

pub const DEFAULT_CONFIG_PATH: &str = "/etc/portcullis/agent.yaml";

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AgentConfig {
    /// Durable state: sandboxes, CA, policies.
    pub state_dir: PathBuf,
    /// Runtime files: control socket, pid file.
    pub run_dir: PathBuf,
    /// OCSF and shorthand logs.
    pub log_dir: PathBuf,
    /// How many daily log files of each kind to keep.
    pub log_keep_days: usize,
    /// Pins of maps and links, under a bpffs mount.
    pub bpffs_dir: PathBuf,
    /// Parent of the sandbox cgroups, relative to the cgroup2 mount.
    pub cgroup_parent: PathBuf,
    /// Transparent TCP listener port on 127.0.0.1 and ::1.
    pub proxy_port: u16,
    /// DNS responder port on 127.0.0.1 and ::1.
    pub dns_port: u16,
    /// SO_MARK of the agent's upstream sockets; the hooks let them through.
    pub self_mark: u32,
    /// Extra name -> address entries for the DNS responder and the proxy,
    /// in /etc/hosts format.
    pub hosts_file: Option<PathBuf>,
    /// User a workload runs as when `portcullis run` has no `--user`.
    pub default_user: String,
    /// A BPF object to load instead of the embedded one.
    pub bpf_object: Option<PathBuf>,
    /// Seconds a DNS answer stays valid.
    pub dns_ttl_seconds: u32,
    /// Prefixes the DNS responder hands synthetic addresses from. They must
    /// not be used by any real destination a sandbox may reach.
    pub dns_pool_v4: ipnet::Ipv4Net,
    pub dns_pool_v6: ipnet::Ipv6Net,
    /// How allowed TCP is relayed: `splice` (zero-copy) or `copy`.
    pub relay: crate::proxy::relay::RelayMode,
    /// PEM files of extra roots trusted for upstream TLS, beside the
    /// system roots. Verification is never off.
    pub upstream_extra_roots: Vec<PathBuf>,
    /// Where the policy advisor skill is installed for agents to read.
    pub skill_dirs: Vec<PathBuf>,
    /// An optional TCP listener for remote operators, mutual TLS only.
    pub control_tcp: Option<ControlTcp>,
    /// Whether an attached provider adds its profile's `_provider_<name>`
    /// rule to the sandbox's effective policy. With `false`, the user's
    /// policy alone decides who reaches the provider's hosts; credentials
    /// stay bound to them either way.
    pub provider_rules: bool,
    /// Seconds an HTTP/1.1 client of the L7 proxy has to send each request
    /// head, idle keep-alive time included: a slowloris client, or one that
    /// holds a connection without using it, is closed after it.
    pub http_head_seconds: u32,
    /// Seconds the L7 proxy waits for an upstream's response head once a
    /// request is sent; then the client gets 504 `upstream_timeout`.
    /// Bodies (streams, server-sent events) are not timed.
    pub upstream_response_seconds: u32,
}

/// `control_tcp`: where remote operators connect, and the certificates.
/// Every client must present a certificate signed by `client_ca`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ControlTcp {
    pub listen: std::net::SocketAddr,
    /// PEM certificate chain and private key of the listener.
    pub cert: PathBuf,
    pub key: PathBuf,
    /// PEM CA that operator certificates must chain to.
    pub client_ca: PathBuf,
}

impl Default for AgentConfig {
    fn default() -> Self {
        Self {
            state_dir: "/var/lib/portcullis".into(),
            run_dir: "/run/portcullis".into(),
            log_dir: "/var/log/portcullis".into(),
            log_keep_days: 14,
            bpffs_dir: "/sys/fs/bpf/portcullis".into(),
            cgroup_parent: "portcullis".into(),
            proxy_port: 15001,
            dns_port: 15053,
            self_mark: 0x0050_4355,
            hosts_file: None,
            default_user: "nobody".into(),
            bpf_object: None,
            dns_ttl_seconds: 30,
            dns_pool_v4: crate::dns::synthetic::PoolConfig::default().v4,
            dns_pool_v6: crate::dns::synthetic::PoolConfig::default().v6,
            relay: Default::default(),
            http_head_seconds: 60,
            // Long: a model API may think for minutes before its head.
            upstream_response_seconds: 300,
            upstream_extra_roots: Vec::new(),
            skill_dirs: vec![
                "/etc/openshell/skills".into(),
                "/etc/portcullis/skills".into(),
            ],
            control_tcp: None,
            provider_rules: true,
        }
    }
}

impl AgentConfig {
    /// Loads `path`, or the embedded defaults when no file is given and the
    /// default path does not exist.
    pub fn load(path: Option<&Path>) -> Result<Self> {
        let (path, explicit) = match path {
            Some(p) => (p.to_path_buf(), true),
            None => (PathBuf::from(DEFAULT_CONFIG_PATH), false),
        };
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => {
                return Ok(Self::default());
            }
            Err(e) => return Err(e).with_context(|| format!("reading config {}", path.display())),
        };
        let config: Self = serde_yaml::from_str(&text).with_context(|| {
            format!(
                "config {}: invalid (keys: state_dir, run_dir, log_dir, log_keep_days, bpffs_dir, \
                 cgroup_parent, proxy_port, dns_port, self_mark, hosts_file, default_user, \
                 bpf_object, dns_ttl_seconds, dns_pool_v4, dns_pool_v6, relay, upstream_extra_roots, skill_dirs, control_tcp, provider_rules, http_head_seconds, upstream_response_seconds)",
                path.display()
            )
        })?;
        config
            .validate()
            .with_context(|| format!("config {}", path.display()))?;
        Ok(config)
    }

    /// `http_head_seconds` as a duration.
    pub fn http_head_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_secs(u64::from(self.http_head_seconds))
    }

    /// `upstream_response_seconds` as a duration.
    pub fn upstream_response_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_secs(u64::from(self.upstream_response_seconds))
    }

    pub fn validate(&self) -> Result<()> {
        if self.proxy_port == 0 || self.dns_port == 0 {
            bail!("proxy_port and dns_port must be non-zero ports");
        }
        if self.proxy_port == self.dns_port {
            bail!(
                "proxy_port and dns_port must differ (both are {})",
                self.proxy_port
            );
        }
        if self.self_mark == 0 {
            bail!("self_mark must be non-zero: 0 is the mark of every unmarked socket");
        }
        if self.http_head_seconds == 0 {
            bail!("http_head_seconds must be at least 1 (60 is the default)");
        }
        if self.upstream_response_seconds == 0 {
            bail!("upstream_response_seconds must be at least 1 (300 is the default)");
        }
        if self.cgroup_parent.is_absolute()
            || self
                .cgroup_parent
                .components()
                .any(|c| !matches!(c, std::path::Component::Normal(_)))
        {
            bail!(
                "cgroup_parent `{}` must be a relative path below the cgroup2 mount, without `..`",
                self.cgroup_parent.display()
            );
        }
        Ok(())
    }

    pub fn control_socket(&self) -> PathBuf {
        self.run_dir.join("control.sock")
    }

    pub fn pid_file(&self) -> PathBuf {
        self.run_dir.join("agent.pid")
    }

    pub fn trust_bundle(&self) -> PathBuf {
        self.state_dir.join("trust/ca-bundle.pem")
    }

    pub fn ca_dir(&self) -> PathBuf {
        self.state_dir.join("ca")
    }

    pub fn proxy_ip4(&self) -> Ipv4Addr {
        Ipv4Addr::LOCALHOST
    }

    pub fn proxy_ip6(&self) -> Ipv6Addr {
        Ipv6Addr::LOCALHOST
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_documented_paths() {
        let c = AgentConfig::default();
        assert_eq!(c.state_dir, PathBuf::from("/var/lib/portcullis"));
        assert_eq!(
            c.control_socket(),
            PathBuf::from("/run/portcullis/control.sock")
        );
        c.validate().unwrap();
    }

    #[test]
    fn unknown_keys_are_rejected_with_the_file_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.yaml");
        std::fs::write(&path, "proxy_prot: 1\n").unwrap();
        let err = format!("{:#}", AgentConfig::load(Some(&path)).unwrap_err());
        assert!(err.contains("agent.yaml"), "{err}");
        assert!(err.contains("proxy_prot"), "{err}");
    }

    #[test]
    fn a_parent_escaping_the_mount_is_rejected() {
        let c = AgentConfig {
            cgroup_parent: "../x".into(),
            ..AgentConfig::default()
        };
        assert!(c.validate().is_err());
        let c = AgentConfig {
            proxy_port: 53,
            dns_port: 53,
            ..AgentConfig::default()
        };
        assert!(c.validate().unwrap_err().to_string().contains("differ"));
    }

    #[test]
    fn a_missing_explicit_file_is_an_error() {
        assert!(AgentConfig::load(Some(Path::new("/nonexistent/agent.yaml"))).is_err());
    }
}
