//! Renders the inbox. Reads the [`App`] only; the one thing it hands back
//! is the geometry it used (so paging keys move by what is on screen).
//!
//! Meaning never rides on colour alone: statuses are words in brackets,
//! warnings start with `!`, the selected row with `>`. Every size down to
//! 1x1 renders; pieces that do not fit are dropped, least useful first.

use ratatui::{
    Frame,
    layout::{Position, Rect},
    style::{Color, Modifier, Style},
    text::{Line, Span},
    widgets::{Block, Clear, Paragraph},
};
use serde_json::Value;

use super::app::{
    App, ChunkEntry, Focus, Geometry, Health, SandboxSummary, StatusLine, View,
    approval_annotation, short_id,
};
use crate::{control::pb, drafts::render};

/// Ports on which an L4-only grant is almost certainly an HTTP service.
const HTTP_PORTS: [u64; 4] = [80, 443, 8080, 8443];
/// The label column of the detail view (as wide as the CLI's).
const LABEL_WIDTH: usize = 13;
/// Below this width labels get their own line.
const LABELS_INLINE_MIN_WIDTH: usize = 40;

pub fn draw(frame: &mut Frame, app: &App) {
    let screen = split_screen(frame.area());
    let mut geometry = Geometry::default();
    if let Some(area) = screen.header {
        draw_header(frame, area, app);
    }
    match app.base_view() {
        View::Dashboard => draw_dashboard(frame, screen.main, app, &mut geometry),
        View::List => draw_list(frame, screen.main, app, &mut geometry),
        _ => draw_detail(frame, screen.main, app, &mut geometry),
    }
    if let Some(area) = screen.log {
        draw_log(frame, area, app, &mut geometry);
    } else {
        geometry.log_rows = 1;
    }
    if let Some(area) = screen.status {
        draw_status(frame, area, app, screen.header.is_some());
    }
    if let Some(area) = screen.footer {
        draw_footer(frame, area, app);
    }
    match app.view() {
        View::Help => draw_help(frame, frame.area()),
        View::RejectPrompt => draw_reject_prompt(frame, frame.area(), app),
        View::ConfirmApproveAll => draw_confirm_approve_all(frame, frame.area(), app),
        _ => {}
    }
    app.record_geometry(geometry);
}

// ---- screen layout ----

struct Screen {
    header: Option<Rect>,
    main: Rect,
    log: Option<Rect>,
    status: Option<Rect>,
    footer: Option<Rect>,
}

/// Which rows go where; smaller screens shed the log pane, then the header
/// and footer, then the status line.
fn split_screen(area: Rect) -> Screen {
    let mut rest = area;
    let tall = area.height >= 16;
    let medium = area.height >= 8;
    let header = medium.then(|| take_top(&mut rest, 1));
    let footer = medium.then(|| take_bottom(&mut rest, 1));
    let status = (area.height >= 3).then(|| take_bottom(&mut rest, 1));
    let log = tall.then(|| {
        let height = if area.height >= 32 {
            area.height / 4
        } else {
            6
        };
        take_bottom(&mut rest, height)
    });
    Screen {
        header,
        main: rest,
        log,
        status,
        footer,
    }
}

fn take_top(rest: &mut Rect, rows: u16) -> Rect {
    let rows = rows.min(rest.height);
    let top = Rect {
        height: rows,
        ..*rest
    };
    rest.y = rest.y.saturating_add(rows);
    rest.height -= rows;
    top
}

fn take_bottom(rest: &mut Rect, rows: u16) -> Rect {
    let rows = rows.min(rest.height);
    rest.height -= rows;
    Rect {
        y: rest.y.saturating_add(rest.height),
        height: rows,
        ..*rest
    }
}

/// Whether `area` has room for a border (else a title line, else nothing).
fn has_border(area: Rect) -> bool {
    area.height >= 4 && area.width >= 12
}

/// The area inside what [`framed`] draws.
fn framed_inner(area: Rect) -> Rect {
    if has_border(area) {
        Block::bordered().inner(area)
    } else if area.height >= 2 {
        let mut rest = area;
        take_top(&mut rest, 1);
        rest
    } else {
        area
    }
}

/// A titled frame when there is room for one, else a title line (or
/// nothing); returns the area inside.
fn framed(frame: &mut Frame, area: Rect, title: &str, focused: bool) -> Rect {
    let border = if focused {
        Style::default().fg(Color::Cyan)
    } else {
        Style::default()
    };
    if has_border(area) {
        let block = Block::bordered()
            .border_style(border)
            .title(Span::styled(format!(" {title} "), bold()));
        frame.render_widget(block, area);
    } else if area.height >= 2 {
        let top = Rect { height: 1, ..area };
        let text = clip(title, top.width.into());
        frame.render_widget(Paragraph::new(Span::styled(text, bold())), top);
    }
    framed_inner(area)
}

fn render_lines(frame: &mut Frame, area: Rect, lines: Vec<Line<'static>>) {
    frame.render_widget(Paragraph::new(lines), area);
}

// ---- header, status, footer ----

