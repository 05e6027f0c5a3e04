//! Migration protocol, one decrypted frame body: what a key holder's frame can carry. Decoding
//! never panics, a decoded file name never leaves the image directory, and a frame that decodes
//! encodes back to the same bytes.
#![no_main]
use drove_agent::jobs::proto::{safe_name, Msg};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(msg) = Msg::decode(data) else {
        return;
    };
    if let Msg::File { name, .. } = &msg {
        assert!(safe_name(name));
        assert!(!name.starts_with('/') && !name.split('/').any(|c| c == ".."));
    }
    assert_eq!(msg.encode(), data, "decode/encode round trip");
});
