//! The migration transfer protocol: one TCP connection from the source agent to the target
//! agent, Noise `NNpsk0` (snow) keyed by the cluster key, then length-prefixed encrypted frames.
//!
//! Both sides prove they hold the cluster key inside the handshake: the responder (target)
//! cannot decrypt the first message without it, the initiator (source) cannot decrypt the
//! second. No application frame is read before the handshake has succeeded, so a peer without
//! the key is refused before a single image byte is accepted. After the handshake every frame is
//! ChaCha20-Poly1305 with a counter nonce: a changed, dropped, replayed or truncated frame
//! fails to decrypt and the transfer is abandoned.
//!
//! Wire: `u16` big-endian length, then that many bytes of Noise message (≤ 65535).
//! Plaintext of a transport message: one tag byte, then the body (see [`Msg`]).

use sha2::{Digest, Sha256};
use std::io::{Read, Write};

const PATTERN: &str = "Noise_NNpsk0_25519_ChaChaPoly_SHA256";
const PROLOGUE: &[u8] = b"drove-migrate-v1";
/// Largest Noise message; the AEAD tag takes 16 bytes of it.
const MAX_NOISE: usize = 65535;
/// Largest body of one [`Msg::Data`] frame.
pub const CHUNK: usize = MAX_NOISE - 16 - 1;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("connection: {0}")]
    Io(#[from] std::io::Error),
    #[error("handshake refused: the peer does not hold this cluster's key ({0})")]
    Handshake(snow::Error),
    #[error("frame rejected (corrupt, replayed or wrong key): {0}")]
    Decrypt(snow::Error),
    #[error("noise: {0}")]
    Noise(snow::Error),
    #[error("connection closed in the middle of the transfer")]
    Truncated,
    #[error("unexpected frame: {0}")]
    Unexpected(String),
    #[error("bad frame body: {0}")]
    Body(String),
}

/// One application frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Msg {
    /// Source → target: the job record and output offsets (JSON).
    Header(String),
    /// Source → target: a file follows: (relative name, mode, size).
    File { name: String, mode: u32, size: u64 },
    /// Source → target: bytes of the current file.
    Data(Vec<u8>),
    /// Source → target: all files sent.
    End,
    /// Target → source: restore result (JSON: ok, pid, error).
    Restored(String),
    /// Source → target: the source copy is gone; resume the restored job.
    Commit,
    /// Either way: give up, with a reason.
    Abort(String),
}

impl Msg {
    pub fn encode(&self) -> Vec<u8> {
        let (tag, body): (u8, Vec<u8>) = match self {
            Msg::Header(j) => (b'H', j.as_bytes().to_vec()),
            Msg::File { name, mode, size } => {
                let mut b = Vec::with_capacity(12 + name.len());
                b.extend_from_slice(&mode.to_be_bytes());
                b.extend_from_slice(&size.to_be_bytes());
                b.extend_from_slice(name.as_bytes());
                (b'F', b)
            }
            Msg::Data(d) => (b'D', d.clone()),
            Msg::End => (b'E', Vec::new()),
            Msg::Restored(j) => (b'R', j.as_bytes().to_vec()),
            Msg::Commit => (b'C', Vec::new()),
            Msg::Abort(r) => (b'A', r.as_bytes().to_vec()),
        };
        let mut out = Vec::with_capacity(1 + body.len());
        out.push(tag);
        out.extend_from_slice(&body);
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Msg, Error> {
        let (&tag, body) = bytes
            .split_first()
            .ok_or_else(|| Error::Body("empty frame".into()))?;
        let text =
            |b: &[u8]| String::from_utf8(b.to_vec()).map_err(|_| Error::Body("not UTF-8".into()));
        Ok(match tag {
            b'H' => Msg::Header(text(body)?),
            b'F' => {
                if body.len() < 12 {
                    return Err(Error::Body("short file header".into()));
                }
                let mode = u32::from_be_bytes([body[0], body[1], body[2], body[3]]);
                let mut size = [0u8; 8];
                size.copy_from_slice(&body[4..12]);
                let name = text(&body[12..])?;
                if !safe_name(&name) {
                    return Err(Error::Body(format!(
                        "file name {name:?} leaves the image directory"
                    )));
                }
                Msg::File {
                    name,
                    mode,
                    size: u64::from_be_bytes(size),
                }
            }
            b'E' | b'C' if !body.is_empty() => {
                return Err(Error::Body(format!(
                    "{} bytes after an empty frame",
                    body.len()
                )))
            }
            b'D' => Msg::Data(body.to_vec()),
            b'E' => Msg::End,
            b'R' => Msg::Restored(text(body)?),
            b'C' => Msg::Commit,
            b'A' => Msg::Abort(text(body)?),
            t => return Err(Error::Body(format!("unknown frame tag {t:#04x}"))),
        })
    }
}

/// A relative path of plain components (`img/pages-1.img`, `out/stdout`): no `..`, no root.
pub fn safe_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() < 256
        && name
            .split('/')
            .all(|c| !c.is_empty() && c != "." && c != ".." && !c.contains('\0'))
}

