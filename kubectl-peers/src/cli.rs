//! The command line: `kubectl peers` (the table), `kubectl peers join`, `kubectl peers remove`.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args as ClapArgs, Parser, Subcommand, ValueEnum};
use fleetboard_control::crd::peer::Transport;
use fleetboard_control::membership;

use crate::helm::DEFAULT_CHART;

/// Help heading of the options every subcommand takes.
const GLOBAL: &str = "Hub options (before or after the subcommand)";

/// Command line of `kubectl peers`.
#[derive(Debug, Parser)]
#[command(
    name = "kubectl-peers",
    version,
    about = "Every FleetBoard cluster with its live tunnel state (reads the hub's Peer objects); \
             `join` and `remove` give a member cluster its own identity on the hub and revoke it"
)]
pub struct Args {
    /// Kubeconfig of the hub cluster (default: $KUBECONFIG, then ~/.kube/config).
    #[arg(long, global = true, help_heading = GLOBAL)]
    pub kubeconfig: Option<PathBuf>,
    /// Kubeconfig context to use (default: the current context).
    #[arg(long, global = true, help_heading = GLOBAL)]
    pub context: Option<String>,
    /// The hub's shared namespace holding the Peer objects (where the hub chart is installed).
    #[arg(
        short = 'n',
        long,
        global = true,
        help_heading = GLOBAL,
        default_value = "fleetboard-system"
    )]
    pub namespace: String,
    /// Output format of the table [default: table].
    #[arg(short = 'o', long, value_enum)]
    pub output: Option<Output>,
    /// More columns (the same as `-o wide`).
    #[arg(long)]
    pub wide: bool,
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// How the clusters are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Aligned columns (like `kubectl get`).
    Table,
    /// The table with more columns.
    Wide,
    /// A JSON document `{"namespace": .., "clusters": [..]}`.
    Json,
    /// The same document as YAML.
    Yaml,
}

/// What to do besides printing the table.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Give a new member cluster its own identity on the hub (run with the hub admin's
    /// kubeconfig) and print the `helm install` to run against the member cluster.
    Join(JoinArgs),
    /// Revoke a member: its identity, tokens, bindings, exports and Peer on the hub; waits until
    /// its namespace is gone.
    Remove(RemoveArgs),
}

/// `kubectl peers join <cluster-id>`.
#[derive(Debug, ClapArgs)]
pub struct JoinArgs {
    /// The member's cluster id: a DNS label, unique in the cluster set (its Peer's name).
    #[arg(value_parser = parse_cluster_id)]
    pub cluster_id: String,
    /// Lifetime of the printed token (e.g. 90m, 24h, 7d; at least 10m). The member installs with
    /// it; its agents then renew their own.
    #[arg(long, value_name = "DURATION", default_value = "24h", value_parser = parse_token_ttl)]
    pub token_ttl: Duration,
    /// Exports (ServiceExports) the member may have at once (a ResourceQuota on the hub).
    #[arg(long, value_name = "N", default_value_t = membership::DEFAULT_MAX_EXPORTS)]
    pub max_exports: u32,
    /// The hub apiserver's https URL as the member reaches it (default: the kubeconfig's server).
    #[arg(long, value_name = "URL", value_parser = parse_hub_url)]
    pub hub_url: Option<String>,
    /// Tunnel transport (default: the hub's own, from its Peer; wg if it has none yet).
    #[arg(long, value_enum)]
    pub transport: Option<TransportArg>,
    /// The agent chart to install (a chart repository reference or a directory).
    #[arg(long, value_name = "REF", default_value = DEFAULT_CHART)]
    pub chart: String,
    /// Version of the agent chart (helm's --version; default: the newest).
    #[arg(long = "version", value_name = "V")]
    pub chart_version: Option<String>,
    /// Output: the helm command as text, or a JSON document with the token and helm's argv.
    #[arg(short = 'o', long, value_enum, default_value_t = JoinOutput::Text)]
    pub output: JoinOutput,
}

