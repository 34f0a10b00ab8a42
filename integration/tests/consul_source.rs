//! The Consul source's stream against the Consul test double (`myelin_integration::consul`):
//! blocking queries, Consul's index rules, faults ending the stream once, stale reads. The
//! end-to-end tests with HAProxy are in `consul.rs`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use myelin_core::{ServiceName, Update};
use myelin_integration::consul::{Consul, Fault};
use myelin_source::{Context, SourceConfig, SourceError, UpdateStream};
use myelin_watch_consul::ConsulConfig;
use tokio::sync::mpsc;

fn settings(c: &Consul, yaml: &str) -> ConsulConfig {
    let mut d: ConsulConfig = serde_yaml_ng::from_str(yaml).unwrap();
    d.address.get_or_insert(c.address());
    assert!(d.check().is_empty(), "{:?}", d.check());
    d
}

/// An opened stream, polled all the time by a task (as the supervisor does), so its blocking
/// query is in flight while the test changes the double.
struct Watch(mpsc::UnboundedReceiver<Result<Update, SourceError>>);

/// The opener of the only partition (the source keeps what it reported across openings).
fn opener(d: &ConsulConfig) -> impl Fn() -> Watch {
    let cx = Context { service: ServiceName::parse("web").unwrap(), config_file: "/etc/myelin/myelin.yaml".into() };
    let p = d.partitions(&cx).pop().unwrap();
    move || {
        let mut s: UpdateStream = (p.open)();
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Some(item) = s.next().await {
                if tx.send(item).is_err() {
                    return;
                }
            }
        });
        Watch(rx)
    }
}

async fn next(s: &mut Watch, within: Duration) -> Option<Result<Update, SourceError>> {
    tokio::time::timeout(within, s.0.recv()).await.unwrap_or_else(|_| panic!("nothing within {within:?}"))
}

fn ports(u: &Update) -> Vec<String> {
    let Update::Reset(all) = u else { panic!("not a reset: {u:?}") };
    all.iter().map(|d| d.port.clone()).collect()
}

