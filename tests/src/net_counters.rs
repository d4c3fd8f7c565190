//! The kernel's network counters inside a namespace (`/proc/net/netstat` and
//! `/proc/net/snmp`, what `nstat` reads), for tests that must say why a transfer was slow:
//! retransmission timeouts, tail loss probes, socket buffer overflows.

use std::collections::BTreeMap;

use crate::netns::Netns;

/// Counters of one namespace, keyed `Group.Name` (e.g. `TcpExt.TCPTimeouts`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NetCounters(pub BTreeMap<String, u64>);

impl NetCounters {
    /// Reads every counter of `ns` (empty when the files cannot be read).
    pub fn read(ns: &Netns) -> Self {
        let text = ns
            .exec("cat", &["/proc/net/netstat", "/proc/net/snmp"])
            .unwrap_or_default();
        Self::parse(&text)
    }

    /// Parses the `Group: Name Name...` / `Group: value value...` line pairs of those files.
    pub fn parse(text: &str) -> Self {
        let mut map = BTreeMap::new();
        let lines: Vec<&str> = text.lines().collect();
        for pair in lines.chunks(2) {
            let [names, values] = pair else { continue };
            let (Some((group, names)), Some((_, values))) =
                (names.split_once(':'), values.split_once(':'))
            else {
                continue;
            };
            for (n, v) in names.split_whitespace().zip(values.split_whitespace()) {
                if let Ok(v) = v.parse::<u64>() {
                    map.insert(format!("{group}.{n}"), v);
                }
            }
        }
        Self(map)
    }

    /// What grew since `before` (counters that did not change are left out).
    pub fn since(&self, before: &Self) -> Self {
        Self(
            self.0
                .iter()
                .filter_map(|(k, v)| {
                    let d = v.saturating_sub(*before.0.get(k).unwrap_or(&0));
                    (d > 0).then(|| (k.clone(), d))
                })
                .collect(),
        )
    }

    /// `name=value` for the counters in `keys` that are non-zero (e.g. for a report line).
    pub fn show(&self, keys: &[&str]) -> String {
        keys.iter()
            .filter_map(|k| {
                let name = k.split_once('.').map_or(*k, |(_, n)| n);
                self.0.get(*k).map(|v| format!("{name}={v}"))
            })
            .collect::<Vec<_>>()
            .join(" ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_of_lines_become_counters_and_deltas_keep_what_grew() {
        let a = NetCounters::parse(
            "TcpExt: TCPTimeouts TCPLossProbes\nTcpExt: 1 5\nUdp: InDatagrams RcvbufErrors\nUdp: 10 0\n",
        );
        assert_eq!(a.0["TcpExt.TCPTimeouts"], 1);
        assert_eq!(a.0["Udp.InDatagrams"], 10);
        let b = NetCounters::parse(
            "TcpExt: TCPTimeouts TCPLossProbes\nTcpExt: 3 5\nUdp: InDatagrams RcvbufErrors\nUdp: 12 0\n",
        );
        let d = b.since(&a);
        assert_eq!(d.0.len(), 2);
        assert_eq!(
            d.show(&[
                "TcpExt.TCPTimeouts",
                "TcpExt.TCPLossProbes",
                "Udp.InDatagrams"
            ]),
            "TCPTimeouts=2 InDatagrams=2"
        );
    }
}