/// `kubectl peers join -o`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum JoinOutput {
    /// The `helm install` command, ready to paste into a shell.
    Text,
    /// `{"clusterId", "namespace", "user", "expires", "token", "hubURL", "caData", "helm": [argv]}`.
    Json,
}

/// `--transport`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TransportArg {
    /// WireGuard over UDP.
    Wg,
    /// QUIC datagrams.
    Quic,
}

impl From<TransportArg> for Transport {
    fn from(t: TransportArg) -> Self {
        match t {
            TransportArg::Wg => Transport::Wg,
            TransportArg::Quic => Transport::Quic,
        }
    }
}

/// `kubectl peers remove <cluster-id>`.
#[derive(Debug, ClapArgs)]
pub struct RemoveArgs {
    /// The member's cluster id.
    #[arg(value_parser = parse_cluster_id)]
    pub cluster_id: String,
    /// How long to wait for the member's namespace to be gone (e.g. 30s, 5m; 0: do not wait).
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = parse_duration)]
    pub wait_timeout: Duration,
}

impl Args {
    /// The table's format, or why the table flags do not apply (they go before no subcommand).
    pub fn table_output(&self) -> Result<Output, &'static str> {
        if self.command.is_some() && (self.output.is_some() || self.wide) {
            return Err(
                "-o/--wide before the subcommand apply to the table only: put \
                        `-o json` after `join` (join's own output), or drop them",
            );
        }
        Ok(match (self.output, self.wide) {
            (Some(Output::Table) | None, true) => Output::Wide,
            (Some(o), _) => o,
            (None, false) => Output::Table,
        })
    }
}

fn parse_cluster_id(s: &str) -> Result<String, String> {
    membership::validate_cluster_id(s).map_err(|e| e.to_string())?;
    Ok(s.to_string())
}

fn parse_token_ttl(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d < membership::MIN_TOKEN_LIFETIME {
        return Err(format!(
            "{} is too short: the API server issues tokens for {} at least",
            format_duration(d),
            format_duration(membership::MIN_TOKEN_LIFETIME)
        ));
    }
    Ok(d)
}

fn parse_hub_url(s: &str) -> Result<String, String> {
    check_hub_url(s)?;
    Ok(s.to_string())
}

/// The agent chart takes an https URL with a host: `https://host[:port][/path]`.
pub fn check_hub_url(s: &str) -> Result<(), String> {
    let Some(rest) = s.strip_prefix("https://") else {
        return Err(format!("{s:?} is not an https URL (https://host[:port])"));
    };
    let host = rest.split('/').next().unwrap_or_default();
    if host.is_empty() || s.chars().any(char::is_whitespace) {
        return Err(format!("{s:?} is not an https URL (https://host[:port])"));
    }
    Ok(())
}

/// A duration such as `90s`, `90m`, `24h`, `7d` or `1h30m` (units s, m, h, d; `0` alone is
/// zero).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let text = s.trim();
    if text == "0" {
        return Ok(Duration::ZERO);
    }
    if text.is_empty() {
        return Err("empty duration: write e.g. 90m, 24h or 7d".into());
    }
    let mut total: u64 = 0;
    let mut digits = String::new();
    for c in text.chars() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        let unit = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86_400,
            _ => return Err(format!("{s:?}: unknown unit {c:?} (use s, m, h or d)")),
        };
        if digits.is_empty() {
            return Err(format!("{s:?}: a number must come before {c:?}"));
        }
        let n: u64 = digits.parse().map_err(|_| format!("{s:?}: too large"))?;
        total = n
            .checked_mul(unit)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(|| format!("{s:?}: too large"))?;
        digits.clear();
    }
    if !digits.is_empty() {
        return Err(format!(
            "{s:?}: missing unit after {digits} (e.g. {digits}s, {digits}m, {digits}h)"
        ));
    }
    Ok(Duration::from_secs(total))
}

