//! Where each key of a config file is: an index from key path to the line and column of the key
//! and of its value, built from the YAML parser's events (JSON is parsed as YAML too). Errors
//! found after deserialization look their path up here, so they point at the node they are
//! about, never at a look-alike key elsewhere in the file. Building the index also finds keys
//! given twice in one mapping, which deserialization would silently collapse into the last.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

use crate::error::ConfigError;

/// Deeper than any configuration (serde_yaml_ng stops at 128 too): the index stops with an
/// error rather than grow a stack for a hostile file.
const MAX_DEPTH: usize = 64;

/// More keys and values than any configuration has (a large one has a few tens of thousands).
const MAX_NODES: usize = 250_000;

/// One step of a key path: a mapping key, or a sequence index.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum Seg {
    Key(String),
    Index(usize),
}

/// A key path, e.g. `services` / `web` / `haproxy` / `listen` / `0`. Displayed dotted
/// (`services.web.haproxy.listen[0]`); keys may themselves hold dots or spaces, which is why
/// the segments are kept typed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct KeyPath(Vec<Seg>);

impl KeyPath {
    pub(crate) fn root() -> Self {
        Self(Vec::new())
    }

    /// This path with a mapping key added.
    pub(crate) fn key(&self, k: impl Into<String>) -> Self {
        let mut v = self.0.clone();
        v.push(Seg::Key(k.into()));
        Self(v)
    }

    /// This path with a sequence index added.
    pub(crate) fn index(&self, i: usize) -> Self {
        let mut v = self.0.clone();
        v.push(Seg::Index(i));
        Self(v)
    }

    /// This path with a dotted relative path added, as sources write them in their settings
    /// problems (`servers[1].host`). Keys with dots cannot be told apart there; the lookup
    /// falls back to the nearest ancestor that exists.
    pub(crate) fn dotted(&self, rel: &str) -> Self {
        let mut out = self.clone();
        for part in rel.split('.').filter(|p| !p.is_empty()) {
            let (name, mut rest) = part.split_once('[').map_or((part, ""), |(n, r)| (n, r));
            if !name.is_empty() {
                out = out.key(name);
            }
            while let Some((i, tail)) = rest.split_once(']') {
                match i.parse() {
                    Ok(i) => out = out.index(i),
                    Err(_) => out = out.key(i),
                }
                rest = tail.strip_prefix('[').unwrap_or(tail);
            }
        }
        out
    }

    fn segments(&self) -> &[Seg] {
        &self.0
    }
}

impl fmt::Display for KeyPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, s) in self.0.iter().enumerate() {
            match s {
                Seg::Key(k) if i == 0 => write!(f, "{k}")?,
                Seg::Key(k) => write!(f, ".{k}")?,
                Seg::Index(n) => write!(f, "[{n}]")?,
            }
        }
        Ok(())
    }
}

/// A 1-based line and column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Pos {
    pub line: usize,
    pub column: usize,
}

impl From<Marker> for Pos {
    fn from(m: Marker) -> Self {
        Self { line: m.line(), column: m.col() + 1 }
    }
}

#[derive(Debug, Clone, Copy)]
struct Node {
    /// Where its key is, for a mapping's value.
    key: Option<Pos>,
    /// Where the value begins.
    value: Pos,
    /// A scalar (or an alias), rather than a mapping or a sequence.
    scalar: bool,
}

/// Node positions by path below a file's root.
type Nodes = HashMap<Vec<Seg>, Node>;

/// The positions of one file's nodes. The file's root is at `root` in the whole configuration
/// (`services.<name>` for a `service_conf_dir` file).
///
/// Building the index only checks the file (keys given twice, nesting, size); the positions
/// themselves are found when one is first looked up, by reading the text again (a config
/// without errors never looks one up). Clones share the text and the positions found.
#[derive(Debug, Clone)]
pub(crate) struct FileIndex {
    pub file: PathBuf,
    root: KeyPath,
    /// The text indexed (after interpolation).
    text: Arc<str>,
    max_nodes: usize,
    nodes: Arc<OnceLock<Nodes>>,
}

