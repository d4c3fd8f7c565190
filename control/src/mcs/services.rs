//! ServiceImports and their MCS EndpointSlices as the dataplane's `services`.

use std::net::IpAddr;

use fleetboard_dataplane_core::service_nat::{
    Protocol, ServiceConfig, ServiceEndpointConfig, ServicePortConfig,
};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::ResourceExt;

use crate::crd::mcs::{LABEL_SERVICE_NAME, LABEL_SOURCE_CLUSTER, ServiceImport, ServiceImportType};

/// One [`ServiceConfig`] per ClusterSetIP of every ClusterSetIP import (headless imports have
/// no VIP and get none): its TCP/UDP ports mapped to the endpoints' port, and the ready
/// endpoints of the same IP family (`local` when they come from `local_cluster`). Endpoint
/// ports are taken from the first slice that names the port (clusters normally agree).
pub fn dataplane_services(
    imports: &[ServiceImport],
    slices: &[EndpointSlice],
    local_cluster: &str,
) -> Vec<ServiceConfig> {
    let mut out = Vec::new();
    for imp in imports {
        if imp.spec.type_ != ServiceImportType::ClusterSetIP {
            continue;
        }
        let ns = imp.namespace().unwrap_or_default();
        let name = imp.name_any();
        let mine: Vec<&EndpointSlice> = slices
            .iter()
            .filter(|s| {
                s.namespace().as_deref() == Some(ns.as_str())
                    && s.labels().get(LABEL_SERVICE_NAME) == Some(&name)
            })
            .collect();
        for vip in imp.spec.ips.iter().filter_map(|s| s.parse::<IpAddr>().ok()) {
            let ports: Vec<ServicePortConfig> = imp
                .spec
                .ports
                .iter()
                .filter_map(|p| {
                    let protocol = match p.protocol() {
                        "TCP" => Protocol::Tcp,
                        "UDP" => Protocol::Udp,
                        _ => return None,
                    };
                    let target = mine
                        .iter()
                        .flat_map(|s| s.ports.iter().flatten())
                        .find(|ep| ep.name.clone().unwrap_or_default() == p.name)
                        .and_then(|ep| ep.port)
                        .unwrap_or(p.port);
                    Some(ServicePortConfig {
                        protocol,
                        port: u16::try_from(p.port).ok()?,
                        target_port: u16::try_from(target).ok()?,
                    })
                })
                .collect();
            let mut endpoints: Vec<ServiceEndpointConfig> = mine
                .iter()
                .flat_map(|s| {
                    let local = s.labels().get(LABEL_SOURCE_CLUSTER).map(String::as_str)
                        == Some(local_cluster);
                    s.endpoints
                        .iter()
                        .filter(|e| e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true))
                        .flat_map(move |e| e.addresses.iter().map(move |a| (a.clone(), local)))
                })
                .filter_map(|(a, local)| {
                    let address: IpAddr = a.parse().ok()?;
                    (address.is_ipv6() == vip.is_ipv6())
                        .then_some(ServiceEndpointConfig { address, local })
                })
                .collect();
            endpoints.sort_by_key(|e| e.address);
            endpoints.dedup_by_key(|e| e.address);
            out.push(ServiceConfig {
                name: format!("{ns}/{name}"),
                vip,
                ports,
                endpoints,
            });
        }
    }
    out
}
