//! The `fleetboard` binary: one image, one binary, subcommands per role.

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
    /// Print the version and exit.
    Version,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Version => println!("fleetboard {}", env!("CARGO_PKG_VERSION")),
    }
    Ok(())
}
