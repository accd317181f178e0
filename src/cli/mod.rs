//! The command line: `turnd serve`, `check-config`, `user`, `credential`, `sessions`,
//! `disconnect`, `nat-check`, `cluster`.

mod admin;
mod cluster;
mod notify;
mod serve;
mod users;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::Config;

pub use serve::{credentials, credentials_with, engine_config};
pub use users::{turn_urls, Format};

/// turnd: a STUN/TURN server.
#[derive(Debug, Parser)]
#[command(
    name = "turnd",
    version = crate::metrics::VERSION,
    about,
    propagate_version = true,
    arg_required_else_help = true
)]
pub struct Cli {
    /// Config file. Without it: $TURND_CONFIG, then /etc/turnd/turnd.toml, then the embedded defaults.
    #[arg(long, global = true, value_name = "PATH")]
    pub config: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server in the foreground, logging to stderr.
    Serve,
    /// Load and validate the config, then print the effective config.
    CheckConfig,
    /// Manage the users file (long-term credentials; keys only, never passwords).
    User {
        #[command(subcommand)]
        action: UserCommand,
    },
    /// Mint a TURN REST API credential from the first configured secret.
    Credential {
        /// The id after the expiry in the username ("<expiry>:<id>").
        #[arg(long, value_name = "ID")]
        user: Option<String>,
        /// How long the credential is valid, e.g. "24h", "10m", "90s".
        #[arg(long, default_value = "24h")]
        ttl: String,
        /// text, json (TURN REST API response), or ice (an RTCIceServer object).
        #[arg(long, value_enum, default_value = "text")]
        format: Format,
    },
    /// List open allocations: this server's (over its admin socket), or with [cluster] every node's.
    Sessions {
        /// Only this user's allocations.
        #[arg(long, value_name = "NAME")]
        user: Option<String>,
        /// With [cluster]: only this node's (over the admin socket).
        #[arg(long)]
        local: bool,
    },
    /// End every allocation of a user at once (on every node with [cluster]).
    Disconnect {
        /// The user whose allocations end.
        user: String,
    },
    /// Diagnose from this host: the NAT it sits behind (RFC 5780, with stun:), or a TURN
    /// server end to end (with turn:). Needs no config.
    NatCheck(NatCheckArgs),
    /// Relayed bytes, packets and allocation-seconds per account, by hour (needs [cluster]).
    Usage {
        /// Only this account: a user name, or the id of TURN REST credentials.
        #[arg(long, value_name = "ACCOUNT")]
        user: Option<String>,
        /// From: a time ago ("24h", "7d"), a date ("2026-12-01", UTC), a date and time
        /// ("2026-12-01T10:00", UTC) or Unix seconds.
        #[arg(long, default_value = "24h", value_name = "T")]
        since: String,
        #[arg(long, value_enum, default_value = "text")]
        format: UsageFormat,
    },
    /// Print a shell completion script (bash, zsh, fish, elvish or powershell) on stdout.
    Completions { shell: clap_complete::Shell },
    /// Write the man pages (turnd.1 and one per subcommand) into DIR.
    #[command(hide = true)]
    Manpages { dir: PathBuf },
    /// The cluster this node belongs to (needs [cluster]).
    Cluster {
        #[command(subcommand)]
        action: ClusterCommand,
    },
}

/// Output formats of `turnd usage`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum UsageFormat {
    Text,
    Json,
    Csv,
}

#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Every node with its state, load and last heartbeat, as Redis has them.
    Status {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, clap::Args)]
pub struct NatCheckArgs {
    /// stun:HOST[:PORT] (NAT behaviour), or turn:HOST[:PORT]?transport=udp|tcp (allocate, relay, release).
    pub url: String,
    /// Print the findings as JSON.
    #[arg(long)]
    pub json: bool,
    /// The first retransmission timeout (RFC 8489 RTO).
    #[arg(long, default_value = "500ms", value_name = "DURATION")]
    pub rto: String,
    /// Requests sent per transaction before giving up (RFC 8489 Rc).
    #[arg(long, default_value_t = 7, value_name = "N")]
    pub rc: u32,
    /// The last wait, in RTOs (RFC 8489 Rm).
    #[arg(long, default_value_t = 16, value_name = "N")]
    pub rm: u32,
    /// Also measure how long the NAT keeps an idle mapping, waiting up to DURATION (stun: only).
    #[arg(long, value_name = "DURATION")]
    pub lifetime: Option<String>,
    /// turn: the user name.
    #[arg(long)]
    pub user: Option<String>,
    /// turn: the password.
    #[arg(long)]
    pub password: Option<String>,
    /// turn: a TURN REST API secret to mint a one-hour credential with (--user becomes its id).
    #[arg(long)]
    pub secret: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Add a user; with no --password-stdin, generate a strong password and print it once.
    Add {
        /// The user name clients send (1 to 256 bytes, no ':' and no control characters).
        name: String,
        /// Realm of the user: only the configured realm is accepted, since the server has one.
        #[arg(long)]
        realm: Option<String>,
        /// Read the password from the first line of standard input.
        #[arg(long)]
        password_stdin: bool,
    },
    /// Remove a user.
    Remove {
        /// The user to remove.
        name: String,
        #[arg(long)]
        realm: Option<String>,
    },
    /// List users and realms (never passwords or keys).
    List {
        #[arg(long)]
        realm: Option<String>,
    },
    /// Change a user's password; with no --password-stdin, generate one and print it once.
    Passwd {
        /// The user whose password changes.
        name: String,
        #[arg(long)]
        realm: Option<String>,
        #[arg(long)]
        password_stdin: bool,
    },
}

