//! `keygen` and `pubkey`: the `wg genkey` / `wg pubkey` formats.

use std::io::{Read, Write};

use anyhow::Context;
use fleetboard_dataplane::core::SecretKey;

/// Prints a new clamped Curve25519 private key in base64.
pub fn genkey() -> anyhow::Result<()> {
    let mut b = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .context("reading /dev/urandom")?;
    println!("{}", SecretKey::from_random_bytes(b).to_base64());
    Ok(())
}

/// Reads a private key on stdin and prints its public key.
pub fn pubkey() -> anyhow::Result<()> {
    let mut s = String::new();
    std::io::stdin()
        .read_to_string(&mut s)
        .context("reading stdin")?;
    let k = SecretKey::from_base64(&s).map_err(|e| anyhow::anyhow!("private key on stdin: {e}"))?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{}", k.public_key())?;
    Ok(())
}
