//! The gossip datagram: `DRV1`, a 32-byte HMAC-SHA256 tag, then the message as JSON. The tag
//! covers the magic and the JSON, keyed with the cluster key (`/etc/drove/cluster.key`), so a
//! node or process without the key can neither join nor report load. Replays are caught by the
//! message's (incarnation, seq) in `gossip`.

use crate::gossip::Message;
use hmac::{Hmac, Mac};
use sha2::Sha256;

pub const MAGIC: &[u8; 4] = b"DRV1";
const TAG: usize = 32;
/// Bigger datagrams are refused before any work.
pub const MAX_DATAGRAM: usize = 65_000;

/// Why a datagram was dropped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Reject {
    #[error("not a drove datagram")]
    Magic,
    #[error("bad authentication tag (wrong cluster key?)")]
    Tag,
    #[error("malformed: {0}")]
    Malformed(String),
    #[error("from cluster {0:?}")]
    Cluster(String),
    #[error("replayed or out-of-order datagram")]
    Replay,
    #[error("sender is not in the cluster map and discovery is off")]
    NotInMap,
}

fn mac(key: &[u8]) -> Hmac<Sha256> {
    // HMAC takes keys of any length.
    <Hmac<Sha256> as Mac>::new_from_slice(key)
        .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"))
}

/// The datagram for `msg`.
pub fn seal(key: &[u8], msg: &Message) -> Vec<u8> {
    let body = serde_json::to_vec(msg).unwrap_or_default();
    let mut m = mac(key);
    m.update(MAGIC);
    m.update(&body);
    let tag = m.finalize().into_bytes();
    let mut out = Vec::with_capacity(4 + TAG + body.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&tag);
    out.extend_from_slice(&body);
    out
}

/// Checks and decodes a datagram; the tag is checked (in constant time) before the JSON is parsed.
pub fn open(key: &[u8], bytes: &[u8]) -> Result<Message, Reject> {
    if bytes.len() > MAX_DATAGRAM {
        return Err(Reject::Malformed(format!("{} bytes", bytes.len())));
    }
    if bytes.len() < 4 + TAG {
        return Err(if bytes.starts_with(MAGIC) {
            Reject::Tag
        } else {
            Reject::Malformed(format!("{} bytes", bytes.len()))
        });
    }
    if &bytes[..4] != MAGIC {
        return Err(Reject::Magic);
    }
    let (tag, body) = bytes[4..].split_at(TAG);
    let mut m = mac(key);
    m.update(MAGIC);
    m.update(body);
    m.verify_slice(tag).map_err(|_| Reject::Tag)?;
    serde_json::from_slice(body).map_err(|e| Reject::Malformed(e.to_string()))
}

