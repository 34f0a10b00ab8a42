//! The backends file's format: a list of `{name, host, port, weight, labels}`, or a mapping with
//! such a list under `backends`.
//!
//! The document is read into a small tree of its own ([`Node`]) rather than
//! `serde_yaml_ng::Value`: that one refuses integers wider than 64 bits, which made one entry
//! with `port: 18446744073709551616` spoil the whole file. Here a number keeps its text, so such
//! an entry reaches the store as it was written and is rejected there alone.

use std::collections::HashMap;
use std::fmt;

use myelin_source::Discovered;
use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};

const FIELDS: &[&str] = &["name", "host", "port", "weight", "labels"];

/// A YAML/JSON document as the backends file needs it.
#[derive(Debug, Clone, PartialEq)]
enum Node {
    Null,
    /// A string, a boolean, or an integer of any width, as text.
    Text(String),
    /// A number with a fraction or an exponent (its written form is lost to the parser).
    Float(f64),
    Seq(Vec<Node>),
    /// In document order, duplicates kept (so they can be refused).
    Map(Vec<(Node, Node)>),
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(NodeVisitor)
    }
}

struct NodeVisitor;

impl<'de> Visitor<'de> for NodeVisitor {
    type Value = Node;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any YAML value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Node, E> {
        Ok(Node::Text(v.to_string()))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Node, E> {
        Ok(Node::Text(v.to_string()))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Node, E> {
        Ok(Node::Text(v.to_string()))
    }
    fn visit_i128<E>(self, v: i128) -> Result<Node, E> {
        Ok(Node::Text(v.to_string()))
    }
    fn visit_u128<E>(self, v: u128) -> Result<Node, E> {
        Ok(Node::Text(v.to_string()))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Node, E> {
        Ok(Node::Float(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Node, E> {
        Ok(Node::Text(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Node, E> {
        Ok(Node::Text(v))
    }
    fn visit_unit<E>(self) -> Result<Node, E> {
        Ok(Node::Null)
    }
    fn visit_none<E>(self) -> Result<Node, E> {
        Ok(Node::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Node, D::Error> {
        Node::deserialize(d)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node, A::Error> {
        let mut out = Vec::new();
        while let Some(v) = seq.next_element()? {
            out.push(v);
        }
        Ok(Node::Seq(out))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node, A::Error> {
        let mut out = Vec::new();
        while let Some(kv) = map.next_entry()? {
            out.push(kv);
        }
        Ok(Node::Map(out))
    }
    fn visit_enum<A: de::EnumAccess<'de>>(self, _: A) -> Result<Node, A::Error> {
        // A tagged value (`!tag x`): not part of the format.
        Err(de::Error::custom("tagged values are not supported"))
    }
}

impl Node {
    fn text(&self) -> Option<&str> {
        match self {
            Node::Text(s) => Some(s),
            _ => None,
        }
    }
}

/// The entries that parsed, and the index and reason of each that did not.
pub type Parsed = (Vec<Discovered>, Vec<(usize, String)>);

/// Parse a backends file: a list of `{name, host, port, weight, labels}`, or a mapping with
/// such a list under `backends`. Returns the entries that parsed, and the index and reason of
/// each that did not. Values are not validated here (the store does that); numbers keep their
/// text whatever their width.
pub fn parse_backends(text: &str) -> Result<Parsed, String> {
    if text.trim().is_empty() {
        return Ok((vec![], vec![]));
    }
    let doc: Node = serde_yaml_ng::from_str(text).map_err(|e| e.to_string())?;
    let list = match doc {
        Node::Seq(s) => s,
        Node::Null => vec![],
        Node::Map(mut m) => match m.as_slice() {
            [(k, _)] if k.text() == Some("backends") => match m.pop().map(|(_, v)| v) {
                Some(Node::Seq(s)) => s,
                Some(Node::Null) => vec![],
                _ => return Err("`backends` must be a list".into()),
            },
            _ => return Err("expected a list of backends, or a mapping with only a `backends` list".into()),
        },
        _ => return Err("expected a list of backends".into()),
    };
    let mut ok = Vec::new();
    let mut bad = Vec::new();
    for (i, entry) in list.into_iter().enumerate() {
        match entry_of(entry) {
            Ok(d) => ok.push(d),
            Err(reason) => bad.push((i, reason)),
        }
    }
    Ok((ok, bad))
}

/// Files up to this size keep their entries parsed ([`Known`]): about 15,000 entries of the
/// usual kind. A larger file is parsed whole at each change, rather than held twice in memory.
const KNOWN_MAX_BYTES: usize = 1024 * 1024;

/// The entries of one source's file parsed last time, by their text: when the file changes,
/// only the entries whose text is new are parsed (one entry edited in a file of a thousand: one
/// entry parsed, not a thousand). The result is the same as [`parse_backends`] of the whole
/// text, always: a document that is not a plain list of entries (see [`entry_texts`]), or an
/// entry that is not well-formed on its own, is parsed whole.
#[derive(Debug, Default)]
pub struct Known {
    by_text: HashMap<Box<str>, Result<Discovered, String>>,
}

impl Known {
    /// What [`parse_backends`] gives for `text`, parsing only the entries not seen last time.
    pub fn parse(&mut self, text: &str) -> Result<Parsed, String> {
        let texts = if text.len() <= KNOWN_MAX_BYTES { entry_texts(text) } else { None };
        let Some(texts) = texts else {
            self.by_text = HashMap::new();
            return parse_backends(text);
        };
        let mut now = HashMap::with_capacity(texts.len());
        let (mut ok, mut bad) = (Vec::new(), Vec::new());
        for (i, t) in texts.into_iter().enumerate() {
            // An entry seen last time moves over with its key; one there twice is copied.
            let (key, result) = match self.by_text.remove_entry(t) {
                Some(known) => known,
                None => match now.get(t).cloned().or_else(|| parse_entry(t)) {
                    Some(result) => (Box::from(t), result),
                    None => {
                        self.by_text = HashMap::new();
                        return parse_backends(text);
                    }
                },
            };
            match &result {
                Ok(d) => ok.push(d.clone()),
                Err(reason) => bad.push((i, reason.clone())),
            }
            now.insert(key, result);
        }
        self.by_text = now;
        Ok((ok, bad))
    }
}

/// The text of each entry when the document is a plain list at its top: every line starts an
/// entry (`-` then a space or the line's end), continues one (a space), is blank, or is a
/// comment (`#`); lines end with `\n` or `\r\n` only (YAML also breaks lines at a lone `\r`,
/// U+0085, U+2028 and U+2029, which could end an entry where this does not look); and there is
/// no `&` or `*` anywhere (anchors and aliases, the one way an entry's meaning can depend on
/// another's text). Anything else (`backends:`, `---`, directives, flow lists, tabs, a
/// byte-order mark, no entry at all) is `None`. In such a list an entry ends where the next line
/// starting with `- ` begins, so each entry reads the same alone as in the whole document; the
/// lines before the first entry go with it, so they are parsed too (a control character in a
/// comment spoils the document). An entry that does not parse alone sends the whole text to
/// [`parse_backends`].
fn entry_texts(text: &str) -> Option<Vec<&str>> {
    if text.contains(['&', '*', '\u{85}', '\u{2028}', '\u{2029}']) || text.match_indices('\r').any(|(i, _)| text.as_bytes().get(i + 1) != Some(&b'\n')) {
        return None;
    }
    let mut starts = Vec::new();
    let mut at = 0;
    for line in text.split_inclusive('\n') {
        let mut rest = line.bytes();
        match (rest.next(), rest.next()) {
            (Some(b'-'), None | Some(b' ' | b'\n' | b'\r')) => starts.push(at),
            (Some(b' '), _) if !starts.is_empty() => {}
            (Some(b'#' | b'\n' | b'\r') | None, _) => {}
            _ => return None,
        }
        at += line.len();
    }
    let first = starts.first_mut()?;
    *first = 0;
    let ends = starts.iter().skip(1).copied().chain([text.len()]);
    Some(starts.iter().zip(ends).map(|(&s, e)| &text[s..e]).collect())
}

/// One entry's text (`- ...`) parsed alone; `None` when it is not well-formed alone.
fn parse_entry(text: &str) -> Option<Result<Discovered, String>> {
    #[cfg(test)]
    tests::PARSED.with(|n| n.set(n.get() + 1));
    match serde_yaml_ng::from_str::<Node>(text) {
        Ok(Node::Seq(mut v)) if v.len() == 1 => v.pop().map(entry_of),
        _ => None,
    }
}

/// A single value as text; a float only where a fraction makes sense (not in ports or weights,
/// where `1.0` must not pass for `1`).
fn scalar(v: &Node, key: &str, floats: bool) -> Result<String, String> {
    match v {
        Node::Text(s) => Ok(s.clone()),
        Node::Float(f) if floats && f.is_finite() => Ok(f.to_string()),
        Node::Float(f) => Err(format!("`{key}` must be a whole number, not {f}")),
        _ => Err(format!("`{key}` must be a single value")),
    }
}

fn entry_of(v: Node) -> Result<Discovered, String> {
    let Node::Map(m) = v else { return Err("not a mapping".into()) };
    let mut d = Discovered::default();
    let mut seen: Vec<String> = Vec::new();
    for (k, v) in m {
        let key = k.text().ok_or("a key is not a string")?.to_owned();
        if seen.contains(&key) {
            return Err(format!("`{key}` is given twice"));
        }
        match key.as_str() {
            "name" => d.name = Some(scalar(&v, &key, true)?),
            "host" => d.host = scalar(&v, &key, false)?,
            "port" => d.port = scalar(&v, &key, false)?,
            "weight" => d.weight = Some(scalar(&v, &key, false)?),
            "labels" => {
                let Node::Map(labels) = v else { return Err("`labels` must be a mapping".into()) };
                for (lk, lv) in labels {
                    let (Ok(lk), Ok(lv)) = (scalar(&lk, "labels", true), scalar(&lv, "labels", true)) else {
                        return Err("label keys and values must be single values".into());
                    };
                    d.labels.insert(lk, lv);
                }
            }
            other => return Err(format!("unknown field `{other}` (expected one of {})", FIELDS.join(", "))),
        }
        seen.push(key);
    }
    if !seen.iter().any(|k| k == "host") || !seen.iter().any(|k| k == "port") {
        return Err("`host` and `port` are required".into());
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    thread_local! {
        /// Entries parsed alone by [`parse_entry`] on this thread.
        pub(super) static PARSED: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
    }

    fn parsed_alone(f: impl FnOnce()) -> usize {
        let before = PARSED.with(|n| n.get());
        f();
        PARSED.with(|n| n.get()) - before
    }

    #[test]
    fn a_plain_list_is_cut_into_its_entries() {
        let text = "# head\n- {host: a, port: 1}\n-\n  host: b\n  port: 2\n# between\n\n- host: c\r\n  port: 3\r\n- 7";
        assert_eq!(
            entry_texts(text).unwrap(),
            ["# head\n- {host: a, port: 1}\n", "-\n  host: b\n  port: 2\n# between\n\n", "- host: c\r\n  port: 3\r\n", "- 7"]
        );
        // Anything else is parsed whole.
        for other in [
            "backends:\n  - {host: a, port: 1}\n",
            "---\n- {host: a, port: 1}\n",
            "%YAML 1.1\n---\n- {host: a, port: 1}\n",
            "- &x {host: a, port: 1}\n- *x\n",
            "- {host: a, port: 1, labels: {glob: 'a*'}}\n",
            "[{host: a, port: 1}]\n",
            "\u{feff}- {host: a, port: 1}\n",
            "\t- {host: a, port: 1}\n",
            "  - {host: a, port: 1}\n",
            "-{host: a}\n",
            "--- \n",
            "",
            "# nothing\n\n",
            "- {host: a, port: 1}\r...\n- {host: b, port: 2}\n",
            "\r- {host: b, port: 2}\n- {host: a, port: 1}\n",
            "- {host: a, port: 1}\u{2028}- {host: b, port: 2}\n",
        ] {
            assert_eq!(entry_texts(other), None, "{other:?}");
        }
    }

    #[test]
    fn known_entries_are_not_parsed_again_and_the_result_is_the_whole_parse() {
        let mut known = Known::default();
        let line = |i: usize, w: u32| format!("- {{name: b{i}, host: 127.0.0.1, port: {}, weight: {w}}}\n", 1000 + i);
        let mut lines: Vec<String> = (0..50).map(|i| line(i, 1)).collect();
        let same = |known: &mut Known, text: &str| assert_eq!(known.parse(text), parse_backends(text), "{text}");
        let text = lines.concat();
        assert_eq!(parsed_alone(|| same(&mut known, &text)), 50);
        // One weight changed, one entry added, one removed: those alone are parsed.
        lines[7] = line(7, 5);
        assert_eq!(parsed_alone(|| same(&mut known, &lines.concat())), 1);
        lines.insert(20, line(99, 1));
        assert_eq!(parsed_alone(|| same(&mut known, &lines.concat())), 1);
        lines.remove(3);
        assert_eq!(parsed_alone(|| same(&mut known, &lines.concat())), 0);
        // Equal entries, bad ones (by their index), a duplicated key: as the whole parse says.
        lines.push(lines[0].clone());
        lines.push("- {host: x, prot: 1}\n".into());
        lines.push("- {host: 127.0.0.1, port: 81, port: 82}\n".into());
        same(&mut known, &lines.concat());
        // An entry not well-formed alone: the whole text is parsed (and refused), as always.
        lines.push("- {host: [\n".into());
        same(&mut known, &lines.concat());
        lines.pop();
        // Lines before the first entry are parsed with it: a control character there spoils
        // the document, as in the whole parse.
        same(&mut known, &format!("# \x1b[31m\n{}", lines.concat()));
        same(&mut known, "#\0\n");
        // Another shape, then the plain list again: parsed whole, then entry by entry afresh.
        same(&mut known, &format!("backends:\n{}", lines.iter().map(|l| format!("  {l}")).collect::<String>()));
        assert_eq!(parsed_alone(|| same(&mut known, &lines.concat())), lines.len() - 1, "one entry is there twice");
    }

    #[test]
    fn parses_lists_and_reports_bad_entries() {
        let (ok, bad) = parse_backends(
            "- {name: a, host: 127.0.0.1, port: 80, weight: 5, labels: {az: a}}\n- {host: 127.0.0.2, port: '81'}\n- {host: x, prot: 1}\n- {host: [1]}\n- 7\n",
        )
        .unwrap();
        assert_eq!(ok.len(), 2);
        assert_eq!(ok[0].weight.as_deref(), Some("5"));
        assert_eq!(ok[0].labels["az"], "a");
        assert_eq!(ok[1].port, "81");
        assert_eq!(bad.iter().map(|b| b.0).collect::<Vec<_>>(), [2, 3, 4]);
        assert!(bad[0].1.contains("unknown field `prot`"));
        let (ok, _) = parse_backends("{\"backends\": [{\"host\": \"127.0.0.1\", \"port\": 1}]}").unwrap();
        assert_eq!(ok.len(), 1);
        assert!(parse_backends("{foo: 1}").is_err());
        assert!(parse_backends("{backends: [], foo: 1}").is_err());
        assert!(parse_backends("[unclosed").is_err());
        assert_eq!(parse_backends("").unwrap().0.len(), 0);
        assert_eq!(parse_backends("backends:\n").unwrap().0.len(), 0);
    }

    #[test]
    fn one_bad_number_spoils_only_its_entry() {
        let text = "\
- {name: good1, host: 127.0.0.1, port: 80}
- {name: wide, host: 127.0.0.1, port: 18446744073709551616}
- {name: wider, host: 127.0.0.1, port: 81, weight: -340282366920938463463374607431768211455}
- {name: hex, host: 127.0.0.1, port: 0x1FFFFFFFFFFFFFFFFF}
- {name: frac, host: 127.0.0.1, port: 80.0}
- {name: fweight, host: 127.0.0.1, port: 82, weight: 1.5}
- {name: nan, host: 127.0.0.1, port: .nan}
- {name: 18446744073709551617, host: 127.0.0.1, port: 83, labels: {v: 1.5, big: 99999999999999999999999}}
- {name: good2, host: 127.0.0.1, port: 84, weight: 18446744073709551615}
";
        let (ok, bad) = parse_backends(text).unwrap();
        let names: Vec<_> = ok.iter().map(|d| d.name.clone().unwrap()).collect();
        assert_eq!(names, ["good1", "wide", "hex", "18446744073709551617", "good2"]);
        // Integers up to 128 bits keep their text: the store refuses them as ports and weights,
        // alone.
        assert_eq!(ok[1].port, "18446744073709551616");
        assert_eq!(ok[2].port, "590295810358705651711");
        assert_eq!(ok[3].labels["big"], "99999999999999999999999");
        assert_eq!(ok[3].labels["v"], "1.5");
        assert_eq!(ok[4].weight.as_deref(), Some("18446744073709551615"));
        // Floats (and wider integers, which YAML reads as floats) are not whole numbers:
        // `80.0` must not pass for port 80.
        assert_eq!(bad.iter().map(|b| b.0).collect::<Vec<_>>(), [2, 4, 5, 6]);
        assert!(bad.iter().all(|b| b.1 .contains("must be a whole number")), "{bad:?}");
    }

    #[test]
    fn a_key_given_twice_rejects_its_entry() {
        let (ok, bad) = parse_backends("- {host: 127.0.0.1, port: 80}\n- {host: 127.0.0.1, port: 81, port: 82}\n").unwrap();
        assert_eq!(ok.len(), 1);
        assert_eq!(bad, [(1, "`port` is given twice".to_string())]);
    }
}
