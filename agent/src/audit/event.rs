//! OCSF 1.8.0 event model and the constructors Portcullis emits from.
//!
//! Field names and values follow OCSF 1.8.0 and OpenShell's usage of it
//! (reference §7.1–7.2). Portcullis-only context goes under `unmapped`.
//! Constructors take plain facts, stamp the current time, and redact and
//! bound every piece of free text; `.at(ms)` overrides the time (tests,
//! replay).

use std::net::{IpAddr, SocketAddr};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;
use serde_json::{Map, Value};

use super::enums::{
    Action, ConfigActivityId, Direction, Disposition, HttpActivityId, LifecycleActivityId,
    NetworkActivityId, Severity, State, Status,
};
use super::text::{bracket_ipv6, redact_query, redact_secrets, sanitize};

/// OCSF schema version of every event.
pub const OCSF_VERSION: &str = "1.8.0";
/// `metadata.product.name` (contract §2.10).
pub const PRODUCT_NAME: &str = "Portcullis";
/// `metadata.product.vendor_name`.
pub const VENDOR_NAME: &str = "Portcullis";
/// `metadata.product.version`.
pub const PRODUCT_VERSION: &str = env!("CARGO_PKG_VERSION");

/// Longest reason / status detail kept in an event, in bytes.
const MAX_DETAIL_BYTES: usize = 1024;
/// Longest command line kept in an event, in bytes.
const MAX_CMD_LINE_BYTES: usize = 4096;
/// Longest single value (host, path, binary, policy name) kept, in bytes.
const MAX_VALUE_BYTES: usize = 1024;
/// Deepest `parent_process` chain recorded; bounds event size.
const MAX_ANCESTORS: usize = 32;

/// `firewall_rule.name` when no policy matched (OpenShell's convention).
const NO_POLICY: &str = "-";

/// Milliseconds since the Unix epoch, or 0 if the clock is before it.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

// ---------------------------------------------------------------------------
// OCSF objects
// ---------------------------------------------------------------------------

/// OCSF `product`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Product {
    pub name: &'static str,
    pub vendor_name: &'static str,
    pub version: &'static str,
}

impl Product {
    /// The Portcullis product object.
    pub const fn portcullis() -> Self {
        Self {
            name: PRODUCT_NAME,
            vendor_name: VENDOR_NAME,
            version: PRODUCT_VERSION,
        }
    }
}

/// OCSF `metadata`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Metadata {
    pub version: &'static str,
    pub product: Product,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub profiles: Vec<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_name: Option<String>,
}

impl Metadata {
    fn new(profiles: Vec<&'static str>) -> Self {
        Self {
            version: OCSF_VERSION,
            product: Product::portcullis(),
            profiles,
            log_name: None,
        }
    }
}

/// OCSF `file` (the executable of a process).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct File {
    pub name: String,
    pub path: String,
    pub type_id: u8,
    #[serde(rename = "type")]
    pub file_type: &'static str,
}

impl File {
    fn executable(path: &str) -> Self {
        let name = path.rsplit('/').next().unwrap_or(path).to_string();
        Self {
            name,
            path: path.to_string(),
            type_id: 1,
            file_type: "Regular File",
        }
    }
}

/// OCSF `user` (OCSF types `uid` as a string).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct User {
    pub uid: String,
}

/// OCSF `process`. `name` is the full executable path, as OpenShell does
/// (reference §7.4), so the shorthand shows `/usr/bin/curl(58)`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Process {
    pub name: String,
    pub pid: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cmd_line: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<File>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<User>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parent_process: Option<Box<Process>>,
}

/// OCSF `actor`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Actor {
    pub process: Process,
}

/// OCSF `network_endpoint`.
///
/// `domain` mirrors `hostname`: OCSF names the FQDN `hostname`, while
/// OpenShell consumers read `dst_endpoint.domain` (reference §7.1); both
/// are written so either reader works.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Endpoint {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ip: Option<IpAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
}

impl Endpoint {
    /// Hostname if known, else the IP, for display.
    pub fn display_host(&self) -> Option<String> {
        self.hostname
            .clone()
            .or_else(|| self.ip.map(|ip| ip.to_string()))
    }
}

/// OCSF `network_connection_info`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ConnectionInfo {
    pub protocol_name: &'static str,
    pub protocol_num: u8,
    #[serde(flatten)]
    pub direction: Direction,
}

/// OCSF `firewall_rule`. `type` names the deciding engine (`opa`, `ssrf`,
/// `tls`, `credentials`, `l7`, `ebpf`); the shorthand prints it as
/// `engine:`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FirewallRule {
    pub name: String,
    #[serde(rename = "type")]
    pub rule_type: String,
}

/// OCSF `url` (never with a query string).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Url {
    pub scheme: String,
    pub hostname: String,
    pub path: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
}

impl Url {
    /// `scheme://host[:port]path`; the port is left out only for http:80
    /// and https:443 (reference §7.4).
    pub fn display(&self) -> String {
        let default_port = matches!(
            (self.scheme.as_str(), self.port),
            ("http", Some(80)) | ("https", Some(443))
        );
        let host = bracket_ipv6(&self.hostname);
        match self.port {
            Some(port) if !default_port => {
                format!("{}://{host}:{port}{}", self.scheme, self.path)
            }
            _ => format!("{}://{host}{}", self.scheme, self.path),
        }
    }
}

/// OCSF `http_request`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct HttpRequest {
    pub http_method: String,
    pub url: Url,
}

// ---------------------------------------------------------------------------
// Events
// ---------------------------------------------------------------------------

/// An OCSF event class: uid, name and category.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct EventClass {
    uid: u32,
    name: &'static str,
    category_uid: u8,
    category_name: &'static str,
}

