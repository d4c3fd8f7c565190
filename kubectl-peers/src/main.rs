//! `kubectl-peers` (`kubectl peers`): a table of every cluster of a FleetBoard cluster set with
//! its live tunnel state, read from the `Peer` objects in the hub's shared namespace; and the
//! membership of a cluster: `join` gives a new member its own identity on the hub and prints
//! the member's install, `remove` revokes it. Run it with the hub admin's kubeconfig.
//!
//! ```text
//! kubectl peers [--kubeconfig FILE] [--context NAME] [-n NAMESPACE] [-o table|wide|json|yaml] [--wide]
//!
//! kubectl peers join <cluster-id> [-n NAMESPACE] [--token-ttl DURATION] [--max-exports N]
//!     [--hub-url URL] [--transport wg|quic] [--chart REF] [--version V] [-o text|json]
//! kubectl peers remove <cluster-id> [-n NAMESPACE] [--wait-timeout DURATION]
//! ```
//!
//! `-n` is the hub's shared namespace (default `fleetboard-system`); `--kubeconfig`,
//! `--context` and `-n` go before or after the subcommand.
//!
//! `join` creates (idempotently) the member's namespace `fleetboard-member-<id>` on the hub with
//! its ServiceAccount, bindings and export quota (`--max-exports`, default 256), requests a token
//! for it (`--token-ttl`, default 24h, at least 10m; units s, m, h, d) and prints to stdout the
//! command to run against the member cluster:
//!
//! ```text
//! helm install fleetboard-agent fleetboard/fleetboard-agent [--version V] \
//!   --namespace fleetboard-system --create-namespace \
//!   --set cluster.clusterID=<id> \
//!   --set hub.hubURL=<url> \
//!   --set hub.token=<token> \
//!   --set hub.caData=<base64 PEM CA> \
//!   --set hub.namespace=<hub namespace> \
//!   --set tunnel.transport=<wg|quic>
//! ```
//!
//! The hub URL is `--hub-url`, else the kubeconfig cluster's server; the CA its
//! certificate-authority(-data) (the line is left out without one); the transport `--transport`,
//! else the hub Peer's, else wg. Values are quoted for a POSIX shell where needed. To stderr: the
//! namespace and identity made, when the token expires, and that the token is a secret.
//! `-o json` prints `{"clusterId", "namespace", "user", "expires", "token", "hubURL", "caData",
//! "helm": [argv]}` instead.
//!
//! `remove` deletes the member's identity (its tokens are refused from then on), bindings, Peer
//! and namespace, prints each deleted object, then waits until the namespace is gone
//! (`--wait-timeout`, default 60s; 0: do not wait), printing how long revocation took. It
//! refuses the hub's own id. Errors print `error: ...` and exit 1 (bad arguments: 2).

mod cli;
mod fetch;
mod helm;
mod join;
mod remove;
mod render;
mod summary;

use std::io::Write;

use clap::{CommandFactory, Parser};

use cli::{Args, Command, Output};

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args = Args::parse();
    let output = match args.table_output() {
        Ok(o) => o,
        Err(problem) => Args::command()
            .error(clap::error::ErrorKind::ArgumentConflict, problem)
            .exit(),
    };
    let target = fetch::Target {
        kubeconfig: args.kubeconfig.clone(),
        context: args.context.clone(),
        namespace: args.namespace.clone(),
    };
    let result = match &args.command {
        None => table(&target, output).await,
        Some(Command::Join(join)) => join::run(&target, join).await,
        Some(Command::Remove(remove)) => remove::run(&target, remove).await,
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

/// `kubectl peers`: the table (or its JSON/YAML document).
async fn table(target: &fetch::Target, output: Output) -> anyhow::Result<()> {
    let peers = fetch::list_peers(target).await?;
    let now = k8s_openapi::jiff::Timestamp::now().as_second();
    let summaries = summary::summarize(&peers, now);
    let text = match output {
        Output::Json => render::json(&target.namespace, &summaries)?,
        Output::Yaml => render::yaml(&target.namespace, &summaries)?,
        Output::Wide => render::table(&summaries, true),
        Output::Table => render::table(&summaries, false),
    };
    if summaries.is_empty() && matches!(output, Output::Table | Output::Wide) {
        eprintln!(
            "No clusters have joined yet (no Peer objects in namespace {}).",
            target.namespace
        );
        return Ok(());
    }
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())?;
    out.flush()?;
    Ok(())
}
