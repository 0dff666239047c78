//! The operator inbox's state and key handling (contract §2.6: drafts are
//! pushed, the TUI rejects with a reason and shows the validation result).
//! Pure: no terminal, no I/O. The runner feeds data in through the `set_*`
//! methods and turns the returned [`Action`]s into control-plane calls.

use std::cell::Cell;

use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyEventKind, KeyModifiers};

use crate::control::pb;

/// One dashboard row.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SandboxSummary {
    pub sandbox: pb::Sandbox,
    pub pending: usize,
    /// Denials over the runner's recent window.
    pub denials_recent: u32,
}

/// A draft chunk with what the inbox knows around it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ChunkEntry {
    pub chunk: pb::DraftChunk,
    /// Approved by the agent's auto mode rather than by an operator.
    pub auto_approved: bool,
    /// The provider's credential key names, for provider chunks.
    pub provider_keys: Vec<String>,
    /// Shorthand denial lines that led to it.
    pub denials: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum View {
    Dashboard,
    List,
    Detail,
    Help,
    RejectPrompt,
    ConfirmApproveAll,
}

/// What the runner should do after a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    None,
    Quit,
    Approve {
        sandbox: String,
        chunk_id: String,
        review_token: String,
    },
    Reject {
        sandbox: String,
        chunk_id: String,
        reason: String,
    },
    ApproveAll {
        sandbox: String,
        include_flagged: bool,
    },
    Edit {
        sandbox: String,
        chunk_id: String,
        proposed_rule_json: String,
    },
    Undo {
        sandbox: String,
        chunk_id: String,
    },
    /// The selected sandbox changed: refresh its chunks and log.
    SelectSandbox(String),
}

/// Agent health as last reported.
#[derive(Debug, Clone, PartialEq)]
pub enum Health {
    Unknown,
    Up(Box<pb::StatusReply>),
    Unreachable,
}

/// The status line: the last action's outcome, or what is under way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StatusLine {
    Empty,
    Working(String),
    /// Neutral news, such as a cancelled prompt.
    Info(String),
    Ok(String),
    Err(String),
}

/// Which pane the movement keys drive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Focus {
    Main,
    Log,
}

/// The chunk a reject prompt was opened for; captured so a pushed update
/// that moves the selection cannot redirect the decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RejectTarget {
    pub sandbox: String,
    pub chunk_id: String,
    pub rule_name: String,
    /// Rejecting an approved chunk revokes it.
    pub revoke: bool,
    pub reason: String,
}

/// What the approve-all modal was opened for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApproveAllTarget {
    pub sandbox: String,
    pub pending: usize,
    /// Pending chunks with security notes: skipped unless included.
    pub flagged: usize,
}

/// Sizes the renderer last used. Only the renderer knows them (wrapping
/// depends on the width), and the keys need them so paging moves by a
/// screenful and scrolling stops at the end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Geometry {
    pub(super) list_page: usize,
    pub(super) detail_page: usize,
    pub(super) detail_max_scroll: usize,
    pub(super) log_rows: usize,
}

impl Default for Geometry {
    fn default() -> Self {
        Self {
            list_page: 10,
            detail_page: 10,
            detail_max_scroll: usize::MAX,
            log_rows: 4,
        }
    }
}

#[derive(Debug, Clone, Default)]
struct SandboxState {
    chunks: Vec<ChunkEntry>,
    log: Vec<String>,
}

#[derive(Debug)]
pub struct App {
    view: View,
    /// The view a modal (help, prompt, confirm) sits on.
    under: View,
    focus: Focus,
    health: Health,
    connected: bool,
    connection_note: String,
    sandboxes: Vec<SandboxSummary>,
    sandbox_cursor: usize,
    per_sandbox: std::collections::BTreeMap<String, SandboxState>,
    chunk_cursor: usize,
    detail_scroll: usize,
    /// Lines up from the newest; 0 follows the tail.
    log_scroll: usize,
    status: StatusLine,
    reject: Option<RejectTarget>,
    approve_all: Option<ApproveAllTarget>,
    geometry: Cell<Geometry>,
}

