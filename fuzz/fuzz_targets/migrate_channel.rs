//! Migration protocol after a real handshake (both sides hold the key, over a socket pair):
//! the source sends a sequence of well-formed frames, and raw bytes are spliced into the
//! stream (a corrupted, truncated or injected frame). The target's `recv` gets every frame
//! sent before the first splice unchanged, and after a splice only errors, never a panic or a
//! frame the source did not send.
#![no_main]
use arbitrary::Arbitrary;
use drove_agent::jobs::proto::{self, Msg};
use libfuzzer_sys::fuzz_target;
use std::io::Write;
use std::os::unix::net::UnixStream;
use std::time::Duration;

const KEY: [u8; 32] = [0x5a; 32];

#[derive(Arbitrary, Debug)]
enum AMsg {
    Header(String),
    File { name: String, mode: u32, size: u64 },
    Data(Vec<u8>),
    End,
    Restored(String),
    Commit,
    Abort(String),
}

#[derive(Arbitrary, Debug)]
enum Op {
    Send(AMsg),
    Splice(Vec<u8>),
}

fn msg(m: AMsg) -> Msg {
    match m {
        AMsg::Header(s) => Msg::Header(s),
        AMsg::File { name, mode, size } => Msg::File { name, mode, size },
        AMsg::Data(d) => Msg::Data(d),
        AMsg::End => Msg::End,
        AMsg::Restored(s) => Msg::Restored(s),
        AMsg::Commit => Msg::Commit,
        AMsg::Abort(s) => Msg::Abort(s),
    }
}

fuzz_target!(|ops: Vec<Op>| {
    let Ok((a, b)) = UnixStream::pair() else {
        return;
    };
    let _ = b.set_read_timeout(Some(Duration::from_secs(5)));
    let Ok(raw) = a.try_clone() else {
        return;
    };
    let source = std::thread::spawn(move || proto::connect(a, &KEY));
    let mut target = proto::accept(b, &KEY).expect("handshake with the key");
    let mut source = source.join().expect("source thread").expect("handshake");
    // Send everything first (the socket buffer holds a small input), then receive it all.
    let mut expected = Vec::new();
    let mut spliced = false;
    let mut raw = raw;
    let mut sent_bytes = 0usize;
    // Everything is written before anything is read: stay well inside the socket buffer.
    const BUDGET: usize = 100_000;
    for op in ops {
        match op {
            Op::Send(m) => {
                let m = msg(m);
                let encoded = m.encode();
                if encoded.len() > proto::CHUNK + 1 || sent_bytes + encoded.len() + 18 > BUDGET {
                    continue;
                }
                sent_bytes += encoded.len() + 18;
                // A name the target would refuse is still a valid frame to send.
                if source.send(&m).is_err() {
                    continue;
                }
                if !spliced {
                    expected.push(Msg::decode(&encoded).ok());
                }
            }
            Op::Splice(bytes) => {
                if sent_bytes + bytes.len() > BUDGET {
                    continue;
                }
                sent_bytes += bytes.len();
                if raw.write_all(&bytes).is_err() {
                    break;
                }
                spliced = spliced || !bytes.is_empty();
            }
        }
    }
    drop(source);
    drop(raw);
    let mut got = 0;
    loop {
        match target.recv() {
            Ok(m) => {
                assert!(got < expected.len(), "a frame nobody sent: {m:?}");
                assert_eq!(Some(&m), expected[got].as_ref(), "frame {got} changed");
                got += 1;
            }
            Err(proto::Error::Body(_)) if got < expected.len() && expected[got].is_none() => {
                got += 1;
            }
            Err(_) => break,
        }
    }
    assert!(
        got >= expected.len(),
        "lost frames: got {got} of {}",
        expected.len()
    );
});
