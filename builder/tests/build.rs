//! Whole-build tests of `drove build` against the host's real kernel, CRIU and boot loaders
//! (installed by `make deps`). No root and no QEMU; the media are booted by `qemu-tests`.

#![allow(clippy::unwrap_used)]

use drove::build::{build, Options};
use drove::config::Loaded;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// `drove-agent` from the same cargo profile as this test (`make test` builds it first).
fn agent() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let agent = exe
        .parent()
        .and_then(Path::parent)
        .map(|d| d.join("drove-agent"))
        .expect("target dir");
    assert!(
        agent.is_file(),
        "{} is missing: run `cargo build --release -p drove-agent` (make test does)",
        agent.display()
    );
    agent
}

/// A config file in `dir` using the default cluster with its key kept in `dir`.
fn config_in(dir: &Path, extra: &str) -> Loaded {
    let path = dir.join("cluster.toml");
    let text = format!(
        "[cluster]\nname = \"test\"\n[initramfs]\ncompression = \"zstd\"\ncriu = \"/usr/sbin/criu\"\nbusybox = \"/bin/busybox\"\nagent = \"{}\"\n{extra}",
        agent().display()
    );
    std::fs::write(&path, text).unwrap();
    Loaded::from_file(&path).unwrap()
}

fn opts(out: PathBuf) -> Options {
    let mut o = Options::new(out);
    o.quiet = true;
    o
}

/// Every file under `dir` (except the build cache) → its bytes.
fn tree(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    walkdir::WalkDir::new(dir)
        .into_iter()
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_file() && !e.path().to_string_lossy().contains("/.cache/"))
        .map(|e| {
            (
                e.path().strip_prefix(dir).unwrap().display().to_string(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect()
}

#[test]
fn two_builds_are_byte_identical() {
    let d = tempfile::tempdir().unwrap();
    let loaded = config_in(d.path(), "");
    let (a, b) = (d.path().join("a"), d.path().join("b"));
    build(&loaded, &opts(a.clone())).unwrap();
    build(&loaded, &opts(b.clone())).unwrap();
    let (ta, tb) = (tree(&a), tree(&b));
    assert!(
        ta.contains_key("disk.img")
            && ta.contains_key("floppy.img")
            && ta.contains_key("pxe/boot.ipxe")
    );
    assert_eq!(ta.keys().collect::<Vec<_>>(), tb.keys().collect::<Vec<_>>());
    for (name, bytes) in &ta {
        assert!(bytes == &tb[name], "{name} differs between two builds");
    }
}

#[test]
fn manifest_lists_every_artifact_with_its_digest() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("out");
    let report = build(&config_in(d.path(), ""), &opts(out.clone())).unwrap();
    let m = drove::manifest::Manifest::read(&out).unwrap();
    assert_eq!(m, report.manifest);
    for a in &m.artifacts {
        let (size, sha) = drove::manifest::digest(&out.join(&a.path)).unwrap();
        assert_eq!((size, &sha), (a.size, &a.sha256), "{}", a.path);
    }
    let names: Vec<&str> = m.components.iter().map(|c| c.name.as_str()).collect();
    for want in [
        "kernel",
        "agent",
        "criu",
        "libraries",
        "modules",
        "config",
        "overlay calibration/qemu",
    ] {
        assert!(
            names.contains(&want),
            "component {want} missing from {names:?}"
        );
    }
    let floppy = m.artifacts.iter().find(|a| a.path == "floppy.img").unwrap();
    assert!(floppy.size <= 1_474_560);
    // The initramfs holds what the agent needs: the module closure with its modules.dep.
    let list = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "zstd -dc {} | cpio -t --quiet",
            out.join("pxe/initramfs.img").display()
        ))
        .output()
        .unwrap();
    let list = String::from_utf8_lossy(&list.stdout);
    for want in [
        "init",
        "usr/sbin/criu",
        "bin/busybox",
        "etc/drove/node.toml",
        "etc/drove/cluster.key",
        "lib64/ld-linux-x86-64.so.2",
    ] {
        assert!(
            list.lines().any(|l| l == want),
            "{want} missing from initramfs"
        );
    }
    assert!(list.lines().any(|l| l.ends_with("/modules.dep")));
    assert!(list.lines().any(|l| l.ends_with("/e1000.ko")));
}

#[test]
fn overlay_only_change_reuses_the_compressed_base() {
    let d = tempfile::tempdir().unwrap();
    let ov = d.path().join("overlays/site/etc");
    std::fs::create_dir_all(&ov).unwrap();
    std::fs::write(ov.join("motd"), "one\n").unwrap();
    let loaded = config_in(
        d.path(),
        "[overlays]\ncalibration = \"generic\"\nuser = [\"site\"]\n",
    );
    let out = d.path().join("out");
    build(&loaded, &opts(out.clone())).unwrap();
    let base_before = std::fs::read(out.join("pxe/initramfs.img")).unwrap();
    let cache_before: Vec<_> = std::fs::read_dir(out.join(".cache"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    let base_cached = cache_before
        .iter()
        .find(|p| p.to_string_lossy().contains("initramfs-"))
        .unwrap()
        .clone();
    let inode = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&base_cached).unwrap());

    std::fs::write(ov.join("motd"), "two\n").unwrap();
    let report = build(&loaded, &opts(out.clone())).unwrap();
    // The same cached file (same inode) was reused, not rewritten.
    assert_eq!(
        inode,
        std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&base_cached).unwrap())
    );
    assert_eq!(
        std::fs::read(out.join("pxe/initramfs.img")).unwrap(),
        base_before
    );
    let seg = std::fs::read(out.join("pxe/overlay-site.img")).unwrap();
    assert!(!seg.is_empty());
    assert!(report.manifest.boot.unwrap().initrds.ends_with(&[
        "pxe/overlay-calibration-generic.img".into(),
        "pxe/overlay-site.img".into()
    ]));
}

