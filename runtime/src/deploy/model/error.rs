//! How a problem in a document is reported: the field, what was expected, and the
//! document's own values only quoted and cut short, since they reach logs and `/status`.

/// A problem with a deployment document, naming the field and what was expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct ModelError {
    pub field: String,
    pub message: String,
    /// A valid document of a deployment type wasmgate does not run (`helm`, `compose`).
    pub unsupported_type: bool,
}

impl ModelError {
    /// The status code reported for this problem.
    pub fn code(&self) -> &'static str {
        if self.unsupported_type {
            "wasmgate.unsupported-type"
        } else {
            "wasmgate.invalid"
        }
    }
}

pub(super) fn model_err(field: impl Into<String>, message: impl Into<String>) -> ModelError {
    ModelError {
        field: field.into(),
        message: message.into(),
        unsupported_type: false,
    }
}

/// A value from the document for an error message: quoted and escaped (a newline or
/// quote cannot start a forged log line) and cut short (a megabyte name is not echoed).
pub(super) fn preview(s: &str) -> String {
    const MAX_CHARS: usize = 64;
    let mut cut: String = s.chars().take(MAX_CHARS).collect();
    if cut.len() < s.len() {
        cut.push_str("...");
    }
    format!("{cut:?}")
}

#[cfg(test)]
mod tests {
    use crate::deploy::model::{fixture::GOOD, Deployment};

    #[test]
    fn hostile_names_are_refused_without_being_echoed_raw() {
        let cases = [
            ("name: hello\n", "name: \"evil\\\"\\nx\"\n", "metadata.name"),
            (
                "namespace: examples",
                "namespace: Ex_amples",
                "metadata.namespace",
            ),
            (
                "applicationId: hello",
                "applicationId: Hello.App",
                "spec.applicationId",
            ),
            (
                "- name: hello",
                "- name: \"he\\nllo\"",
                "components[0].name",
            ),
            (
                "{route: /hello/}",
                "{route: \"/a b\"}",
                "trigger.http.route",
            ),
            (
                "{route: /hello/}",
                "{route: /x, host: \"a\\\"b\"}",
                "trigger.http.host",
            ),
        ];
        for (from, to, field) in cases {
            let text = GOOD.replace(from, to);
            assert_ne!(text, GOOD, "{from:?} not in the fixture");
            let err = Deployment::from_yaml(text.as_bytes()).unwrap_err();
            assert!(err.field.ends_with(field), "{to:?} gave {err:?}");
            let shown = err.to_string();
            assert!(!shown.contains('\n'), "{shown:?}");
        }
        // A long value is cut short in the message.
        let long = GOOD.replace("name: hello\n", &format!("name: {}\n", "x".repeat(10_000)));
        let err = Deployment::from_yaml(long.as_bytes())
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("metadata.name") && err.len() < 300, "{err}");
    }
}
