//! Tests that write real media with dummy kernels and check them with the tools a person would
//! use: sgdisk, fdisk and mtools (Debian packages gdisk, fdisk, mtools; loaders from
//! systemd-boot-efi, syslinux, syslinux-common, ipxe). No root, no QEMU.

use std::path::Path;

use super::testutil::*;
use super::*;

fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().expect("temp dir")
}

fn mdir(image: &str, path: &str) -> String {
    run_env(
        "mdir",
        "mtools",
        &["-a", "-i", image, path],
        &[("MTOOLS_SKIP_CHECK", "1")],
    )
}

/// Whether an `mdir` listing has `name`, as a long name (last column) or as an 8.3 name.
fn listed(listing: &str, name: &str) -> bool {
    listing.lines().any(|l| {
        let words: Vec<&str> = l.split_whitespace().collect();
        let short = match words.get(1) {
            Some(ext) if !ext.starts_with('<') && !ext.chars().all(|c| c.is_ascii_digit()) => {
                format!("{}.{}", words[0], ext)
            }
            _ => words.first().map(|w| w.to_string()).unwrap_or_default(),
        };
        words.last() == Some(&name) || short.eq_ignore_ascii_case(name)
    })
}

fn mtype(image: &str, path: &str) -> String {
    run_env(
        "mtype",
        "mtools",
        &["-i", image, path],
        &[("MTOOLS_SKIP_CHECK", "1")],
    )
}

