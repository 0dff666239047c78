//! The inbox as an operator sees it: rendered into a test terminal and
//! read back as text (never colours), and driven by keys.

use ratatui::{
    Terminal,
    backend::TestBackend,
    crossterm::event::{KeyCode, KeyEvent, KeyModifiers},
};
use serde_json::json;

use super::app::{Action, App, ChunkEntry, SandboxSummary, View, approval_annotation};
use super::ui::draw;
use crate::control::pb;

// ---- fixtures ----

fn sandbox(name: &str, version: u64, hash: &str, mode: &str) -> pb::Sandbox {
    pb::Sandbox {
        name: name.into(),
        policy_version: version,
        policy_hash: hash.into(),
        approval_mode: mode.into(),
        ..Default::default()
    }
}

fn summary(name: &str, pending: usize, denials: u32) -> SandboxSummary {
    SandboxSummary {
        sandbox: sandbox(
            name,
            7,
            "0123456789abcdef0123456789abcdef",
            if name == "ci" { "auto" } else { "manual" },
        ),
        pending,
        denials_recent: denials,
    }
}

fn health() -> pb::StatusReply {
    pb::StatusReply {
        version: "0.1.0".into(),
        uptime_seconds: 3_720,
        programs_attached: 4,
        sandboxes: 2,
        connections_active: 3,
        connections_denied: 17,
        ..Default::default()
    }
}

fn l4_rule(host: &str, port: u16, binary: &str) -> String {
    json!({
        "endpoints": [{"host": host, "ports": [port], "enforcement": "enforce"}],
        "binaries": [{"path": binary}]
    })
    .to_string()
}

fn l7_rule() -> String {
    json!({
        "endpoints": [{
            "host": "api.github.com", "ports": [443], "protocol": "rest", "enforcement": "enforce",
            "rules": [{"allow": {"method": "GET", "path": "/repos/**"}}],
            "deny_rules": [{"method": "DELETE", "path": "/repos/**"}]
        }],
        "binaries": [{"path": "/usr/bin/gh"}]
    })
    .to_string()
}

fn chunk(id: &str, name: &str, status: &str, rule: String) -> ChunkEntry {
    ChunkEntry {
        chunk: pb::DraftChunk {
            id: id.into(),
            status: status.into(),
            rule_name: name.into(),
            proposed_rule_json: rule,
            confidence: 0.75,
            hit_count: 1,
            binary: "/usr/bin/curl".into(),
            review_token: format!("token-{id}"),
            validation_result: "prover: no new findings".into(),
            rationale: "Fetch release tarballs for the build.".into(),
            stage: "agent".into(),
            analysis_mode: "agent_authored".into(),
            ..Default::default()
        },
        ..Default::default()
    }
}

/// Newest first: a pending L4 one seen 3 times, a flagged pending one, an
/// auto-approved one, a human-approved one, a blocked one.
fn chunks() -> Vec<ChunkEntry> {
    let mut l4 = chunk(
        "c1aaaaaaaa",
        "allow_pypi_org_443",
        "pending",
        l4_rule("pypi.org", 443, "/usr/bin/pip"),
    );
    l4.chunk.hit_count = 3;
    l4.chunk.binary = "/usr/bin/pip".into();
    l4.denials =
        vec!["NET:OPEN [MED] DENIED /usr/bin/pip(64) -> pypi.org:443 [policy:- engine:opa]".into()];
    let mut flagged = chunk(
        "c2bbbbbbbb",
        "allow_db_5432",
        "pending",
        l4_rule("db.internal", 5432, "/usr/bin/psql"),
    );
    flagged.chunk.security_notes = "Port 5432 is the PostgreSQL port: direct data-store access bypasses HTTP inspection. Host `db.internal` is fine.".into();
    flagged.chunk.confidence = 0.5;
    let mut auto = chunk("c3cccccccc", "allow_github", "approved", l7_rule());
    auto.auto_approved = true;
    let human = chunk(
        "c4dddddddd",
        "allow_example",
        "approved",
        l4_rule("example.com", 22, "/usr/bin/ssh"),
    );
    let mut blocked = chunk(
        "c5eeeeeeee",
        "allow_metadata",
        "pending",
        l4_rule("169.254.169.254", 80, "/usr/bin/curl"),
    );
    blocked.chunk.application_error = "merge failed: always-blocked destination".into();
    vec![l4, flagged, auto, human, blocked]
}