impl FileIndex {
    /// Index `text` (its first document). Keys given twice in one mapping are errors, at the
    /// second occurrence; so are nesting deeper than 64 and more than 250,000 nodes. When
    /// the YAML parser used here refuses the text, the index is empty (deserialization then
    /// reports the syntax error with its own position).
    pub(crate) fn build(file: &Path, root: KeyPath, text: impl Into<Arc<str>>) -> (Self, Vec<ConfigError>) {
        Self::build_bounded(file, root, text.into(), MAX_NODES)
    }

    fn build_bounded(file: &Path, root: KeyPath, text: Arc<str>, max_nodes: usize) -> (Self, Vec<ConfigError>) {
        let mut walk = Walk::run(&text, false, max_nodes);
        if walk.inexact {
            // A key given twice, and more nodes than allowed counting its value again: only
            // the nodes' paths tell whether there are too many.
            walk = Walk::run(&text, true, max_nodes);
        }
        let index = Self { file: file.to_path_buf(), root, text, max_nodes, nodes: Arc::default() };
        if let Some((at, message)) = walk.too_big {
            let path = index.root.to_string();
            return (index, vec![ConfigError { file: file.to_path_buf(), line: Some(at.line), column: Some(at.column), path, message }]);
        }
        if walk.refused {
            return (index, Vec::new());
        }
        let errors = walk
            .duplicates
            .into_iter()
            .map(|(path, at, first)| ConfigError {
                file: file.to_path_buf(),
                line: Some(at.line),
                column: Some(at.column),
                path: KeyPath(index.root.0.iter().cloned().chain(path).collect()).to_string(),
                message: format!("this key is given twice in the same mapping (first on line {}); give it once", first.line),
            })
            .collect();
        (index, errors)
    }

    /// The positions of the file's nodes, found on the first call (none when the YAML parser
    /// used here refuses the text).
    fn nodes(&self) -> &Nodes {
        self.nodes.get_or_init(|| {
            let walk = Walk::run(&self.text, true, self.max_nodes);
            if walk.refused {
                Nodes::new()
            } else {
                walk.nodes
            }
        })
    }

    /// Whether the text was refused by this parser (YAML 1.2), which is stricter than
    /// serde_yaml_ng's libyaml in a few corners (e.g. `[-]`): then errors keep the position
    /// serde_yaml_ng gives.
    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.nodes().is_empty()
    }

    /// The position of `path`'s node (`path` below this file's root), or of its nearest
    /// ancestor that exists. An exact scalar points at its value; a mapping or sequence, and
    /// an ancestor standing in for a missing key, point at their key.
    fn locate(&self, rel: &[Seg]) -> Option<Pos> {
        let nodes = self.nodes();
        if let Some(n) = nodes.get(rel) {
            return Some(if n.scalar { n.value } else { n.key.unwrap_or(n.value) });
        }
        (0..rel.len()).rev().find_map(|len| nodes.get(&rel[..len])).map(|n| n.key.unwrap_or(n.value))
    }
}

/// The indexes of the main file and of each `service_conf_dir` file.
#[derive(Debug, Clone)]
pub(crate) struct Positions {
    files: Vec<FileIndex>,
    /// Which file each root is (the last one given, for a root given twice).
    roots: HashMap<Vec<Seg>, usize>,
}

impl Positions {
    /// `files[0]` is the main file, whose root is the configuration's.
    pub(crate) fn new(files: Vec<FileIndex>) -> Self {
        let roots = files.iter().enumerate().map(|(i, f)| (f.root.0.clone(), i)).collect();
        Self { files, roots }
    }

    /// The file whose root is the longest prefix of `path`.
    fn file_of(&self, path: &KeyPath) -> Option<(usize, &FileIndex)> {
        let segs = path.segments();
        (0..=segs.len()).rev().find_map(|len| self.roots.get(&segs[..len])).map(|&i| (i, &self.files[i]))
    }