const NETWORK_ACTIVITY: EventClass = EventClass {
    uid: 4001,
    name: "Network Activity",
    category_uid: 4,
    category_name: "Network Activity",
};
const HTTP_ACTIVITY: EventClass = EventClass {
    uid: 4002,
    name: "HTTP Activity",
    category_uid: 4,
    category_name: "Network Activity",
};
const CONFIG_STATE_CHANGE: EventClass = EventClass {
    uid: 5019,
    name: "Device Config State Change",
    category_uid: 5,
    category_name: "Discovery",
};
const DETECTION_FINDING: EventClass = EventClass {
    uid: 2004,
    name: "Detection Finding",
    category_uid: 2,
    category_name: "Findings",
};
const APP_LIFECYCLE: EventClass = EventClass {
    uid: 6002,
    name: "Application Lifecycle",
    category_uid: 6,
    category_name: "Application Activity",
};

/// Attributes shared by every class (OCSF base event).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct BaseEvent {
    pub class_uid: u32,
    pub class_name: &'static str,
    pub category_uid: u8,
    pub category_name: &'static str,
    pub activity_id: u8,
    pub activity_name: &'static str,
    /// `class_uid * 100 + activity_id`.
    pub type_uid: u32,
    /// `"<class_name>: <activity_name>"`.
    pub type_name: String,
    /// Event time, milliseconds since the Unix epoch.
    pub time: i64,
    #[serde(flatten)]
    pub severity: Severity,
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub status: Option<Status>,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status_detail: Option<String>,
    pub metadata: Metadata,
    #[serde(skip_serializing_if = "Map::is_empty")]
    pub unmapped: Map<String, Value>,
}

impl BaseEvent {
    fn new(
        class: EventClass,
        activity_id: u8,
        activity_name: &'static str,
        severity: Severity,
        message: String,
        profiles: Vec<&'static str>,
    ) -> Self {
        Self {
            class_uid: class.uid,
            class_name: class.name,
            category_uid: class.category_uid,
            category_name: class.category_name,
            activity_id,
            activity_name,
            type_uid: class.uid * 100 + u32::from(activity_id),
            type_name: format!("{}: {activity_name}", class.name),
            time: now_ms(),
            severity,
            status: None,
            message,
            status_detail: None,
            metadata: Metadata::new(profiles),
            unmapped: Map::new(),
        }
    }

    /// Stores a sanitized string under `unmapped`; absent or empty values
    /// are left out.
    fn put(&mut self, key: &str, value: Option<&str>) {
        if let Some(value) = value.filter(|v| !v.is_empty()) {
            self.unmapped.insert(
                key.to_string(),
                Value::String(sanitize(value, MAX_VALUE_BYTES)),
            );
        }
    }
}

/// Who talked to whom and what the firewall decided; shared by Network and
/// HTTP Activity.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Traffic {
    #[serde(flatten)]
    pub action: Action,
    #[serde(flatten)]
    pub disposition: Disposition,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub actor: Option<Actor>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub src_endpoint: Option<Endpoint>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dst_endpoint: Option<Endpoint>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connection_info: Option<ConnectionInfo>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub firewall_rule: Option<FirewallRule>,
    pub is_src_dst_assignment_known: bool,
}

/// Network Activity (4001).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct NetworkActivity {
    #[serde(flatten)]
    pub base: BaseEvent,
    #[serde(flatten)]
    pub traffic: Traffic,
}

/// HTTP Activity (4002).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct HttpActivity {
    #[serde(flatten)]
    pub base: BaseEvent,
    #[serde(flatten)]
    pub traffic: Traffic,
    pub http_request: HttpRequest,
}

/// Device Config State Change (5019).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ConfigStateChange {
    #[serde(flatten)]
    pub base: BaseEvent,
    #[serde(flatten)]
    pub state: State,
}

/// Application Lifecycle (6002).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct AppLifecycle {
    #[serde(flatten)]
    pub base: BaseEvent,
    pub app: Product,
}

/// Any event Portcullis writes to its audit log.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(untagged)]
pub enum AuditEvent {
    Network(NetworkActivity),
    Http(HttpActivity),
    Config(ConfigStateChange),
    Lifecycle(AppLifecycle),
    Finding(DetectionFinding),
}

/// OCSF `finding_info`: what was detected.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FindingInfo {
    pub title: String,
    /// A stable identifier of the kind of finding.
    pub uid: String,
    pub types: Vec<String>,
}

/// Detection Finding (2004): something suspicious the proxy stopped, such
/// as a credential aimed at a host it is not bound to.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DetectionFinding {
    #[serde(flatten)]
    pub base: BaseEvent,
    pub finding_info: FindingInfo,
    #[serde(flatten)]
    pub action: Action,
    #[serde(flatten)]
    pub disposition: Disposition,
}

impl DetectionFinding {
    /// A credential placeholder was sent toward a host, port or path its
    /// provider is not bound to; the request was refused. Names the key
    /// and the provider, never a value.
    pub fn credential_endpoint_mismatch(
        facts: &ConnectionFacts,
        key: &str,
        provider: &str,
    ) -> Self {
        let title = format!(
            "credential {key} of provider {provider} sent toward {}:{}",
            facts.dst_host.as_deref().unwrap_or("-"),
            facts.dst_port
        );
        let mut base = BaseEvent::new(
            DETECTION_FINDING,
            1,
            "Create",
            Severity::High,
            sanitize(&title, MAX_DETAIL_BYTES),
            Vec::new(),
        );
        base.put("sandbox", Some(&facts.sandbox));
        base.put("credential_key", Some(key));
        base.put("provider", Some(provider));
        Self {
            base,
            finding_info: FindingInfo {
                title: sanitize(&title, MAX_DETAIL_BYTES),
                uid: "portcullis.provider_credential.endpoint_mismatch".into(),
                types: vec!["credential_endpoint_mismatch".into()],
            },
            action: Action::Denied,
            disposition: Disposition::Blocked,
        }
    }
}

