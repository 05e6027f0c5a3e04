//! `drove kernel build`: compiles the migration-enabled kernel from source.
//!
//! Steps: hash the inputs (source, base, fragments, compiler) into a cache key and return at once
//! when that kernel was built before; otherwise unpack the source once, `make tinyconfig` (or
//! another base) in a reused `O=` directory, merge the fragments over it, `make olddefconfig`,
//! fail naming every option kconfig dropped, `make bzImage` with progress, and store the result.
//! The kernel has `CONFIG_MODULES` off: everything the node needs is built in.

pub mod cache;
pub mod compile;
pub mod fragment;
pub mod kconfig;

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::cmd::Cmd;
use crate::progress::Steps;
use fragment::{Fragment, Merged};

/// Debian's kernel source package puts it here (`apt-get install linux-source-6.1`).
pub const DEFAULT_SOURCE: &str = "/usr/src/linux-source-6.1.tar.xz";
/// The fragments merged when none are given, in order, relative to `kernel/`.
pub const DEFAULT_FRAGMENTS: [&str; 3] = ["base.config", "migration.config", "hardware.config"];
/// The kernel architecture built (`ARCH=`), its `arch/` directory and its image.
pub const ARCH: &str = "x86_64";
const ARCH_DIR: &str = "x86";
const IMAGE: &str = "arch/x86/boot/bzImage";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write {path}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("kernel source {path} not found (install it with `apt-get install linux-source-6.1`, or pass --source DIR|TARBALL)")]
    NoSource {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not a kernel source tree (no Makefile, Kconfig and scripts/kconfig at its top or one level down)")]
    NotKernelTree { path: PathBuf },
    #[error("cannot unpack {path}")]
    Unpack {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Fragment(#[from] fragment::Error),
    #[error("no fragments given")]
    NoFragments,
    #[error("unknown base {name:?}: use tinyconfig, defconfig or allnoconfig")]
    UnknownBase { name: String },
    #[error("cannot tell the compiler version")]
    Compiler(#[source] crate::cmd::Error),
    #[error("{step} failed (full log: {log})")]
    Make {
        step: String,
        log: PathBuf,
        source: crate::cmd::Error,
    },
    #[error("kconfig dropped {} option(s) the fragments ask for (their dependencies are not met; add them to a fragment or drop the request):\n{}", .lines.len(), .lines.join("\n"))]
    Dropped { lines: Vec<String> },
    #[error("compile failed; first error (full log: {log}):\n{first_error}")]
    Compile { log: PathBuf, first_error: String },
    #[error("make finished but {path} is missing")]
    NoImage { path: PathBuf },
    #[error("{path}: cannot parse")]
    Info {
        path: PathBuf,
        source: serde_json::Error,
    },
}

/// The configuration a build starts from before the fragments are merged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Base {
    /// `make tinyconfig`: the smallest kernel; the fragments add what drove needs. The default.
    Tiny,
    /// `make defconfig`: x86_64's general-purpose config (larger, slower to build).
    Def,
    /// `make allnoconfig`: like tinyconfig without its size-over-speed choices.
    AllNo,
}

impl Base {
    pub fn target(self) -> &'static str {
        match self {
            Base::Tiny => "tinyconfig",
            Base::Def => "defconfig",
            Base::AllNo => "allnoconfig",
        }
    }

    /// A measured cold-build file count, the progress total until this machine has built once.
    fn estimate(self) -> Option<usize> {
        match self {
            Base::Tiny => Some(1150),
            Base::Def => Some(2900),
            Base::AllNo => None,
        }
    }
}

impl std::str::FromStr for Base {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        match s {
            "tinyconfig" | "tiny" => Ok(Base::Tiny),
            "defconfig" | "def" => Ok(Base::Def),
            "allnoconfig" => Ok(Base::AllNo),
            _ => Err(Error::UnknownBase { name: s.into() }),
        }
    }
}

/// What `drove kernel build` is asked to do.
#[derive(Debug, Clone)]
pub struct Options {
    /// A kernel source tarball (`.tar.xz`, `.tar.zst`, `.tar`) or an unpacked tree.
    pub source: PathBuf,
    /// Fragments merged in order (later wins).
    pub fragments: Vec<PathBuf>,
    pub base: Base,
    /// `make -j`; default: the number of CPUs.
    pub jobs: usize,
    /// Where `bzImage`, `kernel.json` and `kernel.config` are written.
    pub out: PathBuf,
    /// The cache (unpacked source, make's build directory, finished kernels).
    pub cache: PathBuf,
    /// `nice -n` for every make run (the machine is shared); `None` runs make as is.
    pub nice: Option<i32>,
    pub quiet: bool,
}

