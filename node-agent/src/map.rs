//! The cluster map: which node numbers live at which addresses.
//!
//! Accepts the seed's `/etc/mosix.map` format verbatim (`first-node-number IP-or-hostname count`,
//! `#` comments) as well as the same entries written as TOML tables.

use serde::{Deserialize, Serialize};
use std::net::Ipv4Addr;

/// One map line: `count` consecutive node numbers starting at `first`, at consecutive addresses
/// starting at `host` (as in MOSIX: `1 192.168.1.10 8` is nodes 1..=8 at .10 ..= .17).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MapEntry {
    pub first: u32,
    pub host: String,
    #[serde(default = "one")]
    pub count: u32,
}

fn one() -> u32 {
    1
}

/// Most nodes one map may name (a /16 of addresses). Every node lists the whole map at start, so
/// a typo like `1 10.0.0.1 8811811` must be an error, not millions of peers.
pub const MAX_NODES: u64 = 65_536;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    #[error("{file}:{line}: expected `first-node-number IP-or-hostname count`, found {found:?}")]
    Syntax {
        file: String,
        line: usize,
        found: String,
    },
    #[error("{file}:{line}: {what} {value:?} is not a positive number")]
    Number {
        file: String,
        line: usize,
        what: &'static str,
        value: String,
    },
    #[error(
        "{file}:{line}: nodes {first}..={last} overlap nodes already mapped at line {other_line}"
    )]
    Overlap {
        file: String,
        line: usize,
        first: u32,
        last: u32,
        other_line: usize,
    },
    #[error("{file}:{line}: {count} nodes from number {first} run past the largest node number")]
    NumberOverflow {
        file: String,
        line: usize,
        first: u32,
        count: u32,
    },
    #[error("{file}:{line}: the map names {total} nodes by this line; at most {MAX_NODES} are supported")]
    TooMany {
        file: String,
        line: usize,
        total: u64,
    },
    #[error("{file}:{line}: {count} addresses from {host} run past 255.255.255.255")]
    AddressOverflow {
        file: String,
        line: usize,
        host: String,
        count: u32,
    },
}

/// A parsed map: entries plus the line each came from, for error messages.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterMap {
    pub entries: Vec<MapEntry>,
}

impl ClusterMap {
    /// Parses the `mosix.map` text format. `file` names the source in errors.
    pub fn parse_mosix(text: &str, file: &str) -> Result<Self, Error> {
        let mut entries = Vec::new();
        let mut lines = Vec::new();
        for (idx, raw) in text.lines().enumerate() {
            let line = idx + 1;
            let content = raw.split('#').next().unwrap_or("").trim();
            if content.is_empty() {
                continue;
            }
            let fields: Vec<&str> = content.split_whitespace().collect();
            if fields.len() != 3 {
                return Err(Error::Syntax {
                    file: file.into(),
                    line,
                    found: raw.trim().into(),
                });
            }
            let number = |what, value: &str| {
                value
                    .parse::<u32>()
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or_else(|| Error::Number {
                        file: file.into(),
                        line,
                        what,
                        value: value.into(),
                    })
            };
            let first = number("node number", fields[0])?;
            let count = number("count", fields[2])?;
            entries.push(MapEntry {
                first,
                host: fields[1].to_string(),
                count,
            });
            lines.push(line);
        }
        let map = ClusterMap { entries };
        map.validate_with_lines(file, &lines)?;
        Ok(map)
    }

    /// Checks a map that came from TOML (entry index + 1 stands in for the line).
    pub fn validate(&self, file: &str) -> Result<(), Error> {
        let lines: Vec<usize> = (1..=self.entries.len()).collect();
        for (entry, line) in self.entries.iter().zip(&lines) {
            if entry.first == 0 || entry.count == 0 {
                return Err(Error::Number {
                    file: file.into(),
                    line: *line,
                    what: if entry.first == 0 {
                        "node number"
                    } else {
                        "count"
                    },
                    value: "0".into(),
                });
            }
        }
        self.validate_with_lines(file, &lines)
    }

    fn validate_with_lines(&self, file: &str, lines: &[usize]) -> Result<(), Error> {
        let mut total = 0u64;
        for (i, entry) in self.entries.iter().enumerate() {
            let Some(last) = entry.first.checked_add(entry.count - 1) else {
                return Err(Error::NumberOverflow {
                    file: file.into(),
                    line: lines[i],
                    first: entry.first,
                    count: entry.count,
                });
            };
            total += u64::from(entry.count);
            if total > MAX_NODES {
                return Err(Error::TooMany {
                    file: file.into(),
                    line: lines[i],
                    total,
                });
            }
            if let Ok(ip) = entry.host.parse::<Ipv4Addr>() {
                if u32::from(ip).checked_add(entry.count - 1).is_none() {
                    return Err(Error::AddressOverflow {
                        file: file.into(),
                        line: lines[i],
                        host: entry.host.clone(),
                        count: entry.count,
                    });
                }
            }
            for (j, other) in self.entries[..i].iter().enumerate() {
                // Checked above for every earlier entry.
                let other_last = other.first.saturating_add(other.count - 1);
                if entry.first <= other_last && other.first <= last {
                    return Err(Error::Overlap {
                        file: file.into(),
                        line: lines[i],
                        first: entry.first,
                        last,
                        other_line: lines[j],
                    });
                }
            }
        }
        Ok(())
    }

