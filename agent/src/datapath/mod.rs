//! The kernel side, from userspace: load the BPF object, pin what must
//! outlive the agent, attach to sandbox cgroups, read maps and event rings.
//!
//! Fail closed: links and maps are pinned in bpffs, so when the agent dies
//! the programs stay attached and keep redirecting to a listener that is no
//! longer there (connection refused). A restarted agent reuses the pinned
//! maps and keeps the pinned links.

pub mod pins;
pub mod tracefs;

use std::{
    fs,
    net::{IpAddr, SocketAddr},
    path::Path,
    sync::Mutex,
};

use anyhow::{Context, Result, anyhow, bail};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, MapData, PerCpuArray, RingBuf},
    programs::{
        CgroupAttachMode, CgroupSock, CgroupSockAddr, SockOps, TracePoint,
        links::{FdLink, PinnedLink},
    },
};
use portcullis_common::{ConnectRecord, DatapathConfig, SourceKey, counter, names, v4_mapped};

pub use pins::PinLayout;

/// The BPF object built by `cargo xtask build-ebpf`, when it was there at
/// build time.
#[cfg(embedded_bpf)]
static EMBEDDED_OBJECT: &[u8] = aya::include_bytes_aligned!(env!("PORTCULLIS_BPF_OBJECT_PATH"));
#[cfg(not(embedded_bpf))]
static EMBEDDED_OBJECT: &[u8] = &[];

/// Names of the counters in `COUNTERS`, by slot.
pub const COUNTER_NAMES: [&str; counter::COUNT as usize] = [
    "redirected_tcp",
    "redirected_dns",
    "kernel_denied",
    "denial_events_dropped",
    "process_events_dropped",
    "self_mark_skipped",
];

pub struct Datapath {
    bpf: Ebpf,
    pins: PinLayout,
    config: Array<MapData, DatapathConfig>,
    sandbox_cgroups: HashMap<MapData, u64, u32>,
    by_source: Mutex<HashMap<MapData, SourceKey, ConnectRecord>>,
    counters: PerCpuArray<MapData, u64>,
}

impl Datapath {
    /// Loads the programs, creating or reusing the pinned maps.
    pub fn load(pins: PinLayout, object: Option<&Path>) -> Result<Self> {
        let bytes;
        let data: &[u8] = match object {
            Some(path) => {
                // The allocator's alignment (16 on x86_64) satisfies aya's parser.
                bytes = fs::read(path)
                    .with_context(|| format!("reading BPF object {}", path.display()))?;
                &bytes
            }
            None if EMBEDDED_OBJECT.is_empty() => bail!(
                "this agent was built without the BPF object; run `cargo xtask build` or pass \
                 `bpf_object: PATH` in the agent configuration"
            ),
            None => EMBEDDED_OBJECT,
        };
        pins.create_dirs()?;
        let mut bpf = EbpfLoader::new()
            .default_map_pin_directory(pins.maps())
            .load(data)
            .context(
                "loading the BPF object (is bpffs mounted at the pin directory, and are we root?)",
            )?;
        for name in names::CGROUP_PROGRAMS {
            let program = bpf
                .program_mut(name)
                .ok_or_else(|| anyhow!("BPF object lacks program {name}"))?;
            let loaded = match name {
                "sock_ops" => <&mut SockOps>::try_from(program)?.load(),
                "sock_release" => <&mut CgroupSock>::try_from(program)?.load(),
                _ => <&mut CgroupSockAddr>::try_from(program)?.load(),
            };
            loaded.with_context(|| format!("the kernel refused program {name}"))?;
        }
        for (name, _, _) in names::TRACEPOINTS {
            let program = bpf
                .program_mut(name)
                .ok_or_else(|| anyhow!("BPF object lacks program {name}"))?;
            <&mut TracePoint>::try_from(program)?
                .load()
                .with_context(|| format!("the kernel refused program {name}"))?;
        }
        let config = Array::try_from(take_map(&mut bpf, names::CONFIG)?)?;
        let sandbox_cgroups = HashMap::try_from(take_map(&mut bpf, names::SANDBOX_CGROUPS)?)?;
        let by_source = HashMap::try_from(take_map(&mut bpf, names::CONNECT_BY_SOURCE)?)?;
        let counters = PerCpuArray::try_from(take_map(&mut bpf, names::COUNTERS)?)?;
        Ok(Self {
            bpf,
            pins,
            config,
            sandbox_cgroups,
            by_source: Mutex::new(by_source),
            counters,
        })
    }

