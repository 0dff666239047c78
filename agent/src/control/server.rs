//! Serving the control plane on `<run_dir>/control.sock` (mode 0600).
//! A peer inside a sandbox cgroup is refused before any RPC: no sandbox may
//! manage sandboxes, or later, approve its own proposals.

use std::{os::unix::fs::PermissionsExt, sync::Arc};

use anyhow::{Context, Result};
use tokio::{net::UnixListener, task::JoinHandle};
use tokio_stream::{StreamExt, wrappers::ReceiverStream};
use tonic::{Request, Response, Status};

use super::pb::{self, control_server::ControlServer};
use crate::{
    daemon::{
        Agent, SandboxView,
        drafts::{self, OpError},
        policies::{Revision, Snapshot},
        sandboxes::{self, NewSandbox},
    },
    datapath::COUNTER_NAMES,
    drafts::{
        Chunk, ChunkStatus,
        engine::{self, DraftError},
    },
    sandbox::cgroup,
    store::ApprovalMode,
};

pub async fn serve(agent: Arc<Agent>) -> Result<JoinHandle<()>> {
    let path = agent.config.control_socket();
    match std::fs::remove_file(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("removing stale {}", path.display())),
    }
    let listener =
        UnixListener::bind(&path).with_context(|| format!("binding {}", path.display()))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    let incoming = unix_incoming(listener, agent.clone());
    if let Some(tcp) = &agent.config.control_tcp {
        serve_tcp(agent.clone(), tcp)?;
    }
    let service = ControlServer::new(ControlService { agent });
    Ok(tokio::spawn(async move {
        if let Err(e) = tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(incoming)
            .await
        {
            log::error!("control plane stopped: {e}");
        }
    }))
}

/// The remote-operator listener: mutual TLS, so only holders of a
/// certificate from `client_ca` get in.
fn serve_tcp(agent: Arc<Agent>, tcp: &crate::config::ControlTcp) -> Result<()> {
    use tonic::transport::{Certificate, Identity, ServerTlsConfig};
    let read = |p: &std::path::Path, what: &str| {
        std::fs::read(p).with_context(|| format!("control_tcp.{what}: cannot read {}", p.display()))
    };
    let tls = ServerTlsConfig::new()
        .identity(Identity::from_pem(
            read(&tcp.cert, "cert")?,
            read(&tcp.key, "key")?,
        ))
        .client_ca_root(Certificate::from_pem(read(&tcp.client_ca, "client_ca")?));
    let server = tonic::transport::Server::builder()
        .tls_config(tls)
        .context("control_tcp: invalid certificate, key or client CA")?;
    let listener = std::net::TcpListener::bind(tcp.listen)
        .with_context(|| format!("control_tcp.listen: cannot bind {}", tcp.listen))?;
    listener.set_nonblocking(true)?;
    let listener = tokio::net::TcpListener::from_std(listener)?;
    log::info!("control plane also on {} (mutual TLS)", tcp.listen);
    let incoming = tcp_incoming(listener);
    let mut server = server;
    tokio::spawn(async move {
        if let Err(e) = server
            .add_service(ControlServer::new(ControlService { agent }))
            .serve_with_incoming(incoming)
            .await
        {
            log::error!("remote control listener stopped: {e}");
        }
    });
    Ok(())
}

/// Local operators' connections, from peers `peer_allowed` admits.
fn unix_incoming(
    listener: UnixListener,
    agent: Arc<Agent>,
) -> ReceiverStream<std::io::Result<tokio::net::UnixStream>> {
    let listener = Arc::new(listener);
    crate::accept::incoming("control socket", move || {
        let (listener, agent) = (listener.clone(), agent.clone());
        async move {
            let (stream, _) = listener.accept().await?;
            Ok(peer_allowed(&agent, &stream).then_some(stream))
        }
    })
}

/// Remote operators' connections (mutual TLS follows in tonic).
fn tcp_incoming(
    listener: tokio::net::TcpListener,
) -> ReceiverStream<std::io::Result<tokio::net::TcpStream>> {
    let listener = Arc::new(listener);
    crate::accept::incoming("remote control listener", move || {
        let listener = listener.clone();
        async move { Ok(Some(listener.accept().await?.0)) }
    })
}

