//! The zone's records, computed from ServiceImports and EndpointSlices (pure).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use fleetboard_control::crd::mcs::{
    LABEL_SERVICE_NAME, LABEL_SOURCE_CLUSTER, ServiceImport, ServiceImportType,
};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::ResourceExt;

/// One SRV target.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Srv {
    /// Port.
    pub port: u16,
    /// Target name (absolute, lowercase, without the final dot).
    pub target: String,
}

/// What a name holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Answer {
    /// A and AAAA addresses.
    pub addrs: BTreeSet<IpAddr>,
    /// SRV records.
    pub srv: BTreeSet<Srv>,
}

/// Every name of the zone (lowercase, without the final dot).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Records {
    /// The zone, e.g. `clusterset.local`.
    pub zone: String,
    names: BTreeMap<String, Answer>,
}

impl Records {
    /// The records of `imports` and their MCS `slices` in `zone`.
    pub fn build(zone: &str, imports: &[ServiceImport], slices: &[EndpointSlice]) -> Self {
        let zone = zone.trim_end_matches('.').to_ascii_lowercase();
        let mut names: BTreeMap<String, Answer> = BTreeMap::new();
        for imp in imports {
            let ns = imp.namespace().unwrap_or_default();
            let svc = imp.name_any();
            let base = format!("{svc}.{ns}.svc.{zone}").to_ascii_lowercase();
            let mine: Vec<&EndpointSlice> = slices
                .iter()
                .filter(|s| {
                    s.namespace().as_deref() == Some(ns.as_str())
                        && s.labels().get(LABEL_SERVICE_NAME) == Some(&svc)
                })
                .collect();
            let headless = imp.spec.type_ == ServiceImportType::Headless;
            let mut service = Answer::default();
            let mut host_targets: Vec<String> = Vec::new();
            if headless {
                for s in &mine {
                    let cluster = s
                        .labels()
                        .get(LABEL_SOURCE_CLUSTER)
                        .cloned()
                        .unwrap_or_default();
                    for e in &s.endpoints {
                        if !e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true) {
                            continue;
                        }
                        let addrs: Vec<IpAddr> =
                            e.addresses.iter().filter_map(|a| a.parse().ok()).collect();
                        service.addrs.extend(addrs.iter().copied());
                        if let Some(h) = &e.hostname
                            && !cluster.is_empty()
                        {
                            let name = format!("{h}.{cluster}.{base}").to_ascii_lowercase();
                            names.entry(name.clone()).or_default().addrs.extend(addrs);
                            host_targets.push(name);
                        }
                    }
                }
            } else {
                service
                    .addrs
                    .extend(imp.spec.ips.iter().filter_map(|a| a.parse::<IpAddr>().ok()));
            }
            for p in &imp.spec.ports {
                let Ok(port) = u16::try_from(p.port) else {
                    continue;
                };
                if p.name.is_empty() {
                    continue;
                }
                let srv_name = format!("_{}._{}.{base}", p.name, p.protocol().to_ascii_lowercase())
                    .to_ascii_lowercase();
                let entry = names.entry(srv_name).or_default();
                if headless && !host_targets.is_empty() {
                    // The endpoints' port: from the slices, by port name.
                    let target_port = mine
                        .iter()
                        .flat_map(|s| s.ports.iter().flatten())
                        .find(|ep| ep.name.as_deref() == Some(p.name.as_str()))
                        .and_then(|ep| ep.port)
                        .and_then(|x| u16::try_from(x).ok())
                        .unwrap_or(port);
                    for t in &host_targets {
                        entry.srv.insert(Srv {
                            port: target_port,
                            target: t.clone(),
                        });
                    }
                } else {
                    entry.srv.insert(Srv {
                        port,
                        target: base.clone(),
                    });
                }
            }
            let e = names.entry(base).or_default();
            e.addrs.extend(service.addrs);
        }
        Self { zone, names }
    }

    /// The records of `name` (any case, with or without the final dot): `None` = NXDOMAIN.
    pub fn lookup(&self, name: &str) -> Option<&Answer> {
        let n = name.trim_end_matches('.').to_ascii_lowercase();
        self.names.get(&n)
    }

    /// True when `name` is in the zone (else the server refuses it).
    pub fn in_zone(&self, name: &str) -> bool {
        let n = name.trim_end_matches('.').to_ascii_lowercase();
        n == self.zone || n.ends_with(&format!(".{}", self.zone))
    }

    /// Number of names.
    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// True when there are no names.
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn slice(ns: &str, svc: &str, cluster: &str, eps: serde_json::Value) -> EndpointSlice {
        serde_json::from_value(json!({
            "metadata": {"name": format!("{svc}-{cluster}"), "namespace": ns, "labels": {
                LABEL_SERVICE_NAME: svc, LABEL_SOURCE_CLUSTER: cluster}},
            "addressType": "IPv4", "endpoints": eps,
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]
        }))
        .unwrap()
    }

    fn import(ns: &str, name: &str, type_: &str, ips: &[&str]) -> ServiceImport {
        serde_json::from_value(json!({
            "apiVersion": "multicluster.x-k8s.io/v1alpha1", "kind": "ServiceImport",
            "metadata": {"name": name, "namespace": ns},
            "spec": {"type": type_, "ips": ips, "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}
        }))
        .unwrap()
    }

    #[test]
    fn clusterset_ip_headless_srv_and_hostnames() {
        let imports = [
            import("ns", "web", "ClusterSetIP", &["100.127.0.5"]),
            import("ns", "db", "Headless", &[]),
        ];
        let slices = [
            slice("ns", "web", "a", json!([{"addresses": ["100.64.1.5"]}])),
            slice(
                "ns",
                "db",
                "a",
                json!([
                {"addresses": ["100.64.1.6"], "hostname": "db-0"},
                {"addresses": ["100.64.1.7"], "hostname": "db-1", "conditions": {"ready": false}}]),
            ),
            slice(
                "ns",
                "db",
                "b",
                json!([{"addresses": ["100.64.2.6"], "hostname": "db-0"}]),
            ),
        ];
        let r = Records::build("clusterset.local.", &imports, &slices);
        let web = r.lookup("WEB.ns.svc.clusterset.local.").unwrap();
        assert_eq!(
            web.addrs.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
            ["100.127.0.5"]
        );
        let db = r.lookup("db.ns.svc.clusterset.local").unwrap();
        assert_eq!(
            db.addrs.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
            ["100.64.1.6", "100.64.2.6"],
            "ready endpoints only"
        );
        let host = r.lookup("db-0.b.db.ns.svc.clusterset.local").unwrap();
        assert_eq!(host.addrs.iter().next().unwrap().to_string(), "100.64.2.6");
        let srv = r.lookup("_http._tcp.web.ns.svc.clusterset.local").unwrap();
        assert_eq!(srv.srv.iter().next().unwrap().port, 80);
        let srv = r.lookup("_http._tcp.db.ns.svc.clusterset.local").unwrap();
        assert_eq!(srv.srv.len(), 2);
        assert!(srv.srv.iter().all(|s| s.port == 8080));
        assert!(r.lookup("nope.ns.svc.clusterset.local").is_none());
        assert!(r.in_zone("x.clusterset.local") && !r.in_zone("example.com"));
    }

    #[test]
    fn dual_stack_vips_and_other_namespaces() {
        let imports = [import(
            "ns",
            "web",
            "ClusterSetIP",
            &["100.127.0.5", "fd00:127::5"],
        )];
        // A slice of a same-named service in another namespace is not this import's.
        let slices = [slice(
            "other",
            "web",
            "a",
            json!([{"addresses": ["100.64.9.9"]}]),
        )];
        let r = Records::build("clusterset.local", &imports, &slices);
        let web = r.lookup("web.ns.svc.clusterset.local").unwrap();
        let got: Vec<String> = web.addrs.iter().map(|a| a.to_string()).collect();
        assert_eq!(got, ["100.127.0.5", "fd00:127::5"]);
        assert!(r.lookup("web.other.svc.clusterset.local").is_none());
        // Hostnames exist only for headless imports.
        assert_eq!(r.len(), 2, "the service and its SRV name");
    }

    #[test]
    fn unnamed_ports_have_no_srv_and_bad_addresses_are_skipped() {
        let imp: ServiceImport = serde_json::from_value(json!({
            "apiVersion": "multicluster.x-k8s.io/v1alpha1", "kind": "ServiceImport",
            "metadata": {"name": "db", "namespace": "ns"},
            "spec": {"type": "Headless", "ports": [{"port": 5432, "protocol": "TCP"}]}
        }))
        .unwrap();
        let slices = [slice(
            "ns",
            "db",
            "a",
            json!([{"addresses": ["not-an-ip", "100.64.1.6"], "hostname": "db-0"}]),
        )];
        let r = Records::build("clusterset.local", &[imp], &slices);
        let db = r.lookup("db.ns.svc.clusterset.local").unwrap();
        assert_eq!(db.addrs.len(), 1);
        assert!(db.srv.is_empty());
        assert_eq!(r.len(), 2, "the service and one hostname, no SRV name");
        assert!(r.lookup("db-0.a.db.ns.svc.clusterset.local").is_some());
    }

    #[test]
    fn an_empty_zone_refuses_outside_names_only() {
        let r = Records::build("clusterset.local", &[], &[]);
        assert!(r.is_empty());
        assert!(r.in_zone("clusterset.local."));
        assert!(r.in_zone("a.b.svc.ClusterSet.Local"));
        assert!(!r.in_zone("xclusterset.local"));
        assert!(!r.in_zone("svc.cluster.local"));
    }
}
