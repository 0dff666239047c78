//! `portcullis inbox`: a live terminal inbox for operators. Chunks arrive
//! pushed by `WatchDrafts` (a lost stream reconnects and resynchronises);
//! the dashboard, the selected sandbox's chunks and its log pane refresh
//! every second. `app` holds the state and the keys, `ui` draws it; this
//! module wires them to the terminal and the control plane.

pub mod app;
pub mod ui;

#[cfg(test)]
mod tests;

use std::{collections::HashMap, process::ExitCode, time::Duration};

use anyhow::{Context, Result};
use ratatui::crossterm::event::{self, Event as TermEvent, KeyEventKind};
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tonic::transport::Channel;

use self::app::{Action, App, ChunkEntry, SandboxSummary};
use crate::{
    config::AgentConfig,
    control::{
        client,
        pb::{self, control_client::ControlClient},
    },
};

/// How often the dashboard, the list and the log pane are re-read. Chunks
/// themselves are pushed.
const REFRESH: Duration = Duration::from_secs(1);
/// Wait before reconnecting a lost watch.
const RECONNECT: Duration = Duration::from_millis(500);

enum Input {
    Key(ratatui::crossterm::event::KeyEvent),
    Resize,
    Update(Box<pb::DraftUpdate>),
    /// The watch stream is up (true) or lost (false, with why).
    Watch(bool, String),
}

pub async fn run(config: &AgentConfig) -> Result<ExitCode> {
    let socket = config.control_socket();
    let mut client = client::connect(&socket).await?;
    let (tx, mut rx) = mpsc::channel::<Input>(1024);
    spawn_keys(tx.clone());
    spawn_watch(socket.clone(), tx.clone());

    let mut terminal = ratatui::init();
    let mut app = App::new();
    let mut session = Session::default();
    let mut ticker = tokio::time::interval(REFRESH);
    let result: Result<()> = async {
        loop {
            terminal.draw(|f| ui::draw(f, &app))?;
            tokio::select! {
                _ = ticker.tick() => session.refresh(&mut client, &mut app).await,
                input = rx.recv() => {
                    let Some(input) = input else { return Ok(()) };
                    match input {
                        Input::Key(key) if key.kind != KeyEventKind::Release => {
                            match app.on_key(key) {
                                Action::Quit => return Ok(()),
                                Action::None => {}
                                Action::SelectSandbox(_) => session.refresh(&mut client, &mut app).await,
                                Action::Edit { sandbox, chunk_id, proposed_rule_json } => {
                                    ratatui::restore();
                                    let edited = edit_in_editor(&proposed_rule_json);
                                    terminal = ratatui::init();
                                    let result = match edited {
                                        Ok(Some(json)) => act(&mut client, Action::Edit { sandbox, chunk_id, proposed_rule_json: json }, &app).await,
                                        Ok(None) => Ok("edit cancelled: the rule is unchanged".into()),
                                        Err(e) => Err(format!("{e:#}")),
                                    };
                                    app.set_status(result);
                                    session.refresh(&mut client, &mut app).await;
                                }
                                action => {
                                    let result = act(&mut client, action, &app).await;
                                    app.set_status(result);
                                    session.refresh(&mut client, &mut app).await;
                                }
                            }
                        }
                        Input::Key(_) | Input::Resize => {}
                        Input::Update(update) => session.apply(&mut app, *update),
                        Input::Watch(up, note) => {
                            app.set_connection(up, &note);
                            if up {
                                // Resynchronise everything after a reconnect.
                                session.refresh(&mut client, &mut app).await;
                            }
                        }
                    }
                }
            }
        }
    }
    .await;
    ratatui::restore();
    result.map(|()| ExitCode::SUCCESS)
}

/// Terminal input, read on a thread of its own (crossterm blocks).
fn spawn_keys(tx: mpsc::Sender<Input>) {
    std::thread::spawn(move || {
        loop {
            let input = match event::read() {
                Ok(TermEvent::Key(key)) => Input::Key(key),
                Ok(TermEvent::Resize(..)) => Input::Resize,
                Ok(_) => continue,
                Err(_) => return,
            };
            if tx.blocking_send(input).is_err() {
                return;
            }
        }
    });
}

