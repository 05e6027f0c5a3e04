//! The seed's `/etc/mosix.map` format: parse, then use the map the way the agent does (every
//! node it names, the number of an address).
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::net::Ipv4Addr;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(map) = drove_agent::map::ClusterMap::parse_mosix(text, "mosix.map") else {
        return;
    };
    for e in &map.entries {
        if let Ok(ip) = e.host.parse::<Ipv4Addr>() {
            for probe in [u32::from(ip), u32::from(ip).saturating_add(e.count - 1)] {
                let n = map.number_for(Ipv4Addr::from(probe));
                assert!(n.is_some(), "{probe} is in the map but has no number");
            }
        }
    }
    // The agent lists every node at start (daemon.rs): a map it accepts must be listable.
    // (A hostname names one machine whatever its count: it cannot be resolved in the initramfs.)
    let total: u64 = map
        .entries
        .iter()
        .map(|e| match e.host.parse::<Ipv4Addr>() {
            Ok(_) => u64::from(e.count),
            Err(_) => 1,
        })
        .sum();
    assert_eq!(map.nodes().len() as u64, total);
});
