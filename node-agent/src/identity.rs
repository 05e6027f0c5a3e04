//! Who this node is: its number and name.
//!
//! In order: the cluster map by address (`ClusterMap::number_for`), else the number the image
//! server assigned in boot order (`register`, only for nodes netbooted from `drove serve`; see
//! [`registered`]), else a number derived from the MAC address.
//!
//! MAC scheme: take the numerically lowest MAC among the node's ethernet NICs (so the choice
//! does not depend on which NIC answered first), hash its six bytes with 32-bit FNV-1a and map
//! the hash into 100000..=999999: `100000 + fnv1a32(mac) % 900000`. Numbers from the MAC are
//! thus six digits and never collide with a map that keeps its numbers below 100000; two nodes
//! collide with probability about n²/1.8M (0.05 % for 30 nodes), which the membership layer
//! (later issue) reports.

use crate::config::NodeConfig;
use std::net::Ipv4Addr;

pub const MAC_NUMBER_BASE: u32 = 100_000;
pub const MAC_NUMBER_SPAN: u32 = 900_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Map,
    /// Assigned by the image server (`drove serve`) at registration.
    Registered,
    Mac,
    Address,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub number: u32,
    pub name: String,
    pub source: Source,
}

pub type Mac = [u8; 6];

/// Parses `52:54:00:12:34:56` (case-insensitive).
pub fn parse_mac(text: &str) -> Option<Mac> {
    let mut mac = [0u8; 6];
    let mut parts = text.trim().split(':');
    for byte in mac.iter_mut() {
        let part = parts.next()?;
        if part.len() != 2 {
            return None;
        }
        *byte = u8::from_str_radix(part, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

pub fn format_mac(mac: &Mac) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

pub fn fnv1a32(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5u32, |h, b| {
        (h ^ u32::from(*b)).wrapping_mul(0x0100_0193)
    })
}

/// The stable number for a MAC (see the module docs).
pub fn mac_number(mac: &Mac) -> u32 {
    MAC_NUMBER_BASE + fnv1a32(mac) % MAC_NUMBER_SPAN
}

/// Chooses the identity for a node that has `addr` and NICs with `macs`.
pub fn choose(cfg: &NodeConfig, addr: Ipv4Addr, macs: &[Mac]) -> Identity {
    let usable = macs.iter().filter(|m| **m != [0u8; 6]).min();
    let (number, source) = match (cfg.map.number_for(addr), usable) {
        (Some(n), _) => (n, Source::Map),
        (None, Some(mac)) => (mac_number(mac), Source::Mac),
        (None, None) => (
            MAC_NUMBER_BASE + fnv1a32(&addr.octets()) % MAC_NUMBER_SPAN,
            Source::Address,
        ),
    };
    Identity {
        number,
        name: cfg.name_for(number),
        source,
    }
}

/// The identity for a number the image server assigned; used only when [`choose`] found no map
/// entry (the map wins: the caller does not register a mapped node).
pub fn registered(cfg: &NodeConfig, number: u32) -> Identity {
    Identity {
        number,
        name: cfg.name_for(number),
        source: Source::Registered,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Network, NodeConfig};
    use crate::map::ClusterMap;

    fn cfg(map: &str) -> NodeConfig {
        NodeConfig {
            cluster: "c".into(),
            node_name: "node{n}".into(),
            discovery: false,
            network: Network::Dhcp,
            map: ClusterMap::parse_mosix(map, "m").unwrap(),
            modules: vec![],
            kernel_release: "6.1".into(),
            server: None,
            api_port: 7030,
            files: None,
        }
    }

    #[test]
    fn map_wins_over_mac() {
        let mac = parse_mac("52:54:00:12:34:56").unwrap();
        let id = choose(
            &cfg("1 10.0.2.10 8\n"),
            "10.0.2.15".parse().unwrap(),
            &[mac],
        );
        assert_eq!(
            id,
            Identity {
                number: 6,
                name: "node6".into(),
                source: Source::Map
            }
        );
    }

    #[test]
    fn mac_number_is_stable_and_uses_the_lowest_mac() {
        let a = parse_mac("52:54:00:12:34:56").unwrap();
        let b = parse_mac("02:00:00:00:00:01").unwrap();
        let id = choose(&cfg(""), "192.168.1.7".parse().unwrap(), &[a, b]);
        assert_eq!(id.source, Source::Mac);
        assert_eq!(id.number, mac_number(&b));
        assert_eq!(
            id,
            choose(&cfg(""), "192.168.1.8".parse().unwrap(), &[b, a])
        );
        // Pinned values: changing the scheme renames every MAC-named node, so it must be deliberate.
        assert_eq!(fnv1a32(b"a"), 0xe40c292c);
        assert_eq!(
            mac_number(&a),
            MAC_NUMBER_BASE + fnv1a32(&a) % MAC_NUMBER_SPAN
        );
        assert!((100_000..=999_999).contains(&mac_number(&a)));
    }

    #[test]
    fn registered_numbers_name_the_node() {
        let id = registered(&cfg(""), 2);
        assert_eq!(
            id,
            Identity {
                number: 2,
                name: "node2".into(),
                source: Source::Registered
            }
        );
    }

    #[test]
    fn no_mac_falls_back_to_the_address() {
        let id = choose(&cfg(""), "10.0.0.1".parse().unwrap(), &[[0; 6]]);
        assert_eq!(id.source, Source::Address);
        assert!((100_000..=999_999).contains(&id.number));
    }

    #[test]
    fn macs_parse_and_format() {
        assert_eq!(
            parse_mac("52:54:00:AB:cd:0f"),
            Some([0x52, 0x54, 0, 0xab, 0xcd, 0x0f])
        );
        assert_eq!(parse_mac("52:54:00:ab:cd"), None);
        assert_eq!(parse_mac("52:54:00:ab:cd:0f:00"), None);
        assert_eq!(parse_mac("5:54:00:ab:cd:0f"), None);
        assert_eq!(
            format_mac(&[0x52, 0x54, 0, 0xab, 0xcd, 0x0f]),
            "52:54:00:ab:cd:0f"
        );
    }
}
