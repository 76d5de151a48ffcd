//! The command line as parsed: every subcommand, flag and default, in one place. Commands
//! turn these into actions in `commands/`.

use clap::{Args, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

/// Run, deploy and watch a whole system described in one file.
#[derive(Debug, Parser)]
#[command(name = "tandem", version, about, long_about = None, propagate_version = true)]
pub(crate) struct Cli {
    /// Environment to act on: `dev` (the base, the default) or one of the file's `[env.NAME]`.
    #[arg(short = 'e', long = "env", global = true, env = "TANDEM_ENV")]
    pub(crate) env: Option<String>,

    #[command(subcommand)]
    pub(crate) command: Command,
}

/// `-f FILE`: the system file (every command but `logs`, where `-f` means follow).
#[derive(Clone, Debug, Args)]
pub(crate) struct FileArg {
    /// The system file.
    #[arg(
        short = 'f',
        long = "file",
        default_value = "tandem.toml",
        env = "TANDEM_FILE"
    )]
    pub(crate) file: PathBuf,
}

/// `--file FILE` for `logs`.
#[derive(Clone, Debug, Args)]
pub(crate) struct LongFileArg {
    /// The system file.
    #[arg(long = "file", default_value = "tandem.toml", env = "TANDEM_FILE")]
    pub(crate) file: PathBuf,
}

