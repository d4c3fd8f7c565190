//! `fleetboard dataplane`: run the dataplane, or `show` a running one.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand};
use fleetboard_dataplane::core::config::DEFAULT_ADMIN_SOCKET;
use fleetboard_dataplane::{AdminClient, DataplaneDriver, config_file, show};

/// `fleetboard dataplane [--config FILE] [show]`.
#[derive(Args, Debug)]
pub struct DataplaneArgs {
    /// Config file (YAML) to run with.
    #[arg(long, short)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<DataplaneCommand>,
}

/// Dataplane subcommands.
#[derive(Subcommand, Debug)]
enum DataplaneCommand {
    /// Show peers, handshakes, transfer and drops of a running dataplane (like `wg show`).
    Show {
        /// Admin socket of the dataplane (default: from `--config`, else the default path).
        #[arg(long)]
        socket: Option<PathBuf>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

/// Entry point of the subcommand.
pub fn main(args: DataplaneArgs) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    match args.command {
        None => {
            init_logs();
            let path = args
                .config
                .context("--config FILE is required to run the dataplane")?;
            let config = config_file::load(&path)?;
            rt.block_on(run(config, path))
        }
        Some(DataplaneCommand::Show { socket, json }) => {
            let socket = match (socket, &args.config) {
                (Some(s), _) => s,
                (None, Some(c)) => config_file::load(c)?.admin.socket,
                (None, None) => PathBuf::from(DEFAULT_ADMIN_SOCKET),
            };
            let status = rt.block_on(AdminClient::new(socket).status())?;
            if json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                print!("{}", show::format(&status));
            }
            Ok(())
        }
    }
}

async fn run(
    config: fleetboard_dataplane::core::DataplaneConfig,
    path: PathBuf,
) -> anyhow::Result<()> {
    let driver = DataplaneDriver::bind(config, Some(path)).await?;
    let shutdown = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    };
    driver.run(shutdown).await?;
    Ok(())
}

fn init_logs() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt().with_env_filter(filter).init();
}
