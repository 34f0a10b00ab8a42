//! Which section a `listen` line belongs in. HAProxy accepts most proxy keywords in both a
//! frontend and a backend; these tables list the ones it accepts in only one (HAProxy 2.6's
//! keyword matrix). A line goes where its keyword is allowed, or into both.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Placement {
    Frontend,
    Backend,
    Both,
}

const FRONTEND_ONLY: &[&str] = &[
    "bind",
    "capture",
    "declare capture",
    "default_backend",
    "use_backend",
    "maxconn",
    "monitor",
    "monitor-uri",
    "rate-limit",
    "log-format",
    "log-format-sd",
    "error-log-format",
    "unique-id-format",
    "unique-id-header",
    "tcp-request connection",
    "tcp-request session",
    "timeout client",
    "timeout client-fin",
    "option accept-invalid-http-request",
    "option clitcpka",
    "option contstats",
    "option dontlog-normal",
    "option dontlognull",
    "option http-ignore-probes",
    "option http-use-proxy-header",
    "option httplog",
    "option logasap",
    "option socket-stats",
    "option tcp-smart-accept",
    "option tcplog",
];

const BACKEND_ONLY: &[&str] = &[
    "balance",
    "hash-type",
    "hash-balance-factor",
    "cookie",
    "default-server",
    "dispatch",
    "fullconn",
    "http-check",
    "http-reuse",
    "http-send-name-header",
    "load-server-state-from-file",
    "server-state-file-name",
    "server",
    "server-template",
    "source",
    "stick",
    "use-server",
    "force-persist",
    "ignore-persist",
    "persist",
    "retries",
    "retry-on",
    "external-check",
    "tcp-check",
    "timeout connect",
    "timeout server",
    "timeout server-fin",
    "timeout queue",
    "timeout check",
    "timeout tunnel",
    "option abortonclose",
    "option allbackups",
    "option checkcache",
    "option external-check",
    "option httpchk",
    "option ldap-check",
    "option mysql-check",
    "option persist",
    "option pgsql-check",
    "option prefer-last-server",
    "option redis-check",
    "option redispatch",
    "option smtpchk",
    "option spop-check",
    "option srvtcpka",
    "option ssl-hello-chk",
    "option tcp-check",
    "option transparent",
];

fn matches(words: &[&str], keyword: &str) -> bool {
    let kw: Vec<&str> = keyword.split(' ').collect();
    words.len() >= kw.len() && words[..kw.len()].iter().zip(&kw).all(|(a, b)| a.eq_ignore_ascii_case(b))
}

pub(crate) fn place(line: &str) -> Placement {
    let mut words: Vec<&str> = line.split_whitespace().collect();
    if words.first().is_some_and(|w| *w == "no") {
        words.remove(0);
    }
    if FRONTEND_ONLY.iter().any(|k| matches(&words, k)) {
        Placement::Frontend
    } else if BACKEND_ONLY.iter().any(|k| matches(&words, k)) {
        Placement::Backend
    } else {
        Placement::Both
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn places_lines() {
        assert_eq!(place("mode http"), Placement::Both);
        assert_eq!(place("option httpchk GET /"), Placement::Backend);
        assert_eq!(place("http-check expect string Hello"), Placement::Backend);
        assert_eq!(place("timeout client 5s"), Placement::Frontend);
        assert_eq!(place("timeout server 5s"), Placement::Backend);
        assert_eq!(place("option httplog"), Placement::Frontend);
        assert_eq!(place("no option redispatch"), Placement::Backend);
        assert_eq!(place("option forwardfor"), Placement::Both);
        assert_eq!(place("http-request set-header X-A b"), Placement::Both);
        assert_eq!(place("servers-foo"), Placement::Both);
    }
}
