//! Gossip, inner layer: what a key holder (or a buggy peer) can send. A sequence of datagrams,
//! each sealed with the right key, either as raw JSON bytes or as a well-formed message with
//! arbitrary field values, interleaved with clock ticks; then everything the API reads.
#![no_main]
use arbitrary::Arbitrary;
use drove_agent::gossip::{Config, Entry, Load, Membership, Message};
use drove_agent::wire;
use hmac::{Hmac, Mac};
use libfuzzer_sys::fuzz_target;
use sha2::Sha256;
use std::net::Ipv4Addr;

const KEY: &[u8] = b"drove-fuzz-cluster-key-0123456789";

#[derive(Arbitrary, Debug)]
struct AEntry {
    number: u32,
    name: String,
    /// Small values land on the test segment (10.10.0.x) so entries collide and merge.
    addr: u32,
    incarnation: u64,
    heartbeat: u64,
    age_ms: u64,
    load: f64,
    speed: f64,
    mem_free: u64,
    mem_total: u64,
    jobs: u32,
    guest_jobs: u32,
    leaving: bool,
}

#[derive(Arbitrary, Debug)]
enum Op {
    Raw {
        src: u8,
        body: Vec<u8>,
    },
    Msg {
        src: u8,
        other_cluster: bool,
        incarnation: u64,
        seq: u64,
        entries: Vec<AEntry>,
    },
    Tick {
        ms: u16,
    },
    Load {
        load: f64,
        speed: f64,
    },
}

#[derive(Arbitrary, Debug)]
struct Input {
    discovery: bool,
    ops: Vec<Op>,
}

fn addr(x: u32) -> Ipv4Addr {
    if x < 1024 {
        Ipv4Addr::new(10, 10, 0, (x % 8) as u8)
    } else {
        Ipv4Addr::from(x)
    }
}

fn seal_raw(body: &[u8]) -> Vec<u8> {
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(KEY).expect("any key length");
    m.update(wire::MAGIC);
    m.update(body);
    let mut out = wire::MAGIC.to_vec();
    out.extend_from_slice(&m.finalize().into_bytes());
    out.extend_from_slice(body);
    out
}

fuzz_target!(|input: Input| {
    let me = Entry {
        number: 1,
        name: "node1".into(),
        addr: Ipv4Addr::new(10, 10, 0, 1),
        incarnation: 5,
        heartbeat: 0,
        age_ms: 0,
        load: Load::default(),
        leaving: false,
    };
    let map = (1..=3)
        .map(|i| (i, Ipv4Addr::new(10, 10, 0, i as u8)))
        .collect();
    let mut m = Membership::new(Config::new("drove", input.discovery), KEY, me, map, 0);
    let mut now: u64 = 0;
    for op in input.ops {
        match op {
            Op::Raw { src, body } => {
                let _ = m.receive(now, addr(u32::from(src)), &seal_raw(&body));
            }
            Op::Msg {
                src,
                other_cluster,
                incarnation,
                seq,
                entries,
            } => {
                let src = addr(u32::from(src));
                let mut entries: Vec<Entry> = entries
                    .into_iter()
                    .map(|e| Entry {
                        number: e.number,
                        name: e.name,
                        addr: addr(e.addr),
                        incarnation: e.incarnation,
                        heartbeat: e.heartbeat,
                        age_ms: e.age_ms,
                        load: Load {
                            load: e.load,
                            speed: e.speed,
                            mem_free: e.mem_free,
                            mem_total: e.mem_total,
                            jobs: e.jobs,
                            guest_jobs: e.guest_jobs,
                            ..Load::default()
                        },
                        leaving: e.leaving,
                    })
                    .collect();
                // Mostly a plausible sender entry first, so the merge paths are reached.
                if let Some(first) = entries.first_mut() {
                    first.addr = src;
                    first.incarnation = incarnation;
                }
                let msg = Message {
                    cluster: if other_cluster { "other" } else { "drove" }.into(),
                    incarnation,
                    seq,
                    entries: entries.into_iter().map(Into::into).collect(),
                    rumors: Vec::new(),
                    pings: Vec::new(),
                };
                let _ = m.receive(now, src, &wire::seal(KEY, &msg));
            }
            Op::Tick { ms } => {
                now += u64::from(ms);
                let _ = m.tick(now);
            }
            Op::Load { load, speed } => m.set_load(Load {
                load,
                speed,
                ..Load::default()
            }),
        }
        let rows = m.table(now);
        assert!(rows.len() <= m.members().len() + 4);
        let _ = serde_json::to_string(&rows);
        let _ = m.take_events();
        let _ = m.self_conflict();
        let _ = m.claimants(1);
        let _ = m.up_count();
    }
    let _ = m.leave();
});