    /// The node number mapped to `addr`, if any.
    pub fn number_for(&self, addr: Ipv4Addr) -> Option<u32> {
        self.entries.iter().find_map(|e| {
            let base = u32::from(e.host.parse::<Ipv4Addr>().ok()?);
            let off = u32::from(addr).checked_sub(base)?;
            (off < e.count).then(|| e.first + off)
        })
    }

    /// Every (number, address-or-hostname) the map names, in number order.
    pub fn nodes(&self) -> Vec<(u32, String)> {
        let mut out = Vec::new();
        for e in &self.entries {
            match e.host.parse::<Ipv4Addr>() {
                Ok(ip) => {
                    for k in 0..e.count {
                        out.push((e.first + k, Ipv4Addr::from(u32::from(ip) + k).to_string()));
                    }
                }
                // A hostname names one machine; a count > 1 with a hostname is kept as is.
                Err(_) => out.push((e.first, e.host.clone())),
            }
        }
        out.sort();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEED: &str = "# MOSIX-#, IP, number-of-nodes\n1 192.168.10.220 1\n2 192.168.10.221 1\n3 192.168.10.222 1\n4 192.168.10.223 1\n";

    #[test]
    fn parses_the_seed_map_verbatim() {
        let map = ClusterMap::parse_mosix(SEED, "mosix.map").unwrap();
        assert_eq!(map.entries.len(), 4);
        assert_eq!(map.number_for("192.168.10.222".parse().unwrap()), Some(3));
        assert_eq!(map.number_for("192.168.10.224".parse().unwrap()), None);
    }

    #[test]
    fn ranges_expand_to_consecutive_addresses() {
        let map = ClusterMap::parse_mosix("1 10.0.0.10 8 # eight pentiums\n", "m").unwrap();
        let nodes = map.nodes();
        assert_eq!(nodes.len(), 8);
        assert_eq!(nodes[7], (8, "10.0.0.17".to_string()));
        assert_eq!(map.number_for("10.0.0.17".parse().unwrap()), Some(8));
    }

    #[test]
    fn bad_lines_name_file_and_line() {
        let err = ClusterMap::parse_mosix("1 10.0.0.1 1\n\n2 10.0.0.2\n", "site.map").unwrap_err();
        assert_eq!(
            err.to_string(),
            "site.map:3: expected `first-node-number IP-or-hostname count`, found \"2 10.0.0.2\""
        );
        let err = ClusterMap::parse_mosix("x 10.0.0.1 1\n", "m").unwrap_err();
        assert!(
            matches!(
                err,
                Error::Number {
                    line: 1,
                    what: "node number",
                    ..
                }
            ),
            "{err}"
        );
        let err = ClusterMap::parse_mosix("1 10.0.0.1 0\n", "m").unwrap_err();
        assert!(matches!(err, Error::Number { what: "count", .. }), "{err}");
    }

    #[test]
    fn overlapping_numbers_are_rejected() {
        let err = ClusterMap::parse_mosix("1 10.0.0.1 4\n# gap\n3 10.0.1.1 1\n", "m").unwrap_err();
        assert_eq!(
            err,
            Error::Overlap {
                file: "m".into(),
                line: 3,
                first: 3,
                last: 3,
                other_line: 1
            }
        );
    }

    #[test]
    fn address_overflow_is_rejected() {
        let err = ClusterMap::parse_mosix("1 255.255.255.250 10\n", "m").unwrap_err();
        assert!(matches!(err, Error::AddressOverflow { .. }));
    }

    // Found by `make fuzz` (mosix_map): a map this big made every node list millions of peers.
    #[test]
    fn huge_ranges_are_rejected() {
        let err = ClusterMap::parse_mosix("1 12.0.102.1 8811811\n", "m").unwrap_err();
        assert_eq!(
            err.to_string(),
            "m:1: the map names 8811811 nodes by this line; at most 65536 are supported"
        );
        let err =
            ClusterMap::parse_mosix("1 10.0.0.1 60000\n60001 10.1.0.1 6000\n", "m").unwrap_err();
        assert!(matches!(err, Error::TooMany { line: 2, .. }), "{err}");
        assert!(ClusterMap::parse_mosix("1 10.0.0.1 65536\n", "m").is_ok());
    }

    // Seen while fixing the above: `first + count` past u32::MAX passed (saturating) and then
    // overflowed in `nodes()`; the mosix_map fuzz target checks `nodes()` for every accepted map.
    #[test]
    fn node_numbers_past_the_largest_are_rejected() {
        let err = ClusterMap::parse_mosix("4294967295 10.0.0.1 2\n", "m").unwrap_err();
        assert!(
            matches!(err, Error::NumberOverflow { line: 1, .. }),
            "{err}"
        );
        let map = ClusterMap::parse_mosix("4294967295 10.0.0.1 1\n", "m").unwrap();
        assert_eq!(map.nodes(), vec![(u32::MAX, "10.0.0.1".to_string())]);
    }
}
