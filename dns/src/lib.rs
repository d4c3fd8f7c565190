//! `fleetboard dns`: an authoritative DNS server for the `clusterset.local` zone of the MCS
//! API, built on hickory-server and fed by a kube watch of the member cluster's
//! ServiceImports and MCS EndpointSlices.
//!
//! - `<svc>.<ns>.svc.clusterset.local` A/AAAA: the ClusterSetIP(s), or the ready endpoint
//!   addresses of a headless import.
//! - `_<port>._<proto>.<svc>.<ns>.svc.clusterset.local` SRV: the service name (ClusterSetIP),
//!   or each named endpoint `<hostname>.<clusterid>.<svc>.<ns>.svc.clusterset.local` (headless).
//! - `<hostname>.<clusterid>.<svc>.<ns>.svc.clusterset.local` A/AAAA for headless endpoints.
//! - Any other name in the zone: NXDOMAIN; a known name without the asked type: NOERROR
//!   with no answer; names outside the zone: REFUSED.

pub mod metrics;
pub mod records;
pub mod server;

pub use metrics::DnsMetrics;
pub use records::{Answer, Records};
pub use server::{DnsArgs, DnsConfig, DnsError, main, run, serve};
