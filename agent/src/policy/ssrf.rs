//! Destination validation after an L4 allow, before the dial (reference
//! §2.5). Pure: the caller resolves names and passes the addresses in.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

use super::EndpointSummary;

/// Ports of cluster control planes (etcd, kube-apiserver, kubelet): never
/// reachable through a permission for internal addresses.
pub const CONTROL_PLANE_PORTS: [u16; 5] = [2379, 2380, 6443, 10250, 10255];

/// Why an address (or port) may not be dialled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SsrfDenial {
    /// Loopback, link-local, unspecified or a cloud metadata address.
    AlwaysBlocked {
        ip: IpAddr,
        kind: &'static str,
    },
    /// A private or reserved address the endpoint does not permit.
    Internal {
        ip: IpAddr,
    },
    /// Outside the endpoint's `allowed_ips` (or its IP-literal host).
    NotInAllowedIps {
        ip: IpAddr,
    },
    ControlPlanePort {
        port: u16,
    },
    /// Nothing to check: the resolver returned no address.
    NoAddresses,
}

impl fmt::Display for SsrfDenial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::AlwaysBlocked { ip, kind } => write!(
                f,
                "{ip} is a {kind} address, which a sandbox may never reach"
            ),
            Self::Internal { ip } => write!(
                f,
                "{ip} is an internal address; to allow it, list it under the endpoint's \
                 `allowed_ips` or declare the exact host together with a binary"
            ),
            Self::NotInAllowedIps { ip } => write!(
                f,
                "{ip} is not permitted for this endpoint; add it to the endpoint's `allowed_ips`"
            ),
            Self::ControlPlanePort { port } => write!(
                f,
                "port {port} is a cluster control-plane port and is blocked for internal destinations"
            ),
            Self::NoAddresses => write!(f, "the destination resolved to no addresses"),
        }
    }
}

impl std::error::Error for SsrfDenial {}

/// Cloud instance metadata services: 169.254.169.254 (AWS, GCP, Azure,
/// OCI and most others) and 100.100.100.200 (Alibaba Cloud, outside the
/// link-local range).
const METADATA_V4: [Ipv4Addr; 2] = [
    Ipv4Addr::new(169, 254, 169, 254),
    Ipv4Addr::new(100, 100, 100, 200),
];

/// Names that reach a cloud metadata service.
pub const METADATA_HOSTNAMES: &[&str] = &["metadata.google.internal", "metadata"];

/// The class of an always-blocked address, if it is one. IPv4-mapped IPv6
/// addresses are judged by their IPv4 address.
pub fn is_always_blocked(ip: IpAddr) -> Option<&'static str> {
    match ip.to_canonical() {
        IpAddr::V4(v4) => {
            if METADATA_V4.contains(&v4) {
                Some("metadata")
            } else if v4.is_loopback() {
                Some("loopback")
            } else if v4.is_link_local() {
                Some("link-local")
            } else if v4.is_unspecified() {
                Some("unspecified")
            } else {
                None
            }
        }
        IpAddr::V6(v6) => {
            if v6 == Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254) {
                Some("metadata")
            } else if v6.is_loopback() {
                Some("loopback")
            } else if v6.is_unicast_link_local() {
                Some("link-local")
            } else if v6.is_unspecified() {
                Some("unspecified")
            } else {
                None
            }
        }
    }
}

/// Private, shared, documentation and reserved ranges, plus everything
/// always blocked.
pub fn is_internal(ip: IpAddr) -> bool {
    if is_always_blocked(ip).is_some() {
        return true;
    }
    match ip.to_canonical() {
        IpAddr::V4(v4) => v4_internal(v4),
        IpAddr::V6(v6) => {
            let s = v6.segments();
            (s[0] & 0xfe00) == 0xfc00 // ULA fc00::/7
                || (s[0] & 0xffc0) == 0xfec0 // deprecated site-local fec0::/10
                || (s[0] == 0x2001 && s[1] == 0x0db8) // documentation
                // NAT64 64:ff9b::/96 carries an IPv4 address; judge that.
                || (s[..6] == [0x64, 0xff9b, 0, 0, 0, 0]
                    && v4_internal_or_blocked(Ipv4Addr::from(
                        (u32::from(s[6]) << 16) | u32::from(s[7]),
                    )))
        }
    }
}

fn v4_internal(v4: Ipv4Addr) -> bool {
    let [a, b, c, _] = v4.octets();
    v4.is_private()
        || (a == 100 && (b & 0xc0) == 64) // CGNAT 100.64/10
        || a == 0 // "this network" 0/8
        || (a, b, c) == (192, 0, 0)
        || (a, b, c) == (192, 0, 2)
        || (a, b, c) == (198, 51, 100)
        || (a, b, c) == (203, 0, 113)
        || (a == 198 && (b & 0xfe) == 18) // benchmarking 198.18/15
        || v4.is_broadcast()
}

