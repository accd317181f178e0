//! The command line: `turnd serve`, `check-config`, `user`, `credential`, `sessions`,
//! `disconnect`.

mod admin;
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
    /// List open allocations (asks the running server over its admin socket).
    Sessions {
        /// Only this user's allocations.
        #[arg(long, value_name = "NAME")]
        user: Option<String>,
    },
    /// End every allocation of a user at once (over the admin socket).
    Disconnect {
        /// The user whose allocations end.
        user: String,
    },
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

/// Runs the parsed command line and returns the process exit code.
pub fn run(cli: Cli) -> ExitCode {
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
        Command::User { action } => match action {
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
        },
        Command::Credential { user, ttl, format } => users::credential(&config, user.as_deref(), &ttl, format),
        Command::Sessions { user } => admin::sessions(&config, user.as_deref()),
        Command::Disconnect { user } => admin::disconnect(&config, &user),
    }
}
