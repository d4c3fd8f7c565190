//! Property tests over the DNS query path (issue 18 item 7): arbitrary datagrams through
//! hickory's request parser and our `Handler`, no panic, and every parsed query answered
//! with one of the codes the handler documents, and counted once under that code. `PROPTEST_CASES` sets the cases per test.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use fleetboard_control::crd::mcs::ServiceImport;
use fleetboard_dns::Records;
use fleetboard_dns::server::Handler;
use hickory_server::net::NetError;
use hickory_server::net::runtime::TokioTime;
use hickory_server::net::xfer::Protocol;
use hickory_server::proto::op::{Message, ResponseCode};
use hickory_server::proto::rr::Record;
use hickory_server::proto::serialize::binary::BinEncoder;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponse;
use proptest::prelude::*;

/// Keeps the encoded response instead of sending it.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Option<Vec<u8>>>>);

#[async_trait::async_trait]
impl ResponseHandler for Capture {
    async fn send_response<'a>(
        &mut self,
        response: MessageResponse<
            '_,
            'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
        >,
    ) -> Result<ResponseInfo, NetError> {
        let mut bytes = Vec::new();
        let mut enc = BinEncoder::new(&mut bytes);
        let info = response.destructive_emit(&mut enc)?;
        *self.0.lock().unwrap() = Some(bytes);
        Ok(info)
    }
}

fn handler() -> Handler {
    let import: ServiceImport = serde_json::from_value(serde_json::json!({
        "apiVersion": "multicluster.x-k8s.io/v1alpha1", "kind": "ServiceImport",
        "metadata": {"name": "web", "namespace": "ns"},
        "spec": {"type": "ClusterSetIP", "ips": ["100.127.0.5"],
                 "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}
    }))
    .unwrap();
    Handler::new(Records::build("clusterset.local", &[import], &[]))
}

/// A query datagram close to a valid one: a header, a question whose labels are mostly zone
/// names, a type and class, sometimes truncated or with trailing bytes.
fn queryish() -> impl Strategy<Value = Vec<u8>> {
    let label = prop_oneof![
        Just(b"web".to_vec()),
        Just(b"ns".to_vec()),
        Just(b"svc".to_vec()),
        Just(b"clusterset".to_vec()),
        Just(b"local".to_vec()),
        Just(b"_http".to_vec()),
        Just(b"_tcp".to_vec()),
        proptest::collection::vec(any::<u8>(), 0..12),
    ];
    let qtype = prop_oneof![Just(1u16), Just(28), Just(33), Just(255), any::<u16>()];
    (
        any::<[u8; 4]>(),
        proptest::collection::vec(label, 0..8),
        prop_oneof![Just(1u16), 0u16..4],
        qtype,
        prop_oneof![Just(1u16), any::<u16>()],
        prop_oneof![3 => Just(None), 1 => Just(Some(0xc0u8)), 1 => any::<u8>().prop_map(Some)],
        proptest::collection::vec(any::<u8>(), 0..4),
    )
        .prop_map(|(head, labels, qd, qtype, class, end, tail)| {
            let mut p = vec![head[0], head[1], head[2] & 0x7f, head[3]];
            p.extend_from_slice(&qd.to_be_bytes());
            p.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
            for l in labels {
                p.push(l.len() as u8);
                p.extend_from_slice(&l);
            }
            match end {
                None => p.push(0),
                Some(b) => p.extend_from_slice(&[b, 12]),
            }
            p.extend_from_slice(&qtype.to_be_bytes());
            p.extend_from_slice(&class.to_be_bytes());
            p.extend_from_slice(&tail);
            p
        })
}

proptest! {
    #[test]
    fn dns_queries_never_panic(
        data in prop_oneof![proptest::collection::vec(any::<u8>(), 0..600), queryish()],
        tcp in any::<bool>(),
    ) {
        let src: SocketAddr = "192.0.2.7:5353".parse().unwrap();
        let protocol = if tcp { Protocol::Tcp } else { Protocol::Udp };
        // hickory drops what it cannot parse (no answer, nothing counted by us).
        let Ok(request) = Request::from_bytes(data.clone(), src, protocol) else {
            return Ok(());
        };
        let capture = Capture::default();
        let h = handler();
        let info = futures::executor::block_on(
            h.handle_request::<_, TokioTime>(&request, capture.clone()),
        );
        // Counted once, under the code it was answered with (rejections included).
        prop_assert_eq!(h.metrics().responses(info.response_code), 1);
        prop_assert!(
            matches!(
                info.response_code,
                ResponseCode::NoError
                    | ResponseCode::NXDomain
                    | ResponseCode::Refused
                    | ResponseCode::FormErr
                    | ResponseCode::ServFail
            ),
            "{:?}",
            info.response_code
        );
        prop_assert_eq!(info.id, request.metadata.id);
        // What was sent parses back as a response to the same id.
        let sent = capture.0.lock().unwrap().take();
        if let Some(bytes) = sent {
            let m = Message::from_vec(&bytes).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(m.metadata.id, request.metadata.id);
            prop_assert_eq!(m.metadata.response_code, info.response_code);
        } else {
            prop_assert_eq!(info.response_code, ResponseCode::ServFail);
        }
    }
}