fn peer_allowed(agent: &Agent, stream: &tokio::net::UnixStream) -> bool {
    let Ok(cred) = stream.peer_cred() else {
        return false;
    };
    let Some(pid) = cred.pid() else { return false };
    let Some(path) = cgroup::process_cgroup(pid as u32) else {
        return false;
    };
    let sandboxed = agent
        .sandboxes
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .is_sandboxed_cgroup(&path);
    if sandboxed {
        log::warn!("refused control connection from pid {pid}: it runs inside a sandbox");
    }
    !sandboxed
}

struct ControlService {
    agent: Arc<Agent>,
}

impl ControlService {
    async fn create(&self, req: NewSandbox) -> Result<Response<pb::Sandbox>, Status> {
        let view = sandboxes::create(&self.agent, req).await.map_err(failed)?;
        Ok(Response::new(to_pb(&self.agent, &view)))
    }
}

/// Who made a control call, for the draft history.
fn actor<T>(req: &Request<T>) -> String {
    let uid = req
        .extensions()
        .get::<tonic::transport::server::UdsConnectInfo>()
        .and_then(|i| i.peer_cred)
        .map(|c| c.uid());
    match uid {
        Some(uid) => format!("operator:uid={uid}"),
        None => req
            .peer_certs()
            .and_then(|certs| certs.first().map(|c| remote_subject(c.as_ref())))
            .map_or_else(|| "operator".into(), |s| format!("operator:{s}")),
    }
}

/// The subject of a remote operator's certificate, for the history.
fn remote_subject(der: &[u8]) -> String {
    x509_parser::parse_x509_certificate(der)
        .map(|(_, cert)| cert.subject().to_string())
        .unwrap_or_else(|_| "remote".into())
}

fn approval_mode(text: &str) -> Result<ApprovalMode, Status> {
    if text.is_empty() {
        return Ok(ApprovalMode::Manual);
    }
    ApprovalMode::parse(text).map_err(|e| Status::invalid_argument(e.to_string()))
}

fn op_status(e: OpError) -> Status {
    match e {
        OpError::Draft(DraftError::NotFound(m)) => Status::not_found(m),
        OpError::Draft(DraftError::FailedPrecondition(m)) => Status::failed_precondition(m),
        OpError::Draft(DraftError::InvalidArgument(m)) => Status::invalid_argument(m),
        OpError::Internal(e) => Status::internal(format!("{e:#}")),
    }
}

/// A chunk as operators see it; security notes recomputed on every read.
pub fn chunk_pb(c: &Chunk) -> pb::DraftChunk {
    pb::DraftChunk {
        id: c.id.clone(),
        status: c.status.as_str().to_string(),
        rule_name: c.rule_name.clone(),
        proposed_rule_json: c.proposed_rule.to_string(),
        rationale: c.rationale.clone(),
        security_notes: crate::drafts::engine::security_notes(c).join(" "),
        confidence: c.confidence as f32,
        created_at_ms: c.created_at_ms,
        decided_at_ms: c.decided_at_ms.unwrap_or_default(),
        stage: c.stage.clone(),
        hit_count: c.hit_count,
        first_seen_ms: c.first_seen_ms,
        last_seen_ms: c.last_seen_ms,
        binary: c.binary.clone(),
        validation_result: c.validation_result.clone(),
        rejection_reason: c.rejection_reason.clone(),
        application_error: c.application_error.clone(),
        review_token: c.review_token.clone(),
        current_effective_policy_hash: c.current_effective_policy_hash.clone(),
        candidate_effective_policy_hash: c.candidate_effective_policy_hash.clone(),
        sandbox: c.sandbox.clone(),
        analysis_mode: c.analysis_mode.clone(),
        approved_policy_version: c.approved_policy_version.unwrap_or_default(),
        provider_name: c
            .provider_request
            .as_ref()
            .map(|r| r.name.clone())
            .unwrap_or_default(),
        provider_type: c
            .provider_request
            .as_ref()
            .map(|r| r.provider_type.clone())
            .unwrap_or_default(),
        decided_by: c.decided_by.clone(),
    }
}