/// The Noise PSK: the cluster key hashed with a label, so this key is never the gossip key itself.
pub fn psk(cluster_key: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"drove migration psk v1\0");
    h.update(cluster_key);
    h.finalize().into()
}

fn write_raw<W: Write>(w: &mut W, msg: &[u8]) -> Result<(), Error> {
    let len = u16::try_from(msg.len()).map_err(|_| Error::Body("frame too long".into()))?;
    // One write per frame: with TCP_NODELAY a separate length would be a packet of its own.
    let mut frame = Vec::with_capacity(2 + msg.len());
    frame.extend_from_slice(&len.to_be_bytes());
    frame.extend_from_slice(msg);
    w.write_all(&frame)?;
    Ok(())
}

fn read_raw<R: Read>(r: &mut R, buf: &mut [u8]) -> Result<usize, Error> {
    let mut len = [0u8; 2];
    read_exact(r, &mut len)?;
    let n = u16::from_be_bytes(len) as usize;
    read_exact(r, &mut buf[..n])?;
    Ok(n)
}

fn read_exact<R: Read>(r: &mut R, buf: &mut [u8]) -> Result<(), Error> {
    r.read_exact(buf).map_err(|e| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            Error::Truncated
        } else {
            Error::Io(e)
        }
    })
}

/// An established, keyed channel.
pub struct Channel<S> {
    stream: S,
    noise: snow::TransportState,
    buf: Vec<u8>,
    plain: Vec<u8>,
}

fn builder() -> Result<snow::Builder<'static>, Error> {
    let params = PATTERN.parse().map_err(Error::Noise)?;
    Ok(snow::Builder::new(params))
}

/// Source side: runs the handshake as initiator.
pub fn connect<S: Read + Write>(mut stream: S, cluster_key: &[u8]) -> Result<Channel<S>, Error> {
    let key = psk(cluster_key);
    let mut hs = builder()?
        .prologue(PROLOGUE)
        .psk(0, &key)
        .build_initiator()
        .map_err(Error::Noise)?;
    let mut buf = vec![0u8; MAX_NOISE];
    let n = hs.write_message(&[], &mut buf).map_err(Error::Noise)?;
    write_raw(&mut stream, &buf[..n])?;
    stream.flush()?;
    let n = read_raw(&mut stream, &mut buf)?;
    let mut scratch = vec![0u8; MAX_NOISE];
    hs.read_message(&buf[..n], &mut scratch)
        .map_err(Error::Handshake)?;
    let noise = hs.into_transport_mode().map_err(Error::Noise)?;
    Ok(Channel {
        stream,
        noise,
        buf,
        plain: scratch,
    })
}

