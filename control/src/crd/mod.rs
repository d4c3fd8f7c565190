//! Custom resources of FleetBoard, derived from Rust types, and their YAML for the charts.

pub mod exported_service;
pub mod mcs;
pub mod peer;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

/// Every CRD FleetBoard defines (hub and member charts).
pub fn all_crds() -> Vec<CustomResourceDefinition> {
    let mut crds = hub_crds();
    crds.extend(member_crds());
    crds
}

/// The CRDs of the hub chart.
pub fn hub_crds() -> Vec<CustomResourceDefinition> {
    vec![peer::Peer::crd(), exported_service::ExportedService::crd()]
}

/// The CRDs of the member (agent) chart: the MCS API.
pub fn member_crds() -> Vec<CustomResourceDefinition> {
    vec![mcs::service_export_crd(), mcs::service_import_crd()]
}

/// One CRD as a chart file: a generated-header line and the YAML document.
pub fn crd_file(crd: &CustomResourceDefinition) -> Result<String, serde_yaml::Error> {
    Ok(format!(
        "# Generated from control/src/crd (cargo test -p fleetboard-control); do not edit.\n---\n{}",
        serde_yaml::to_string(crd)?
    ))
}

/// Every CRD FleetBoard installs, as YAML documents (what `charts/*/crds/` holds).
pub fn all_crds_yaml() -> Result<String, serde_yaml::Error> {
    let mut out = String::new();
    for crd in all_crds() {
        out.push_str("---\n");
        out.push_str(&serde_yaml::to_string(&crd)?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use kube::CustomResourceExt;

    /// The CRDs shipped in the hub chart are exactly what the Rust types derive. Regenerate with
    /// `FLEETBOARD_BLESS=1 cargo test -p fleetboard-control crds_in_chart`.
    #[test]
    fn crds_in_chart_are_current() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../charts/fleetboard/crds/fleetboard.io_peers.yaml"
        );
        let want = super::crd_file(&super::peer::Peer::crd()).unwrap();
        if std::env::var_os("FLEETBOARD_BLESS").is_some() {
            std::fs::write(path, &want).unwrap();
        }
        let have = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            have == want,
            "{path} is stale: run FLEETBOARD_BLESS=1 cargo test -p fleetboard-control crds_in_chart"
        );
    }

    /// The MCS CRDs (agent chart) and the hub's ExportedService CRD are what the Rust types
    /// derive (same regeneration as above).
    #[test]
    fn mcs_crds_in_charts_are_current() {
        let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../charts");
        for (file, crd) in [
            (
                "fleetboard/crds/fleetboard.io_exportedservices.yaml",
                super::exported_service::ExportedService::crd(),
            ),
            (
                "fleetboard-agent/crds/multicluster.x-k8s.io_serviceexports.yaml",
                super::mcs::service_export_crd(),
            ),
            (
                "fleetboard-agent/crds/multicluster.x-k8s.io_serviceimports.yaml",
                super::mcs::service_import_crd(),
            ),
        ] {
            let path = format!("{root}/{file}");
            let want = super::crd_file(&crd).unwrap();
            if std::env::var_os("FLEETBOARD_BLESS").is_some() {
                let p = std::path::Path::new(&path);
                std::fs::create_dir_all(p.parent().unwrap()).unwrap();
                std::fs::write(p, &want).unwrap();
            }
            let have = std::fs::read_to_string(&path).unwrap_or_default();
            assert!(
                have == want,
                "{path} is stale: run FLEETBOARD_BLESS=1 cargo test -p fleetboard-control crds_in_chart"
            );
        }
    }
}