fn draw_header(frame: &mut Frame, area: Rect, app: &App) {
    let mut spans = vec![Span::styled("Portcullis inbox", bold())];
    let (connected, note) = app.connection();
    if !connected {
        let text = if note.is_empty() {
            " | ! disconnected".to_string()
        } else {
            format!(" | ! disconnected: {note}")
        };
        spans.push(Span::styled(text, error_style()));
    }
    spans.push(Span::raw(" | "));
    spans.push(health_span(app.health()));
    let line = clip_line(Line::from(spans), area.width.into());
    frame.render_widget(
        Paragraph::new(line).style(Style::default().add_modifier(Modifier::REVERSED)),
        area,
    );
}

fn health_span(health: &Health) -> Span<'static> {
    match health {
        Health::Unknown => Span::raw("agent: ?"),
        Health::Unreachable => Span::styled("agent: ! UNREACHABLE", error_style()),
        Health::Up(s) => {
            let mut text = format!(
                "agent up v{} {} | {} progs | conns {} active, {} denied",
                s.version,
                uptime(s.uptime_seconds),
                s.programs_attached,
                s.connections_active,
                s.connections_denied
            );
            let lost = s.audit_dropped + s.audit_lost;
            if lost > 0 {
                text.push_str(&format!(" | ! {lost} audit events lost"));
            }
            Span::raw(text)
        }
    }
}

fn uptime(seconds: u64) -> String {
    let (d, h, m) = (seconds / 86_400, seconds / 3_600 % 24, seconds / 60 % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{seconds}s"),
        (0, 0, m) => format!("{m}m"),
        (0, h, m) => format!("{h}h{m}m"),
        (d, h, _) => format!("{d}d{h}h"),
    }
}

fn draw_status(frame: &mut Frame, area: Rect, app: &App, header_shown: bool) {
    let (connected, note) = app.connection();
    let span = match app.status() {
        // With no header the connection problem goes here.
        StatusLine::Empty if !connected && !header_shown => {
            Span::styled(format!("! disconnected {note}"), error_style())
        }
        StatusLine::Empty => Span::styled("? help  q quit", dim()),
        StatusLine::Working(text) => Span::styled(format!(".. {text}"), warn_style()),
        StatusLine::Info(text) => Span::raw(text.clone()),
        StatusLine::Ok(text) => Span::styled(format!("ok: {text}"), ok_style()),
        StatusLine::Err(text) => Span::styled(format!("error: {text}"), error_style()),
    };
    // Multi-line messages (server errors) are folded onto the one line.
    let text = span.content.replace('\n', " ");
    let line = Line::from(Span::styled(clip(&text, area.width.into()), span.style));
    frame.render_widget(Paragraph::new(line), area);
}

fn draw_footer(frame: &mut Frame, area: Rect, app: &App) {
    let hints = match (app.focus(), app.base_view()) {
        (Focus::Log, _) => "j/k scroll log  G follow  Tab back  ? help  q quit",
        (_, View::Dashboard) => "Enter open  j/k move  Tab log  ? help  q quit",
        (_, View::List) => {
            "a approve  x reject  A all  e edit  u undo  Enter detail  Esc back  ? help"
        }
        _ => "a approve  x reject  A all  e edit  u undo  j/k scroll  Esc back  ? help",
    };
    let line = Line::from(Span::styled(clip(hints, area.width.into()), dim()));
    frame.render_widget(Paragraph::new(line), area);
}

// ---- dashboard ----

/// A table column: its natural width, how long it is kept as the screen
/// narrows (0 = always), and whether it takes the width left over.
#[derive(Clone, Copy)]
struct Column {
    width: usize,
    keep: u8,
    flex_min: Option<usize>,
}

impl Column {
    fn fixed(width: usize, keep: u8) -> Self {
        Self {
            width,
            keep,
            flex_min: None,
        }
    }

    fn flex(width: usize, min: usize) -> Self {
        Self {
            width,
            keep: 0,
            flex_min: Some(min.min(width)),
        }
    }
}

/// The width each column gets, `None` for dropped ones. Columns are
/// separated by one space. The flex column shrinks below its minimum only
/// when the columns always kept do not fit otherwise.
fn fit_columns(columns: &[Column], available: usize) -> Vec<Option<usize>> {
    let base = |c: &Column| c.flex_min.unwrap_or(c.width);
    let mut order: Vec<usize> = (0..columns.len()).collect();
    order.sort_by_key(|&i| columns[i].keep);
    let mut chosen = vec![false; columns.len()];
    let mut used = 0usize;
    for i in order {
        let extra = base(&columns[i]) + usize::from(used > 0);
        if columns[i].keep == 0 || used + extra <= available {
            chosen[i] = true;
            used += extra;
        }
    }
    columns
        .iter()
        .zip(chosen)
        .map(|(c, kept)| {
            kept.then(|| match c.flex_min {
                Some(min) => (available + min).saturating_sub(used).min(c.width),
                None => c.width,
            })
        })
        .collect()
}

/// One table cell: its text, right-aligned or not, and a style laid over
/// the row's.
struct TableCell {
    text: String,
    right: bool,
    /// Cut in the middle: rule names differ at their ends.
    elide_middle: bool,
    style: Style,
}

