use std::process::ExitCode;

use anyhow::Result;

use crate::{
    config::AgentConfig,
    control::{client, pb},
};

pub async fn run(config: &AgentConfig) -> Result<ExitCode> {
    let mut client = client::connect(&config.control_socket()).await?;
    let s = client
        .status(pb::StatusRequest {})
        .await
        .map_err(client::status_error)?
        .into_inner();
    println!(
        "agent         running (pid {}, version {}, up {}s)",
        s.pid, s.version, s.uptime_seconds
    );
    println!(
        "listeners     proxy {}  dns {}",
        s.proxy_listen, s.dns_listen
    );
    println!("programs      {} links attached", s.programs_attached);
    println!("sandboxes     {}", s.sandboxes);
    println!(
        "connections   {} active, {} total, {} denied, {} without original destination",
        s.connections_active, s.connections_total, s.connections_denied, s.lookup_misses
    );
    println!("kernel        {} denials reported", s.kernel_denials_seen);
    for c in &s.kernel {
        println!("  {:<24}{}", c.name, c.value);
    }
    let maps: Vec<String> = s
        .map_entries
        .iter()
        .map(|m| format!("{} {}", m.name, m.value))
        .collect();
    println!("maps          {}", maps.join(", "));
    println!(
        "audit         {} events dropped (queue full), {} lost to write errors",
        s.audit_dropped, s.audit_lost
    );
    println!(
        "policy.local  {} proposals refused by the rate limit",
        s.proposals_rate_limited
    );
    Ok(ExitCode::SUCCESS)
}
