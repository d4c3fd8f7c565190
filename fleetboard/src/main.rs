//! The `fleetboard` binary: one image, one binary, subcommands per role.

mod dataplane;
mod keys;

use clap::{Parser, Subcommand};

/// FleetBoard: connect Kubernetes clusters into one network.
#[derive(Parser, Debug)]
#[command(name = "fleetboard", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// The roles this binary can play.
#[derive(Subcommand, Debug)]
enum Command {
    /// Run the userspace dataplane (`--config FILE`), or inspect one (`show`).
    Dataplane(dataplane::DataplaneArgs),
    /// Print a new private key (base64), like `wg genkey`.
    Keygen,
    /// Read a private key on stdin and print its public key, like `wg pubkey`.
    Pubkey,
    /// Print the version and exit.
    Version,
    /// containerd NRI plugin: gives every pod the parallel interface `eth-fleet`.
    Nri(Box<fleetboard_nri::NriArgs>),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Dataplane(args) => dataplane::main(args),
        Command::Keygen => keys::genkey(),
        Command::Pubkey => keys::pubkey(),
        Command::Nri(args) => {
            tracing_subscriber::fmt()
                .with_env_filter(
                    tracing_subscriber::EnvFilter::try_from_default_env()
                        .unwrap_or_else(|_| "info".into()),
                )
                .init();
            tokio::runtime::Runtime::new()?.block_on(fleetboard_nri::run(*args))?;
            Ok(())
        }
        Command::Version => {
            println!("fleetboard {}", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
    }
}
