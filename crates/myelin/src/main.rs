//! The `myelin` binary: command line, logging and wiring. The work is done in the library crates.
#![forbid(unsafe_code)]

mod announcers;
mod commands;
mod daemon;
mod logwriter;
mod notify;
mod observe;
mod statefile;
mod watchers;

/// mimalloc rather than glibc's malloc: start-up builds and frees large transient structures
/// (the parsed configuration, the first render), and glibc keeps that memory resident; mimalloc
/// returns freed pages to the system and allocates faster. Its v2 line (the crate's `v2`
/// feature) is used: with its default options, as v3, it only returns them when the thread
/// that freed them calls the allocator again, which an idle daemon may not do for minutes;
/// `run` therefore sets its purge delay to 0 ([`purge_freed_memory_at_once`]), which v2 obeys
/// at the free itself.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

/// Keeps a local HAProxy routing to exactly the live instances of every service.
#[derive(Debug, Parser)]
#[command(name = "myelin", version, about, propagate_version = true)]
struct Cli {
    /// Log format on stderr. `auto`: plain text, without timestamps or colours when stderr is
    /// the systemd journal (which adds its own).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Auto, env = "MYELIN_LOG_FORMAT")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Auto,
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the daemon: watch discovery, keep haproxy.cfg and HAProxy up to date.
    Run {
        /// Configuration file (YAML or JSON; Synapse's synapse.json.conf works as it is).
        #[arg(short, long, env = "MYELIN_CONFIG")]
        config: PathBuf,
    },
    /// Validate the configuration, and the haproxy.cfg it gives with `haproxy -c` when HAProxy is
    /// installed. Exit status 2 when something is wrong.
    Check {
        #[arg(short, long, env = "MYELIN_CONFIG")]
        config: PathBuf,
    },
    /// Print the haproxy.cfg that the current discovery state gives, then exit. A source that
    /// cannot be reached is warned about on stderr and its service rendered with what is known.
    Render {
        #[arg(short, long, env = "MYELIN_CONFIG")]
        config: PathBuf,
        /// How long to wait for each discovery source.
        #[arg(long, default_value = "5", value_name = "SECONDS")]
        timeout: f64,
    },
    /// Show what the running daemon is doing, as a table: each service's watcher, backends, last
    /// update and last apply. Asks the admin listener (`admin.bind` in the config, or --admin).
    Status {
        #[arg(short, long, env = "MYELIN_CONFIG", default_value = "/etc/myelin/myelin.yaml")]
        config: PathBuf,
        /// The admin listener's address (ADDRESS:PORT, or a port for 127.0.0.1), instead of
        /// reading it from the config.
        #[arg(long, value_name = "ADDRESS")]
        admin: Option<String>,
        /// Print the status document as JSON, as `/status` serves it.
        #[arg(long)]
        json: bool,
    },
    /// For systemd's ExecCondition: exit 0 when the configuration defines at least one service
    /// (or cannot be read, so that `run` reports why), 1 when it defines none, as the packaged
    /// example does until it is edited.
    #[command(hide = true)]
    Configured {
        #[arg(short, long, env = "MYELIN_CONFIG")]
        config: PathBuf,
    },
    /// Print the manual page (roff) on stdout.
    #[command(hide = true)]
    Manpage,
}

/// Exit statuses.
pub const EXIT_FAILURE: u8 = 1;
pub const EXIT_CONFIG: u8 = 2;

/// Whether stderr is the systemd journal: `JOURNAL_STREAM` names its device and inode.
fn stderr_is_journal() -> bool {
    use std::os::unix::fs::MetadataExt;
    let Some(v) = std::env::var_os("JOURNAL_STREAM") else { return false };
    let Some((dev, ino)) = v.to_str().and_then(|v| v.split_once(':')) else { return false };
    match std::fs::metadata("/proc/self/fd/2") {
        Ok(m) => dev.parse() == Ok(m.dev()) && ino.parse() == Ok(m.ino()),
        Err(_) => false,
    }
}

