//! Helpers for the output tests: dummy payloads, a context, and host tools that must be present.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::{BootPayload, Initrd, Loaders, OutputContext};

/// Runs a host tool and returns its stdout; a missing tool fails the test naming the package.
pub fn run(program: &str, package: &str, args: &[&str]) -> String {
    run_env(program, package, args, &[])
}

pub fn run_env(program: &str, package: &str, args: &[&str], env: &[(&str, &str)]) -> String {
    let mut cmd = Command::new(program);
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = match cmd.output() {
        Ok(out) => out,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            panic!("`{program}` is not installed: install the Debian package `{package}` (apt-get install {package})")
        }
        Err(e) => panic!("cannot run {program}: {e}"),
    };
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A host file the tests need (boot loaders from Debian packages); missing → fail naming the package.
pub fn require_file(path: &Path, package: &str) {
    assert!(
        path.exists(),
        "{} is missing: install the Debian package `{package}`",
        path.display()
    );
}

pub fn require_loaders(l: &Loaders) {
    require_file(&l.systemd_boot, "systemd-boot-efi");
    require_file(&l.gptmbr, "syslinux-common");
    require_file(&l.ipxe_lkrn, "ipxe");
    require_file(&l.ipxe_efi, "ipxe");
    require_file(&l.undionly_kpxe, "ipxe");
    run("syslinux", "syslinux", &["--version"]);
}

/// Small deterministic stand-ins for a kernel and two initrd segments, written into `dir`.
pub fn dummy_payload(dir: &Path) -> BootPayload {
    let write = |name: &str, len: usize, salt: u8| -> PathBuf {
        let p = dir.join(name);
        let bytes: Vec<u8> = (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(salt))
            .collect();
        std::fs::write(&p, bytes).expect("write dummy payload file");
        p
    };
    BootPayload {
        kernel: write("dummy-vmlinuz", 300_000, 1),
        initrds: vec![
            Initrd {
                name: "initramfs.img".into(),
                path: write("dummy-initramfs", 200_001, 2),
            },
            Initrd {
                name: "overlay-calibration-qemu.img".into(),
                path: write("dummy-overlay", 777, 3),
            },
        ],
        cmdline: "console=ttyS0 drove.server=http://10.0.2.2:8080 quiet".into(),
    }
}

pub fn context<'a>(
    payload: Option<&'a BootPayload>,
    out_dir: &'a Path,
    loaders: &'a Loaders,
) -> OutputContext<'a> {
    OutputContext {
        payload,
        server: "http://10.0.2.2:8080",
        epoch: 1_700_000_000,
        seed: [42; 32],
        out_dir,
        loaders,
    }
}

/// Names in `dir` other than `keep`, to show nothing temporary was left behind.
pub fn leftovers(dir: &Path, keep: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .expect("read out dir")
        .map(|e| {
            e.expect("dir entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .filter(|n| !keep.contains(&n.as_str()))
        .collect();
    v.sort();
    v
}