fn sandbox_view(agent: &Agent, name: &str) -> Result<SandboxView, Status> {
    agent.sandbox(name).ok_or_else(|| {
        Status::not_found(format!(
            "no sandbox named `{name}` (see `portcullis sandbox list`)"
        ))
    })
}

/// The revision in force, as a reply to a decision.
fn current_pb(agent: &Agent, name: &str) -> Result<pb::PolicyRevision, Status> {
    Ok(snapshot_pb(name, &sandbox_view(agent, name)?.snapshot()))
}

fn to_pb(agent: &Agent, view: &SandboxView) -> pb::Sandbox {
    let snapshot = view.snapshot();
    pb::Sandbox {
        name: view.record.name.to_string(),
        id: view.record.id,
        cgroup_path: view.record.cgroup_path.display().to_string(),
        cgroup_id: view.cgroup_id,
        adopted: view.record.adopted,
        links_attached: view.links,
        policy: if snapshot.version == 0 {
            String::new()
        } else {
            snapshot.source.clone()
        },
        created_unix: view.record.created_unix,
        trust_bundle: agent.config.trust_bundle().display().to_string(),
        policy_version: snapshot.version,
        policy_hash: snapshot.hash.clone(),
        approval_mode: view.approval_mode.as_str().to_string(),
    }
}

fn revision_pb(sandbox: &str, rev: &Revision) -> pb::PolicyRevision {
    pb::PolicyRevision {
        sandbox: sandbox.to_string(),
        version: rev.version,
        hash: rev.hash.clone(),
        status: rev.status.as_str().to_string(),
        source: rev.source.clone(),
        created_unix_ms: rev.created_unix_ms,
        error: rev.error.clone().unwrap_or_default(),
        ..Default::default()
    }
}

fn snapshot_pb(sandbox: &str, snapshot: &Snapshot) -> pb::PolicyRevision {
    pb::PolicyRevision {
        sandbox: sandbox.to_string(),
        version: snapshot.version,
        hash: snapshot.hash.clone(),
        status: if snapshot.version == 0 {
            "default (deny all)".into()
        } else {
            "loaded".into()
        },
        source: snapshot.source.clone(),
        rules: snapshot.policy.rule_count() as u32,
        warnings: snapshot.policy.warnings().to_vec(),
        ..Default::default()
    }
}

/// The full error chain goes to the caller: it names the input and the fix.
/// The code only separates what scripts branch on.
fn failed(e: anyhow::Error) -> Status {
    let text = format!("{e:#}");
    if text.starts_with("no sandbox named") {
        Status::not_found(text)
    } else if text.contains("already exists") {
        Status::already_exists(text)
    } else {
        Status::failed_precondition(text)
    }
}

