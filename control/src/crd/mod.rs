//! Custom resources of FleetBoard, derived from Rust types, and their YAML for the charts.

pub mod peer;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

/// Every CRD of the hub chart.
pub fn all_crds() -> Vec<CustomResourceDefinition> {
    vec![peer::Peer::crd()]
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
    /// The CRDs shipped in the hub chart are exactly what the Rust types derive. Regenerate with
    /// `FLEETBOARD_BLESS=1 cargo test -p fleetboard-control crds_in_chart`.
    #[test]
    fn crds_in_chart_are_current() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../charts/fleetboard/crds/fleetboard.io_peers.yaml"
        );
        let want = format!(
            "# Generated from control/src/crd (cargo test -p fleetboard-control); do not edit.\n{}",
            super::all_crds_yaml().unwrap()
        );
        if std::env::var_os("FLEETBOARD_BLESS").is_some() {
            std::fs::write(path, &want).unwrap();
        }
        let have = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            have == want,
            "{path} is stale: run FLEETBOARD_BLESS=1 cargo test -p fleetboard-control crds_in_chart"
        );
    }
}
