//! `kubectl-peers` (`kubectl peers`): a table of every cluster of a FleetBoard cluster set with
//! its live tunnel state, read from the `Peer` objects in the hub's shared namespace.
//!
//! ```text
//! kubectl peers [--kubeconfig FILE] [--context NAME] [-n NAMESPACE] [-o table|wide|json|yaml] [--wide]
//! ```

mod fetch;
mod render;
mod summary;

use std::io::Write;
use std::path::PathBuf;

use clap::{Parser, ValueEnum};

/// Command line of `kubectl peers`.
#[derive(Debug, Parser)]
#[command(
    name = "kubectl-peers",
    version,
    about = "Every FleetBoard cluster with its live tunnel state (reads the hub's Peer objects)"
)]
struct Args {
    /// Kubeconfig of the hub cluster (default: $KUBECONFIG, then ~/.kube/config).
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// Kubeconfig context to use (default: the current context).
    #[arg(long)]
    context: Option<String>,
    /// The hub's shared namespace holding the Peer objects.
    #[arg(short = 'n', long, default_value = "fleetboard-system")]
    namespace: String,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t = Output::Table)]
    output: Output,
    /// More columns (the same as `-o wide`).
    #[arg(long)]
    wide: bool,
}

/// How the clusters are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    /// Aligned columns (like `kubectl get`).
    Table,
    /// The table with more columns.
    Wide,
    /// A JSON document `{"namespace": .., "clusters": [..]}`.
    Json,
    /// The same document as YAML.
    Yaml,
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args = Args::parse();
    if let Err(e) = run(args).await {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    let target = fetch::Target {
        kubeconfig: args.kubeconfig,
        context: args.context,
        namespace: args.namespace.clone(),
    };
    let peers = fetch::list_peers(&target).await?;
    let now = k8s_openapi::jiff::Timestamp::now().as_second();
    let summaries = summary::summarize(&peers, now);
    let text = match (args.output, args.wide) {
        (Output::Json, _) => render::json(&args.namespace, &summaries)?,
        (Output::Yaml, _) => render::yaml(&args.namespace, &summaries)?,
        (Output::Wide, _) | (Output::Table, true) => render::table(&summaries, true),
        (Output::Table, false) => render::table(&summaries, false),
    };
    if summaries.is_empty() && matches!(args.output, Output::Table | Output::Wide) {
        eprintln!(
            "No clusters have joined yet (no Peer objects in namespace {}).",
            args.namespace
        );
        return Ok(());
    }
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())?;
    out.flush()?;
    Ok(())
}
