//! Gossip, outer layer: arbitrary bytes arriving on UDP 7030 from any address. Without the key
//! nothing may get past the tag check; nothing may panic.
#![no_main]
use drove_agent::gossip::{Config, Entry, Load, Membership};
use libfuzzer_sys::fuzz_target;
use std::net::Ipv4Addr;

const KEY: &[u8] = b"drove-fuzz-cluster-key-0123456789";

fuzz_target!(|data: &[u8]| {
    let me = Entry {
        number: 1,
        name: "node1".into(),
        addr: Ipv4Addr::new(10, 10, 0, 1),
        incarnation: 1,
        heartbeat: 0,
        age_ms: 0,
        load: Load::default(),
        leaving: false,
    };
    let map = vec![(2, Ipv4Addr::new(10, 10, 0, 2))];
    let mut m = Membership::new(Config::new("drove", true), KEY, me, map, 0);
    let src = Ipv4Addr::new(10, 10, 0, 2);
    assert!(m.receive(1000, src, data).is_err(), "accepted without the key");
    assert_eq!(m.members().len(), 0);
    let _ = m.tick(2000);
});