fn app_with_data() -> App {
    let mut app = App::new();
    app.set_health(Some(health()));
    app.set_sandboxes(vec![summary("dev", 3, 12), summary("ci", 0, 0)]);
    app.set_chunks("dev", chunks());
    app.set_log(
        "dev",
        (1..=30).map(|i| format!("event line {i:02}")).collect(),
    );
    app
}

fn key(code: KeyCode) -> KeyEvent {
    KeyEvent::new(code, KeyModifiers::NONE)
}

fn press(app: &mut App, c: char) -> Action {
    app.on_key(key(KeyCode::Char(c)))
}

fn type_text(app: &mut App, text: &str) {
    for c in text.chars() {
        assert_eq!(press(app, c), Action::None);
    }
}

/// Renders and returns the screen, one string per row.
fn screen(app: &App, width: u16, height: u16) -> Vec<String> {
    let mut terminal = Terminal::new(TestBackend::new(width, height)).expect("test terminal");
    terminal.draw(|f| draw(f, app)).expect("draw");
    let buffer = terminal.backend().buffer();
    (0..buffer.area.height)
        .map(|y| {
            (0..buffer.area.width)
                .map(|x| buffer[(x, y)].symbol())
                .collect::<String>()
        })
        .collect()
}

fn text(app: &App, width: u16, height: u16) -> String {
    screen(app, width, height).join("\n")
}

fn row_with<'a>(lines: &'a [String], needle: &str) -> &'a str {
    lines
        .iter()
        .find(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("no row with {needle:?} in\n{}", lines.join("\n")))
}

fn open_list(app: &mut App) {
    assert_eq!(
        app.on_key(key(KeyCode::Enter)),
        Action::SelectSandbox("dev".into())
    );
    assert_eq!(app.view(), &View::List);
}

fn select(app: &mut App, rule_name: &str) {
    app.on_key(key(KeyCode::Char('g')));
    while app.selected_chunk().map(|e| e.chunk.rule_name.as_str()) != Some(rule_name) {
        let before = app.chunk_cursor();
        app.on_key(key(KeyCode::Down));
        assert_ne!(before, app.chunk_cursor(), "{rule_name} not in the list");
    }
}

// ---- dashboard ----

#[test]
fn dashboard_shows_each_sandbox_with_pending_policy_mode_denials_and_agent_health() {
    let app = app_with_data();
    let lines = screen(&app, 80, 24);
    let all = lines.join("\n");
    assert!(all.contains("agent up v0.1.0 1h2m"), "{all}");
    assert!(all.contains("conns 3 active, 17 denied"), "{all}");
    let header = row_with(&lines, "SANDBOX");
    for column in ["PENDING", "POLICY", "HASH", "MODE", "DENIALS"] {
        assert!(header.contains(column), "{header}");
    }
    let dev = row_with(&lines, "dev ");
    assert!(dev.contains("> dev"), "selected row is marked: {dev}");
    assert!(
        dev.contains(" 3 ") && dev.contains("v7") && dev.contains("0123456789ab "),
        "{dev}"
    );
    assert!(!dev.contains("0123456789abc"), "hash is cut to 12: {dev}");
    assert!(dev.contains("manual") && dev.contains("      12"), "{dev}");
    let ci = row_with(&lines, "ci ");
    assert!(ci.contains("auto"), "{ci}");
    // The log pane follows the selected sandbox: its newest lines show.
    assert!(all.contains("Log: dev [following]"), "{all}");
    assert!(
        all.contains("event line 30") && !all.contains("event line 01"),
        "{all}"
    );
}

#[test]
fn dashboard_narrow_drops_columns_but_keeps_name_and_pending() {
    let app = app_with_data();
    let lines = screen(&app, 50, 20);
    let header = row_with(&lines, "SANDBOX");
    assert!(header.contains("PENDING"), "{header}");
    assert!(!header.contains("HASH"), "{header}");
    assert!(row_with(&lines, "dev ").contains(" 3 "));
}

