//! `${VAR}` and `${VAR:-default}` from the environment; `$${` writes a literal `${` (HAProxy uses
//! `"${VAR}"` itself).

/// Where interpolation failed: 1-based line and column, and why.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct InterpolationError {
    pub line: usize,
    pub column: usize,
    pub message: String,
}

pub(crate) fn interpolate(text: &str, env: impl Fn(&str) -> Option<String>) -> Result<String, InterpolationError> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(r) = after.strip_prefix("${") {
            out.push_str("${");
            rest = r;
            continue;
        }
        if !after.starts_with('{') {
            out.push('$');
            rest = after;
            continue;
        }
        let at = text.len() - rest.len() + i;
        let pos = |msg: String| {
            let before = &text[..at];
            let line = before.matches('\n').count() + 1;
            let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
            InterpolationError { line, column, message: msg }
        };
        // A reference ends on its line: a `${` left open must not swallow the lines after it
        // (nor quote them in the message).
        let line = &after[..after.find(['\n', '\r']).unwrap_or(after.len())];
        let Some(end) = line.find('}') else {
            return Err(pos("unterminated `${` (it must end with `}` on the same line; write `$${` for a literal `${`)".into()));
        };
        let inner = &after[1..end];
        let (name, default) = match inner.split_once(":-") {
            Some((n, d)) => (n, Some(d)),
            None => (inner, None),
        };
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            let shown: String = if inner.chars().count() > 40 { inner.chars().take(40).chain("...".chars()).collect() } else { inner.to_owned() };
            return Err(pos(format!("`${{{shown}}}` is not a variable name (write `$${{` for a literal `${{`)")));
        }
        let value = match (env(name), default) {
            (Some(v), _) => v,
            (None, Some(d)) => d.to_owned(),
            (None, None) => return Err(pos(format!("environment variable {name} is not set (use `${{{name}:-default}}` for a default)"))),
        };
        if value.contains(['\n', '\r']) {
            return Err(pos(format!("environment variable {name} contains a line break")));
        }
        out.push_str(&value);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(k: &str) -> Option<String> {
        match k {
            "PORT" => Some("8080".into()),
            "BAD" => Some("a\nb".into()),
            _ => None,
        }
    }

    #[test]
    fn substitutes() {
        assert_eq!(interpolate("port: ${PORT}", env).unwrap(), "port: 8080");
        assert_eq!(interpolate("h: ${HOST:-localhost} $x $${KEEP}", env).unwrap(), "h: localhost $x ${KEEP}");
    }

    #[test]
    fn errors_have_positions() {
        let e = interpolate("a: 1\nb: ${NOPE}\n", env).unwrap_err();
        assert_eq!((e.line, e.column), (2, 4));
        assert!(e.message.contains("NOPE"));
        assert!(interpolate("x: ${BAD}", env).is_err());
        assert!(interpolate("x: ${a b}", env).is_err());
        assert!(interpolate("x: ${OPEN", env).is_err());
    }

    #[test]
    fn an_open_reference_ends_at_its_line() {
        // Found by the fuzz suite: the message quoted every line up to the next `}` in the file.
        let e = interpolate("a: \"${\"\nb: x\nc: {d: 1}\n", env).unwrap_err();
        assert_eq!((e.line, e.column), (1, 5));
        assert!(e.message.starts_with("unterminated `${`") && !e.message.contains('\n'), "{e:?}");
        let e = interpolate(&format!("a: ${{{}}}\n", "x y".repeat(100)), env).unwrap_err();
        assert!(e.message.starts_with(&format!("`${{{}...}}` is not a variable name", &"x y".repeat(100)[..40])), "{e:?}");
    }
}