/// `-f FILE` for `alerts`, before or after its subcommand.
#[derive(Clone, Debug, Args)]
pub(crate) struct AlertsFileArg {
    /// The system file.
    #[arg(
        short = 'f',
        long = "file",
        default_value = "tandem.toml",
        env = "TANDEM_FILE",
        global = true
    )]
    pub(crate) file: PathBuf,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum Output {
    Text,
    Json,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum RenderOutput {
    Toml,
    Json,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum GraphOutput {
    Text,
    Dot,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Write a commented starter tandem.toml (never overwrites one).
    Init {
        #[command(flatten)]
        target: FileArg,
    },
    /// Check the system file; report every error with file:line:col. Exit 0 or 1.
    ///
    /// Without --env, the base and every environment are checked.
    Validate {
        #[command(flatten)]
        target: FileArg,
    },
    /// Print the resolved system for the environment.
    Render {
        #[command(flatten)]
        target: FileArg,
        #[arg(short, long, value_enum, default_value = "toml")]
        output: RenderOutput,
    },
    /// Print the dependency graph.
    Graph {
        #[command(flatten)]
        target: FileArg,
        #[arg(short, long, value_enum, default_value = "text")]
        output: GraphOutput,
    },
    /// Start (or reuse) the environment's server and apply the file.
    Up {
        #[command(flatten)]
        target: FileArg,
        /// Return once the system is up instead of streaming logs in the foreground.
        #[arg(short, long)]
        detach: bool,
        /// Message recorded with the revision.
        #[arg(short, long)]
        message: Option<String>,
        /// Deploy even content that was rolled back before.
        #[arg(long)]
        force: bool,
    },
    /// Deploy the file as a new revision through each changed service's release strategy.
    ///
    /// Starts the environment's server when none runs. Exit 0 when the new revision is
    /// live, 3 when a gate failed and it was rolled back automatically, 1 on other errors.
    Deploy {
        #[command(flatten)]
        target: FileArg,
        /// Message recorded with the revision.
        #[arg(short, long)]
        message: Option<String>,
        /// Deploy even content that was rolled back before.
        #[arg(long)]
        force: bool,
        #[arg(short, long, value_enum, default_value = "text")]
        output: Output,
    },
    /// Go back to the previous good revision (or --to REV): a traffic switch while its
    /// instances are warm, else a start with health gates.
    Rollback {
        #[command(flatten)]
        target: FileArg,
        /// The revision to restore (default: the last one that went live before the live one).
        #[arg(long)]
        to: Option<u64>,
        #[arg(short, long, value_enum, default_value = "text")]
        output: Output,
    },
    /// Deployments (deploy, up, rollback) with their steps, gates and outcomes.
    Deployments {
        #[command(flatten)]
        target: FileArg,
        #[arg(short, long, value_enum, default_value = "text")]
        output: Output,
        #[arg(short = 'n', long, default_value_t = 10)]
        limit: usize,
    },
    /// Evaluate a PromQL expression against the environment's metrics.
    ///
    /// An instant query at now; with --range, a range query over the last RANGE every STEP.
    Query {
        #[command(flatten)]
        target: FileArg,
        /// The PromQL expression, e.g. 'sum by (service) (rate(tandem_http_requests_total[1m]))'.
        expr: String,
        /// Evaluate over this long up to now (e.g. 1h), instead of at one instant.
        #[arg(long)]
        range: Option<String>,
        /// Resolution of a range query (default: the range / 60, at least 1s).
        #[arg(long)]
        step: Option<String>,
        #[arg(short, long, value_enum, default_value = "text")]
        output: Output,
    },
    /// Pending and firing alerts, with since when and their value; and silences.
    ///
    /// Without a subcommand, lists the alerts (muted ones say by which silence).
    Alerts {
        #[command(flatten)]
        target: AlertsFileArg,
        #[arg(short, long, value_enum, default_value = "text", global = true)]
        output: Output,
        #[command(subcommand)]
        action: Option<AlertsAction>,
    },
    /// Stop every service and the environment's server.
    Down {
        #[command(flatten)]
        target: FileArg,
    },
    /// What applying the file now would change. Exit 0 no change, 2 changes, 1 error.
    Plan {
        #[command(flatten)]
        target: FileArg,
        #[arg(short, long, value_enum, default_value = "text")]
        output: Output,
    },
    /// The server and every service and instance.
    Status {
        #[command(flatten)]
        target: FileArg,
        #[arg(short, long, value_enum, default_value = "text")]
        output: Output,
    },
    /// Service output, merged by time.
    Logs {
        #[command(flatten)]
        target: LongFileArg,
        /// Services to show (default: all).
        services: Vec<String>,
        /// Keep following new output.
        #[arg(short, long)]
        follow: bool,
        /// Only lines newer than this (e.g. 5m, 1h).
        #[arg(long)]
        since: Option<String>,
        /// Only the last N lines.
        #[arg(short = 'n', long)]
        tail: Option<usize>,
    },
    /// Restart every instance of a service (clears a crash loop).
    Restart {
        service: String,
        #[command(flatten)]
        target: FileArg,
    },
    /// Run a one-off command with a service's environment in the live revision, on this
    /// machine, attached to the terminal (a migration, a console, a script).
    ///
    /// The command gets the service's `cwd`, its `env`, the injected `<DEP>_URL`s and its
    /// secrets, plus TANDEM_EXEC=1 (no PORT: it is not an instance). It replaces tandem, so
    /// its input, output, signals and exit status are its own; 127 when it is not found.
    /// Recorded on the timeline (who, which command, which service).
    Exec {
        #[command(flatten)]
        target: FileArg,
        /// The service whose environment the command runs with.
        service: String,
        /// The command and its arguments, after `--`: `tandem exec api -- python3 -i`.
        #[arg(last = true, required = true, value_name = "COMMAND")]
        command: Vec<String>,
    },
    /// Applied revisions, newest first.
    History {
        #[command(flatten)]
        target: FileArg,
        #[arg(short, long, value_enum, default_value = "text")]
        output: Output,
        #[arg(short = 'n', long, default_value_t = 20)]
        limit: usize,
    },
    /// One revision: where it came from and its resolved system.
    Show {
        #[command(flatten)]
        target: FileArg,
        /// A revision number, or `live`.
        revision: String,
        #[arg(short, long, value_enum, default_value = "toml")]
        output: RenderOutput,
    },
    /// Field-by-field difference between two revisions.
    Diff {
        #[command(flatten)]
        target: FileArg,
        a: String,
        b: String,
        #[arg(short, long, value_enum, default_value = "text")]
        output: Output,
    },
    /// Events of all kinds: applies, starts, crashes, restarts, notes.
    Timeline {
        #[command(flatten)]
        target: FileArg,
        #[arg(long)]
        since: Option<String>,
        #[arg(short, long, value_enum, default_value = "text")]
        output: Output,
        #[arg(short = 'n', long, default_value_t = 100)]
        limit: usize,
    },
    /// Add a note to the timeline.
    Note {
        text: String,
        #[command(flatten)]
        target: FileArg,
    },
    /// Set, list and remove the environment's secrets (`secrets = [...]` of a service).
    ///
    /// Values are read from stdin, never from arguments; no command prints one.
    Secret {
        #[command(flatten)]
        target: AlertsFileArg,
        #[command(subcommand)]
        action: SecretAction,
    },
    /// Run the environment's server in the foreground (`up` starts it in the background).
    Serve {
        #[command(flatten)]
        target: FileArg,
        /// Data directory (default: `.tandem/<env>` beside the system file).
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// HTTP listener (default: the file's `[server] listen`, else 127.0.0.1:7300 or the next free port).
        #[arg(long)]
        listen: Option<String>,
    },
    /// Run unit tests offline (no server, no system file).
    Test {
        #[command(subcommand)]
        what: TestWhat,
    },
    /// The per-instance shim (started by the server; not for people).
    #[command(name = "__shim", hide = true)]
    Shim { dir: PathBuf },
    /// The port holder of a data directory (started by the server; not for people).
    #[command(name = "__ports", hide = true)]
    Ports { dir: PathBuf },
}

/// `tandem alerts` subcommands: silences, as in Alertmanager's `amtool silence`.
#[derive(Debug, Subcommand)]
pub(crate) enum AlertsAction {
    /// Mute notifications of matching alerts to webhook receivers for a while; prints the
    /// silence's id.
    Silence {
        /// Alertmanager matchers, all of which an alert must satisfy: alertname=ApiDown,
        /// service=~"api|web", severity!=info.
        #[arg(value_name = "MATCHER")]
        matchers: Vec<String>,
        /// How long it lasts, from now (or --start): 30m, 2h, 1d.
        #[arg(long = "for", value_name = "DURATION", conflicts_with = "until")]
        duration: Option<String>,
        /// When it ends, instead of --for (RFC 3339, such as 2026-11-26T18:00:00Z).
        #[arg(long, value_name = "TIME")]
        until: Option<String>,
        /// When it starts (RFC 3339; default now). It is pending until then.
        #[arg(long, value_name = "TIME")]
        start: Option<String>,
        /// Why (required, as in amtool).
        #[arg(short, long, required = true)]
        comment: String,
        /// Who silences (default: git user.name, else the login name).
        #[arg(short, long)]
        author: Option<String>,
    },
    /// Active and pending silences, with how many firing alerts each mutes now.
    Silences {
        /// Expired silences too (they are kept 5 days).
        #[arg(long)]
        all: bool,
    },
    /// Expire a silence now: its alerts are notified again.
    Unsilence {
        /// The silence's id (or its first characters, when they name only one).
        id: String,
        /// Who expires it (default: git user.name, else the login name).
        #[arg(short, long)]
        author: Option<String>,
    },
}

/// `tandem secret` subcommands.
#[derive(Debug, Subcommand)]
pub(crate) enum SecretAction {
    /// Set a secret's value, read from stdin: piped in, or typed without echo on a terminal.
    /// Starts the environment's server when none runs.
    Set {
        /// The variable's name, as listed in `secrets = [...]`.
        name: String,
    },
    /// Every secret: name, when and by whom it was set, a fingerprint, and the services of
    /// the live revision that use it. Never a value.
    List {
        #[arg(short, long, value_enum, default_value = "text")]
        output: Output,
    },
    /// Remove a secret.
    Rm {
        /// The variable's name.
        name: String,
    },
}

/// What `tandem test` tests.
#[derive(Debug, Subcommand)]
pub(crate) enum TestWhat {
    /// Run rule unit tests in `promtool test rules` format. Exit 0 when all pass, 1 when
    /// one fails.
    Rules {
        /// Test files (YAML: rule_files, evaluation_interval, tests).
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

impl Command {
    /// The system file named on the command line.
    pub(crate) fn file(&self) -> PathBuf {
        match self {
            Command::Logs { target, .. } => target.file.clone(),
            Command::Shim { .. } | Command::Ports { .. } => PathBuf::from("tandem.toml"),
            Command::Test { .. } => PathBuf::from("tandem.toml"),
            Command::Alerts { target, .. } => target.file.clone(),
            Command::Secret { target, .. } => target.file.clone(),
            Command::Init { target }
            | Command::Validate { target }
            | Command::Render { target, .. }
            | Command::Graph { target, .. }
            | Command::Up { target, .. }
            | Command::Deploy { target, .. }
            | Command::Rollback { target, .. }
            | Command::Deployments { target, .. }
            | Command::Query { target, .. }
            | Command::Down { target }
            | Command::Plan { target, .. }
            | Command::Status { target, .. }
            | Command::Restart { target, .. }
            | Command::Exec { target, .. }
            | Command::History { target, .. }
            | Command::Show { target, .. }
            | Command::Diff { target, .. }
            | Command::Timeline { target, .. }
            | Command::Note { target, .. }
            | Command::Serve { target, .. } => target.file.clone(),
        }
    }
}
