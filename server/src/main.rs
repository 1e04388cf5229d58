//! The `hearth` command line.

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use hearth_server::{Config, LogFormat, Overrides, Server};
use tracing_subscriber::EnvFilter;

// The request path allocates many small, short-lived buffers (JSON values, headers);
// mimalloc serves them faster than glibc's allocator under multi-threaded load.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "hearth", version, about = "Hearth: a self-hosted Firebase-style backend")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server.
    Serve {
        /// Project dir: hearth.toml, rules.toml, functions/, hearth_data/.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        /// HOST:PORT to listen on (port 0 picks a free one).
        #[arg(long)]
        addr: Option<String>,
        /// `sqlite:PATH`; default hearth_data/hearth.db in the project dir.
        #[arg(long)]
        database_url: Option<String>,
        /// Log lines as text (default) or JSON.
        #[arg(long, value_enum)]
        log_format: Option<LogFormat>,
        /// A built web app to serve beside the API: files by path, `index.html` for
        /// paths that name none.
        #[arg(long)]
        public: Option<PathBuf>,
    },
    /// Manage service keys and the keys that sign access tokens.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Work with access rules.
    Rules {
        #[command(subcommand)]
        command: RulesCommand,
    },
    /// Write the whole project (documents, users with their password hashes, keys, rules,
    /// functions) to one portable file, while the server goes on serving.
    Export {
        /// The file to write (replaced when the export is whole).
        file: PathBuf,
        /// Also the sessions, so users stay signed in after the move.
        #[arg(long)]
        sessions: bool,
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        #[arg(long)]
        database_url: Option<String>,
    },
    /// Load a file from `hearth export` into a new, empty database (SQLite or
    /// PostgreSQL), all or nothing; the project's files go into the project dir.
    Import {
        /// The export file.
        file: PathBuf,
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        /// Where to import: `postgres://…` or `sqlite:PATH` (default: the project's database).
        #[arg(long)]
        database_url: Option<String>,
    },
    /// Put a backup (from `POST /v1/admin/backups`) in place of the project's database.
    /// The server must be stopped; start it again afterwards.
    Restore {
        /// The backup file.
        backup: PathBuf,
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        #[arg(long)]
        database_url: Option<String>,
    },
}