async fn reset(s: &mut Watch, within: Duration) -> Vec<String> {
    match next(s, within).await {
        Some(Ok(u)) => ports(&u),
        other => panic!("expected a reset, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_follow_registrations_and_checks() {
    let c = Consul::start(100);
    c.register("web-1", "web", 9001, &["blue"], "passing");
    c.register("web-2", "web", 9002, &["green"], "passing");
    c.register("other", "db", 9009, &[], "passing");
    let open = opener(&settings(&c, "{wait: 30}"));
    let mut s = open();
    let short = Duration::from_secs(3);
    assert_eq!(reset(&mut s, short).await, ["9001", "9002"]);
    c.register("web-3", "web", 9003, &[], "critical");
    c.check("web-3", "pass");
    // Registration (critical) then pass: the second answer has it.
    let mut got = reset(&mut s, short).await;
    if got.len() == 2 {
        got = reset(&mut s, short).await;
    }
    assert_eq!(got, ["9001", "9002", "9003"]);
    c.check("web-1", "warn");
    assert_eq!(reset(&mut s, short).await, ["9002", "9003"]);
    c.check("web-1", "pass");
    assert_eq!(reset(&mut s, short).await, ["9001", "9002", "9003"]);
    c.deregister("web-2");
    assert_eq!(reset(&mut s, short).await, ["9001", "9003"]);
    // The queries blocked: at most a handful of reads for these changes.
    assert!(c.read_count() < 20, "{:?}", c.reads());
    assert!(c.reads().iter().any(|r| r.contains("passing=true") && r.contains("index=") && r.contains("wait=30000ms")), "{:?}", c.reads());

    // Tags, warning admitted with the warning weight, datacenter passed through.
    let mut d = settings(&c, "{tags: [blue], only_passing: false, datacenter: dc1, filter: 'Service.Port > 1'}");
    d.service = Some("web".into());
    c.register_json(&serde_json::json!({"ID": "web-1", "Name": "web", "Tags": ["blue"], "Address": "127.0.0.1", "Port": 9001,
        "Weights": {"Passing": 7, "Warning": 2}, "Meta": {"az": "a"}, "Check": {"TTL": "30s", "Status": "warning"}}));
    let mut s = opener(&d)();
    let Some(Ok(Update::Reset(all))) = next(&mut s, short).await else { panic!() };
    assert_eq!(all.len(), 1);
    assert_eq!((all[0].weight.as_deref(), all[0].labels.get("az").map(String::as_str)), (Some("2"), Some("a")));
    assert!(c.reads().iter().any(|r| r.contains("dc=dc1") && r.contains("filter=Service.Port > 1") && r.contains("tag=blue")));
    // Another datacenter: Consul's 500 is a fault.
    let mut s = opener(&settings(&c, "{datacenter: dc9}"))();
    let Some(Err(e)) = next(&mut s, short).await else { panic!() };
    assert!(e.report().contains("No path to datacenter"), "{}", e.report());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_index_that_goes_backwards_starts_again_from_zero() {
    let c = Consul::start(5000);
    c.register("web-1", "web", 9001, &[], "passing");
    // A long wait: without the rule, the next change would be seen only after it expires.
    let mut s = opener(&settings(&c, "{wait: 20}"))();
    let short = Duration::from_secs(4);
    assert_eq!(reset(&mut s, short).await, ["9001"]);
    tokio::time::sleep(Duration::from_millis(200)).await;
    c.restore(10);
    tokio::time::sleep(Duration::from_millis(300)).await;
    c.register("web-2", "web", 9002, &[], "passing");
    let got = tokio::time::timeout(short, s.0.recv()).await;
    assert!(matches!(&got, Ok(Some(Ok(u))) if ports(u) == ["9001", "9002"]), "{got:?}: {:?}", c.reads());
    let reads = c.reads();
    // After the lower index, one read without an index, then blocking from the new one.
    let after: Vec<_> = reads.iter().skip_while(|r| !r.contains("index=5001")).skip(1).collect();
    assert!(after.first().is_some_and(|r| !r.contains("index=")), "{reads:?}");
    assert!(after.iter().any(|r| r.contains("index=10&")), "{reads:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_index_that_does_not_move_is_rate_limited() {
    let c = Consul::start(0);
    c.register("web-1", "web", 9001, &[], "passing");
    c.set_ignore_index(true);
    let mut s = opener(&settings(&c, "{wait: 30}"))();
    assert_eq!(reset(&mut s, Duration::from_secs(3)).await, ["9001"]);
    let before = c.read_count();
    // Same answers do not make new resets; the reads are about one a second.
    assert!(tokio::time::timeout(Duration::from_millis(2500), s.0.recv()).await.is_err());
    let n = c.read_count() - before;
    assert!((1..=4).contains(&n), "{n} reads in 2.5 s: {:?}", c.reads());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_end_the_stream_once_and_are_not_repeated() {
    for (fault, expect) in [
        (Fault::Error500, "No cluster leader"),
        (Fault::Malformed, "malformed answer"),
        (Fault::Reset, "unreachable"),
        (Fault::Hang, "no answer within"),
    ] {
        let c = Consul::start(100);
        c.register("web-1", "web", 9001, &[], "passing");
        // wait 1 s: a hang is given up after 1 + 1/16 + 2 s.
        let open = opener(&settings(&c, "{wait: 1}"));
        let mut s = open();
        assert_eq!(reset(&mut s, Duration::from_secs(3)).await, ["9001"]);
        c.set_fault(fault);
        let t0 = Instant::now();
        let item = next(&mut s, Duration::from_secs(6)).await;
        let Some(Err(e)) = item else { panic!("{fault:?}: {item:?}") };
        assert!(e.report().contains(expect) && e.report().contains("service \"web\""), "{fault:?}: {}", e.report());
        if fault == Fault::Hang {
            assert!(t0.elapsed() >= Duration::from_secs(3), "{:?}", t0.elapsed());
        }
        assert!(next(&mut s, Duration::from_secs(1)).await.is_none(), "{fault:?}: the stream goes on");
        // Reopened with the same fault: nothing more is reported, the stream just ends.
        let mut again = open();
        assert!(next(&mut again, Duration::from_secs(6)).await.is_none(), "{fault:?}");
        // It answers again: a complete set.
        c.set_fault(Fault::None);
        let mut back = open();
        assert_eq!(reset(&mut back, Duration::from_secs(3)).await, ["9001"]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_token_is_a_clear_error_without_the_token() {
    let c = Consul::start(100);
    c.set_token(Some("the-right-one"));
    c.register("web-1", "web", 9001, &[], "passing");
    let open = opener(&settings(&c, "{token: sup3r-s3cret-wrong}"));
    let Some(Err(e)) = next(&mut open(), Duration::from_secs(3)).await else { panic!() };
    let text = format!("{} {e:?}", e.report());
    assert!(text.contains("service \"web\"") && text.contains("403") && text.contains("ACL not found"), "{text}");
    assert!(!text.contains("sup3r"), "{text}");
    // From a file, read at each opening: a fixed token is picked up without a restart.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("token");
    std::fs::write(&file, "nope\n").unwrap();
    let open = opener(&settings(&c, &format!("{{token_file: {}}}", file.display())));
    let Some(Err(e)) = next(&mut open(), Duration::from_secs(3)).await else { panic!() };
    assert!(e.report().contains(&file.display().to_string()) && !e.report().contains("nope"), "{}", e.report());
    std::fs::write(&file, "the-right-one\n").unwrap();
    assert_eq!(reset(&mut open(), Duration::from_secs(3)).await, ["9001"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_answers_older_than_max_stale_are_asked_of_the_leader() {
    let c = Arc::new(Consul::start(100));
    c.register("web-1", "web", 9001, &[], "passing");
    c.set_last_contact(5000);
    let mut s = opener(&settings(&c, "{stale: true, max_stale: 2}"))();
    assert_eq!(reset(&mut s, Duration::from_secs(3)).await, ["9001"]);
    let reads = c.reads();
    assert!(reads[0].contains("stale") && !reads[1].contains("stale"), "{reads:?}");
    // Fresh enough: stale reads are used.
    c.set_last_contact(10);
    let mut s = opener(&settings(&c, "{stale: true, max_stale: 2}"))();
    assert_eq!(reset(&mut s, Duration::from_secs(3)).await, ["9001"]);
    assert!(c.reads().last().unwrap().contains("stale"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_catalog_stream_follows_tagged_services() {
    use myelin_watch_consul::CatalogSource;
    let c = Consul::start(100);
    c.register("api-1", "api", 9101, &["myelin", "myelin-port=8101"], "passing");
    c.register("db-1", "db", 9102, &["other"], "passing");
    let src = CatalogSource::new(settings(&c, "{wait: 10}"), "myelin");
    let mut s = src.open();
    let names = |cat: myelin_watch_consul::catalog::Catalog| cat.keys().cloned().collect::<Vec<_>>();
    let within = Duration::from_secs(3);
    let first = tokio::time::timeout(within, s.next()).await.unwrap().unwrap().unwrap();
    assert_eq!(first["api"], ["myelin", "myelin-port=8101"]);
    assert_eq!(names(first), ["api"]);
    // Instances of an untagged service and health changes move the index, not the set.
    c.register("web-1", "web", 9103, &["myelin", "myelin-port=8103"], "critical");
    assert_eq!(names(tokio::time::timeout(within, s.next()).await.unwrap().unwrap().unwrap()), ["api", "web"]);
    c.check("web-1", "pass");
    c.deregister("api-1");
    assert_eq!(names(tokio::time::timeout(within, s.next()).await.unwrap().unwrap().unwrap()), ["web"]);
    c.set_fault(Fault::Error500);
    let e = tokio::time::timeout(within, s.next()).await.unwrap().unwrap().unwrap_err();
    assert!(e.report().contains("services tagged \"myelin\"") && e.report().contains("No cluster leader"), "{}", e.report());
    assert!(s.next().await.is_none());
}

/// Kills the child when dropped.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn openssl(dir: &std::path::Path, args: &[&str]) {
    let out = std::process::Command::new("openssl").args(args).current_dir(dir).output().unwrap();
    assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// HTTPS with a private CA, a server name that is not the address, and a client certificate:
/// real HAProxy terminates TLS (and requires the client certificate) in front of the double.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_a_private_ca_a_server_name_and_a_client_certificate() {
    let c = Consul::start(100);
    c.register("web-1", "web", 9001, &[], "passing");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    openssl(d, &["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=myelin test consul CA", "-keyout", "ca-key.pem", "-out", "ca.pem"]);
    std::fs::write(d.join("server.ext"), "subjectAltName=DNS:consul.test\nextendedKeyUsage=serverAuth\n").unwrap();
    std::fs::write(d.join("client.ext"), "extendedKeyUsage=clientAuth\n").unwrap();
    for (who, cn) in [("server", "consul.test"), ("client", "myelin")] {
        openssl(d, &["req", "-newkey", "rsa:2048", "-nodes", "-subj", &format!("/CN={cn}"), "-keyout", &format!("{who}-key.pem"), "-out", &format!("{who}.csr")]);
        openssl(d, &["x509", "-req", "-in", &format!("{who}.csr"), "-CA", "ca.pem", "-CAkey", "ca-key.pem", "-CAcreateserial", "-days", "2", "-extfile", &format!("{who}.ext"), "-out", &format!("{who}-cert.pem")]);
    }
    let pem = std::fs::read_to_string(d.join("server-cert.pem")).unwrap() + &std::fs::read_to_string(d.join("server-key.pem")).unwrap();
    std::fs::write(d.join("server.pem"), pem).unwrap();
    let port = myelin_integration::free_port();
    let cfg = format!(
        "global\n  maxconn 100\ndefaults\n  mode http\n  timeout connect 2s\n  timeout client 30s\n  timeout server 30s\n\
         frontend tls\n  bind 127.0.0.1:{port} ssl crt {dir}/server.pem ca-file {dir}/ca.pem verify required\n  default_backend double\n\
         backend double\n  server d 127.0.0.1:{double}\n",
        dir = d.display(),
        double = c.port
    );
    std::fs::write(d.join("haproxy.cfg"), cfg).unwrap();
    let _haproxy = Child(std::process::Command::new("haproxy").args(["-db", "-f"]).arg(d.join("haproxy.cfg")).stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null()).spawn().unwrap());
    assert!(myelin_integration::wait_for(Duration::from_secs(5), || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()).is_some());

    let yaml = |extra: &str| format!("{{address: 'https://127.0.0.1:{port}', ca_file: {dir}/ca.pem, {extra}}}", dir = d.display());
    let full = format!("cert_file: {0}/client-cert.pem, key_file: {0}/client-key.pem", d.display());
    let within = Duration::from_secs(5);
    // Everything right: the instances.
    let mut s = opener(&settings(&c, &yaml(&format!("{full}, server_name: consul.test"))))();
    assert_eq!(reset(&mut s, within).await, ["9001"]);
    // The certificate does not name 127.0.0.1: refused without `server_name`.
    let mut s = opener(&settings(&c, &yaml(&full)))();
    let Some(Err(e)) = next(&mut s, within).await else { panic!() };
    assert!(e.report().contains("unreachable") && e.report().to_lowercase().contains("certificate"), "{}", e.report());
    // No client certificate: the server ends the handshake.
    let mut s = opener(&settings(&c, &yaml("server_name: consul.test")))();
    let Some(Err(e)) = next(&mut s, within).await else { panic!() };
    assert!(e.report().contains("unreachable"), "{}", e.report());
    // A CA file that holds no certificate.
    let mut s = opener(&settings(&c, &format!("{{address: 'https://127.0.0.1:{port}', ca_file: {}/server.ext}}", d.display())))();
    let Some(Err(e)) = next(&mut s, within).await else { panic!() };
    assert!(e.report().contains("server.ext"), "{}", e.report());
}
