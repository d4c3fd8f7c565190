//! The member's `helm install` that `kubectl peers join` prints (pure: values in, argv and
//! shell text out).

use std::borrow::Cow;

/// The agent chart in the chart repository added as `fleetboard`.
pub const DEFAULT_CHART: &str = "fleetboard/fleetboard-agent";
/// The agent's Helm release name.
pub const RELEASE: &str = "fleetboard-agent";
/// The namespace of the agent on the member cluster.
pub const MEMBER_NAMESPACE: &str = "fleetboard-system";

/// What the member's install needs.
#[derive(Debug, Clone)]
pub struct Install<'a> {
    /// Chart reference (`fleetboard/fleetboard-agent`, a directory, an OCI reference).
    pub chart: &'a str,
    /// Chart version (`--version`), None for the newest.
    pub version: Option<&'a str>,
    /// The member's cluster id.
    pub cluster_id: &'a str,
    /// The hub apiserver's https URL.
    pub hub_url: &'a str,
    /// The member's token (secret).
    pub token: &'a str,
    /// base64 of the hub CA's PEM, None to trust the system roots.
    pub ca_data: Option<&'a str>,
    /// The hub's shared namespace.
    pub hub_namespace: &'a str,
    /// `wg` or `quic`.
    pub transport: &'a str,
}