impl Options {
    pub fn new(out: PathBuf) -> Self {
        Options {
            source: DEFAULT_SOURCE.into(),
            fragments: default_fragments(&crate::build::data_dir().join("kernel")),
            base: Base::Tiny,
            jobs: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            out,
            cache: default_cache_dir(),
            nice: Some(10),
            quiet: false,
        }
    }
}

/// Fragments merged after the defaults when they exist under `kernel/`: `files.config`, the NFS
/// client of the cluster-wide file area (docs/files.md), so the compiled kernel mounts it.
pub const OPTIONAL_FRAGMENTS: [&str; 1] = ["files.config"];

/// `kernel/screen.config`: the VT, VGA text console and PS/2 keyboard (`--screen`).
pub fn screen_fragment() -> PathBuf {
    crate::build::data_dir().join("kernel/screen.config")
}

/// `kernel/base.config`, `kernel/migration.config`, `kernel/hardware.config` under `kernel_dir`,
/// then each of [`OPTIONAL_FRAGMENTS`] that is there.
pub fn default_fragments(kernel_dir: &Path) -> Vec<PathBuf> {
    DEFAULT_FRAGMENTS
        .iter()
        .map(|f| kernel_dir.join(f))
        .chain(
            OPTIONAL_FRAGMENTS
                .iter()
                .map(|f| kernel_dir.join(f))
                .filter(|p| p.is_file()),
        )
        .collect()
}

/// `$DROVE_KERNEL_CACHE`, else `$XDG_CACHE_HOME/drove/kernel`, else `~/.cache/drove/kernel`
/// (outside `out/` so `make clean` does not throw away a 1.3 GB source tree and a build).
pub fn default_cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("DROVE_KERNEL_CACHE") {
        return d.into();
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| "/var/cache".into());
    base.join("drove/kernel")
}

/// `kernel.json`: what was built from what.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KernelInfo {
    /// `uname -r` of the kernel, e.g. `6.1.192-drove`.
    pub release: String,
    pub arch: String,
    pub base: String,
    /// The cache key (sha256 over source, base, arch, compiler and fragments).
    pub key: String,
    pub source: String,
    pub source_sha256: String,
    pub fragments: Vec<FragmentInfo>,
    pub compiler: String,
    pub config_sha256: String,
    /// Options set to y in the final `.config`.
    pub config_options: usize,
    pub bzimage_bytes: u64,
    pub bzimage_sha256: String,
    /// Always false: everything is built in; the initramfs carries no modules.
    pub modules: bool,
    pub compiled_files: usize,
    pub compile_seconds: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FragmentInfo {
    pub path: String,
    pub sha256: String,
}

/// The result of [`build`].
#[derive(Debug, Clone)]
pub struct Built {
    /// `<out>/bzImage`.
    pub bzimage: PathBuf,
    pub info: KernelInfo,
    /// True when the kernel came from the cache without running make.
    pub cached: bool,
    pub steps: Steps,
}

/// The files [`build`] writes into its output directory.
pub const OUT_IMAGE: &str = "bzImage";
pub const OUT_INFO: &str = "kernel.json";
pub const OUT_CONFIG: &str = "kernel.config";

/// The bzImage a `drove kernel build --out DIR` left in `DIR`.
pub fn bzimage_in(out: &Path) -> PathBuf {
    out.join(OUT_IMAGE)
}

/// The compiled kernel in `out` as the builder's kernel input: the bzImage, its release, and no
/// modules tree (`modules_dir: None`: everything is built in).
pub fn kernel_input(out: &Path) -> Result<crate::kernel::Kernel, Error> {
    let info = read_info(&out.join(OUT_INFO))?;
    let image = bzimage_in(out);
    if !image.is_file() {
        return Err(Error::NoImage { path: image });
    }
    Ok(crate::kernel::Kernel {
        image,
        release: info.release,
        modules_dir: None,
    })
}