impl TableCell {
    fn left(text: impl Into<String>) -> Self {
        Self {
            text: text.into(),
            right: false,
            elide_middle: false,
            style: Style::default(),
        }
    }

    fn name(text: impl Into<String>) -> Self {
        Self {
            elide_middle: true,
            ..Self::left(text)
        }
    }

    fn right(text: impl Into<String>) -> Self {
        Self {
            right: true,
            ..Self::left(text)
        }
    }

    fn styled(self, style: Style) -> Self {
        Self { style, ..self }
    }
}

/// One table row: cells laid out by `widths`, dropped columns skipped.
fn table_row(cells: &[TableCell], widths: &[Option<usize>], row: Style) -> Vec<Span<'static>> {
    let mut spans = Vec::new();
    for (cell, width) in cells.iter().zip(widths) {
        let Some(width) = *width else { continue };
        if !spans.is_empty() {
            spans.push(Span::styled(" ", row));
        }
        let text = if cell.elide_middle {
            clip_middle(&cell.text, width)
        } else {
            cell.text.clone()
        };
        spans.push(Span::styled(
            pad(&text, width, cell.right),
            row.patch(cell.style),
        ));
    }
    spans
}

fn dashboard_columns(rows: &[SandboxSummary]) -> [Column; 6] {
    let name = rows
        .iter()
        .map(|r| r.sandbox.name.chars().count())
        .max()
        .unwrap_or(0)
        .max("SANDBOX".len());
    [
        Column::flex(name, 8),
        Column::fixed("PENDING".len(), 0),
        Column::fixed("POLICY".len(), 1),
        Column::fixed(12, 4),
        Column::fixed("MODE".len().max(6), 2),
        Column::fixed("DENIALS".len(), 3),
    ]
}

fn dashboard_cells(row: &SandboxSummary) -> [TableCell; 6] {
    let s = &row.sandbox;
    let (version, hash) = if s.policy_version == 0 {
        ("none".to_string(), "(deny all)".to_string())
    } else {
        (
            format!("v{}", s.policy_version),
            short(&s.policy_hash, 12).to_string(),
        )
    };
    let pending = if row.pending > 0 {
        TableCell::right(row.pending.to_string()).styled(warn_style())
    } else {
        TableCell::right("0")
    };
    [
        TableCell::name(s.name.clone()),
        pending,
        TableCell::right(version),
        TableCell::left(hash),
        TableCell::left(or_text(&s.approval_mode, "manual")),
        TableCell::right(row.denials_recent.to_string()),
    ]
}

fn draw_dashboard(frame: &mut Frame, area: Rect, app: &App, geometry: &mut Geometry) {
    let title = format!("Sandboxes ({})", app.sandboxes().len());
    let inner = framed(frame, area, &title, app.focus() == Focus::Main);
    let width = usize::from(inner.width);
    let rows = app.sandboxes();
    if rows.is_empty() {
        let text = match app.health() {
            Health::Unreachable => "agent unreachable: no sandboxes to show",
            _ => "(no sandboxes)",
        };
        render_lines(frame, inner, wrap_plain(text, width, dim()));
        return;
    }
    let widths = fit_columns(&dashboard_columns(rows), width.saturating_sub(2));
    let headers = [
        TableCell::left("SANDBOX"),
        TableCell::right("PENDING"),
        TableCell::right("POLICY"),
        TableCell::left("HASH"),
        TableCell::left("MODE"),
        TableCell::right("DENIALS"),
    ];
    let mut lines = vec![Line::from(
        [vec![Span::raw("  ")], table_row(&headers, &widths, bold())].concat(),
    )];
    let visible = usize::from(inner.height).saturating_sub(1).max(1);
    geometry.list_page = visible;
    let cursor = app.sandbox_cursor();
    for (i, row) in rows
        .iter()
        .enumerate()
        .skip(window_start(cursor, visible))
        .take(visible)
    {
        let selected = i == cursor;
        let style = row_style(selected);
        let marker = if selected { "> " } else { "  " };
        let mut spans = vec![Span::styled(marker, style)];
        spans.extend(table_row(&dashboard_cells(row), &widths, style));
        lines.push(Line::from(spans));
    }
    render_lines(frame, inner, lines);
}

/// The first visible item so that `cursor` is on screen.
fn window_start(cursor: usize, visible: usize) -> usize {
    (cursor + 1).saturating_sub(visible.max(1))
}

// ---- draft list ----