/// Follows `WatchDrafts` for every sandbox, reconnecting when it drops.
fn spawn_watch(socket: std::path::PathBuf, tx: mpsc::Sender<Input>) {
    tokio::spawn(async move {
        loop {
            let stream = async {
                let mut client = client::connect(&socket).await?;
                let stream = client
                    .watch_drafts(pb::WatchDraftsRequest::default())
                    .await
                    .map_err(client::status_error)?
                    .into_inner();
                anyhow::Ok(stream)
            }
            .await;
            match stream {
                Ok(mut stream) => {
                    let _ = tx.send(Input::Watch(true, String::new())).await;
                    let why = loop {
                        match stream.next().await {
                            Some(Ok(update)) => {
                                if tx.send(Input::Update(Box::new(update))).await.is_err() {
                                    return;
                                }
                            }
                            Some(Err(status)) => break status.message().to_string(),
                            None => break "the agent closed the stream".to_string(),
                        }
                    };
                    let note = format!("watch lost ({why}); reconnecting");
                    if tx.send(Input::Watch(false, note)).await.is_err() {
                        return;
                    }
                }
                Err(e) => {
                    let note = format!("agent unreachable ({e:#}); reconnecting");
                    if tx.send(Input::Watch(false, note)).await.is_err() {
                        return;
                    }
                }
            }
            tokio::time::sleep(RECONNECT).await;
        }
    });
}

/// What the inbox knows beyond the app state: providers and each
/// sandbox's recent denials, to decorate chunks.
#[derive(Default)]
struct Session {
    providers: HashMap<String, pb::Provider>,
    denials: HashMap<String, Vec<String>>,
}

impl Session {
    fn entry(&self, sandbox: &str, chunk: pb::DraftChunk) -> ChunkEntry {
        let provider_keys = self
            .providers
            .get(&chunk.provider_name)
            .map(|p| p.credential_keys.clone())
            .unwrap_or_default();
        let denials = chunk_denials(
            &chunk,
            self.denials.get(sandbox).map(Vec::as_slice).unwrap_or(&[]),
        );
        ChunkEntry {
            auto_approved: chunk.decided_by == "system:auto",
            provider_keys,
            denials,
            chunk,
        }
    }

    fn apply(&self, app: &mut App, update: pb::DraftUpdate) {
        let Some(chunk) = update.chunk else { return };
        if update.change == "cleared" {
            app.remove_chunk(&update.sandbox, &chunk.id);
        } else {
            let entry = self.entry(&update.sandbox, chunk);
            app.upsert_chunk(&update.sandbox, entry);
        }
    }

    /// Re-reads health, sandboxes with their pending counts, providers,
    /// and the selected sandbox's chunks and log.
    async fn refresh(&mut self, client: &mut ControlClient<Channel>, app: &mut App) {
        let status = client
            .status(pb::StatusRequest {})
            .await
            .ok()
            .map(|r| r.into_inner());
        let reachable = status.is_some();
        app.set_health(status);
        if !reachable {
            return;
        }
        if let Ok(list) = client.list_providers(pb::ListProvidersRequest {}).await {
            self.providers = list
                .into_inner()
                .providers
                .into_iter()
                .map(|p| (p.name.clone(), p))
                .collect();
        }
        let sandboxes = match client.list_sandboxes(pb::ListSandboxesRequest {}).await {
            Ok(r) => r.into_inner().sandboxes,
            Err(_) => return,
        };
        let mut rows = Vec::with_capacity(sandboxes.len());
        let selected = app.selected_sandbox().map(str::to_string);
        for sandbox in sandboxes {
            let name = sandbox.name.clone();
            let drafts = client
                .get_draft_policy(pb::GetDraftPolicyRequest {
                    sandbox: name.clone(),
                    status_filter: String::new(),
                })
                .await
                .map(|r| r.into_inner().chunks)
                .unwrap_or_default();
            let activity = client
                .sandbox_activity(pb::SandboxActivityRequest {
                    sandbox: name.clone(),
                    last: 100,
                })
                .await
                .map(|r| r.into_inner())
                .unwrap_or_default();
            self.denials.insert(name.clone(), activity.denials.clone());
            let pending = drafts.iter().filter(|c| c.status == "pending").count();
            if selected.as_deref() == Some(name.as_str()) || selected.is_none() {
                let entries = drafts.into_iter().map(|c| self.entry(&name, c)).collect();
                app.set_chunks(&name, entries);
                app.set_log(&name, activity.events);
            }
            rows.push(SandboxSummary {
                sandbox,
                pending,
                denials_recent: activity.denials_last_5m,
            });
        }
        app.set_sandboxes(rows);
    }
}