/// The cluster key file's text (64 hex digits) → key bytes.
pub fn parse_key(text: &str) -> Option<Vec<u8>> {
    let text = text.trim();
    (text.len() == 64).then(|| hex::decode(text).ok()).flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg() -> Message {
        Message {
            cluster: "c".into(),
            incarnation: 1,
            seq: 2,
            entries: vec![],
            rumors: vec![],
            pings: vec![],
        }
    }

    /// A datagram sealed around `json` exactly as given (another agent version's bytes).
    fn sealed_raw(k: &[u8], json: &[u8]) -> Vec<u8> {
        let mut m = mac(k);
        m.update(MAGIC);
        m.update(json);
        let mut d = MAGIC.to_vec();
        d.extend_from_slice(&m.finalize().into_bytes());
        d.extend_from_slice(json);
        d
    }

    #[test]
    fn seal_open_round_trip_and_tamper() {
        let k = b"k1";
        let d = seal(k, &msg());
        assert_eq!(open(k, &d).unwrap(), msg());
        assert_eq!(open(b"k2", &d), Err(Reject::Tag));
        let mut t = d.clone();
        let last = t.len() - 2;
        t[last] ^= 1;
        assert_eq!(open(k, &t), Err(Reject::Tag));
        assert_eq!(open(k, b"hello"), Err(Reject::Malformed("5 bytes".into())));
        assert_eq!(open(k, &[b'x'; 100]), Err(Reject::Magic));
        assert_eq!(open(k, b"DRV1"), Err(Reject::Tag));
        // Right key, but the body is not a message.
        let g = sealed_raw(k, b"{}");
        assert!(matches!(open(k, &g), Err(Reject::Malformed(_))));
    }

    #[test]
    fn load_vector_fields_are_compatible_both_ways() {
        use crate::gossip::{Entry, Load};
        let k = b"k1";
        // A datagram of an agent from before `cpus`, `refuses_guests` and `cpu`: accepted, the
        // new fields read as unknown/unlocked.
        let old = r#"{"cluster":"c","incarnation":1,"seq":2,"entries":[{"number":1,"name":"node1","addr":"10.0.0.1","incarnation":1,"heartbeat":3,"age_ms":0,"load":{"load":0.5,"speed":100.0,"mem_free":1,"mem_total":2,"jobs":1,"guest_jobs":0}}]}"#;
        let d = sealed_raw(k, old.as_bytes());
        let got = open(k, &d).unwrap();
        let l = &got.entries[0].load;
        assert_eq!(
            (l.jobs, l.cpus, l.refuses_guests, l.cpu.as_str()),
            (1, 0, false, "")
        );
        // The new fields round trip, and a newer agent's extra fields are ignored.
        let mut msg = msg();
        msg.entries.push(
            Entry {
                number: 2,
                name: "node2".into(),
                addr: "10.0.0.2".parse().unwrap(),
                incarnation: 1,
                heartbeat: 1,
                age_ms: 0,
                load: Load {
                    cpus: 4,
                    refuses_guests: true,
                    cpu: "ab12".into(),
                    ..Load::default()
                },
                leaving: false,
            }
            .into(),
        );
        assert_eq!(open(k, &seal(k, &msg)).unwrap(), msg);
        let newer = serde_json::to_string(&msg)
            .unwrap()
            .replace("\"cpus\":4", "\"cpus\":4,\"gpus\":1");
        let d = sealed_raw(k, newer.as_bytes());
        assert_eq!(open(k, &d).unwrap(), msg);
    }

    #[test]
    fn pings_are_compatible_both_ways() {
        use crate::gossip::Rumor;
        use std::net::Ipv4Addr;
        let k = b"k1";
        // An older agent's datagram, without `rumors` and `pings`: accepted, asking nobody.
        let old = r#"{"cluster":"c","incarnation":1,"seq":2,"entries":[]}"#;
        let d = sealed_raw(k, old.as_bytes());
        assert_eq!(open(k, &d).unwrap(), msg());
        // Asking nobody, a current agent sends what an older one sends.
        assert_eq!(seal(k, &msg()), d);
        // A datagram that asks reads, for an older agent (the message type before `pings`),
        // as the same datagram without the field.
        #[derive(serde::Deserialize, Debug, PartialEq)]
        struct Before {
            cluster: String,
            incarnation: u64,
            seq: u64,
            entries: Vec<serde_json::Value>,
            #[serde(default)]
            rumors: Vec<Rumor>,
        }
        let mut asking = msg();
        asking.pings = vec![Ipv4Addr::new(10, 0, 0, 7)];
        let sealed = seal(k, &asking);
        assert_eq!(open(k, &sealed).unwrap(), asking);
        let body = &sealed[4 + TAG..];
        assert!(std::str::from_utf8(body)
            .unwrap()
            .contains(r#""pings":["10.0.0.7"]"#));
        let before: Before = serde_json::from_slice(body).unwrap();
        assert_eq!(
            before,
            Before {
                cluster: "c".into(),
                incarnation: 1,
                seq: 2,
                entries: vec![],
                rumors: vec![],
            }
        );
    }

    #[test]
    fn key_files_parse() {
        assert_eq!(
            parse_key(&format!("{}\n", "ab".repeat(32))).map(|k| k.len()),
            Some(32)
        );
        assert_eq!(parse_key("abcd"), None);
        assert_eq!(parse_key(&"zz".repeat(32)), None);
    }
}
