//! The `Dockerfile` (the machines that run the tests have no docker, so it is checked by
//! reading it): named stages on base images pinned by tag, a builder that builds workspace
//! packages that exist, a runtime stage that copies only binaries those packages define, runs
//! as a non-root user with `fleetboard` as entrypoint; the charts ask for exactly the one
//! capability the Dockerfile documents (NET_ADMIN); `.dockerignore` keeps build output out.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

use fleetboard_tests::charts::{AGENT_CHART, HUB_CHART, chart_dir, workspace_root};

/// One instruction: keyword (upper case) and its arguments, continuation lines joined.
#[derive(Debug, Clone)]
struct Instruction {
    keyword: String,
    args: String,
}

/// One build stage.
#[derive(Debug, Clone)]
struct Stage {
    image: String,
    name: Option<String>,
    instructions: Vec<Instruction>,
}

fn parse(text: &str) -> Vec<Stage> {
    let mut logical = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if current.is_empty() && (trimmed.is_empty() || trimmed.starts_with('#')) {
            continue;
        }
        if trimmed.starts_with('#') {
            continue; // a comment inside a continued instruction
        }
        match trimmed.strip_suffix('\\') {
            Some(part) => {
                current.push_str(part);
                current.push(' ');
            }
            None => {
                current.push_str(trimmed);
                logical.push(std::mem::take(&mut current));
            }
        }
    }
    assert!(
        current.is_empty(),
        "the Dockerfile ends inside a continued line"
    );
    let mut stages: Vec<Stage> = Vec::new();
    for line in logical {
        let (keyword, args) = line.split_once(char::is_whitespace).unwrap_or((&line, ""));
        let keyword = keyword.to_ascii_uppercase();
        let args = args.trim().to_string();
        if keyword == "FROM" {
            let words: Vec<&str> = args
                .split_whitespace()
                .filter(|w| !w.starts_with("--"))
                .collect();
            let name = match words.as_slice() {
                [_, as_, name] if as_.eq_ignore_ascii_case("as") => Some(name.to_string()),
                [_] => None,
                other => panic!("unexpected FROM: {other:?}"),
            };
            stages.push(Stage {
                image: words[0].to_string(),
                name,
                instructions: Vec::new(),
            });
        } else if keyword == "ARG" && stages.is_empty() {
            continue; // global build arguments
        } else {
            stages
                .last_mut()
                .unwrap_or_else(|| panic!("{keyword} before the first FROM"))
                .instructions
                .push(Instruction { keyword, args });
        }
    }
    stages
}

/// Package name -> its binary targets, from `cargo metadata`.
fn workspace_binaries() -> BTreeMap<String, BTreeSet<String>> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .current_dir(workspace_root())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "cargo metadata: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    meta["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            let bins = p["targets"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|t| t["kind"].as_array().unwrap().iter().any(|k| k == "bin"))
                .map(|t| t["name"].as_str().unwrap().to_string())
                .collect();
            (p["name"].as_str().unwrap().to_string(), bins)
        })
        .collect()
}

/// `"a b"` or `["a", "b"]` (exec form) as words.
fn words(args: &str) -> Vec<String> {
    if args.trim_start().starts_with('[') {
        serde_json::from_str(args).unwrap_or_else(|e| panic!("bad exec form {args}: {e}"))
    } else {
        args.split_whitespace().map(String::from).collect()
    }
}

