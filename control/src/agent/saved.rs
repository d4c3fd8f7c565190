//! The node's last applied dataplane config, kept in the state dir so that an agent that
//! restarts while its API servers do not answer (the member's or the hub's) brings the node's
//! tunnel back on the state it had, instead of waiting for the API with no traffic.
//!
//! The file (`<state-dir>/dataplane.json`, mode 0600: it holds the private key the node's
//! dataplane runs with, the node key or, on the gateway, the cluster key) is replaced
//! atomically after every config the dataplane accepted. It is read only when the agent
//! starts and cannot reach its API servers within [`USE_AFTER`]; the first pass with live
//! views replaces it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use fleetboard_dataplane::core::DataplaneConfig;

use super::token::write_token_file;

/// The file's name in the state dir.
pub const FILE: &str = "dataplane.json";
/// A starting agent that has not reached its API servers after this long starts the saved
/// config (a reachable API answers well within it).
pub const USE_AFTER: Duration = Duration::from_secs(3);

/// The saved config's path for `state_dir`.
pub fn path(state_dir: &Path) -> PathBuf {
    state_dir.join(FILE)
}

/// Saves `config` (atomically, mode 0600). A failure is logged: the running dataplane is not
/// affected, only a later restart without API would lack it.
pub fn save(state_dir: &Path, config: &DataplaneConfig) {
    let file = path(state_dir);
    let result = serde_json::to_string(config)
        .map_err(std::io::Error::other)
        .and_then(|json| write_token_file(&file, &json));
    if let Err(e) = result {
        tracing::warn!(file = %file.display(), error = %e, "cannot save the dataplane config");
    }
}

/// The saved config, if there is a readable one.
pub fn load(state_dir: &Path) -> Option<DataplaneConfig> {
    let file = path(state_dir);
    let text = match std::fs::read_to_string(&file) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => {
            tracing::warn!(file = %file.display(), error = %e, "cannot read the saved dataplane config");
            return None;
        }
    };
    match serde_json::from_str(&text) {
        Ok(c) => Some(c),
        Err(e) => {
            tracing::warn!(file = %file.display(), error = %e, "ignoring an unreadable saved dataplane config");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn config() -> DataplaneConfig {
        serde_json::from_value(serde_json::json!({
            "interface": { "name": "fb9", "addresses": ["100.64.1.1/10"] },
            "private_key": "yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk=",
            "peers": [{
                "public_key": "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=",
                "allowed_ips": ["100.65.0.0/16"],
            }],
        }))
        .expect("config")
    }

    #[test]
    fn a_saved_config_comes_back_unchanged_and_private() {
        let dir = std::env::temp_dir().join(format!("fb-saved-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        assert!(load(&dir).is_none(), "nothing saved yet");
        let c = config();
        save(&dir, &c);
        assert_eq!(load(&dir), Some(c));
        let mode = std::fs::metadata(path(&dir)).unwrap().permissions().mode();
        assert_eq!(
            mode & 0o077,
            0,
            "holds a private key: owner only ({mode:o})"
        );
        std::fs::write(path(&dir), "{ not json").unwrap();
        assert!(load(&dir).is_none(), "a damaged file is ignored");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