fn draw_list(frame: &mut Frame, area: Rect, app: &App, geometry: &mut Geometry) {
    let sandbox = app.selected_sandbox().unwrap_or("?");
    let chunks = app.chunks();
    let pending = app.selected_summary().map_or(0, |s| s.pending);
    let position = if chunks.is_empty() {
        String::new()
    } else {
        format!(" [{}/{}]", app.chunk_cursor() + 1, chunks.len())
    };
    let title = format!("Drafts: {sandbox} - {pending} pending{position}");
    let inner = framed(frame, area, &title, app.focus() == Focus::Main);
    let width = usize::from(inner.width);
    if chunks.is_empty() {
        render_lines(frame, inner, wrap_plain("(no draft chunks)", width, dim()));
        return;
    }
    // Two lines a chunk when there is room: the second carries the
    // endpoint summary and binary, which never fit beside the rest at 80.
    let two_lines = inner.height >= 4;
    let per_item = if two_lines { 2 } else { 1 };
    let visible = (usize::from(inner.height) / per_item).max(1);
    geometry.list_page = visible;
    let widths = fit_columns(&chunk_columns(chunks), width.saturating_sub(2));
    let cursor = app.chunk_cursor();
    let mut lines = Vec::new();
    for (i, entry) in chunks
        .iter()
        .enumerate()
        .skip(window_start(cursor, visible))
        .take(visible)
    {
        let selected = i == cursor;
        let style = row_style(selected);
        let marker = if selected { "> " } else { "  " };
        let mut spans = vec![Span::styled(marker, style)];
        spans.extend(chunk_row_spans(entry, &widths, style));
        lines.push(Line::from(spans));
        if two_lines {
            lines.push(chunk_summary_line(entry, width));
        }
    }
    render_lines(frame, inner, lines);
}

fn chunk_columns(chunks: &[ChunkEntry]) -> [Column; 5] {
    let widest = |f: &dyn Fn(&ChunkEntry) -> usize| chunks.iter().map(f).max().unwrap_or(0);
    [
        Column::flex(widest(&|e| e.chunk.rule_name.chars().count()), 14),
        Column::fixed(widest(&|e| status_tag(&e.chunk.status).chars().count()), 0),
        Column::fixed(4, 2),
        Column::fixed(widest(&|e| approval_annotation(e).len()), 1),
        Column::fixed(widest(&|e| hits(e.chunk.hit_count).len()), 3),
    ]
}

fn chunk_row_spans(entry: &ChunkEntry, widths: &[Option<usize>], row: Style) -> Vec<Span<'static>> {
    let c = &entry.chunk;
    let annotation = approval_annotation(entry);
    let cells = [
        TableCell::name(c.rule_name.clone()),
        TableCell::left(status_tag(&c.status)).styled(status_style(&c.status)),
        TableCell::right(percent(c.confidence)),
        TableCell::left(annotation).styled(annotation_style(annotation)),
        TableCell::right(hits(c.hit_count)),
    ];
    table_row(&cells, widths, row)
}

/// `    api.example:443 [L4] +1  (curl)` — endpoints as the CLI renders them.
fn chunk_summary_line(entry: &ChunkEntry, width: usize) -> Line<'static> {
    let c = &entry.chunk;
    let rule = parse_rule(&c.proposed_rule_json);
    let endpoints = render::endpoints(&rule);
    let mut summary = endpoints
        .first()
        .cloned()
        .unwrap_or_else(|| "(no endpoints)".into());
    if endpoints.len() > 1 {
        summary.push_str(&format!(" +{} more", endpoints.len() - 1));
    }
    if !c.provider_name.is_empty() {
        summary = format!("provider {}: {summary}", c.provider_name);
    }
    let binary = format!("({})", basename(&c.binary));
    let room = width.saturating_sub(4);
    // The binary survives down to a narrow screen; the summary is cut first.
    let line = if room >= binary.len() + 2 + 12 {
        let summary = clip(&summary, room - binary.len() - 2);
        format!("    {summary}  {binary}")
    } else {
        format!("    {}", clip(&summary, room))
    };
    Line::from(Span::styled(line, dim()))
}

// ---- detail ----

fn draw_detail(frame: &mut Frame, area: Rect, app: &App, geometry: &mut Geometry) {
    let Some(entry) = app.selected_chunk() else {
        let inner = framed(frame, area, "Draft", true);
        render_lines(
            frame,
            inner,
            wrap_plain("(chunk no longer present)", inner.width.into(), dim()),
        );
        return;
    };
    let inner = framed_inner(area);
    let lines = detail_lines(entry, inner.width.into());
    let height = usize::from(inner.height);
    geometry.detail_page = height.max(1);
    geometry.detail_max_scroll = lines.len().saturating_sub(height);
    let scroll = app.detail_scroll().min(geometry.detail_max_scroll);
    // Say when there is more than fits, and where the view is.
    let position = if lines.len() > height {
        let last = (scroll + height).min(lines.len());
        format!(" lines {}-{last}/{}", scroll + 1, lines.len())
    } else {
        String::new()
    };
    let title = format!(
        "Draft {} {}{position}",
        entry.chunk.rule_name,
        status_tag(&entry.chunk.status)
    );
    framed(frame, area, &title, app.focus() == Focus::Main);
    let visible: Vec<Line<'static>> = lines.into_iter().skip(scroll).take(height).collect();
    render_lines(frame, inner, visible);
}