#[test]
fn dashboard_says_when_the_agent_is_unreachable_or_the_stream_is_down() {
    let mut app = App::new();
    app.set_health(None);
    app.set_connection(false, "reconnecting...");
    let all = text(&app, 80, 24);
    assert!(all.contains("agent: ! UNREACHABLE"), "{all}");
    assert!(all.contains("! disconnected: reconnecting..."), "{all}");
    assert!(
        all.contains("agent unreachable: no sandboxes to show"),
        "{all}"
    );
}

#[test]
fn a_sandbox_without_policy_says_deny_all() {
    let mut app = App::new();
    app.set_sandboxes(vec![SandboxSummary {
        sandbox: sandbox("bare", 0, "", ""),
        pending: 0,
        denials_recent: 4,
    }]);
    let row = screen(&app, 80, 24);
    let bare = row_with(&row, "bare");
    assert!(
        bare.contains("none") && bare.contains("(deny all)") && bare.contains("manual"),
        "{bare}"
    );
}

// ---- draft list ----

#[test]
fn list_shows_name_endpoint_binary_status_confidence_annotation_and_hits() {
    let mut app = app_with_data();
    open_list(&mut app);
    let lines = screen(&app, 80, 24);
    let all = lines.join("\n");
    assert!(all.contains("Drafts: dev - 3 pending [1/5]"), "{all}");
    let pypi = row_with(&lines, "allow_pypi_org_443");
    assert!(pypi.starts_with("│> "), "selected: {pypi}");
    for part in ["[pending]", "75%", "review required", "3x"] {
        assert!(pypi.contains(part), "{part} in {pypi}");
    }
    assert!(all.contains("pypi.org:443 [L4]  (pip)"), "{all}");
    let github = row_with(&lines, "allow_github");
    assert!(
        github.contains("[approved]") && github.contains("auto-approved"),
        "{github}"
    );
    assert!(!github.contains("3x"), "{github}");
    assert!(row_with(&lines, "allow_example").contains("reviewed"));
    assert!(row_with(&lines, "allow_db_5432").contains("50%"));
    assert!(
        all.contains("api.github.com:443 [L7 rest, allow GET /repos/**, deny DELETE /repos/**]")
            || all.contains("api.github.com:443 [L7 rest, allow GET /repos/**, deny"),
        "{all}"
    );
}

#[test]
fn list_scrolls_to_keep_the_selection_visible() {
    let mut app = app_with_data();
    open_list(&mut app);
    app.on_key(key(KeyCode::Char('G')));
    let all = text(&app, 80, 24);
    assert!(
        all.contains("> allow_metadata") && all.contains("[5/5]"),
        "{all}"
    );
    assert!(row_with(&screen(&app, 80, 24), "allow_metadata").contains("application blocked"));
}

#[test]
fn list_narrow_keeps_rule_name_and_status() {
    let mut app = app_with_data();
    open_list(&mut app);
    for (width, height) in [(50, 20), (30, 10)] {
        let lines = screen(&app, width, height);
        let pypi = row_with(&lines, "allow_");
        assert!(pypi.contains("[pending]"), "{width}: {pypi}");
    }
    // At 50 name, status and annotation stay; confidence and hits go.
    let lines = screen(&app, 50, 20);
    let pypi = row_with(&lines, "org_443");
    assert!(
        pypi.contains("[pending]") && pypi.contains("review required"),
        "{pypi}"
    );
    assert!(!pypi.contains("75%"), "{pypi}");
    // At 30 the name loses its middle, not its distinguishing end.
    let lines = screen(&app, 30, 10);
    assert!(
        row_with(&lines, "org_443").contains("[pending]"),
        "{lines:?}"
    );
}

#[test]
fn annotation_follows_the_reference_but_knows_auto_approval() {
    let base = chunk("x", "r", "approved", l4_rule("a", 443, "/b"));
    let with = |f: &dyn Fn(&mut ChunkEntry)| {
        let mut e = base.clone();
        f(&mut e);
        approval_annotation(&e)
    };
    assert_eq!(with(&|e| e.auto_approved = true), "auto-approved");
    // A human approving a clean chunk is not auto-approval (OpenShell guesses).
    assert_eq!(with(&|_| {}), "reviewed");
    assert_eq!(
        with(&|e| {
            e.auto_approved = true;
            e.chunk.validation_result =
                "prover: 1 new finding\n  link_local_reach: x:80 via /b".into();
        }),
        "reviewed"
    );
    assert_eq!(with(&|e| e.chunk.validation_result.clear()), "");
    assert_eq!(
        with(&|e| e.chunk.status = "pending".into()),
        "review required"
    );
    assert_eq!(
        with(&|e| e.chunk.status = "rejected".into()),
        "review required"
    );
    assert_eq!(
        with(&|e| e.chunk.application_error = "merge failed".into()),
        "application blocked"
    );
}

