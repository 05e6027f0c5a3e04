//! The ACPI power button (QEMU's `system_powerdown`): with the `button` and `evdev` modules it
//! is an input device named "Power Button" whose KEY_POWER press means a clean poweroff.

use std::io::Read;
use std::path::{Path, PathBuf};

/// `struct input_event` on 64-bit Linux: timeval (16 bytes), type u16, code u16, value i32.
pub const EVENT_SIZE: usize = 24;
const EV_KEY: u16 = 1;
const KEY_POWER: u16 = 116;

/// True when `ev` is a KEY_POWER press.
pub fn is_power_press(ev: &[u8]) -> bool {
    if ev.len() < EVENT_SIZE {
        return false;
    }
    let u16_at = |i: usize| u16::from_ne_bytes([ev[i], ev[i + 1]]);
    let value = i32::from_ne_bytes([ev[20], ev[21], ev[22], ev[23]]);
    u16_at(16) == EV_KEY && u16_at(18) == KEY_POWER && value == 1
}

/// `/dev/input/eventN` of every input device under `sys_class_input` named "... Power Button".
pub fn power_buttons(sys_class_input: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(sys_class_input) else {
        return Vec::new();
    };
    let mut found: Vec<PathBuf> = entries
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("event"))
        .filter(|e| {
            std::fs::read_to_string(e.path().join("device/name"))
                .is_ok_and(|n| n.trim().ends_with("Power Button"))
        })
        .map(|e| Path::new("/dev/input").join(e.file_name()))
        .collect();
    found.sort();
    found
}

/// Reads events from `device` until it fails; calls `on_press` for each power-key press.
pub fn watch(device: &Path, on_press: &dyn Fn()) -> std::io::Result<()> {
    let mut file = std::fs::File::open(device)?;
    let mut ev = [0u8; EVENT_SIZE];
    loop {
        file.read_exact(&mut ev)?;
        if is_power_press(&ev) {
            on_press();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(ty: u16, code: u16, value: i32) -> [u8; EVENT_SIZE] {
        let mut ev = [0u8; EVENT_SIZE];
        ev[16..18].copy_from_slice(&ty.to_ne_bytes());
        ev[18..20].copy_from_slice(&code.to_ne_bytes());
        ev[20..24].copy_from_slice(&value.to_ne_bytes());
        ev
    }

    #[test]
    fn only_power_key_presses_count() {
        assert!(is_power_press(&event(1, 116, 1)));
        assert!(!is_power_press(&event(1, 116, 0)));
        assert!(!is_power_press(&event(0, 0, 0)));
        assert!(!is_power_press(&event(1, 30, 1)));
        assert!(!is_power_press(&[0u8; 8]));
    }

    #[test]
    fn finds_power_buttons_by_name() {
        let dir = tempfile::tempdir().unwrap();
        for (ev, name) in [
            ("event0", "Power Button"),
            ("event1", "AT Translated Set 2 keyboard"),
            ("event2", "Sleep Button"),
        ] {
            std::fs::create_dir_all(dir.path().join(ev).join("device")).unwrap();
            std::fs::write(dir.path().join(ev).join("device/name"), format!("{name}\n")).unwrap();
        }
        assert_eq!(
            power_buttons(dir.path()),
            vec![PathBuf::from("/dev/input/event0")]
        );
    }
}