#[test]
fn dockerfile_builds_workspace_binaries_into_a_pinned_non_root_image() {
    let text = std::fs::read_to_string(workspace_root().join("Dockerfile")).unwrap();
    let stages = parse(&text);
    assert!(stages.len() >= 2, "multi-stage: {stages:?}");
    let names: Vec<&str> = stages
        .iter()
        .map(|s| s.name.as_deref().expect("every stage is named"))
        .collect();
    assert_eq!(
        names.iter().collect::<BTreeSet<_>>().len(),
        names.len(),
        "stage names repeat: {names:?}"
    );
    assert!(
        names.contains(&"builder") && names.last() == Some(&"runtime"),
        "{names:?}"
    );

    // Base images: pinned by a version tag (or digest), never `latest` or a bare name.
    for s in &stages {
        let last = s.image.rsplit('/').next().unwrap();
        let pinned = s.image.contains("@sha256:")
            || last
                .split_once(':')
                .is_some_and(|(_, tag)| tag != "latest" && tag.chars().any(|c| c.is_ascii_digit()));
        assert!(
            pinned,
            "stage {:?}: base image {} is not pinned by tag",
            s.name, s.image
        );
    }
    let runtime = stages.last().unwrap();
    assert!(
        (runtime.image.starts_with("debian:") && runtime.image.contains("slim"))
            || runtime.image.starts_with("gcr.io/distroless/"),
        "runtime base {} is neither debian-slim nor distroless",
        runtime.image
    );

    // The builder builds packages of this workspace, release, locked.
    let workspace = workspace_binaries();
    let builder = stages
        .iter()
        .find(|s| s.name.as_deref() == Some("builder"))
        .unwrap();
    let build = builder
        .instructions
        .iter()
        .filter(|i| i.keyword == "RUN")
        .find(|i| i.args.contains("cargo build"))
        .expect("builder runs cargo build");
    let w: Vec<&str> = build.args.split_whitespace().collect();
    assert!(
        w.contains(&"--release") && w.contains(&"--locked"),
        "{}",
        build.args
    );
    let packages: Vec<&str> = w
        .windows(2)
        .filter(|p| p[0] == "-p" || p[0] == "--package")
        .map(|p| p[1])
        .collect();
    assert_eq!(packages, ["fleetboard", "kubectl-peers"], "{}", build.args);
    let mut built_bins = BTreeSet::new();
    for p in &packages {
        let bins = workspace
            .get(*p)
            .unwrap_or_else(|| panic!("package {p} is not in the workspace: {workspace:?}"));
        built_bins.extend(bins.iter().cloned());
    }

    // The runtime copies only binaries those packages define, from a named stage.
    let mut copied = BTreeSet::new();
    for i in runtime.instructions.iter().filter(|i| i.keyword == "COPY") {
        let w = words(&i.args);
        let from = w
            .iter()
            .find_map(|a| a.strip_prefix("--from="))
            .expect("runtime copies only from a stage");
        assert!(names.contains(&from), "COPY --from={from}: no such stage");
        let src = w.iter().find(|a| !a.starts_with("--")).unwrap();
        let bin = src.rsplit('/').next().unwrap().to_string();
        assert!(
            built_bins.contains(&bin),
            "COPY {src}: {bin} is not a binary of {packages:?} ({built_bins:?})"
        );
        assert!(
            builder
                .instructions
                .iter()
                .any(|b| b.args.contains(&format!("target/release/{bin}"))),
            "{bin} is not taken from target/release"
        );
        copied.insert(bin);
    }
    assert!(
        copied.contains("fleetboard") && copied.contains("kubectl-peers"),
        "{copied:?}"
    );

    // Entrypoint `fleetboard`, a non-root user.
    let entry = runtime
        .instructions
        .iter()
        .rev()
        .find(|i| i.keyword == "ENTRYPOINT")
        .expect("ENTRYPOINT");
    assert_eq!(words(&entry.args), ["fleetboard"]);
    let user = runtime
        .instructions
        .iter()
        .rev()
        .find(|i| i.keyword == "USER")
        .expect("USER");
    let uid = user.args.split(':').next().unwrap();
    assert!(
        uid != "0" && uid != "root",
        "runs as root: USER {}",
        user.args
    );

    // The only capability: documented in the Dockerfile, requested (alone) by both charts.
    assert!(
        text.contains("NET_ADMIN") && text.contains("cap_net_admin"),
        "NET_ADMIN is not documented"
    );
    for chart in [HUB_CHART, AGENT_CHART] {
        let values: serde_json::Value = serde_yaml::from_str(
            &std::fs::read_to_string(chart_dir(chart).join("values.yaml")).unwrap(),
        )
        .unwrap();
        let caps = &values["securityContext"]["capabilities"];
        assert_eq!(caps["add"], serde_json::json!(["NET_ADMIN"]), "{chart}");
        assert_eq!(caps["drop"], serde_json::json!(["ALL"]), "{chart}");
        assert_eq!(
            values["podSecurityContext"]["runAsUser"].to_string(),
            uid,
            "{chart} runs as another user than the image"
        );
    }

    let ignore = std::fs::read_to_string(workspace_root().join(".dockerignore")).unwrap();
    let ignored: Vec<&str> = ignore.lines().map(str::trim).collect();
    for want in ["target", ".git"] {
        assert!(
            ignored.contains(&want),
            ".dockerignore does not exclude {want}"
        );
    }
}