// ---- detail ----

#[test]
fn detail_warns_about_l4_only_on_an_http_port_and_shows_intent_and_denials() {
    let mut app = app_with_data();
    open_list(&mut app);
    app.on_key(key(KeyCode::Enter));
    assert_eq!(app.view(), &View::Detail);
    let all = text(&app, 80, 24);
    assert!(all.contains("Rule:        allow_pypi_org_443"), "{all}");
    assert!(all.contains("Endpoints:   pypi.org:443 [L4]"), "{all}");
    assert!(
        all.contains("! L4-only on an HTTP port: grants every method and path"),
        "{all}"
    );
    assert!(all.contains("Binaries:    /usr/bin/pip"), "{all}");
    assert!(all.contains("Intent:      Fetch release tarballs"), "{all}");
    assert!(all.contains("Confidence:  75%   Hits: 3x"), "{all}");
    assert!(
        all.contains("Validation:  prover: no new findings"),
        "{all}"
    );
    // The rest is below the fold; scroll to it.
    app.on_key(key(KeyCode::Char('G')));
    let all = text(&app, 80, 24);
    assert!(
        all.contains("Denials:     NET:OPEN [MED] DENIED /usr/bin/pip(64)"),
        "{all}"
    );
}

#[test]
fn detail_shows_l7_rules_findings_and_security_notes_one_per_line() {
    let mut app = app_with_data();
    open_list(&mut app);
    select(&mut app, "allow_github");
    let mut github = app.selected_chunk().cloned().expect("github chunk");
    github.chunk.validation_result = "prover: 2 new findings\n  credential_reach_expansion: api.github.com:443 via /usr/bin/gh\n  capability_expansion: DELETE on api.github.com:443 via /usr/bin/gh".into();
    github.chunk.security_notes = "First note about a thing. Second `note` here.".into();
    app.upsert_chunk("dev", github);
    app.on_key(key(KeyCode::Enter));
    let lines = screen(&app, 100, 40);
    let all = lines.join("\n");
    assert!(!all.contains("L4-only"), "{all}");
    assert!(all.contains("               allow GET /repos/**"), "{all}");
    assert!(
        all.contains("               deny DELETE /repos/**"),
        "{all}"
    );
    assert!(all.contains("Validation:  prover: 2 new findings"), "{all}");
    assert!(
        all.contains(
            "               credential_reach_expansion: api.github.com:443 via /usr/bin/gh"
        ),
        "{all}"
    );
    assert!(
        all.contains("               capability_expansion: DELETE on api.github.com:443"),
        "{all}"
    );
    assert!(
        all.contains("Security:    ! First note about a thing."),
        "{all}"
    );
    assert!(all.contains("             ! Second `note` here."), "{all}");
    assert!(all.contains("Review:      reviewed"), "{all}");
    assert!(all.contains("Denials:     (none recorded)"), "{all}");
}

