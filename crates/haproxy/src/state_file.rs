//! HAProxy's `server-state-file`, written before each reload from `show servers state`.

use myelin_core::{DesiredState, ServerName};

use crate::ops::weight_of;

/// Keep only the `show servers state` lines that agree with `desired` (same backend, server,
/// address and port), with the desired weight written in, so that loading the file after a
/// reload restores health state but never an old address or weight.
pub fn filter_state_file(text: &str, desired: &DesiredState) -> String {
    let mut out = String::new();
    for line in text.lines() {
        let mut f: Vec<String> = line.split_whitespace().map(str::to_owned).collect();
        if line.starts_with('#') || f.len() == 1 {
            out.push_str(line);
            out.push('\n');
            continue;
        }
        if f.len() < 19 {
            continue;
        }
        let server = ServerName::parse(&f[3]).ok().and_then(|name| {
            desired.services.values().find(|s| s.shape.backend_name.as_str() == f[1]).and_then(|s| s.servers.get(&name))
        });
        if let Some(srv) = server.filter(|srv| srv.host.as_str() == f[4] && srv.port.to_string() == f[18]) {
            let w = weight_of(srv).to_string();
            f[7] = w.clone();
            f[8] = w;
            out.push_str(&f.join(" "));
            out.push('\n');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use myelin_core::{BackendName, Server};


    const STATE: &str = "1\n# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_uweight srv_iweight srv_time_since_last_change srv_check_status srv_check_result srv_check_health srv_check_state srv_agent_state bk_f_forced_id srv_f_forced_id srv_fqdn srv_port srvrecord srv_use_ssl srv_check_port srv_check_addr srv_agent_addr srv_agent_port\n3 web 1 a 127.0.0.1 2 0 10 10 2 8 2 0 6 0 0 0 - 19081 - 0 0 - - 0\n3 web 2 b 127.0.0.1 0 1 5 5 1 1 0 0 2 0 0 0 - 19082 - 0 0 - - 0\n\n";

    #[test]
    fn state_file_keeps_only_what_agrees_and_writes_desired_weights() {
        use myelin_core::{BackendOrder, DesiredService, Host, Port, ServiceName, ServiceShape, Weight};
        let server = |name: &str, port: u16, w: u16| Server {
            name: ServerName::parse(name).unwrap(),
            host: Host::parse("127.0.0.1").unwrap(),
            port: Port::new(port).unwrap(),
            weight: Some(Weight::parse(&w.to_string()).unwrap()),
            options: None,
        };
        let servers = [server("a", 19081, 3), server("b", 1, 1)].into_iter().map(|s| (s.name.clone(), s)).collect();
        let shape = ServiceShape { frontend: None, backend_name: BackendName::parse("web").unwrap(), backend_lines: vec![], order: BackendOrder::Asc };
        let desired = DesiredState { services: [(ServiceName::parse("web").unwrap(), std::sync::Arc::new(DesiredService { shape, servers }))].into(), ..DesiredState::default() };
        let out = filter_state_file(STATE, &desired);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 3, "{out}");
        assert_eq!(lines[0], "1");
        assert!(lines[2].starts_with("3 web 1 a 127.0.0.1 2 0 3 3 "), "{out}");
    }

}