impl AuditEvent {
    /// The attributes common to every class.
    pub fn base(&self) -> &BaseEvent {
        match self {
            Self::Network(e) => &e.base,
            Self::Http(e) => &e.base,
            Self::Config(e) => &e.base,
            Self::Lifecycle(e) => &e.base,
            Self::Finding(e) => &e.base,
        }
    }

    /// The event as one line of JSON (no trailing newline).
    pub fn to_json(&self) -> Result<String, serde_json::Error> {
        serde_json::to_string(self)
    }
}

/// Builder methods shared by all classes.
macro_rules! common_builders {
    ($($class:ident => $variant:ident),+ $(,)?) => {$(
        impl $class {
            /// Overrides the event time (milliseconds since the Unix epoch).
            pub fn at(mut self, time_ms: i64) -> Self {
                self.base.time = time_ms;
                self
            }

            /// Adds a Portcullis-specific key under `unmapped`.
            pub fn with_unmapped(mut self, key: &str, value: impl Into<Value>) -> Self {
                self.base.unmapped.insert(key.to_string(), value.into());
                self
            }
        }

        impl From<$class> for AuditEvent {
            fn from(event: $class) -> Self {
                Self::$variant(event)
            }
        }
    )+};
}

common_builders! {
    NetworkActivity => Network,
    HttpActivity => Http,
    ConfigStateChange => Config,
    AppLifecycle => Lifecycle,
    DetectionFinding => Finding,
}

// ---------------------------------------------------------------------------
// Inputs
// ---------------------------------------------------------------------------

/// Transport protocol of a connection.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Transport {
    #[default]
    Tcp,
    Udp,
}

impl Transport {
    /// IANA name, lowercase, as OCSF `protocol_name`.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
        }
    }

    /// IANA protocol number.
    pub const fn number(self) -> u8 {
        match self {
            Self::Tcp => 6,
            Self::Udp => 17,
        }
    }
}

/// The process behind a connection, as attributed by the kernel side.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProcessFacts {
    /// Executable path.
    pub binary: String,
    pub pid: u32,
    pub cmd_line: Option<String>,
    pub uid: Option<u32>,
    /// `(executable path, pid)` of each ancestor, parent first.
    pub ancestors: Vec<(String, u32)>,
}

/// Everything known about one connection when a decision is logged.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConnectionFacts {
    pub sandbox: String,
    /// `None` when attribution failed.
    pub process: Option<ProcessFacts>,
    pub src: Option<SocketAddr>,
    /// Requested hostname (SNI, Host, DNS answer), if any.
    pub dst_host: Option<String>,
    pub dst_ip: Option<IpAddr>,
    pub dst_port: u16,
    pub protocol: Transport,
    /// Matched `network_policies` key; `-` is written when `None`.
    pub policy: Option<String>,
    /// Finer-grained rule inside the policy, if any.
    pub rule: Option<String>,
    /// Engine explanation of the decision.
    pub reason: Option<String>,
    pub policy_version: Option<String>,
    pub policy_hash: Option<String>,
}

impl ConnectionFacts {
    /// `host:port` for messages, with IPv6 literals bracketed.
    fn host_port(&self) -> String {
        let host = self
            .dst_host
            .as_deref()
            .map(|h| sanitize(h, MAX_VALUE_BYTES))
            .or_else(|| self.dst_ip.map(|ip| ip.to_string()))
            .unwrap_or_else(|| "unknown".to_string());
        format!("{}:{}", bracket_ipv6(&host), self.dst_port)
    }

    fn actor(&self) -> Option<Actor> {
        let p = self.process.as_ref()?;
        // Build the parent chain from the most distant ancestor inwards.
        let mut parent: Option<Box<Process>> = None;
        for (path, pid) in p.ancestors.iter().take(MAX_ANCESTORS).rev() {
            let path = sanitize(path, MAX_VALUE_BYTES);
            parent = Some(Box::new(Process {
                file: Some(File::executable(&path)),
                name: path,
                pid: *pid,
                cmd_line: None,
                user: None,
                parent_process: parent,
            }));
        }
        let binary = sanitize(&p.binary, MAX_VALUE_BYTES);
        Some(Actor {
            process: Process {
                file: Some(File::executable(&binary)),
                name: binary,
                pid: p.pid,
                cmd_line: p
                    .cmd_line
                    .as_deref()
                    .map(|c| sanitize(&redact_secrets(c), MAX_CMD_LINE_BYTES)),
                user: p.uid.map(|uid| User {
                    uid: uid.to_string(),
                }),
                parent_process: parent,
            },
        })
    }

    fn src_endpoint(&self) -> Option<Endpoint> {
        self.src.map(|addr| Endpoint {
            ip: Some(addr.ip()),
            port: Some(addr.port()),
            ..Endpoint::default()
        })
    }

    fn dst_endpoint(&self) -> Endpoint {
        let hostname = self
            .dst_host
            .as_deref()
            .map(|h| sanitize(h, MAX_VALUE_BYTES));
        Endpoint {
            domain: hostname.clone(),
            hostname,
            ip: self.dst_ip,
            port: Some(self.dst_port),
        }
    }

    fn connection_info(&self) -> ConnectionInfo {
        ConnectionInfo {
            protocol_name: self.protocol.name(),
            protocol_num: self.protocol.number(),
            direction: Direction::Outbound,
        }
    }

