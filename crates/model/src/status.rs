//! Status conditions, as Gateway API writes them back: what was accepted, what was not, why.

use std::fmt;
use std::sync::Arc;

use meshgate_api::{Object, ObjectRef};
use serde::Serialize;

/// One condition on one resource (for routes: per parent).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// The resource.
    pub object: ObjectRef,
    /// Where it was read from.
    pub file: Arc<str>,
    /// Field the condition is about (`spec.parentRefs[0]`, `spec.listeners[1]`, ...).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub field: String,
    /// `Accepted`, `ResolvedRefs`, `Programmed` or `Conflicted`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// True when the condition holds (for `Conflicted`, true is bad).
    pub status: bool,
    /// Gateway API reason.
    pub reason: &'static str,
    /// What happened, for people.
    pub message: String,
    /// How `meshgate validate` treats it when it is a problem.
    pub severity: Severity,
}

/// How serious a problem is for `meshgate validate` (the proxy serves the rest either way).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Severity {
    /// The configuration is wrong as written (validate exits 1).
    Error,
    /// Probably wrong, or waiting for another resource (validate exits 1 with `--strict`).
    Warning,
}

impl Condition {
    /// The same condition, as an error (the configuration cannot be served as written).
    pub fn error(mut self) -> Self {
        self.severity = Severity::Error;
        self
    }

    /// Whether this condition reports a problem.
    pub fn is_problem(&self) -> bool {
        if self.kind == "Conflicted" { self.status } else { !self.status }
    }
}

impl fmt::Display for Condition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}: ", self.file, self.object)?;
        if !self.field.is_empty() {
            write!(f, "{}: ", self.field)?;
        }
        let status = if self.status { "True" } else { "False" };
        write!(f, "{}={status} ({}): {}", self.kind, self.reason, self.message)
    }
}

/// A resource's age for ordering: its creation time, in seconds (0 when it has none).
pub(crate) fn age(o: &Object) -> i64 {
    o.resource.metadata().creation_timestamp.as_ref().map_or(0, |t| t.0.as_second())
}

/// A condition about `o` (a warning until the caller says otherwise).
pub(crate) fn cond(
    o: &Object,
    field: String,
    kind: &'static str,
    status: bool,
    reason: &'static str,
    message: String,
) -> Condition {
    Condition {
        object: o.id.clone(),
        file: o.source.file.clone(),
        field,
        kind,
        status,
        reason,
        message,
        severity: Severity::Warning,
    }
}

/// A route's `ResolvedRefs`: true when every reference resolved, else one condition per
/// reference that did not (field, reason, message).
pub(crate) fn report_refs(
    o: &Object,
    unresolved: Vec<(String, &'static str, String)>,
    conditions: &mut Vec<Condition>,
) {
    if unresolved.is_empty() {
        conditions.push(cond(o, String::new(), "ResolvedRefs", true, "ResolvedRefs", "all references resolved".into()));
    }
    for (field, reason, message) in unresolved {
        conditions.push(cond(o, field, "ResolvedRefs", false, reason, message));
    }
}