#[tonic::async_trait]
impl pb::control_server::Control for ControlService {
    async fn status(
        &self,
        _: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusReply>, Status> {
        let agent = &self.agent;
        let (counters, links, map_entries) = {
            let dp = agent.datapath.lock().unwrap_or_else(|p| p.into_inner());
            (dp.counters(), dp.links_pinned(), dp.map_entries())
        };
        let s = &agent.stats;
        let load = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
        Ok(Response::new(pb::StatusReply {
            version: env!("CARGO_PKG_VERSION").into(),
            pid: std::process::id(),
            uptime_seconds: agent.started.elapsed().as_secs(),
            programs_attached: links,
            sandboxes: agent
                .sandboxes
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .len() as u32,
            connections_active: load(&s.connections_active),
            connections_total: load(&s.connections_total),
            connections_denied: load(&s.connections_denied),
            lookup_misses: load(&s.lookup_misses),
            proposals_rate_limited: load(&s.proposals_rate_limited),
            kernel: COUNTER_NAMES
                .iter()
                .zip(counters)
                .map(|(name, value)| pb::KernelCounter {
                    name: name.to_string(),
                    value,
                })
                .collect(),
            audit_dropped: agent.audit.dropped(),
            audit_lost: agent.audit.lost(),
            map_entries: map_entries
                .into_iter()
                .map(|(name, value)| pb::KernelCounter {
                    name: name.to_string(),
                    value,
                })
                .collect(),
            proxy_listen: agent
                .proxy_addrs
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(" "),
            dns_listen: agent
                .dns_addrs
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(" "),
            kernel_denials_seen: load(&s.kernel_denials_seen),
        }))
    }

    async fn create_sandbox(
        &self,
        req: Request<pb::CreateSandboxRequest>,
    ) -> Result<Response<pb::Sandbox>, Status> {
        let req = req.into_inner();
        self.create(NewSandbox {
            name: req.name,
            adopt: None,
            policy_yaml: Some(req.policy_yaml),
            policy_source: Some(req.policy_source).filter(|s| !s.is_empty()),
            approval_mode: approval_mode(&req.approval_mode)?,
        })
        .await
    }

    async fn adopt_sandbox(
        &self,
        req: Request<pb::AdoptSandboxRequest>,
    ) -> Result<Response<pb::Sandbox>, Status> {
        let req = req.into_inner();
        self.create(NewSandbox {
            name: req.name,
            adopt: Some(req.cgroup_path.into()),
            policy_yaml: Some(req.policy_yaml),
            policy_source: Some(req.policy_source).filter(|s| !s.is_empty()),
            approval_mode: ApprovalMode::Manual,
        })
        .await
    }

    async fn delete_sandbox(
        &self,
        req: Request<pb::DeleteSandboxRequest>,
    ) -> Result<Response<pb::DeleteSandboxReply>, Status> {
        let name = req.into_inner().name;
        let killed = sandboxes::delete(&self.agent, &name)
            .await
            .map_err(failed)?;
        Ok(Response::new(pb::DeleteSandboxReply {
            processes_killed: killed,
        }))
    }

    async fn list_sandboxes(
        &self,
        _: Request<pb::ListSandboxesRequest>,
    ) -> Result<Response<pb::ListSandboxesReply>, Status> {
        let index = self
            .agent
            .sandboxes
            .read()
            .unwrap_or_else(|p| p.into_inner());
        let mut sandboxes: Vec<pb::Sandbox> = index.list().map(|v| to_pb(&self.agent, v)).collect();
        sandboxes.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(Response::new(pb::ListSandboxesReply { sandboxes }))
    }

    async fn get_sandbox(
        &self,
        req: Request<pb::GetSandboxRequest>,
    ) -> Result<Response<pb::Sandbox>, Status> {
        let name = req.into_inner().name;
        let index = self
            .agent
            .sandboxes
            .read()
            .unwrap_or_else(|p| p.into_inner());
        match index.get(&name) {
            Some(view) => Ok(Response::new(to_pb(&self.agent, view))),
            None => Err(Status::not_found(format!(
                "no sandbox named `{name}` (see `portcullis sandbox list`)"
            ))),
        }
    }

    async fn set_policy(
        &self,
        req: Request<pb::SetPolicyRequest>,
    ) -> Result<Response<pb::PolicyRevision>, Status> {
        let req = req.into_inner();
        let sandbox = req.sandbox.clone();
        let source = if req.source.is_empty() {
            "policy set".to_string()
        } else {
            req.source
        };
        let set = sandboxes::set_policy(&self.agent, &req.sandbox, &source, &req.policy_yaml)
            .await
            .map_err(failed)?;
        let mut reply = snapshot_pb(&sandbox, &set.snapshot);
        reply.unchanged = set.unchanged;
        Ok(Response::new(reply))
    }

    async fn get_policy(
        &self,
        req: Request<pb::GetPolicyRequest>,
    ) -> Result<Response<pb::GetPolicyReply>, Status> {
        let req = req.into_inner();
        let snapshot = sandbox_view(&self.agent, &req.sandbox)?.snapshot();
        let mut reply = pb::GetPolicyReply {
            revision: Some(snapshot_pb(&req.sandbox, &snapshot)),
            ..Default::default()
        };
        if req.full {
            reply.yaml = self
                .agent
                .store
                .current_revision(&req.sandbox)
                .await
                .map_err(|e| Status::internal(e.to_string()))?
                .and_then(|r| r.yaml)
                .unwrap_or_default();
            reply.canonical_json =
                serde_json::to_string_pretty(&snapshot.policy.canonical_json()).unwrap_or_default();
        }
        Ok(Response::new(reply))
    }

    async fn list_policies(
        &self,
        _: Request<pb::ListPoliciesRequest>,
    ) -> Result<Response<pb::ListPoliciesReply>, Status> {
        let index = self
            .agent
            .sandboxes
            .read()
            .unwrap_or_else(|p| p.into_inner());
        let mut policies: Vec<pb::PolicyRevision> = index
            .list()
            .map(|v| snapshot_pb(v.record.name.as_str(), &v.snapshot()))
            .collect();
        policies.sort_by(|a, b| a.sandbox.cmp(&b.sandbox));
        Ok(Response::new(pb::ListPoliciesReply { policies }))
    }

    async fn policy_history(
        &self,
        req: Request<pb::PolicyHistoryRequest>,
    ) -> Result<Response<pb::PolicyHistoryReply>, Status> {
        let sandbox = req.into_inner().sandbox;
        let revisions = sandboxes::history(&self.agent, &sandbox)
            .await
            .map_err(failed)?;
        Ok(Response::new(pb::PolicyHistoryReply {
            revisions: revisions.iter().map(|r| revision_pb(&sandbox, r)).collect(),
        }))
    }

    async fn set_approval_mode(
        &self,
        req: Request<pb::SetApprovalModeRequest>,
    ) -> Result<Response<pb::Sandbox>, Status> {
        let req = req.into_inner();
        let mode = ApprovalMode::parse(&req.approval_mode)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let view = sandboxes::set_approval_mode(&self.agent, &req.sandbox, mode)
            .await
            .map_err(failed)?;
        Ok(Response::new(to_pb(&self.agent, &view)))
    }

    async fn get_draft_policy(
        &self,
        req: Request<pb::GetDraftPolicyRequest>,
    ) -> Result<Response<pb::GetDraftPolicyReply>, Status> {
        let req = req.into_inner();
        let view = sandbox_view(&self.agent, &req.sandbox)?;
        let status = match req.status_filter.as_str() {
            "" => None,
            s => Some(ChunkStatus::parse(s).ok_or_else(|| {
                Status::invalid_argument(format!("status `{s}`: use pending, approved or rejected"))
            })?),
        };
        let chunks = self
            .agent
            .store
            .chunks(&req.sandbox, status)
            .await
            .map_err(|e| Status::internal(e.to_string()))?;
        let snapshot = view.snapshot();
        Ok(Response::new(pb::GetDraftPolicyReply {
            draft_version: snapshot.version + 1,
            last_analyzed_at_ms: chunks.iter().map(|c| c.created_at_ms).max().unwrap_or(0),
            chunks: chunks.iter().map(chunk_pb).collect(),
            policy_version: snapshot.version,
            approval_mode: view.approval_mode.as_str().to_string(),
        }))
    }

    async fn approve_draft_chunk(
        &self,
        req: Request<pb::ApproveDraftChunkRequest>,
    ) -> Result<Response<pb::PolicyRevision>, Status> {
        let actor = actor(&req);
        let req = req.into_inner();
        drafts::decide(&self.agent, &req.sandbox, |s| {
            engine::approve(s, &req.chunk_id, &req.review_token, &actor)
        })
        .await
        .map_err(op_status)?;
        Ok(Response::new(current_pb(&self.agent, &req.sandbox)?))
    }

    async fn reject_draft_chunk(
        &self,
        req: Request<pb::RejectDraftChunkRequest>,
    ) -> Result<Response<pb::RejectDraftChunkReply>, Status> {
        let actor = actor(&req);
        let req = req.into_inner();
        let before = sandbox_view(&self.agent, &req.sandbox)?.snapshot().version;
        drafts::decide(&self.agent, &req.sandbox, |s| {
            engine::reject(s, &req.chunk_id, &req.reason, &actor)
        })
        .await
        .map_err(op_status)?;
        self.decided(&req.sandbox, &req.chunk_id, before).await
    }

    async fn undo_draft_chunk(
        &self,
        req: Request<pb::UndoDraftChunkRequest>,
    ) -> Result<Response<pb::RejectDraftChunkReply>, Status> {
        let actor = actor(&req);
        let req = req.into_inner();
        let before = sandbox_view(&self.agent, &req.sandbox)?.snapshot().version;
        drafts::decide(&self.agent, &req.sandbox, |s| {
            engine::undo(s, &req.chunk_id, &actor)
        })
        .await
        .map_err(op_status)?;
        self.decided(&req.sandbox, &req.chunk_id, before).await
    }

    async fn approve_all_draft_chunks(
        &self,
        req: Request<pb::ApproveAllDraftChunksRequest>,
    ) -> Result<Response<pb::ApproveAllDraftChunksReply>, Status> {
        let actor = actor(&req);
        let req = req.into_inner();
        let approvals: Vec<(String, String)> = req
            .approvals
            .into_iter()
            .map(|a| (a.chunk_id, a.review_token))
            .collect();
        let summary = drafts::approve_all(
            &self.agent,
            &req.sandbox,
            req.include_security_flagged,
            &approvals,
            &actor,
        )
        .await
        .map_err(op_status)?;
        let revision = if summary.approved.is_empty() {
            None
        } else {
            Some(current_pb(&self.agent, &req.sandbox)?)
        };
        Ok(Response::new(pb::ApproveAllDraftChunksReply {
            revision,
            chunks_approved: summary.approved.len() as u32,
            chunks_skipped: summary.skipped.len() as u32,
            skipped: summary
                .skipped
                .into_iter()
                .map(|(chunk_id, reason)| pb::SkippedChunk { chunk_id, reason })
                .collect(),
        }))
    }

    async fn clear_draft_chunks(
        &self,
        req: Request<pb::ClearDraftChunksRequest>,
    ) -> Result<Response<pb::ClearDraftChunksReply>, Status> {
        let actor = actor(&req);
        let sandbox = req.into_inner().sandbox;
        let cleared = drafts::clear(&self.agent, &sandbox, &actor)
            .await
            .map_err(op_status)?;
        Ok(Response::new(pb::ClearDraftChunksReply {
            chunks_cleared: cleared as u32,
        }))
    }

    async fn get_draft_history(
        &self,
        req: Request<pb::GetDraftHistoryRequest>,
    ) -> Result<Response<pb::GetDraftHistoryReply>, Status> {
        let sandbox = req.into_inner().sandbox;
        sandbox_view(&self.agent, &sandbox)?;
        let entries = self
            .agent
            .store
            .history(&sandbox)
            .await
            .map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(pb::GetDraftHistoryReply {
            entries: entries
                .into_iter()
                .map(|e| pb::DraftHistoryEntry {
                    timestamp_ms: e.timestamp_ms,
                    event_type: e.event_type,
                    description: e.description,
                    chunk_id: e.chunk_id,
                    actor: e.actor,
                })
                .collect(),
        }))
    }