/// Target side: runs the handshake as responder. Fails before any application frame is read
/// when the initiator does not hold the key.
pub fn accept<S: Read + Write>(mut stream: S, cluster_key: &[u8]) -> Result<Channel<S>, Error> {
    let key = psk(cluster_key);
    let mut hs = builder()?
        .prologue(PROLOGUE)
        .psk(0, &key)
        .build_responder()
        .map_err(Error::Noise)?;
    let mut buf = vec![0u8; MAX_NOISE];
    let mut scratch = vec![0u8; MAX_NOISE];
    let n = read_raw(&mut stream, &mut buf)?;
    hs.read_message(&buf[..n], &mut scratch)
        .map_err(Error::Handshake)?;
    let n = hs.write_message(&[], &mut buf).map_err(Error::Noise)?;
    write_raw(&mut stream, &buf[..n])?;
    stream.flush()?;
    let noise = hs.into_transport_mode().map_err(Error::Noise)?;
    Ok(Channel {
        stream,
        noise,
        buf,
        plain: scratch,
    })
}

impl<S: Read + Write> Channel<S> {
    pub fn send(&mut self, msg: &Msg) -> Result<(), Error> {
        let plain = msg.encode();
        let n = self
            .noise
            .write_message(&plain, &mut self.buf)
            .map_err(Error::Noise)?;
        write_raw(&mut self.stream, &self.buf[..n])?;
        if !matches!(msg, Msg::Data(_)) {
            self.stream.flush()?;
        }
        Ok(())
    }

    pub fn recv(&mut self) -> Result<Msg, Error> {
        let n = read_raw(&mut self.stream, &mut self.buf)?;
        let m = self
            .noise
            .read_message(&self.buf[..n], &mut self.plain)
            .map_err(Error::Decrypt)?;
        Msg::decode(&self.plain[..m])
    }

    pub fn flush(&mut self) -> Result<(), Error> {
        self.stream.flush()?;
        Ok(())
    }

    pub fn into_inner(self) -> S {
        self.stream
    }

    /// The underlying stream (to change its timeouts between phases).
    pub fn get_ref(&self) -> &S {
        &self.stream
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{TcpListener, TcpStream};

    const KEY: [u8; 32] = [7u8; 32];

    fn pair(
        server_key: [u8; 32],
        client_key: [u8; 32],
    ) -> (
        Result<Channel<TcpStream>, Error>,
        Result<Channel<TcpStream>, Error>,
    ) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let t = std::thread::spawn(move || {
            let (s, _) = l.accept().unwrap();
            accept(s, &server_key)
        });
        let c = connect(TcpStream::connect(addr).unwrap(), &client_key);
        (t.join().unwrap(), c)
    }

    #[test]
    fn frames_round_trip() {
        for m in [
            Msg::Header("{\"id\":\"1.1\"}".into()),
            Msg::File {
                name: "img/pages-1.img".into(),
                mode: 0o600,
                size: 1 << 33,
            },
            Msg::Data(vec![0, 1, 2, 255]),
            Msg::End,
            Msg::Restored("{}".into()),
            Msg::Commit,
            Msg::Abort("no".into()),
        ] {
            assert_eq!(Msg::decode(&m.encode()).unwrap(), m);
        }
        assert!(Msg::decode(
            &Msg::File {
                name: "../etc/passwd".into(),
                mode: 0,
                size: 0
            }
            .encode()
        )
        .is_err());
        assert!(Msg::decode(
            &Msg::File {
                name: "/etc/passwd".into(),
                mode: 0,
                size: 0
            }
            .encode()
        )
        .is_err());
        assert!(Msg::decode(b"Z").is_err());
        assert!(Msg::decode(&[]).is_err());
    }