#[test]
fn disk_image_is_gpt_with_bootable_esp_and_files() {
    let loaders = Loaders::debian();
    require_loaders(&loaders);
    let work = tempdir();
    let out = tempdir();
    let payload = dummy_payload(work.path());
    let ctx = context(Some(&payload), out.path(), &loaders);
    let arts = write("disk", &ctx).unwrap();
    assert_eq!(arts.len(), 1);
    assert_eq!(arts[0].path, Path::new("disk.img"));
    assert_eq!(leftovers(out.path(), &["disk.img"]), Vec::<String>::new());
    let img = out.path().join("disk.img");
    let img_s = img.to_str().unwrap();
    let len = std::fs::metadata(&img).unwrap().len();
    assert_eq!(len % (1 << 20), 0, "image is MiB-aligned");

    let v = run("sgdisk", "gdisk", &["-v", img_s]);
    assert!(v.contains("No problems found"), "sgdisk -v:\n{v}");
    let i = run("sgdisk", "gdisk", &["-i", "1", img_s]);
    assert!(i.contains("C12A7328-F81F-11D2-BA4B-00A0C93EC93B"), "{i}");
    assert!(i.contains("First sector: 2048 "), "{i}");
    assert!(
        i.contains("Attribute flags: 0000000000000004"),
        "legacy BIOS bootable:\n{i}"
    );
    // the same GUIDs every time: derived from the seed
    assert!(
        i.contains(
            &derive_guid(&ctx.seed, "esp guid")
                .to_string()
                .to_uppercase()
        ),
        "{i}"
    );
    let f = run("fdisk", "fdisk", &["-l", img_s]);
    assert!(
        f.contains("Disklabel type: gpt") && f.contains("EFI System"),
        "{f}"
    );

    // gptmbr.bin's boot code in the first 440 bytes, protective MBR after it
    let bytes = std::fs::read(&img).unwrap();
    let gptmbr = std::fs::read(&loaders.gptmbr).unwrap();
    assert_eq!(&bytes[..gptmbr.len()], &gptmbr[..]);
    assert_eq!(bytes[450], 0xee, "protective MBR partition type");
    assert_eq!(&bytes[510..512], &[0x55, 0xaa]);

    // the ESP's boot sector is syslinux's, records the partition start, and its backup matches
    let vbr = &bytes[1 << 20..(1 << 20) + 512];
    assert!(
        vbr.windows(8).any(|w| w == b"SYSLINUX"),
        "syslinux boot sector in the ESP"
    );
    assert_eq!(
        u32::from_le_bytes([vbr[0x1c], vbr[0x1d], vbr[0x1e], vbr[0x1f]]),
        2048,
        "hidden sectors"
    );
    assert_eq!(
        &bytes[(1 << 20) + 6 * 512..(1 << 20) + 7 * 512],
        vbr,
        "FAT32 backup boot sector"
    );

    let esp = format!("{img_s}@@1048576");
    let root = mdir(&esp, "::/");
    for name in [
        "ldlinux.sys",
        "ldlinux.c32",
        "syslinux.cfg",
        "EFI",
        "loader",
        "drove",
    ] {
        assert!(listed(&root, name), "{name} missing from ESP root:\n{root}");
    }
    let boot = mdir(&esp, "::/EFI/BOOT");
    let sdboot = std::fs::metadata(&loaders.systemd_boot).unwrap().len();
    assert!(
        listed(&boot, "BOOTX64.EFI") && boot.contains(&sdboot.to_string()),
        "{boot}"
    );
    assert_eq!(
        mtype(&esp, "::/loader/loader.conf"),
        "timeout 0\ndefault drove.conf\neditor no\n"
    );
    assert_eq!(
        mtype(&esp, "::/loader/entries/drove.conf"),
        "title drove\nlinux /drove/vmlinuz\ninitrd /drove/initramfs.img\n\
         initrd /drove/overlay-calibration-qemu.img\n\
         options console=ttyS0 drove.server=http://10.0.2.2:8080 quiet\n"
    );
    let cfg = mtype(&esp, "::/syslinux.cfg");
    assert!(cfg.contains("LINUX /drove/vmlinuz\n"), "{cfg}");
    assert!(
        cfg.contains("INITRD /drove/initramfs.img,/drove/overlay-calibration-qemu.img\n"),
        "{cfg}"
    );
    assert!(
        cfg.contains("APPEND console=ttyS0 drove.server=http://10.0.2.2:8080 quiet\n"),
        "{cfg}"
    );

    // file bytes read back through mtools
    let back = work.path().join("back");
    std::fs::create_dir(&back).unwrap();
    for (inside, host) in [
        ("::/drove/vmlinuz", payload.kernel.clone()),
        ("::/drove/initramfs.img", payload.initrds[0].path.clone()),
        (
            "::/drove/overlay-calibration-qemu.img",
            payload.initrds[1].path.clone(),
        ),
        ("::/EFI/BOOT/BOOTX64.EFI", loaders.systemd_boot.clone()),
    ] {
        let dest = back.join("f");
        run_env(
            "mcopy",
            "mtools",
            &["-o", "-i", &esp, inside, dest.to_str().unwrap()],
            &[("MTOOLS_SKIP_CHECK", "1")],
        );
        assert!(
            std::fs::read(&dest).unwrap() == std::fs::read(&host).unwrap(),
            "{inside} differs from {host:?}"
        );
    }
    // every timestamp is the epoch (2023-11-14 22:13), syslinux's files included
    assert!(
        listed(&root, "ldlinux.sys")
            && !root
                .lines()
                .any(|l| l.contains("ldlinux") && !l.contains("2023-11-14")),
        "{root}"
    );

    let comps: Vec<&str> = arts[0].components.iter().map(|(c, _)| c.as_str()).collect();
    assert_eq!(
        comps,
        [
            "systemd-boot",
            "config",
            "kernel",
            "initramfs.img",
            "overlay-calibration-qemu.img",
            "syslinux",
            "free and metadata"
        ]
    );
    let (_, sys) = &arts[0].components[5];
    assert!(*sys > 150_000, "ldlinux.sys + ldlinux.c32 counted: {sys}");
    assert_eq!(arts[0].components.iter().map(|(_, n)| n).sum::<u64>(), len);
}