impl Default for App {
    fn default() -> Self {
        Self::new()
    }
}

/// The annotation shown beside a chunk (reference §8.2
/// `approval_annotation`, except that auto-approval is known, not guessed).
pub fn approval_annotation(entry: &ChunkEntry) -> &'static str {
    let c = &entry.chunk;
    if !c.application_error.trim().is_empty() {
        "application blocked"
    } else if c.validation_result.trim().is_empty() {
        ""
    } else if c.status == "approved" {
        if entry.auto_approved && c.validation_result.trim() == "prover: no new findings" {
            "auto-approved"
        } else {
            "reviewed"
        }
    } else {
        "review required"
    }
}

/// Whether a chunk carries security notes (they hold it out of approve-all).
pub fn is_flagged(chunk: &pb::DraftChunk) -> bool {
    !chunk.security_notes.trim().is_empty()
}

fn is_pending(chunk: &pb::DraftChunk) -> bool {
    chunk.status == "pending"
}

impl App {
    pub fn new() -> Self {
        Self {
            view: View::Dashboard,
            under: View::Dashboard,
            focus: Focus::Main,
            health: Health::Unknown,
            connected: true,
            connection_note: String::new(),
            sandboxes: Vec::new(),
            sandbox_cursor: 0,
            per_sandbox: Default::default(),
            chunk_cursor: 0,
            detail_scroll: 0,
            log_scroll: 0,
            status: StatusLine::Empty,
            reject: None,
            approve_all: None,
            geometry: Cell::new(Geometry::default()),
        }
    }

    // ---- data in ----

    /// `None`: the agent did not answer.
    pub fn set_health(&mut self, status: Option<pb::StatusReply>) {
        self.health = match status {
            Some(s) => Health::Up(Box::new(s)),
            None => Health::Unreachable,
        };
    }

    /// Replaces the dashboard rows, keeping the selected sandbox by name.
    pub fn set_sandboxes(&mut self, rows: Vec<SandboxSummary>) {
        let selected = self.selected_sandbox().map(str::to_string);
        self.sandboxes = rows;
        let found = selected
            .as_deref()
            .and_then(|name| self.sandbox_index(name));
        match found {
            Some(i) => self.sandbox_cursor = i,
            None => {
                self.sandbox_cursor = self
                    .sandbox_cursor
                    .min(self.sandboxes.len().saturating_sub(1));
                if let Some(gone) = selected {
                    self.leave_sandbox(&gone);
                }
            }
        }
        // Chunks and logs of unlisted sandboxes are kept: pushed updates may
        // arrive before the sandbox list that names them.
    }

    /// Replaces a sandbox's chunks (newest first), keeping the selected
    /// chunk by id. The pending count follows the full list.
    pub fn set_chunks(&mut self, sandbox: &str, chunks: Vec<ChunkEntry>) {
        let selected = self.selected_chunk_version();
        let pending = chunks.iter().filter(|e| is_pending(&e.chunk)).count();
        self.state_mut(sandbox).chunks = chunks;
        if let Some(row) = self.summary_mut(sandbox) {
            row.pending = pending;
        }
        self.after_chunks_changed(sandbox, selected);
    }

    /// A pushed update: replaces the chunk with the same id or inserts it
    /// in newest-first order, and moves the pending count by the change.
    pub fn upsert_chunk(&mut self, sandbox: &str, entry: ChunkEntry) {
        let selected = self.selected_chunk_version();
        let now_pending = is_pending(&entry.chunk);
        let chunks = &mut self.state_mut(sandbox).chunks;
        let was_pending = match chunks.iter().position(|e| e.chunk.id == entry.chunk.id) {
            Some(i) => {
                let was = is_pending(&chunks[i].chunk);
                chunks[i] = entry;
                was
            }
            None => {
                let at = chunks
                    .iter()
                    .position(|e| e.chunk.created_at_ms < entry.chunk.created_at_ms)
                    .unwrap_or(chunks.len());
                chunks.insert(at, entry);
                false
            }
        };
        self.adjust_pending(sandbox, was_pending, now_pending);
        self.after_chunks_changed(sandbox, selected);
    }

