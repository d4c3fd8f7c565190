//! The probe message: a small UDP payload, a request or the reply echoing its number.

/// UDP port of the probe responder on every dataplane's tunnel address.
pub const PROBE_PORT: u16 = 31829;
/// Bytes of a probe message.
pub const MESSAGE_LEN: usize = 12;
const MAGIC: [u8; 4] = *b"FBPR";
const VERSION: u8 = 1;

/// What a probe message is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Please answer.
    Request,
    /// The answer to the request with the same sequence number.
    Reply,
}

/// A decoded probe message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Message {
    /// Request or reply.
    pub kind: Kind,
    /// The sender's sequence number (echoed by the reply).
    pub seq: u32,
}

impl Message {
    /// The message's bytes.
    pub fn encode(&self) -> [u8; MESSAGE_LEN] {
        let mut b = [0u8; MESSAGE_LEN];
        b[..4].copy_from_slice(&MAGIC);
        b[4] = VERSION;
        b[5] = match self.kind {
            Kind::Request => 1,
            Kind::Reply => 2,
        };
        b[8..12].copy_from_slice(&self.seq.to_be_bytes());
        b
    }

    /// Parses a message; None for anything else (wrong length, magic, version or kind).
    pub fn decode(b: &[u8]) -> Option<Self> {
        if b.len() != MESSAGE_LEN || b[..4] != MAGIC || b[4] != VERSION || b[6..8] != [0, 0] {
            return None;
        }
        let kind = match b[5] {
            1 => Kind::Request,
            2 => Kind::Reply,
            _ => return None,
        };
        let seq = u32::from_be_bytes(b[8..12].try_into().ok()?);
        Some(Self { kind, seq })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_garbage() {
        for kind in [Kind::Request, Kind::Reply] {
            let m = Message {
                kind,
                seq: 0xdead_beef,
            };
            assert_eq!(Message::decode(&m.encode()), Some(m));
        }
        let good = Message {
            kind: Kind::Request,
            seq: 1,
        }
        .encode();
        assert_eq!(Message::decode(&good[..11]), None);
        assert_eq!(Message::decode(&[]), None);
        for i in 0..8 {
            let mut bad = good;
            bad[i] ^= 0x40;
            assert_eq!(Message::decode(&bad), None, "byte {i}");
        }
        let mut long = good.to_vec();
        long.push(0);
        assert_eq!(Message::decode(&long), None);
    }
}