#[test]
fn disk_layout_is_fat32_sized_and_aligned() {
    let mut t = fat::FatTree::new();
    t.add_bytes("drove/vmlinuz", vec![0; 1000], "kernel")
        .unwrap();
    let small = disk::layout(t);
    // FAT32's minimum decides the size of a small ESP
    assert_eq!(small.cluster_bytes, 512);
    assert!(
        small.esp_sectors * 512 >= 65_525 * 512 + (1 << 20),
        "{}",
        small.esp_sectors
    );
    assert!(small.esp_sectors * 512 <= 40 << 20, "{}", small.esp_sectors);
    assert_eq!(small.esp_sectors % 2048, 0);
    assert_eq!(small.total_sectors, 2048 + small.esp_sectors + 2048);

    let work = tempdir();
    let big = work.path().join("big");
    std::fs::File::create(&big)
        .unwrap()
        .set_len(300 << 20)
        .unwrap();
    let mut t = fat::FatTree::new();
    t.add_file("drove/initramfs.img", &big, "initramfs.img")
        .unwrap();
    let l = disk::layout(t);
    assert_eq!(l.cluster_bytes, 4096);
    assert!(
        l.esp_sectors * 512 > 300 << 20 && l.esp_sectors * 512 < 340 << 20,
        "{}",
        l.esp_sectors
    );
}

#[test]
fn disk_errors_name_the_missing_file_and_leave_nothing() {
    let loaders = Loaders::debian();
    let out = tempdir();
    let mut payload = dummy_payload(out.path());
    payload.kernel = "/nonexistent/vmlinuz-drove".into();
    let work_files = leftovers(out.path(), &[]);
    let err = write("disk", &context(Some(&payload), out.path(), &loaders)).unwrap_err();
    let chain = error_chain(&err);
    assert!(chain.contains("/nonexistent/vmlinuz-drove"), "{chain}");
    assert_eq!(leftovers(out.path(), &[]), work_files);

    let err = write("disk", &context(None, out.path(), &loaders)).unwrap_err();
    assert!(matches!(err, Error::NoPayload { output: "disk" }), "{err}");
    // a missing gptmbr.bin after the temporary image exists: still nothing left behind
    let payload = dummy_payload(out.path());
    let mut broken = loaders.clone();
    broken.gptmbr = "/nonexistent/gptmbr.bin".into();
    let err = write("disk", &context(Some(&payload), out.path(), &broken)).unwrap_err();
    assert!(
        error_chain(&err).contains("/nonexistent/gptmbr.bin"),
        "{}",
        error_chain(&err)
    );
    assert_eq!(leftovers(out.path(), &[]), work_files);
}

fn error_chain(err: &dyn std::error::Error) -> String {
    let mut s = err.to_string();
    let mut src = err.source();
    while let Some(e) = src {
        s.push_str(": ");
        s.push_str(&e.to_string());
        src = e.source();
    }
    s
}

