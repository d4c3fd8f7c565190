//! The `fleetboard` binary: one image, one binary, subcommands per role.

mod agent;
mod common;
mod dataplane;
mod hub;
mod keys;

use clap::{Parser, Subcommand};
use common::init_tracing;

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
    /// The hub controller: leader-elected replicas, block allocation, the hub dataplane.
    Hub(Box<hub::HubArgs>),
    /// Print a new private key (base64), like `wg genkey`.
    Keygen,
    /// Read a private key on stdin and print its public key, like `wg pubkey`.
    Pubkey,
    /// Write a QUIC identity (`<dir>/quic.key`, `<dir>/quic.crt`, self-signed for `--name`)
    /// and print its fingerprint: the value peers pin as `fingerprint`.
    QuicIdentity {
        /// Gateway name (certificate DNS name).
        #[arg(long)]
        name: String,
        /// Folder to write the key and certificate into.
        #[arg(long)]
        dir: std::path::PathBuf,
    },
    /// Print the version and exit.
    Version,
    /// Member agent (one per node): joins the hub, elects the gateway, runs the tunnels.
    Agent(Box<agent::AgentArgs>),
    /// containerd NRI plugin: gives every pod the parallel interface `eth-fleet`.
    Nri(Box<fleetboard_nri::NriArgs>),
    /// `clusterset.local` DNS server of multi-cluster services (ServiceImports of this cluster).
    Dns(fleetboard_dns::DnsArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Dataplane(args) => dataplane::main(args),
        Command::Hub(args) => hub::main(*args),
        Command::Keygen => keys::genkey(),
        Command::Pubkey => keys::pubkey(),
        Command::QuicIdentity { name, dir } => {
            let (key, cert, fp) = fleetboard_dataplane::quic::generate_identity_pem(&name)?;
            std::fs::create_dir_all(&dir)?;
            let key_path = dir.join("quic.key");
            std::fs::write(&key_path, key)?;
            std::fs::write(dir.join("quic.crt"), cert)?;
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o600))?;
            println!("{fp}");
            Ok(())
        }
        Command::Version => {
            println!("fleetboard {}", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
        Command::Agent(args) => agent::main(*args),
        Command::Dns(args) => {
            // hickory-server logs every query at info.
            init_tracing("info,hickory_server=warn");
            tokio::runtime::Runtime::new()?.block_on(fleetboard_dns::main(args))?;
            Ok(())
        }
        Command::Nri(args) => {
            init_tracing("info");
            tokio::runtime::Runtime::new()?.block_on(fleetboard_nri::run(*args))?;
            Ok(())
        }
    }
}