    /// Keeps the selection on the same chunk and, if that chunk changed
    /// under an open detail view, says so: a decision now applies to what
    /// is on screen, not to what was read a moment ago.
    fn after_chunks_changed(&mut self, sandbox: &str, before: Option<(String, String)>) {
        if self.selected_sandbox() != Some(sandbox) {
            return;
        }
        let Some((id, token)) = before else {
            self.reselect_chunk(None);
            return;
        };
        self.reselect_chunk(Some(&id));
        let changed = self
            .selected_chunk()
            .is_some_and(|e| e.chunk.id == id && e.chunk.review_token != token);
        if changed && self.base_view() == View::Detail {
            let name = self
                .selected_chunk()
                .map(|e| e.chunk.rule_name.clone())
                .unwrap_or_default();
            self.status = StatusLine::Info(format!("'{name}' changed while open: review it again"));
        }
    }

    /// A cleared chunk.
    pub fn remove_chunk(&mut self, sandbox: &str, chunk_id: &str) {
        let selected = self.selected_chunk_id();
        let chunks = &mut self.state_mut(sandbox).chunks;
        let Some(i) = chunks.iter().position(|e| e.chunk.id == chunk_id) else {
            return;
        };
        let removed = chunks.remove(i);
        self.adjust_pending(sandbox, is_pending(&removed.chunk), false);
        if self.selected_sandbox() != Some(sandbox) {
            return;
        }
        if selected.as_deref() == Some(chunk_id) {
            // Keep the cursor where it was: the next chunk slides under it.
            self.chunk_cursor = self.chunk_cursor.min(self.chunk_count().saturating_sub(1));
            if self.view == View::Detail || self.under == View::Detail {
                self.close_detail();
                self.status = StatusLine::Err(format!("chunk {} was cleared", short_id(chunk_id)));
            }
        } else {
            self.reselect_chunk(selected.as_deref());
        }
    }

    pub fn set_log(&mut self, sandbox: &str, lines: Vec<String>) {
        self.state_mut(sandbox).log = lines;
        self.clamp_log_scroll();
    }

    /// The outcome of the last action, shown until the next one.
    pub fn set_status(&mut self, result: Result<String, String>) {
        self.status = match result {
            Ok(text) => StatusLine::Ok(text),
            Err(text) => StatusLine::Err(text),
        };
    }

    pub fn set_connection(&mut self, connected: bool, note: &str) {
        self.connected = connected;
        self.connection_note = note.to_string();
    }

    // ---- reading (for the renderer and the runner) ----

    pub fn view(&self) -> &View {
        &self.view
    }

    /// The full-screen view under any modal.
    pub fn base_view(&self) -> View {
        if self.is_modal() {
            self.under
        } else {
            self.view
        }
    }

    pub fn focus(&self) -> Focus {
        self.focus
    }

    pub fn health(&self) -> &Health {
        &self.health
    }

    pub fn connection(&self) -> (bool, &str) {
        (self.connected, &self.connection_note)
    }

    pub fn status(&self) -> &StatusLine {
        &self.status
    }

    pub fn sandboxes(&self) -> &[SandboxSummary] {
        &self.sandboxes
    }

    pub fn sandbox_cursor(&self) -> usize {
        self.sandbox_cursor
    }

    pub fn selected_sandbox(&self) -> Option<&str> {
        self.sandboxes
            .get(self.sandbox_cursor)
            .map(|s| s.sandbox.name.as_str())
    }

    pub fn selected_summary(&self) -> Option<&SandboxSummary> {
        self.sandboxes.get(self.sandbox_cursor)
    }

    /// The selected sandbox's chunks, newest first.
    pub fn chunks(&self) -> &[ChunkEntry] {
        self.selected_state().map_or(&[], |s| s.chunks.as_slice())
    }

    pub fn chunk_cursor(&self) -> usize {
        self.chunk_cursor
    }

    pub fn selected_chunk(&self) -> Option<&ChunkEntry> {
        self.chunks().get(self.chunk_cursor)
    }