#[test]
fn floppy_fits_with_bios_and_uefi() {
    let loaders = Loaders::debian();
    require_loaders(&loaders);
    let out = tempdir();
    let arts = write("floppy", &context(None, out.path(), &loaders)).unwrap();
    assert_eq!(leftovers(out.path(), &["floppy.img"]), Vec::<String>::new());
    let img = out.path().join("floppy.img");
    let len = std::fs::metadata(&img).unwrap().len();
    assert!(len <= 1_474_560);
    assert_eq!(len, floppy::FLOPPY_BYTES);
    let img_s = img.to_str().unwrap();
    let root = mdir(img_s, "::");
    for name in [
        "ldlinux.sys",
        "ldlinux.c32",
        "syslinux.cfg",
        "ipxe.lkrn",
        "drove.ipxe",
        "EFI",
    ] {
        assert!(listed(&root, name), "{name} missing:\n{root}");
    }
    let free: u64 = root
        .lines()
        .find(|l| l.contains("bytes free"))
        .and_then(|l| l.split("bytes").next())
        .map(|n| n.split_whitespace().collect::<String>())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no free bytes in:\n{root}"));
    assert!(free > 50_000, "{free} bytes free");
    let efi = mdir(img_s, "::/EFI/BOOT");
    assert!(
        listed(&efi, "BOOTX64.EFI") && listed(&efi, "autoexec.ipxe"),
        "{efi}"
    );
    let script = mtype(img_s, "::/drove.ipxe");
    assert!(script.starts_with("#!ipxe\n"), "{script}");
    assert!(script.contains("dhcp || goto dhcp_retry\n"), "{script}");
    assert!(
        script.contains("chain http://10.0.2.2:8080/boot.ipxe || goto chain_retry\n"),
        "{script}"
    );
    assert_eq!(mtype(img_s, "::/EFI/BOOT/autoexec.ipxe"), script);
    let cfg = mtype(img_s, "::/syslinux.cfg");
    assert!(
        cfg.contains("LINUX /ipxe.lkrn\n") && cfg.contains("INITRD /drove.ipxe\n"),
        "{cfg}"
    );
    // boot sector is syslinux's, the BPB a 1440 KiB floppy's
    let bytes = std::fs::read(&img).unwrap();
    assert_eq!(&bytes[510..512], &[0x55, 0xaa]);
    assert_eq!(u16::from_le_bytes([bytes[19], bytes[20]]), 2880);
    assert!(
        bytes[..512].windows(8).any(|w| w == b"SYSLINUX"),
        "syslinux boot sector"
    );
    let comps: Vec<&str> = arts[0].components.iter().map(|(c, _)| c.as_str()).collect();
    assert_eq!(
        comps,
        [
            "config",
            "ipxe.lkrn",
            "ipxe.efi",
            "syslinux",
            "free and metadata"
        ]
    );
    assert_eq!(
        arts[0].components.iter().map(|(_, n)| n).sum::<u64>(),
        floppy::FLOPPY_BYTES
    );
}

#[test]
fn floppy_over_budget_fails_with_a_size_table_and_leaves_nothing() {
    let work = tempdir();
    let out = tempdir();
    let huge = work.path().join("ipxe.lkrn");
    std::fs::write(&huge, vec![0u8; 1_500_000]).unwrap();
    let loaders = Loaders {
        ipxe_lkrn: huge,
        ..Loaders::debian()
    };
    let err = write("floppy", &context(None, out.path(), &loaders)).unwrap_err();
    let msg = err.to_string();
    println!("{msg}");
    assert!(
        matches!(err, Error::Floppy(floppy::Error::OverBudget { .. })),
        "{msg}"
    );
    assert!(msg.contains("component") && msg.contains("bytes"), "{msg}");
    assert!(
        msg.lines()
            .any(|l| l.starts_with("ipxe.lkrn") && l.ends_with("1500000")),
        "{msg}"
    );
    assert!(msg.lines().any(|l| l.starts_with("syslinux")), "{msg}");
    assert!(
        msg.lines()
            .any(|l| l.starts_with("available") && l.ends_with(&floppy::DATA_BYTES.to_string())),
        "{msg}"
    );
    assert_eq!(leftovers(out.path(), &[]), Vec::<String>::new());
}

#[test]
fn floppy_leaves_out_uefi_when_it_does_not_fit() {
    let work = tempdir();
    let lkrn = work.path().join("ipxe.lkrn");
    let efi = work.path().join("ipxe.efi");
    std::fs::write(&lkrn, vec![0u8; 300_000]).unwrap();
    std::fs::write(&efi, vec![0u8; 1_000_000]).unwrap();
    let p = floppy::plan("http://s", &lkrn, &efi).unwrap();
    assert!(!p.uefi);
    assert!(p.tree.files().iter().all(|f| !f.path.starts_with("EFI")));
    std::fs::write(&efi, vec![0u8; 800_000]).unwrap();
    let p = floppy::plan("http://s", &lkrn, &efi).unwrap();
    assert!(p.uefi && p.used <= floppy::DATA_BYTES);
}