    fn policy_name(&self) -> String {
        self.policy
            .as_deref()
            .map_or_else(|| NO_POLICY.to_string(), |p| sanitize(p, MAX_VALUE_BYTES))
    }

    fn reason(&self) -> Option<String> {
        self.reason
            .as_deref()
            .filter(|r| !r.trim().is_empty())
            .map(|r| sanitize(r, MAX_DETAIL_BYTES))
    }

    /// Portcullis context under `unmapped`.
    fn annotate(&self, base: &mut BaseEvent, engine: Engine) {
        base.put("sandbox", Some(&self.sandbox));
        base.put("engine", Some(engine.as_str()));
        base.put("rule", self.rule.as_deref());
        base.put("policy_version", self.policy_version.as_deref());
        base.put("policy_hash", self.policy_hash.as_deref());
    }

    fn traffic(
        &self,
        action: Action,
        disposition: Disposition,
        rule_type: &str,
        with_connection_info: bool,
    ) -> Traffic {
        Traffic {
            action,
            disposition,
            actor: self.actor(),
            src_endpoint: self.src_endpoint(),
            dst_endpoint: Some(self.dst_endpoint()),
            connection_info: with_connection_info.then(|| self.connection_info()),
            firewall_rule: Some(FirewallRule {
                name: self.policy_name(),
                rule_type: rule_type.to_string(),
            }),
            is_src_dst_assignment_known: true,
        }
    }
}

/// The Portcullis layer that made a decision (`unmapped.engine`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Engine {
    L4,
    L7,
    Kernel,
}

impl Engine {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::L4 => "l4",
            Self::L7 => "l7",
            Self::Kernel => "kernel",
        }
    }
}

/// Whether L7 inspection follows an L4 allow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Inspection {
    /// Bytes are relayed as-is.
    L4Only,
    /// TLS is terminated / HTTP parsed and L7 rules apply.
    L7,
}

/// The SSRF check that failed (reference §3.2 kinds).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SsrfKind {
    InternalAddress,
    AllowedIpsCheckFailed,
    DeclaredEndpointCheckFailed,
    InvalidAllowedIps,
}

impl SsrfKind {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::InternalAddress => "internal address",
            Self::AllowedIpsCheckFailed => "allowed_ips check failed",
            Self::DeclaredEndpointCheckFailed => "declared endpoint check failed",
            Self::InvalidAllowedIps => "invalid allowed_ips in policy",
        }
    }
}

/// Why an L4 connection was denied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DenyCause {
    /// No policy allows this binary to reach this endpoint.
    Policy,
    /// The destination address is blocked (SSRF rules, reference §2.5).
    Ssrf(SsrfKind),
    /// The endpoint needs TLS termination but the CA is unavailable.
    TlsUnavailable,
    /// Credentials would flow through a tunnel Portcullis cannot inspect.
    UninspectedCredentials,
}

/// What happened to an HTTP request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum HttpDecision {
    Allow,
    Deny,
    /// Allowed only because the endpoint is in `enforcement: audit`.
    Audit,
}

impl HttpDecision {
    const fn as_str(self) -> &'static str {
        match self {
            Self::Allow => "allow",
            Self::Deny => "deny",
            Self::Audit => "audit",
        }
    }
}

/// One HTTP request as seen by the L7 engine.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HttpRequestFacts {
    pub method: String,
    /// `http` or `https`.
    pub scheme: String,
    /// Request path; any query string is dropped before logging.
    pub path: String,
}

// ---------------------------------------------------------------------------
// Constructors
// ---------------------------------------------------------------------------

const SECURITY_CONTROL: &str = "security_control";

impl NetworkActivity {
    fn base(activity: NetworkActivityId, severity: Severity, message: String) -> BaseEvent {
        BaseEvent::new(
            NETWORK_ACTIVITY,
            activity.id(),
            activity.caption(),
            severity,
            message,
            vec![SECURITY_CONTROL],
        )
    }

    /// An L4 connection was allowed by policy.
    pub fn allowed(facts: &ConnectionFacts, inspection: Inspection) -> Self {
        let verb = match inspection {
            Inspection::L4Only => "CONNECT",
            Inspection::L7 => "CONNECT_L7",
        };
        let message = format!("{verb} allowed {}", facts.host_port());
        let mut base = Self::base(NetworkActivityId::Open, Severity::Informational, message);
        base.status = Some(Status::Success);
        facts.annotate(&mut base, Engine::L4);
        // Proxied TCP carries no connection_info, like OpenShell's CONNECT
        // events, so the shorthand reads `host:port`; other transports are
        // marked.
        let with_info = facts.protocol != Transport::Tcp;
        Self {
            base,
            traffic: facts.traffic(Action::Allowed, Disposition::Allowed, "opa", with_info),
        }
    }

    /// An L4 connection was denied by the userspace proxy.
    pub fn denied(facts: &ConnectionFacts, cause: DenyCause) -> Self {
        let hp = facts.host_port();
        let (message, severity, rule_type) = match cause {
            DenyCause::Policy => (format!("CONNECT denied {hp}"), Severity::Medium, "opa"),
            DenyCause::Ssrf(SsrfKind::InternalAddress) => (
                format!("CONNECT blocked: internal address {hp}"),
                Severity::Medium,
                "ssrf",
            ),
            DenyCause::Ssrf(kind) => (
                format!("CONNECT blocked: {} for {hp}", kind.as_str()),
                Severity::Medium,
                "ssrf",
            ),
            DenyCause::TlsUnavailable => (
                format!("CONNECT refused for {hp}: TLS termination unavailable"),
                Severity::High,
                "tls",
            ),
            DenyCause::UninspectedCredentials => (
                format!("CONNECT refused for {hp}: credentials would pass uninspected"),
                Severity::High,
                "credentials",
            ),
        };
        let mut base = Self::base(NetworkActivityId::Open, severity, message);
        base.status = Some(Status::Failure);
        base.status_detail = facts.reason();
        facts.annotate(&mut base, Engine::L4);
        let with_info = facts.protocol != Transport::Tcp;
        Self {
            base,
            traffic: facts.traffic(Action::Denied, Disposition::Blocked, rule_type, with_info),
        }
    }