fn build_err(loaded: &Loaded, o: &Options) -> String {
    let err = build(loaded, o).err().expect("build should fail");
    let mut msg = err.to_string();
    let mut src = std::error::Error::source(&err);
    while let Some(s) = src {
        msg.push_str(&format!(": {s}"));
        src = s.source();
    }
    msg
}

#[test]
fn bad_input_is_named() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("out");

    // No kernel in /boot.
    let mut o = opts(out.clone());
    o.boot_dir = d.path().join("empty-boot");
    std::fs::create_dir_all(&o.boot_dir).unwrap();
    let msg = build_err(&config_in(d.path(), ""), &o);
    assert!(
        msg.contains("no kernel found") && msg.contains("empty-boot"),
        "{msg}"
    );

    // Modules tree missing for the kernel.
    let mut o = opts(out.clone());
    o.modules_root = d.path().join("no-modules");
    let msg = build_err(&config_in(d.path(), ""), &o);
    assert!(
        msg.contains("modules tree") && msg.contains("no-modules"),
        "{msg}"
    );

    // CRIU not installed.
    let mut loaded = config_in(d.path(), "");
    loaded.config.initramfs.criu = "/nonexistent/criu".into();
    let msg = build_err(&loaded, &opts(out.clone()));
    assert!(
        msg.contains("CRIU not found at /nonexistent/criu") && msg.contains("apt-get install criu"),
        "{msg}"
    );

    // Unknown overlay and unknown output.
    let msg = build_err(
        &config_in(d.path(), "[overlays]\nuser = [\"nosuch\"]\n"),
        &opts(out.clone()),
    );
    assert!(msg.contains("overlay \"nosuch\" not found"), "{msg}");
    let mut o = opts(out.clone());
    o.outputs = Some(vec!["cdrom".into()]);
    let msg = build_err(&config_in(d.path(), ""), &o);
    assert!(
        msg.contains("unknown output \"cdrom\"") && msg.contains("disk, floppy, pxe"),
        "{msg}"
    );

    // Unknown driver module.
    let msg = build_err(
        &config_in(
            d.path(),
            "[kernel]\ncmdline = \"console=ttyS0\"\ndrivers = [\"e1000\", \"nosuchnic\"]\n",
        ),
        &opts(out.clone()),
    );
    assert!(msg.contains("\"nosuchnic\""), "{msg}");

    // Overlay escaping the root.
    let ov = d.path().join("overlays/evil/etc");
    std::fs::create_dir_all(&ov).unwrap();
    std::os::unix::fs::symlink("../../../etc/shadow", ov.join("x")).unwrap();
    let msg = build_err(
        &config_in(d.path(), "[overlays]\nuser = [\"evil\"]\n"),
        &opts(out.clone()),
    );
    assert!(msg.contains("escapes the image root"), "{msg}");

    // Output "directory" that is a file.
    let file = d.path().join("a-file");
    std::fs::write(&file, "x").unwrap();
    let msg = build_err(&config_in(d.path(), ""), &opts(file.join("out")));
    assert!(
        msg.contains("not writable") && msg.contains("a-file"),
        "{msg}"
    );
}

#[test]
fn floppy_only_build_needs_no_kernel() {
    let d = tempfile::tempdir().unwrap();
    let mut o = opts(d.path().join("out"));
    o.outputs = Some(vec!["floppy".into()]);
    o.server = Some("http://10.0.2.2:9999".into());
    o.boot_dir = d.path().join("no-boot");
    let report = build(&config_in(d.path(), ""), &o).unwrap();
    assert_eq!(report.manifest.artifacts.len(), 1);
    assert!(report.manifest.boot.is_none());
}

#[test]
fn full_output_directory_fails_cleanly() {
    // Needs a small file system to fill; mounting one takes root. Stated, not silently passed.
    if !nix_is_root() {
        eprintln!("skipped: mounting a small tmpfs needs root");
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let mnt = d.path().join("small");
    std::fs::create_dir(&mnt).unwrap();
    let status = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=4m", "tmpfs"])
        .arg(&mnt)
        .status()
        .unwrap();
    assert!(status.success());
    let msg = build_err(&config_in(d.path(), ""), &opts(mnt.join("out")));
    let left: Vec<String> = walkdir::WalkDir::new(mnt.join("out"))
        .into_iter()
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_file())
        .map(|e| e.path().display().to_string())
        .collect();
    let _ = std::process::Command::new("umount").arg(&mnt).status();
    assert!(
        msg.contains("No space left") || msg.contains("os error 28"),
        "{msg}"
    );
    // Nothing half-written under a final name: no disk.img, floppy.img or manifest.json.
    assert!(
        left.iter()
            .all(|p| !p.ends_with("disk.img") && !p.ends_with("manifest.json")),
        "{left:?}"
    );
}

fn nix_is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}