#[test]
fn pxe_directory_has_everything_and_replaces_the_old_one() {
    let loaders = Loaders::debian();
    require_loaders(&loaders);
    let work = tempdir();
    let out = tempdir();
    let payload = dummy_payload(work.path());
    let ctx = context(Some(&payload), out.path(), &loaders);
    // an old directory with a stale file is replaced as a whole
    std::fs::create_dir(out.path().join("pxe")).unwrap();
    std::fs::write(out.path().join("pxe/stale.img"), b"old").unwrap();
    let arts = write("pxe", &ctx).unwrap();
    let paths: Vec<&Path> = arts.iter().map(|a| a.path.as_path()).collect();
    assert_eq!(paths[0], Path::new("pxe/vmlinuz"));
    assert_eq!(arts[0].components, [("kernel".to_string(), 300_000)]);
    assert_eq!(paths.len(), 7);
    for a in &arts {
        assert!(out.path().join(&a.path).is_file(), "{}", a.path.display());
    }
    assert_eq!(leftovers(out.path(), &["pxe"]), Vec::<String>::new());
    let pxe = out.path().join("pxe");
    let mut names = leftovers(&pxe, &[]);
    names.sort();
    assert_eq!(
        names,
        [
            "boot.ipxe",
            "dnsmasq.conf",
            "initramfs.img",
            "ipxe.efi",
            "overlay-calibration-qemu.img",
            "undionly.kpxe",
            "vmlinuz"
        ]
    );
    for (name, host) in [
        ("vmlinuz", &payload.kernel),
        ("initramfs.img", &payload.initrds[0].path),
        ("undionly.kpxe", &loaders.undionly_kpxe),
        ("ipxe.efi", &loaders.ipxe_efi),
    ] {
        assert!(
            std::fs::read(pxe.join(name)).unwrap() == std::fs::read(host).unwrap(),
            "{name}"
        );
    }
    let script = std::fs::read_to_string(pxe.join("boot.ipxe")).unwrap();
    assert_eq!(
        script,
        "#!ipxe\necho drove: loading kernel and initramfs\n\
         kernel vmlinuz initrd=initramfs.img initrd=overlay-calibration-qemu.img \
         console=ttyS0 drove.server=http://10.0.2.2:8080 quiet\n\
         initrd initramfs.img\ninitrd overlay-calibration-qemu.img\nboot\n"
    );
    let conf = std::fs::read_to_string(pxe.join("dnsmasq.conf")).unwrap();
    assert!(conf.contains("dhcp-range=192.168.1.0,proxy"), "{conf}");
    assert!(
        conf.contains("pxe-service=tag:ipxe,x86PC,\"drove\",http://10.0.2.2:8080/boot.ipxe"),
        "{conf}"
    );
    assert!(
        conf.contains("pxe-service=tag:!ipxe,x86PC,\"drove (BIOS)\",undionly.kpxe"),
        "{conf}"
    );
    let mtime = std::fs::metadata(pxe.join("vmlinuz"))
        .unwrap()
        .modified()
        .unwrap();
    assert_eq!(
        mtime,
        std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000)
    );
    // written again over itself: the exchange path
    write("pxe", &ctx).unwrap();
    assert_eq!(leftovers(out.path(), &["pxe"]), Vec::<String>::new());
}

#[test]
fn pxe_errors_leave_the_old_directory_and_no_temporaries() {
    let loaders = Loaders::debian();
    let work = tempdir();
    let out = tempdir();
    let mut payload = dummy_payload(work.path());
    std::fs::create_dir(out.path().join("pxe")).unwrap();
    std::fs::write(out.path().join("pxe/keep"), b"old").unwrap();
    payload.initrds[1].path = "/nonexistent/overlay.img".into();
    let err = write("pxe", &context(Some(&payload), out.path(), &loaders)).unwrap_err();
    assert!(
        err.to_string().contains("/nonexistent/overlay.img"),
        "{err}"
    );
    assert_eq!(leftovers(out.path(), &[]), ["pxe"]);
    assert!(out.path().join("pxe/keep").exists());
}

