//! The hickory-server request handler and the kube watch that feeds it.

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use fleetboard_control::crd::mcs::{LABEL_SERVICE_NAME, ServiceImport};
use fleetboard_control::health::Health;
use fleetboard_control::watch::cache;
use hickory_server::net::runtime::Time;
use hickory_server::proto::op::{Metadata, ResponseCode};
use hickory_server::proto::rr::rdata::{A, AAAA, SRV};
use hickory_server::proto::rr::{Name, RData, Record, RecordType};
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::reflector::Store;
use kube::{Api, Client};
use tokio::sync::Notify;

use crate::metrics::DnsMetrics;
use crate::records::Records;

/// TTL of every answer: short, endpoints move.
pub const TTL: u32 = 5;
/// Idle timeout of TCP clients.
const TCP_TIMEOUT: Duration = Duration::from_secs(10);
/// Response buffer per TCP connection.
const TCP_BUFFER: usize = 32;

/// Settings of `fleetboard dns`.
#[derive(Debug, Clone)]
pub struct DnsConfig {
    /// UDP and TCP address to serve on.
    pub listen: SocketAddr,
    /// The zone (default `clusterset.local`).
    pub zone: String,
}

/// Errors of the DNS server.
#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    /// Binding the listen address failed.
    #[error("binding {0}: {1}")]
    Bind(SocketAddr, std::io::Error),
    /// The server stopped with an error.
    #[error("dns server: {0}")]
    Server(String),
    /// No usable Kubernetes client configuration.
    #[error("kubernetes client: {0}")]
    Kube(String),
    /// The health endpoint could not be bound (names `--health-address`).
    #[error(transparent)]
    Health(#[from] fleetboard_control::health::HealthError),
}

/// Answers queries from the current [`Records`].
#[derive(Clone)]
pub struct Handler {
    records: Arc<RwLock<Arc<Records>>>,
    metrics: Arc<DnsMetrics>,
}

impl Handler {
    /// A handler serving `records` (replaced with [`Handler::set`]).
    pub fn new(records: Records) -> Self {
        Self::with_metrics(records, Arc::default())
    }

    /// A handler serving `records` that counts its responses in `metrics`.
    pub fn with_metrics(records: Records, metrics: Arc<DnsMetrics>) -> Self {
        Self {
            records: Arc::new(RwLock::new(Arc::new(records))),
            metrics,
        }
    }

    /// What it answered so far.
    pub fn metrics(&self) -> &DnsMetrics {
        &self.metrics
    }

    /// Swaps in new records.
    pub fn set(&self, records: Records) {
        if let Ok(mut r) = self.records.write() {
            *r = Arc::new(records);
        }
    }

    fn current(&self) -> Arc<Records> {
        self.records
            .read()
            .map(|r| r.clone())
            .unwrap_or_else(|e| e.into_inner().clone())
    }
}

#[async_trait::async_trait]
impl RequestHandler for Handler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        response: R,
    ) -> ResponseInfo {
        let info = self.answer(request, response).await;
        self.metrics.response(info.response_code);
        info
    }
}