#[test]
fn detail_of_a_provider_request_shows_provider_type_key_names_and_endpoints() {
    let mut app = app_with_data();
    let mut provider = chunk(
        "c0ffffffff",
        "provider_github",
        "pending",
        json!({"endpoints": [{"host": "api.github.com", "ports": [443], "protocol": "rest", "access": "read-write"}],
               "binaries": [{"path": "/usr/bin/gh"}]})
        .to_string(),
    );
    provider.chunk.provider_name = "work-github".into();
    provider.chunk.provider_type = "github".into();
    provider.chunk.created_at_ms = 99;
    provider.provider_keys = vec!["GITHUB_TOKEN".into(), "GH_HOST".into()];
    app.upsert_chunk("dev", provider);
    open_list(&mut app);
    assert_eq!(app.chunk_cursor(), 1, "the selection stayed on its chunk");
    app.on_key(key(KeyCode::Char('g')));
    let lines = screen(&app, 80, 24);
    assert!(
        row_with(&lines, "provider_github").contains("> "),
        "newest first"
    );
    assert!(
        lines
            .join("\n")
            .contains("provider work-github: api.github.com:443")
    );
    app.on_key(key(KeyCode::Enter));
    let all = text(&app, 80, 24);
    assert!(
        all.contains("Provider:    attach 'work-github' (type github)"),
        "{all}"
    );
    assert!(
        all.contains("Keys:        GITHUB_TOKEN, GH_HOST (names only)"),
        "{all}"
    );
    assert!(
        all.contains("Opens:       api.github.com:443 [L7 rest, access=read-write]"),
        "{all}"
    );
    // Provider requests have no rule to edit.
    assert_eq!(press(&mut app, 'e'), Action::None);
    assert!(text(&app, 80, 24).contains("error: a provider request has no rule to edit"));
}

#[test]
fn detail_scrolls_but_not_past_its_end() {
    let mut app = app_with_data();
    open_list(&mut app);
    app.on_key(key(KeyCode::Enter));
    screen(&app, 80, 24);
    for _ in 0..100 {
        app.on_key(key(KeyCode::Down));
    }
    let bottom = text(&app, 80, 24);
    app.on_key(key(KeyCode::Up));
    let one_up = text(&app, 80, 24);
    assert_ne!(bottom, one_up, "one key back up moves at once");
    assert_eq!(app.on_key(key(KeyCode::Esc)), Action::None);
    assert_eq!(app.view(), &View::List);
}

// ---- modals ----

#[test]
fn reject_prompt_shows_typed_reason_and_submits_it() {
    let mut app = app_with_data();
    open_list(&mut app);
    assert_eq!(press(&mut app, 'x'), Action::None);
    assert_eq!(app.view(), &View::RejectPrompt);
    // Letters that are keys elsewhere are text here.
    type_text(&mut app, "too broad q");
    app.on_key(key(KeyCode::Backspace));
    app.on_key(key(KeyCode::Backspace));
    let all = text(&app, 80, 24);
    assert!(all.contains("Reject 'allow_pypi_org_443'"), "{all}");
    assert!(all.contains("> too broad"), "{all}");
    assert!(all.contains("Enter submit, Esc cancel"), "{all}");
    assert_eq!(
        app.on_key(key(KeyCode::Enter)),
        Action::Reject {
            sandbox: "dev".into(),
            chunk_id: "c1aaaaaaaa".into(),
            reason: "too broad".into(),
        }
    );
    assert_eq!(app.view(), &View::List);
    assert!(text(&app, 80, 24).contains(".. rejecting 'allow_pypi_org_443'..."));
}

#[test]
fn reject_prompt_esc_cancels_and_an_empty_reason_is_allowed() {
    let mut app = app_with_data();
    open_list(&mut app);
    press(&mut app, 'x');
    type_text(&mut app, "nope");
    assert_eq!(app.on_key(key(KeyCode::Esc)), Action::None);
    assert_eq!(app.view(), &View::List);
    press(&mut app, 'x');
    assert!(text(&app, 80, 24).contains("> "), "the reason starts empty");
    assert_eq!(
        app.on_key(key(KeyCode::Enter)),
        Action::Reject {
            sandbox: "dev".into(),
            chunk_id: "c1aaaaaaaa".into(),
            reason: String::new(),
        }
    );
}

#[test]
fn rejecting_an_approved_chunk_is_a_revoke() {
    let mut app = app_with_data();
    open_list(&mut app);
    select(&mut app, "allow_example");
    press(&mut app, 'x');
    let all = text(&app, 80, 24);
    assert!(all.contains("Revoke 'allow_example'"), "{all}");
    assert!(all.contains("removes what its approval added"), "{all}");
}

