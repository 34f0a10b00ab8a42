//! Where a configured path leads, and what to watch to see it lead elsewhere.
//!
//! The path is walked one component at a time from `/`, as the kernel does, following
//! symlinks. Every name met on the way is an interest (the name in its directory): a component
//! renamed, deleted, created or swapped (a symlink re-pointed, as Kubernetes does with
//! `..data`) is then an event in a watched directory. A component that does not exist ends the
//! walk: its directory, the nearest existing ancestor, is watched for it to appear.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::io;
use std::path::{Component, Path, PathBuf};

use crate::hub::{DirId, Interests};

/// Symlinks followed at most (as Linux's `MAXSYMLINKS`).
const MAX_LINKS: usize = 40;

/// Where the path leads now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seen {
    /// To this file (no symlink in the path).
    File(PathBuf),
    /// Nowhere yet: this component does not exist (or is not a directory where one is needed).
    Missing(PathBuf),
}

#[derive(Debug)]
pub struct Resolution {
    pub interests: Interests,
    pub seen: io::Result<Seen>,
}

/// Walk `path` (absolute, or taken from the working directory).
pub fn resolve(path: &Path) -> Resolution {
    let mut interests = Interests::new();
    let seen = walk(path, &mut interests);
    Resolution { interests, seen }
}

fn not_found(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::NotFound
}

fn walk(path: &Path, interests: &mut Interests) -> io::Result<Seen> {
    let abs = if path.is_absolute() { path.to_path_buf() } else { std::env::current_dir()?.join(path) };
    let root = PathBuf::from("/");
    let root_id = DirId::of(&std::fs::metadata(&root)?);
    let mut todo: VecDeque<OsString> = VecDeque::new();
    push_front(&mut todo, &abs);
    let (mut cur, mut cur_id) = (root.clone(), root_id);
    let mut links = 0;
    while let Some(name) = todo.pop_front() {
        if name == ".." {
            cur.pop();
            cur_id = DirId::of(&std::fs::metadata(&cur)?);
            continue;
        }
        interests.entry(cur.clone()).or_insert_with(|| (cur_id, Default::default())).1.insert(name.clone());
        let next = cur.join(&name);
        let meta = match std::fs::symlink_metadata(&next) {
            Ok(m) => m,
            Err(e) if not_found(&e) => return Ok(Seen::Missing(next)),
            Err(e) => return Err(e),
        };
        if meta.file_type().is_symlink() {
            links += 1;
            if links > MAX_LINKS {
                return Err(io::Error::other(format!("more than {MAX_LINKS} symbolic links")));
            }
            let target = match std::fs::read_link(&next) {
                Ok(t) => t,
                Err(e) if not_found(&e) => return Ok(Seen::Missing(next)),
                Err(e) => return Err(e),
            };
            if target.is_absolute() {
                (cur, cur_id) = (root.clone(), root_id);
            }
            push_front(&mut todo, &target);
        } else if todo.is_empty() {
            return Ok(Seen::File(next));
        } else if meta.is_dir() {
            (cur, cur_id) = (next, DirId::of(&meta));
        } else {
            // A file where a directory should be: as good as missing.
            return Ok(Seen::Missing(next));
        }
    }
    // The path names a directory (`/`, or ends in `..`): reading it says so.
    Ok(Seen::File(cur))
}

/// Put `path`'s names in front of `todo`, in order (`.` dropped, `..` kept).
fn push_front(todo: &mut VecDeque<OsString>, path: &Path) {
    for c in path.components().rev() {
        match c {
            Component::Normal(n) => todo.push_front(n.to_owned()),
            Component::ParentDir => todo.push_front("..".into()),
            Component::CurDir | Component::RootDir | Component::Prefix(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn names(r: &Resolution, dir: &Path) -> Vec<String> {
        r.interests.get(dir).map(|(_, n)| n.iter().map(|n| n.to_string_lossy().into_owned()).collect()).unwrap_or_default()
    }

    #[test]
    fn follows_kubernetes_style_links_and_watches_every_name_on_the_way() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path().canonicalize().unwrap();
        std::fs::create_dir(d.join("..2026_01")).unwrap();
        std::fs::write(d.join("..2026_01/backends.yaml"), "[]").unwrap();
        symlink("..2026_01", d.join("..data")).unwrap();
        symlink("..data/backends.yaml", d.join("backends.yaml")).unwrap();
        let r = resolve(&d.join("backends.yaml"));
        assert_eq!(r.seen.as_ref().unwrap(), &Seen::File(d.join("..2026_01/backends.yaml")));
        assert_eq!(names(&r, &d), ["..2026_01", "..data", "backends.yaml"]);
        assert_eq!(names(&r, &d.join("..2026_01")), ["backends.yaml"]);
        assert_eq!(names(&r, d.parent().unwrap()), [d.file_name().unwrap().to_string_lossy()]);
        assert!(r.interests.contains_key(Path::new("/")));

        // `..` after a link is taken from where the link led; absolute targets restart at `/`.
        std::fs::create_dir(d.join("real")).unwrap();
        symlink(d.join("real"), d.join("abs")).unwrap();
        std::fs::write(d.join("f.yaml"), "[]").unwrap();
        let r = resolve(&d.join("abs/../f.yaml"));
        assert_eq!(r.seen.unwrap(), Seen::File(d.join("f.yaml")));
    }

    #[test]
    fn a_missing_component_is_waited_for_in_the_nearest_existing_directory() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path().canonicalize().unwrap();
        let r = resolve(&d.join("sub/backends.yaml"));
        assert_eq!(r.seen.as_ref().unwrap(), &Seen::Missing(d.join("sub")));
        assert_eq!(names(&r, &d), ["sub"]);
        assert!(!r.interests.contains_key(&d.join("sub")));

        // A dangling link, a file where a directory should be, a loop.
        symlink("nowhere", d.join("dangling")).unwrap();
        assert_eq!(resolve(&d.join("dangling")).seen.unwrap(), Seen::Missing(d.join("nowhere")));
        std::fs::write(d.join("plain"), "").unwrap();
        assert_eq!(resolve(&d.join("plain/x.yaml")).seen.unwrap(), Seen::Missing(d.join("plain")));
        symlink("loop", d.join("loop")).unwrap();
        assert!(resolve(&d.join("loop")).seen.is_err());
    }
}
