//! Fencing for leaders: what a Lease holder writes goes through a client that refuses every
//! write once the holder can no longer be sure it still holds the Lease.
//!
//! [`crate::leader::LeaderElection`] extends the [`Fence`] after each successful renewal to
//! *the moment that renewal was sent* plus the renew deadline (two thirds of the lease
//! duration), and closes it when it steps down, follows, or shuts down. A leader that is
//! frozen (SIGSTOP, a stalled VM, a long GC-like pause) finds its fence expired when it runs
//! again, by the monotonic clock, before its loop has even noticed: its writes fail with
//! [`NotLeader`] instead of racing the new leader's. The last third of the lease is the
//! margin for a write already sent: a fenced write that has not completed by then is
//! abandoned (client side; the API server may still apply it, the one window left, and
//! bounded by [`WRITE_TIMEOUT_DIVISOR`]).
//!
//! Reads pass unfenced: a standby may read everything.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use http::{Method, Request, Response};
use kube::client::Body;
use tokio::time::Instant;
use tower::BoxError;

/// A fenced write must complete within the lease duration divided by this (the margin
/// between the fence closing and another candidate taking the Lease).
pub const WRITE_TIMEOUT_DIVISOR: u32 = 3;

/// Whether the holder may act now (see the module docs). Clones share the state.
#[derive(Debug, Clone, Default)]
pub struct Fence {
    until: Arc<Mutex<Option<Instant>>>,
}

impl Fence {
    /// A closed fence.
    pub fn new() -> Self {
        Self::default()
    }

    /// True until the instant the last extension allowed.
    pub fn holds(&self) -> bool {
        self.holds_at(Instant::now())
    }

    fn holds_at(&self, now: Instant) -> bool {
        matches!(*self.lock(), Some(t) if now < t)
    }

    /// Open (or keep open) until `until`.
    pub fn extend(&self, until: Instant) {
        *self.lock() = Some(until);
    }

    /// Closed from now on.
    pub fn close(&self) {
        *self.lock() = None;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Instant>> {
        // A poisoned lock only means a panic elsewhere while holding it: the value stays valid.
        self.until.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The error of a write refused by a closed fence.
#[derive(Debug, thiserror::Error)]
#[error("not the leader any more (the Lease could not be renewed in time): write refused")]
pub struct NotLeader;

/// A client that sends reads as `client` does and writes only while `fence` holds, each
/// write bounded by `lease_duration / WRITE_TIMEOUT_DIVISOR`. Its requests carry the user
/// agent `fleetboard/<identity>`, so the API server's audit log tells candidates apart.
pub fn fenced_client(
    client: kube::Client,
    fence: Fence,
    lease_duration: Duration,
    identity: &str,
) -> kube::Client {
    let ns = client.default_namespace().to_string();
    let service = Fenced {
        inner: client,
        fence,
        write_timeout: lease_duration / WRITE_TIMEOUT_DIVISOR,
        user_agent: http::HeaderValue::from_str(&format!("fleetboard/{identity}")).ok(),
    };
    kube::Client::new(service, ns)
}

#[derive(Clone)]
struct Fenced {
    inner: kube::Client,
    fence: Fence,
    write_timeout: Duration,
    user_agent: Option<http::HeaderValue>,
}

fn is_read(m: &Method) -> bool {
    matches!(*m, Method::GET | Method::HEAD | Method::OPTIONS)
}

impl tower::Service<Request<Body>> for Fenced {
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<Response<Body>, BoxError>>;

    fn poll_ready(
        &mut self,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: Request<Body>) -> Self::Future {
        let client = self.inner.clone();
        if let Some(ua) = &self.user_agent {
            req.headers_mut()
                .insert(http::header::USER_AGENT, ua.clone());
        }
        if is_read(req.method()) {
            return Box::pin(async move { client.send(req).await.map_err(BoxError::from) });
        }
        if !self.fence.holds() {
            tracing::warn!(method = %req.method(), uri = %req.uri(), "write refused: not the leader");
            return Box::pin(async { Err(BoxError::from(NotLeader)) });
        }
        let timeout = self.write_timeout;
        Box::pin(async move {
            match tokio::time::timeout(timeout, client.send(req)).await {
                Ok(r) => r.map_err(BoxError::from),
                Err(_) => Err(BoxError::from(format!(
                    "write abandoned after {timeout:?} (the fence's margin)"
                ))),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fence_holds_only_until_its_extension() {
        let f = Fence::new();
        let now = Instant::now();
        assert!(!f.holds_at(now), "closed when new");
        f.extend(now + Duration::from_secs(10));
        assert!(f.holds_at(now + Duration::from_secs(9)));
        assert!(!f.holds_at(now + Duration::from_secs(10)));
        let shared = f.clone();
        shared.close();
        assert!(!f.holds_at(now), "clones share the state");
    }

    #[tokio::test]
    async fn writes_are_refused_when_the_fence_is_closed_reads_pass() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        // A client whose transport counts what reaches it and answers 200 {}.
        let reached = Arc::new(AtomicUsize::new(0));
        let counter = reached.clone();
        let transport = tower::service_fn(move |_req: Request<Body>| {
            counter.fetch_add(1, Ordering::SeqCst);
            async {
                Ok::<_, std::convert::Infallible>(
                    Response::builder()
                        .status(200)
                        .body(Body::from(b"{}".to_vec()))
                        .expect("response"),
                )
            }
        });
        let fence = Fence::new();
        let client = fenced_client(
            kube::Client::new(transport, "default"),
            fence.clone(),
            Duration::from_secs(15),
            "test",
        );
        let req = |m: Method| {
            Request::builder()
                .method(m)
                .uri("/api/v1/namespaces/default/configmaps/x")
                .body(Body::from(b"{}".to_vec()))
                .expect("request")
        };
        assert!(client.send(req(Method::GET)).await.is_ok(), "reads pass");
        let err = client.send(req(Method::PUT)).await.unwrap_err();
        assert!(err.to_string().contains("not the leader"), "{err}");
        assert_eq!(reached.load(Ordering::SeqCst), 1, "the write never left");
        fence.extend(Instant::now() + Duration::from_secs(5));
        assert!(
            client.send(req(Method::PATCH)).await.is_ok(),
            "writes pass while held"
        );
        assert_eq!(reached.load(Ordering::SeqCst), 2);
    }
}