    /// A relay opened under an older policy was closed because the policy
    /// now in force no longer allows it.
    pub fn closed_after_reload(facts: &ConnectionFacts) -> Self {
        let message = format!("CONNECT closed after policy reload {}", facts.host_port());
        let mut base = Self::base(NetworkActivityId::Close, Severity::Medium, message);
        base.status = Some(Status::Success);
        base.status_detail = facts.reason();
        facts.annotate(&mut base, Engine::L4);
        let with_info = facts.protocol != Transport::Tcp;
        Self {
            base,
            traffic: facts.traffic(Action::Denied, Disposition::Blocked, "opa", with_info),
        }
    }

    /// The kernel (eBPF) refused a connection that cannot be proxied, e.g.
    /// non-HTTP traffic to a destination no policy allows.
    pub fn kernel_refused(facts: &ConnectionFacts) -> Self {
        let message = format!(
            "{} connection to {} refused by kernel",
            facts.protocol.name(),
            facts.host_port()
        );
        let mut base = Self::base(NetworkActivityId::Refuse, Severity::Medium, message);
        base.status = Some(Status::Failure);
        base.status_detail = facts.reason();
        facts.annotate(&mut base, Engine::Kernel);
        Self {
            base,
            // Like OpenShell's bypass events, kernel refusals name the
            // transport (`host:port/tcp`).
            traffic: facts.traffic(Action::Denied, Disposition::Blocked, "ebpf", true),
        }
    }
}

impl HttpActivity {
    fn decision(
        facts: &ConnectionFacts,
        request: &HttpRequestFacts,
        decision: HttpDecision,
    ) -> Self {
        let method = sanitize(&request.method, 32).to_ascii_uppercase();
        let path = sanitize(redact_query(&request.path), MAX_VALUE_BYTES);
        let mut message = format!(
            "L7_REQUEST {} {method} {}{path}",
            decision.as_str(),
            facts.host_port()
        );
        if let Some(reason) = facts.reason() {
            message.push_str(" reason=");
            message.push_str(&reason);
        }
        let (action, disposition, severity, status) = match decision {
            HttpDecision::Deny => (
                Action::Denied,
                Disposition::Blocked,
                Severity::Medium,
                Status::Failure,
            ),
            HttpDecision::Allow | HttpDecision::Audit => (
                Action::Allowed,
                Disposition::Allowed,
                Severity::Informational,
                Status::Success,
            ),
        };
        let mut base = BaseEvent::new(
            HTTP_ACTIVITY,
            HttpActivityId::Other.id(),
            HttpActivityId::Other.caption(),
            severity,
            message,
            vec![SECURITY_CONTROL],
        );
        base.status = Some(status);
        facts.annotate(&mut base, Engine::L7);
        let hostname = facts
            .dst_host
            .as_deref()
            .map(|h| sanitize(h, MAX_VALUE_BYTES))
            .or_else(|| facts.dst_ip.map(|ip| ip.to_string()))
            .unwrap_or_default();
        Self {
            base,
            traffic: facts.traffic(action, disposition, "l7", false),
            http_request: HttpRequest {
                http_method: method,
                url: Url {
                    scheme: sanitize(&request.scheme, 16).to_ascii_lowercase(),
                    hostname,
                    path,
                    port: Some(facts.dst_port),
                },
            },
        }
    }

    /// An HTTP request was allowed by the L7 rules.
    pub fn allowed(facts: &ConnectionFacts, request: &HttpRequestFacts) -> Self {
        Self::decision(facts, request, HttpDecision::Allow)
    }

    /// An HTTP request was denied by the L7 rules.
    pub fn denied(facts: &ConnectionFacts, request: &HttpRequestFacts) -> Self {
        Self::decision(facts, request, HttpDecision::Deny)
    }

    /// An HTTP request would have been denied but the endpoint is in audit
    /// mode, so it was allowed.
    pub fn audited(facts: &ConnectionFacts, request: &HttpRequestFacts) -> Self {
        Self::decision(facts, request, HttpDecision::Audit)
    }
}

/// Identifies the policy a config event is about.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PolicyFacts {
    pub sandbox: String,
    /// Policy file the policy was read from.
    pub path: Option<String>,
    pub version: Option<String>,
    pub hash: Option<String>,
}

/// First load at start-up or a later reload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PolicyLoad {
    Initial,
    Reload,
}

impl ConfigStateChange {
    /// A config event with an explicit state and label (the label is what
    /// the shorthand prints: `CONFIG:<LABEL>`, e.g. `loaded`, `PROPOSED`).
    pub fn new(
        sandbox: &str,
        state: State,
        label: &str,
        severity: Severity,
        message: &str,
    ) -> Self {
        let activity = ConfigActivityId::Log;
        let mut base = BaseEvent::new(
            CONFIG_STATE_CHANGE,
            activity.id(),
            activity.caption(),
            severity,
            sanitize(message, MAX_DETAIL_BYTES),
            Vec::new(),
        );
        base.put("sandbox", Some(sandbox));
        // OCSF keeps `state` as the caption of `state_id`; the finer label
        // lives beside it.
        base.put("state_label", Some(label));
        Self { base, state }
    }