impl Install<'_> {
    /// The command as lines of arguments (the printed text breaks lines between them).
    fn lines(&self) -> Vec<Vec<String>> {
        let mut first: Vec<String> = ["helm", "install", RELEASE, self.chart]
            .map(String::from)
            .into();
        if let Some(v) = self.version {
            first.extend(["--version".to_string(), v.to_string()]);
        }
        let mut lines = vec![
            first,
            ["--namespace", MEMBER_NAMESPACE, "--create-namespace"]
                .map(String::from)
                .into(),
            set("cluster.clusterID", self.cluster_id),
            set("hub.hubURL", self.hub_url),
            set("hub.token", self.token),
        ];
        if let Some(ca) = self.ca_data {
            lines.push(set("hub.caData", ca));
        }
        lines.push(set("hub.namespace", self.hub_namespace));
        lines.push(set("tunnel.transport", self.transport));
        lines
    }

    /// helm's argv, unquoted (for `execve`, or `-o json`).
    pub fn argv(&self) -> Vec<String> {
        self.lines().into_iter().flatten().collect()
    }

    /// The command for a POSIX shell, one option per line, ending in a newline.
    pub fn text(&self) -> String {
        let lines: Vec<String> = self
            .lines()
            .iter()
            .map(|l| {
                l.iter()
                    .map(|a| shell_quote(a))
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .collect();
        let mut text = lines.join(" \\\n  ");
        text.push('\n');
        text
    }
}

/// `--set key=value`, the value escaped for helm's `--set` parser (`\` and `,` are special);
/// `--set-string` where `--set` would turn the value into a number, a boolean or null (a cluster
/// id such as `1234` or `true`).
fn set(key: &str, value: &str) -> Vec<String> {
    let typed = value == "0"
        || (!value.starts_with('0')
            && !value.is_empty()
            && value.bytes().all(|b| b.is_ascii_digit()))
        || ["true", "false", "null"]
            .iter()
            .any(|w| value.eq_ignore_ascii_case(w));
    let flag = if typed { "--set-string" } else { "--set" };
    let escaped = value.replace('\\', "\\\\").replace(',', "\\,");
    vec![flag.to_string(), format!("{key}={escaped}")]
}

/// `s` as one word of a POSIX shell: as is when it holds only characters no shell treats
/// specially, else in single quotes (a `'` inside written `'\''`).
pub fn shell_quote(s: &str) -> Cow<'_, str> {
    let plain = |c: char| c.is_ascii_alphanumeric() || "@%+=:,./_-".contains(c);
    if !s.is_empty() && s.chars().all(plain) {
        Cow::Borrowed(s)
    } else {
        Cow::Owned(format!("'{}'", s.replace('\'', r"'\''")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn install<'a>(token: &'a str, ca: Option<&'a str>) -> Install<'a> {
        Install {
            chart: DEFAULT_CHART,
            version: Some("0.1.0"),
            cluster_id: "edge-1",
            hub_url: "https://hub.example.com:6443",
            token,
            ca_data: ca,
            hub_namespace: "fleetboard-system",
            transport: "quic",
        }
    }

    #[test]
    fn argv_and_text_of_a_plain_install() {
        let i = install(
            "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln-_",
            Some("TFMwdExTMUNSVWRKVGc9PQ=="),
        );
        assert_eq!(
            i.argv(),
            [
                "helm",
                "install",
                "fleetboard-agent",
                "fleetboard/fleetboard-agent",
                "--version",
                "0.1.0",
                "--namespace",
                "fleetboard-system",
                "--create-namespace",
                "--set",
                "cluster.clusterID=edge-1",
                "--set",
                "hub.hubURL=https://hub.example.com:6443",
                "--set",
                "hub.token=eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln-_",
                "--set",
                "hub.caData=TFMwdExTMUNSVWRKVGc9PQ==",
                "--set",
                "hub.namespace=fleetboard-system",
                "--set",
                "tunnel.transport=quic",
            ]
        );
        assert_eq!(
            i.text(),
            "helm install fleetboard-agent fleetboard/fleetboard-agent --version 0.1.0 \\
  --namespace fleetboard-system --create-namespace \\
  --set cluster.clusterID=edge-1 \\
  --set hub.hubURL=https://hub.example.com:6443 \\
  --set hub.token=eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln-_ \\
  --set hub.caData=TFMwdExTMUNSVWRKVGc9PQ== \\
  --set hub.namespace=fleetboard-system \\
  --set tunnel.transport=quic
"
        );
    }

    #[test]
    fn no_version_and_no_ca_leave_their_parts_out() {
        let mut i = install("t", None);
        i.version = None;
        let text = i.text();
        assert!(
            text.starts_with("helm install fleetboard-agent fleetboard/fleetboard-agent \\\n"),
            "{text}"
        );
        assert!(
            !text.contains("caData") && !text.contains("--version"),
            "{text}"
        );
        assert_eq!(i.argv().len(), 4 + 3 + 5 * 2);
    }

    #[test]
    fn special_characters_are_quoted_for_the_shell_and_escaped_for_helm() {
        let token = r#"a'b$c d,e\f"g`h"#;
        let i = install(token, None);
        let argv = i.argv();
        assert!(
            argv.contains(&r#"hub.token=a'b$c d\,e\\f"g`h"#.to_string()),
            "{argv:?}"
        );
        let text = i.text();
        assert!(
            text.contains(r#"--set 'hub.token=a'\''b$c d\,e\\f"g`h' \"#),
            "{text}"
        );
        // A shell turns the text back into exactly the argv.
        let script = format!("printf '%s\\0' {}", text.replacen("helm ", "", 1));
        let out = std::process::Command::new("sh")
            .args(["-c", &script])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let words: Vec<String> = String::from_utf8(out.stdout)
            .unwrap()
            .split_terminator('\0')
            .map(String::from)
            .collect();
        assert_eq!(words, argv[1..]);
    }

    #[test]
    fn values_helm_would_retype_use_set_string() {
        assert_eq!(
            set("cluster.clusterID", "1234"),
            ["--set-string", "cluster.clusterID=1234"]
        );
        assert_eq!(
            set("cluster.clusterID", "true"),
            ["--set-string", "cluster.clusterID=true"]
        );
        assert_eq!(
            set("cluster.clusterID", "0"),
            ["--set-string", "cluster.clusterID=0"]
        );
        assert_eq!(
            set("cluster.clusterID", "0123"),
            ["--set", "cluster.clusterID=0123"]
        );
        assert_eq!(
            set("cluster.clusterID", "edge-1"),
            ["--set", "cluster.clusterID=edge-1"]
        );
    }

    #[test]
    fn shell_quoting() {
        assert_eq!(
            shell_quote("fleetboard/fleetboard-agent"),
            "fleetboard/fleetboard-agent"
        );
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote(""), "''");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote("~/charts"), "'~/charts'");
    }
}