fn v4_internal_or_blocked(v4: Ipv4Addr) -> bool {
    v4_internal(v4) || is_always_blocked(IpAddr::V4(v4)).is_some()
}

/// Networks that `allowed_ips` may not overlap, with their class.
fn always_blocked_nets() -> Vec<(IpNet, &'static str)> {
    let v4 = |a, b, c, d, len, kind| {
        ipnet::Ipv4Net::new(Ipv4Addr::new(a, b, c, d), len)
            .ok()
            .map(|n| (IpNet::V4(n), kind))
    };
    let v6 = |addr: Ipv6Addr, len, kind| {
        ipnet::Ipv6Net::new(addr, len)
            .ok()
            .map(|n| (IpNet::V6(n), kind))
    };
    let mapped =
        |a, b, c, d, len: u8, kind| v6(Ipv4Addr::new(a, b, c, d).to_ipv6_mapped(), 96 + len, kind);
    [
        v4(127, 0, 0, 0, 8, "loopback"),
        v4(169, 254, 0, 0, 16, "link-local"),
        v4(0, 0, 0, 0, 32, "unspecified"),
        v6(Ipv6Addr::LOCALHOST, 128, "loopback"),
        v6(Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0), 10, "link-local"),
        v6(Ipv6Addr::UNSPECIFIED, 128, "unspecified"),
        v6(
            Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254),
            128,
            "metadata",
        ),
        mapped(127, 0, 0, 0, 8, "loopback"),
        mapped(169, 254, 0, 0, 16, "link-local"),
        mapped(0, 0, 0, 0, 32, "unspecified"),
        v4(100, 100, 100, 200, 32, "metadata"),
        mapped(100, 100, 100, 200, 32, "metadata"),
    ]
    .into_iter()
    .flatten()
    .collect()
}

/// The always-blocked class an `allowed_ips` entry overlaps, if any.
pub fn overlaps_always_blocked(net: &IpNet) -> Option<&'static str> {
    always_blocked_overlap(net).map(|(_, kind)| kind)
}

/// The first always-blocked network `net` overlaps, with its class.
pub fn always_blocked_overlap(net: &IpNet) -> Option<(IpNet, &'static str)> {
    always_blocked_nets()
        .into_iter()
        .find(|(blocked, _)| net.contains(&blocked.network()) || blocked.contains(&net.network()))
}