    async fn create_provider(
        &self,
        req: Request<pb::CreateProviderRequest>,
    ) -> Result<Response<pb::Provider>, Status> {
        let req = req.into_inner();
        let record = crate::daemon::providers::create(
            &self.agent,
            &req.name,
            &req.r#type,
            values(req.credentials)?,
        )
        .await
        .map_err(failed)?;
        Ok(Response::new(self.provider_pb(&record)))
    }

    async fn update_provider(
        &self,
        req: Request<pb::UpdateProviderRequest>,
    ) -> Result<Response<pb::Provider>, Status> {
        let req = req.into_inner();
        let record =
            crate::daemon::providers::update(&self.agent, &req.name, values(req.set)?, req.remove)
                .await
                .map_err(failed)?;
        Ok(Response::new(self.provider_pb(&record)))
    }

    async fn delete_provider(
        &self,
        req: Request<pb::DeleteProviderRequest>,
    ) -> Result<Response<pb::DeleteProviderReply>, Status> {
        crate::daemon::providers::delete(&self.agent, &req.into_inner().name)
            .await
            .map_err(failed)?;
        Ok(Response::new(pb::DeleteProviderReply {}))
    }

    async fn get_provider(
        &self,
        req: Request<pb::GetProviderRequest>,
    ) -> Result<Response<pb::Provider>, Status> {
        let name = req.into_inner().name;
        let record = self.agent.providers().provider(&name).cloned();
        match record {
            Some(record) => Ok(Response::new(self.provider_pb(&record))),
            None => Err(Status::not_found(format!(
                "provider '{name}' not found (see `portcullis provider list`)"
            ))),
        }
    }

