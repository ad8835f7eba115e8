//! The guards around the YAML parser, which sees untrusted bytes first: a depth check
//! before it runs, and its error messages stripped of the input they quote.

use super::error::{model_err, ModelError};

/// The longest YAML error message passed on (status, logs).
const MAX_YAML_ERROR_CHARS: usize = 300;

/// A YAML parse error without the input it may quote: serde names the offending value
/// (`invalid type: string "root:x:0:0:..."`), which would put the content of any file
/// given as a deployment into the unauthenticated `/status`. Position and field path
/// stay; every quoted or back-quoted value before serde's `, expected` (what the schema
/// wanted, never input) is replaced by `…`, except the schema's own field names in
/// `missing field` / `duplicate field`.
pub(super) fn redacted_yaml_error(err: &serde_norway::Error) -> String {
    redact_quoted(
        &err.to_string(),
        err.location().map(|at| (at.line(), at.column())),
    )
}

fn redact_quoted(text: &str, location: Option<(usize, usize)>) -> String {
    let (input_part, expected) = match text.find(", expected ") {
        Some(at) => text.split_at(at),
        None => (text, ""),
    };
    let keep_backquoted = ["missing field `", "duplicate field `"]
        .iter()
        .any(|m| input_part.contains(m));
    let mut out = String::with_capacity(text.len().min(MAX_YAML_ERROR_CHARS));
    let mut chars = input_part.chars();
    while let Some(c) = chars.next() {
        if c == '"' || (c == '`' && !keep_backquoted) {
            out.push(c);
            out.push('…');
            let mut escaped = false;
            for inner in chars.by_ref() {
                if inner == c && !escaped {
                    out.push(c);
                    break;
                }
                escaped = !escaped && inner == '\\';
            }
        } else {
            out.push(c);
        }
    }
    out.push_str(expected);
    let cut = out.chars().count() > MAX_YAML_ERROR_CHARS;
    if cut {
        out = out.chars().take(MAX_YAML_ERROR_CHARS).collect();
        out.push('…');
    }
    // serde_norway leaves out a position at the very start of the document.
    if let Some((line, column)) = location.filter(|_| cut || !out.contains(" at line ")) {
        out.push_str(&format!(" (at line {line} column {column})"));
    }
    out
}

/// Deepest `[` / `{` nesting a deployment document may have. The YAML parser's cost
/// grows with the square of the flow nesting depth (100k levels, 200 KB, take minutes),
/// and serde refuses more than 128 levels anyway, only after the parser is done.
pub const MAX_FLOW_DEPTH: usize = 256;

/// Refuses documents that could nest flow collections deeper than [`MAX_FLOW_DEPTH`].
/// Every bracket counts, also inside quotes and comments: telling those apart needs the
/// very parser this guards, and no real deployment has hundreds of unclosed brackets.
pub(super) fn check_flow_depth(bytes: &[u8]) -> Result<(), ModelError> {
    let mut depth = 0usize;
    for b in bytes {
        match b {
            b'[' | b'{' => {
                depth += 1;
                if depth > MAX_FLOW_DEPTH {
                    return Err(model_err(
                        "document",
                        format!("nested deeper than {MAX_FLOW_DEPTH} levels of [ ] / {{ }}"),
                    ));
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deploy::model::{fixture::GOOD, Deployment};
    use std::time::Duration;

    #[test]
    fn deep_flow_nesting_is_refused_before_parsing() {
        let deep = format!("{GOOD}x: {}{}\n", "[".repeat(100_000), "]".repeat(100_000));
        let start = std::time::Instant::now();
        let err = Deployment::from_yaml(deep.as_bytes()).unwrap_err();
        assert!(
            start.elapsed() < Duration::from_secs(1),
            "{:?}",
            start.elapsed()
        );
        assert!(err.message.contains("nested deeper"), "{err}");
        // Many brackets that close again are not nesting.
        let wide = format!("{GOOD}x: [{}]\n", "[], ".repeat(10_000));
        Deployment::from_yaml(wide.as_bytes()).unwrap();
    }

    #[test]
    fn malformed_yaml_reports_location() {
        let err = Deployment::from_yaml(b"id: [unclosed\nmetadata: {").unwrap_err();
        assert_eq!(err.field, "document");
        assert!(err.message.contains("line"), "{err}");
    }

    #[test]
    fn yaml_errors_do_not_quote_the_input() {
        let passwd =
            "root:x:0:0:root:/root:/bin/bash\ndaemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n";
        let err = Deployment::from_yaml(passwd.as_bytes()).unwrap_err();
        assert!(
            !err.message.contains("root") && !err.message.contains("daemon"),
            "{err}"
        );
        assert!(err.message.contains("line 1 column 1"), "{err}");
        assert!(err.message.contains("expected struct"), "{err}");

        // A value deep in the document: the field path and position stay, the value goes.
        let text = GOOD.replace(
            "metadata:\n  name: hello\n  namespace: examples\n  deviceId: edge-01/apps\n",
            "metadata: \"s3cr3t\\\" value\"\n",
        );
        let err = Deployment::from_yaml(text.as_bytes()).unwrap_err();
        assert!(
            !err.message.contains("s3cr3t") && !err.message.contains("value\""),
            "{err}"
        );
        assert!(
            err.message.starts_with(
                "not a valid ApplicationDeployment YAML: metadata: invalid type: string \"…\""
            ),
            "{err}"
        );
        assert!(err.message.contains("line "), "{err}");

        // Schema field names are not input and stay; what serde expected stays.
        assert_eq!(
            redact_quoted(
                "spec: missing field `applicationId` at line 3 column 1",
                None
            ),
            "spec: missing field `applicationId` at line 3 column 1"
        );
        assert_eq!(
            redact_quoted(
                "spec.type: unknown variant `root:x:0`, expected one of `custom`, `helm`",
                None
            ),
            "spec.type: unknown variant `…`, expected one of `custom`, `helm`"
        );
        // An unterminated quote hides the rest.
        assert_eq!(
            redact_quoted("invalid size \"abc", None),
            "invalid size \"…"
        );

        // Long messages are cut, the position is kept.
        let long = format!("custom error {}", "k".repeat(2000));
        let cut = redact_quoted(&long, Some((7, 3)));
        assert!(cut.chars().count() < 400, "{cut}");
        assert!(cut.ends_with("… (at line 7 column 3)"), "{cut}");
    }
}
