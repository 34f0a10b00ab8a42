//! The `myelin` binary: command line, logging and wiring. The work is done in the library crates.
#![forbid(unsafe_code)]

mod commands;
mod daemon;
mod logwriter;
mod notify;
mod observe;
mod statefile;
mod watchers;

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
        LogFormat::Auto if journal => builder.without_time().init(),
        LogFormat::Auto | LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
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
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Run { config } => daemon::run(&config).await,
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
            eprintln!("error: {e:#}");
            ExitCode::from(code)
        }
    }
}