    async fn list_providers(
        &self,
        _: Request<pb::ListProvidersRequest>,
    ) -> Result<Response<pb::ListProvidersReply>, Status> {
        let records: Vec<_> = self.agent.providers().providers().cloned().collect();
        Ok(Response::new(pb::ListProvidersReply {
            providers: records.iter().map(|r| self.provider_pb(r)).collect(),
        }))
    }

    async fn attach_provider(
        &self,
        req: Request<pb::AttachProviderRequest>,
    ) -> Result<Response<pb::AttachProviderReply>, Status> {
        self.attachment(req.into_inner(), true).await
    }

    async fn detach_provider(
        &self,
        req: Request<pb::AttachProviderRequest>,
    ) -> Result<Response<pb::AttachProviderReply>, Status> {
        self.attachment(req.into_inner(), false).await
    }

    async fn list_sandbox_providers(
        &self,
        req: Request<pb::ListSandboxProvidersRequest>,
    ) -> Result<Response<pb::ListProvidersReply>, Status> {
        let sandbox = req.into_inner().sandbox;
        sandbox_view(&self.agent, &sandbox)?;
        let records: Vec<_> = {
            let cache = self.agent.providers();
            cache
                .attached_names(&sandbox)
                .iter()
                .filter_map(|n| cache.provider(n).cloned())
                .collect()
        };
        Ok(Response::new(pb::ListProvidersReply {
            providers: records.iter().map(|r| self.provider_pb(r)).collect(),
        }))
    }

