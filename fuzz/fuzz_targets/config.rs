//! Cluster configs: the builder's `cluster.toml` loader and the node's `node.toml` and
//! `calibration.toml` decoders, fed the same text. They may refuse it; they may not panic.
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // A `map-file` would make the loader read an arbitrary host path (`/dev/zero` never ends);
    // the map format has a target of its own (mosix_map).
    if text.contains("map-file") || text.contains("map_file") {
        return;
    }
    if let Ok(loaded) = drove::config::Loaded::from_str(text, Path::new("/fuzz/cluster.toml")) {
        // What `drove config default` and the node image get written from must render.
        let _ = loaded.config.to_toml();
        let _ = loaded.map.nodes();
    }
    if let Ok(node) = toml::from_str::<drove_agent::config::NodeConfig>(text) {
        let _ = node.name_for(u32::MAX);
        let _ = node.map.nodes();
    }
    if let Ok(cal) = toml::from_str::<drove_agent::config::Calibration>(text) {
        let _ = cal.effective_speed(1.0);
    }
});