/// Same inputs, written twice at different wall-clock times (FAT keeps 2-second times), into two
/// directories: every file byte-identical.
#[test]
fn every_output_is_reproducible() {
    let loaders = Loaders::debian();
    require_loaders(&loaders);
    let work = tempdir();
    let payload = dummy_payload(work.path());
    let (a, b) = (tempdir(), tempdir());
    for (i, dir) in [a.path(), b.path()].into_iter().enumerate() {
        if i == 1 {
            std::thread::sleep(std::time::Duration::from_millis(2100));
        }
        for o in OUTPUTS {
            write(o.name, &context(Some(&payload), dir, &loaders)).unwrap();
        }
    }
    let files = [
        "disk.img",
        "floppy.img",
        "pxe/vmlinuz",
        "pxe/initramfs.img",
        "pxe/overlay-calibration-qemu.img",
        "pxe/boot.ipxe",
        "pxe/dnsmasq.conf",
        "pxe/undionly.kpxe",
        "pxe/ipxe.efi",
    ];
    for f in files {
        let (x, y) = (
            std::fs::read(a.path().join(f)).unwrap(),
            std::fs::read(b.path().join(f)).unwrap(),
        );
        if x != y {
            let first = x.iter().zip(&y).position(|(p, q)| p != q);
            panic!(
                "{f} differs between builds (first differing byte: {first:?}, lengths {} / {})",
                x.len(),
                y.len()
            );
        }
    }
    // a different seed gives different GUIDs and volume ids
    let c = tempdir();
    let mut ctx = context(Some(&payload), c.path(), &loaders);
    ctx.seed = [1; 32];
    write("disk", &ctx).unwrap();
    assert_ne!(
        std::fs::read(a.path().join("disk.img")).unwrap(),
        std::fs::read(c.path().join("disk.img")).unwrap()
    );
}

/// Not a test: writes every output from real inputs for booting by hand (docs/media.md):
/// `DROVE_MEDIA_KERNEL=/boot/vmlinuz-… DROVE_MEDIA_INITRDS=/tmp/a.img,/tmp/b.img
/// DROVE_MEDIA_OUT=/tmp/media [DROVE_MEDIA_SERVER=http://10.0.2.2:8080]
/// [DROVE_MEDIA_CMDLINE='console=ttyS0'] cargo test -p drove --lib write_media_from_env -- --ignored`
#[test]
#[ignore = "writes media from DROVE_MEDIA_* for booting by hand"]
fn write_media_from_env() {
    let var = |k: &str| std::env::var(k).unwrap_or_else(|_| panic!("set {k}"));
    let out = std::path::PathBuf::from(var("DROVE_MEDIA_OUT"));
    std::fs::create_dir_all(&out).unwrap();
    let initrds = var("DROVE_MEDIA_INITRDS")
        .split(',')
        .map(|p| {
            let path = std::path::PathBuf::from(p);
            Initrd {
                name: path.file_name().unwrap().to_string_lossy().into_owned(),
                path,
            }
        })
        .collect();
    let payload = BootPayload {
        kernel: var("DROVE_MEDIA_KERNEL").into(),
        initrds,
        cmdline: std::env::var("DROVE_MEDIA_CMDLINE").unwrap_or_else(|_| "console=ttyS0".into()),
    };
    let server =
        std::env::var("DROVE_MEDIA_SERVER").unwrap_or_else(|_| "http://10.0.2.2:8080".into());
    let loaders = Loaders::debian();
    let ctx = OutputContext {
        server: &server,
        ..context(Some(&payload), &out, &loaders)
    };
    for o in OUTPUTS {
        for a in write(o.name, &ctx).unwrap() {
            println!("{}: {:?}", a.path.display(), a.components);
        }
    }
}
