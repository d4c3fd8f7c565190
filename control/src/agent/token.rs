//! The member's hub token when it comes from a Secret (`--hub-token-secret`).
//!
//! Every agent reads the Secret of its member namespace at start, keeps the token in
//! `<state-dir>/hub-token` (mode 0600 from the start, replaced atomically) and watches the
//! Secret, rewriting the file whenever the token changes; the hub client reads that file
//! (kube-rs rereads a token file at least every 60 s). The gateway alone renews the token
//! ([`TokenKeeper::ensure_renewal`]): at half its life (or once it is `--hub-token-renew-after`
//! old) it requests a new token of the member's own ServiceAccount with the member's current
//! one ([`membership::request_token`]) and merge-patches the Secret, which every agent follows.
//!
//! The token itself never appears in a log line, an error or a `Debug` output.

use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::StreamExt;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::{WatchStreamExt, watcher};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::hub_client::{TokenSource, token_is_valid};
use super::{AgentConfig, AgentError, FIELD_MANAGER, HubError};
use crate::membership::{self, MembershipError};

/// The token file's name in the state directory.
pub const TOKEN_FILE: &str = "hub-token";
/// The key of the token in the Secret.
pub const TOKEN_KEY: &str = "token";
/// Default lifetime of a renewed token (`--hub-token-lifetime`).
pub const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(3600);
/// First retry delay of a failed renewal (doubled up to [`MAX_BACKOFF`], with jitter).
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
/// Longest retry delay of a failed renewal.
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// Renewals are at least this far apart, whatever the token says (no request storm from a
/// token whose times cannot be read).
const MIN_RENEW_SPACING: Duration = Duration::from_secs(1);

/// Why renewing the hub token failed.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// The hub did not give a new token.
    #[error("requesting a new hub token: {0}")]
    Request(#[from] MembershipError),
    /// The hub's answer is not a usable token.
    #[error("the hub returned an empty or malformed token")]
    Malformed,
    /// The Secret could not be updated.
    #[error("updating Secret {secret} with the renewed token: {source}")]
    Patch {
        /// `namespace/name`.
        secret: String,
        /// The error.
        source: kube::Error,
    },
}

/// When to renew a token issued at `iat` that expires at `exp` (seconds since the epoch,
/// [`membership::token_times`]), seen at `now`: at half its life, or once it is `renew_after`
/// old if that comes first; at once when that is past or the times are unknown.
pub fn renew_delay(times: Option<(i64, i64)>, now: i64, renew_after: Option<Duration>) -> Duration {
    let Some((exp, iat)) = times else {
        return Duration::ZERO;
    };
    if exp <= iat {
        return Duration::ZERO;
    }
    let mut at = iat + (exp - iat) / 2;
    if let Some(after) = renew_after {
        let after = i64::try_from(after.as_secs()).unwrap_or(i64::MAX);
        at = at.min(iat.saturating_add(after));
    }
    Duration::from_secs(u64::try_from(at.saturating_sub(now)).unwrap_or(0))
}

/// The delay before retry number `attempt` (0 first): 1 s doubling to 60 s, each drawn at
/// random in the upper half of its step so agents do not retry in lockstep.
pub fn backoff(attempt: u32) -> Duration {
    let step = FIRST_BACKOFF
        .saturating_mul(1u32.checked_shl(attempt.min(16)).unwrap_or(u32::MAX))
        .min(MAX_BACKOFF);
    let half = step / 2;
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
    );
    let fraction = (h.finish() >> 11) as f64 / (1u64 << 53) as f64;
    half + half.mul_f64(fraction)
}

/// Writes `token` to `path` atomically and durably ([`crate::atomic_file`]): a temporary
/// file beside it, created with mode 0600 (never readable by others, not even for a moment),
/// then renamed over `path`.
pub fn write_token_file(path: &Path, token: &str) -> std::io::Result<()> {
    crate::atomic_file::write(path, token.as_bytes(), 0o600)
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// The token held in the Secret, if usable.
fn secret_token(secret: &Secret) -> Option<String> {
    let bytes = &secret.data.as_ref()?.get(TOKEN_KEY)?.0;
    let token = std::str::from_utf8(bytes).ok()?.trim();
    token_is_valid(token).then(|| token.to_string())
}

/// The member's current hub token (the Secret's), mirrored in the token file.
struct HubToken {
    /// Member namespace of the Secret.
    namespace: String,
    /// The Secret's name.
    secret: String,
    /// The token file.
    file: PathBuf,
    /// The current token; written to `file` before it is published here.
    current: watch::Sender<String>,
}

impl fmt::Debug for HubToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HubToken")
            .field("namespace", &self.namespace)
            .field("secret", &self.secret)
            .field("file", &self.file)
            .field("current", &"<redacted>")
            .finish()
    }
}

