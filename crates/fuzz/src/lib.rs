//! The shared pieces of myelin's fuzz suite (the targets are in `tests/fuzz`): text an attacker
//! or a careless operator would write, ways of quoting it in YAML, and how many cases to run.
//!
//! `cargo test -p myelin-fuzz` runs each target for its bounded default number of cases (part
//! of `make test`); `MYELIN_FUZZ_CASES=N` runs N per target instead (`make fuzz`).
#![forbid(unsafe_code)]

use proptest::prelude::*;
use proptest::test_runner::Config;

/// The environment variable that sets the number of cases per target.
pub const CASES_VAR: &str = "MYELIN_FUZZ_CASES";

/// The number of cases per target: `MYELIN_FUZZ_CASES`, else `default`.
pub fn cases(default: u32) -> u32 {
    std::env::var(CASES_VAR).ok().and_then(|v| v.trim().parse().ok()).unwrap_or(default)
}

/// proptest's settings for a target: [`cases`], no regression files written into the tree.
pub fn config(default: u32) -> Config {
    Config { cases: cases(default), failure_persistence: None, ..Config::default() }
}

/// Fragments of hostile text: line breaks and NUL, comment and directive starters, HAProxy
/// directives to smuggle in, terminal escapes, unicode that changes how text shows, YAML's
/// punctuation, placeholders, numbers no field can hold, and look-alikes of valid values.
pub const PIECES: &[&str] = &[
    "\n", "\r\n", "\r", "\0", "\t", " ", "  ", "#", " # x", "\x1b[31m", "\x1b]0;title\x07", "\x1b[2J", "\x7f", "\u{85}", "\u{2028}",
    "\u{202e}", "\u{200b}", "\u{feff}", "é", "日本", "🦀", "\u{301}",
    "\n    server x 1.2.3.4", "\n    server evil 127.0.0.66:1 weight 256", "\nlisten pwn\n    bind 127.0.0.1:1", "\nbackend x\n",
    "\nglobal\n    stats socket /tmp/x level admin", " backup", " disabled", " weight 256", " check", ";", "&&", "$(id)", "`id`",
    "%{host}", "%{name}", "%{port}", "%{", "%{nope}", "${HOME}", "${NOPE:-d}", "$${x}", "${",
    ":", ": ", "- ", "-", "{", "}", "[", "]", ",", "&a", "*a", "!!str ", "!!binary ", "!x ", "---", "...", "'", "\"", "\\", "|", ">", "?",
    "@", "`", "%", "/", "../", "=",
    "18446744073709551616", "-1", "0", "65535", "65536", "99999999999999999999999", "1e400", "1.5", "0x50", ".nan", ".inf", "-.inf",
    "340282366920938463463374607431768211456", "true", "null", "~",
    "127.0.0.1", "192.0.2.7", "::1", "[::1]", "0.0.0.0", "localhost", "web", "80", "8080", "256", "257", "a.b", "-a", "a-", "a_b",
];

/// Hostile text: up to five fragments, printable ASCII runs or any character, concatenated.
pub fn hostile() -> BoxedStrategy<String> {
    let piece = prop_oneof![
        4 => prop::sample::select(PIECES).prop_map(str::to_owned),
        2 => "[ -~]{0,8}",
        1 => any::<char>().prop_map(String::from),
        1 => prop::sample::select(&[300usize, 254, 101, 64][..]).prop_map(|n| "a".repeat(n)),
    ];
    prop::collection::vec(piece, 0..5).prop_map(|v| v.concat()).boxed()
}

/// Mostly one of `good`, sometimes hostile text.
pub fn value(good: &'static [&'static str]) -> BoxedStrategy<String> {
    prop_oneof![3 => prop::sample::select(good).prop_map(str::to_owned), 2 => hostile()].boxed()
}

/// `text` as a YAML scalar: JSON-quoted (arrives intact), single-quoted, or written as it is
/// (which may well break the document: that is a case too).
pub fn yaml_scalar(text: String) -> BoxedStrategy<String> {
    let json = serde_json::to_string(&text).expect("a string serializes");
    let single = format!("'{}'", text.replace('\'', "''"));
    prop_oneof![6 => Just(json), 2 => Just(single), 2 => Just(text)].boxed()
}

/// A JSON value for a field: mostly a string or number from `good`, else hostile text, a huge
/// or fractional number, a boolean, null, or a list or object.
pub fn json_value(good: &'static [&'static str]) -> BoxedStrategy<serde_json::Value> {
    use serde_json::Value;
    prop_oneof![
        6 => value(good).prop_map(Value::String),
        2 => prop::sample::select(good).prop_map(|g| g.parse::<serde_json::Number>().map_or_else(|_| Value::String(g.to_owned()), Value::Number)),
        1 => prop_oneof![
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            any::<f64>().prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        ],
        1 => prop::sample::select(&["18446744073709551616", "-1", "1e400", "1.5", "99999999999999999999999999999", "-0", "1E2"][..])
            .prop_map(|n| serde_json::from_str::<Value>(n).unwrap_or(Value::Null)),
        1 => prop_oneof![Just(Value::Null), any::<bool>().prop_map(Value::Bool), Just(Value::Array(vec![])), Just(serde_json::json!({"a": 1}))],
    ]
    .boxed()
}

/// Whether shown text would take over a terminal or forge a line: any control character.
pub fn has_control(s: &str) -> bool {
    s.chars().any(char::is_control)
}
