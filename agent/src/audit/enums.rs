//! OCSF 1.8.0 enumerations used by Portcullis events.
//!
//! OCSF pairs every enum attribute with its caption (`action_id` + `action`,
//! `severity_id` + `severity`, ...). Each enum here serializes as that pair of
//! keys, so event structs embed it with `#[serde(flatten)]` and the id and the
//! caption can never disagree.

use serde::ser::{Serialize, SerializeMap, Serializer};

/// Declares an OCSF enum: the Rust enum, `id()`, `caption()`, and a
/// `Serialize` impl that writes `{"<id_key>": id, "<name_key>": caption}`.
macro_rules! ocsf_enum {
    (
        $(#[$meta:meta])*
        $name:ident, $id_key:literal, $caption_key:literal {
            $( $(#[$vmeta:meta])* $variant:ident = $id:literal => $caption:literal ),+ $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum $name {
            $( $(#[$vmeta])* $variant ),+
        }

        impl $name {
            /// The OCSF numeric id.
            pub const fn id(self) -> u8 {
                match self {
                    $( Self::$variant => $id ),+
                }
            }

            /// The OCSF caption for the id.
            pub const fn caption(self) -> &'static str {
                match self {
                    $( Self::$variant => $caption ),+
                }
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                let mut map = serializer.serialize_map(Some(2))?;
                map.serialize_entry($id_key, &self.id())?;
                map.serialize_entry($caption_key, self.caption())?;
                map.end()
            }
        }
    };
}

ocsf_enum! {
    /// `severity_id` / `severity`.
    Severity, "severity_id", "severity" {
        Informational = 1 => "Informational",
        Low = 2 => "Low",
        Medium = 3 => "Medium",
        High = 4 => "High",
        Critical = 5 => "Critical",
        Fatal = 6 => "Fatal",
    }
}

impl Severity {
    /// The bracketed tag used by the shorthand log (reference §7.4).
    pub const fn tag(self) -> &'static str {
        match self {
            Self::Informational => "[INFO]",
            Self::Low => "[LOW]",
            Self::Medium => "[MED]",
            Self::High => "[HIGH]",
            Self::Critical => "[CRIT]",
            Self::Fatal => "[FATAL]",
        }
    }
}

ocsf_enum! {
    /// `status_id` / `status`.
    Status, "status_id", "status" {
        Success = 1 => "Success",
        Failure = 2 => "Failure",
    }
}

ocsf_enum! {
    /// `action_id` / `action` (security_control profile).
    Action, "action_id", "action" {
        Allowed = 1 => "Allowed",
        Denied = 2 => "Denied",
    }
}

ocsf_enum! {
    /// `disposition_id` / `disposition` (security_control profile).
    Disposition, "disposition_id", "disposition" {
        Allowed = 1 => "Allowed",
        Blocked = 2 => "Blocked",
        Rejected = 25 => "Rejected",
    }
}

ocsf_enum! {
    /// `activity_id` / `activity_name` of Network Activity (4001).
    NetworkActivityId, "activity_id", "activity_name" {
        Open = 1 => "Open",
        Close = 2 => "Close",
        Reset = 3 => "Reset",
        Fail = 4 => "Fail",
        Refuse = 5 => "Refuse",
        Other = 99 => "Other",
    }
}

ocsf_enum! {
    /// `activity_id` / `activity_name` of HTTP Activity (4002). OpenShell files
    /// every L7 decision under Other (reference §7.2), and so does Portcullis.
    HttpActivityId, "activity_id", "activity_name" {
        Other = 99 => "Other",
    }
}

ocsf_enum! {
    /// `activity_id` / `activity_name` of Device Config State Change (5019).
    ConfigActivityId, "activity_id", "activity_name" {
        Log = 1 => "Log",
        Other = 99 => "Other",
    }
}

ocsf_enum! {
    /// `activity_id` / `activity_name` of Application Lifecycle (6002).
    LifecycleActivityId, "activity_id", "activity_name" {
        Start = 3 => "Start",
        Stop = 4 => "Stop",
    }
}

ocsf_enum! {
    /// `state_id` / `state` of Device Config State Change (5019).
    State, "state_id", "state" {
        Disabled = 1 => "Disabled",
        Enabled = 2 => "Enabled",
        Other = 99 => "Other",
    }
}

ocsf_enum! {
    /// `direction_id` / `direction` of `connection_info`.
    Direction, "direction_id", "direction" {
        Outbound = 2 => "Outbound",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enums_serialize_as_id_and_caption() {
        let v = serde_json::to_value(Severity::Medium).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"severity_id": 3, "severity": "Medium"})
        );
        let v = serde_json::to_value(Disposition::Rejected).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"disposition_id": 25, "disposition": "Rejected"})
        );
        let v = serde_json::to_value(NetworkActivityId::Refuse).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"activity_id": 5, "activity_name": "Refuse"})
        );
    }

    #[test]
    fn severity_tags_match_reference() {
        let tags: Vec<_> = [
            Severity::Informational,
            Severity::Low,
            Severity::Medium,
            Severity::High,
            Severity::Critical,
            Severity::Fatal,
        ]
        .iter()
        .map(|s| s.tag())
        .collect();
        assert_eq!(
            tags,
            ["[INFO]", "[LOW]", "[MED]", "[HIGH]", "[CRIT]", "[FATAL]"]
        );
    }
}