impl HubToken {
    /// Makes `token` the current one (file first) unless it already is. False when the file
    /// could not be written (logged; the next change or renewal tries again).
    fn set(&self, token: &str) -> bool {
        let mut ok = true;
        self.current.send_if_modified(|cur| {
            if cur == token {
                return false;
            }
            match write_token_file(&self.file, token) {
                Ok(()) => {
                    *cur = token.to_string();
                    true
                }
                Err(e) => {
                    tracing::warn!(file = %self.file.display(), error = %e, "cannot write the hub token file");
                    ok = false;
                    false
                }
            }
        });
        ok
    }
}

/// Keeps the token file in step with the Secret (every agent) and renews the token while this
/// agent is the gateway. Inert when the token does not come from a Secret. Dropping it stops
/// both.
#[derive(Debug)]
pub(super) struct TokenKeeper {
    token: Option<Arc<HubToken>>,
    cluster_id: String,
    lifetime: Duration,
    renew_after: Option<Duration>,
    watcher: Option<JoinHandle<()>>,
    renewal: Option<JoinHandle<()>>,
}

/// Builds the hub client from `cfg` (with `--hub-token-secret`: reads the Secret through
/// `member`, writes the token file, starts following the Secret) and the keeper of its token.
pub(super) async fn hub_client(
    member: &kube::Client,
    cfg: &AgentConfig,
) -> Result<(kube::Client, String, TokenKeeper), AgentError> {
    let mut keeper = TokenKeeper {
        cluster_id: cfg.cluster_id.clone(),
        lifetime: cfg.hub_token_lifetime,
        renew_after: cfg.hub_token_renew_after,
        token: None,
        watcher: None,
        renewal: None,
    };
    if let Some(TokenSource::Secret(name)) = cfg.hub.token_source() {
        let api = Api::<Secret>::namespaced(member.clone(), &cfg.namespace);
        let what = format!("Secret {}/{name}", cfg.namespace);
        let bad = |problem: String| {
            AgentError::Hub(HubError::Config {
                flag: "--hub-token-secret",
                problem,
            })
        };
        let state_dir = std::path::absolute(&cfg.state_dir).unwrap_or(cfg.state_dir.clone());
        let file = state_dir.join(TOKEN_FILE);
        let mut outage = crate::outage::Outage::new("member API (hub token Secret)");
        let mut attempt = 0;
        let token = loop {
            match api.get_opt(name).await {
                Ok(Some(secret)) => {
                    outage.ok();
                    break secret_token(&secret).ok_or_else(|| {
                        bad(format!(
                            "{what} has no usable key `{TOKEN_KEY}` (the member's hub token)"
                        ))
                    })?;
                }
                Ok(None) => return Err(bad(format!("{what} does not exist"))),
                // The member API does not answer (or refuses, as a freshly restarted one may
                // until its authorizer has synced): the token this node saved last time, if
                // any (the watch below catches up with the Secret once the API is back).
                Err(e) => {
                    if let Some(saved) = std::fs::read_to_string(&file)
                        .ok()
                        .map(|t| t.trim().to_string())
                        .filter(|t| token_is_valid(t))
                    {
                        tracing::warn!(error = %e, file = %file.display(), "member API unreachable: using the hub token saved by this node");
                        break saved;
                    }
                    outage.failed(&format!("reading {what}: {e}"));
                }
            }
            tokio::time::sleep(backoff(attempt)).await;
            attempt = attempt.saturating_add(1).min(3);
        };
        write_token_file(&file, &token).map_err(|source| AgentError::StateDir {
            path: file.clone(),
            source,
        })?;
        let hub_token = Arc::new(HubToken {
            namespace: cfg.namespace.clone(),
            secret: name.clone(),
            file,
            current: watch::Sender::new(token),
        });
        keeper.watcher = Some(tokio::spawn(follow_secret(api, hub_token.clone())));
        keeper.token = Some(hub_token);
    }
    let file = keeper.token.as_ref().map(|t| t.file.as_path());
    let (client, url) = cfg.hub.client(file).await?;
    Ok((client, url, keeper))
}