    /// The selected sandbox's log, oldest first.
    pub fn log(&self) -> &[String] {
        self.selected_state().map_or(&[], |s| s.log.as_slice())
    }

    pub fn log_scroll(&self) -> usize {
        self.log_scroll
    }

    pub fn detail_scroll(&self) -> usize {
        self.detail_scroll
            .min(self.geometry.get().detail_max_scroll)
    }

    /// `(chunk id, review token)` of each pending chunk of `sandbox` as
    /// the operator sees it, for approve-all: a chunk that changed since
    /// is refused by the agent rather than approved unseen.
    pub fn pending_tokens(&self, sandbox: &str) -> Vec<(String, String)> {
        self.per_sandbox
            .get(sandbox)
            .map(|s| s.chunks.as_slice())
            .unwrap_or_default()
            .iter()
            .filter(|e| is_pending(&e.chunk))
            .map(|e| (e.chunk.id.clone(), e.chunk.review_token.clone()))
            .collect()
    }

    pub fn reject_target(&self) -> Option<&RejectTarget> {
        self.reject.as_ref()
    }

    pub fn approve_all_target(&self) -> Option<&ApproveAllTarget> {
        self.approve_all.as_ref()
    }

    /// Called by the renderer with the sizes it used.
    pub(super) fn record_geometry(&self, geometry: Geometry) {
        self.geometry.set(geometry);
    }

    // ---- keys ----

    pub fn on_key(&mut self, key: KeyEvent) -> Action {
        if key.kind == KeyEventKind::Release {
            return Action::None;
        }
        if key.modifiers.contains(KeyModifiers::CONTROL) && key.code == KeyCode::Char('c') {
            return Action::Quit;
        }
        match self.view {
            View::Help => {
                // Any key closes the help.
                self.view = self.under;
                Action::None
            }
            View::RejectPrompt => self.on_reject_prompt_key(key),
            View::ConfirmApproveAll => self.on_confirm_key(key),
            View::Dashboard | View::List | View::Detail => self.on_screen_key(key),
        }
    }

    fn on_screen_key(&mut self, key: KeyEvent) -> Action {
        match key.code {
            KeyCode::Char('q') => return Action::Quit,
            KeyCode::Char('?') => {
                self.open_modal(View::Help);
                return Action::None;
            }
            KeyCode::Tab | KeyCode::BackTab => {
                self.focus = match self.focus {
                    Focus::Main => Focus::Log,
                    Focus::Log => Focus::Main,
                };
                return Action::None;
            }
            _ => {}
        }
        if let Some(step) = movement(key.code) {
            return self.move_by(step);
        }
        match (self.view, key.code) {
            (View::Dashboard, KeyCode::Enter) => self.open_list(),
            (View::List, KeyCode::Enter) => {
                self.open_detail();
                Action::None
            }
            (View::List, KeyCode::Esc | KeyCode::Char('p')) => {
                self.view = View::Dashboard;
                self.focus = Focus::Main;
                Action::None
            }
            (View::Detail, KeyCode::Esc | KeyCode::Char('p')) => {
                self.close_detail();
                Action::None
            }
            (View::List | View::Detail, KeyCode::Char(c)) => self.on_chunk_key(c),
            (View::Dashboard, KeyCode::Char('a' | 'x' | 'A' | 'e' | 'u')) => {
                self.status = StatusLine::Err("open a sandbox first (Enter)".into());
                Action::None
            }
            _ => Action::None,
        }
    }

    /// The decision keys on the selected chunk.
    fn on_chunk_key(&mut self, c: char) -> Action {
        if c == 'A' {
            self.open_approve_all();
            return Action::None;
        }
        let selected = self
            .selected_sandbox()
            .map(str::to_string)
            .zip(self.selected_chunk().map(|e| e.chunk.clone()));
        let Some((sandbox, chunk)) = selected else {
            if matches!(c, 'a' | 'x' | 'e' | 'u') {
                self.status = StatusLine::Err("no chunk selected".into());
            }
            return Action::None;
        };
        match c {
            'a' => self.approve(sandbox, &chunk),
            'x' => {
                self.open_reject_prompt(sandbox, &chunk);
                Action::None
            }
            'e' => self.edit(sandbox, &chunk),
            'u' => self.undo(sandbox, &chunk),
            _ => Action::None,
        }
    }

