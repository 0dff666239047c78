//! Providers inside the daemon: the records (secrets in memory only, never
//! logged), which sandbox has which attached, the effective policy a
//! sandbox's providers compose, and the credentials the proxy resolves
//! placeholders with. The store is the durable copy; this cache is
//! replaced wholesale after every provider write.

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
};

use anyhow::Result;

use crate::{
    drafts::validator::{CredentialSet, CredentialTarget},
    policy::Policy,
    providers::{
        placeholder::{Binding, Credential, Secret},
        profile::{self, Attached},
    },
    store::{ProviderRecord, Store},
};

#[derive(Default)]
pub struct ProviderCache {
    /// `provider_rules` of the configuration: compose profile rules.
    compose_rules: bool,
    records: BTreeMap<String, ProviderRecord>,
    /// Sandbox -> provider names, in attachment order.
    attached: HashMap<String, Vec<String>>,
    /// Sandbox -> its credentials with their bindings, rebuilt on every
    /// change so the proxy's per-request lookup is one clone of an Arc.
    resolved: HashMap<String, Arc<Vec<Credential>>>,
}

impl ProviderCache {
    /// Reads every provider and every sandbox's attachments.
    pub async fn load(store: &dyn Store, compose_rules: bool) -> Result<Self> {
        let mut cache = Self {
            compose_rules,
            ..Self::default()
        };
        for record in store.providers().await? {
            cache.records.insert(record.name.clone(), record);
        }
        for row in store.sandboxes().await? {
            let name = row.record.name.to_string();
            let attached = store.attached(&name).await?;
            cache.attached.insert(name, attached);
        }
        cache.rebuild();
        Ok(cache)
    }

    pub fn provider(&self, name: &str) -> Option<&ProviderRecord> {
        self.records.get(name)
    }

    pub fn providers(&self) -> impl Iterator<Item = &ProviderRecord> {
        self.records.values()
    }

    pub fn put(&mut self, record: ProviderRecord) {
        self.records.insert(record.name.clone(), record);
        self.rebuild();
    }

    pub fn remove(&mut self, name: &str) {
        self.records.remove(name);
        self.rebuild();
    }

    pub fn set_attached(&mut self, sandbox: &str, names: Vec<String>) {
        self.attached.insert(sandbox.to_string(), names);
        self.rebuild();
    }

    pub fn forget_sandbox(&mut self, sandbox: &str) {
        self.attached.remove(sandbox);
        self.rebuild();
    }

    /// Recomputes every sandbox's credentials (a write path: providers
    /// and attachments change rarely, requests read often).
    fn rebuild(&mut self) {
        let resolved = self
            .attached
            .keys()
            .map(|sandbox| (sandbox.clone(), Arc::new(self.compute_credentials(sandbox))))
            .collect();
        self.resolved = resolved;
    }

    /// Provider names attached to `sandbox`, in order.
    pub fn attached_names(&self, sandbox: &str) -> &[String] {
        self.attached.get(sandbox).map(Vec::as_slice).unwrap_or(&[])
    }

    /// Sandboxes `provider` is attached to.
    pub fn sandboxes_of(&self, provider: &str) -> Vec<String> {
        let mut names: Vec<String> = self
            .attached
            .iter()
            .filter(|(_, list)| list.iter().any(|p| p == provider))
            .map(|(s, _)| s.clone())
            .collect();
        names.sort();
        names
    }

    fn attached_of<'a>(&'a self, names: &'a [String]) -> Vec<Attached<'a>> {
        names
            .iter()
            .filter_map(|n| self.records.get(n))
            .map(|r| Attached {
                name: &r.name,
                provider_type: &r.provider_type,
                credential_keys: r.credentials.keys().map(String::as_str).collect(),
            })
            .collect()
    }

    /// The sandbox's effective policy: `base` plus a `_provider_<name>`
    /// rule per attached provider whose profile has endpoints.
    pub fn compose(&self, sandbox: &str, base: &Policy) -> Result<Policy, String> {
        self.compose_with(self.attached_names(sandbox), base)
    }

    /// `compose`, as if exactly `names` were attached.
    pub fn compose_with(&self, names: &[String], base: &Policy) -> Result<Policy, String> {
        let attached = self.attached_of(names);
        if attached.is_empty() || !self.compose_rules {
            return Ok(base.clone());
        }
        profile::compose(base, &attached)
    }