/// `1h30m`, `10m`, `7d`, `45s`: the shortest exact form.
pub fn format_duration(d: Duration) -> String {
    let mut s = d.as_secs();
    if s == 0 {
        return "0s".into();
    }
    let mut out = String::new();
    for (unit, size) in [("d", 86_400), ("h", 3600), ("m", 60), ("s", 1)] {
        if s >= size {
            out.push_str(&format!("{}{unit}", s / size));
            s %= size;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn parse(argv: &[&str]) -> Result<Args, clap::Error> {
        Args::try_parse_from(std::iter::once("kubectl-peers").chain(argv.iter().copied()))
    }

    #[test]
    fn command_definition_is_consistent() {
        Args::command().debug_assert();
    }

    #[test]
    fn no_subcommand_is_the_table_with_its_flags() {
        let a = parse(&[]).unwrap();
        assert!(a.command.is_none());
        assert_eq!(a.namespace, "fleetboard-system");
        assert_eq!(a.table_output(), Ok(Output::Table));
        let a = parse(&[
            "--kubeconfig",
            "/k",
            "--context",
            "c",
            "-n",
            "x",
            "-o",
            "json",
        ])
        .unwrap();
        assert_eq!(a.kubeconfig.as_deref(), Some(std::path::Path::new("/k")));
        assert_eq!(a.context.as_deref(), Some("c"));
        assert_eq!(a.namespace, "x");
        assert_eq!(a.table_output(), Ok(Output::Json));
        assert_eq!(parse(&["--wide"]).unwrap().table_output(), Ok(Output::Wide));
        assert_eq!(
            parse(&["-o", "wide"]).unwrap().table_output(),
            Ok(Output::Wide)
        );
        assert_eq!(
            parse(&["-o", "yaml", "--wide"]).unwrap().table_output(),
            Ok(Output::Yaml)
        );
        assert!(parse(&["unknown"]).is_err());
    }

    #[test]
    fn join_defaults() {
        let a = parse(&["join", "edge-1"]).unwrap();
        let Some(Command::Join(j)) = &a.command else {
            panic!("{a:?}")
        };
        assert_eq!(j.cluster_id, "edge-1");
        assert_eq!(j.token_ttl, membership::DEFAULT_JOIN_TOKEN_LIFETIME);
        assert_eq!(j.max_exports, membership::DEFAULT_MAX_EXPORTS);
        assert_eq!(j.hub_url, None);
        assert_eq!(j.transport, None);
        assert_eq!(j.chart, "fleetboard/fleetboard-agent");
        assert_eq!(j.chart_version, None);
        assert_eq!(j.output, JoinOutput::Text);
        assert_eq!(a.namespace, "fleetboard-system");
    }

    #[test]
    fn join_flags_and_global_flags_after_the_subcommand() {
        // As the hub chart's NOTES print it, with the global flags after `join`.
        let a = parse(&[
            "join",
            "edge-1",
            "-n",
            "hub-ns",
            "--version",
            "0.1.0",
            "--transport",
            "quic",
            "--token-ttl",
            "7d",
            "--max-exports",
            "10",
            "--hub-url",
            "https://hub.example.com:6443",
            "--chart",
            "charts/fleetboard-agent",
            "--kubeconfig",
            "/hub.yaml",
            "--context",
            "admin",
            "-o",
            "json",
        ])
        .unwrap();
        assert_eq!(a.namespace, "hub-ns");
        assert_eq!(
            a.kubeconfig.as_deref(),
            Some(std::path::Path::new("/hub.yaml"))
        );
        assert_eq!(a.context.as_deref(), Some("admin"));
        // `-o json` after `join` is join's, not the table's.
        assert_eq!(a.table_output(), Ok(Output::Table));
        let Some(Command::Join(j)) = a.command else {
            panic!()
        };
        assert_eq!(j.chart_version.as_deref(), Some("0.1.0"));
        assert_eq!(j.transport, Some(TransportArg::Quic));
        assert_eq!(j.token_ttl, Duration::from_secs(7 * 86_400));
        assert_eq!(j.max_exports, 10);
        assert_eq!(j.hub_url.as_deref(), Some("https://hub.example.com:6443"));
        assert_eq!(j.chart, "charts/fleetboard-agent");
        assert_eq!(j.output, JoinOutput::Json);
    }

    #[test]
    fn join_refuses_bad_values_naming_the_flag() {
        let err = parse(&["join", "edge-1", "--token-ttl", "5m"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("--token-ttl"), "{err}");
        assert!(err.contains("10m at least"), "{err}");
        parse(&["join", "edge-1", "--token-ttl", "10m"]).unwrap();
        let err = parse(&["join", "edge-1", "--token-ttl", "24"])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("--token-ttl") && err.contains("missing unit"),
            "{err}"
        );
        let err = parse(&["join", "Edge_1"]).unwrap_err().to_string();
        assert!(err.contains("DNS label"), "{err}");
        let err = parse(&["join", "edge-1", "--hub-url", "http://h:6443"]).unwrap_err();
        assert!(err.to_string().contains("--hub-url"), "{err}");
        let err = parse(&["join", "edge-1", "--transport", "gre"]).unwrap_err();
        assert!(err.to_string().contains("--transport"), "{err}");
        assert!(parse(&["join"]).is_err(), "a cluster id is required");
        // The table's -o before the subcommand is refused, not silently ignored.
        let a = parse(&["-o", "json", "join", "edge-1"]).unwrap();
        assert!(a.table_output().is_err());
    }

    #[test]
    fn remove_parses_its_wait_timeout() {
        let a = parse(&["remove", "edge-1", "-n", "hub-ns"]).unwrap();
        assert_eq!(a.namespace, "hub-ns");
        let Some(Command::Remove(r)) = a.command else {
            panic!()
        };
        assert_eq!(r.cluster_id, "edge-1");
        assert_eq!(r.wait_timeout, Duration::from_secs(60));
        let Some(Command::Remove(r)) = parse(&["remove", "edge-1", "--wait-timeout", "2m"])
            .unwrap()
            .command
        else {
            panic!()
        };
        assert_eq!(r.wait_timeout, Duration::from_secs(120));
        let Some(Command::Remove(r)) = parse(&["remove", "edge-1", "--wait-timeout", "0"])
            .unwrap()
            .command
        else {
            panic!()
        };
        assert_eq!(r.wait_timeout, Duration::ZERO);
        assert!(parse(&["remove", "edge-1", "--wait-timeout", "soon"]).is_err());
    }

    #[test]
    fn durations() {
        let secs = |s: &str| parse_duration(s).map(|d| d.as_secs());
        assert_eq!(secs("90m"), Ok(5400));
        assert_eq!(secs("24h"), Ok(86_400));
        assert_eq!(secs("7d"), Ok(604_800));
        assert_eq!(secs("1h30m"), Ok(5400));
        assert_eq!(secs("45s"), Ok(45));
        assert_eq!(secs("0"), Ok(0));
        for bad in ["", "h", "10", "10x", "1.5h", "-1h", "99999999999999999999d"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
        assert_eq!(format_duration(Duration::from_secs(5400)), "1h30m");
        assert_eq!(format_duration(Duration::from_secs(600)), "10m");
        assert_eq!(format_duration(Duration::from_secs(604_800)), "7d");
        assert_eq!(format_duration(Duration::ZERO), "0s");
    }

    #[test]
    fn hub_urls() {
        check_hub_url("https://hub.example.com:6443").unwrap();
        check_hub_url("https://[fd00::1]:6443/prefix").unwrap();
        for bad in ["http://h", "https://", "hub:6443", "https:// h"] {
            assert!(check_hub_url(bad).is_err(), "{bad:?}");
        }
    }
}