impl Handler {
    /// Answers one request; a response that could not be sent is SERVFAIL (and counted).
    async fn answer<R: ResponseHandler>(&self, request: &Request, mut response: R) -> ResponseInfo {
        let builder = MessageResponseBuilder::from_message_request(request);
        let fail = |code: ResponseCode| {
            self.metrics.send_failure();
            let mut m = Metadata::response_from_request(&request.metadata);
            m.response_code = code;
            ResponseInfo::from(hickory_server::proto::op::Header {
                metadata: m,
                counts: Default::default(),
            })
        };
        let info = match request.request_info() {
            Ok(i) => i,
            Err(_) => {
                let msg = builder.error_msg(&request.metadata, ResponseCode::FormErr);
                return response
                    .send_response(msg)
                    .await
                    .unwrap_or_else(|_| fail(ResponseCode::ServFail));
            }
        };
        let qname: Name = info.query.original().name().clone();
        let qtype = info.query.query_type();
        let records = self.current();
        let name_str = qname.to_ascii();
        if !records.in_zone(&name_str) {
            let msg = builder.error_msg(&request.metadata, ResponseCode::Refused);
            return response
                .send_response(msg)
                .await
                .unwrap_or_else(|_| fail(ResponseCode::ServFail));
        }
        let Some(answer) = records.lookup(&name_str) else {
            let mut m = Metadata::response_from_request(&request.metadata);
            m.authoritative = true;
            m.response_code = ResponseCode::NXDomain;
            let msg = builder.build_no_records(m);
            return response
                .send_response(msg)
                .await
                .unwrap_or_else(|_| fail(ResponseCode::ServFail));
        };
        let mut out: Vec<Record> = Vec::new();
        for ip in &answer.addrs {
            match (ip, qtype) {
                (std::net::IpAddr::V4(a), RecordType::A | RecordType::ANY) => {
                    out.push(Record::from_rdata(qname.clone(), TTL, RData::A(A(*a))))
                }
                (std::net::IpAddr::V6(a), RecordType::AAAA | RecordType::ANY) => out.push(
                    Record::from_rdata(qname.clone(), TTL, RData::AAAA(AAAA(*a))),
                ),
                _ => {}
            }
        }
        if matches!(qtype, RecordType::SRV | RecordType::ANY) {
            for s in &answer.srv {
                if let Ok(target) = Name::from_ascii(format!("{}.", s.target)) {
                    out.push(Record::from_rdata(
                        qname.clone(),
                        TTL,
                        RData::SRV(SRV::new(0, 100, s.port, target)),
                    ));
                }
            }
        }
        let mut m = Metadata::response_from_request(&request.metadata);
        m.authoritative = true;
        m.response_code = ResponseCode::NoError;
        let msg = builder.build(m, out.iter(), [], [], []);
        response
            .send_response(msg)
            .await
            .unwrap_or_else(|_| fail(ResponseCode::ServFail))
    }
}

/// Serves the zone on `cfg.listen` (UDP and TCP) from the member cluster's ServiceImports and
/// MCS EndpointSlices until the server fails.
/// `health`, when given, is told when the server is ready (see [`serve_reporting`]).
/// Every response is counted in `metrics`.
pub async fn run(
    client: Client,
    cfg: DnsConfig,
    health: Option<Health>,
    metrics: Arc<DnsMetrics>,
) -> Result<(), DnsError> {
    let udp = tokio::net::UdpSocket::bind(cfg.listen)
        .await
        .map_err(|e| DnsError::Bind(cfg.listen, e))?;
    let tcp = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .map_err(|e| DnsError::Bind(cfg.listen, e))?;
    serve_reporting(client, udp, tcp, &cfg.zone, health, metrics).await
}

/// Like [`run`] on sockets the caller bound (e.g. port 0 in tests).
pub async fn serve(
    client: Client,
    udp: tokio::net::UdpSocket,
    tcp: tokio::net::TcpListener,
    zone: &str,
) -> Result<(), DnsError> {
    serve_reporting(client, udp, tcp, zone, None, Arc::default()).await
}

