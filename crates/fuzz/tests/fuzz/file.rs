//! The discovery file's format: lists of entries with hostile values, written in every YAML
//! quoting style, with wrong shapes, duplicated and unknown keys, cut at any byte. Any text gives
//! entries and the reasons for those skipped, or one reason for the whole file, never a panic;
//! a bad entry never spoils the good ones.

use myelin_fuzz::{config as fuzz_config, hostile, value, yaml_scalar};
use myelin_watch_file::{parse_backends, Known};
use proptest::prelude::*;

const KEYS: &[&str] = &["name", "host", "port", "weight", "labels"];

fn field() -> BoxedStrategy<(String, String)> {
    let key = prop_oneof![8 => prop::sample::select(KEYS).prop_map(str::to_owned), 1 => Just("prot".to_owned()), 1 => hostile().prop_flat_map(yaml_scalar)];
    let v = prop_oneof![
        4 => value(&["127.0.0.1", "80", "'81'", "5", "web-1", "18446744073709551616", "80.0", ".nan", "-1", "1e400", "0x50", "~", "[]", "{}", "{az: a}"])
            .prop_flat_map(|v| prop_oneof![Just(v.clone()), yaml_scalar(v)]),
        1 => hostile().prop_flat_map(yaml_scalar),
    ];
    (key, v).boxed()
}

/// One entry, in flow or block style.
fn entry() -> BoxedStrategy<String> {
    let good = Just(vec![("host".to_owned(), "127.0.0.1".to_owned()), ("port".to_owned(), "80".to_owned())]);
    (prop::collection::vec(field(), 0..5), good, any::<bool>(), any::<bool>())
        .prop_map(|(fields, good, keep_good, block)| {
            let fields = if keep_good { [good, fields].concat() } else { fields };
            if block && !fields.is_empty() {
                let mut out = String::new();
                for (i, (k, v)) in fields.iter().enumerate() {
                    out.push_str(if i == 0 { "- " } else { "  " });
                    out.push_str(&format!("{k}: {v}\n"));
                }
                out
            } else {
                format!("- {{{}}}\n", fields.iter().map(|(k, v)| format!("{k}: {v}")).collect::<Vec<_>>().join(", "))
            }
        })
        .boxed()
}

fn document() -> BoxedStrategy<String> {
    (prop::collection::vec(entry(), 0..6), prop::sample::select(&["", "backends:\n", "---\n", "# c\n", "%YAML 1.1\n---\n", "# \u{1b}[31m\n", "\r", "\r...\n", "\u{2028}"][..]))
        .prop_map(|(entries, head)| {
            let body = entries.concat();
            if head == "backends:\n" {
                format!("{head}{}", body.lines().map(|l| format!("  {l}\n")).collect::<String>())
            } else {
                format!("{head}{body}")
            }
        })
        .boxed()
}

proptest! {
    #![proptest_config(fuzz_config(256))]

    #[test]
    fn any_backends_file_gives_entries_or_a_reason(text in document(), cut in any::<prop::sample::Index>()) {
        for text in [text.as_str(), &text[..text.floor_char_boundary_compat(cut.index(text.len() + 1))]] {
            match parse_backends(text) {
                Ok((ok, bad)) => {
                    for d in &ok {
                        let _ = d.validate();
                    }
                    for (_, why) in &bad {
                        prop_assert!(!why.is_empty());
                    }
                }
                Err(why) => prop_assert!(!why.is_empty()),
            }
        }
    }

    /// A source keeps the entries it parsed and parses only new ones: whatever the texts, one
    /// after another, it gives what parsing each whole gives.
    #[test]
    fn entries_kept_from_the_last_read_give_the_whole_parse(texts in prop::collection::vec((document(), any::<prop::sample::Index>()), 1..5)) {
        let mut known = Known::default();
        let mut previous: Vec<String> = Vec::new();
        for (text, cut) in texts {
            // Also the last text with entries of this one added, and cut anywhere.
            let cut = &text[..text.floor_char_boundary_compat(cut.index(text.len() + 1))];
            for t in [text.clone(), format!("{}{text}", previous.concat()), cut.to_owned()] {
                prop_assert_eq!(known.parse(&t), parse_backends(&t), "{}", t);
            }
            previous.push(text);
        }
    }

    /// Good entries survive any bad neighbour.
    #[test]
    fn a_bad_entry_never_spoils_the_good_ones(bad in prop::collection::vec(entry(), 1..4), at in any::<prop::sample::Index>()) {
        let mut entries = bad;
        // Only entries that are well-formed YAML on their own are mixed in: a syntax error
        // spoils the document, as it must.
        entries.retain(|e| parse_backends(e).is_ok());
        let good = "- {name: good, host: 127.0.0.1, port: 80}\n".to_owned();
        let i = at.index(entries.len() + 1);
        entries.insert(i, good);
        let text = entries.concat();
        let parsed = parse_backends(&text);
        prop_assert!(parsed.is_ok(), "entries well-formed alone spoil the file together: {:?}\n{}", parsed, text);
        let (ok, _) = parsed.unwrap();
        prop_assert!(ok.iter().any(|d| d.name.as_deref() == Some("good") && d.port == "80"), "{}", text);
    }
}

trait FloorCharBoundary {
    fn floor_char_boundary_compat(&self, i: usize) -> usize;
}

impl FloorCharBoundary for String {
    fn floor_char_boundary_compat(&self, mut i: usize) -> usize {
        while !self.is_char_boundary(i) {
            i -= 1;
        }
        i
    }
}
