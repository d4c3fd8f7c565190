//! Printing the rows: an aligned table (like `kubectl get`), its wide form, JSON and YAML.

use serde::Serialize;

use crate::summary::PeerSummary;

/// Placeholder for a value the cluster has not reported (yet).
const NONE: &str = "-";

/// The `-o json|yaml` document.
#[derive(Serialize)]
struct Document<'a> {
    namespace: &'a str,
    clusters: &'a [PeerSummary],
}

/// `{"namespace": .., "clusters": [..]}` as pretty JSON.
pub fn json(namespace: &str, rows: &[PeerSummary]) -> anyhow::Result<String> {
    let mut text = serde_json::to_string_pretty(&Document {
        namespace,
        clusters: rows,
    })?;
    text.push('\n');
    Ok(text)
}

/// The same document as YAML.
pub fn yaml(namespace: &str, rows: &[PeerSummary]) -> anyhow::Result<String> {
    Ok(serde_yaml::to_string(&Document {
        namespace,
        clusters: rows,
    })?)
}

/// Aligned columns; `wide` adds readiness, the Connected reason, reachability and the key.
pub fn table(rows: &[PeerSummary], wide: bool) -> String {
    let mut header = vec![
        "CLUSTER",
        "HUB",
        "CIDRS",
        "ENDPOINT",
        "TRANSPORT",
        "CONNECTED",
        "HANDSHAKE",
        "RTT",
        "RX",
        "TX",
        "AGE",
    ];
    if wide {
        header.extend(["READY", "REASON", "PUBLIC", "KEY", "PROBE-RTT", "LOSS"]);
    }
    let mut cells: Vec<Vec<String>> = vec![header.iter().map(|h| h.to_string()).collect()];
    for r in rows {
        let mut line = vec![
            r.cluster.clone(),
            if r.hub { "yes" } else { "no" }.to_string(),
            or_none(Some(r.cidrs.join(",")).filter(|s| !s.is_empty())),
            or_none(r.endpoint.clone()),
            r.transport.clone(),
            or_none(r.connected.clone()),
            or_none(
                r.handshake_age_seconds
                    .map(|s| format!("{} ago", duration(s))),
            ),
            or_none(r.rtt_micros.map(rtt)),
            or_none(r.rx_bytes.map(bytes)),
            or_none(r.tx_bytes.map(bytes)),
            or_none(r.age_seconds.map(duration)),
        ];
        if wide {
            line.extend([
                or_none(r.ready.clone()),
                or_none(r.connected_reason.clone()),
                if r.public { "yes" } else { "no" }.to_string(),
                or_none(
                    r.public_key
                        .clone()
                        .or_else(|| r.cert_fingerprint.as_ref().map(|f| format!("sha256:{f}"))),
                ),
                or_none(r.probe_rtt_micros.map(rtt)),
                or_none(r.probe_loss_percent.map(|l| format!("{l}%"))),
            ]);
        }
        cells.push(line);
    }
    let columns = cells[0].len();
    let widths: Vec<usize> = (0..columns)
        .map(|i| {
            cells
                .iter()
                .map(|l| l[i].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for line in &cells {
        let mut text = String::new();
        for (i, cell) in line.iter().enumerate() {
            text.push_str(cell);
            if i + 1 < columns {
                let pad = widths[i] - cell.chars().count() + 3;
                text.extend(std::iter::repeat_n(' ', pad));
            }
        }
        out.push_str(text.trim_end());
        out.push('\n');
    }
    out
}

fn or_none(v: Option<String>) -> String {
    v.unwrap_or_else(|| NONE.to_string())
}

/// A duration the way kubectl prints ages: `42s`, `5m12s`, `3h`, `2d4h`, `400d`.
pub fn duration(seconds: i64) -> String {
    let s = seconds.max(0);
    let (m, h, d) = (s / 60, s / 3600, s / 86_400);
    match s {
        0..120 => format!("{s}s"),
        120..600 => format!("{m}m{}s", s % 60),
        600..10_800 => format!("{m}m"),
        10_800..28_800 => format!("{h}h{}m", m % 60),
        28_800..172_800 => format!("{h}h"),
        172_800..691_200 => format!("{d}d{}h", h % 24),
        _ => format!("{d}d"),
    }
}

/// Round-trip time from microseconds: `850us`, `1.25ms`, `32.1ms`, `1.20s`.
pub fn rtt(micros: u64) -> String {
    match micros {
        0..1_000 => format!("{micros}us"),
        1_000..10_000 => format!("{:.2}ms", micros as f64 / 1e3),
        10_000..1_000_000 => format!("{:.1}ms", micros as f64 / 1e3),
        _ => format!("{:.2}s", micros as f64 / 1e6),
    }
}

/// A byte count in binary units: `512B`, `1.5KiB`, `3.2GiB`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n}B");
    }
    let mut value = n as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1}{}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_units() {
        assert_eq!(duration(42), "42s");
        assert_eq!(duration(312), "5m12s");
        assert_eq!(duration(3_600), "60m");
        assert_eq!(duration(4 * 3_600 + 60), "4h1m");
        assert_eq!(duration(3 * 86_400 + 7_200), "3d2h");
        assert_eq!(rtt(850), "850us");
        assert_eq!(rtt(1_250), "1.25ms");
        assert_eq!(rtt(32_100), "32.1ms");
        assert_eq!(bytes(512), "512B");
        assert_eq!(bytes(1536), "1.5KiB");
        assert_eq!(bytes(3 * 1024 * 1024 * 1024), "3.0GiB");
    }

    #[test]
    fn table_columns_align_and_wide_adds_columns() {
        let row = PeerSummary {
            cluster: "cluster-a".into(),
            hub: false,
            cidrs: vec!["100.64.1.0/24".into()],
            endpoint: Some("198.18.0.10:31820".into()),
            transport: "wg".into(),
            connected: Some("True".into()),
            connected_reason: Some("Handshake".into()),
            ready: Some("True".into()),
            last_handshake: None,
            handshake_age_seconds: Some(5),
            rtt_micros: Some(1_250),
            probe_rtt_micros: Some(980),
            probe_loss_percent: Some(0),
            rx_bytes: Some(2048),
            tx_bytes: None,
            public: true,
            public_key: None,
            cert_fingerprint: None,
            age_seconds: Some(90),
        };
        let text = table(std::slice::from_ref(&row), false);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("CLUSTER     HUB   CIDRS"), "{text}");
        let cols: Vec<&str> = lines[1].split_whitespace().collect();
        assert_eq!(
            cols,
            [
                "cluster-a",
                "no",
                "100.64.1.0/24",
                "198.18.0.10:31820",
                "wg",
                "True",
                "5s",
                "ago",
                "1.25ms",
                "2.0KiB",
                "-",
                "90s"
            ]
        );
        let wide = table(&[row], true);
        assert!(
            wide.lines()
                .next()
                .unwrap()
                .ends_with("READY   REASON      PUBLIC   KEY   PROBE-RTT   LOSS"),
            "{wide}"
        );
        assert!(
            wide.lines().nth(1).unwrap().ends_with("980us       0%"),
            "{wide}"
        );
    }
}
