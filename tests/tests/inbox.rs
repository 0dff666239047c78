//! `portcullis inbox` in a real terminal: tmux runs it against a live
//! agent, the test types into it (`send-keys`) and reads the screen
//! (`capture-pane`). A proposal from a sandbox appears, is rejected with
//! a typed reason, and the scripted agent's `/wait` gets that reason.

use std::{
    process::Command,
    time::{Duration, Instant},
};

use portcullis_e2e::{RestFixture, portcullis_bin, privileged, stdout};
use serde_json::{Value, json};

const UPSTREAM: &str = env!("CARGO_BIN_EXE_e2e-upstream");
const SCRIPT: &str = include_str!("../scripts/scripted_agent.py");

const POLICY: &str = "version: 1
network_policies:
  ro:
    endpoints:
      - host: api.example.test
        port: 8443
        protocol: rest
        access: read-only
    binaries:
      - path: /usr/bin/curl
";

/// A tmux session running one command; killed on drop.
struct Tmux(String);

impl Tmux {
    fn start(name: &str, command: &str) -> Tmux {
        let _ = Command::new("tmux")
            .args(["kill-session", "-t", name])
            .output();
        let out = Command::new("tmux")
            .args([
                "new-session",
                "-d",
                "-s",
                name,
                "-x",
                "100",
                "-y",
                "32",
                command,
            ])
            .env("TERM", "xterm-256color")
            .output()
            .expect("tmux is installed");
        assert!(
            out.status.success(),
            "tmux: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Tmux(name.to_string())
    }

    fn screen(&self) -> String {
        let out = Command::new("tmux")
            .args(["capture-pane", "-p", "-t", &self.0])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Waits (bounded) until the screen shows `needle`.
    fn wait_for(&self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let screen = self.screen();
            if screen.contains(needle) {
                return screen;
            }
            assert!(
                Instant::now() < deadline,
                "{needle:?} never appeared:\n{screen}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn keys(&self, keys: &[&str]) {
        let out = Command::new("tmux")
            .args(["send-keys", "-t", &self.0])
            .args(keys)
            .output()
            .unwrap();
        assert!(out.status.success());
    }

    fn text(&self, text: &str) {
        let out = Command::new("tmux")
            .args(["send-keys", "-t", &self.0, "-l", text])
            .output()
            .unwrap();
        assert!(out.status.success());
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["kill-session", "-t", &self.0])
            .output();
    }
}

fn json_line(out: &str) -> Value {
    let line = out.lines().last().unwrap_or_default();
    serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
}

#[test]
fn a_proposal_appears_is_rejected_with_a_typed_reason_and_the_inbox_survives_a_restart() {
    if !privileged() {
        return;
    }
    let mut f = RestFixture::start(UPSTREAM, "inbox", 34, POLICY, &[]);
    let agent = &f.agent;
    let script = agent.root.join("scripted_agent.py");
    std::fs::write(&script, SCRIPT).unwrap();
    let script = script.to_str().unwrap();

    let command = format!(
        "{} --config {} inbox",
        portcullis_bin().display(),
        agent.config.display()
    );
    let tmux = Tmux::start("pc-e2e-inbox", &command);
    tmux.wait_for("demo");

    let rule = json!({
        "endpoints": [{"host": "api.example.test", "port": 8443, "protocol": "rest",
                       "rules": [{"allow": {"method": "PUT", "path": "/repos/o/r/contents/x"}}]}],
        "binaries": [{"path": "/usr/bin/curl"}]
    })
    .to_string();
    let submitted = json_line(&stdout(&agent.run_in(
        "demo",
        &[
            "/usr/bin/python3",
            script,
            "propose",
            "contents_write",
            &rule,
        ],
    )));
    let id = submitted["body"]["accepted_chunk_ids"][0]
        .as_str()
        .unwrap()
        .to_string();

    // Into the sandbox's list: the chunk is there, pushed.
    tmux.keys(&["Enter"]);
    tmux.wait_for("contents_write");
    let (mut waiter, lines) = agent.spawn_cli(&[
        "run",
        "--sandbox",
        "demo",
        "--",
        "/usr/bin/python3",
        script,
        "wait",
        &id,
        "60",
    ]);
    let reason = "scope it to docs/ paths only";
    tmux.keys(&["x"]);
    tmux.wait_for("sent to the agent verbatim");
    tmux.text(reason);
    tmux.keys(&["Enter"]);
    tmux.wait_for("rejected");

    assert!(waiter.wait().unwrap().success());
    let out: Vec<String> = lines.try_iter().collect();
    let wait = json_line(&out.join("\n"));
    assert_eq!(wait["body"]["status"], "rejected", "{wait}");
    assert_eq!(wait["body"]["rejection_reason"], reason);
    let history = agent.ok(&["rule", "history", "demo"]);
    assert!(history.contains(reason), "{history}");

    // The agent dies and comes back: the inbox says so, reconnects, and
    // shows what was proposed after the restart.
    f.agent.kill();
    tmux.wait_for("disconnected");
    f.agent.spawn();
    let rule = json!({
        "endpoints": [{"host": "api.example.test", "port": 8443, "protocol": "rest",
                       "rules": [{"allow": {"method": "GET", "path": "/docs/**"}}]}],
        "binaries": [{"path": "/usr/bin/curl"}]
    })
    .to_string();
    let out = f.agent.run_in(
        "demo",
        &[
            "/usr/bin/python3",
            script,
            "propose",
            "docs_after_restart",
            &rule,
        ],
    );
    assert!(out.status.success());
    tmux.wait_for("docs_after_restart");
}
