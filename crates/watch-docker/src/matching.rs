//! Which containers belong to a service: image reference, labels and name pattern.

use std::collections::{BTreeMap, HashMap};

/// An image reference split into repository, tag and digest, with Docker Hub's implicit
/// `docker.io/` and `library/` prefixes removed so that `nginx` and `docker.io/library/nginx`
/// compare equal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRef {
    pub repo: String,
    pub tag: Option<String>,
    pub digest: Option<String>,
}

impl ImageRef {
    pub fn parse(s: &str) -> Self {
        let s = s.trim();
        let (rest, digest) = match s.split_once('@') {
            Some((r, d)) => (r, Some(d.to_owned())),
            None => (s, None),
        };
        // A tag is what follows the last ':' after the last '/' (a registry may carry a port).
        let slash = rest.rfind('/').map_or(0, |i| i + 1);
        let (repo, tag) = match rest[slash..].rfind(':') {
            Some(i) => (&rest[..slash + i], Some(rest[slash + i + 1..].to_owned())),
            None => (rest, None),
        };
        let repo = repo.strip_prefix("docker.io/").or_else(|| repo.strip_prefix("index.docker.io/")).unwrap_or(repo);
        let repo = repo.strip_prefix("library/").unwrap_or(repo);
        Self { repo: repo.to_owned(), tag, digest }
    }

    /// Whether a container's image (as it was asked for at `docker run`) is this one: a bare
    /// repository matches any tag or digest of it; a tag matches only that tag (a container
    /// started without a tag has `latest`); a digest only that digest.
    pub fn matches(&self, container_image: &str) -> bool {
        let c = Self::parse(container_image);
        if c.repo != self.repo {
            return false;
        }
        if let Some(d) = &self.digest {
            return c.digest.as_ref() == Some(d);
        }
        match &self.tag {
            Some(t) => match (&c.tag, &c.digest) {
                (Some(ct), _) => ct == t,
                (None, None) => t == "latest",
                (None, Some(_)) => false,
            },
            None => true,
        }
    }
}

/// A glob: `*` matches any run of characters, `?` exactly one; anything else itself.
pub fn glob_matches(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

/// The selection part of a service's Docker settings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selector {
    pub image: Option<ImageRef>,
    pub labels: BTreeMap<String, String>,
    pub name_pattern: Option<String>,
}

impl Selector {
    /// `image` as the container was created with, its labels, and its name (with or without
    /// Docker's leading `/`).
    pub fn matches(&self, image: &str, labels: &HashMap<String, String>, name: &str) -> bool {
        let name = name.strip_prefix('/').unwrap_or(name);
        self.image.as_ref().is_none_or(|i| i.matches(image))
            && self.labels.iter().all(|(k, v)| labels.get(k) == Some(v))
            && self.name_pattern.as_deref().is_none_or(|p| glob_matches(p, name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_references() {
        let bare = ImageRef::parse("local/nodeapp");
        for yes in ["local/nodeapp", "local/nodeapp:latest", "local/nodeapp:v2", "local/nodeapp@sha256:abc"] {
            assert!(bare.matches(yes), "{yes}");
        }
        for no in ["local/nodeapp2", "other/nodeapp", "sha256:1234", "local/nodeapp/x:latest"] {
            assert!(!bare.matches(no), "{no}");
        }
        let tagged = ImageRef::parse("local/nodeapp:latest");
        assert!(tagged.matches("local/nodeapp") && tagged.matches("local/nodeapp:latest"));
        assert!(!tagged.matches("local/nodeapp:v2") && !tagged.matches("local/nodeapp@sha256:abc"));
        let v2 = ImageRef::parse("local/nodeapp:v2");
        assert!(v2.matches("local/nodeapp:v2") && !v2.matches("local/nodeapp"));
        let digest = ImageRef::parse("local/nodeapp@sha256:abc");
        assert!(digest.matches("local/nodeapp:v1@sha256:abc") && !digest.matches("local/nodeapp@sha256:def") && !digest.matches("local/nodeapp"));
        // A registry with a port is not a tag.
        let reg = ImageRef::parse("registry.local:5000/team/app");
        assert_eq!((reg.repo.as_str(), reg.tag.as_deref()), ("registry.local:5000/team/app", None));
        assert!(reg.matches("registry.local:5000/team/app:1.2"));
        assert!(ImageRef::parse("nginx").matches("docker.io/library/nginx:1.25"));
    }

    #[test]
    fn globs() {
        for (p, t) in [("web-*", "web-1"), ("*", ""), ("w?b", "web"), ("*-blue-*", "app-blue-3"), ("a*b*c", "aXbYbZc"), ("exact", "exact")] {
            assert!(glob_matches(p, t), "{p} {t}");
        }
        for (p, t) in [("web-*", "api-1"), ("w?b", "wb"), ("a*b*c", "aXbY"), ("exact", "exactly"), ("", "x")] {
            assert!(!glob_matches(p, t), "{p} {t}");
        }
    }

    #[test]
    fn selector() {
        let s = Selector {
            image: Some(ImageRef::parse("local/nodeapp")),
            labels: [("tier".to_string(), "front".to_string())].into(),
            name_pattern: Some("web-*".into()),
        };
        let labels: HashMap<String, String> = [("tier".to_string(), "front".to_string())].into();
        assert!(s.matches("local/nodeapp:latest", &labels, "/web-1"));
        assert!(!s.matches("local/nodeapp:latest", &HashMap::new(), "/web-1"));
        assert!(!s.matches("local/nodeapp:latest", &labels, "/api-1"));
        assert!(!s.matches("local/other", &labels, "web-1"));
        assert!(Selector::default().matches("anything", &HashMap::new(), "x"));
    }
}