    async fn edit_draft_chunk(
        &self,
        req: Request<pb::EditDraftChunkRequest>,
    ) -> Result<Response<pb::DraftChunk>, Status> {
        let actor = actor(&req);
        let req = req.into_inner();
        let rule: serde_json::Value = serde_json::from_str(&req.proposed_rule_json)
            .map_err(|e| Status::invalid_argument(format!("the edited rule is not JSON: {e}")))?;
        drafts::decide(&self.agent, &req.sandbox, |s| {
            engine::edit(s, &req.chunk_id, &rule, &actor)
        })
        .await
        .map_err(op_status)?;
        let chunk = drafts::chunk(&self.agent, &req.sandbox, &req.chunk_id)
            .await
            .map_err(|e| Status::internal(format!("{e:#}")))?
            .ok_or_else(|| Status::not_found("the chunk was deleted meanwhile"))?;
        Ok(Response::new(chunk_pb(&chunk)))
    }

    async fn sandbox_activity(
        &self,
        req: Request<pb::SandboxActivityRequest>,
    ) -> Result<Response<pb::SandboxActivityReply>, Status> {
        use crate::local_api::denials::{Lines, read_log};
        let req = req.into_inner();
        sandbox_view(&self.agent, &req.sandbox)?;
        let dir = crate::audit::writer::sandbox_log_dir(&self.agent.config.log_dir, &req.sandbox);
        let last = (req.last as usize).clamp(1, 100);
        let (events, denials) = tokio::task::spawn_blocking(move || {
            (
                read_log(&dir, last, Lines::Events),
                read_log(&dir, 100, Lines::Denied),
            )
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))?;
        let cutoff = crate::audit::event::now_ms() - 5 * 60 * 1000;
        let recent = denials
            .denials
            .iter()
            .filter(|l| line_time_ms(l).is_some_and(|t| t >= cutoff))
            .count() as u32;
        let newest_last = |mut v: Vec<String>| {
            v.reverse();
            v
        };
        Ok(Response::new(pb::SandboxActivityReply {
            events: newest_last(events.denials),
            denials: newest_last(denials.denials),
            denials_last_5m: recent,
        }))
    }

    type WatchDraftsStream = std::pin::Pin<
        Box<dyn tokio_stream::Stream<Item = Result<pb::DraftUpdate, Status>> + Send + 'static>,
    >;