/// [`serve`], reporting readiness to `health`: ready once the ServiceImports and
/// EndpointSlices have been listed (before that every name would be NXDOMAIN); responses
/// counted in `metrics`.
pub async fn serve_reporting(
    client: Client,
    udp: tokio::net::UdpSocket,
    tcp: tokio::net::TcpListener,
    zone: &str,
    health: Option<Health>,
    metrics: Arc<DnsMetrics>,
) -> Result<(), DnsError> {
    let cfg = DnsConfig {
        listen: udp
            .local_addr()
            .map_err(|e| DnsError::Server(e.to_string()))?,
        zone: zone.to_string(),
    };
    let handler = Handler::with_metrics(Records::build(&cfg.zone, &[], &[]), metrics);
    let mut server = hickory_server::Server::new(handler.clone());
    server.register_socket(udp);
    server.register_listener(tcp, TCP_TIMEOUT, TCP_BUFFER);
    tracing::info!(listen = %cfg.listen, zone = %cfg.zone, "clusterset DNS serving");

    let wake = Arc::new(Notify::new());
    let imports: Store<ServiceImport> = cache(
        Api::all(client.clone()),
        None,
        "member API (service imports)",
        &wake,
    );
    let slices: Store<EndpointSlice> = cache(
        Api::all(client.clone()),
        Some(LABEL_SERVICE_NAME),
        "member API (endpoint slices)",
        &wake,
    );
    if let Some(h) = health {
        let (imports, slices) = (imports.clone(), slices.clone());
        let zone = cfg.zone.clone();
        tokio::spawn(async move {
            if imports.wait_until_ready().await.is_ok() && slices.wait_until_ready().await.is_ok() {
                h.set(true, &format!("serving {zone}"));
            }
        });
    }
    let zone = cfg.zone.clone();
    let feeder = tokio::spawn(async move {
        loop {
            wake.notified().await;
            tokio::time::sleep(Duration::from_millis(50)).await;
            let imps: Vec<ServiceImport> = imports.state().iter().map(|i| (**i).clone()).collect();
            let sl: Vec<EndpointSlice> = slices.state().iter().map(|s| (**s).clone()).collect();
            let r = Records::build(&zone, &imps, &sl);
            tracing::debug!(names = r.len(), "zone rebuilt");
            handler.set(r);
        }
    });
    let res = server.block_until_done().await;
    feeder.abort();
    res.map_err(|e| DnsError::Server(e.to_string()))
}

/// `fleetboard dns` flags (each also from env `FLEETBOARD_<FLAG>`).
#[derive(clap::Args, Debug, Clone)]
pub struct DnsArgs {
    /// UDP/TCP address to serve on.
    #[arg(long, env = "FLEETBOARD_LISTEN", default_value = "0.0.0.0:53")]
    pub listen: SocketAddr,
    /// The DNS zone of the cluster set.
    #[arg(long, env = "FLEETBOARD_ZONE", default_value = "clusterset.local")]
    pub zone: String,
    /// Kubeconfig of the member cluster (default: in-cluster / KUBECONFIG).
    #[arg(long, env = "FLEETBOARD_KUBECONFIG")]
    pub kubeconfig: Option<std::path::PathBuf>,
    /// Address of `/live` (200 from the start), `/ready` (200 once the zone's
    /// ServiceImports and EndpointSlices are listed) and `/metrics` (responses by code,
    /// `fleetboard_dns_responses_total`); none if unset.
    #[arg(long, env = "FLEETBOARD_HEALTH_ADDRESS", value_parser = fleetboard_control::health::parse_listen_address)]
    pub health_address: Option<SocketAddr>,
}

/// Runs `fleetboard dns` with `args`.
pub async fn main(args: DnsArgs) -> Result<(), DnsError> {
    let health = Health::new("listing ServiceImports and EndpointSlices");
    let metrics = Arc::new(DnsMetrics::default());
    if let Some(addr) = args.health_address {
        let render = metrics.clone();
        fleetboard_control::health::start_with_metrics(
            "--health-address",
            addr,
            health.clone(),
            None,
            Arc::new(move || render.render()),
        )
        .await?;
    }
    let client = match &args.kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path)
                .map_err(|e| DnsError::Kube(e.to_string()))?;
            let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
                .await
                .map_err(|e| DnsError::Kube(e.to_string()))?;
            Client::try_from(cfg).map_err(|e| DnsError::Kube(e.to_string()))?
        }
        None => Client::try_default()
            .await
            .map_err(|e| DnsError::Kube(e.to_string()))?,
    };
    run(
        client,
        DnsConfig {
            listen: args.listen,
            zone: args.zone,
        },
        Some(health),
        metrics,
    )
    .await
}