    /// Where each attached credential may go, with its value, for the
    /// proxy's placeholder resolution.
    pub fn credentials(&self, sandbox: &str) -> Arc<Vec<Credential>> {
        self.resolved.get(sandbox).cloned().unwrap_or_default()
    }

    fn compute_credentials(&self, sandbox: &str) -> Vec<Credential> {
        let names = self.attached_names(sandbox);
        let attached = self.attached_of(names);
        profile::bindings(&attached)
            .into_iter()
            .filter_map(|(key, provider, targets)| {
                let secret = self.records.get(&provider)?.credentials.get(&key)?;
                Some(Credential {
                    key,
                    secret: Secret::new(secret.expose()),
                    bindings: targets
                        .into_iter()
                        .map(|(host, ports)| Binding {
                            host,
                            ports,
                            path: None,
                        })
                        .collect(),
                    provider,
                })
            })
            .collect()
    }

    /// The credentialed hosts of a sandbox, as the draft validator sees
    /// them (names only).
    pub fn credential_set(&self, sandbox: &str) -> CredentialSet {
        self.credential_set_with(self.attached_names(sandbox))
    }

    pub fn credential_set_with(&self, names: &[String]) -> CredentialSet {
        credential_set_of(&self.attached_of(names))
    }

    /// Credential key names of a sandbox's providers: the environment
    /// `portcullis run` fills with placeholders.
    pub fn credential_keys(&self, sandbox: &str) -> Vec<String> {
        self.attached_names(sandbox)
            .iter()
            .filter_map(|n| self.records.get(n))
            .flat_map(|r| r.credentials.keys().cloned())
            .collect()
    }
}

/// The credentialed hosts of some attached providers, as the draft
/// validator sees them (no values).
pub fn credential_set_of(attached: &[Attached<'_>]) -> CredentialSet {
    let mut targets: Vec<CredentialTarget> = profile::bindings(attached)
        .into_iter()
        .flat_map(|(_, provider, hosts)| {
            hosts
                .into_iter()
                .map(move |(host, ports)| CredentialTarget {
                    provider: provider.clone(),
                    host,
                    ports,
                })
        })
        .collect();
    targets.sort_by(|a, b| (&a.provider, &a.host, &a.ports).cmp(&(&b.provider, &b.host, &b.ports)));
    targets.dedup();
    CredentialSet { targets }
}

/// What an operator asked a provider to hold: key -> value.
pub type Values = BTreeMap<String, crate::store::SecretValue>;

fn check_keys<'a>(keys: impl Iterator<Item = &'a String>) -> Result<()> {
    for key in keys {
        if !crate::providers::placeholder::valid_key(key) {
            anyhow::bail!(
                "credential key `{key}`: use an environment variable name (letters, digits, `_`, not starting with a digit)"
            );
        }
    }
    Ok(())
}

/// `provider create`: the type must be a known profile.
pub async fn create(
    agent: &super::Agent,
    name: &str,
    provider_type: &str,
    values: Values,
) -> Result<ProviderRecord> {
    profile::validate_type(provider_type).map_err(anyhow::Error::msg)?;
    check_keys(values.keys())?;
    let _writer = agent.writer.lock().await;
    let record = agent
        .store
        .put_provider(crate::store::ProviderChange::Create(ProviderRecord::new(
            name,
            provider_type,
            values,
        )))
        .await?;
    write_cache(agent).put(record.clone());
    Ok(record)
}

/// `provider update`: rotation. Values swap at once; the next request of
/// every sandbox using them carries the new value.
pub async fn update(
    agent: &super::Agent,
    name: &str,
    set: Values,
    remove: Vec<String>,
) -> Result<ProviderRecord> {
    check_keys(set.keys())?;
    let _writer = agent.writer.lock().await;
    let record = agent
        .store
        .put_provider(crate::store::ProviderChange::Update {
            name: name.to_string(),
            set,
            remove,
        })
        .await?;
    write_cache(agent).put(record.clone());
    Ok(record)
}

pub async fn delete(agent: &super::Agent, name: &str) -> Result<()> {
    let _writer = agent.writer.lock().await;
    agent
        .store
        .put_provider(crate::store::ProviderChange::Delete {
            name: name.to_string(),
        })
        .await?;
    write_cache(agent).remove(name);
    Ok(())
}