#[test]
fn approve_all_with_flagged_chunks_counts_them_and_offers_both_choices() {
    let mut app = app_with_data();
    open_list(&mut app);
    assert_eq!(press(&mut app, 'A'), Action::None);
    assert_eq!(app.view(), &View::ConfirmApproveAll);
    let all = text(&app, 80, 24);
    assert!(all.contains("Approve all in 'dev'"), "{all}");
    assert!(all.contains("3 pending chunks."), "{all}");
    assert!(
        all.contains("! 1 has security notes and will be skipped unless included."),
        "{all}"
    );
    assert!(all.contains("y approve 2 (skip flagged)"), "{all}");
    assert!(all.contains("f include flagged (approve 3)"), "{all}");
    assert_eq!(
        press(&mut app, 'y'),
        Action::ApproveAll {
            sandbox: "dev".into(),
            include_flagged: false
        }
    );
    press(&mut app, 'A');
    assert_eq!(
        press(&mut app, 'f'),
        Action::ApproveAll {
            sandbox: "dev".into(),
            include_flagged: true
        }
    );
    press(&mut app, 'A');
    assert_eq!(press(&mut app, 'n'), Action::None);
    assert_eq!(app.view(), &View::List);
}

#[test]
fn approve_all_sends_the_tokens_of_the_pending_chunks_as_shown() {
    let app = app_with_data();
    assert_eq!(
        app.pending_tokens("dev"),
        [
            ("c1aaaaaaaa".to_string(), "token-c1aaaaaaaa".to_string()),
            ("c2bbbbbbbb".into(), "token-c2bbbbbbbb".into()),
            ("c5eeeeeeee".into(), "token-c5eeeeeeee".into()),
        ]
    );
    assert!(app.pending_tokens("ci").is_empty());
}

#[test]
fn approve_all_without_flagged_chunks_has_no_include_choice() {
    let mut app = app_with_data();
    let clean: Vec<ChunkEntry> = chunks()
        .into_iter()
        .filter(|e| e.chunk.security_notes.is_empty())
        .collect();
    app.set_chunks("dev", clean);
    open_list(&mut app);
    press(&mut app, 'A');
    let all = text(&app, 80, 24);
    assert!(all.contains("y/Enter approve 2, n/Esc cancel"), "{all}");
    assert_eq!(press(&mut app, 'f'), Action::None, "f means nothing here");
    assert_eq!(app.view(), &View::ConfirmApproveAll);
    assert_eq!(app.on_key(key(KeyCode::Esc)), Action::None);
    assert_eq!(app.view(), &View::List);
}

#[test]
fn approve_all_with_nothing_pending_says_so() {
    let mut app = app_with_data();
    app.set_chunks("dev", Vec::new());
    open_list(&mut app);
    press(&mut app, 'A');
    assert_eq!(app.view(), &View::List);
    assert!(text(&app, 80, 24).contains("error: no pending chunks in 'dev'"));
}

#[test]
fn help_overlay_lists_the_keys_and_any_key_closes_it() {
    let mut app = app_with_data();
    open_list(&mut app);
    press(&mut app, '?');
    assert_eq!(app.view(), &View::Help);
    let all = text(&app, 80, 24);
    for line in [
        "a          approve the chunk",
        "x          reject, or revoke if approved; asks a reason",
        "A          approve all pending; flagged ones only with f",
        "e          edit the proposed rule in $EDITOR",
        "u          undo an approval",
        "q Ctrl-C   quit",
        "[pending] [approved] [rejected]",
    ] {
        assert!(all.contains(line), "{line} in\n{all}");
    }
    assert_eq!(
        press(&mut app, 'q'),
        Action::None,
        "q closes the help first"
    );
    assert_eq!(app.view(), &View::List);
}

// ---- decision keys ----

#[test]
fn a_approves_a_pending_chunk_with_its_review_token() {
    let mut app = app_with_data();
    open_list(&mut app);
    assert_eq!(
        press(&mut app, 'a'),
        Action::Approve {
            sandbox: "dev".into(),
            chunk_id: "c1aaaaaaaa".into(),
            review_token: "token-c1aaaaaaaa".into(),
        }
    );
    select(&mut app, "allow_github");
    assert_eq!(press(&mut app, 'a'), Action::None);
    assert!(text(&app, 80, 24).contains("error: 'allow_github' is already approved"));
}

#[test]
fn u_undoes_approved_chunks_only() {
    let mut app = app_with_data();
    open_list(&mut app);
    assert_eq!(press(&mut app, 'u'), Action::None);
    assert!(
        text(&app, 80, 24)
            .contains("error: 'allow_pypi_org_443' is pending; only approved chunks can be undone")
    );
    select(&mut app, "allow_example");
    assert_eq!(
        press(&mut app, 'u'),
        Action::Undo {
            sandbox: "dev".into(),
            chunk_id: "c4dddddddd".into(),
        }
    );
}