    /// Takes aya-log's ring, when the object has one. Keep it alive: the
    /// programs reference the map.
    pub fn take_logger(&mut self) -> Option<aya_log::EbpfLogger<&'static dyn log::Log>> {
        aya_log::EbpfLogger::init(&mut self.bpf).ok()
    }

    /// The two event rings: kernel denials, process events.
    pub fn take_rings(&mut self) -> Result<(RingBuf<MapData>, RingBuf<MapData>)> {
        let denials = RingBuf::try_from(take_map(&mut self.bpf, names::KERNEL_DENIALS)?)?;
        let processes = RingBuf::try_from(take_map(&mut self.bpf, names::PROCESS_EVENTS)?)?;
        Ok((denials, processes))
    }

    pub fn configure(&mut self, config: DatapathConfig) -> Result<()> {
        self.config
            .set(0, config, 0)
            .context("writing the datapath configuration")
    }

    pub fn current_config(&self) -> Option<DatapathConfig> {
        self.config.get(&0, 0).ok()
    }

    /// Attaches every cgroup program to `cgroup_dir` and pins the links.
    /// Links already pinned (a restarted agent) are kept as they are:
    /// replacing them would open a window with nothing attached.
    pub fn attach_sandbox(&mut self, sandbox: &str, cgroup_dir: &Path) -> Result<u32> {
        let dir = self.pins.sandbox_links(sandbox);
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let cgroup = fs::File::open(cgroup_dir)
            .with_context(|| format!("opening cgroup {}", cgroup_dir.display()))?;
        let mut attached = 0;
        for name in names::CGROUP_PROGRAMS {
            let pin = dir.join(name);
            if pin.exists() {
                attached += 1;
                continue;
            }
            let program = self
                .bpf
                .program_mut(name)
                .ok_or_else(|| anyhow!("no program {name}"))?;
            let link: FdLink = match name {
                "sock_ops" => {
                    let p = <&mut SockOps>::try_from(program)?;
                    let id = p.attach(&cgroup, CgroupAttachMode::Single)?;
                    p.take_link(id)?.try_into()?
                }
                "sock_release" => {
                    let p = <&mut CgroupSock>::try_from(program)?;
                    let id = p.attach(&cgroup, CgroupAttachMode::Single)?;
                    p.take_link(id)?.try_into()?
                }
                _ => {
                    let p = <&mut CgroupSockAddr>::try_from(program)?;
                    let id = p.attach(&cgroup, CgroupAttachMode::Single)?;
                    p.take_link(id)?.try_into()?
                }
            };
            link.pin(&pin)
                .map_err(|e| anyhow!("pinning {} at {}: {e}", name, pin.display()))?;
            attached += 1;
        }
        Ok(attached)
    }

    /// Attaches the exec and fork tracepoints once per installation.
    pub fn attach_tracepoints(&mut self) -> Result<u32> {
        let dir = self.pins.global_links();
        fs::create_dir_all(&dir)?;
        let mut attached = 0;
        for (name, category, event) in names::TRACEPOINTS {
            let pin = dir.join(name);
            if pin.exists() {
                attached += 1;
                continue;
            }
            let p = <&mut TracePoint>::try_from(
                self.bpf
                    .program_mut(name)
                    .ok_or_else(|| anyhow!("no program {name}"))?,
            )?;
            let id = p
                .attach(category, event)
                .with_context(|| format!("attaching to {category}/{event}"))?;
            let link: FdLink = p.take_link(id)?.try_into()?;
            link.pin(&pin).map_err(|e| anyhow!("pinning {name}: {e}"))?;
            attached += 1;
        }
        Ok(attached)
    }

    pub fn register_cgroup(&mut self, cgroup_id: u64, sandbox_id: u32) -> Result<()> {
        self.sandbox_cgroups
            .insert(cgroup_id, sandbox_id, 0)
            .context("registering the sandbox cgroup in the kernel")
    }

    pub fn unregister_cgroup(&mut self, cgroup_id: u64) {
        let _ = self.sandbox_cgroups.remove(&cgroup_id);
    }

    /// Takes the original destination of a connection the proxy accepted
    /// from `peer`. None is a miss, which the caller must deny.
    pub fn take_connect(&self, peer: SocketAddr) -> Option<ConnectRecord> {
        let key = source_key_of(peer);
        let mut map = self.by_source.lock().unwrap_or_else(|p| p.into_inner());
        let record = map.get(&key, 0).ok()?;
        let _ = map.remove(&key);
        Some(record)
    }

    /// Counters summed over CPUs, by slot.
    pub fn counters(&self) -> [u64; counter::COUNT as usize] {
        let mut out = [0; counter::COUNT as usize];
        for (slot, value) in out.iter_mut().enumerate() {
            if let Ok(values) = self.counters.get(&(slot as u32), 0) {
                *value = values.iter().sum();
            }
        }
        out
    }

    /// Entries in each map that grows with traffic or sandboxes, by map
    /// name: what `cargo xtask soak` watches for leaks. Walks the keys, so
    /// it is for status queries, not the data path.
    pub fn map_entries(&self) -> Vec<(&'static str, u64)> {
        let by_cookie = self
            .bpf
            .map(names::CONNECT_BY_COOKIE)
            .and_then(|map| HashMap::<_, u64, ConnectRecord>::try_from(map).ok())
            .map_or(0, |map| map.keys().count() as u64);
        let by_source = {
            let map = self.by_source.lock().unwrap_or_else(|p| p.into_inner());
            map.keys().count() as u64
        };
        vec![
            ("connect_by_cookie", by_cookie),
            ("connect_by_source", by_source),
            (
                "sandbox_cgroups",
                self.sandbox_cgroups.keys().count() as u64,
            ),
        ]
    }

    /// How many links are pinned: sandbox programs plus tracepoints.
    pub fn links_pinned(&self) -> u32 {
        self.pins.count_links()
    }

    pub fn pins(&self) -> &PinLayout {
        &self.pins
    }
}

