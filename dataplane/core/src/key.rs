//! WireGuard keys (base64 Curve25519, like `wg genkey` / `wg pubkey`).

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Why a key string was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// Not valid base64.
    #[error("not valid base64")]
    Base64,
    /// Decoded to a length other than 32 bytes.
    #[error("must decode to 32 bytes, got {0}")]
    Length(usize),
}

fn decode32(s: &str) -> Result<[u8; 32], KeyError> {
    let v = STANDARD.decode(s.trim()).map_err(|_| KeyError::Base64)?;
    <[u8; 32]>::try_from(v.as_slice()).map_err(|_| KeyError::Length(v.len()))
}

/// A Curve25519 public key (a peer's identity).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PublicKey(pub [u8; 32]);

impl PublicKey {
    /// Parses base64 (the `wg pubkey` format).
    pub fn from_base64(s: &str) -> Result<Self, KeyError> {
        decode32(s).map(Self)
    }

    /// Base64 text (the `wg pubkey` format).
    pub fn to_base64(&self) -> String {
        STANDARD.encode(self.0)
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_base64())
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.to_base64())
    }
}

/// A Curve25519 private key. Never printed: `Debug` shows only the public half.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretKey(pub [u8; 32]);

impl SecretKey {
    /// Parses base64 (the `wg genkey` format).
    pub fn from_base64(s: &str) -> Result<Self, KeyError> {
        decode32(s).map(Self)
    }

    /// A key from 32 random bytes, clamped like `wg genkey` does.
    pub fn from_random_bytes(mut b: [u8; 32]) -> Self {
        b[0] &= 248;
        b[31] &= 127;
        b[31] |= 64;
        Self(b)
    }

    /// Base64 text (the `wg genkey` format).
    pub fn to_base64(&self) -> String {
        STANDARD.encode(self.0)
    }

    /// The matching public key (`wg pubkey`).
    pub fn public_key(&self) -> PublicKey {
        let secret = boringtun::x25519::StaticSecret::from(self.0);
        PublicKey(boringtun::x25519::PublicKey::from(&secret).to_bytes())
    }
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretKey(public={})", self.public_key())
    }
}

macro_rules! serde_base64 {
    ($t:ty) => {
        impl Serialize for $t {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.to_base64())
            }
        }
        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                Self::from_base64(&s).map_err(serde::de::Error::custom)
            }
        }
    };
}
serde_base64!(PublicKey);
serde_base64!(SecretKey);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pubkey_matches_rfc7748_vector() {
        // RFC 7748 section 6.1: Alice's private and public key.
        let sk = [
            0x77, 0x07, 0x6d, 0x0a, 0x73, 0x18, 0xa5, 0x7d, 0x3c, 0x16, 0xc1, 0x72, 0x51, 0xb2,
            0x66, 0x45, 0xdf, 0x4c, 0x2f, 0x87, 0xeb, 0xc0, 0x99, 0x2a, 0xb1, 0x77, 0xfb, 0xa5,
            0x1d, 0xb9, 0x2c, 0x2a,
        ];
        let pk = SecretKey(sk).public_key();
        assert_eq!(
            pk.0[..4],
            [0x85, 0x20, 0xf0, 0x09],
            "public key of RFC 7748 vector"
        );
    }

    #[test]
    fn base64_roundtrip_and_errors() {
        let k = SecretKey::from_random_bytes([7; 32]);
        assert_eq!(SecretKey::from_base64(&k.to_base64()).unwrap(), k);
        assert_eq!(PublicKey::from_base64("!!"), Err(KeyError::Base64));
        assert_eq!(PublicKey::from_base64("AAAA"), Err(KeyError::Length(3)));
        assert!(!format!("{k:?}").contains(&k.to_base64()));
    }
}