pub fn read_info(path: &Path) -> Result<KernelInfo, Error> {
    let text = std::fs::read(path).map_err(|source| Error::Read {
        path: path.into(),
        source,
    })?;
    serde_json::from_slice(&text).map_err(|source| Error::Info {
        path: path.into(),
        source,
    })
}

/// The loaded fragments and the inputs of the cache key.
struct Inputs {
    fragments: Vec<Fragment>,
    fragment_info: Vec<FragmentInfo>,
    source_hash: String,
    compiler: String,
    key: String,
}

fn gather(opts: &Options) -> Result<Inputs, Error> {
    if opts.fragments.is_empty() {
        return Err(Error::NoFragments);
    }
    let mut fragments = Vec::new();
    let mut contents = Vec::new();
    let mut fragment_info = Vec::new();
    for path in &opts.fragments {
        let bytes = std::fs::read(path).map_err(|source| fragment::Error::Read {
            path: path.clone(),
            source,
        })?;
        let text = String::from_utf8_lossy(&bytes);
        fragments.push(Fragment::parse(&text, path)?);
        fragment_info.push(FragmentInfo {
            path: path.display().to_string(),
            sha256: sha256_hex(&bytes),
        });
        contents.push(bytes);
    }
    let source_hash = cache::source_hash(&opts.source, &opts.cache.join("source-hashes"))?;
    let compiler = compiler_version()?;
    let key = cache::KeyInputs {
        source_hash: &source_hash,
        base: opts.base.target(),
        arch: ARCH,
        fragments: &contents,
        compiler: &compiler,
    }
    .key();
    Ok(Inputs {
        fragments,
        fragment_info,
        source_hash,
        compiler,
        key,
    })
}

