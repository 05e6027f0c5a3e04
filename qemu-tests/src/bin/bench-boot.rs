//! Boot benchmark (issue 3): power-on to the `drove: ready` line of one node booted from the built
//! media (`out/`, or `$DROVE_OUT`) against a bare busybox-init initramfs (the harness's stand-in)
//! on the same kernel, command line and VM, in the same run, runs interleaved; medians. Prints a
//! markdown section for docs/benchmarks.md on stdout (progress on stderr).
//!
//! Usage: `bench-boot [--runs N]` (default 3, or `$RUNS`).

use drove_qemu_tests::bench::{median, runs_from_args};
use std::time::Duration;

use drove_qemu_tests::standin::standin_initrds;
use drove_qemu_tests::{accel, concat_files, Artifacts, Error, Nic, VmBuilder, BOOT_TIMEOUT};

/// The VM both boot in.
const MEMORY_MIB: u32 = 1024;

fn main() {
    let runs = runs_from_args("bench-boot");
    if let Err(e) = run(runs) {
        eprintln!("bench-boot: error: {e:?}");
        std::process::exit(1);
    }
}

/// Boots `kernel` + `initrd` once and returns power-on (QEMU start) to the ready line.
fn boot_once(
    name: &str,
    kernel: &std::path::Path,
    initrd: &std::path::Path,
    cmdline: &str,
) -> Result<(Duration, String), Error> {
    let vm = VmBuilder::new(name)?
        .memory_mib(MEMORY_MIB)
        .kernel(kernel, Some(initrd.to_owned()), cmdline)
        .nic(Nic::user())
        .spawn()?;
    vm.wait_ready(BOOT_TIMEOUT)?;
    let t = vm.uptime();
    let line = vm.command_line().to_owned();
    vm.kill();
    vm.keep_dir(false);
    Ok((t, line))
}

fn run(runs: usize) -> Result<(), Error> {
    let media = Artifacts::load()?;
    let kernel = media.kernel()?;
    let cmdline = media.cmdline().to_owned();
    let work = tempfile::Builder::new()
        .prefix("drove-bench-boot-")
        .tempdir()
        .map_err(|source| Error::Io {
            what: "cannot create a directory in",
            path: std::env::temp_dir(),
            source,
        })?;
    let drove_initrd = media.concat_initrds(&work.path().join("drove-initrd.img"))?;
    let (base, overlay) = standin_initrds(work.path())?;
    let bare_initrd = work.path().join("bare-initrd.img");
    concat_files(&[base, overlay], &bare_initrd)?;
    let size = |p: &std::path::Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);

    let accel = accel();
    let (mut bare, mut drove) = (Vec::new(), Vec::new());
    let (mut bare_cmd, mut drove_cmd) = (String::new(), String::new());
    for i in 1..=runs {
        // Interleaved, so both see the same background load.
        let (t, cmd) = boot_once(&format!("bench-bare-{i}"), &kernel, &bare_initrd, &cmdline)?;
        eprintln!(
            "bench-boot: run {i}/{runs}: bare busybox init ready after {:.2}s",
            t.as_secs_f64()
        );
        bare.push(t.as_secs_f64());
        bare_cmd = cmd;
        let (t, cmd) = boot_once(
            &format!("bench-drove-{i}"),
            &kernel,
            &drove_initrd,
            &cmdline,
        )?;
        eprintln!(
            "bench-boot: run {i}/{runs}: drove-agent ready after {:.2}s",
            t.as_secs_f64()
        );
        drove.push(t.as_secs_f64());
        drove_cmd = cmd;
    }
    let all = |v: &[f64]| {
        v.iter()
            .map(|t| format!("{t:.2}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let (mb, md) = (median(bare.clone()), median(drove.clone()));
    let ratio = md / mb;
    let workdir = work.path().display().to_string();
    let out = media.out().display().to_string();
    let shorten = |cmd: &str| cmd.replace(&workdir, "$WORK").replace(&out, "out");
    println!("## Boot to ready (one node, QEMU)\n");
    println!(
        "Produced by `cargo run --release --locked -p drove-qemu-tests --bin bench-boot` (`scripts/bench-boot.sh`),\n\
         {runs} runs each, interleaved, accelerator {accel:?}, {MEMORY_MIB} MiB, 1 vCPU; power-on (QEMU started) to the\n\
         ready line on the serial console. Both boot the media's kernel (`{}`) with the media's command\n\
         line; the baseline's initramfs is busybox alone with a `/init` that mounts /proc, /sys and /dev\n\
         and prints the line (the harness's stand-in node).\n",
        media.manifest().boot.kernel
    );
    println!("| what | initramfs bytes | runs (s) | median | goal |");
    println!("|---|---|---|---|---|");
    println!(
        "| bare busybox init (baseline) | {} | {} | {mb:.2} s | |",
        size(&bare_initrd),
        all(&bare)
    );
    println!(
        "| drove-agent to `drove: ready` | {} | {} | {md:.2} s | |",
        size(&drove_initrd),
        all(&drove)
    );
    println!(
        "| ratio | | | {ratio:.2} | ≤ 1.5 {} |",
        if ratio <= 1.5 { "(met)" } else { "(not met)" }
    );
    println!("\nQEMU command lines (last run; `$WORK` is a temporary directory):\n");
    println!("```\n{}\n{}\n```", shorten(&bare_cmd), shorten(&drove_cmd));
    Ok(())
}
