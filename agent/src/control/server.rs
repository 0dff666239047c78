//! Serving the control plane on `<run_dir>/control.sock` (mode 0600).
//! A peer inside a sandbox cgroup is refused before any RPC: no sandbox may
//! manage sandboxes, or later, approve its own proposals.

use std::{os::unix::fs::PermissionsExt, sync::Arc};

use anyhow::{Context, Result};
use tokio::{net::UnixListener, task::JoinHandle};
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status};

use super::pb::{self, control_server::ControlServer};
use crate::{
    daemon::{
        Agent, SandboxView,
        policies::{Revision, Snapshot},
        sandboxes::{self, NewSandbox},
    },
    datapath::COUNTER_NAMES,
    sandbox::cgroup,
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
    let gate = agent.clone();
    let incoming =
        tokio_stream::wrappers::UnixListenerStream::new(listener).filter(move |conn| match conn {
            Ok(stream) => peer_allowed(&gate, stream),
            Err(_) => true,
        });
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
        let agent = self.agent.clone();
        let view = blocking(move || sandboxes::create(&agent, req)).await?;
        Ok(Response::new(to_pb(&self.agent, &view)))
    }
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

/// Sandbox changes touch the kernel and the disk: keep them off the
/// async workers.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> Result<T, Status> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Status::internal(e.to_string()))?
        .map_err(failed)
}

#[tonic::async_trait]
impl pb::control_server::Control for ControlService {
    async fn status(
        &self,
        _: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusReply>, Status> {
        let agent = &self.agent;
        let (counters, links) = {
            let dp = agent.datapath.lock().unwrap_or_else(|p| p.into_inner());
            (dp.counters(), dp.links_pinned())
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
            kernel: COUNTER_NAMES
                .iter()
                .zip(counters)
                .map(|(name, value)| pb::KernelCounter {
                    name: name.to_string(),
                    value,
                })
                .collect(),
            audit_dropped: agent.audit.dropped(),
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
        })
        .await
    }

    async fn delete_sandbox(
        &self,
        req: Request<pb::DeleteSandboxRequest>,
    ) -> Result<Response<pb::DeleteSandboxReply>, Status> {
        let name = req.into_inner().name;
        let agent = self.agent.clone();
        let killed = blocking(move || sandboxes::delete(&agent, &name)).await?;
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
        let agent = self.agent.clone();
        let sandbox = req.sandbox.clone();
        let source = if req.source.is_empty() {
            "policy set".to_string()
        } else {
            req.source
        };
        let set = blocking(move || {
            sandboxes::set_policy(&agent, &req.sandbox, &source, &req.policy_yaml)
        })
        .await?;
        let mut reply = snapshot_pb(&sandbox, &set.snapshot);
        reply.unchanged = set.unchanged;
        Ok(Response::new(reply))
    }

    async fn get_policy(
        &self,
        req: Request<pb::GetPolicyRequest>,
    ) -> Result<Response<pb::GetPolicyReply>, Status> {
        let req = req.into_inner();
        let index = self
            .agent
            .sandboxes
            .read()
            .unwrap_or_else(|p| p.into_inner());
        let view = index.get(&req.sandbox).ok_or_else(|| {
            Status::not_found(format!(
                "no sandbox named `{}` (see `portcullis sandbox list`)",
                req.sandbox
            ))
        })?;
        let snapshot = view.snapshot();
        let mut reply = pb::GetPolicyReply {
            revision: Some(snapshot_pb(&req.sandbox, &snapshot)),
            ..Default::default()
        };
        if req.full {
            reply.yaml = index
                .policies
                .current(&req.sandbox)
                .and_then(|r| r.yaml.clone())
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
        let revisions = sandboxes::history(&self.agent, &sandbox).map_err(failed)?;
        Ok(Response::new(pb::PolicyHistoryReply {
            revisions: revisions.iter().map(|r| revision_pb(&sandbox, r)).collect(),
        }))
    }
}