/// Watches the one Secret and makes each new token the current one.
async fn follow_secret(api: Api<Secret>, token: Arc<HubToken>) {
    let config = watcher::Config::default().fields(&format!("metadata.name={}", token.secret));
    let stream = watcher(api, config).default_backoff().applied_objects();
    futures::pin_mut!(stream);
    while let Some(ev) = stream.next().await {
        match ev {
            Ok(secret) => match secret_token(&secret) {
                Some(t) if *token.current.borrow() != t => {
                    if token.set(&t) {
                        let expires = membership::token_times(&t).map(|(exp, _)| exp);
                        tracing::info!(secret = %token.secret, expires_unix = ?expires, "hub token changed in its Secret; token file updated");
                    }
                }
                Some(_) => {}
                None => tracing::warn!(
                    secret = %token.secret,
                    "the hub token Secret has no usable key `token`; keeping the previous token"
                ),
            },
            Err(e) => {
                tracing::debug!(secret = %token.secret, error = %e, "watching the hub token Secret (retrying)")
            }
        }
    }
}

impl TokenKeeper {
    /// Starts the renewal (this agent became the gateway) unless it runs, or restarts it if it
    /// ended. `member` and `hub` are the gateway's (fenced) clients.
    pub(super) fn ensure_renewal(&mut self, member: &kube::Client, hub: &kube::Client) {
        let Some(token) = &self.token else {
            return;
        };
        if self.renewal.as_ref().is_some_and(|h| !h.is_finished()) {
            return;
        }
        tracing::info!(secret = %token.secret, lifetime_secs = self.lifetime.as_secs(), "renewing the hub token while this node is the gateway");
        self.renewal = Some(tokio::spawn(renew_loop(
            token.clone(),
            member.clone(),
            hub.clone(),
            self.cluster_id.clone(),
            self.lifetime,
            self.renew_after,
        )));
    }

    /// Stops the renewal (the gateway Lease is lost, or the agent stops).
    pub(super) fn stop_renewal(&mut self) {
        if let Some(h) = self.renewal.take() {
            tracing::info!("stopping the hub token renewal");
            h.abort();
        }
    }
}

impl Drop for TokenKeeper {
    fn drop(&mut self) {
        self.stop_renewal();
        if let Some(h) = self.watcher.take() {
            h.abort();
        }
    }
}

/// Renews the token at each deadline, forever (aborted when the gateway steps down).
async fn renew_loop(
    token: Arc<HubToken>,
    member: kube::Client,
    hub: kube::Client,
    cluster_id: String,
    lifetime: Duration,
    renew_after: Option<Duration>,
) {
    let mut current = token.current.subscribe();
    let mut failures: u32 = 0;
    let mut last: Option<Instant> = None;
    loop {
        let delay = if failures == 0 {
            let times = membership::token_times(&current.borrow_and_update());
            renew_delay(times, unix_now(), renew_after)
        } else {
            backoff(failures - 1)
        };
        let mut at = Instant::now() + delay;
        if let Some(l) = last {
            at = at.max(l + MIN_RENEW_SPACING);
        }
        tracing::debug!(in_secs = delay.as_secs(), "next hub token renewal");
        tokio::select! {
            _ = tokio::time::sleep_until(at) => {}
            changed = current.changed() => {
                if changed.is_err() {
                    return;
                }
                // Someone else put a token in the Secret: plan again from that one.
                failures = 0;
                continue;
            }
        }
        last = Some(Instant::now());
        match renew_once(&token, &member, &hub, &cluster_id, lifetime).await {
            Ok(expires) => {
                failures = 0;
                tracing::info!(secret = %token.secret, %expires, "hub token renewed");
            }
            Err(e) => {
                let refused = matches!(
                    &e,
                    TokenError::Request(MembershipError::Api { source: kube::Error::Api(s), .. })
                        if s.code == 401
                );
                failures = failures.saturating_add(1);
                if refused {
                    tracing::error!(error = %e, "the hub refused the member's token (expired or revoked?): if it expired, run `kubectl peers join` again and put the new token in the Secret");
                } else {
                    tracing::warn!(error = %e, attempt = failures, "renewing the hub token failed; retrying");
                }
            }
        }
    }
}