fn nat_check(a: &NatCheckArgs) -> ExitCode {
    let fail = |m: String| {
        eprintln!("turnd nat-check: {m}");
        ExitCode::from(2)
    };
    let rto = match crate::config::parse_duration(&a.rto) {
        Ok(d) if d >= std::time::Duration::from_millis(10) => d,
        Ok(_) => return fail("--rto must be at least 10ms".into()),
        Err(e) => return fail(format!("--rto: {e}")),
    };
    if !(1..=20).contains(&a.rc) || !(1..=100).contains(&a.rm) {
        return fail("--rc must be 1 to 20 and --rm 1 to 100".into());
    }
    let lifetime_max = match a.lifetime.as_deref().map(crate::config::parse_duration).transpose() {
        Ok(d) => d,
        Err(e) => return fail(format!("--lifetime: {e}")),
    };
    let options = crate::natcheck::Options {
        json: a.json,
        timing: crate::natcheck::Timing {
            rto,
            rc: a.rc,
            rm: a.rm,
        },
        lifetime_max,
        user: a.user.clone(),
        password: a.password.clone(),
        secret: a.secret.clone(),
    };
    crate::natcheck::run(&a.url, &options)
}

/// Writes `turnd.1` and a page per subcommand (`turnd-user-add.1`, ...) into `dir`.
fn manpages(dir: &std::path::Path) -> ExitCode {
    fn write(dir: &std::path::Path, cmd: clap::Command, name: &str) -> std::io::Result<()> {
        let cmd = cmd.name(name.to_string());
        let mut out = Vec::new();
        clap_mangen::Man::new(cmd.clone()).render(&mut out)?;
        std::fs::write(dir.join(format!("{name}.1")), out)?;
        for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
            write(dir, sub.clone(), &format!("{name}-{}", sub.get_name()))?;
        }
        Ok(())
    }
    let cmd = <Cli as clap::CommandFactory>::command();
    match std::fs::create_dir_all(dir).and_then(|()| write(dir, cmd, "turnd")) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("turnd: cannot write man pages into {}: {e}", dir.display());
            ExitCode::from(1)
        }
    }
}

/// A command's exit code: 0, or 1 with the error on stderr.
fn done(r: Result<(), String>) -> ExitCode {
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("turnd: {e}");
            ExitCode::from(1)
        }
    }
}

/// Runs the parsed command line and returns the process exit code.
pub fn run(cli: Cli) -> ExitCode {
    // These need no config, and a broken one must not stop them.
    match &cli.command {
        Command::NatCheck(a) => return nat_check(a),
        Command::Completions { shell } => {
            clap_complete::generate(
                *shell,
                &mut <Cli as clap::CommandFactory>::command(),
                "turnd",
                &mut std::io::stdout(),
            );
            return ExitCode::SUCCESS;
        }
        Command::Manpages { dir } => return manpages(dir),
        _ => {}
    }
    let config = match Config::discover(cli.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(1);
        }
    };
    match cli.command {
        Command::CheckConfig => {
            // The certificate and key are loaded exactly as `serve` loads them.
            if let Some(t) = &config.tls {
                if let Err(e) = crate::net::tls::load(t) {
                    eprintln!("turnd: {e}");
                    return ExitCode::from(1);
                }
            }
            println!("# effective config, loaded from {}", config.source);
            print!("{}", config.to_toml());
            ExitCode::SUCCESS
        }
        Command::Serve => serve::serve(config),
        Command::User { action } => done(match action {
            UserCommand::Add {
                name,
                realm,
                password_stdin,
            } => users::add(&config, &name, realm.as_deref(), password_stdin),
            UserCommand::Remove { name, realm } => users::remove(&config, &name, realm.as_deref()),
            UserCommand::List { realm } => users::list(&config, realm.as_deref()),
            UserCommand::Passwd {
                name,
                realm,
                password_stdin,
            } => users::passwd(&config, &name, realm.as_deref(), password_stdin),
        }),
        Command::Credential { user, ttl, format } => done(users::credential(&config, user.as_deref(), &ttl, format)),
        Command::Sessions { user, local } => done(admin::sessions(&config, user.as_deref(), local)),
        Command::Disconnect { user } => done(admin::disconnect(&config, &user)),
        Command::NatCheck(a) => nat_check(&a),
        Command::Completions { .. } | Command::Manpages { .. } => ExitCode::SUCCESS,
        Command::Cluster {
            action: ClusterCommand::Status { json },
        } => done(cluster::status(&config, json)),
        Command::Usage { user, since, format } => done(cluster::usage(&config, user.as_deref(), &since, format)),
    }
}

/// 144 random bits from the OS CSPRNG, URL-safe: passwords, tokens and the page's secret.
fn random_text() -> Result<String, String> {
    use base64::Engine as _;
    let mut b = [0u8; 18];
    getrandom::fill(&mut b).map_err(|e| format!("cannot read the OS random number generator: {e}"))?;
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b))
}