    fn with_policy(mut self, policy: &PolicyFacts) -> Self {
        self.base.put("policy_path", policy.path.as_deref());
        self.base.put("policy_version", policy.version.as_deref());
        self.base.put("policy_hash", policy.hash.as_deref());
        self
    }

    /// A policy was loaded and is now enforced.
    pub fn policy_loaded(policy: &PolicyFacts, load: PolicyLoad) -> Self {
        let verb = match load {
            PolicyLoad::Initial => "loaded",
            PolicyLoad::Reload => "reloaded",
        };
        let mut message = format!("Policy {verb} successfully");
        if let Some(hash) = &policy.hash {
            message.push_str(&format!(" [policy_hash:{hash}]"));
        }
        let mut event = Self::new(
            &policy.sandbox,
            State::Enabled,
            "loaded",
            Severity::Informational,
            &message,
        )
        .with_policy(policy);
        event.base.status = Some(Status::Success);
        event
    }

    /// A policy could not be loaded; `error` says why.
    pub fn policy_failed(policy: &PolicyFacts, error: &str) -> Self {
        let detail = sanitize(error, MAX_DETAIL_BYTES);
        let mut event = Self::new(
            &policy.sandbox,
            State::Other,
            "failed",
            Severity::High,
            &format!("Policy load failed: {detail}"),
        )
        .with_policy(policy);
        event.base.status = Some(Status::Failure);
        event.base.status_detail = Some(detail);
        event
    }
}

impl AppLifecycle {
    fn lifecycle(activity: LifecycleActivityId, message: &str) -> Self {
        let mut base = BaseEvent::new(
            APP_LIFECYCLE,
            activity.id(),
            activity.caption(),
            Severity::Informational,
            message.to_string(),
            Vec::new(),
        );
        base.status = Some(Status::Success);
        Self {
            base,
            app: Product::portcullis(),
        }
    }

    /// The Portcullis agent started. Agent-wide; add
    /// `.with_unmapped("sandbox", ..)` for a per-sandbox event.
    pub fn started() -> Self {
        Self::lifecycle(LifecycleActivityId::Start, "Portcullis started")
    }

