//! The images nodes import: OCI archives listed in `images.tsv` (name, reference, archive;
//! tab-separated) in the directory `$FLEETBOARD_IMAGES` (`eval "$(tests/k8s/images env)"`),
//! else the directory `tests/k8s/images env` names.

use std::path::{Path, PathBuf};

use anyhow::Context;

/// One image: its short name (`pause`, `busybox`, `coredns`, `fleetboard`), the reference
/// pods use, and its OCI archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    /// Short name.
    pub name: String,
    /// The image reference (`localhost/fleetboard/busybox:<tag>`): pods use it with
    /// `imagePullPolicy: Never` or `IfNotPresent`.
    pub reference: String,
    /// The OCI archive `ctr images import` reads.
    pub archive: PathBuf,
}

/// The images a node gets.
#[derive(Debug, Clone, Default)]
pub struct ImageSet {
    /// Every image.
    pub images: Vec<Image>,
}

impl ImageSet {
    /// The set in `$FLEETBOARD_IMAGES`, else in the directory `tests/k8s/images env` prints.
    pub fn from_env() -> anyhow::Result<Self> {
        let dir = match std::env::var_os("FLEETBOARD_IMAGES") {
            Some(d) => PathBuf::from(d),
            None => images_script_dir()?,
        };
        Self::from_dir(&dir).with_context(|| {
            format!(
                "no images in {}: build them with `tests/k8s/images` and `eval \"$(tests/k8s/images env)\"`",
                dir.display()
            )
        })
    }

    /// The set listed in `<dir>/images.tsv` (relative archive paths are relative to `dir`).
    pub fn from_dir(dir: &Path) -> anyhow::Result<Self> {
        let tsv = dir.join("images.tsv");
        let text =
            std::fs::read_to_string(&tsv).with_context(|| format!("reading {}", tsv.display()))?;
        let mut images = Vec::new();
        for line in text.lines() {
            let f: Vec<&str> = line.split('\t').map(str::trim).collect();
            if line.starts_with('#') || f.len() < 3 || f[0] == "name" {
                continue;
            }
            let archive = dir.join(f[2]);
            anyhow::ensure!(archive.is_file(), "{} is missing", archive.display());
            images.push(Image {
                name: f[0].to_string(),
                reference: f[1].to_string(),
                archive,
            });
        }
        anyhow::ensure!(!images.is_empty(), "{} lists no images", tsv.display());
        Ok(Self { images })
    }

    /// Only the images named `names` (e.g. leave the large `fleetboard` image out of a test
    /// that does not run it).
    pub fn only(&self, names: &[&str]) -> anyhow::Result<Self> {
        let images = names
            .iter()
            .map(|n| self.get(n).cloned())
            .collect::<anyhow::Result<_>>()?;
        Ok(Self { images })
    }

    /// The image named `name`.
    pub fn get(&self, name: &str) -> anyhow::Result<&Image> {
        self.images
            .iter()
            .find(|i| i.name == name)
            .with_context(|| format!("no image named {name} in {:?}", self.names()))
    }

    /// Every archive.
    pub fn archives(&self) -> Vec<PathBuf> {
        self.images.iter().map(|i| i.archive.clone()).collect()
    }

    fn names(&self) -> Vec<&str> {
        self.images.iter().map(|i| i.name.as_str()).collect()
    }
}

/// The set directory `tests/k8s/images env` prints (`export FLEETBOARD_IMAGES=<dir>`).
fn images_script_dir() -> anyhow::Result<PathBuf> {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("k8s/images");
    let out = std::process::Command::new(&script)
        .arg("env")
        .output()
        .with_context(|| format!("FLEETBOARD_IMAGES is unset and {} failed", script.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.strip_prefix("export FLEETBOARD_IMAGES="))
        .map(|v| PathBuf::from(v.trim().trim_matches(|c| c == '\'' || c == '"')))
        .with_context(|| {
            format!(
                "FLEETBOARD_IMAGES is unset and `{} env` names no set: {}",
                script.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            )
        })
}