/// The whole chunk, wrapped to `width`.
fn detail_lines(entry: &ChunkEntry, width: usize) -> Vec<Line<'static>> {
    let c = &entry.chunk;
    let rule = parse_rule(&c.proposed_rule_json);
    let mut doc = Detail::new(width);
    doc.field("Rule:", &c.rule_name, bold());
    doc.field("Status:", &status_tag(&c.status), status_style(&c.status));
    let annotation = approval_annotation(entry);
    if !annotation.is_empty() {
        doc.field("Review:", annotation, annotation_style(annotation));
    }
    doc.field("Chunk:", &chunk_origin(c), Style::default());
    let mut confidence = percent(c.confidence);
    if c.hit_count > 1 {
        confidence.push_str(&format!("   Hits: {}", hits(c.hit_count)));
    }
    doc.field("Confidence:", &confidence, Style::default());
    doc.field("Binary:", &or_dash(&c.binary), Style::default());
    if c.provider_name.is_empty() {
        doc.endpoints("Endpoints:", &rule);
    } else {
        doc.provider(entry, &rule);
    }
    doc.list("Binaries:", &render::binaries(&rule), Style::default());
    doc.field(
        "Intent:",
        &or_text(&c.rationale, "(none given)"),
        Style::default(),
    );
    doc.validation(&c.validation_result);
    let notes: Vec<String> = sentences(&c.security_notes)
        .into_iter()
        .map(|s| format!("! {s}"))
        .collect();
    doc.list("Security:", &notes, warn_style());
    if !c.application_error.trim().is_empty() {
        doc.field(
            "Application:",
            &format!("! {}", c.application_error.trim()),
            error_style(),
        );
    }
    if !c.rejection_reason.is_empty() {
        doc.field("Reason:", &c.rejection_reason, Style::default());
    }
    if c.approved_policy_version > 0 {
        doc.field(
            "Version:",
            &c.approved_policy_version.to_string(),
            Style::default(),
        );
    }
    if !c.candidate_effective_policy_hash.is_empty() {
        doc.field(
            "Candidate:",
            short(&c.candidate_effective_policy_hash, 12),
            Style::default(),
        );
    }
    if entry.denials.is_empty() {
        doc.field("Denials:", "(none recorded)", dim());
    } else {
        doc.list("Denials:", &entry.denials, dim());
    }
    doc.lines
}

/// `1234abcd (agent, agent_authored)`: where the chunk came from.
fn chunk_origin(c: &pb::DraftChunk) -> String {
    let origin: Vec<&str> = [c.stage.as_str(), c.analysis_mode.as_str()]
        .into_iter()
        .filter(|s| !s.is_empty())
        .collect();
    if origin.is_empty() {
        short_id(&c.id).to_string()
    } else {
        format!("{} ({})", short_id(&c.id), origin.join(", "))
    }
}

/// Builds the detail view: labelled fields, values wrapped beside the label.
struct Detail {
    width: usize,
    lines: Vec<Line<'static>>,
}

impl Detail {
    fn new(width: usize) -> Self {
        Self {
            width,
            lines: Vec::new(),
        }
    }

    fn labels_inline(&self) -> bool {
        self.width >= LABELS_INLINE_MIN_WIDTH
    }

    /// One value under `label` (empty label: a continuation), indented by
    /// `indent` more columns.
    fn row(&mut self, label: &str, indent: usize, text: &str, style: Style) {
        let label_width = if self.labels_inline() {
            LABEL_WIDTH
        } else {
            if !label.is_empty() {
                self.lines
                    .push(Line::from(Span::styled(label.to_string(), bold())));
            }
            2
        };
        let lead = label_width + indent;
        for (i, piece) in wrap(text, self.width.saturating_sub(lead))
            .into_iter()
            .enumerate()
        {
            let head = if i == 0 && self.labels_inline() {
                format!("{label:<label_width$}{:indent$}", "")
            } else {
                " ".repeat(lead)
            };
            self.lines.push(Line::from(vec![
                Span::styled(head, bold()),
                Span::styled(piece, style),
            ]));
        }
    }

    fn field(&mut self, label: &str, text: &str, style: Style) {
        self.row(label, 0, text, style);
    }

    fn list(&mut self, label: &str, items: &[String], style: Style) {
        for (i, item) in items.iter().enumerate() {
            self.row(if i == 0 { label } else { "" }, 0, item, style);
        }
    }

    /// Each endpoint as the CLI shows it, then its allow and deny lines
    /// and, for an L4-only grant on an HTTP port, the warning.
    fn endpoints(&mut self, label: &str, rule: &Value) {
        let endpoints = rule_endpoints(rule);
        if endpoints.is_empty() {
            self.field(label, "(none)", dim());
        }
        for (i, ep) in endpoints.iter().enumerate() {
            self.row(
                if i == 0 { label } else { "" },
                0,
                &render::endpoint(ep),
                Style::default(),
            );
            for line in l7_lines(ep) {
                self.row("", 2, &line, Style::default());
            }
            if is_l4_only_on_http_port(ep) {
                self.row(
                    "",
                    2,
                    "! L4-only on an HTTP port: grants every method and path; an L7 rule is probably what the agent needs",
                    warn_style(),
                );
            }
        }
    }