    /// The file holding `path` and the position of its node (or nearest ancestor).
    pub(crate) fn locate(&self, path: &KeyPath) -> (PathBuf, Option<Pos>) {
        match self.file_of(path) {
            Some((_, f)) => (f.file.clone(), f.locate(&path.segments()[f.root.segments().len()..])),
            None => (PathBuf::new(), None),
        }
    }

    /// Whether `path` itself is in a file.
    pub(crate) fn exists(&self, path: &KeyPath) -> bool {
        self.file_of(path).is_some_and(|(_, f)| f.nodes().contains_key(&path.segments()[f.root.segments().len()..]))
    }

    /// An order for "first" and "second": by file (main file first), then position.
    pub(crate) fn order(&self, path: &KeyPath) -> (usize, Option<Pos>) {
        match self.file_of(path) {
            Some((i, f)) => (i, f.locate(&path.segments()[f.root.segments().len()..])),
            None => (usize::MAX, None),
        }
    }
}

/// The keys a mapping has had so far and where: a short list while the mapping is small (most
/// are), a hash map beyond.
#[derive(Default)]
struct Seen {
    few: Vec<(String, Pos)>,
    many: HashMap<String, Pos>,
}

impl Seen {
    const FEW: usize = 16;

    /// Where `key` was first given, if it was; else `key` is remembered as given at `at`.
    fn first(&mut self, key: &str, at: Pos) -> Option<Pos> {
        if self.many.is_empty() {
            if let Some((_, first)) = self.few.iter().find(|(k, _)| k == key) {
                return Some(*first);
            }
            if self.few.len() < Self::FEW {
                self.few.push((key.to_owned(), at));
                return None;
            }
            self.many.extend(self.few.drain(..));
        }
        if let Some(first) = self.many.get(key) {
            return Some(*first);
        }
        self.many.insert(key.to_owned(), at);
        None
    }
}

enum Frame {
    /// `seg` is the step from the enclosing node (none for the file's root).
    Mapping { seg: Option<Seg>, key: Option<(String, Pos)>, seen: Seen, expect_key: bool },
    Sequence { seg: Option<Seg>, next: usize },
    /// A mapping or sequence used as a key (`after_key` false), or the value of such a key:
    /// not indexed.
    Skip { depth: usize, after_key: bool },
}

impl Frame {
    fn seg(&self) -> Option<&Seg> {
        match self {
            Frame::Mapping { seg, .. } | Frame::Sequence { seg, .. } => seg.as_ref(),
            Frame::Skip { .. } => None,
        }
    }
}

/// One pass of the YAML parser's events over a text: the checks, and the nodes' positions
/// when `record` is set. Paths are made only for what is kept: every node when recording,
/// else only a key given twice.
struct Walk {
    stack: Vec<Frame>,
    record: bool,
    /// The nodes placed: while no key is given twice, as many as there are paths.
    count: usize,
    nodes: Nodes,
    duplicates: Vec<(Vec<Seg>, Pos, Pos)>,
    too_big: Option<(Pos, String)>,
    refused: bool,
    /// Not recording, a key was given twice and more than the allowed nodes were placed: a
    /// recording pass must count the paths.
    inexact: bool,
    done: bool,
}

impl Walk {
    fn run(text: &str, record: bool, max_nodes: usize) -> Self {
        let mut w = Walk {
            stack: Vec::new(),
            record,
            count: 0,
            nodes: Nodes::new(),
            duplicates: Vec::new(),
            too_big: None,
            refused: false,
            inexact: false,
            done: false,
        };
        let mut parser = Parser::new_from_str(text);
        while !w.done {
            match parser.next_token() {
                // yaml-rust2 refuses flow nesting deeper than 255 while looking ahead, before
                // the events reach MAX_DEPTH. libyaml takes quadratic time on such nesting, so
                // this is an error here rather than left to serde_yaml_ng.
                Err(e) if e.info().contains("recursion limit") => {
                    w.too_big = Some((Pos::from(*e.marker()), format!("nested more than {MAX_DEPTH} levels deep: not a configuration")));
                }
                Err(_) => w.refused = true,
                Ok((Event::StreamEnd, _)) => w.done = true,
                Ok((ev, mark)) => {
                    w.on_event(ev, mark);
                    let placed = if w.record { w.nodes.len() } else { w.count };
                    if w.stack.len() > MAX_DEPTH {
                        w.too_big = Some((Pos::from(mark), format!("nested more than {MAX_DEPTH} levels deep: not a configuration")));
                    } else if placed > max_nodes {
                        if !w.record && !w.duplicates.is_empty() {
                            w.inexact = true;
                            break;
                        }
                        w.too_big = Some((Pos::from(mark), format!("more than {max_nodes} keys and values: not a configuration")));
                    }
                }
            }
            if w.refused || w.too_big.is_some() {
                break;
            }
        }
        w
    }

