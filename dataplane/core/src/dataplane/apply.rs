//! [`Dataplane::apply_config`]: a new configuration swapped in without interrupting the
//! sessions of peers that stay.

use ipnet::IpNet;

use super::{Dataplane, UNSPECIFIED, probe_address};
use crate::config::{ConfigError, DataplaneConfig};
use crate::peer::{HandshakeRtt, PeerCounters, PeerId, PeerState};
use crate::probe::PeerProbe;
use crate::relay::{RelayId, RelayIndex};
use crate::route::RouteTable;
use crate::session::{Identity, Session};

impl Dataplane {
    /// Swaps in a new configuration atomically: peers whose key stays keep their sessions
    /// (their traffic is not interrupted), new peers are added, missing ones removed, routes
    /// rebuilt. Interface and socket settings are the driver's (they need a restart).
    pub fn apply_config(&mut self, config: DataplaneConfig) -> Result<(), ConfigError> {
        config.validate()?;
        if config.private_key != self.key {
            // A new identity invalidates every session.
            self.key = config.private_key.clone();
            self.identity = Identity::new(&self.key);
            self.relay_id = RelayId::of(&self.key.public_key());
            let ids: Vec<PeerId> = self.peers.iter().map(|p| p.id).collect();
            for id in ids {
                self.peers.remove(id);
            }
        }
        // Remove peers that are gone.
        let gone: Vec<PeerId> = self
            .peers
            .iter()
            .filter(|p| {
                !config
                    .peers
                    .iter()
                    .any(|c| c.public_key == p.config.public_key)
            })
            .map(|p| p.id)
            .collect();
        for id in gone {
            self.peers.remove(id);
        }
        // Update or add.
        for pc in &config.peers {
            let transport = pc.transport_or(config.transport);
            match self.peers.by_key(&pc.public_key) {
                Some(id) => {
                    let p = self.peers.get_mut(id).expect("found by key");
                    if p.config.persistent_keepalive != pc.persistent_keepalive {
                        p.session =
                            Session::new(&self.key, &pc.public_key, pc.persistent_keepalive, id.0);
                        p.handshake_rtt.reset_pending();
                    }
                    if pc.endpoint.is_some() && pc.endpoint != p.config.endpoint {
                        p.endpoint = pc.endpoint;
                        p.handshake_due = pc.persistent_keepalive.is_some();
                    }
                    p.transport = transport;
                    p.probe
                        .reconfigure(pc.probe_address, usize::from(config.probe.window));
                    p.config = pc.clone();
                }
                None => {
                    let id = self.peers.next_id();
                    self.peers.insert(PeerState {
                        id,
                        config: pc.clone(),
                        transport,
                        endpoint: pc.endpoint,
                        via: None,
                        session: Session::new(
                            &self.key,
                            &pc.public_key,
                            pc.persistent_keepalive,
                            id.0,
                        ),
                        counters: PeerCounters::default(),
                        last_rx: None,
                        last_forced_handshake: None,
                        handshake_rtt: HandshakeRtt::default(),
                        handshake_due: pc.persistent_keepalive.is_some(),
                        probe: PeerProbe::new(pc.probe_address, usize::from(config.probe.window)),
                    });
                }
            }
        }
        // Resolve relays now that every peer has its id.
        let vias: Vec<(PeerId, Option<PeerId>)> = self
            .peers
            .iter()
            .map(|p| (p.id, p.config.via.and_then(|k| self.peers.by_key(&k))))
            .collect();
        for (id, via) in vias {
            if let Some(p) = self.peers.get_mut(id) {
                p.via = via;
            }
        }
        self.relay_index = if config.relay {
            RelayIndex::new(
                self.peers
                    .iter()
                    .map(|p| (RelayId::of(&p.config.public_key), p.id))
                    .collect(),
            )
        } else {
            RelayIndex::default()
        };
        self.relay_sender = None;
        self.relayed_handshakes.clear();
        let mut routes = RouteTable::new();
        for p in self.peers.iter() {
            for c in &p.config.allowed_ips {
                routes.insert(c.trunc(), p.id);
            }
        }
        for r in &config.routes {
            if let Some(id) = self.peers.by_key(&r.peer) {
                routes.insert(r.cidr.trunc(), id);
            }
        }
        let own = config
            .interface
            .addresses
            .iter()
            .map(|a| IpNet::from(a.addr()));
        for c in own.chain(config.local.iter().copied()) {
            routes.insert(c.trunc(), PeerId::LOCAL);
        }
        self.routes = routes;
        self.nat.apply(&config.services);
        self.prober.set_address(probe_address(&config));
        self.prober.set_settings(config.probe);
        self.probe_ip = self.prober.address().unwrap_or(UNSPECIFIED);
        self.config = config;
        Ok(())
    }
}
