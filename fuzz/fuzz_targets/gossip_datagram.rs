//! Gossip, outer layer: arbitrary bytes arriving on UDP 7030 from any address. Only a datagram
//! whose tag is the cluster key's HMAC of its body may get past the tag check (the seed corpus
//! has one, so mutations of a valid datagram are tried too); nothing may panic.
#![no_main]
use drove_agent::gossip::{Config, Entry, Load, Membership};
use drove_agent::wire::{self, Reject};
use hmac::{Hmac, Mac};
use libfuzzer_sys::fuzz_target;
use sha2::Sha256;
use std::net::Ipv4Addr;

const KEY: &[u8] = b"drove-fuzz-cluster-key-0123456789";

/// Whether `data` is `DRV1`, the right tag, then a body (checked independently of `wire`).
fn sealed(data: &[u8]) -> bool {
    if data.len() < 36 || &data[..4] != wire::MAGIC {
        return false;
    }
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(KEY).expect("any key length");
    m.update(wire::MAGIC);
    m.update(&data[36..]);
    m.verify_slice(&data[4..36]).is_ok()
}

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
    match m.receive(1000, src, data) {
        Ok(()) => assert!(sealed(data), "accepted without the key"),
        Err((Reject::Tag | Reject::Magic, _)) => {}
        Err((reason, _)) => assert!(
            sealed(data) || data.len() < 36 || data.len() > wire::MAX_DATAGRAM,
            "got past the tag check without the key: {reason}"
        ),
    }
    if !sealed(data) {
        assert_eq!(m.members().len(), 0);
    }
    let _ = m.tick(2000);
});