/// Detaches a sandbox's programs by removing its link pins. Works without a
/// loaded object, so `portcullis down` can run with the agent stopped.
pub fn detach_sandbox(pins: &PinLayout, sandbox: &str) -> Result<u32> {
    let dir = pins.sandbox_links(sandbox);
    let mut detached = 0;
    if let Ok(entries) = fs::read_dir(&dir) {
        for entry in entries.flatten() {
            let path = entry.path();
            match PinnedLink::from_pin(&path) {
                // Unpinning drops the last reference: the kernel detaches.
                Ok(link) => {
                    link.unpin()
                        .with_context(|| format!("unpinning {}", path.display()))?;
                    detached += 1;
                }
                Err(_) => {
                    fs::remove_file(&path)
                        .with_context(|| format!("removing {}", path.display()))?;
                }
            }
        }
        let _ = fs::remove_dir(&dir);
    }
    Ok(detached)
}

/// The `CONNECT_BY_SOURCE` key for the peer address of an accepted
/// connection. A dual-stack view of an IPv4 peer is normalised to mapped.
pub fn source_key_of(peer: SocketAddr) -> SourceKey {
    let addr = match peer.ip() {
        IpAddr::V4(ip) => v4_mapped(u32::from_ne_bytes(ip.octets())),
        IpAddr::V6(ip) => {
            let o = ip.octets();
            std::array::from_fn(|i| {
                u32::from_ne_bytes([o[i * 4], o[i * 4 + 1], o[i * 4 + 2], o[i * 4 + 3]])
            })
        }
    };
    SourceKey {
        addr,
        port: u32::from(peer.port()),
    }
}

/// An address from the ABI's layout.
pub fn addr_from_abi(addr: &portcullis_common::Addr6) -> IpAddr {
    let mut octets = [0u8; 16];
    for (i, word) in addr.iter().enumerate() {
        octets[i * 4..i * 4 + 4].copy_from_slice(&word.to_ne_bytes());
    }
    let v6 = std::net::Ipv6Addr::from(octets);
    match v6.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(v6),
    }
}

fn take_map(bpf: &mut Ebpf, name: &str) -> Result<aya::maps::Map> {
    bpf.take_map(name)
        .ok_or_else(|| anyhow!("BPF object lacks map {name}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    #[test]
    fn peer_keys_match_what_sock_ops_writes() {
        let key = source_key_of(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 40000));
        let expected = portcullis_common::source_key(
            portcullis_common::AF_INET as u32,
            u32::from_ne_bytes([127, 0, 0, 1]),
            [0; 4],
            [0; 4],
            40000,
        );
        assert_eq!(key, expected);
        let mapped = SocketAddr::new(IpAddr::V6(Ipv4Addr::LOCALHOST.to_ipv6_mapped()), 40000);
        assert_eq!(
            source_key_of(mapped),
            expected,
            "mapped peers normalise to IPv4"
        );
    }

    #[test]
    fn abi_addresses_round_trip() {
        let v4 = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 10));
        assert_eq!(
            addr_from_abi(&source_key_of(SocketAddr::new(v4, 1)).addr),
            v4
        );
        let v6 = IpAddr::V6("2001:db8::2".parse::<Ipv6Addr>().unwrap());
        assert_eq!(
            addr_from_abi(&source_key_of(SocketAddr::new(v6, 1)).addr),
            v6
        );
    }
}