/// The sandbox's recent denials about the chunk's first endpoint: what
/// most likely led to the proposal.
fn chunk_denials(chunk: &pb::DraftChunk, denials: &[String]) -> Vec<String> {
    let rule: serde_json::Value =
        serde_json::from_str(&chunk.proposed_rule_json).unwrap_or_default();
    let Some(host) = rule
        .get("endpoints")
        .and_then(|e| e.get(0))
        .and_then(|e| e.get("host"))
        .and_then(serde_json::Value::as_str)
    else {
        return Vec::new();
    };
    denials
        .iter()
        .filter(|l| l.contains(&format!("-> {host}:")) || l.contains(&format!("://{host}")))
        .cloned()
        .collect()
}

/// Carries out one action; the text says what happened.
async fn act(
    client: &mut ControlClient<Channel>,
    action: Action,
    app: &App,
) -> Result<String, String> {
    let err = |s: tonic::Status| s.message().to_string();
    match action {
        Action::Approve {
            sandbox,
            chunk_id,
            review_token,
        } => client
            .approve_draft_chunk(pb::ApproveDraftChunkRequest {
                sandbox,
                chunk_id,
                review_token,
            })
            .await
            .map(|r| format!("approved; policy version {}", r.into_inner().version))
            .map_err(err),
        Action::Reject {
            sandbox,
            chunk_id,
            reason,
        } => client
            .reject_draft_chunk(pb::RejectDraftChunkRequest {
                sandbox,
                chunk_id,
                reason,
            })
            .await
            .map(|r| match r.into_inner().revision {
                Some(rev) => format!("revoked and rejected; policy version {}", rev.version),
                None => "rejected".into(),
            })
            .map_err(err),
        Action::ApproveAll {
            sandbox,
            include_flagged,
        } => {
            let approvals = app
                .pending_tokens(&sandbox)
                .into_iter()
                .map(|(chunk_id, review_token)| pb::ChunkApproval {
                    chunk_id,
                    review_token,
                })
                .collect();
            client
                .approve_all_draft_chunks(pb::ApproveAllDraftChunksRequest {
                    sandbox,
                    include_security_flagged: include_flagged,
                    approvals,
                })
                .await
                .map(|r| {
                    let r = r.into_inner();
                    format!(
                        "approved {} chunk(s), skipped {}",
                        r.chunks_approved, r.chunks_skipped
                    )
                })
                .map_err(err)
        }
        Action::Edit {
            sandbox,
            chunk_id,
            proposed_rule_json,
        } => client
            .edit_draft_chunk(pb::EditDraftChunkRequest {
                sandbox,
                chunk_id,
                proposed_rule_json,
            })
            .await
            .map(|r| {
                format!(
                    "edited and evaluated again: {}",
                    r.into_inner()
                        .validation_result
                        .lines()
                        .next()
                        .unwrap_or_default()
                )
            })
            .map_err(err),
        Action::Undo { sandbox, chunk_id } => client
            .undo_draft_chunk(pb::UndoDraftChunkRequest { sandbox, chunk_id })
            .await
            .map(|_| "back to pending; what it added is removed".into())
            .map_err(err),
        Action::None | Action::Quit | Action::SelectSandbox(_) => Ok(String::new()),
    }
}

/// Opens the rule in `$EDITOR` (else `vi`); None when nothing changed.
fn edit_in_editor(rule_json: &str) -> Result<Option<String>> {
    let pretty = serde_json::from_str::<serde_json::Value>(rule_json)
        .and_then(|v| serde_json::to_string_pretty(&v))
        .unwrap_or_else(|_| rule_json.to_string());
    let dir = tempfile_dir()?;
    let path = dir.join("rule.json");
    std::fs::write(&path, &pretty).with_context(|| format!("writing {}", path.display()))?;
    let editor = std::env::var("VISUAL")
        .or_else(|_| std::env::var("EDITOR"))
        .unwrap_or_else(|_| "vi".into());
    let status = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("{editor} \"$1\""))
        .arg("editor")
        .arg(&path)
        .status()
        .with_context(|| format!("starting the editor `{editor}`"))?;
    let edited = std::fs::read_to_string(&path).unwrap_or_default();
    let _ = std::fs::remove_dir_all(&dir);
    if !status.success() {
        anyhow::bail!("the editor `{editor}` exited with {status}; nothing was changed");
    }
    if edited.trim() == pretty.trim() {
        return Ok(None);
    }
    Ok(Some(edited))
}

/// A private directory for the file being edited.
fn tempfile_dir() -> Result<std::path::PathBuf> {
    use std::os::unix::fs::DirBuilderExt;
    let dir = std::env::temp_dir().join(format!("portcullis-inbox-{}", std::process::id()));
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&dir)
        .with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}
