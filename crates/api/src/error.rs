//! Configuration errors that name where the problem is: file, resource, field.

use std::fmt;
use std::sync::Arc;

use crate::resource::ObjectRef;

/// One problem found in the configuration.
///
/// Displayed as `FILE: KIND NAMESPACE/NAME: FIELD: MESSAGE`, leaving out the parts that are
/// unknown (a YAML syntax error has a line and column instead of a resource).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    /// The file (or store key) the resource came from.
    pub file: Arc<str>,
    /// Line and column, for errors found before a resource could be identified.
    pub position: Option<(usize, usize)>,
    /// The resource the error is about, when known.
    pub object: Option<ObjectRef>,
    /// Field path inside the resource, e.g. `spec.rules[1].backendRefs[0].weight`.
    pub field: Option<String>,
    /// What is wrong.
    pub message: String,
}

impl ConfigError {
    /// An error about a whole file (unreadable, not YAML).
    pub fn file(source: &Arc<str>, message: impl Into<String>) -> Self {
        Self { file: source.clone(), position: None, object: None, field: None, message: message.into() }
    }

    /// An error about a field of a resource.
    pub fn field(source: &Arc<str>, object: &ObjectRef, field: impl Into<String>, message: impl Into<String>) -> Self {
        let field = field.into();
        Self {
            file: source.clone(),
            position: None,
            object: Some(object.clone()),
            field: (!field.is_empty()).then_some(field),
            message: message.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.file)?;
        if let Some((line, column)) = self.position {
            write!(f, ":{line}:{column}")?;
        }
        if let Some(object) = &self.object {
            write!(f, ": {object}")?;
        }
        if let Some(field) = &self.field {
            write!(f, ": {field}")?;
        }
        write!(f, ": {}", self.message)
    }
}

/// Every error found in one pass; never just the first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Errors(pub Vec<ConfigError>);

impl Errors {
    /// Adds one error.
    pub fn push(&mut self, error: ConfigError) {
        self.0.push(error);
    }

    /// True when nothing was found.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Number of errors.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Iterates the errors in the order found.
    pub fn iter(&self) -> std::slice::Iter<'_, ConfigError> {
        self.0.iter()
    }
}

impl fmt::Display for Errors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Errors {}