#[test]
fn e_edits_pending_chunks_with_their_rule_json() {
    let mut app = app_with_data();
    open_list(&mut app);
    assert_eq!(
        press(&mut app, 'e'),
        Action::Edit {
            sandbox: "dev".into(),
            chunk_id: "c1aaaaaaaa".into(),
            proposed_rule_json: l4_rule("pypi.org", 443, "/usr/bin/pip"),
        }
    );
    select(&mut app, "allow_github");
    assert_eq!(press(&mut app, 'e'), Action::None);
}

#[test]
fn status_line_shows_the_runners_result_or_error() {
    let mut app = app_with_data();
    app.set_status(Ok(
        "Chunk approved. Policy version: 8, hash: 0123456789ab".into()
    ));
    assert!(text(&app, 80, 24).contains("ok: Chunk approved. Policy version: 8"));
    app.set_status(Err(
        "review token does not match\nthe fetched proposal".into()
    ));
    assert!(text(&app, 80, 24).contains("error: review token does not match the fetched proposal"));
}

// ---- navigation and data updates ----

#[test]
fn navigation_drills_in_and_back_out_and_quits() {
    let mut app = app_with_data();
    assert_eq!(press(&mut app, 'j'), Action::SelectSandbox("ci".into()));
    assert_eq!(press(&mut app, 'j'), Action::None, "already last");
    assert_eq!(press(&mut app, 'k'), Action::SelectSandbox("dev".into()));
    assert_eq!(
        press(&mut app, 'a'),
        Action::None,
        "no decisions on the dashboard"
    );
    open_list(&mut app);
    app.on_key(key(KeyCode::PageDown));
    assert_eq!(app.chunk_cursor(), 4);
    app.on_key(key(KeyCode::PageUp));
    assert_eq!(app.chunk_cursor(), 0);
    app.on_key(key(KeyCode::Enter));
    assert_eq!(app.view(), &View::Detail);
    press(&mut app, 'p');
    assert_eq!(app.view(), &View::List);
    app.on_key(key(KeyCode::Esc));
    assert_eq!(app.view(), &View::Dashboard);
    assert_eq!(press(&mut app, 'q'), Action::Quit);
    assert_eq!(
        app.on_key(KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL)),
        Action::Quit
    );
    // Ctrl-C quits even while typing a reason.
    open_list(&mut app);
    press(&mut app, 'x');
    assert_eq!(
        app.on_key(KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL)),
        Action::Quit
    );
}

#[test]
fn tab_moves_the_keys_to_the_log_pane_which_scrolls_and_follows() {
    let mut app = app_with_data();
    text(&app, 80, 24);
    app.on_key(key(KeyCode::Tab));
    press(&mut app, 'k');
    press(&mut app, 'k');
    let all = text(&app, 80, 24);
    assert!(all.contains("Log: dev [+2 up, G follows] (focus)"), "{all}");
    assert!(
        all.contains("event line 28") && !all.contains("event line 30"),
        "{all}"
    );
    assert_eq!(app.sandbox_cursor(), 0, "the dashboard did not move");
    press(&mut app, 'G');
    assert!(text(&app, 80, 24).contains("event line 30"));
    app.on_key(key(KeyCode::Tab));
    assert_eq!(press(&mut app, 'j'), Action::SelectSandbox("ci".into()));
}

