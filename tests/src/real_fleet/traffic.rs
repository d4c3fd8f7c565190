//! Pods talk by their parallel addresses (`eth-fleet`): each serves its own name over HTTP
//! (busybox `httpd`), and every other pod, in its own member or the other one, on the same node
//! or another, fetches it. Bytes that arrive are the serving pod's name, so a reply from the
//! wrong pod (an address clash between members) fails too.

use std::net::Ipv4Addr;

use crate::kube::Cluster;

use super::pods::exec;

/// The port every workload pod serves on.
const PORT: u16 = 8080;

/// A workload pod with its parallel address.
pub struct Endpoint<'c> {
    pub member: &'static str,
    pub cluster: &'c Cluster,
    pub pod: String,
    pub ip: Ipv4Addr,
}

/// Starts `httpd` in `pod`, answering its own name.
pub async fn serve_name(cluster: &Cluster, pod: &str) -> anyhow::Result<()> {
    // A retried exec finds httpd already listening: that is success.
    exec(
        cluster,
        pod,
        &format!(
            "mkdir -p /tmp/www && echo {pod} > /tmp/www/index.html && \
             (httpd -p {PORT} -h /tmp/www 2>&1 || netstat -ltn | grep -q ':{PORT} ')"
        ),
    )
    .await
    .map(drop)
}

/// Every endpoint fetches every other one's name; returns how many exchanges there were.
pub async fn all_pairs(endpoints: &[Endpoint<'_>]) -> anyhow::Result<usize> {
    let mut n = 0;
    for from in endpoints {
        for to in endpoints {
            if from.pod == to.pod {
                continue;
            }
            // busybox 1.35's `wget -T` crashes (SIGSEGV): `timeout` bounds each try instead.
            let got = exec(
                from.cluster,
                &from.pod,
                &format!("timeout 10 wget -q -O - http://{}:{PORT}/", to.ip),
            )
            .await?;
            anyhow::ensure!(
                got.trim() == to.pod,
                "{}/{} fetched http://{}:{PORT}/ ({}/{}) and got {got:?}",
                from.member,
                from.pod,
                to.ip,
                to.member,
                to.pod
            );
            n += 1;
        }
    }
    Ok(n)
}