    /// A provider request: what attaching it gives the sandbox.
    fn provider(&mut self, entry: &ChunkEntry, rule: &Value) {
        let c = &entry.chunk;
        let kind = or_text(&c.provider_type, "?");
        self.field(
            "Provider:",
            &format!("attach '{}' (type {kind})", c.provider_name),
            bold(),
        );
        let keys = if entry.provider_keys.is_empty() {
            "(no credential keys)".to_string()
        } else {
            format!("{} (names only)", entry.provider_keys.join(", "))
        };
        self.field("Keys:", &keys, Style::default());
        self.endpoints("Opens:", rule);
    }

    /// The prover's verdict, each finding on its own line.
    fn validation(&mut self, result: &str) {
        let mut lines = result.lines().map(str::trim).filter(|l| !l.is_empty());
        let Some(verdict) = lines.next() else {
            self.field("Validation:", "(not validated)", dim());
            return;
        };
        let clean = verdict == "prover: no new findings";
        self.field(
            "Validation:",
            verdict,
            if clean { ok_style() } else { warn_style() },
        );
        for finding in lines {
            self.row("", 2, finding, warn_style());
        }
    }
}

fn parse_rule(json: &str) -> Value {
    serde_json::from_str(json).unwrap_or(Value::Null)
}

fn rule_endpoints(rule: &Value) -> Vec<Value> {
    rule.get("endpoints")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
}

/// `allow GET /x`, `deny DELETE /y`: the L7 rules one per line.
fn l7_lines(ep: &Value) -> Vec<String> {
    let method_path = |r: &Value| {
        let field = |k: &str| {
            r.get(k)
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
                .unwrap_or("*")
                .to_string()
        };
        format!("{} {}", field("method"), field("path"))
    };
    let allows = ep
        .get("rules")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|r| r.get("allow"))
        .map(|a| format!("allow {}", method_path(a)));
    let denies = ep
        .get("deny_rules")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|d| format!("deny {}", method_path(d)));
    allows.chain(denies).collect()
}

/// An endpoint with no L7 protocol on a port that speaks HTTP: the agent
/// most likely wanted some methods and paths, not the whole service.
fn is_l4_only_on_http_port(ep: &Value) -> bool {
    let protocol = ep.get("protocol").and_then(Value::as_str).unwrap_or("");
    if !(protocol.is_empty() || protocol == "tcp") {
        return false;
    }
    let listed = ep
        .get("ports")
        .and_then(Value::as_array)
        .into_iter()
        .flatten();
    let single = ep.get("port").into_iter();
    listed
        .chain(single)
        .filter_map(Value::as_u64)
        .any(|p| HTTP_PORTS.contains(&p))
}

/// Security notes are space-joined sentences; one per line reads better.
fn sentences(notes: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    let mut chars = notes.trim().chars().peekable();
    while let Some(ch) = chars.next() {
        current.push(ch);
        if ch == '.' && chars.peek() == Some(&' ') {
            let mut lookahead = chars.clone();
            lookahead.next();
            if lookahead
                .next()
                .is_some_and(|n| n.is_uppercase() || n == '`')
            {
                out.push(std::mem::take(&mut current).trim().to_string());
            }
        }
    }
    if !current.trim().is_empty() {
        out.push(current.trim().to_string());
    }
    out
}

// ---- log ----

fn draw_log(frame: &mut Frame, area: Rect, app: &App, geometry: &mut Geometry) {
    let focused = app.focus() == Focus::Log;
    let follow = if app.log_scroll() == 0 {
        "following".to_string()
    } else {
        format!("+{} up, G follows", app.log_scroll())
    };
    let sandbox = app.selected_sandbox().unwrap_or("-");
    let title = format!(
        "Log: {sandbox} [{follow}]{}",
        if focused { " (focus)" } else { "" }
    );
    let inner = framed(frame, area, &title, focused);
    let rows = usize::from(inner.height);
    geometry.log_rows = rows.max(1);
    let log = app.log();
    if log.is_empty() {
        render_lines(
            frame,
            inner,
            wrap_plain("(no events yet)", inner.width.into(), dim()),
        );
        return;
    }
    let end = log.len().saturating_sub(app.log_scroll());
    let start = end.saturating_sub(rows);
    let width = usize::from(inner.width);
    let lines = log[start..end]
        .iter()
        .map(|l| Line::from(Span::styled(clip(l, width), log_style(l))))
        .collect();
    render_lines(frame, inner, lines);
}

fn log_style(line: &str) -> Style {
    if line.contains(" DENIED ") {
        error_style()
    } else {
        Style::default()
    }
}

// ---- modals ----

/// A framed box in the middle of `area`, at most `max_width` wide and as
/// tall as its lines; returns the area inside and the lines to draw there.
fn modal(
    frame: &mut Frame,
    area: Rect,
    max_width: u16,
    title: &str,
    lines: impl Fn(usize) -> Vec<Line<'static>>,
) -> (Rect, Vec<Line<'static>>) {
    let width = max_width.min(area.width);
    let body = lines(usize::from(width.saturating_sub(2)));
    let wanted = u16::try_from(body.len())
        .unwrap_or(u16::MAX)
        .saturating_add(2);
    let height = wanted.min(area.height);
    let rect = Rect {
        x: area.x.saturating_add((area.width - width) / 2),
        y: area.y.saturating_add((area.height - height) / 2),
        width,
        height,
    };
    frame.render_widget(Clear, rect);
    let inner = framed(frame, rect, title, true);
    // Without room for a border the lines get the inner width instead.
    let body = if usize::from(inner.width) + 2 == usize::from(width) {
        body
    } else {
        lines(usize::from(inner.width))
    };
    (inner, body)
}

