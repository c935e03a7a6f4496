//! `lifeboat`: flags, tracing, and exit codes (0 ok, 1 failure, 2 usage or
//! configuration error). Everything else lives in the library.

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand, ValueEnum};

use lifeboat::config::ConfigError;
use lifeboat::role_error::BindError;
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
        /// The edge's config file (TOML); see `lifeboat check`.
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Run the DR App Connector.
    Connector {
        /// The connector's config file (TOML); see `lifeboat check`.
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Run the user-side agent (SOCKS5, HTTP proxy, port forwards).
    Client {
        /// The client's config file (TOML); see `lifeboat check`.
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Offline CA tooling.
    Pki {
        #[command(subcommand)]
        command: PkiCommand,
    },
    /// Load a config and every file it names as its role would; print the
    /// DR segments. Exit 0 valid, 2 invalid (file, key and line named).
    Check {
        /// An edge, connector or client config (the role is told from its keys).
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
        /// Also say which segment HOST:PORT hits and why (repeatable).
        #[arg(long = "match", value_name = "HOST:PORT", value_parser = lifeboat::check::parse_match)]
        probes: Vec<lifeboat::preamble::Dest>,
    },
    /// Print the zone-file lines of the DR trigger TXT record and the edges'
    /// A/AAAA records; `keygen` makes the trigger signing pair.
    DnsRecord(lifeboat::dns_record::Args),
    /// The guide's DR test, automated: one real flow per target through
    /// each edge address, a table of results; exit 0 only if all passed.
    Drill(lifeboat::drill::Args),
    /// Load against a real edge, as one or many clients: flows/s, setup
    /// latency percentiles, throughput, refusals by word.
    Loadgen(LoadgenArgs),
    /// The whole DR topology on loopback with an embedded config.
    Demo {
        /// Exit after the walkthrough (status 0 only if everything behaved).
        #[arg(long)]
        once: bool,
    },
}

/// `lifeboat loadgen` flags.
#[derive(clap::Args)]
struct LoadgenArgs {
    /// A client config: its certificate, edges and transport are used.
    #[arg(short, long, value_name = "FILE")]
    config: PathBuf,
    /// Destination of every flow, HOST:PORT.
    #[arg(long)]
    target: String,
    /// Flows to open in all, each client's first flow included (at least --clients).
    #[arg(long, default_value_t = 10_000)]
    flows: u64,
    /// Flows in progress at once.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Separate clients (tunnels) arriving at once: each retries until its
    /// first flow is served (or --duration), then the flows spread over them.
    #[arg(long, default_value_t = 1)]
    clients: usize,
    /// Stop after this long whatever is left ("30s").
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    duration: std::time::Duration,
    /// Each flow sends `GET PATH` and reads the answer to its end.
    #[arg(long)]
    http_get: Option<String>,
    /// Keep each flow open and idle this long ("0s").
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    hold: std::time::Duration,
    /// Override the config's transport.
    #[arg(long, value_parser = ["auto", "quic", "tls"])]
    transport: Option<String>,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand)]
enum PkiCommand {
    /// Create the deployment's CA: DIR/ca.pem and DIR/ca.key.
    Init {
        /// Folder for the CA's files (created if missing).
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
        /// The SPIFFE trust domain every certificate will carry (e.g. dr.example.com).
        #[arg(long, value_name = "DOMAIN")]
        trust_domain: String,
        /// Validity of the CA certificate, in days.
        #[arg(long, default_value_t = 3650)]
        days: u32,
    },
    /// Issue a certificate: DIR/NAME.pem and DIR/NAME.key.
    Issue {
        /// The CA's folder (from `pki init`); receives NAME.pem and NAME.key.
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
        /// What the certificate is for.
        #[arg(long, value_parser = role_parser(), value_name = "ROLE")]
        role: Role,
        /// Edge name, connector name, or client user name.
        #[arg(long)]
        name: String,
        /// Connector group (connectors only, required for them).
        #[arg(long)]
        group: Option<String>,
        /// A DNS name clients reach this edge by (repeatable; HTTPS-proxy
        /// clients such as curl check it).
        #[arg(long, value_name = "NAME")]
        dns: Vec<String>,
        /// An address clients reach this edge by (repeatable).
        #[arg(long, value_name = "ADDR")]
        ip: Vec<IpAddr>,
        /// Validity, in days from now.
        #[arg(long, default_value_t = 365)]
        days: u32,
        /// Replace an existing NAME.pem and NAME.key (renewal).
        #[arg(long)]
        force: bool,
    },
    /// Revoke a certificate: add it to DIR/ca.crl.
    Revoke {
        /// The CA's folder; DIR/ca.crl is rewritten.
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
        /// The certificate to revoke (PEM, issued by this CA).
        #[arg(long, value_name = "FILE")]
        cert: PathBuf,
    },
}

fn init_tracing(format: LogFormat, default_level: &str) {
    use std::io::IsTerminal as _;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    // Colour only for a person at a terminal: never into a file, a pipe or
    // the journal, and never with NO_COLOR set to anything (no-color.org).
    let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal() && !no_color)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// An error and its causes on one line, each cause once: a cause whose