    #[test]
    fn good_key_carries_frames_both_ways() {
        let (s, c) = pair(KEY, KEY);
        let (mut s, mut c) = (s.unwrap(), c.unwrap());
        let big = vec![0xabu8; CHUNK];
        c.send(&Msg::Header("h".into())).unwrap();
        c.send(&Msg::Data(big.clone())).unwrap();
        c.send(&Msg::End).unwrap();
        c.flush().unwrap();
        assert_eq!(s.recv().unwrap(), Msg::Header("h".into()));
        assert_eq!(s.recv().unwrap(), Msg::Data(big));
        assert_eq!(s.recv().unwrap(), Msg::End);
        s.send(&Msg::Restored("{\"ok\":true}".into())).unwrap();
        assert_eq!(c.recv().unwrap(), Msg::Restored("{\"ok\":true}".into()));
    }

    // Found by `make fuzz` (migrate_frame): `CC` decoded as Commit, its extra byte ignored.
    #[test]
    fn empty_frames_with_a_body_are_refused() {
        for frame in [&b"CC"[..], b"E\0", b"Cx"] {
            assert!(
                matches!(Msg::decode(frame), Err(Error::Body(_))),
                "{frame:?}"
            );
        }
        assert_eq!(Msg::decode(b"C").unwrap(), Msg::Commit);
        assert_eq!(Msg::decode(b"E").unwrap(), Msg::End);
    }

    #[test]
    fn wrong_key_is_refused_in_the_handshake() {
        let (s, c) = pair(KEY, [8u8; 32]);
        assert!(
            matches!(s, Err(Error::Handshake(_))),
            "server accepted a stranger"
        );
        // The server closed without answering: the client sees the end of the stream.
        assert!(c.is_err());
    }

    #[test]
    fn bytes_before_a_handshake_are_never_taken_as_payload() {
        // A stranger who skips the handshake and sends a file frame in the clear.
        let mut raw = Vec::new();
        write_raw(
            &mut raw,
            &Msg::File {
                name: "x".into(),
                mode: 0o600,
                size: 3,
            }
            .encode(),
        )
        .unwrap();
        let mut stream = std::io::Cursor::new(raw);
        let mut duplex = Duplex {
            r: &mut stream,
            w: Vec::new(),
        };
        assert!(matches!(
            accept(&mut duplex, &KEY),
            Err(Error::Handshake(_))
        ));
    }

    #[test]
    fn truncated_and_tampered_streams_fail() {
        // Record what an honest client sends after the handshake, then replay it cut short.
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let t = std::thread::spawn(move || {
            let (s, _) = l.accept().unwrap();
            let mut ch = accept(s, &KEY).unwrap();
            let a = ch.recv();
            let b = ch.recv();
            (a, b)
        });
        let mut c = connect(TcpStream::connect(addr).unwrap(), &KEY).unwrap();
        c.send(&Msg::Header("x".into())).unwrap();
        // Half a frame, then the connection closes.
        let s = c.into_inner();
        (&s).write_all(&[0, 40, 1, 2, 3]).unwrap();
        drop(s);
        let (a, b) = t.join().unwrap();
        assert_eq!(a.unwrap(), Msg::Header("x".into()));
        assert!(matches!(b, Err(Error::Truncated)), "{b:?}");

        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let t = std::thread::spawn(move || {
            let (s, _) = l.accept().unwrap();
            accept(s, &KEY).unwrap().recv()
        });
        let c = connect(TcpStream::connect(addr).unwrap(), &KEY).unwrap();
        let s = c.into_inner();
        // A well-formed length with garbage inside: fails authentication.
        (&s).write_all(&[0, 20]).unwrap();
        (&s).write_all(&[9u8; 20]).unwrap();
        assert!(matches!(t.join().unwrap(), Err(Error::Decrypt(_))));
    }

    struct Duplex<'a, R> {
        r: &'a mut R,
        w: Vec<u8>,
    }
    impl<R: Read> Read for &mut Duplex<'_, R> {
        fn read(&mut self, b: &mut [u8]) -> std::io::Result<usize> {
            self.r.read(b)
        }
    }
    impl<R> Write for &mut Duplex<'_, R> {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.w.extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
}