/// `gcc --version`'s first line: a compiler upgrade rebuilds.
pub fn compiler_version() -> Result<String, Error> {
    let out = Cmd::new("gcc")
        .arg("--version")
        .output()
        .map_err(Error::Compiler)?;
    Ok(String::from_utf8_lossy(&out)
        .lines()
        .next()
        .unwrap_or("")
        .trim()
        .to_string())
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

/// Builds (or finds in the cache) the kernel and installs it into `opts.out`.
pub fn build(opts: &Options) -> Result<Built, Error> {
    let mut steps = Steps::new(opts.quiet);
    mkdir(&opts.cache)?;
    let inputs = steps.run("hash kernel inputs", || -> Result<_, Error> {
        let i = gather(opts)?;
        let detail = format!("key {}, {} fragments", &i.key[..12], i.fragments.len());
        Ok((i, detail))
    })?;
    let stored = opts.cache.join("images").join(&inputs.key);
    if !is_complete(&stored) {
        let _lock = cache::Lock::acquire(&opts.cache, opts.quiet)?;
        // Another build may have finished this very kernel while we waited.
        if !is_complete(&stored) {
            compile_into(opts, &inputs, &stored, &mut steps)?;
        }
    }
    let cached = steps
        .timings
        .iter()
        .all(|(name, _)| name == "hash kernel inputs");
    let info = steps.run("install kernel", || -> Result<_, Error> {
        let info = install(&stored, &opts.out)?;
        let detail = format!(
            "{} {}, {}{}",
            bzimage_in(&opts.out).display(),
            info.release,
            crate::progress::human(info.bzimage_bytes),
            if cached { ", cached" } else { "" }
        );
        Ok((info, detail))
    })?;
    Ok(Built {
        bzimage: bzimage_in(&opts.out),
        info,
        cached,
        steps,
    })
}

fn is_complete(stored: &Path) -> bool {
    stored.join(OUT_INFO).is_file() && stored.join(OUT_IMAGE).is_file()
}

/// The make command line for one target in the build directory, niced as asked.
fn make(opts: &Options, tree: &Path, build_dir: &Path, log: &Path, targets: &[&str]) -> Cmd {
    let mut args: Vec<String> = Vec::new();
    let program = match opts.nice {
        Some(n) => {
            args.extend(["-n".into(), n.to_string(), "make".into()]);
            "nice"
        }
        None => "make",
    };
    args.push("-C".into());
    args.push(tree.display().to_string());
    args.push(format!("O={}", build_dir.display()));
    args.push(format!("ARCH={ARCH}"));
    // Reproducible version strings: no user, host or wall-clock date of this machine.
    args.push("KBUILD_BUILD_USER=drove".into());
    args.push("KBUILD_BUILD_HOST=drove".into());
    args.push(format!(
        "KBUILD_BUILD_TIMESTAMP={}",
        utc_date(crate::build::source_date_epoch())
    ));
    args.extend(targets.iter().map(|t| t.to_string()));
    compile::logged(log, program, &args)
}

fn compile_into(
    opts: &Options,
    inputs: &Inputs,
    stored: &Path,
    steps: &mut Steps,
) -> Result<(), Error> {
    let (tree, build_dir) = steps.run("kernel source", || -> Result<_, Error> {
        let meta = std::fs::metadata(&opts.source).map_err(|source| Error::NoSource {
            path: opts.source.clone(),
            source,
        })?;
        let (tree, detail) = if meta.is_dir() {
            (
                cache::find_tree(&opts.source)?,
                "directory, used in place".to_string(),
            )
        } else {
            let (tree, fresh) = cache::unpack(&opts.source, &inputs.source_hash, &opts.cache)?;
            (
                tree,
                if fresh {
                    "unpacked".to_string()
                } else {
                    "unpacked before".to_string()
                },
            )
        };
        let build_dir = opts.cache.join("build").join(format!(
            "{}-{}",
            cache::short(&inputs.source_hash),
            opts.base.target()
        ));
        mkdir(&build_dir)?;
        Ok((
            (tree.clone(), build_dir),
            format!("{}: {detail}", tree.display()),
        ))
    })?;
    let log = build_dir.join("drove-build.log");
    std::fs::write(&log, b"").map_err(|source| Error::Write {
        path: log.clone(),
        source,
    })?;
    let config_path = build_dir.join(".config");

    let merged = steps.run("configure kernel", || -> Result<_, Error> {
        let _ = std::fs::remove_file(&config_path);
        let base = opts.base.target();
        make(opts, &tree, &build_dir, &log, &[base])
            .run()
            .map_err(|source| Error::Make {
                step: format!("make {base}"),
                log: log.clone(),
                source,
            })?;
        let base_text = std::fs::read_to_string(&config_path).map_err(|source| Error::Read {
            path: config_path.clone(),
            source,
        })?;
        let merged = fragment::merge(&inputs.fragments);
        for (old, new) in &merged.overrides {
            tracing::info!(
                "{}: {} overrides {} from {}",
                new.origin,
                new.line(),
                old.line(),
                old.origin
            );
        }
        write_atomic(&config_path, merged.apply(&base_text).as_bytes())?;
        make(opts, &tree, &build_dir, &log, &["olddefconfig"])
            .run()
            .map_err(|source| Error::Make {
                step: "make olddefconfig".into(),
                log: log.clone(),
                source,
            })?;
        let detail = format!(
            "{base} + {} options from {} fragments",
            merged.entries.len(),
            inputs.fragments.len()
        );
        Ok((merged, detail))
    })?;

    let final_config = steps.run("check kernel options", || -> Result<_, Error> {
        let final_config = Fragment::load(&config_path)?;
        check(&merged, &final_config, &tree)?;
        let on = count_on(&final_config);
        Ok((
            final_config,
            format!(
                "all {} requested options set; {on} options on",
                merged.entries.len()
            ),
        ))
    })?;

    let estimate_file = opts.cache.join("estimates").join(opts.base.target());
    let estimate = std::fs::read_to_string(&estimate_file)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .or(opts.base.estimate());
    let started = Instant::now();
    let jobs = format!("-j{}", opts.jobs.max(1));
    let compiled = steps.run("compile bzImage", || -> Result<_, Error> {
        let cmd = make(opts, &tree, &build_dir, &log, &[&jobs, "bzImage"]);
        let n = compile::run_with_progress(&cmd, &log, estimate, opts.quiet)?;
        Ok((n, format!("{n} files compiled, log {}", log.display())))
    })?;
    let seconds = started.elapsed().as_secs_f64();
    // A cold build (most files compiled) sets the progress total for next time.
    if compiled > estimate.unwrap_or(0) / 2 {
        let _ = std::fs::create_dir_all(opts.cache.join("estimates"));
        let _ = std::fs::write(&estimate_file, format!("{compiled}\n"));
    }

    steps.run("store kernel in cache", || -> Result<_, Error> {
        let image = build_dir.join(IMAGE);
        if !image.is_file() {
            return Err(Error::NoImage { path: image });
        }
        let release_file = build_dir.join("include/config/kernel.release");
        let release = std::fs::read_to_string(&release_file)
            .map_err(|source| Error::Read {
                path: release_file.clone(),
                source,
            })?
            .trim()
            .to_string();
        let config_bytes = std::fs::read(&config_path).map_err(|source| Error::Read {
            path: config_path.clone(),
            source,
        })?;
        let image_bytes = std::fs::read(&image).map_err(|source| Error::Read {
            path: image.clone(),
            source,
        })?;
        let info = KernelInfo {
            release,
            arch: ARCH.into(),
            base: opts.base.target().into(),
            key: inputs.key.clone(),
            source: opts.source.display().to_string(),
            source_sha256: inputs.source_hash.clone(),
            fragments: inputs.fragment_info.clone(),
            compiler: inputs.compiler.clone(),
            config_sha256: sha256_hex(&config_bytes),
            config_options: count_on(&final_config),
            bzimage_bytes: image_bytes.len() as u64,
            bzimage_sha256: sha256_hex(&image_bytes),
            modules: false,
            compiled_files: compiled,
            compile_seconds: (seconds * 10.0).round() / 10.0,
        };
        let parent = stored.parent().unwrap_or(stored);
        mkdir(parent)?;
        let tmp = tempfile::Builder::new()
            .prefix(".store-")
            .tempdir_in(parent)
            .map_err(|source| Error::Write {
                path: parent.into(),
                source,
            })?;
        write_atomic(&tmp.path().join(OUT_IMAGE), &image_bytes)?;
        write_atomic(&tmp.path().join(OUT_CONFIG), &config_bytes)?;
        let _ = std::fs::copy(&log, tmp.path().join("build.log"));
        write_atomic(&tmp.path().join(OUT_INFO), &info_json(&info))?;
        let _ = std::fs::remove_dir_all(stored);
        let tmp = tmp.keep();
        std::fs::rename(&tmp, stored).map_err(|source| Error::Write {
            path: stored.into(),
            source,
        })?;
        Ok(((), format!("{}", stored.display())))
    })?;
    Ok(())
}

fn info_json(info: &KernelInfo) -> Vec<u8> {
    let mut bytes = serde_json::to_vec_pretty(info).unwrap_or_default();
    bytes.push(b'\n');
    bytes
}

/// Fails naming every option the fragments asked for that the final `.config` does not have,
/// with the fragment line that asked and what Kconfig says it depends on.
pub fn check(merged: &Merged, final_config: &Fragment, tree: &Path) -> Result<(), Error> {
    let index = kconfig::Index::scan(tree, ARCH_DIR);
    check_with(merged, final_config, &index)
}

/// [`check`] against an already scanned Kconfig index. Also fails on options this kernel's
/// Kconfig does not define at all: a misspelt `# CONFIG_X is not set` would otherwise pass.
pub fn check_with(
    merged: &Merged,
    final_config: &Fragment,
    index: &kconfig::Index,
) -> Result<(), Error> {
    let mut dropped = merged.dropped(final_config);
    for entry in merged.entries.values() {
        let bare = entry.name.strip_prefix("CONFIG_").unwrap_or(&entry.name);
        let listed = dropped.iter().any(|d| d.wanted.name == entry.name);
        if !listed && !index.defs.contains_key(bare) {
            let got = final_config
                .values()
                .get(entry.name.as_str())
                .map(|v| (*v).clone());
            dropped.push(fragment::Dropped {
                wanted: entry.clone(),
                got,
            });
        }
    }
    if dropped.is_empty() {
        return Ok(());
    }
    let lines = dropped
        .iter()
        .map(|d| {
            format!(
                "  {d}\n      {}",
                index.explain(&d.wanted.name, final_config)
            )
        })
        .collect();
    Err(Error::Dropped { lines })
}

fn count_on(config: &Fragment) -> usize {
    config
        .entries
        .iter()
        .filter(|e| e.value == fragment::Value::Yes)
        .count()
}

/// Copies a stored kernel into `out` (each file written to a temporary name, then renamed),
/// skipping files already identical there.
fn install(stored: &Path, out: &Path) -> Result<KernelInfo, Error> {
    mkdir(out)?;
    let info = read_info(&stored.join(OUT_INFO))?;
    let current = read_info(&out.join(OUT_INFO)).ok();
    if current.as_ref() == Some(&info) && file_len(&bzimage_in(out)) == Some(info.bzimage_bytes) {
        return Ok(info);
    }
    for name in [OUT_IMAGE, OUT_CONFIG] {
        let from = stored.join(name);
        let bytes = std::fs::read(&from).map_err(|source| Error::Read {
            path: from.clone(),
            source,
        })?;
        write_atomic(&out.join(name), &bytes)?;
    }
    // kernel.json last: its presence says the other two are complete.
    write_atomic(&out.join(OUT_INFO), &info_json(&info))?;
    Ok(info)
}

fn file_len(p: &Path) -> Option<u64> {
    std::fs::metadata(p).ok().map(|m| m.len())
}

fn mkdir(dir: &Path) -> Result<(), Error> {
    std::fs::create_dir_all(dir).map_err(|source| Error::Write {
        path: dir.into(),
        source,
    })
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    use std::io::Write;
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let err = |source| Error::Write {
        path: path.into(),
        source,
    };
    let mut tmp = tempfile::Builder::new()
        .prefix(".tmp-")
        .tempfile_in(dir)
        .map_err(err)?;
    tmp.write_all(bytes).map_err(err)?;
    // Readable by all: `drove serve` and the media writers read these files.
    tmp.as_file()
        .set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o644))
        .map_err(err)?;
    tmp.as_file().sync_all().map_err(err)?;
    tmp.persist(path).map_err(|e| err(e.error))?;
    Ok(())
}