#[derive(Subcommand)]
enum RulesCommand {
    /// Run rules unit tests (a TOML file of cases) without a server.
    Test {
        /// The test file.
        file: PathBuf,
        /// The rules file (default: the test file's `rules` key).
        #[arg(long)]
        rules: Option<PathBuf>,
    },
    /// Check that a rules file compiles.
    Check {
        /// The rules file.
        #[arg(default_value = "rules.toml")]
        file: PathBuf,
    },
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Add a new signing key; old keys keep verifying until their tokens expire.
    Rotate {
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        #[arg(long)]
        database_url: Option<String>,
    },
    /// Make a new service key and print it once (when the key was lost). The server must
    /// be stopped; start it again afterwards.
    Service {
        /// Every other stored service key stops working (when a key leaked).
        #[arg(long)]
        revoke_others: bool,
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        #[arg(long)]
        database_url: Option<String>,
    },
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Rules { command: RulesCommand::Test { file, rules } } => {
            match hearth_server::rules::testing::run(&file, rules.as_deref()) {
                Ok(report) => {
                    print!("{}", report.text);
                    if report.failed == 0 { std::process::ExitCode::SUCCESS } else { std::process::ExitCode::FAILURE }
                }
                Err(error) => {
                    eprintln!("hearth: {error:#}");
                    std::process::ExitCode::from(2)
                }
            }
        }
        Command::Rules { command: RulesCommand::Check { file } } => {
            let checked = std::fs::read_to_string(&file)
                .map_err(|error| error.to_string())
                .and_then(|source| hearth_server::rules::RuleSet::parse(&source).map_err(|error| error.to_string()));
            match checked {
                Ok(set) => {
                    println!("{}: {} patterns compile", file.display(), set.docs.len() + set.channels.len());
                    std::process::ExitCode::SUCCESS
                }
                Err(error) => {
                    eprintln!("{}: {error}", file.display());
                    std::process::ExitCode::FAILURE
                }
            }
        }
        Command::Keys { command: KeysCommand::Rotate { dir, database_url } } => {
            let overrides = Overrides { database_url, ..Overrides::default() };
            let rotated = Config::load(&dir, overrides)
                .and_then(|config| tokio::runtime::Runtime::new()?.block_on(hearth_server::rotate_keys(&config)));
            match rotated {
                Ok(kid) => {
                    println!("added signing key {kid}; running servers use it within 30 s");
                    std::process::ExitCode::SUCCESS
                }
                Err(error) => {
                    eprintln!("hearth: {error:#}");
                    std::process::ExitCode::FAILURE
                }
            }
        }
        Command::Keys { command: KeysCommand::Service { revoke_others, dir, database_url } } => {
            let overrides = Overrides { database_url, ..Overrides::default() };
            let added = Config::load(&dir, overrides).and_then(|config| {
                tokio::runtime::Runtime::new()?.block_on(hearth_server::add_service_key(&config, revoke_others))
            });
            match added {
                Ok((key, revoked)) => {
                    println!("{}", service_key_notice(&key));
                    if revoke_others {
                        println!(
                            "Other service keys revoked: {revoked}. A `HEARTH_SERVICE_KEY` in a server's \
                             environment is not stored, so it works until removed there."
                        );
                    }
                    std::process::ExitCode::SUCCESS
                }
                Err(error) => {
                    eprintln!("hearth: {error:#}");
                    std::process::ExitCode::FAILURE
                }
            }
        }
        Command::Export { file, sessions, dir, database_url } => {
            let overrides = Overrides { database_url, ..Overrides::default() };
            let exported = Config::load(&dir, overrides).and_then(|config| {
                tokio::runtime::Runtime::new()?.block_on(hearth_server::export::export(
                    &config,
                    &file,
                    sessions,
                    &|progress| eprintln!("{progress}"),
                ))
            });
            finish(exported, |summary| {
                println!("exported {summary} to {}", file.display());
                println!("It holds password hashes and signing keys: keep it as safe as the database.");
            })
        }
        Command::Import { file, dir, database_url } => {
            let overrides = Overrides { database_url, ..Overrides::default() };
            let imported = Config::load(&dir, overrides).and_then(|config| {
                tokio::runtime::Runtime::new()?
                    .block_on(hearth_server::export::import(&config, &file, &|progress| eprintln!("{progress}")))
            });
            finish(imported, |summary| {
                println!("imported {summary} from {}; start the server to serve it", file.display());
            })
        }
        Command::Restore { backup, dir, database_url } => {
            let overrides = Overrides { database_url, ..Overrides::default() };
            let restored = Config::load(&dir, overrides).and_then(|config| {
                let hearth_server::config::Database::Sqlite(database) = config.database()? else {
                    anyhow::bail!("restore replaces an SQLite file; on PostgreSQL, restore with pg_restore");
                };
                Ok((hearth_server::backup::restore(&database, &backup)?, database))
            });
            match restored {
                Ok((seq, database)) => {
                    println!(
                        "restored {} from {} (changes up to seq {seq}); start the server to serve it",
                        database.display(),
                        backup.display()
                    );
                    std::process::ExitCode::SUCCESS
                }
                Err(error) => {
                    eprintln!("hearth: {error:#}");
                    std::process::ExitCode::FAILURE
                }
            }
        }
        Command::Serve { dir, addr, database_url, log_format, public } => {
            let overrides = Overrides { addr, database_url, log_format, public };
            let config = match Config::load(&dir, overrides) {
                Ok(config) => config,
                Err(error) => {
                    eprintln!("hearth: {error:#}");
                    return std::process::ExitCode::from(2);
                }
            };
            init_logging(config.log_format);
            let runtime = match tokio::runtime::Runtime::new() {
                Ok(runtime) => runtime,
                Err(error) => {
                    eprintln!("hearth: cannot start the runtime: {error}");
                    return std::process::ExitCode::FAILURE;
                }
            };
            match runtime.block_on(serve(config)) {
                Ok(()) => std::process::ExitCode::SUCCESS,
                Err(error) => {
                    tracing::error!("{error:#}");
                    eprintln!("hearth: {error:#}");
                    std::process::ExitCode::FAILURE
                }
            }
        }
    }
}

/// A command's exit: `done` tells what it did, or the error is printed.
fn finish<T>(result: anyhow::Result<T>, done: impl FnOnce(T)) -> std::process::ExitCode {
    match result {
        Ok(value) => {
            done(value);
            std::process::ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("hearth: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let shutdown = shutdown_signal();
    let mut server = Server::build(config).await?;
    if let Some(key) = server.take_new_service_key() {
        println!("{}", service_key_notice(&key));
    }
    server.run_until_stopped(shutdown).await
}

/// A new service key, printed once straight to the terminal, never through the log.
fn service_key_notice(key: &str) -> String {
    format!(
        "\nHearth made a service key. It is shown only this once; keep it secret:\n\n    {key}\n\n\
         Use it as `Authorization: Bearer <key>`. Only its hash is stored.\n"
    )
}

/// Resolves on SIGTERM or Ctrl-C. The handlers are registered when this is called, not
/// when the future is first polled, so a signal that arrives right after the server says
/// it is listening still shuts it down gracefully.
fn shutdown_signal() -> impl std::future::Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let terminate = signal(SignalKind::terminate());
        let interrupt = signal(SignalKind::interrupt());
        async move {
            match (terminate, interrupt) {
                (Ok(mut terminate), Ok(mut interrupt)) => {
                    tokio::select! {
                        _ = terminate.recv() => {}
                        _ = interrupt.recv() => {}
                    }
                }
                _ => {
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        }
    }
    #[cfg(not(unix))]
    {
        async {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_ansi(ansi);
    match format {
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(true).init(),
        LogFormat::Text => builder.init(),
    }
}
