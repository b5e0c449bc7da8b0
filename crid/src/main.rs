//! The crid binary: the CRI daemon and its operator subcommands (command line only; the
//! daemon itself is the `crid` library).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

use crid::config::{self, Config};
use crid::{daemon, monitor, notify, ops, pack, sys};

/// crid: a CRI v1 node runtime that runs containers through runc and unikernel images as VMs.
#[derive(Debug, Parser)]
#[command(name = "crid", version, about)]
struct Cli {
    /// Configuration file (TOML); built-in defaults when absent.
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// Persistent state directory (overrides `root`).
    #[arg(long, global = true)]
    root: Option<PathBuf>,
    /// Volatile state directory (overrides `state`).
    #[arg(long, global = true)]
    state: Option<PathBuf>,
    /// CRI socket path (overrides `grpc.socket`).
    #[arg(long, global = true)]
    socket: Option<PathBuf>,
    /// Log level or tracing filter (overrides `log.level`).
    #[arg(long, global = true)]
    log_level: Option<String>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Runs a container monitor (started by crid itself).
    #[command(hide = true)]
    Monitor {
        /// The monitor spec JSON written by crid.
        #[arg(long, required_unless_present_any = ["pid_namespace", "user_namespace"])]
        spec: Option<PathBuf>,
        /// Start a pod's PID namespace holder instead, chrooted into this empty directory.
        #[arg(long, conflicts_with = "spec")]
        pid_namespace: Option<PathBuf>,
        /// The pod's user namespace (its pin) to make the PID namespace in.
        #[arg(long, requires = "pid_namespace")]
        in_user_namespace: Option<PathBuf>,
        /// Make a pod's user namespace instead (with its network, IPC and UTS namespaces).
        #[arg(long, conflicts_with_all = ["spec", "pid_namespace"])]
        user_namespace: bool,
        /// Set by the monitor when it re-executes itself detached.
        #[arg(long)]
        detached: bool,
    },
    /// Configuration helpers.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Lists the images in the store, or imports archives (work without a running daemon).
    Images {
        #[command(subcommand)]
        command: Option<ImagesCommand>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Lists pod sandboxes from the records on disk (works without a running daemon).
    Pods {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Lists containers from the records on disk (works without a running daemon).
    Ps {
        /// Exited containers too.
        #[arg(short, long)]
        all: bool,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Prints the record of a pod, container or image (id prefix, or image tag) as JSON.
    Inspect { id: String },
    /// Installs the binary, systemd units, default config, CNI network and certs.d example.
    Install {
        /// Installation prefix for the binary and units.
        #[arg(long, default_value = "/usr/local")]
        prefix: PathBuf,
        /// Write everything below this directory (for packaging).
        #[arg(long, default_value = "/")]
        dest_root: PathBuf,
    },
    /// Unikernel helpers.
    Unikernel {
        #[command(subcommand)]
        command: UnikernelCommand,
    },
}

#[derive(Debug, Subcommand)]
enum UnikernelCommand {
    /// Package a unikernel as an OCI image with urunc's annotations and `urunc.json`.
    Pack(Box<pack::PackArgs>),
}

#[derive(Debug, Subcommand)]
enum ImagesCommand {
    /// Import an OCI-layout or `docker save` tarball into the image store.
    Import {
        /// The tarball (optionally gzipped).
        file: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Print the full default configuration with comments.
    Default,
}

impl Cli {
    fn load_config(&self) -> anyhow::Result<Config> {
        let mut config = Config::load(self.config.as_deref())?;
        if let Some(root) = &self.root {
            config.root = root.clone();
        }
        if let Some(state) = &self.state {
            config.state = state.clone();
        }
        if let Some(socket) = &self.socket {
            config.grpc.socket = socket.clone();
        }
        if let Some(level) = &self.log_level {
            config.log.level = level.clone();
        }
        config.validate()?;
        Ok(config)
    }
}

fn init_tracing(config: &Config) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&config.log.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // Under systemd stderr goes to journald, which adds its own timestamps and shows
    // colour codes literally.
    let journald = std::env::var_os("JOURNAL_STREAM").is_some();
    if config.log.format == "json" {
        builder.json().init();
    } else if journald {
        builder.with_ansi(false).without_time().init();
    } else {
        builder.init();
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match &cli.command {
        Some(Command::Monitor {
            spec,
            pid_namespace,
            in_user_namespace,
            user_namespace,
            detached,
        }) => monitor::run(
            spec.as_deref(),
            pid_namespace.as_deref(),
            in_user_namespace.as_deref(),
            *user_namespace,
            *detached,
        ),
        Some(Command::Config {
            command: ConfigCommand::Default,
        }) => {
            print!("{}", config::DEFAULT_TOML);
            ExitCode::SUCCESS
        }
        Some(Command::Images {
            command: Some(ImagesCommand::Import { file }),
            ..
        }) => match import_images(&cli, file) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("crid: {e:#}");
                ExitCode::FAILURE
            }
        },
        Some(Command::Images {
            command: None,
            json,
        }) => report(cli.load_config().and_then(|c| ops::images(&c, *json))),
        Some(Command::Pods { json }) => {
            report(cli.load_config().and_then(|c| ops::pods(&c, *json)))
        }
        Some(Command::Ps { all, json }) => {
            report(cli.load_config().and_then(|c| ops::ps(&c, *all, *json)))
        }
        Some(Command::Inspect { id }) => {
            report(cli.load_config().and_then(|c| ops::inspect(&c, id)))
        }
        Some(Command::Install { prefix, dest_root }) => report(ops::install(&ops::InstallPlan {
            prefix: prefix.clone(),
            dest_root: dest_root.clone(),
        })),
        Some(Command::Unikernel {
            command: UnikernelCommand::Pack(args),
        }) => match pack::run(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("crid: {e:#}");
                ExitCode::FAILURE
            }
        },
        None => match run_daemon(&cli) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("crid: {e:#}");
                ExitCode::FAILURE
            }
        },
    }
}

fn report(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("crid: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `crid images import FILE`: loads the archive into the store under `--root`, also next to a
/// running daemon (which sees the images on its next image call).
fn import_images(cli: &Cli, file: &std::path::Path) -> anyhow::Result<()> {
    let config = cli.load_config()?;
    init_tracing(&config);
    let store = crid::state::open_store_offline(&config)?;
    for image in store.import_tar(file)? {
        println!("{} {}", image.id, image.repo_tags.join(" "));
    }
    Ok(())
}

fn run_daemon(cli: &Cli) -> anyhow::Result<()> {
    let config = cli.load_config()?;
    init_tracing(&config);
    // Both while this process has its only thread: the environment can still be changed
    // safely, and no child can be started in between.
    let systemd = notify::Systemd::take_from_environment();
    sandbox::monitor::close_inherited_on_exec();
    sys::limit_malloc_arenas();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("crid")
        .build()?;
    runtime.block_on(daemon::run(config, systemd))
}
