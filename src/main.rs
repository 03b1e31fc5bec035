//! The `meterd` binary: command line -> configuration -> runtime -> [`meterd::app::run`].

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use meterd::config::{Config, Overrides, EXIT_CONFIG};
use meterd::telemetry::{init_logging, LogFormat};

/// jemalloc instead of glibc's malloc: under sustained batch load glibc kept about three
/// times the live heap resident (RocksDB memtable arenas and request buffers freed on
/// other threads), which broke the `memory_limit` bound (`tests/overload.rs`).
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc settings: a background thread returns freed pages to the OS within about a
/// second, so resident memory follows the live heap after a burst.
#[allow(non_upper_case_globals)]
#[export_name = "malloc_conf"]
pub static malloc_conf: &[u8] = b"background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0\0";

/// Usage-metering daemon.
#[derive(Parser, Debug)]
#[command(name = "meterd", version, about)]
struct Cli {
    /// Log format (human text or JSON lines). Level via RUST_LOG.
    #[arg(long, value_enum, default_value = "text", global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Runs the daemon.
    Serve {
        /// Configuration file (env METERD_CONFIG).
        #[arg(long)]
        config: Option<PathBuf>,
        /// API listen address (env METERD_LISTEN).
        #[arg(long)]
        listen: Option<String>,
        /// Metrics listen address (env METERD_METRICS_LISTEN).
        #[arg(long)]
        metrics_listen: Option<String>,
        /// Data directory (env METERD_DATA_DIR).
        #[arg(long)]
        data_dir: Option<String>,
    },
    /// Validates a configuration file and exits (0 valid, 64 invalid).
    CheckConfig {
        /// Configuration file (env METERD_CONFIG).
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let env = meterd::app::env_map();
    match cli.command {
        Command::CheckConfig { config } => {
            let flags = Overrides {
                config,
                ..Default::default()
            };
            match Config::load(&flags, &env) {
                Ok(cfg) => {
                    let src = cfg
                        .source
                        .as_ref()
                        .map(|p| p.display().to_string())
                        .unwrap_or_else(|| "<defaults>".into());
                    println!("{src}: configuration is valid");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("invalid configuration: {e}");
                    ExitCode::from(EXIT_CONFIG as u8)
                }
            }
        }
        Command::Serve {
            config,
            listen,
            metrics_listen,
            data_dir,
        } => {
            let flags = Overrides {
                config,
                listen,
                metrics_listen,
                data_dir,
            };
            let cfg = match Config::load(&flags, &env) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("invalid configuration: {e}");
                    tracing::error!(file = %e.file, key = %e.key, reason = %e.reason, "invalid configuration");
                    return ExitCode::from(EXIT_CONFIG as u8);
                }
            };
            let rt = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .thread_name("meterd-worker")
                .max_blocking_threads(16)
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("cannot start the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match rt.block_on(meterd::app::run(cfg)) {
                Ok(stopped) => {
                    rt.shutdown_timeout(std::time::Duration::from_secs(1));
                    stopped.finish();
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("meterd: {e:#}");
                    tracing::error!(error = format!("{e:#}"), "fatal");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
