//! What the DNS server answered, by response code, as Prometheus counters (rendered into
//! the `/metrics` of `--health-address`). A query outside the zone (REFUSED) or one hickory
//! parsed but we could not read (FORMERR) is a rejection; each is counted here.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

use hickory_server::proto::op::ResponseCode;

/// Response codes we answer with, in rendering order, with their label (as `dig` prints).
const CODES: [(ResponseCode, &str); 5] = [
    (ResponseCode::NoError, "NOERROR"),
    (ResponseCode::NXDomain, "NXDOMAIN"),
    (ResponseCode::Refused, "REFUSED"),
    (ResponseCode::FormErr, "FORMERR"),
    (ResponseCode::ServFail, "SERVFAIL"),
];

/// Responses by code; one more counter for answers that could not be sent.
#[derive(Debug, Default)]
pub struct DnsMetrics {
    responses: [AtomicU64; CODES.len()],
    send_failures: AtomicU64,
}

impl DnsMetrics {
    /// Counts one response with `code` (codes we never send are not counted).
    pub fn response(&self, code: ResponseCode) {
        if let Some(i) = CODES.iter().position(|(c, _)| *c == code) {
            self.responses[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Counts an answer the transport could not send.
    pub fn send_failure(&self) {
        self.send_failures.fetch_add(1, Ordering::Relaxed);
    }

    /// Responses with `code` so far.
    pub fn responses(&self, code: ResponseCode) -> u64 {
        CODES
            .iter()
            .position(|(c, _)| *c == code)
            .map_or(0, |i| self.responses[i].load(Ordering::Relaxed))
    }

    /// The Prometheus text exposition of these counters.
    pub fn render(&self) -> String {
        let mut out = String::from(
            "# HELP fleetboard_dns_responses_total DNS responses sent, by response code.\n\
             # TYPE fleetboard_dns_responses_total counter\n",
        );
        for ((_, label), n) in CODES.iter().zip(&self.responses) {
            let _ = writeln!(
                out,
                "fleetboard_dns_responses_total{{rcode=\"{}\"}} {}",
                label,
                n.load(Ordering::Relaxed)
            );
        }
        let _ = write!(
            out,
            "# HELP fleetboard_dns_send_failures_total Responses the transport could not send.\n\
             # TYPE fleetboard_dns_send_failures_total counter\n\
             fleetboard_dns_send_failures_total {}\n",
            self.send_failures.load(Ordering::Relaxed)
        );
        out
    }
}