/// `1700000000` → `2023-11-14 22:13:20 UTC` (civil-from-days; no time crate needed for one line).
fn utc_date(epoch: u64) -> String {
    let days = (epoch / 86_400) as i64;
    let secs = epoch % 86_400;
    let (y, m, d) = crate::civil::civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_for_the_version_string() {
        assert_eq!(utc_date(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc_date(1_700_000_000), "2023-11-14 22:13:20 UTC");
        assert_eq!(utc_date(951_782_400), "2000-02-29 00:00:00 UTC");
    }

    #[test]
    fn bases_by_name() {
        assert_eq!("tinyconfig".parse::<Base>().unwrap(), Base::Tiny);
        assert_eq!("defconfig".parse::<Base>().unwrap().target(), "defconfig");
        assert!("bigconfig"
            .parse::<Base>()
            .unwrap_err()
            .to_string()
            .contains("tinyconfig"));
    }

    #[test]
    fn shipped_fragments_parse_and_ask_for_no_modules() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../kernel");
        let mut all = default_fragments(&dir);
        all.push(dir.join("qemu.config"));
        all.push(dir.join("screen.config"));
        let frags: Vec<Fragment> = all.iter().map(|p| Fragment::load(p).unwrap()).collect();
        let merged = fragment::merge(&frags);
        // Only screen.config may override: it turns the VT and keyboard hardware.config drops
        // back on.
        let overridden: Vec<&str> = merged
            .overrides
            .iter()
            .map(|(old, new)| {
                assert!(
                    new.origin.to_string().contains("screen.config"),
                    "fragments disagree: {old:?} vs {new:?}"
                );
                new.name.as_str()
            })
            .collect();
        assert_eq!(
            overridden,
            ["CONFIG_VT", "CONFIG_KEYBOARD_ATKBD", "CONFIG_SERIO"],
            "{:?}",
            merged.overrides
        );
        assert!(
            merged
                .entries
                .values()
                .all(|e| e.value != fragment::Value::Module),
            "built in only"
        );
        assert_eq!(merged.entries["CONFIG_MODULES"].value, fragment::Value::No);
        for name in [
            "CHECKPOINT_RESTORE",
            "FILE_LOCKING",
            "NF_TABLES",
            "ACPI_BUTTON",
            "E1000E",
            "RD_ZSTD",
            "VIRTIO_NET",
        ] {
            assert_eq!(
                merged.entries[&format!("CONFIG_{name}")].value,
                fragment::Value::Yes,
                "{name}"
            );
        }
    }

    /// A fake kernel tree whose `make` is a shell script: tinyconfig writes a base, olddefconfig
    /// drops `CONFIG_UNIX_DIAG` unless `CONFIG_UNIX=y` (as kconfig would), bzImage writes an image.
    fn fake_tree(dir: &Path) -> PathBuf {
        let tree = dir.join("linux");
        std::fs::create_dir_all(tree.join("scripts/kconfig")).unwrap();
        std::fs::create_dir_all(tree.join("net/unix")).unwrap();
        std::fs::write(tree.join("Kconfig"), "source \"net/unix/Kconfig\"\n").unwrap();
        std::fs::write(tree.join("net/unix/Kconfig"), "config UNIX\n\ttristate \"Unix\"\n\nconfig UNIX_DIAG\n\ttristate \"diag\"\n\tdepends on UNIX\n").unwrap();
        std::fs::write(tree.join("Makefile"), "# fake\n").unwrap();
        tree
    }

    #[test]
    fn dropped_option_check_against_a_fake_tree() {
        let dir = tempfile::tempdir().unwrap();
        let tree = fake_tree(dir.path());
        let frag = Fragment::parse(
            "CONFIG_UNIX_DIAG=y\n# CONFIG_UNIX is not set\n",
            Path::new("kernel/migration.config"),
        )
        .unwrap();
        let merged = fragment::merge(&[frag]);
        let final_config =
            Fragment::parse("# CONFIG_UNIX is not set\n", Path::new(".config")).unwrap();
        let err = check(&merged, &final_config, &tree)
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "kconfig dropped 1 option(s) the fragments ask for (their dependencies are not met; add them to a fragment or drop the request):\n  \
             kernel/migration.config:1: CONFIG_UNIX_DIAG=y → absent (dependencies not met)\n      \
             net/unix/Kconfig:4: depends on UNIX; off: UNIX"
        );
        let ok =
            Fragment::parse("CONFIG_UNIX=y\nCONFIG_UNIX_DIAG=y\n", Path::new(".config")).unwrap();
        let merged =
            fragment::merge(&[Fragment::parse("CONFIG_UNIX_DIAG=y\n", Path::new("f")).unwrap()]);
        check(&merged, &ok, &tree).unwrap();
        // A misspelt option is caught even when it asks for "not set".
        let typo =
            fragment::merge(&[
                Fragment::parse("# CONFIG_UNIX_DAIG is not set\n", Path::new("f")).unwrap(),
            ]);
        let err = check(&typo, &ok, &tree).unwrap_err().to_string();
        assert!(
            err.contains("f:1: # CONFIG_UNIX_DAIG is not set → absent")
                && err.contains("no such option"),
            "{err}"
        );
    }

    #[test]
    fn optional_fragments_join_the_defaults_when_present() {
        let dir = tempfile::tempdir().unwrap();
        let names = |v: Vec<PathBuf>| -> Vec<String> {
            v.iter()
                .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
                .collect()
        };
        assert_eq!(
            names(default_fragments(dir.path())),
            ["base.config", "migration.config", "hardware.config"]
        );
        std::fs::write(dir.path().join("files.config"), "CONFIG_NFS_FS=y\n").unwrap();
        assert_eq!(
            names(default_fragments(dir.path())),
            [
                "base.config",
                "migration.config",
                "hardware.config",
                "files.config"
            ]
        );
    }

    #[test]
    fn compiled_kernel_as_builder_input() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(kernel_input(dir.path()), Err(Error::Read { .. })));
        let info = KernelInfo {
            release: "6.1.192-drove".into(),
            arch: ARCH.into(),
            base: "tinyconfig".into(),
            key: "k".into(),
            source: DEFAULT_SOURCE.into(),
            source_sha256: "s".into(),
            fragments: vec![],
            compiler: "gcc".into(),
            config_sha256: "c".into(),
            config_options: 1,
            bzimage_bytes: 3,
            bzimage_sha256: "b".into(),
            modules: false,
            compiled_files: 1,
            compile_seconds: 1.0,
        };
        let stored = dir.path().join("stored");
        std::fs::create_dir_all(&stored).unwrap();
        std::fs::write(stored.join(OUT_IMAGE), b"img").unwrap();
        std::fs::write(stored.join(OUT_CONFIG), b"CONFIG_X=y\n").unwrap();
        std::fs::write(stored.join(OUT_INFO), info_json(&info)).unwrap();
        let out = dir.path().join("out");
        assert_eq!(install(&stored, &out).unwrap(), info);
        let k = kernel_input(&out).unwrap();
        assert_eq!(
            (k.image, k.release.as_str(), k.modules_dir),
            (out.join("bzImage"), "6.1.192-drove", None)
        );
        // Installing again over identical files is a no-op that still succeeds.
        install(&stored, &out).unwrap();
    }
}