    async fn watch_drafts(
        &self,
        req: Request<pb::WatchDraftsRequest>,
    ) -> Result<Response<Self::WatchDraftsStream>, Status> {
        let filter = req.into_inner().sandbox;
        // Subscribe first, then read what is pending: nothing falls between.
        let live = self.agent.drafts.subscribe();
        let names: Vec<String> = if filter.is_empty() {
            let index = self
                .agent
                .sandboxes
                .read()
                .unwrap_or_else(|p| p.into_inner());
            index.list().map(|v| v.record.name.to_string()).collect()
        } else {
            sandbox_view(&self.agent, &filter)?;
            vec![filter.clone()]
        };
        let mut pending = Vec::new();
        for name in names {
            let chunks = self
                .agent
                .store
                .chunks(&name, Some(ChunkStatus::Pending))
                .await
                .map_err(|e| Status::internal(e.to_string()))?;
            pending.extend(chunks.into_iter().rev().map(|c| {
                Ok(pb::DraftUpdate {
                    sandbox: name.clone(),
                    chunk: Some(chunk_pb(&c)),
                    change: "snapshot".into(),
                })
            }));
        }
        let updates = tokio_stream::wrappers::BroadcastStream::new(live).filter_map(move |u| {
            match u {
                Ok(u) if filter.is_empty() || u.sandbox == filter => Some(Ok(pb::DraftUpdate {
                    sandbox: u.sandbox,
                    chunk: Some(chunk_pb(&u.chunk)),
                    change: u.change.to_string(),
                })),
                Ok(_) => None,
                // A watcher too slow to keep up is told so; it re-reads.
                Err(_) => Some(Err(Status::data_loss(
                    "missed draft updates; watch again to resynchronise",
                ))),
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::iter(pending).chain(updates),
        )))
    }
}

impl ControlService {
    fn provider_pb(&self, record: &crate::store::ProviderRecord) -> pb::Provider {
        let cache = self.agent.providers();
        let bound_to = crate::providers::profile::find(&record.provider_type)
            .map(|p| {
                p.endpoints
                    .iter()
                    .filter_map(|e| {
                        let host = e.get("host")?.as_str()?;
                        let port = e.get("port").and_then(serde_json::Value::as_u64)?;
                        Some(format!("{host}:{port}"))
                    })
                    .collect()
            })
            .unwrap_or_default();
        pb::Provider {
            name: record.name.clone(),
            r#type: record.provider_type.clone(),
            credential_keys: record.credentials.keys().cloned().collect(),
            revision: record.revision,
            created_unix_ms: record.created_unix_ms,
            updated_unix_ms: record.updated_unix_ms,
            sandboxes: cache.sandboxes_of(&record.name),
            bound_to,
        }
    }

    async fn attachment(
        &self,
        req: pb::AttachProviderRequest,
        attach: bool,
    ) -> Result<Response<pb::AttachProviderReply>, Status> {
        let changed = crate::daemon::providers::set_attachment(
            &self.agent,
            &req.sandbox,
            &req.provider,
            attach,
        )
        .await
        .map_err(failed)?;
        Ok(Response::new(pb::AttachProviderReply {
            changed,
            revision: Some(current_pb(&self.agent, &req.sandbox)?),
        }))
    }
}

fn values(credentials: Vec<pb::Credential>) -> Result<crate::daemon::providers::Values, Status> {
    let mut out = crate::daemon::providers::Values::new();
    for c in credentials {
        if out.contains_key(&c.key) {
            return Err(Status::invalid_argument(format!(
                "credential key `{}` is given twice",
                c.key
            )));
        }
        out.insert(c.key, crate::store::SecretValue::new(c.value));
    }
    Ok(out)
}

impl ControlService {
    /// The chunk after a decision, and the revision if the policy changed.
    async fn decided(
        &self,
        sandbox: &str,
        chunk_id: &str,
        version_before: u64,
    ) -> Result<Response<pb::RejectDraftChunkReply>, Status> {
        let chunk = drafts::chunk(&self.agent, sandbox, chunk_id)
            .await
            .map_err(|e| Status::internal(format!("{e:#}")))?;
        let current = current_pb(&self.agent, sandbox)?;
        Ok(Response::new(pb::RejectDraftChunkReply {
            chunk: chunk.as_ref().map(chunk_pb),
            revision: (current.version != version_before).then_some(current),
        }))
    }
}

/// The time of a shorthand line (`YYYY-MM-DDTHH:MM:SS.mmmZ OCSF ...`).
fn line_time_ms(line: &str) -> Option<i64> {
    let stamp = line.split(' ').next()?;
    let t =
        time::OffsetDateTime::parse(stamp, &time::format_description::well_known::Rfc3339).ok()?;
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000).ok()
}
