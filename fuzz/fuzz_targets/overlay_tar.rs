//! An overlay given as a tar file: read it with the builder's overlay reader, then write the
//! segment with the builder's cpio writer and read that back with a strict newc reader: every
//! entry the overlay reader accepted must come out of the archive the kernel will unpack.
#![no_main]
use drove::cpio::{self, Body};
use drove::overlay::{self, Overlay, Policy};
use libfuzzer_sys::fuzz_target;
use std::io::Write;

/// Names of a newc archive up to its trailer; panics on anything malformed.
fn newc_names(a: &[u8]) -> Vec<String> {
    let mut names = Vec::new();
    let mut at = 0;
    loop {
        let head = &a[at..at + 110];
        assert_eq!(&head[..6], b"070701", "bad magic at {at}");
        let field = |i: usize| {
            let s = std::str::from_utf8(&head[6 + 8 * i..14 + 8 * i]).expect("hex field");
            usize::from_str_radix(s, 16).expect("hex field")
        };
        let (size, namesize) = (field(6), field(11));
        let name = &a[at + 110..at + 110 + namesize];
        assert_eq!(name.last(), Some(&0), "name not NUL-terminated");
        // The kernel reads the name up to its first NUL.
        let name = &name[..name.iter().position(|b| *b == 0).unwrap_or(0)];
        let name = String::from_utf8_lossy(name).into_owned();
        at = (at + 110 + namesize).next_multiple_of(4);
        at = (at + size).next_multiple_of(4);
        if name == "TRAILER!!!" {
            assert_eq!(at, a.len(), "bytes after the trailer");
            return names;
        }
        names.push(name);
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(mut file) = tempfile::NamedTempFile::new() else {
        return;
    };
    if file.write_all(data).is_err() {
        return;
    }
    let ov = Overlay {
        name: "fuzz".into(),
        source: file.path().to_path_buf(),
    };
    for policy in [
        Policy {
            allow_setuid: false,
            allow_devices: false,
        },
        Policy {
            allow_setuid: true,
            allow_devices: true,
        },
    ] {
        let Ok(entries) = overlay::entries(&ov, policy) else {
            continue;
        };
        for e in &entries {
            assert!(!e.path.starts_with('/'), "absolute entry {:?}", e.path);
            assert!(
                !e.path.split('/').any(|c| c == ".." || c.is_empty()),
                "entry {:?} climbs out",
                e.path
            );
            assert!(!matches!(e.body, Body::File(_)), "tar entries carry bytes");
        }
        let mut out = Vec::new();
        if cpio::write(&mut out, &entries, 0).is_err() {
            continue;
        }
        let names = newc_names(&out);
        let wanted: Vec<&str> = entries.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            names, wanted,
            "the archive does not hold what the overlay reader read"
        );
    }
});