    fn approve(&mut self, sandbox: String, chunk: &pb::DraftChunk) -> Action {
        if chunk.status == "approved" {
            self.status = StatusLine::Err(format!("'{}' is already approved", chunk.rule_name));
            return Action::None;
        }
        self.status = StatusLine::Working(format!("approving '{}'...", chunk.rule_name));
        Action::Approve {
            sandbox,
            chunk_id: chunk.id.clone(),
            review_token: chunk.review_token.clone(),
        }
    }

    fn open_reject_prompt(&mut self, sandbox: String, chunk: &pb::DraftChunk) {
        if chunk.status == "rejected" {
            self.status = StatusLine::Err(format!("'{}' is already rejected", chunk.rule_name));
            return;
        }
        self.reject = Some(RejectTarget {
            sandbox,
            chunk_id: chunk.id.clone(),
            rule_name: chunk.rule_name.clone(),
            revoke: chunk.status == "approved",
            reason: String::new(),
        });
        self.open_modal(View::RejectPrompt);
    }

    fn edit(&mut self, sandbox: String, chunk: &pb::DraftChunk) -> Action {
        if !chunk.provider_name.is_empty() {
            self.status = StatusLine::Err("a provider request has no rule to edit".into());
            return Action::None;
        }
        if !is_pending(chunk) {
            self.status = StatusLine::Err(format!(
                "'{}' is {}; only pending chunks can be edited",
                chunk.rule_name, chunk.status
            ));
            return Action::None;
        }
        self.status = StatusLine::Working(format!("editing '{}'...", chunk.rule_name));
        Action::Edit {
            sandbox,
            chunk_id: chunk.id.clone(),
            proposed_rule_json: chunk.proposed_rule_json.clone(),
        }
    }

    fn undo(&mut self, sandbox: String, chunk: &pb::DraftChunk) -> Action {
        if chunk.status != "approved" {
            self.status = StatusLine::Err(format!(
                "'{}' is {}; only approved chunks can be undone",
                chunk.rule_name, chunk.status
            ));
            return Action::None;
        }
        self.status = StatusLine::Working(format!("undoing '{}'...", chunk.rule_name));
        Action::Undo {
            sandbox,
            chunk_id: chunk.id.clone(),
        }
    }

    fn open_approve_all(&mut self) {
        let Some(sandbox) = self.selected_sandbox().map(str::to_string) else {
            return;
        };
        let pending: Vec<&ChunkEntry> = self
            .chunks()
            .iter()
            .filter(|e| is_pending(&e.chunk))
            .collect();
        if pending.is_empty() {
            self.status = StatusLine::Err(format!("no pending chunks in '{sandbox}'"));
            return;
        }
        let flagged = pending.iter().filter(|e| is_flagged(&e.chunk)).count();
        self.approve_all = Some(ApproveAllTarget {
            sandbox,
            pending: pending.len(),
            flagged,
        });
        self.open_modal(View::ConfirmApproveAll);
    }

    fn on_reject_prompt_key(&mut self, key: KeyEvent) -> Action {
        let Some(target) = self.reject.as_mut() else {
            self.close_modal();
            return Action::None;
        };
        let ctrl = key.modifiers.contains(KeyModifiers::CONTROL);
        match key.code {
            KeyCode::Enter => {
                let verb = if target.revoke {
                    "revoking"
                } else {
                    "rejecting"
                };
                self.status = StatusLine::Working(format!("{verb} '{}'...", target.rule_name));
                let action = Action::Reject {
                    sandbox: target.sandbox.clone(),
                    chunk_id: target.chunk_id.clone(),
                    reason: target.reason.trim().to_string(),
                };
                self.close_modal();
                action
            }
            KeyCode::Esc => {
                self.status = StatusLine::Info("reject cancelled".into());
                self.close_modal();
                Action::None
            }
            KeyCode::Backspace => {
                target.reason.pop();
                Action::None
            }
            KeyCode::Char('u') if ctrl => {
                target.reason.clear();
                Action::None
            }
            KeyCode::Char(c) if !ctrl && !key.modifiers.contains(KeyModifiers::ALT) => {
                target.reason.push(c);
                Action::None
            }
            _ => Action::None,
        }
    }