    /// The path of the node at the top of the stack, with `last` added.
    fn path(&self, last: Option<&Seg>) -> Vec<Seg> {
        self.stack.iter().filter_map(Frame::seg).chain(last).cloned().collect()
    }

    /// The step to a node that begins here and its key's position (`Some((None, None))` for
    /// the root); `None` for a key (then recorded in the mapping's frame) or a node inside a
    /// skipped key.
    fn place(&mut self, ev: &mut Event, at: Pos) -> Option<(Option<Seg>, Option<Pos>)> {
        match self.stack.last_mut() {
            None => Some((None, None)),
            Some(Frame::Skip { depth, after_key }) => {
                let after_key = *after_key;
                match ev {
                    Event::MappingStart(..) | Event::SequenceStart(..) => *depth += 1,
                    Event::MappingEnd | Event::SequenceEnd => *depth -= 1,
                    _ => {}
                }
                if *depth == 0 {
                    self.stack.pop();
                    if let (false, Some(Frame::Mapping { expect_key, key, .. })) = (after_key, self.stack.last_mut()) {
                        *key = None;
                        *expect_key = false;
                    }
                }
                None
            }
            Some(Frame::Sequence { next, .. }) => {
                let seg = Seg::Index(*next);
                *next += 1;
                Some((Some(seg), None))
            }
            Some(Frame::Mapping { key, seen, expect_key, .. }) => {
                if *expect_key {
                    *expect_key = false;
                    let mut twice = None;
                    match ev {
                        Event::Scalar(text, ..) => {
                            // The key is taken: its event is not used after this.
                            let text = std::mem::take(text);
                            twice = seen.first(&text, at).map(|first| (first, Seg::Key(text.clone())));
                            *key = Some((text, at));
                        }
                        Event::MappingStart(..) | Event::SequenceStart(..) => {
                            *key = None;
                            self.stack.push(Frame::Skip { depth: 1, after_key: false });
                        }
                        _ => *key = None,
                    }
                    if let Some((first, seg)) = twice {
                        let path = self.path(Some(&seg));
                        self.duplicates.push((path, at, first));
                    }
                    return None;
                }
                *expect_key = true;
                let Some((k, kpos)) = key.take() else {
                    // The value of a key that is not a scalar.
                    if matches!(ev, Event::MappingStart(..) | Event::SequenceStart(..)) {
                        self.stack.push(Frame::Skip { depth: 1, after_key: true });
                    }
                    return None;
                };
                Some((Some(Seg::Key(k)), Some(kpos)))
            }
        }
    }
}