fn draw_help(frame: &mut Frame, area: Rect) {
    const KEYS: [(&str, &str); 16] = [
        ("j/k Up/Dn", "move; scroll in detail and log"),
        ("PgUp/PgDn", "a page up or down"),
        ("g/G", "first / last"),
        ("Enter", "open: sandboxes > drafts > detail"),
        ("Esc/p", "back"),
        ("Tab", "switch focus: main / log"),
        ("a", "approve the chunk (pending or rejected)"),
        ("x", "reject, or revoke if approved; asks a reason"),
        ("A", "approve all pending; flagged ones only with f"),
        ("e", "edit the proposed rule in $EDITOR"),
        ("u", "undo an approval (back to pending)"),
        ("?", "this help; any key closes it"),
        ("q Ctrl-C", "quit"),
        ("", ""),
        ("[status]", "[pending] [approved] [rejected]"),
        ("! >", "warning; selected row"),
    ];
    let (inner, lines) = modal(frame, area, 64, "Keys", |width| {
        KEYS.iter()
            .map(|(key, what)| Line::from(clip(&format!("{key:<11}{what}"), width)))
            .collect()
    });
    render_lines(frame, inner, lines);
}

fn draw_reject_prompt(frame: &mut Frame, area: Rect, app: &App) {
    let Some(target) = app.reject_target() else {
        return;
    };
    let (verb, effect) = if target.revoke {
        ("Revoke", "removes what its approval added; ")
    } else {
        ("Reject", "")
    };
    let title = format!("{verb} '{}'", target.rule_name);
    let question = format!("Reason, sent to the agent verbatim ({effect}may be empty):");
    let input = |width: usize| tail(&target.reason, width.saturating_sub(3));
    let (inner, lines) = modal(frame, area, 70, &title, |width| {
        let mut lines = wrap_plain(&question, width, Style::default());
        lines.push(Line::from(vec![
            Span::styled("> ", bold()),
            Span::raw(input(width)),
        ]));
        lines.extend(wrap_plain("Enter submit, Esc cancel", width, dim()));
        lines
    });
    let question_rows = wrap(&question, inner.width.into()).len();
    let (lines, input_row) = input_first_if_cramped(lines, question_rows, inner.height);
    // The terminal cursor sits where the next character goes.
    if input_row < usize::from(inner.height) && inner.width > 0 {
        let typed = input(inner.width.into()).chars().count();
        let x = (2 + typed).min(usize::from(inner.width) - 1);
        frame.set_cursor_position(Position::new(
            inner.x.saturating_add(u16::try_from(x).unwrap_or(0)),
            inner
                .y
                .saturating_add(u16::try_from(input_row).unwrap_or(0)),
        ));
    }
    render_lines(frame, inner, lines);
}

fn draw_confirm_approve_all(frame: &mut Frame, area: Rect, app: &App) {
    let Some(target) = app.approve_all_target() else {
        return;
    };
    let title = format!("Approve all in '{}'", target.sandbox);
    let n = target.pending;
    let flagged = target.flagged.min(n);
    let mut explain = vec![format!("{n} pending {}.", plural(n, "chunk"))];
    let choices = if flagged > 0 {
        let has = if flagged == 1 { "has" } else { "have" };
        explain.push(format!(
            "! {flagged} {has} security notes and will be skipped unless included."
        ));
        format!(
            "y approve {} (skip flagged), f include flagged (approve {n}), n/Esc cancel",
            n - flagged
        )
    } else {
        format!("y/Enter approve {n}, n/Esc cancel")
    };
    let body = |width: usize, choices_first: bool| {
        let mut lines = Vec::new();
        for (i, text) in explain.iter().enumerate() {
            let style = if i == 0 {
                Style::default()
            } else {
                warn_style()
            };
            lines.extend(wrap_plain(text, width, style));
        }
        let choice_lines = wrap_plain(&choices, width, bold());
        if choices_first {
            [choice_lines, lines].concat()
        } else {
            lines.extend(choice_lines);
            lines
        }
    };
    let (inner, lines) = modal(frame, area, 70, &title, |width| body(width, false));
    // Cramped: the choices matter most.
    let lines = if lines.len() > usize::from(inner.height) {
        body(inner.width.into(), true)
    } else {
        lines
    };
    render_lines(frame, inner, lines);
}

/// When the prompt does not fit, the input line goes first; returns the
/// lines and the row the input is on.
fn input_first_if_cramped(
    mut lines: Vec<Line<'static>>,
    input_row: usize,
    height: u16,
) -> (Vec<Line<'static>>, usize) {
    if lines.len() <= usize::from(height) || input_row >= lines.len() {
        return (lines, input_row);
    }
    let input = lines.remove(input_row);
    lines.insert(0, input);
    (lines, 0)
}

// ---- small text helpers ----