    /// Portcullis stopped; `error` is the reason if it stopped on failure.
    pub fn stopped(error: Option<&str>) -> Self {
        let mut event = Self::lifecycle(LifecycleActivityId::Stop, "Portcullis stopped");
        if let Some(error) = error {
            let detail = sanitize(error, MAX_DETAIL_BYTES);
            event.base.message = format!("Portcullis stopped: {detail}");
            event.base.severity = Severity::High;
            event.base.status = Some(Status::Failure);
            event.base.status_detail = Some(detail);
        }
        event
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::net::Ipv4Addr;

    fn curl_facts() -> ConnectionFacts {
        ConnectionFacts {
            sandbox: "sb-1".into(),
            process: Some(ProcessFacts {
                binary: "/usr/bin/curl".into(),
                pid: 64,
                cmd_line: Some("curl https://httpbin.org/get?token=s3cret".into()),
                uid: Some(65534),
                ancestors: vec![("/bin/bash".into(), 10), ("/sbin/init".into(), 1)],
            }),
            src: Some(SocketAddr::from((Ipv4Addr::new(10, 0, 0, 2), 40000))),
            dst_host: Some("httpbin.org".into()),
            dst_ip: Some(IpAddr::V4(Ipv4Addr::new(1, 2, 3, 4))),
            dst_port: 443,
            protocol: Transport::Tcp,
            policy: None,
            rule: None,
            reason: Some("endpoint httpbin.org:443 is not allowed by any policy".into()),
            policy_version: Some("v3".into()),
            policy_hash: Some("abc123".into()),
        }
    }

    fn json_of(event: impl Into<AuditEvent>) -> Value {
        serde_json::to_value(event.into()).unwrap()
    }

    #[test]
    fn network_denied_has_ocsf_shape() {
        let v = json_of(NetworkActivity::denied(&curl_facts(), DenyCause::Policy).at(1_000));
        assert_eq!(v["class_uid"], 4001);
        assert_eq!(v["class_name"], "Network Activity");
        assert_eq!(v["category_uid"], 4);
        assert_eq!(v["activity_id"], 1);
        assert_eq!(v["activity_name"], "Open");
        assert_eq!(v["type_uid"], 400_101);
        assert_eq!(v["type_name"], "Network Activity: Open");
        assert_eq!(v["time"], 1_000);
        assert_eq!(v["severity_id"], 3);
        assert_eq!(v["severity"], "Medium");
        assert_eq!(v["status_id"], 2);
        assert_eq!(v["status"], "Failure");
        assert_eq!(v["action_id"], 2);
        assert_eq!(v["action"], "Denied");
        assert_eq!(v["disposition_id"], 2);
        assert_eq!(v["disposition"], "Blocked");
        assert_eq!(v["message"], "CONNECT denied httpbin.org:443");
        assert_eq!(
            v["status_detail"],
            "endpoint httpbin.org:443 is not allowed by any policy"
        );
        assert_eq!(v["metadata"]["version"], "1.8.0");
        assert_eq!(v["metadata"]["product"]["name"], "Portcullis");
        assert_eq!(v["metadata"]["product"]["vendor_name"], "Portcullis");
        assert_eq!(v["metadata"]["product"]["version"], PRODUCT_VERSION);
        assert_eq!(v["metadata"]["profiles"], json!(["security_control"]));
        assert_eq!(v["firewall_rule"], json!({"name": "-", "type": "opa"}));
        assert_eq!(
            v["dst_endpoint"],
            json!({"hostname": "httpbin.org", "domain": "httpbin.org", "ip": "1.2.3.4", "port": 443})
        );
        assert_eq!(v["src_endpoint"], json!({"ip": "10.0.0.2", "port": 40000}));
        assert!(v.get("connection_info").is_none());
        assert_eq!(v["is_src_dst_assignment_known"], true);
        assert_eq!(
            v["unmapped"],
            json!({"sandbox": "sb-1", "engine": "l4", "policy_version": "v3", "policy_hash": "abc123"})
        );
    }

    #[test]
    fn actor_carries_process_chain_and_redacted_cmd_line() {
        let v = json_of(NetworkActivity::denied(&curl_facts(), DenyCause::Policy));
        let p = &v["actor"]["process"];
        assert_eq!(p["name"], "/usr/bin/curl");
        assert_eq!(p["pid"], 64);
        assert_eq!(p["cmd_line"], "curl https://httpbin.org/get?[redacted]");
        assert_eq!(
            p["file"],
            json!({"name": "curl", "path": "/usr/bin/curl", "type_id": 1, "type": "Regular File"})
        );
        assert_eq!(p["user"], json!({"uid": "65534"}));
        assert_eq!(p["parent_process"]["name"], "/bin/bash");
        assert_eq!(p["parent_process"]["pid"], 10);
        assert_eq!(p["parent_process"]["parent_process"]["name"], "/sbin/init");
        assert!(
            p["parent_process"]["parent_process"]
                .get("parent_process")
                .is_none()
        );
    }

    #[test]
    fn absent_optionals_are_omitted() {
        let facts = ConnectionFacts {
            sandbox: "sb".into(),
            dst_ip: Some(IpAddr::V4(Ipv4Addr::new(1, 1, 1, 1))),
            dst_port: 53,
            ..ConnectionFacts::default()
        };
        let v = json_of(NetworkActivity::allowed(&facts, Inspection::L4Only));
        for key in ["actor", "src_endpoint", "status_detail"] {
            assert!(v.get(key).is_none(), "{key} should be omitted");
        }
        assert_eq!(v["dst_endpoint"], json!({"ip": "1.1.1.1", "port": 53}));
        assert!(v["metadata"].get("log_name").is_none());
        assert_eq!(v["message"], "CONNECT allowed 1.1.1.1:53");
        assert_eq!(v["status"], "Success");
    }

    #[test]
    fn allowed_with_l7_names_connect_l7() {
        let mut facts = curl_facts();
        facts.policy = Some("github".into());
        let v = json_of(NetworkActivity::allowed(&facts, Inspection::L7));
        assert_eq!(v["message"], "CONNECT_L7 allowed httpbin.org:443");
        assert_eq!(v["action"], "Allowed");
        assert_eq!(v["disposition"], "Allowed");
        assert_eq!(v["severity"], "Informational");
        assert_eq!(v["firewall_rule"], json!({"name": "github", "type": "opa"}));
    }

    #[test]
    fn ssrf_and_refusal_messages_follow_reference() {
        let facts = curl_facts();
        let e = NetworkActivity::denied(&facts, DenyCause::Ssrf(SsrfKind::InternalAddress));
        assert_eq!(
            e.base.message,
            "CONNECT blocked: internal address httpbin.org:443"
        );
        assert_eq!(e.traffic.firewall_rule.as_ref().unwrap().rule_type, "ssrf");
        let e = NetworkActivity::denied(&facts, DenyCause::Ssrf(SsrfKind::AllowedIpsCheckFailed));
        assert_eq!(
            e.base.message,
            "CONNECT blocked: allowed_ips check failed for httpbin.org:443"
        );
        let e = NetworkActivity::denied(&facts, DenyCause::TlsUnavailable);
        assert_eq!(e.base.severity, Severity::High);
        assert!(
            e.base
                .message
                .starts_with("CONNECT refused for httpbin.org:443: ")
        );
        assert_eq!(e.traffic.firewall_rule.as_ref().unwrap().rule_type, "tls");
    }

    #[test]
    fn kernel_refused_is_refuse_activity_with_transport() {
        let mut facts = curl_facts();
        facts.protocol = Transport::Udp;
        facts.dst_host = None;
        facts.reason = None;
        let v = json_of(NetworkActivity::kernel_refused(&facts));
        assert_eq!(v["activity_id"], 5);
        assert_eq!(v["activity_name"], "Refuse");
        assert_eq!(v["type_uid"], 400_105);
        assert_eq!(v["action"], "Denied");
        assert_eq!(v["disposition"], "Blocked");
        assert_eq!(v["severity"], "Medium");
        assert_eq!(
            v["connection_info"],
            json!({"protocol_name": "udp", "protocol_num": 17, "direction_id": 2, "direction": "Outbound"})
        );
        assert_eq!(v["firewall_rule"], json!({"name": "-", "type": "ebpf"}));
        assert_eq!(v["unmapped"]["engine"], "kernel");
        assert_eq!(
            v["message"],
            "udp connection to 1.2.3.4:443 refused by kernel"
        );
        assert!(v.get("status_detail").is_none());
    }

    #[test]
    fn ipv6_destinations_are_bracketed() {
        let facts = ConnectionFacts {
            dst_ip: Some("2001:db8::1".parse().unwrap()),
            dst_port: 443,
            ..ConnectionFacts::default()
        };
        let e = NetworkActivity::denied(&facts, DenyCause::Policy);
        assert_eq!(e.base.message, "CONNECT denied [2001:db8::1]:443");
    }

    #[test]
    fn http_denied_has_ocsf_shape_and_no_query() {
        let mut facts = curl_facts();
        facts.dst_host = Some("api.github.com".into());
        facts.policy = Some("github_api_readonly".into());
        facts.reason = Some("PUT /repos/o/r/contents/x not permitted by policy".into());
        let req = HttpRequestFacts {
            method: "put".into(),
            scheme: "http".into(),
            path: "/repos/o/r/contents/x?access_token=s3cret".into(),
        };
        let v = json_of(HttpActivity::denied(&facts, &req));
        assert_eq!(v["class_uid"], 4002);
        assert_eq!(v["class_name"], "HTTP Activity");
        assert_eq!(v["category_uid"], 4);
        assert_eq!(v["activity_id"], 99);
        assert_eq!(v["type_uid"], 400_299);
        assert_eq!(v["action_id"], 2);
        assert_eq!(v["severity"], "Medium");
        assert_eq!(
            v["http_request"],
            json!({"http_method": "PUT", "url": {"scheme": "http", "hostname": "api.github.com", "path": "/repos/o/r/contents/x", "port": 443}})
        );
        assert_eq!(
            v["firewall_rule"],
            json!({"name": "github_api_readonly", "type": "l7"})
        );
        assert_eq!(
            v["message"],
            "L7_REQUEST deny PUT api.github.com:443/repos/o/r/contents/x reason=PUT /repos/o/r/contents/x not permitted by policy"
        );
        assert_eq!(v["unmapped"]["engine"], "l7");
        let text = v.to_string();
        assert!(!text.contains("s3cret"), "secret leaked: {text}");
        assert!(!text.contains("access_token"), "query leaked: {text}");
    }

    #[test]
    fn http_audit_is_allowed() {
        let req = HttpRequestFacts {
            method: "GET".into(),
            scheme: "https".into(),
            path: "/".into(),
        };
        let e = HttpActivity::audited(&curl_facts(), &req);
        assert_eq!(e.traffic.action, Action::Allowed);
        assert!(e.base.message.starts_with("L7_REQUEST audit GET "));
    }

    #[test]
    fn config_events_have_ocsf_shape() {
        let policy = PolicyFacts {
            sandbox: "sb-1".into(),
            path: Some("/etc/portcullis/policy.yaml".into()),
            version: Some("v4".into()),
            hash: Some("deadbeef".into()),
        };
        let v = json_of(ConfigStateChange::policy_loaded(
            &policy,
            PolicyLoad::Reload,
        ));
        assert_eq!(v["class_uid"], 5019);
        assert_eq!(v["class_name"], "Device Config State Change");
        assert_eq!(v["category_uid"], 5);
        assert_eq!(v["activity_id"], 1);
        assert_eq!(v["type_uid"], 501_901);
        assert_eq!(v["state_id"], 2);
        assert_eq!(v["state"], "Enabled");
        assert_eq!(v["status"], "Success");
        assert_eq!(v["severity"], "Informational");
        assert_eq!(
            v["message"],
            "Policy reloaded successfully [policy_hash:deadbeef]"
        );
        assert_eq!(v["unmapped"]["state_label"], "loaded");
        assert_eq!(v["unmapped"]["policy_version"], "v4");
        assert_eq!(v["unmapped"]["policy_path"], "/etc/portcullis/policy.yaml");
        assert!(v["metadata"].get("profiles").is_none());

        let v = json_of(ConfigStateChange::policy_failed(
            &policy,
            "line 3: unknown key `hots`\nhint",
        ));
        assert_eq!(v["state_id"], 99);
        assert_eq!(v["state"], "Other");
        assert_eq!(v["status"], "Failure");
        assert_eq!(v["severity"], "High");
        assert_eq!(v["status_detail"], "line 3: unknown key `hots` hint");
        assert_eq!(
            v["message"],
            "Policy load failed: line 3: unknown key `hots` hint"
        );
        assert_eq!(v["unmapped"]["state_label"], "failed");
    }

    #[test]
    fn lifecycle_events_have_ocsf_shape() {
        let v = json_of(AppLifecycle::started());
        assert_eq!(v["class_uid"], 6002);
        assert_eq!(v["class_name"], "Application Lifecycle");
        assert_eq!(v["category_uid"], 6);
        assert_eq!(v["activity_id"], 3);
        assert_eq!(v["activity_name"], "Start");
        assert_eq!(v["type_uid"], 600_203);
        assert_eq!(v["app"]["name"], "Portcullis");
        assert_eq!(v["status"], "Success");

        let v = json_of(AppLifecycle::stopped(Some("netns gone")));
        assert_eq!(v["activity_id"], 4);
        assert_eq!(v["type_uid"], 600_204);
        assert_eq!(v["status"], "Failure");
        assert_eq!(v["status_detail"], "netns gone");
        assert_eq!(v["message"], "Portcullis stopped: netns gone");
    }

    #[test]
    fn hostile_values_cannot_break_lines() {
        let mut facts = curl_facts();
        facts.dst_host = Some("evil\n2026-01-01T00:00:00.000Z OCSF NET:OPEN".into());
        let e = NetworkActivity::denied(&facts, DenyCause::Policy);
        assert!(!e.base.message.contains('\n'));
        let json = AuditEvent::from(e).to_json().unwrap();
        assert!(!json.contains('\n'));
    }

    #[test]
    fn with_unmapped_and_at_builders() {
        let e = AppLifecycle::started().at(42).with_unmapped("k", 7);
        assert_eq!(e.base.time, 42);
        assert_eq!(e.base.unmapped["k"], 7);
    }

    #[test]
    fn url_display_omits_only_default_ports() {
        let url = |scheme: &str, port| Url {
            scheme: scheme.into(),
            hostname: "h".into(),
            path: "/p".into(),
            port: Some(port),
        };
        assert_eq!(url("http", 80).display(), "http://h/p");
        assert_eq!(url("https", 443).display(), "https://h/p");
        assert_eq!(url("http", 443).display(), "http://h:443/p");
        assert_eq!(url("https", 8443).display(), "https://h:8443/p");
    }
}
