//! Property tests over the NRI plugin's untrusted input (issue 18 item 7): arbitrary bytes
//! through the protobuf decode of the runtime's requests, then our validation of the pod in
//! them. No panic; a malformed pod is refused with INVALID_ARGUMENT and counted in
//! `malformed_requests`. `PROPTEST_CASES` sets the cases per test.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use fleetboard_nri::PluginConfig;
use fleetboard_nri::api::{
    self, LinuxNamespace, LinuxPodSandbox, PodSandbox, RunPodSandboxRequest, StateChangeEvent,
};
use fleetboard_nri::plugin::{FleetPlugin, PodTarget};
use proptest::prelude::*;
use protobuf::Message;

thread_local! {
    static RT: tokio::runtime::Runtime =
        tokio::runtime::Builder::new_current_thread().build().unwrap();
    static PLUGIN: Arc<FleetPlugin> = {
        let dir = std::env::temp_dir().join(format!("fleetboard-nri-fuzz-{}", std::process::id()));
        let cfg = PluginConfig {
            socket: dir.join("nri.sock"),
            plugin_name: "fleetboard".into(),
            plugin_index: "10".into(),
            pod_cidr: "100.64.1.0/24".parse().unwrap(),
            gateway: "100.64.1.1".parse().unwrap(),
            routes: vec!["100.64.0.0/10".parse().unwrap()],
            node_netns: None,
            pod_interface: "eth-fleet".into(),
            mtu: 1400,
            state_file: dir.join(format!("state-{:?}.json", std::thread::current().id())),
            own_namespace: "fleetboard-system".into(),
            reconnect: Duration::from_secs(1),
            metrics_address: None,
            kubeconfig: None,
            annotate_pods: false,
        };
        Arc::new(FleetPlugin::new(cfg).unwrap())
    };
}

/// A pod with fields close to what a runtime sends, or not.
fn podish() -> impl Strategy<Value = PodSandbox> {
    let id = prop_oneof![
        Just(String::new()),
        "[0-9a-f]{64}",
        ".{0,20}",
        "[ -~]{250,260}"
    ];
    let ns = prop_oneof![
        Just("default".to_string()),
        Just("fleetboard-system".to_string()),
        ".{0,10}"
    ];
    let ns_type = prop_oneof![
        Just("network".to_string()),
        Just("net".to_string()),
        ".{0,8}"
    ];
    let path = prop_oneof![
        Just(String::new()),
        Just("/nonexistent/netns/cni-1".to_string()),
        Just("relative/netns".to_string()),
        Just("/var/run/../netns/x".to_string()),
        Just("/run/netns/a b".to_string()),
        "/[a-z/]{0,20}",
        ".{0,20}",
    ];
    (
        id,
        ns,
        ".{0,10}",
        proptest::option::of(proptest::collection::vec((ns_type, path), 0..3)),
    )
        .prop_map(|(id, namespace, name, spaces)| PodSandbox {
            id,
            namespace,
            name,
            linux: spaces
                .map(|s| LinuxPodSandbox {
                    namespaces: s
                        .into_iter()
                        .map(|(type_, path)| LinuxNamespace {
                            type_,
                            path,
                            ..Default::default()
                        })
                        .collect(),
                    ..Default::default()
                })
                .into(),
            ..Default::default()
        })
}

/// The pod through the plugin's checks: a target the plugin refuses must be refused by
/// `handle_run` with INVALID_ARGUMENT and counted once; one it accepts is not counted.
/// (A pod whose network namespace exists would get a real interface: only its target is
/// checked.)
/// A request without a pod is refused and counted, exactly once.
fn check_no_pod() -> Result<(), TestCaseError> {
    PLUGIN.with(|plugin| {
        let before = plugin.metrics.malformed_requests.load(Ordering::Relaxed);
        let Err(ttrpc::Error::RpcStatus(s)) = plugin.need_pod(None, "RunPodSandbox") else {
            return Err(TestCaseError::fail("a request without a pod was accepted"));
        };
        prop_assert_eq!(s.code(), ttrpc::Code::INVALID_ARGUMENT);
        prop_assert_eq!(
            plugin.metrics.malformed_requests.load(Ordering::Relaxed),
            before + 1
        );
        Ok(())
    })
}

fn check_pod(pod: &PodSandbox) -> Result<(), TestCaseError> {
    PLUGIN.with(|plugin| {
        let target = plugin.target(pod);
        if matches!(target, Ok(PodTarget::Netns(_))) {
            return Ok(());
        }
        let before = plugin.metrics.malformed_requests.load(Ordering::Relaxed);
        let run = RT.with(|rt| rt.block_on(plugin.handle_run(pod)));
        let after = plugin.metrics.malformed_requests.load(Ordering::Relaxed);
        match target {
            Err(_) => {
                prop_assert_eq!(after, before + 1);
                let Err(ttrpc::Error::RpcStatus(s)) = run else {
                    return Err(TestCaseError::fail(format!("{run:?}")));
                };
                prop_assert_eq!(s.code(), ttrpc::Code::INVALID_ARGUMENT);
            }
            Ok(_) => {
                prop_assert_eq!(after, before);
                prop_assert!(run.is_ok(), "{:?}", run);
            }
        }
        // Release refuses exactly the pods whose id is malformed, before touching anything.
        let id_only = PodSandbox {
            id: pod.id.clone(),
            ..Default::default()
        };
        if plugin.target(&id_only).is_err() {
            let before = plugin.metrics.malformed_requests.load(Ordering::Relaxed);
            let rel = RT.with(|rt| rt.block_on(plugin.handle_release(&id_only)));
            prop_assert!(rel.is_err());
            prop_assert_eq!(
                plugin.metrics.malformed_requests.load(Ordering::Relaxed),
                before + 1
            );
        }
        Ok(())
    })
}

proptest! {
    #[test]
    fn nri_request_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..400)) {
        // Every request the plugin serves, decoded from the same bytes.
        let _ = api::ConfigureRequest::parse_from_bytes(&data);
        let _ = api::SynchronizeRequest::parse_from_bytes(&data);
        let _ = api::StopPodSandboxRequest::parse_from_bytes(&data);
        let _ = api::RemovePodSandboxRequest::parse_from_bytes(&data);
        let _ = api::Empty::parse_from_bytes(&data);
        let pods = [
            StateChangeEvent::parse_from_bytes(&data).ok().map(|r| r.pod.into_option()),
            RunPodSandboxRequest::parse_from_bytes(&data).ok().map(|r| r.pod.into_option()),
            api::StopPodSandboxRequest::parse_from_bytes(&data).ok().map(|r| r.pod.into_option()),
        ];
        for pod in pods.into_iter().flatten() {
            match pod {
                Some(pod) => check_pod(&pod)?,
                None => check_no_pod()?,
            }
        }
    }

    #[test]
    fn nri_pods_are_validated_and_counted(pod in podish(), mangle in proptest::option::of((any::<usize>(), any::<u8>()))) {
        // Encoded as the runtime would, sometimes with one byte changed, and decoded again.
        let req = RunPodSandboxRequest { pod: Some(pod).into(), ..Default::default() };
        let mut bytes = req.write_to_bytes().unwrap();
        if let Some((i, b)) = mangle
            && !bytes.is_empty()
        {
            let i = i % bytes.len();
            bytes[i] = b;
        }
        if let Ok(r) = RunPodSandboxRequest::parse_from_bytes(&bytes)
            && let Some(pod) = r.pod.as_ref()
        {
            check_pod(pod)?;
        }
    }
}