    fn on_confirm_key(&mut self, key: KeyEvent) -> Action {
        let Some(target) = self.approve_all.clone() else {
            self.close_modal();
            return Action::None;
        };
        let include_flagged = match key.code {
            KeyCode::Char('y') | KeyCode::Enter => false,
            KeyCode::Char('f') if target.flagged > 0 => true,
            KeyCode::Char('n') | KeyCode::Esc => {
                self.status = StatusLine::Info("approve-all cancelled".into());
                self.close_modal();
                return Action::None;
            }
            _ => return Action::None,
        };
        self.status = StatusLine::Working(format!(
            "approving pending chunks in '{}'...",
            target.sandbox
        ));
        self.close_modal();
        Action::ApproveAll {
            sandbox: target.sandbox,
            include_flagged,
        }
    }

    // ---- movement ----

    fn move_by(&mut self, step: Step) -> Action {
        if self.focus == Focus::Log {
            self.scroll_log(step);
            return Action::None;
        }
        let geometry = self.geometry.get();
        match self.view {
            View::Dashboard => {
                let before = self.sandbox_cursor;
                self.sandbox_cursor = step.apply(
                    self.sandbox_cursor,
                    self.sandboxes.len(),
                    geometry.list_page,
                );
                if self.sandbox_cursor == before {
                    return Action::None;
                }
                self.on_sandbox_changed()
            }
            View::List => {
                self.chunk_cursor =
                    step.apply(self.chunk_cursor, self.chunk_count(), geometry.list_page);
                Action::None
            }
            View::Detail => {
                let lines = geometry.detail_max_scroll.saturating_add(1);
                self.detail_scroll = step.apply(self.detail_scroll(), lines, geometry.detail_page);
                Action::None
            }
            _ => Action::None,
        }
    }

    /// The log scrolls from its newest line: "down" is towards the tail.
    fn scroll_log(&mut self, step: Step) {
        let max = self.log_max_scroll();
        let page = self.geometry.get().log_rows.max(1);
        self.log_scroll = match step {
            Step::Up(n) => self.log_scroll.saturating_add(n),
            Step::Down(n) => self.log_scroll.saturating_sub(n),
            Step::PageUp => self.log_scroll.saturating_add(page),
            Step::PageDown => self.log_scroll.saturating_sub(page),
            Step::First => max,
            Step::Last => 0,
        }
        .min(max);
    }

    fn log_max_scroll(&self) -> usize {
        self.log()
            .len()
            .saturating_sub(self.geometry.get().log_rows.max(1))
    }

    fn clamp_log_scroll(&mut self) {
        self.log_scroll = self.log_scroll.min(self.log_max_scroll());
    }

    // ---- view changes ----

    fn open_list(&mut self) -> Action {
        let Some(name) = self.selected_sandbox().map(str::to_string) else {
            return Action::None;
        };
        self.view = View::List;
        self.chunk_cursor = self.chunk_cursor.min(self.chunk_count().saturating_sub(1));
        Action::SelectSandbox(name)
    }

    fn open_detail(&mut self) {
        if self.selected_chunk().is_some() {
            self.view = View::Detail;
            self.detail_scroll = 0;
        }
    }

    fn close_detail(&mut self) {
        if self.is_modal() {
            self.under = View::List;
        } else {
            self.view = View::List;
        }
        self.detail_scroll = 0;
    }

    fn on_sandbox_changed(&mut self) -> Action {
        self.chunk_cursor = 0;
        self.log_scroll = 0;
        self.detail_scroll = 0;
        match self.selected_sandbox() {
            Some(name) => Action::SelectSandbox(name.to_string()),
            None => Action::None,
        }
    }