/// text its wrapper already ends with (`…: cannot read: No such file`) is
/// not repeated.
fn error_line(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if line.ends_with(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}

/// `--role`: one of the three words, listed in `--help` and in errors.
fn role_parser() -> impl clap::builder::TypedValueParser<Value = Role> {
    use clap::builder::TypedValueParser as _;
    clap::builder::PossibleValuesParser::new(Role::ALL.map(Role::as_str))
        .map(|s| s.parse::<Role>().expect("one of Role::ALL"))
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
        Command::Pki { command } => pki(command)?,
        Command::Check { config, probes } => {
            let report = lifeboat::check::run_with(&config, &probes)?;
            print!("{report}");
        }
        Command::DnsRecord(args) => {
            print!(
                "{}",
                lifeboat::dns_record::run(&args, lifeboat::dr::trigger::unix_now())?
            );
        }
        Command::Loadgen(args) => return loadgen(args),
        Command::Drill(args) => {
            if !runtime()?.block_on(lifeboat::drill::run(&args))? {
                return Ok(ExitCode::from(1));
            }
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

/// `lifeboat pki init|issue|revoke`.
fn pki(command: PkiCommand) -> anyhow::Result<()> {
    match command {
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
            force,
        } => {
            match (role, &group) {
                (Role::Connector, None) => {
                    pki_issue_usage("a connector certificate needs --group <connector group>")
                }
                (Role::Edge | Role::Client, Some(_)) => {
                    pki_issue_usage("--group is only for connector certificates")
                }
                _ => {}
            }
            if !force {
                lifeboat::pki::refuse_overwrite(&dir, &name)?;
            }
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
    }
    Ok(())
}

/// A `pki issue` usage error: exit 2, like every other flag error, with
/// `pki issue`'s own usage line.
fn pki_issue_usage(msg: &str) -> ! {
    let mut cli = Cli::command();
    cli.build();
    let issue = cli
        .find_subcommand_mut("pki")
        .and_then(|p| p.find_subcommand_mut("issue"))
        .expect("pki issue is a subcommand");
    issue
        .error(clap::error::ErrorKind::MissingRequiredArgument, msg)
        .exit()
}

/// `lifeboat loadgen`: exit 1 when a flow failed or none was served.
fn loadgen(args: LoadgenArgs) -> anyhow::Result<ExitCode> {
    let target = match lifeboat::preamble::Dest::parse(&args.target) {
        Ok(t) => t,
        Err(e) => Cli::command()
            .error(
                clap::error::ErrorKind::InvalidValue,
                format!("--target `{}`: {e}", args.target),
            )
            .exit(),
    };
    let transport = match args.transport.as_deref() {
        None => None,
        Some("auto") => Some(lifeboat::config::TransportChoice::Auto),
        Some("quic") => Some(lifeboat::config::TransportChoice::Quic),
        Some("tls") => Some(lifeboat::config::TransportChoice::Tls),
        Some(other) => anyhow::bail!("--transport `{other}`: use auto, quic or tls"),
    };
    let opts = lifeboat::loadgen::Options {
        target,
        flows: args.flows,
        concurrency: args.concurrency,
        clients: args.clients,
        duration: args.duration,
        http_get: args.http_get,
        hold: args.hold,
        transport,
    };
    if let Err(e) = opts.check() {
        Cli::command()
            .error(clap::error::ErrorKind::InvalidValue, e)
            .exit()
    }
    let report = runtime()?.block_on(lifeboat::loadgen::run(&args.config, opts))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{report}");
    }
    if report.flows_ok == 0 || report.flows_failed > 0 {
        // A flow failed, or no edge was reachable: a failed run.
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}

/// glibc hands the top of a heap back to the kernel once 128 KiB of it is
/// free. quinn copies every received datagram batch into a new buffer and
/// frees it once the flow has read it, so under bulk traffic the heap's top
/// was returned and faulted back in all the time: 70,000 to 160,000 page
/// faults per GB carried, about 15% of the CPU. Keeping up to 2 MiB free per
/// heap arena before trimming removes nearly all of them (see
/// docs/performance.md). An operator's own `GLIBC_TUNABLES` for the
/// threshold wins.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn keep_freed_heap() {
    const TRIM_THRESHOLD: libc::c_int = 2 << 20;
    let set = std::env::var("GLIBC_TUNABLES").is_ok_and(|t| t.contains("malloc.trim_threshold"));
    if !set {
        // SAFETY: mallopt only sets a malloc parameter, under malloc's own
        // lock; it reads and writes no memory of ours.
        unsafe { libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD) };
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn keep_freed_heap() {}

fn main() -> ExitCode {
    keep_freed_heap();
    let cli = Cli::parse();
    // The demo prints its own story; its roles' lifecycle logs (and the
    // warning about its deliberately non-DR segment) would drown it.
    // RUST_LOG=info shows them.
    let level = if matches!(cli.command, Command::Demo { .. }) {
        "error"
    } else {
        "info"
    };
    let format = cli.log_format;
    init_tracing(format, level);
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            // Exit 2 for a configuration error (systemd's
            // RestartPreventExitStatus=2 then stops a restart loop).
            let config = e.downcast_ref::<ConfigError>().is_some()
                || e.downcast_ref::<BindError>()
                    .is_some_and(|b| b.config().is_some());
            let code = if config { 2 } else { 1 };
            let line = error_line(&e);
            match format {
                // Every line in JSON mode is JSON, the last one included.
                LogFormat::Json => tracing::error!(exit_code = code, "{line}"),
                LogFormat::Text => eprintln!("error: {line}"),
            }
            ExitCode::from(code)
        }
    }
}