impl MarkedEventReceiver for Walk {
    fn on_event(&mut self, mut ev: Event, mark: Marker) {
        let at = Pos::from(mark);
        match ev {
            Event::Nothing | Event::StreamStart | Event::StreamEnd | Event::DocumentStart => {}
            Event::DocumentEnd => self.done = true,
            Event::MappingEnd | Event::SequenceEnd => {
                if let Some(Frame::Skip { .. }) = self.stack.last() {
                    self.place(&mut ev, at);
                } else {
                    self.stack.pop();
                }
            }
            Event::Scalar(..) | Event::Alias(_) | Event::MappingStart(..) | Event::SequenceStart(..) => {
                let Some((seg, key)) = self.place(&mut ev, at) else { return };
                self.count += 1;
                if self.record {
                    let scalar = matches!(ev, Event::Scalar(..) | Event::Alias(_));
                    let path = self.path(seg.as_ref());
                    self.nodes.entry(path).or_insert(Node { key, value: at, scalar });
                }
                match ev {
                    Event::MappingStart(..) => self.stack.push(Frame::Mapping { seg, key: None, seen: Seen::default(), expect_key: true }),
                    Event::SequenceStart(..) => self.stack.push(Frame::Sequence { seg, next: 0 }),
                    _ => {}
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index(text: &str) -> (FileIndex, Vec<ConfigError>) {
        FileIndex::build(Path::new("t.yaml"), KeyPath::root(), text)
    }

    fn at(i: &FileIndex, p: &KeyPath) -> (usize, usize) {
        let pos = i.locate(p.segments()).unwrap();
        (pos.line, pos.column)
    }

    #[test]
    fn block_and_flow_positions() {
        let text = "services:\n  web:\n    haproxy: {port: 80}\n    default_servers:\n      - host: a\n        port: 1\n      - {host: b, port: 2}\n";
        let (i, dups) = index(text);
        assert!(dups.is_empty());
        let svc = KeyPath::root().key("services").key("web");
        assert_eq!(at(&i, &svc.key("haproxy").key("port")), (3, 21));
        assert_eq!(at(&i, &svc.key("haproxy")), (3, 5));
        assert_eq!(at(&i, &svc.key("default_servers").index(0).key("port")), (6, 15));
        assert_eq!(at(&i, &svc.key("default_servers").index(1).key("port")), (7, 25));
        // A missing key: its nearest ancestor's key.
        assert_eq!(at(&i, &svc.key("haproxy").key("backend_name")), (3, 5));
        assert_eq!(at(&i, &svc.key("default_servers").index(1)), (7, 9));
    }

    #[test]
    fn json_and_keys_with_dots() {
        let (i, _) = index("{\n\t\"haproxy\": {\"extra_sections\": {\n\t\t\"listen a.b c\": [\"mode http\"]}}}\n");
        let p = KeyPath::root().key("haproxy").key("extra_sections").key("listen a.b c");
        assert_eq!(at(&i, &p.index(0)), (3, 20));
        assert_eq!(p.to_string(), "haproxy.extra_sections.listen a.b c");
    }

    #[test]
    fn duplicates_are_found_at_the_second_occurrence() {
        let (_, dups) = index("services:\n  web: {}\n  api: {}\n  web: {a: 1, a: 2}\n");
        let shown: Vec<_> = dups.iter().map(|e| e.to_string()).collect();
        assert_eq!(shown.len(), 2, "{shown:?}");
        assert!(shown[0].starts_with("t.yaml:4:3: services.web: this key is given twice") && shown[0].contains("line 2"), "{shown:?}");
        assert!(shown[1].starts_with("t.yaml:4:15: services.web.a: this key is given twice"), "{shown:?}");
    }

    #[test]
    fn positions_are_found_only_when_looked_up() {
        let (i, dups) = index("a:\n  b: [1, {c: 2}]\n");
        assert!(dups.is_empty());
        assert!(i.nodes.get().is_none(), "checking the file found no positions");
        let copy = i.clone();
        assert_eq!(at(&copy, &KeyPath::root().key("a").key("b").index(1).key("c")), (2, 14));
        // Found once, for every clone.
        assert!(i.nodes.get().is_some());
        assert_eq!(at(&i, &KeyPath::root().key("a").key("b").index(0)), (2, 7));
    }

    #[test]
    fn duplicates_in_large_mappings_and_below_sequences() {
        // More keys than the short list holds: the hash map finds the second `k7`.
        let mut text: String = (0..40).map(|i| format!("k{i}: {i}\n")).collect();
        text.push_str("k7: again\nlist:\n  - {x: 1}\n  - {y: 1, y: 2}\n");
        let (i, dups) = index(&text);
        let shown: Vec<_> = dups.iter().map(|e| e.to_string()).collect();
        assert_eq!(shown.len(), 2, "{shown:?}");
        assert!(shown[0].starts_with("t.yaml:41:1: k7: this key is given twice in the same mapping (first on line 8)"), "{shown:?}");
        assert!(shown[1].starts_with("t.yaml:44:12: list[1].y: this key is given twice"), "{shown:?}");
        assert!(i.nodes.get().is_none());
        // Under a service's root.
        let root = KeyPath::root().key("services").key("web");
        let (_, dups) = FileIndex::build(Path::new("web.json"), root, "{\"discovery\": {\"method\": \"static\",\n \"method\": \"x\"}}");
        assert_eq!(dups[0].to_string(), "web.json:2:2: services.web.discovery.method: this key is given twice in the same mapping (first on line 1); give it once");
    }

    #[test]
    fn a_key_given_twice_counts_its_paths_once() {
        // 403 nodes but 202 paths: within a bound of 250, only the key given twice is an error,
        // as the positions (one per path) would count.
        let half: String = (0..200).map(|i| format!("k{i}: 1, ")).collect();
        let text = format!("a: {{{half}}}\na: {{{half}}}\n");
        let (_, e) = FileIndex::build_bounded(Path::new("t.yaml"), KeyPath::root(), text.as_str().into(), 250);
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(e[0].to_string().starts_with("t.yaml:2:1: a: this key is given twice"), "{}", e[0]);
        // 603 paths are too many.
        let other: String = (200..401).map(|i| format!("k{i}: 1, ")).collect();
        let text = format!("a: {{{half}}}\na: {{{other}}}\n");
        let (_, e) = FileIndex::build_bounded(Path::new("t.yaml"), KeyPath::root(), text.as_str().into(), 250);
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(e[0].to_string().contains("more than 250 keys and values"), "{}", e[0]);
    }

    #[test]
    fn dotted_paths_from_sources() {
        let p = KeyPath::root().key("d").dotted("servers[1].host");
        assert_eq!(p, KeyPath::root().key("d").key("servers").index(1).key("host"));
        assert_eq!(KeyPath::root().dotted("a[0][2]").to_string(), "a[0][2]");
    }

    #[test]
    fn complex_keys_and_aliases_do_not_derail_the_index() {
        let (i, _) = index("? [a, b]\n: 1\nx: &v {p: 1}\ny: *v\nz: 3\n");
        assert_eq!(at(&i, &KeyPath::root().key("z")), (5, 4));
        assert_eq!(at(&i, &KeyPath::root().key("y").key("p")), (4, 1));
        let (i, _) = index("? {a: [b]}\n: {p: [1, {q: 2}]}\nz: 3\n");
        assert_eq!(at(&i, &KeyPath::root().key("z")), (3, 4));
        assert!(!i.nodes().contains_key(&[Seg::Key("p".into())][..]));
        let (i, _) = index("a: [\n");
        assert!(i.locate(KeyPath::root().key("a").segments()).is_none());
    }

    #[test]
    fn hostile_shapes_stop_the_index_with_an_error() {
        let deep = format!("a: {}1{}\n", "[".repeat(70), "]".repeat(70));
        let (_, e) = index(&deep);
        assert_eq!(e.len(), 1);
        assert!(e[0].to_string().starts_with("t.yaml:1:67: nested more than 64 levels deep"), "{}", e[0]);
        let wide: String = (0..300).map(|i| format!("k{i}: 1\n")).collect();
        let (_, e) = FileIndex::build_bounded(Path::new("t.yaml"), KeyPath::root(), wide.as_str().into(), 250);
        assert!(e[0].to_string().starts_with("t.yaml:250:7: more than 250 keys and values"), "{}", e[0]);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 300, failure_persistence: None, ..Default::default() })]

        /// Any text made of YAML's punctuation: indexed or refused, never a panic.
        #[test]
        fn any_text_is_indexed_or_refused(text in "[-?:,\\[\\]{}&*!|>'\" #a1\n\t.]{0,80}") {
            let (i, _) = index(&text);
            let _ = i.locate(KeyPath::root().key("a").index(0).segments());
        }
    }
}
