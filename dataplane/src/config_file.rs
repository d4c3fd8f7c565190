//! Reading the config file (YAML; JSON is YAML too).

use std::path::{Path, PathBuf};

use fleetboard_dataplane_core::{ConfigError, DataplaneConfig};

/// Why a config file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not a valid config document (the message names the field and line).
    #[error("parsing {path}: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser error.
        source: serde_yaml::Error,
    },
    /// The config is well-formed but wrong (every problem by field).
    #[error("{path}: {source}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The problems.
        source: ConfigError,
    },
}

/// Reads, parses and validates a config file.
pub fn load(path: &Path) -> Result<DataplaneConfig, LoadError> {
    let text = std::fs::read_to_string(path).map_err(|source| LoadError::Read {
        path: path.into(),
        source,
    })?;
    let cfg: DataplaneConfig = serde_yaml::from_str(&text).map_err(|source| LoadError::Parse {
        path: path.into(),
        source,
    })?;
    cfg.validate().map_err(|source| LoadError::Invalid {
        path: path.into(),
        source,
    })?;
    Ok(cfg)
}