fn write_cache(agent: &super::Agent) -> std::sync::RwLockWriteGuard<'_, ProviderCache> {
    agent.providers.write().unwrap_or_else(|p| p.into_inner())
}

/// Attaches (`attach`) or detaches a provider; idempotent. The sandbox's
/// effective policy is recomposed and swapped in; returns whether
/// anything changed.
pub async fn set_attachment(
    agent: &super::Agent,
    sandbox: &str,
    provider: &str,
    attach: bool,
) -> Result<bool> {
    let _writer = agent.writer.lock().await;
    apply_attachment(agent, sandbox, provider, attach).await
}

/// `set_attachment`, for a caller holding the writer lock.
pub async fn apply_attachment(
    agent: &super::Agent,
    sandbox: &str,
    provider: &str,
    attach: bool,
) -> Result<bool> {
    use anyhow::Context;
    let view = agent
        .sandbox(sandbox)
        .with_context(|| format!("no sandbox named `{sandbox}` (see `portcullis sandbox list`)"))?;
    let (names, snapshot) = {
        let cache = agent.providers();
        if cache.provider(provider).is_none() {
            anyhow::bail!("provider '{provider}' not found (see `portcullis provider list`)");
        }
        let mut names = cache.attached_names(sandbox).to_vec();
        let present = names.iter().any(|n| n == provider);
        if present == attach {
            return Ok(false);
        }
        if attach {
            names.push(provider.to_string());
        } else {
            names.retain(|n| n != provider);
        }
        let base = view.snapshot();
        let effective = cache
            .compose_with(&names, &base.base)
            .map_err(anyhow::Error::msg)
            .with_context(|| format!("attaching provider '{provider}' to sandbox `{sandbox}`"))?;
        let snapshot = super::policies::Snapshot::new(
            base.base.clone(),
            effective,
            base.version,
            &base.source,
        );
        (names, snapshot)
    };
    let mut change = crate::store::ChangeSet::for_sandbox(sandbox);
    if attach {
        change.attach_providers.push(provider.to_string());
    } else {
        change.detach_providers.push(provider.to_string());
    }
    agent.store.commit(change).await?;
    write_cache(agent).set_attached(sandbox, names);
    view.policy.send_replace(snapshot.clone());
    agent.audit.log(
        crate::audit::ConfigStateChange::policy_loaded(
            &super::drafts::policy_facts(sandbox, &snapshot),
            crate::audit::PolicyLoad::Reload,
        )
        .into(),
    );
    if let Err(e) = super::drafts::after_policy_change(agent, sandbox).await {
        log::warn!("sandbox {sandbox}: pending chunks not re-evaluated: {e}");
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::SecretValue;

    const BASE: &str = "version: 1\nnetwork_policies:\n  a:\n    endpoints:\n      - host: example.test\n        port: 443\n";

    fn cache(compose_rules: bool) -> ProviderCache {
        let mut cache = ProviderCache {
            compose_rules,
            ..ProviderCache::default()
        };
        cache.put(ProviderRecord::new(
            "gh",
            "github",
            [("GITHUB_TOKEN".to_string(), SecretValue::new("ghp_x"))].into(),
        ));
        cache.set_attached("sb", vec!["gh".into()]);
        cache
    }

    #[test]
    fn attached_providers_compose_their_rule_unless_turned_off() {
        let base = Policy::parse("t", BASE).unwrap();
        let on = cache(true).compose("sb", &base).unwrap();
        assert!(on.rule("_provider_gh").is_some());
        let off = cache(false).compose("sb", &base).unwrap();
        assert_eq!(off.hash(), base.hash());
        // Credentials stay bound to the profile's hosts either way.
        for c in [cache(true), cache(false)] {
            let creds = c.credentials("sb");
            assert_eq!(creds.len(), 1);
            assert!(
                creds[0]
                    .bindings
                    .iter()
                    .any(|b| b.admits("api.github.com", 443, "/"))
            );
            assert!(
                !creds[0]
                    .bindings
                    .iter()
                    .any(|b| b.admits("example.test", 443, "/"))
            );
        }
        assert!(cache(true).credentials("other").is_empty());
        assert_eq!(cache(true).credential_keys("sb"), ["GITHUB_TOKEN"]);
    }
}