    /// The selected sandbox vanished: nothing of it can stay on screen.
    fn leave_sandbox(&mut self, name: &str) {
        if self.base_view() != View::Dashboard {
            self.view = View::Dashboard;
            self.under = View::Dashboard;
            self.reject = None;
            self.approve_all = None;
            self.status = StatusLine::Err(format!("sandbox '{name}' is gone"));
        }
        self.chunk_cursor = 0;
        self.log_scroll = 0;
    }

    fn is_modal(&self) -> bool {
        matches!(
            self.view,
            View::Help | View::RejectPrompt | View::ConfirmApproveAll
        )
    }

    fn open_modal(&mut self, modal: View) {
        if !self.is_modal() {
            self.under = self.view;
        }
        self.view = modal;
    }

    fn close_modal(&mut self) {
        self.view = self.under;
        self.reject = None;
        self.approve_all = None;
    }

    // ---- helpers ----

    fn sandbox_index(&self, name: &str) -> Option<usize> {
        self.sandboxes.iter().position(|s| s.sandbox.name == name)
    }

    fn summary_mut(&mut self, name: &str) -> Option<&mut SandboxSummary> {
        self.sandboxes.iter_mut().find(|s| s.sandbox.name == name)
    }

    fn selected_state(&self) -> Option<&SandboxState> {
        self.selected_sandbox()
            .and_then(|n| self.per_sandbox.get(n))
    }

    fn state_mut(&mut self, sandbox: &str) -> &mut SandboxState {
        self.per_sandbox.entry(sandbox.to_string()).or_default()
    }

    fn chunk_count(&self) -> usize {
        self.chunks().len()
    }

    fn selected_chunk_id(&self) -> Option<String> {
        self.selected_chunk().map(|e| e.chunk.id.clone())
    }

    /// The selected chunk's id and review token (which changes with it).
    fn selected_chunk_version(&self) -> Option<(String, String)> {
        self.selected_chunk()
            .map(|e| (e.chunk.id.clone(), e.chunk.review_token.clone()))
    }

    fn reselect_chunk(&mut self, id: Option<&str>) {
        let found = id.and_then(|id| self.chunks().iter().position(|e| e.chunk.id == id));
        self.chunk_cursor = match found {
            Some(i) => i,
            None => self.chunk_cursor.min(self.chunk_count().saturating_sub(1)),
        };
    }

    fn adjust_pending(&mut self, sandbox: &str, was: bool, now: bool) {
        if let Some(row) = self.summary_mut(sandbox) {
            match (was, now) {
                (false, true) => row.pending += 1,
                (true, false) => row.pending = row.pending.saturating_sub(1),
                _ => {}
            }
        }
    }
}

/// The first 8 characters of an id, for messages.
pub fn short_id(id: &str) -> &str {
    id.get(..8).unwrap_or(id)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Up(usize),
    Down(usize),
    PageUp,
    PageDown,
    First,
    Last,
}

impl Step {
    /// The new cursor in a list of `len` items.
    fn apply(self, cursor: usize, len: usize, page: usize) -> usize {
        let last = len.saturating_sub(1);
        let page = page.max(1);
        match self {
            Step::Up(n) => cursor.saturating_sub(n),
            Step::Down(n) => cursor.saturating_add(n).min(last),
            Step::PageUp => cursor.saturating_sub(page),
            Step::PageDown => cursor.saturating_add(page).min(last),
            Step::First => 0,
            Step::Last => last,
        }
    }
}

fn movement(code: KeyCode) -> Option<Step> {
    Some(match code {
        KeyCode::Char('k') | KeyCode::Up => Step::Up(1),
        KeyCode::Char('j') | KeyCode::Down => Step::Down(1),
        KeyCode::PageUp => Step::PageUp,
        KeyCode::PageDown => Step::PageDown,
        KeyCode::Char('g') | KeyCode::Home => Step::First,
        KeyCode::Char('G') | KeyCode::End => Step::Last,
        _ => return None,
    })
}
