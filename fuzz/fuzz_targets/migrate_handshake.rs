//! Migration protocol, the target's side of the handshake: arbitrary bytes from a peer that
//! does not hold the key. `accept` must refuse, and never read past the handshake.
#![no_main]
use drove_agent::jobs::proto;
use libfuzzer_sys::fuzz_target;
use std::io::{Cursor, Read, Write};

const KEY: [u8; 32] = [0x5a; 32];

/// Reads the fuzz input, swallows what the target answers.
struct Peer {
    input: Cursor<Vec<u8>>,
    answered: usize,
}

impl Read for Peer {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.input.read(buf)
    }
}

impl Write for Peer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.answered += buf.len();
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fuzz_target!(|data: &[u8]| {
    let peer = Peer {
        input: Cursor::new(data.to_vec()),
        answered: 0,
    };
    // The first handshake message carries an ephemeral key and a PSK-keyed tag: random bytes
    // cannot produce it, so the handshake fails, and the target says nothing back.
    match proto::accept(peer, &KEY) {
        Ok(_) => panic!("handshake accepted from a peer without the key"),
        Err(proto::Error::Handshake(_) | proto::Error::Truncated | proto::Error::Noise(_)) => {}
        Err(e) => panic!("unexpected handshake error: {e}"),
    }
});