/// Under the journal, every event starts with its syslog priority, as sd-daemon(3) describes
/// (`<3>` error, `<4>` warning, `<6>` info, `<7>` debug): journald reads the prefix, so
/// `journalctl -p warning` shows myelin's warnings. An event is one line (the escaping writer
/// turns line breaks inside it into `\n`), so one prefix covers it.
struct JournalPriority<F>(F);

fn priority(level: tracing::Level) -> u8 {
    match level {
        tracing::Level::ERROR => 3,
        tracing::Level::WARN => 4,
        tracing::Level::INFO => 6,
        _ => 7,
    }
}

/// `text` with `<priority>` before each line (for text printed without tracing).
fn with_priority(priority: u8, text: &str) -> String {
    text.lines().map(|l| format!("<{priority}>{l}\n")).collect()
}

impl<S, N, F> tracing_subscriber::fmt::FormatEvent<S, N> for JournalPriority<F>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    N: for<'a> tracing_subscriber::fmt::FormatFields<'a> + 'static,
    F: tracing_subscriber::fmt::FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &tracing_subscriber::fmt::FmtContext<'_, S, N>,
        mut writer: tracing_subscriber::fmt::format::Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        write!(writer, "<{}>", priority(*event.metadata().level()))?;
        self.0.format_event(ctx, writer, event)
    }
}

