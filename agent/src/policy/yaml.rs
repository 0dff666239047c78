//! Helpers to walk a `serde_yaml::Value` by hand, so every error can name
//! its YAML path (serde's own messages do not).

use serde_yaml::{Mapping, Value};

use super::PolicyError;

/// Builds errors for one document.
pub(crate) struct Ctx<'a> {
    pub source: &'a str,
    pub warnings: Vec<String>,
}

pub(crate) type Res<T> = Result<T, PolicyError>;

impl Ctx<'_> {
    pub fn err(&self, yaml_path: &str, problem: impl Into<String>) -> PolicyError {
        PolicyError {
            source_name: self.source.to_string(),
            yaml_path: yaml_path.to_string(),
            problem: problem.into(),
        }
    }

    pub fn warn(&mut self, yaml_path: &str, message: impl AsRef<str>) {
        self.warnings
            .push(format!("{yaml_path}: {}", message.as_ref()));
    }

    /// The value as a mapping; `null` counts as an empty one.
    pub fn map<'v>(&self, v: &'v Value, path: &str) -> Res<Option<&'v Mapping>> {
        match v {
            Value::Null => Ok(None),
            Value::Mapping(m) => Ok(Some(m)),
            other => Err(self.err(
                path,
                format!(
                    "expected a mapping (`key: value` lines), found {}",
                    kind(other)
                ),
            )),
        }
    }

    /// The value as a list; `null` counts as absent.
    pub fn seq<'v>(&self, v: &'v Value, path: &str, example: &str) -> Res<Option<&'v [Value]>> {
        match v {
            Value::Null => Ok(None),
            Value::Sequence(s) => Ok(Some(s)),
            other => Err(self.err(
                path,
                format!(
                    "expected a list, found {}; write e.g. `{example}`",
                    kind(other)
                ),
            )),
        }
    }

    /// A string scalar; `null` counts as absent.
    pub fn str<'v>(&self, v: &'v Value, path: &str, example: &str) -> Res<Option<&'v str>> {
        match v {
            Value::Null => Ok(None),
            Value::String(s) => Ok(Some(s)),
            other => Err(self.err(
                path,
                format!(
                    "expected a string, found {}; write e.g. `{example}` (quote it if needed)",
                    kind(other)
                ),
            )),
        }
    }

    /// A boolean; `null` counts as false.
    pub fn bool(&self, v: &Value, path: &str, field: &str) -> Res<bool> {
        match v {
            Value::Null => Ok(false),
            Value::Bool(b) => Ok(*b),
            other => Err(self.err(
                path,
                format!(
                    "expected true or false, found {}; write `{field}: true`",
                    kind(other)
                ),
            )),
        }
    }

    /// Checks that every key is a string and known, and returns the keys
    /// with their values in document order.
    pub fn fields<'v>(
        &self,
        map: &'v Mapping,
        path: &str,
        known: &[&str],
        unsupported: &[(&str, &str)],
    ) -> Res<Vec<(&'v str, &'v Value)>> {
        let mut out = Vec::with_capacity(map.len());
        for (k, v) in map {
            let Value::String(key) = k else {
                return Err(self.err(
                    if path.is_empty() { "document" } else { path },
                    format!(
                        "key {} is {}; keys must be strings",
                        scalar_text(k),
                        kind(k)
                    ),
                ));
            };
            let at = join(path, key);
            if let Some((_, why)) = unsupported.iter().find(|(name, _)| name == key) {
                return Err(self.err(&at, format!("{why}; remove it")));
            }
            if !known.contains(&key.as_str()) {
                let mut problem = format!("unknown key; known keys are {}", known.join(", "));
                if let Some(s) = suggestion(key, known) {
                    problem.push_str(&format!("; did you mean `{s}`?"));
                }
                return Err(self.err(&at, problem));
            }
            out.push((key.as_str(), v));
        }
        Ok(out)
    }
}

/// `a.b` for a nested key; a bare key at the top.
pub(crate) fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

/// What a value is, for error messages.
pub(crate) fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Sequence(_) => "a list",
        Value::Mapping(_) => "a mapping",
        Value::Tagged(_) => "a tagged value (YAML tags are not supported)",
    }
}