/// One renewal: a new token from the hub, written to the Secret, made current here.
async fn renew_once(
    token: &HubToken,
    member: &kube::Client,
    hub: &kube::Client,
    cluster_id: &str,
    lifetime: Duration,
) -> Result<String, TokenError> {
    let new = membership::request_token(hub, cluster_id, lifetime).await?;
    if !token_is_valid(&new.token) {
        return Err(TokenError::Malformed);
    }
    let patch = serde_json::json!({
        "data": { TOKEN_KEY: ByteString(new.token.clone().into_bytes()) },
    });
    let pp = PatchParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..PatchParams::default()
    };
    Api::<Secret>::namespaced(member.clone(), &token.namespace)
        .patch(&token.secret, &pp, &Patch::Merge(&patch))
        .await
        .map_err(|source| TokenError::Patch {
            secret: format!("{}/{}", token.namespace, token.secret),
            source,
        })?;
    // At once here; the watch brings it to the other agents (and here again: no change).
    token.set(&new.token);
    Ok(new.expires)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn renewal_at_half_life_or_after_the_given_age() {
        let (iat, exp) = (1_000_000, 1_003_600);
        let d = |now, after| renew_delay(Some((exp, iat)), now, after);
        assert_eq!(d(iat, None), Duration::from_secs(1800));
        assert_eq!(d(iat + 1000, None), Duration::from_secs(800));
        assert_eq!(d(iat + 1800, None), Duration::ZERO);
        assert_eq!(d(exp + 10, None), Duration::ZERO);
        let five = Some(Duration::from_secs(5));
        assert_eq!(d(iat, five), Duration::from_secs(5));
        assert_eq!(d(iat + 3, five), Duration::from_secs(2));
        assert_eq!(d(iat + 60, five), Duration::ZERO);
        // Never later than half-life, whatever the flag says.
        assert_eq!(
            d(iat, Some(Duration::from_secs(100_000))),
            Duration::from_secs(1800)
        );
        assert_eq!(d(iat, Some(Duration::MAX)), Duration::from_secs(1800));
        // Unknown or nonsensical times: at once.
        assert_eq!(renew_delay(None, iat, None), Duration::ZERO);
        assert_eq!(
            renew_delay(Some((iat, iat)), iat - 100, None),
            Duration::ZERO
        );
        // A real JWT payload read by membership::token_times.
        let jwt =
            "eyJhbGciOiJub25lIn0.eyJleHAiOjE3MDAwMDM2MDAsImlhdCI6MTcwMDAwMDAwMCwic3ViIjoieCJ9.";
        assert_eq!(
            renew_delay(membership::token_times(jwt), 1_700_000_600, None),
            Duration::from_secs(1200)
        );
    }

    #[test]
    fn backoff_doubles_to_a_minute_with_jitter() {
        for (attempt, step) in [
            (0, 1),
            (1, 2),
            (2, 4),
            (5, 32),
            (6, 60),
            (30, 60),
            (u32::MAX, 60),
        ] {
            let step = Duration::from_secs(step);
            for _ in 0..20 {
                let b = backoff(attempt);
                assert!(b >= step / 2 && b <= step, "attempt {attempt}: {b:?}");
            }
        }
        let draws: std::collections::HashSet<_> = (0..20).map(|_| backoff(6)).collect();
        assert!(draws.len() > 1, "no jitter");
    }

    #[test]
    fn token_file_is_private_and_replaced_atomically() {
        let dir = std::env::temp_dir().join(format!("fb-token-file-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let file = dir.join(TOKEN_FILE);
        write_token_file(&file, "first.token").unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&file), 0o600);
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "first.token");
        // Held open across the write: the old inode keeps the old content (a rename, not an
        // in-place rewrite a reader could see half done).
        let before = std::fs::File::open(&file).unwrap();
        // A stale temporary file (a crash mid-write), even a readable one, is replaced.
        let tmp = dir.join(".hub-token.tmp");
        std::fs::write(&tmp, "stale").unwrap();
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o644)).unwrap();
        write_token_file(&file, "second.token").unwrap();
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "second.token");
        assert_eq!(mode(&file), 0o600);
        assert!(!tmp.exists());
        let mut old = String::new();
        std::io::Read::read_to_string(&mut &before, &mut old).unwrap();
        assert_eq!(old, "first.token");
        // A file someone made readable is replaced by a private one.
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        write_token_file(&file, "third.token").unwrap();
        assert_eq!(mode(&file), 0o600);
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "third.token");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn secret_tokens_are_trimmed_and_checked() {
        let secret = |v: &[u8]| Secret {
            data: Some([(TOKEN_KEY.to_string(), ByteString(v.to_vec()))].into()),
            ..Secret::default()
        };
        assert_eq!(secret_token(&secret(b"a.b.c\n")).as_deref(), Some("a.b.c"));
        assert_eq!(secret_token(&secret(b"")), None);
        assert_eq!(secret_token(&secret(b"a b")), None);
        assert_eq!(secret_token(&secret(&[0xff])), None);
        assert_eq!(secret_token(&Secret::default()), None);
    }

    #[test]
    fn debug_is_redacted() {
        let (tx, _) = watch::channel("eyJsecret".to_string());
        let t = HubToken {
            namespace: "ns".into(),
            secret: "fleetboard-hub-token".into(),
            file: "/run/hub-token".into(),
            current: tx,
        };
        let shown = format!("{t:?}");
        assert!(
            !shown.contains("eyJsecret") && shown.contains("redacted"),
            "{shown}"
        );
    }
}