fn init_logging(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("MYELIN_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    use std::io::IsTerminal;
    let journal = matches!(format, LogFormat::Auto) && stderr_is_journal();
    let ansi = std::io::stderr().is_terminal() && !journal;
    // Untrusted text (names, payloads) reaches log lines: every control character in a line is
    // escaped, so a discovery record cannot forge lines (see logwriter).
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(logwriter::Escaping { ansi }).with_ansi(ansi);
    match format {
        LogFormat::Auto if journal => {
            let plain = tracing_subscriber::fmt::format().without_time().with_ansi(false);
            builder.event_format(JournalPriority(plain)).init()
        }
        LogFormat::Auto | LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

/// The last words before exiting with an error: at priority err under the journal.
fn print_error(text: &str) {
    if stderr_is_journal() {
        eprint!("{}", with_priority(3, text));
    } else {
        eprintln!("{text}");
    }
}

/// The environment variable mimalloc reads its purge delay from.
const PURGE_DELAY: &str = "MIMALLOC_PURGE_DELAY";

/// mimalloc hands a freed span back to the system only once `purge_delay` (10 ms) has passed
/// *and* the thread that owns it calls the allocator again: a thread that goes idle right after
/// a burst (the daemon loop after an apply, a blocking-pool thread after a configuration load)
/// keeps what it freed resident until its next burst. At 10,000 services × 10 servers that was
/// 49 or 59 MB resident after start-up, depending on timing; with a delay of 0 the free that
/// empties a span returns it, and it stays at 46 MB (and costs no more CPU per change: measured
/// in docs/performance.md). mimalloc reads its options from the environment as the process
/// starts, and setting one from Rust is a foreign call (unsafe code, which myelin's crates
/// forbid), so `run` starts itself again, same process and arguments, with
/// `MIMALLOC_PURGE_DELAY=0`; a value the environment already has (an operator's) is kept.
///
/// Returns only when it did not start again: why, when that failed.
fn purge_freed_memory_at_once() -> Option<std::io::Error> {
    use std::os::unix::process::CommandExt;
    if std::env::var_os(PURGE_DELAY).is_some() {
        return None;
    }
    let mut args = std::env::args_os();
    let arg0 = args.next().unwrap_or_default();
    // The binary's own path (not /proc/self/exe, which would make the process's name `exe`
    // for ps, pidof and the journal). `exec` only returns on failure.
    Some(match std::env::current_exe() {
        Ok(exe) => std::process::Command::new(exe).arg0(arg0).args(args).env(PURGE_DELAY, "0").exec(),
        Err(e) => e,
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let not_restarted = if matches!(cli.command, Command::Run { .. }) { purge_freed_memory_at_once() } else { None };
    init_logging(cli.log_format);
    if let Some(e) = not_restarted {
        tracing::warn!("Cannot start again with {PURGE_DELAY}=0 ({e}); going on without it: memory freed after a burst may stay resident until the next one.");
    }
    // Many sources, connections and files at once: the soft descriptor limit (often 1024) is
    // raised to the hard one, as servers do.
    if let Err(e) = rlimit::increase_nofile_limit(u64::MAX) {
        tracing::debug!("cannot raise the file descriptor limit: {e}");
    }
    match &cli.command {
        Command::Configured { config } => return commands::configured(config),
        Command::Manpage => {
            use clap::CommandFactory;
            return match clap_mangen::Man::new(Cli::command()).render(&mut std::io::stdout().lock()) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: writing the manual page: {e}");
                    ExitCode::from(EXIT_FAILURE)
                }
            };
        }
        _ => {}
    }
    // One thread runs every task (the daemon loop, the watchers and the inotify reader, the
    // admin listener): a change is handed from task to task without waking another thread,
    // which costs more than the work of a change on a small host. Blocking work (file writes,
    // `haproxy -c`) goes to the blocking pool. A blocking-pool thread idle for 2 s ends (tokio's
    // default is 10 s): with a purge delay an operator set, what it freed (a drift check reads
    // and compares a fleet-sized reply there, about 20 MB at 100,000 servers) goes back then at
    // the latest. Not less: under steady changes a small haproxy.cfg follows the runtime API
    // once a second, and a thread would then be started for every write (a large file, written
    // every few seconds, starts one per write: far less than the write itself).
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().thread_keep_alive(std::time::Duration::from_secs(2)).build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            // A task of its own, so that a panic in the loop comes back here as an error.
            Command::Run { config } => match tokio::spawn(async move { daemon::run(&config).await }).await {
                Ok(r) => r,
                Err(e) => Err(anyhow::anyhow!("the daemon loop stopped: {e}")),
            },
            Command::Check { config } => commands::check(&config).await,
            Command::Render { config, timeout } => commands::render(&config, timeout).await,
            Command::Status { config, admin, json } => commands::status(&config, admin.as_deref(), json).await,
            Command::Configured { .. } | Command::Manpage => unreachable!("handled before the runtime starts"),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let code = if e.downcast_ref::<commands::ConfigInvalid>().is_some() { EXIT_CONFIG } else { EXIT_FAILURE };
            print_error(&format!("error: {e:#}"));
            ExitCode::from(code)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// Each write (tracing's fmt layer writes one event per write) kept apart.
    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<Vec<u8>>>>);

    impl std::io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().push(b.to_vec());
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn journal_lines_carry_their_priority() {
        let buf = Buf::default();
        let out = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::DEBUG)
            .with_writer(move || out.clone())
            .event_format(JournalPriority(tracing_subscriber::fmt::format().without_time().with_ansi(false)))
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            tracing::error!(service = "web", "refused:\nthe reason");
            tracing::warn!("a warning");
            tracing::info!("news");
            tracing::debug!("detail");
        });
        // As the escaping writer writes it to the journal: one line per event.
        let events = buf.0.lock().unwrap().clone();
        let text: String = events.iter().map(|e| String::from_utf8(logwriter::escape(e, false)).unwrap()).collect();
        let lines: Vec<_> = text.lines().collect();
        assert_eq!(lines.len(), 4, "{text}");
        assert!(lines[0].starts_with("<3>") && lines[0].contains("ERROR") && lines[0].contains("refused:\\nthe reason"), "{text}");
        assert!(lines[1].starts_with("<4>") && lines[1].contains("a warning"), "{text}");
        assert!(lines[2].starts_with("<6>") && lines[2].contains("news"), "{text}");
        assert!(lines[3].starts_with("<7>") && lines[3].contains("detail"), "{text}");
    }

    #[test]
    fn priorities_prefix_every_line() {
        assert_eq!(with_priority(3, "error: a\nb"), "<3>error: a\n<3>b\n");
        assert_eq!(with_priority(4, ""), "");
    }
}