/// A short rendering of a scalar, for error messages.
pub(crate) fn scalar_text(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => format!("`{s}`"),
        _ => "(complex)".into(),
    }
}

/// The closest known key within a few edits (more for longer keys), to
/// catch typos like `hots` or `network_policy`.
fn suggestion<'k>(key: &str, known: &[&'k str]) -> Option<&'k str> {
    let limit = (key.len() / 4).max(2);
    known
        .iter()
        .map(|k| (edit_distance(key, k), *k))
        .filter(|(d, _)| *d <= limit)
        .min()
        .map(|(_, k)| k)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur[j + 1] = sub.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// Converts any YAML value to JSON for the canonical form of sections
/// Portcullis keeps but does not interpret. Never fails: non-string keys
/// and tags are rendered as text.
pub(crate) fn to_json(v: &Value) -> serde_json::Value {
    use serde_json::Value as J;
    match v {
        Value::Null => J::Null,
        Value::Bool(b) => J::Bool(*b),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                J::from(i)
            } else if let Some(u) = n.as_u64() {
                J::from(u)
            } else {
                n.as_f64()
                    .and_then(serde_json::Number::from_f64)
                    .map_or_else(|| J::String(n.to_string()), J::Number)
            }
        }
        Value::String(s) => J::String(s.clone()),
        Value::Sequence(s) => J::Array(s.iter().map(to_json).collect()),
        Value::Mapping(m) => J::Object(
            m.iter()
                .map(|(k, v)| {
                    let key = match k {
                        Value::String(s) => s.clone(),
                        Value::Null | Value::Bool(_) | Value::Number(_) => {
                            scalar_text(k).trim_matches('`').to_string()
                        }
                        other => to_json(other).to_string(),
                    };
                    (key, to_json(v))
                })
                .collect(),
        ),
        Value::Tagged(t) => {
            let mut obj = serde_json::Map::new();
            obj.insert(t.tag.to_string(), to_json(&t.value));
            J::Object(obj)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> Ctx<'static> {
        Ctx {
            source: "t.yaml",
            warnings: Vec::new(),
        }
    }

    #[test]
    fn typos_get_a_suggestion() {
        let m: Mapping = serde_yaml::from_str("hots: a\n").unwrap();
        let e = ctx().fields(&m, "x", &["host", "port"], &[]).unwrap_err();
        assert_eq!(e.yaml_path, "x.hots");
        assert_eq!(
            e.problem,
            "unknown key; known keys are host, port; did you mean `host`?"
        );
    }

    #[test]
    fn far_off_keys_get_no_suggestion() {
        let m: Mapping = serde_yaml::from_str("zzzzzz: a\n").unwrap();
        let e = ctx().fields(&m, "", &["host"], &[]).unwrap_err();
        assert_eq!(e.yaml_path, "zzzzzz");
        assert!(!e.problem.contains("did you mean"), "{e}");
    }

    #[test]
    fn non_string_keys_are_rejected() {
        let m: Mapping = serde_yaml::from_str("1: a\n").unwrap();
        let e = ctx().fields(&m, "x", &["host"], &[]).unwrap_err();
        assert!(e.problem.contains("keys must be strings"), "{e}");
    }

    #[test]
    fn type_errors_say_what_was_found() {
        let v: Value = serde_yaml::from_str("[1]").unwrap();
        let e = ctx().str(&v, "a.b", "b: x").unwrap_err();
        assert!(e.problem.contains("found a list"), "{e}");
        let e = ctx().map(&v, "a").unwrap_err();
        assert!(e.problem.contains("expected a mapping"), "{e}");
    }

    #[test]
    fn any_yaml_converts_to_json() {
        let v: Value =
            serde_yaml::from_str("a: !t 1\n1: .nan\n[x]: y\nz: [true, null, 1.5]\n").unwrap();
        let j = to_json(&v);
        assert_eq!(j["a"]["!t"], 1);
        assert_eq!(j["1"], ".nan");
        assert_eq!(j["z"][2], 1.5);
        assert_eq!(j["[\"x\"]"], "y");
    }

    #[test]
    fn edit_distances() {
        assert_eq!(edit_distance("hots", "host"), 2);
        assert_eq!(edit_distance("port", "ports"), 1);
        assert_eq!(edit_distance("", "abc"), 3);
    }
}
