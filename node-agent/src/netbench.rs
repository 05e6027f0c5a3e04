//! Raw TCP throughput between two nodes, for the migration benchmark's "link" figure:
//! `drove-agent tcp-sink PORT` on one node takes one connection and reads it to the end;
//! `drove-agent tcp-send ADDR:PORT MIB` on another writes MIB MiB, closes its side and waits
//! for the sink to close, so the time counts every byte delivered, not just buffered.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("tcp-sink on port {port}: {source}")]
    Sink { port: u16, source: std::io::Error },
    #[error("tcp-send to {addr}: {source}")]
    Send {
        addr: String,
        source: std::io::Error,
    },
}

/// Accepts one connection on `port` and reads it to the end; returns the bytes read.
pub fn sink(listener: &TcpListener) -> std::io::Result<u64> {
    let (mut s, _) = listener.accept()?;
    let mut buf = vec![0u8; 1 << 16];
    let mut total = 0u64;
    loop {
        match s.read(&mut buf)? {
            0 => break,
            n => total += n as u64,
        }
    }
    Ok(total)
}

/// Sends `bytes` to `addr`, waits for the peer to close; returns the time taken.
pub fn send(addr: &str, bytes: u64) -> Result<Duration, Error> {
    let err = |source| Error::Send {
        addr: addr.to_owned(),
        source,
    };
    let mut s = TcpStream::connect(addr).map_err(err)?;
    let buf = vec![0x5au8; 1 << 16];
    let t0 = Instant::now();
    let mut left = bytes;
    while left > 0 {
        let n = usize::try_from(left).map_or(buf.len(), |l| l.min(buf.len()));
        s.write_all(&buf[..n]).map_err(err)?;
        left -= n as u64;
    }
    s.shutdown(Shutdown::Write).map_err(err)?;
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).map_err(err)?;
    Ok(t0.elapsed())
}

/// `tcp-sink PORT`: prints `received N bytes`.
pub fn sink_main(port: &str) -> i32 {
    let Ok(port) = port.parse::<u16>() else {
        eprintln!("drove-agent: tcp-sink: bad port {port:?}");
        return 2;
    };
    let run = || -> Result<u64, Error> {
        let l =
            TcpListener::bind(("0.0.0.0", port)).map_err(|source| Error::Sink { port, source })?;
        sink(&l).map_err(|source| Error::Sink { port, source })
    };
    match run() {
        Ok(n) => {
            println!("received {n} bytes");
            0
        }
        Err(e) => {
            eprintln!("drove-agent: {e}");
            1
        }
    }
}

/// `tcp-send ADDR:PORT MIB`: prints `sent N bytes in S s: R MiB/s`.
pub fn send_main(addr: &str, mib: &str) -> i32 {
    let Ok(mib) = mib.parse::<u64>() else {
        eprintln!("drove-agent: tcp-send: bad size {mib:?} (MiB)");
        return 2;
    };
    match send(addr, mib << 20) {
        Ok(d) => {
            let s = d.as_secs_f64().max(1e-9);
            println!(
                "sent {} bytes in {s:.3} s: {:.1} MiB/s",
                mib << 20,
                mib as f64 / s
            );
            0
        }
        Err(e) => {
            eprintln!("drove-agent: {e}");
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_byte_sent_is_received_before_send_returns() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let t = std::thread::spawn(move || sink(&l).unwrap());
        let took = send(&addr, 3 << 20).unwrap();
        assert_eq!(t.join().unwrap(), 3 << 20);
        assert!(took > Duration::ZERO);
        assert!(send("127.0.0.1:1", 1).is_err());
    }
}
