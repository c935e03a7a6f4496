//! `lifeboat`: flags, tracing, and exit codes (0 ok, 1 failure, 2 usage or
//! configuration error). Everything else lives in the library.

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

use lifeboat::config::ConfigError;
use lifeboat::trust::Role;

#[derive(Parser)]
#[command(
    name = "lifeboat",
    version,
    about = "Disaster-recovery Private Service Edge data plane"
)]
struct Cli {
    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the DR Private Service Edge.
    Edge {
        #[arg(short, long)]
        config: PathBuf,
    },
    /// Run the DR App Connector.
    Connector {
        #[arg(short, long)]
        config: PathBuf,
    },
    /// Run the user-side agent (SOCKS5, HTTP CONNECT, port forwards).
    Client {
        #[arg(short, long)]
        config: PathBuf,
    },
    /// Offline CA tooling.
    Pki {
        #[command(subcommand)]
        command: PkiCommand,
    },
    /// Load, validate and compile a config; print the DR segments.
    Check {
        #[arg(short, long)]
        config: PathBuf,
    },
    /// Print the zone-file lines of the DR trigger TXT record and the edges'
    /// A/AAAA records; `keygen` makes the trigger signing pair.
    DnsRecord(lifeboat::dns_record::Args),
    /// The whole DR topology on loopback with an embedded config.
    Demo {
        /// Exit after the walkthrough (status 0 only if everything behaved).
        #[arg(long)]
        once: bool,
    },
}

#[derive(Subcommand)]
enum PkiCommand {
    /// Create the deployment's CA: DIR/ca.pem and DIR/ca.key.
    Init {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        trust_domain: String,
        #[arg(long, default_value_t = 3650)]
        days: u32,
    },
    /// Issue a certificate: DIR/NAME.pem and DIR/NAME.key.
    Issue {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        role: Role,
        #[arg(long)]
        name: String,
        /// Connector group (connectors only).
        #[arg(long)]
        group: Option<String>,
        #[arg(long)]
        dns: Vec<String>,
        #[arg(long)]
        ip: Vec<IpAddr>,
        #[arg(long, default_value_t = 365)]
        days: u32,
    },
    /// Revoke a certificate: add it to DIR/ca.crl.
    Revoke {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        cert: PathBuf,
    },
}

fn init_tracing(format: LogFormat, default_level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Edge { config } => runtime()?.block_on(lifeboat::process::edge(&config))?,
        Command::Connector { config } => {
            runtime()?.block_on(lifeboat::process::connector(&config))?
        }
        Command::Client { config } => runtime()?.block_on(lifeboat::process::client(&config))?,
        Command::Pki { command } => match command {
            PkiCommand::Init {
                dir,
                trust_domain,
                days,
            } => {
                lifeboat::pki::init(&dir, &trust_domain, days)?;
                println!(
                    "wrote {} and {}",
                    dir.join("ca.pem").display(),
                    dir.join("ca.key").display()
                );
            }
            PkiCommand::Issue {
                dir,
                role,
                name,
                group,
                dns,
                ip,
                days,
            } => {
                let (cert, key) = lifeboat::pki::issue(&lifeboat::pki::IssueOptions {
                    dir,
                    role,
                    name,
                    group,
                    dns,
                    ips: ip,
                    days,
                    not_before: None,
                    not_after: None,
                })?;
                println!("wrote {} and {}", cert.display(), key.display());
            }
            PkiCommand::Revoke { dir, cert } => {
                lifeboat::pki::revoke(&dir, &cert)?;
                println!(
                    "revoked {}; CRL at {}",
                    cert.display(),
                    dir.join("ca.crl").display()
                );
            }
        },
        Command::Check { config } => {
            let report = lifeboat::check::run(&config)?;
            print!("{report}");
        }
        Command::DnsRecord(args) => {
            print!(
                "{}",
                lifeboat::dns_record::run(&args, lifeboat::dr::trigger::unix_now())?
            );
        }
        Command::Demo { once } => {
            let ok = runtime()?.block_on(lifeboat::demo::run(once))?;
            if !ok {
                return Ok(ExitCode::from(1));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The demo prints its own story; its roles' lifecycle logs would drown it.
    let level = if matches!(cli.command, Command::Demo { .. }) {
        "warn"
    } else {
        "info"
    };
    init_tracing(cli.log_format, level);
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            if let Some(ce) = e.downcast_ref::<ConfigError>() {
                eprintln!("error: {ce}");
                return ExitCode::from(2);
            }
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}