fn status_tag(status: &str) -> String {
    format!("[{}]", or_text(status, "?"))
}

fn percent(confidence: f32) -> String {
    format!("{:.0}%", (confidence * 100.0).clamp(0.0, 100.0))
}

fn hits(count: u32) -> String {
    if count > 1 {
        format!("{count}x")
    } else {
        String::new()
    }
}

fn basename(path: &str) -> &str {
    match path.rsplit('/').next() {
        Some(name) if !name.is_empty() => name,
        _ => "any binary",
    }
}

fn short(text: &str, n: usize) -> &str {
    text.get(..n).unwrap_or(text)
}

fn or_text(text: &str, fallback: &str) -> String {
    if text.trim().is_empty() {
        fallback.to_string()
    } else {
        text.to_string()
    }
}

fn or_dash(text: &str) -> String {
    or_text(text, "-")
}

fn plural(n: usize, word: &str) -> String {
    if n == 1 {
        word.to_string()
    } else {
        format!("{word}s")
    }
}

/// `text` cut to `width` characters, with `…` when cut.
fn clip(text: &str, width: usize) -> String {
    if text.chars().count() <= width {
        return text.to_string();
    }
    if width == 0 {
        return String::new();
    }
    let mut cut: String = text.chars().take(width - 1).collect();
    cut.push('…');
    cut
}

/// `text` cut to `width` characters by dropping its middle.
fn clip_middle(text: &str, width: usize) -> String {
    let count = text.chars().count();
    if count <= width || width < 5 {
        return clip(text, width);
    }
    let head = (width - 1) / 2;
    let tail = width - 1 - head;
    let start: String = text.chars().take(head).collect();
    let end: String = text.chars().skip(count - tail).collect();
    format!("{start}…{end}")
}

/// The last `width` characters, `…` first when cut.
fn tail(text: &str, width: usize) -> String {
    let count = text.chars().count();
    if count <= width {
        return text.to_string();
    }
    if width == 0 {
        return String::new();
    }
    let kept: String = text.chars().skip(count - (width - 1)).collect();
    format!("…{kept}")
}

/// `text` padded or cut to exactly `width` characters.
fn pad(text: &str, width: usize, right_align: bool) -> String {
    let text = clip(text, width);
    if right_align {
        format!("{text:>width$}")
    } else {
        format!("{text:<width$}")
    }
}

/// A styled line cut to `width` characters.
fn clip_line(line: Line<'static>, width: usize) -> Line<'static> {
    let mut left = width;
    let mut spans = Vec::new();
    for span in line.spans {
        if left == 0 {
            break;
        }
        let text = clip(&span.content, left);
        left = left.saturating_sub(text.chars().count());
        spans.push(Span::styled(text, span.style));
    }
    Line::from(spans)
}

/// Word-wraps `text` to `width` characters, keeping the spacing inside a
/// line; words longer than a line are split. Newlines start new lines.
fn wrap(text: &str, width: usize) -> Vec<String> {
    if width == 0 {
        return Vec::new();
    }
    let mut lines = Vec::new();
    for paragraph in text.split('\n') {
        let mut line = String::new();
        let mut len = 0usize;
        // Empty pieces are the extra spaces of a run.
        for (i, word) in paragraph.split(' ').enumerate() {
            let mut word: Vec<char> = word.chars().collect();
            let gap = usize::from(i > 0 && len > 0);
            if len > 0 && len + gap + word.len() > width {
                lines.push(std::mem::take(&mut line));
                len = 0;
            } else if gap == 1 {
                line.push(' ');
                len += 1;
            }
            while len + word.len() > width {
                // Only reached on an empty line, so `width - len` > 0.
                let take = width - len;
                line.extend(&word[..take]);
                lines.push(std::mem::take(&mut line));
                len = 0;
                word.drain(..take);
            }
            len += word.len();
            line.extend(word);
        }
        lines.push(line);
    }
    lines
}

fn wrap_plain(text: &str, width: usize, style: Style) -> Vec<Line<'static>> {
    wrap(text, width)
        .into_iter()
        .map(|l| Line::from(Span::styled(l, style)))
        .collect()
}

// ---- styles (never the only carrier of meaning) ----

fn bold() -> Style {
    Style::default().add_modifier(Modifier::BOLD)
}

fn dim() -> Style {
    Style::default().fg(Color::DarkGray)
}

fn ok_style() -> Style {
    Style::default().fg(Color::Green)
}

fn warn_style() -> Style {
    Style::default().fg(Color::Yellow)
}

fn error_style() -> Style {
    Style::default().fg(Color::Red).add_modifier(Modifier::BOLD)
}

fn row_style(selected: bool) -> Style {
    if selected {
        Style::default().add_modifier(Modifier::REVERSED)
    } else {
        Style::default()
    }
}

fn status_style(status: &str) -> Style {
    match status {
        "pending" => warn_style(),
        "approved" => ok_style(),
        "rejected" => Style::default().fg(Color::Red),
        _ => Style::default(),
    }
}

fn annotation_style(annotation: &str) -> Style {
    match annotation {
        "application blocked" => error_style(),
        "review required" => warn_style(),
        _ => ok_style(),
    }
}
