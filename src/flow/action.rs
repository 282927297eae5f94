//! The action a node's `post` returns: which edge the flow follows next.

use std::fmt;
use std::sync::Arc;

/// The action returned by `post`, naming the edge to follow.
///
/// PocketFlow's action is an optional string: no action, or an empty one, means `"default"`,
/// but warnings print the action as it was returned (`'None'` for no action). `Action` keeps
/// that distinction.
///
/// ```
/// use flowtrace::Action;
/// assert_eq!(Action::none().key(), "default");
/// assert_eq!(Action::new("").key(), "default");
/// assert_eq!(Action::new("approve").key(), "approve");
/// assert_eq!(Action::none().to_string(), "None");
/// ```
#[derive(Clone, Default)]
pub struct Action(Repr);

// A literal action (the common case, returned from every `post`) costs no allocation.
#[derive(Clone, Default)]
enum Repr {
    #[default]
    None,
    Static(&'static str),
    Shared(Arc<str>),
}

impl PartialEq for Action {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}
impl Eq for Action {}
impl std::hash::Hash for Action {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.as_str().hash(state)
    }
}

/// The edge label used when a node returns no action.
pub const DEFAULT_ACTION: &str = "default";

impl Action {
    /// No action: the flow follows the `default` edge.
    pub const fn none() -> Self {
        Action(Repr::None)
    }

    /// A named action.
    pub fn new(name: impl AsRef<str>) -> Self {
        match name.as_ref() {
            // The action most `post`s return, without an allocation.
            DEFAULT_ACTION => Action(Repr::Static(DEFAULT_ACTION)),
            name => Action(Repr::Shared(Arc::from(name))),
        }
    }

    /// A named action from a literal, without allocating.
    pub const fn from_static(name: &'static str) -> Self {
        Action(Repr::Static(name))
    }

    /// The edge this action selects: the name, or `"default"` when there is none or it is empty.
    pub fn key(&self) -> &str {
        match self.as_str() {
            Some(s) if !s.is_empty() => s,
            _ => DEFAULT_ACTION,
        }
    }

    /// The action as returned, `None` when there was none.
    pub fn as_str(&self) -> Option<&str> {
        match &self.0 {
            Repr::None => None,
            Repr::Static(s) => Some(s),
            Repr::Shared(s) => Some(s),
        }
    }

    /// Whether no action was returned.
    pub fn is_none(&self) -> bool {
        matches!(self.0, Repr::None)
    }

    /// Parses an action from a JSON value, as a dynamic caller would hand it over.
    ///
    /// `null` is no action and a string is a named action; anything else is rejected with
    /// PocketFlow's message, `Action must be a string`.
    pub fn from_json(value: &serde_json::Value) -> Result<Self, ActionError> {
        match value {
            serde_json::Value::Null => Ok(Action::none()),
            serde_json::Value::String(s) => Ok(Action::new(s)),
            _ => Err(ActionError),
        }
    }
}

/// The error for an action that is not a string.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("Action must be a string")]
pub struct ActionError;

impl fmt::Display for Action {
    /// Prints the action as returned, PocketFlow style: `None` for no action.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str().unwrap_or("None"))
    }
}

impl fmt::Debug for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.as_str() {
            Some(s) => write!(f, "Action({s:?})"),
            None => f.write_str("Action(None)"),
        }
    }
}

impl From<&'static str> for Action {
    fn from(s: &'static str) -> Self {
        Action::from_static(s)
    }
}

impl From<String> for Action {
    fn from(s: String) -> Self {
        Action(Repr::Shared(Arc::from(s)))
    }
}

impl From<Option<&'static str>> for Action {
    fn from(s: Option<&'static str>) -> Self {
        s.map(Action::from_static).unwrap_or_default()
    }
}

impl From<()> for Action {
    fn from(_: ()) -> Self {
        Action::none()
    }
}

impl PartialEq<&str> for Action {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == Some(*other)
    }
}

impl serde::Serialize for Action {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.as_str() {
            Some(v) => s.serialize_str(v),
            None => s.serialize_none(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_and_none_select_default_but_print_as_returned() {
        assert_eq!(Action::new("").key(), "default");
        assert_eq!(Action::new("").to_string(), "");
        assert_eq!(Action::none().to_string(), "None");
        assert_eq!(Action::from(Some("x")).key(), "x");
    }

    #[test]
    fn non_string_json_is_rejected() {
        let err = Action::from_json(&serde_json::json!(1)).unwrap_err();
        assert_eq!(err.to_string(), "Action must be a string");
        assert_eq!(Action::from_json(&serde_json::json!(null)).unwrap(), Action::none());
    }
}