#[test]
fn updates_keep_the_selection_and_the_pending_count() {
    let mut app = app_with_data();
    open_list(&mut app);
    select(&mut app, "allow_db_5432");
    // A new chunk arrives on top: the selection stays on the same chunk.
    let mut newer = chunk(
        "c9999999",
        "allow_new",
        "pending",
        l4_rule("new.example", 443, "/usr/bin/curl"),
    );
    newer.chunk.created_at_ms = 1_000;
    app.upsert_chunk("dev", newer);
    assert_eq!(
        app.selected_chunk().map(|e| e.chunk.id.as_str()),
        Some("c2bbbbbbbb")
    );
    assert_eq!(app.selected_summary().map(|s| s.pending), Some(4));
    // It gets approved elsewhere: one fewer pending.
    let mut approved = chunks()[1].clone();
    approved.chunk.status = "approved".into();
    app.upsert_chunk("dev", approved);
    assert_eq!(app.selected_summary().map(|s| s.pending), Some(3));
    assert!(row_with(&screen(&app, 80, 24), "allow_db_5432").contains("[approved]"));
    // A full refresh recounts and still keeps the selection.
    let mut refreshed = chunks();
    refreshed.reverse();
    app.set_chunks("dev", refreshed);
    assert_eq!(
        app.selected_chunk().map(|e| e.chunk.id.as_str()),
        Some("c2bbbbbbbb")
    );
    assert_eq!(app.selected_summary().map(|s| s.pending), Some(3));
    // A new sandbox list keeps the selected sandbox by name.
    app.set_sandboxes(vec![summary("aaa", 0, 0), summary("dev", 3, 1)]);
    assert_eq!(app.selected_sandbox(), Some("dev"));
    assert_eq!(app.view(), &View::List);
}

#[test]
fn a_chunk_that_changes_under_the_detail_view_asks_for_a_new_review() {
    let mut app = app_with_data();
    open_list(&mut app);
    app.on_key(key(KeyCode::Enter));
    let mut same = chunks()[0].clone();
    same.chunk.hit_count = 4;
    app.upsert_chunk("dev", same);
    assert!(!text(&app, 80, 24).contains("changed while open"));
    let mut edited = chunks()[0].clone();
    edited.chunk.review_token = "token-edited".into();
    app.upsert_chunk("dev", edited);
    assert!(
        text(&app, 80, 24).contains("'allow_pypi_org_443' changed while open: review it again")
    );
    assert_eq!(
        press(&mut app, 'a'),
        Action::Approve {
            sandbox: "dev".into(),
            chunk_id: "c1aaaaaaaa".into(),
            review_token: "token-edited".into(),
        }
    );
}

#[test]
fn a_cleared_chunk_under_the_detail_view_goes_back_to_the_list() {
    let mut app = app_with_data();
    open_list(&mut app);
    app.on_key(key(KeyCode::Enter));
    app.remove_chunk("dev", "c1aaaaaaaa");
    assert_eq!(app.view(), &View::List);
    assert_eq!(app.selected_summary().map(|s| s.pending), Some(2));
    assert!(text(&app, 80, 24).contains("error: chunk c1aaaaaa was cleared"));
}

#[test]
fn a_vanished_sandbox_returns_to_the_dashboard() {
    let mut app = app_with_data();
    open_list(&mut app);
    app.set_sandboxes(vec![summary("ci", 0, 0)]);
    assert_eq!(app.view(), &View::Dashboard);
    assert_eq!(app.selected_sandbox(), Some("ci"));
    assert!(text(&app, 80, 24).contains("error: sandbox 'dev' is gone"));
}

// ---- sizes ----

#[test]
fn every_view_renders_at_every_size_down_to_1x1() {
    let views: [&dyn Fn(&mut App); 7] = [
        &|_| {},
        &|app| open_list(app),
        &|app| {
            open_list(app);
            app.on_key(key(KeyCode::Enter));
        },
        &|app| {
            press(app, '?');
        },
        &|app| {
            open_list(app);
            press(app, 'x');
            type_text(app, "a reason long enough to need cutting somewhere");
        },
        &|app| {
            open_list(app);
            press(app, 'A');
        },
        &|app| {
            app.set_status(Err("a very long error message ".repeat(8)));
            app.set_connection(false, "reconnecting...");
        },
    ];
    for setup in views {
        let mut app = app_with_data();
        setup(&mut app);
        for width in (1..=90).step_by(7).chain([1, 2, 20, 50, 80]) {
            for height in (1..=30).step_by(3).chain([1, 2, 5, 20, 24]) {
                let lines = screen(&app, width, height);
                assert_eq!(lines.len(), usize::from(height));
            }
        }
    }
}

#[test]
fn small_screens_keep_the_essentials() {
    let mut app = app_with_data();
    open_list(&mut app);
    let all = text(&app, 20, 5);
    assert!(all.contains("> al…43 [pending]"), "{all}");
    assert_eq!(screen(&app, 1, 1).len(), 1);
}
