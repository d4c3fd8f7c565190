//! containerd NRI plugin of FleetBoard: every pod gets a parallel interface `eth-fleet` with an
//! address from the node's sub-block, routed to the dataplane.
//!
//! - [`api`]: NRI protocol types and ttrpc stubs (generated, see `nri/scripts/regen-api.sh`).
//! - [`mux`]: NRI's connection multiplexer on the one unix socket.
//! - [`config`]: `fleetboard nri` arguments and their validation.
//! - [`ipam`]: crash-safe address management.
//! - [`podnet`]: the veth pair, addresses and routes.
//! - [`plugin`]: Configure, Synchronize and the pod sandbox events.
//! - [`connection`]: registration and reconnection.
//! - [`metrics`]: counters and the `/metrics`, `/live`, `/ready` server.
//! - [`annotate`]: the pods' `router.fleetboard.io/parallel_ip` annotation.
//! - [`runtime`]: the runtime's side of the protocol, for tests and tools.

pub mod annotate;
pub mod api;
pub mod config;
pub mod connection;
pub mod ipam;
pub mod metrics;
pub mod mux;
pub mod node_cidr;
pub mod plugin;
pub mod podnet;
pub mod runtime;

use std::sync::Arc;

pub use config::{ConfigError, NriArgs, PluginConfig};

/// Why the plugin stopped.
#[derive(Debug, thiserror::Error)]
pub enum NriError {
    /// A flag is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The IPAM state cannot be used.
    #[error(transparent)]
    Ipam(#[from] ipam::IpamError),
    /// No Kubernetes client for the pod annotations.
    #[error(transparent)]
    Annotate(#[from] annotate::AnnotateError),
    /// The node's sub-block could not be read from its Node object.
    #[error(transparent)]
    NodeCidr(#[from] node_cidr::NodeCidrError),
}

/// Runs the plugin until SIGINT/SIGTERM: validates `args`, loads the IPAM state, then keeps a
/// registered connection to the runtime, reconnecting whenever it goes away. Pods keep their
/// interfaces when the plugin stops; the state file carries their addresses to the next run.
pub async fn run(mut args: NriArgs) -> Result<(), NriError> {
    if args.pod_cidr.is_none()
        && let Some(node) = args.node_name.clone()
    {
        let client = annotate::client(args.kubeconfig.as_deref())
            .await?
            .ok_or_else(|| node_cidr::NodeCidrError::NoApi(node.clone()))?;
        let every = std::time::Duration::from_secs(2);
        let cidr = tokio::select! {
            r = node_cidr::wait(&client, &node, every) => r?,
            () = stop_signal() => return Ok(()),
        };
        tracing::info!(node, pod_cidr = %cidr, "the node's sub-block");
        args.pod_cidr = Some(cidr);
        // The tunnel CIDR is the hub's (`fleetboard hub --tunnel-cidr`), copied by the agent
        // from the hub's Peer: a member never guesses it.
        let hub = tokio::select! {
            r = node_cidr::wait_tunnel_cidr(&client, &node, every) => r?,
            () = stop_signal() => return Ok(()),
        };
        match args.tunnel_cidr {
            Some(flag) if flag.trunc() != hub.trunc() => {
                return Err(ConfigError {
                    field: "--tunnel-cidr",
                    reason: format!(
                        "{flag} conflicts with the hub's tunnel CIDR {hub} (Node annotation {}): leave it out, members learn it from the hub",
                        node_cidr::TUNNEL_CIDR_ANNOTATION
                    ),
                }
                .into());
            }
            _ => {}
        }
        tracing::info!(node, tunnel_cidr = %hub, "the hub's tunnel CIDR");
        args.tunnel_cidr = Some(hub);
    }
    let cfg = args.validate()?;
    let listener = match cfg.metrics_address {
        Some(addr) => Some(metrics::bind(addr).await?),
        None => None,
    };
    let kube = if cfg.annotate_pods {
        annotate::client(cfg.kubeconfig.as_deref()).await?
    } else {
        None
    };
    let plugin = Arc::new(plugin::FleetPlugin::new(cfg)?);
    match kube {
        Some(client) => {
            tracing::info!(
                annotation = plugin::PARALLEL_IP_ANNOTATION,
                "publishing pods' parallel addresses"
            );
            plugin.enable_annotations(client);
        }
        None => tracing::info!("no Kubernetes API configured: pods are not annotated"),
    }
    if let Some(l) = listener {
        tracing::info!(address = ?l.local_addr().ok(), "serving /metrics, /live, /ready");
        tokio::spawn(metrics::serve(l, plugin.clone()));
    }
    tokio::select! {
        () = serve(plugin) => Ok(()),
        () = stop_signal() => {
            tracing::info!("stopping on signal");
            Ok(())
        }
    }
}

async fn stop_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

async fn serve(plugin: Arc<plugin::FleetPlugin>) {
    let reconnect = plugin.config().reconnect;
    let mut last_error = String::new();
    loop {
        match connection::session(&plugin).await {
            Ok(reason) => {
                last_error.clear();
                tracing::warn!(%reason, "NRI connection ended; reconnecting");
            }
            Err(e) => {
                let msg = e.to_string();
                if msg != last_error {
                    tracing::warn!(error = %msg, "NRI connection failed; retrying every {reconnect:?}");
                    last_error = msg;
                }
            }
        }
        tokio::time::sleep(reconnect).await;
    }
}