/// Which resolved addresses may be dialled for an allowed endpoint; `Err`
/// (the first rejection) if none. Modes in the precedence of §2.5:
/// `allowed_ips`, IP-literal host, exact declared host, default.
pub fn permitted_addresses(
    endpoint: &EndpointSummary,
    port: u16,
    resolved: &[IpAddr],
) -> Result<Vec<IpAddr>, SsrfDenial> {
    let literal = endpoint
        .host_is_ip_literal
        .then(|| endpoint.host_pattern.parse::<IpAddr>().ok())
        .flatten()
        .map(|ip| ip.to_canonical());
    let explicit = !endpoint.allowed_ips.is_empty();
    // Every mode that lets internal addresses through keeps the cluster
    // control plane out of reach.
    if (explicit || literal.is_some() || endpoint.exact_declared_host)
        && CONTROL_PLANE_PORTS.contains(&port)
    {
        return Err(SsrfDenial::ControlPlanePort { port });
    }
    let check = |ip: IpAddr| -> Result<(), SsrfDenial> {
        let blocked = is_always_blocked(ip).map(|kind| SsrfDenial::AlwaysBlocked { ip, kind });
        if explicit {
            if let Some(d) = blocked {
                return Err(d);
            }
            let canonical = ip.to_canonical();
            if !endpoint.allowed_ips.iter().any(|n| n.contains(&canonical)) {
                return Err(SsrfDenial::NotInAllowedIps { ip });
            }
        } else if let Some(expected) = literal {
            if let Some(d) = blocked {
                return Err(d);
            }
            if ip.to_canonical() != expected {
                return Err(SsrfDenial::NotInAllowedIps { ip });
            }
        } else if endpoint.exact_declared_host {
            if let Some(d) = blocked {
                return Err(d);
            }
        } else if let Some(d) = blocked {
            return Err(d);
        } else if is_internal(ip) {
            return Err(SsrfDenial::Internal { ip });
        }
        Ok(())
    };
    let mut permitted = Vec::with_capacity(resolved.len());
    let mut first_denial = None;
    for &ip in resolved {
        match check(ip) {
            Ok(()) if !permitted.contains(&ip) => permitted.push(ip),
            Ok(()) => {}
            Err(d) => {
                first_denial.get_or_insert(d);
            }
        }
    }
    if permitted.is_empty() {
        return Err(first_denial.unwrap_or(SsrfDenial::NoAddresses));
    }
    Ok(permitted)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn endpoint(host: &str) -> EndpointSummary {
        EndpointSummary {
            host_pattern: host.into(),
            ports: vec![443],
            protocol: String::new(),
            tls_skip: false,
            enforcement_audit: false,
            allowed_ips: vec![],
            exact_declared_host: false,
            host_is_ip_literal: host.parse::<IpAddr>().is_ok(),
            allow_uninspected_credentials: false,
        }
    }

    #[test]
    fn always_blocked_classes() {
        assert_eq!(is_always_blocked(ip("127.0.0.1")), Some("loopback"));
        assert_eq!(is_always_blocked(ip("::1")), Some("loopback"));
        assert_eq!(is_always_blocked(ip("169.254.1.1")), Some("link-local"));
        assert_eq!(is_always_blocked(ip("fe80::1")), Some("link-local"));
        assert_eq!(
            is_always_blocked(ip("::ffff:169.254.1.1")),
            Some("link-local")
        );
        assert_eq!(is_always_blocked(ip("::ffff:127.0.0.1")), Some("loopback"));
        assert_eq!(is_always_blocked(ip("0.0.0.0")), Some("unspecified"));
        assert_eq!(is_always_blocked(ip("::")), Some("unspecified"));
        assert_eq!(is_always_blocked(ip("169.254.169.254")), Some("metadata"));
        assert_eq!(is_always_blocked(ip("fd00:ec2::254")), Some("metadata"));
        assert_eq!(is_always_blocked(ip("100.100.100.200")), Some("metadata"));
        assert_eq!(
            is_always_blocked(ip("::ffff:100.100.100.200")),
            Some("metadata")
        );
        assert_eq!(is_always_blocked(ip("100.100.100.201")), None);
        assert_eq!(is_always_blocked(ip("10.0.0.1")), None);
        assert_eq!(is_always_blocked(ip("8.8.8.8")), None);
    }

    #[test]
    fn internal_ranges() {
        for s in [
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "100.64.0.1",
            "100.127.255.255",
            "fc00::1",
            "fd12::1",
            "192.0.2.10",
            "198.51.100.1",
            "203.0.113.9",
            "2001:db8::1",
            "255.255.255.255",
            "192.0.0.8",
            "198.18.0.1",
            "198.19.255.1",
            "127.0.0.1",
            "::ffff:10.0.0.1",
            "64:ff9b::a00:1",
            "0.1.2.3",
        ] {
            assert!(is_internal(ip(s)), "{s}");
        }
        for s in [
            "8.8.8.8",
            "100.128.0.1",
            "198.20.0.1",
            "2606:4700::1",
            "64:ff9b::808:808",
            "172.32.0.1",
        ] {
            assert!(!is_internal(ip(s)), "{s}");
        }
    }

    #[test]
    fn default_mode_rejects_internal_but_keeps_public() {
        let ep = endpoint("api.example.com");
        assert_eq!(
            permitted_addresses(&ep, 443, &[ip("10.0.0.1"), ip("93.184.216.34")]),
            Ok(vec![ip("93.184.216.34")])
        );
        assert_eq!(
            permitted_addresses(&ep, 443, &[ip("10.0.0.1")]),
            Err(SsrfDenial::Internal { ip: ip("10.0.0.1") })
        );
        assert_eq!(
            permitted_addresses(&ep, 443, &[ip("127.0.0.1")]),
            Err(SsrfDenial::AlwaysBlocked {
                ip: ip("127.0.0.1"),
                kind: "loopback"
            })
        );
        // The default mode does not block control-plane ports on public IPs.
        assert!(permitted_addresses(&ep, 6443, &[ip("93.184.216.34")]).is_ok());
        assert_eq!(
            permitted_addresses(&ep, 443, &[]),
            Err(SsrfDenial::NoAddresses)
        );
    }

    #[test]
    fn allowed_ips_mode() {
        let mut ep = endpoint("db.internal");
        ep.allowed_ips = vec!["10.20.0.0/16".parse().unwrap()];
        assert_eq!(
            permitted_addresses(&ep, 5432, &[ip("10.20.1.1")]),
            Ok(vec![ip("10.20.1.1")])
        );
        assert_eq!(
            permitted_addresses(&ep, 5432, &[ip("10.21.1.1")]),
            Err(SsrfDenial::NotInAllowedIps {
                ip: ip("10.21.1.1")
            })
        );
        assert_eq!(
            permitted_addresses(&ep, 6443, &[ip("10.20.1.1")]),
            Err(SsrfDenial::ControlPlanePort { port: 6443 })
        );
        // Mapped addresses are judged by their IPv4 form.
        assert!(permitted_addresses(&ep, 5432, &[ip("::ffff:10.20.1.1")]).is_ok());
        ep.allowed_ips = vec!["0.0.0.0/1".parse().unwrap()];
        assert_eq!(
            permitted_addresses(&ep, 80, &[ip("127.0.0.1")]),
            Err(SsrfDenial::AlwaysBlocked {
                ip: ip("127.0.0.1"),
                kind: "loopback"
            })
        );
    }

    #[test]
    fn ip_literal_mode() {
        let ep = endpoint("192.0.2.10");
        assert_eq!(
            permitted_addresses(&ep, 9000, &[ip("192.0.2.10")]),
            Ok(vec![ip("192.0.2.10")])
        );
        assert_eq!(
            permitted_addresses(&ep, 9000, &[ip("192.0.2.11")]),
            Err(SsrfDenial::NotInAllowedIps {
                ip: ip("192.0.2.11")
            })
        );
        assert_eq!(
            permitted_addresses(&ep, 10250, &[ip("192.0.2.10")]),
            Err(SsrfDenial::ControlPlanePort { port: 10250 })
        );
        let ep = endpoint("169.254.169.254");
        assert_eq!(
            permitted_addresses(&ep, 80, &[ip("169.254.169.254")]),
            Err(SsrfDenial::AlwaysBlocked {
                ip: ip("169.254.169.254"),
                kind: "metadata"
            })
        );
    }

    #[test]
    fn exact_declared_host_mode() {
        let mut ep = endpoint("db.corp.example");
        ep.exact_declared_host = true;
        assert!(permitted_addresses(&ep, 5432, &[ip("10.0.0.5")]).is_ok());
        assert!(permitted_addresses(&ep, 5432, &[ip("198.51.100.7")]).is_ok());
        assert_eq!(
            permitted_addresses(&ep, 5432, &[ip("fe80::1")]),
            Err(SsrfDenial::AlwaysBlocked {
                ip: ip("fe80::1"),
                kind: "link-local"
            })
        );
        assert_eq!(
            permitted_addresses(&ep, 2379, &[ip("10.0.0.5")]),
            Err(SsrfDenial::ControlPlanePort { port: 2379 })
        );
    }

    #[test]
    fn allowed_ips_take_precedence_over_the_literal_host() {
        let mut ep = endpoint("192.0.2.10");
        ep.allowed_ips = vec!["192.0.2.0/24".parse().unwrap()];
        assert!(permitted_addresses(&ep, 80, &[ip("192.0.2.99")]).is_ok());
    }

    #[test]
    fn overlap_detection() {
        let net = |s: &str| s.parse::<IpNet>().unwrap();
        assert_eq!(overlaps_always_blocked(&net("0.0.0.0/0")), Some("loopback"));
        assert_eq!(
            overlaps_always_blocked(&net("127.0.0.1/32")),
            Some("loopback")
        );
        assert_eq!(
            overlaps_always_blocked(&net("169.254.0.0/24")),
            Some("link-local")
        );
        assert_eq!(overlaps_always_blocked(&net("::/0")), Some("loopback"));
        assert_eq!(
            overlaps_always_blocked(&net("::ffff:0:0/96")),
            Some("loopback")
        );
        assert_eq!(
            overlaps_always_blocked(&net("fd00:ec2::/32")),
            Some("metadata")
        );
        assert_eq!(
            overlaps_always_blocked(&net("100.64.0.0/10")),
            Some("metadata")
        );
        assert_eq!(overlaps_always_blocked(&net("10.0.0.0/8")), None);
        assert_eq!(overlaps_always_blocked(&net("2001:db8::/32")), None);
    }

    #[test]
    fn denials_read_well() {
        let d = SsrfDenial::AlwaysBlocked {
            ip: ip("127.0.0.1"),
            kind: "loopback",
        };
        assert_eq!(
            d.to_string(),
            "127.0.0.1 is a loopback address, which a sandbox may never reach"
        );
        assert!(
            SsrfDenial::Internal { ip: ip("10.0.0.1") }
                .to_string()
                .contains("allowed_ips")
        );
    }
}
