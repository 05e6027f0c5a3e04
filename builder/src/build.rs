//! `drove build`: a flat list of named, timed steps from a cluster config to boot media.
//!
//! Plan first (kernel, module closure, library closures, the initramfs file list, overlays), then
//! write (compressed segments, media, manifest). The compressed base segment is cached by the
//! fingerprint of its plan, so an overlay-only change never recompresses it.

use crate::config::Loaded;
use crate::initramfs::{self, Plan};
use crate::kernel::{self, Kernel, ModulesDep};
use crate::key::{self, ClusterKey};
use crate::manifest::{self, Manifest};
use crate::outputs::{self, BootPayload, Initrd, OutputContext};
use crate::overlay::{self, Policy};
use crate::progress::{human, Steps};
use crate::{config, elf};
use drove_agent::config::{NodeConfig, CLUSTER_KEY_PATH, NODE_CONFIG_PATH};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Kernel(#[from] kernel::Error),
    #[error(transparent)]
    Elf(#[from] elf::Error),
    #[error(transparent)]
    KernelBuild(#[from] crate::kernel_build::Error),
    #[error(transparent)]
    Initramfs(#[from] initramfs::Error),
    #[error(transparent)]
    Overlay(#[from] overlay::Error),
    #[error(transparent)]
    Key(#[from] key::Error),
    #[error(transparent)]
    Output(#[from] outputs::Error),
    #[error(transparent)]
    Manifest(#[from] manifest::Error),
    #[error("{what} not found at {path}: {hint}")]
    Missing {
        what: &'static str,
        path: PathBuf,
        hint: &'static str,
    },
    #[error("output directory {path} is not writable")]
    OutDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write {path}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config: {0}")]
    Config(String),
}

/// Everything a build needs besides the config: where to write, what to override.
#[derive(Debug, Clone)]
pub struct Options {
    pub out: PathBuf,
    /// Media to write instead of the config's `outputs.build`.
    pub outputs: Option<Vec<String>>,
    /// Image server URL instead of the config's `outputs.server`.
    pub server: Option<String>,
    /// SOURCE_DATE_EPOCH for every timestamp; default: the environment's, else a fixed date.
    pub epoch: Option<u64>,
    pub quiet: bool,
    /// drove's own data: the `initramfs/` skeleton and the shipped `overlays/`.
    pub data_dir: PathBuf,
    /// Where to find `/boot` and `/lib/modules` (tests point these at fixtures).
    pub boot_dir: PathBuf,
    pub modules_root: PathBuf,
}

impl Options {
    pub fn new(out: PathBuf) -> Self {
        Options {
            out,
            outputs: None,
            server: None,
            epoch: None,
            quiet: false,
            data_dir: data_dir(),
            boot_dir: "/boot".into(),
            modules_root: "/lib/modules".into(),
        }
    }
}

/// drove's data directory: `$DROVE_DATA_DIR`, else the source tree this binary was built from,
/// else `<exe>/../share/drove`.
pub fn data_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("DROVE_DATA_DIR") {
        return d.into();
    }
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    if source.join("overlays").is_dir() {
        return source.canonicalize().unwrap_or(source);
    }
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|d| d.join("../share/drove")))
        .unwrap_or_else(|| ".".into())
}

pub struct Report {
    pub manifest: Manifest,
    pub steps: Steps,
}

/// Runs the whole build.
pub fn build(loaded: &Loaded, opts: &Options) -> Result<Report, Error> {
    let cfg = &loaded.config;
    let mut steps = Steps::new(opts.quiet);
    let epoch = opts.epoch.unwrap_or_else(source_date_epoch);
    let mtime = u32::try_from(epoch).unwrap_or(u32::MAX);
    let server = opts
        .server
        .clone()
        .unwrap_or_else(|| cfg.outputs.server.clone());
    let names = opts
        .outputs
        .clone()
        .unwrap_or_else(|| cfg.outputs.build.clone());
    if names.is_empty() {
        return Err(Error::Config(
            "no outputs to build (outputs.build is empty)".into(),
        ));
    }

    let writers = steps.run("check outputs", || -> Result<_, Error> {
        let writers = names
            .iter()
            .map(|n| outputs::lookup(n))
            .collect::<Result<Vec<_>, _>>()?;
        prepare_out_dir(&opts.out)?;
        Ok((
            writers,
            format!("{} → {}", names.join(", "), opts.out.display()),
        ))
    })?;
    let needs_payload = writers.iter().any(|w| w.needs_payload);
    let cache = opts.out.join(".cache");
    let mut components: BTreeMap<String, u64> = BTreeMap::new();
    let mut kernel_release = None;

    let payload = if needs_payload {
        let kernel = steps.run("resolve kernel", || -> Result<_, Error> {
            let k = match &cfg.kernel.compiled {
                Some(dir) => crate::kernel_build::kernel_input(dir)?,
                None => kernel::resolve(
                    cfg.kernel.image.as_deref(),
                    cfg.kernel.modules.as_deref(),
                    &opts.boot_dir,
                    &opts.modules_root,
                )?,
            };
            let detail = format!("{} {}", k.image.display(), k.release);
            Ok((k, detail))
        })?;
        kernel_release = Some(kernel.release.clone());
        components.insert("kernel".into(), file_len(&kernel.image)?);
        let plan = plan_base(loaded, opts, &kernel, &mut steps)?;
        for (name, bytes) in plan.component_bytes()? {
            *components.entry(name).or_insert(0) += bytes;
        }
        let mut initrds = Vec::new();
        let base = steps.run("write initramfs", || -> Result<_, Error> {
            let fp = plan.fingerprint(cfg.initramfs.compression, mtime)?;
            let dest = cache.join(format!("initramfs-{}.img", &fp[..16]));
            let detail = if dest.is_file() {
                format!("cached, {}", human(file_len(&dest)?))
            } else {
                let size = initramfs::write_segment(
                    &plan.entries(),
                    cfg.initramfs.compression,
                    mtime,
                    &dest,
                )?;
                format!(
                    "{}, {} files, {}",
                    format!("{:?}", cfg.initramfs.compression).to_lowercase(),
                    plan.paths().count(),
                    human(size)
                )
            };
            Ok((dest, detail))
        })?;
        initrds.push(Initrd {
            name: "initramfs.img".into(),
            path: base,
        });
        for ov in overlays_of(loaded, opts)? {
            let seg = steps.run(
                &format!("write overlay {}", ov.name),
                || -> Result<_, Error> {
                    let policy = Policy {
                        allow_setuid: cfg.overlays.allow_setuid,
                        allow_devices: cfg.overlays.allow_devices,
                    };
                    let mut plan = Plan::default();
                    for entry in overlay::entries(&ov, policy)? {
                        plan.add(&format!("overlay {}", ov.name), entry)?;
                    }
                    let fp = plan.fingerprint(cfg.initramfs.compression, mtime)?;
                    let dest = cache.join(format!("{}-{}", &fp[..16], ov.segment_name()));
                    if !dest.is_file() {
                        initramfs::write_segment(
                            &plan.entries(),
                            cfg.initramfs.compression,
                            mtime,
                            &dest,
                        )?;
                    }
                    let bytes: u64 = plan.component_bytes()?.values().sum();
                    components.insert(format!("overlay {}", ov.name), bytes);
                    Ok((dest, format!("{} files", plan.paths().count())))
                },
            )?;
            initrds.push(Initrd {
                name: ov.segment_name(),
                path: seg,
            });
        }
        let cmdline = with_image_id(&cfg.kernel.cmdline, &kernel.image, &initrds)?;
        Some(BootPayload {
            kernel: kernel.image.clone(),
            initrds,
            cmdline,
        })
    } else {
        None
    };

    let seed: [u8; 32] = Sha256::digest(format!("drove-media-v1\n{}", cfg.to_toml())).into();
    let loaders = outputs::Loaders::debian();
    let ctx = OutputContext {
        payload: payload.as_ref(),
        server: &server,
        epoch,
        seed,
        out_dir: &opts.out,
        loaders: &loaders,
    };
    let mut artifacts = Vec::new();
    for output in writers {
        let produced = steps.run(&format!("write {}", output.name), || -> Result<_, Error> {
            let produced = (output.write)(&ctx)?;
            let detail = produced
                .iter()
                .map(|a| a.path.display().to_string())
                .collect::<Vec<_>>()
                .join(", ");
            Ok((produced, detail))
        })?;
        artifacts.extend(produced);
    }

    let manifest = steps.run("write manifest", || -> Result<_, Error> {
        let mut listed = Vec::new();
        for a in &artifacts {
            let components: Vec<_> = a
                .components
                .iter()
                .map(|(n, b)| manifest::Component {
                    name: n.clone(),
                    bytes: *b,
                })
                .collect();
            for file in files_of(&opts.out, &a.path)? {
                let (size, sha256) = manifest::digest(&opts.out.join(&file))?;
                let components = if file == a.path {
                    components.clone()
                } else {
                    Vec::new()
                };
                listed.push(manifest::Artifact {
                    path: file.to_string_lossy().into_owned(),
                    size,
                    sha256,
                    components,
                });
            }
        }
        let boot = match (&payload, names.iter().any(|n| n == "pxe")) {
            (Some(p), true) => Some(manifest::Boot {
                kernel: "pxe/vmlinuz".into(),
                initrds: p
                    .initrds
                    .iter()
                    .map(|i| format!("pxe/{}", i.name))
                    .collect(),
            }),
            _ => None,
        };
        let m = Manifest {
            drove_version: env!("CARGO_PKG_VERSION").into(),
            cluster: cfg.cluster.name.clone(),
            kernel_release: kernel_release.clone(),
            cmdline: payload.as_ref().map(|p| p.cmdline.clone()),
            boot,
            artifacts: listed,
            components: components
                .iter()
                .map(|(n, b)| manifest::Component {
                    name: n.clone(),
                    bytes: *b,
                })
                .collect(),
        };
        m.write(&opts.out)?;
        prune_cache(&cache, payload.as_ref());
        Ok((m, format!("{} artifacts", artifacts.len())))
    })?;
    if !opts.quiet {
        eprintln!(
            "drove: built {} in {:.2}s",
            opts.out.display(),
            steps.total().as_secs_f64()
        );
    }
    Ok(Report { manifest, steps })
}

/// The base initramfs plan: agent, CRIU and libraries, busybox, modules, config, key, skeleton.
fn plan_base(
    loaded: &Loaded,
    opts: &Options,
    kernel: &Kernel,
    steps: &mut Steps,
) -> Result<Plan, Error> {
    let cfg = &loaded.config;
    let closure = steps.run("resolve modules", || -> Result<_, Error> {
        let Some(dir) = kernel.modules_dir.clone() else {
            // A compiled kernel has every driver built in: nothing to ship or load.
            let closure = kernel::Closure {
                files: Vec::new(),
                builtin: cfg
                    .kernel
                    .drivers
                    .iter()
                    .map(|d| kernel::normalize(d))
                    .collect(),
                modules_dep: String::new(),
            };
            return Ok((closure, "compiled kernel: all drivers built in".to_string()));
        };
        let dep = ModulesDep::load(&dir)?;
        let closure = dep.closure(
            &cfg.kernel.drivers,
            &dir.join("modules.dep"),
            &kernel.release,
        )?;
        let detail = format!(
            "{} drivers → {} modules, {} built in",
            cfg.kernel.drivers.len(),
            closure.files.len(),
            closure.builtin.len()
        );
        Ok((closure, detail))
    })?;
    let agent = agent_path(loaded)?;
    let (criu, busybox) = (&cfg.initramfs.criu, &cfg.initramfs.busybox);
    require(
        criu,
        "CRIU",
        "install Debian's criu (`apt-get install criu`) or set [initramfs] criu",
    )?;
    require(
        busybox,
        "busybox",
        "install Debian's busybox-static or set [initramfs] busybox",
    )?;
    let libs = steps.run("resolve libraries", || -> Result<_, Error> {
        let mut libs = elf::closure(&agent)?;
        libs.extend(elf::closure(criu)?);
        libs.extend(elf::closure(busybox)?);
        let detail = format!("{} shared libraries", libs.len());
        Ok((libs, detail))
    })?;
    let key_path = cfg
        .cluster
        .key_file
        .clone()
        .unwrap_or_else(|| key::default_path(loaded.source.as_deref(), &cfg.cluster.name));
    let key = steps.run("cluster key", || -> Result<_, Error> {
        let (key, created) = ClusterKey::load_or_create(&key_path)?;
        let detail = format!(
            "{} {}",
            if created { "created" } else { "using" },
            key_path.display()
        );
        Ok((key, detail))
    })?;
    steps.run("plan initramfs", || -> Result<_, Error> {
        let mut plan = Plan::default();
        for dir in ["dev", "proc", "sys", "run", "root", "var", "etc/drove"] {
            plan.add_dir("skeleton", dir, 0o755)?;
        }
        plan.add_dir("skeleton", "tmp", 0o1777)?;
        plan.add_file("agent", "init", 0o755, &agent)?;
        plan.add_file("criu", "usr/sbin/criu", 0o755, criu)?;
        plan.add_file("busybox", "bin/busybox", 0o755, busybox)?;
        for (path, src) in &libs {
            plan.add_file("libraries", path, 0o755, src)?;
        }
        if let Some(dir) = &kernel.modules_dir {
            initramfs::add_modules(&mut plan, dir, &kernel.release, &closure)?;
        }
        let node = node_config(loaded, &kernel.release, &closure.builtin);
        let text = toml::to_string_pretty(&node).map_err(|e| Error::Config(e.to_string()))?;
        plan.add_bytes("config", NODE_CONFIG_PATH, 0o644, text.into_bytes())?;
        plan.add_bytes("config", CLUSTER_KEY_PATH, 0o600, key.file_bytes())?;
        let skeleton = opts.data_dir.join("initramfs");
        if skeleton.is_dir() {
            let ov = overlay::Overlay {
                name: "initramfs skeleton".into(),
                source: skeleton,
            };
            for entry in overlay::entries(&ov, Policy::default())? {
                plan.add("skeleton", entry)?;
            }
        }
        let detail = format!("{} entries", plan.paths().count());
        Ok((plan, detail))
    })
}

/// What the node reads at boot, derived from the cluster config.
/// Built-in modules are left out of the load list: they are already there.
pub fn node_config(loaded: &Loaded, release: &str, builtin: &[String]) -> NodeConfig {
    let cfg = &loaded.config;
    NodeConfig {
        cluster: cfg.cluster.name.clone(),
        node_name: cfg.cluster.node_name.clone(),
        discovery: cfg.cluster.discovery,
        network: cfg.network.clone(),
        map: loaded.map.clone(),
        modules: cfg
            .kernel
            .drivers
            .iter()
            .filter(|d| !builtin.contains(&kernel::normalize(d)))
            .cloned()
            .collect(),
        kernel_release: release.into(),
        server: Some(cfg.outputs.server.clone()),
        api_port: drove_agent::config::DEFAULT_API_PORT,
        files: cfg.files.clone(),
    }
}

fn overlays_of(loaded: &Loaded, opts: &Options) -> Result<Vec<overlay::Overlay>, Error> {
    let cfg = &loaded.config;
    let mut search = cfg.overlays.search.clone();
    if loaded.source.is_some() {
        search.push(loaded.base_dir().join("overlays"));
    }
    search.push(opts.data_dir.join("overlays"));
    let mut found = Vec::new();
    if let Some(cal) = &cfg.overlays.calibration {
        found.push(overlay::find(&format!("calibration/{cal}"), &search)?);
    }
    for name in &cfg.overlays.user {
        found.push(overlay::find(name, &search)?);
    }
    Ok(found)
}

fn agent_path(loaded: &Loaded) -> Result<PathBuf, Error> {
    let path = match &loaded.config.initramfs.agent {
        Some(p) => p.clone(),
        None => std::env::current_exe()
            .ok()
            .and_then(|exe| exe.parent().map(|d| d.join("drove-agent")))
            .unwrap_or_else(|| "drove-agent".into()),
    };
    require(&path, "drove-agent", "build it with `cargo build --release -p drove-agent` (make image does), or set [initramfs] agent")?;
    Ok(path)
}

fn require(path: &Path, what: &'static str, hint: &'static str) -> Result<(), Error> {
    if path.is_file() {
        Ok(())
    } else {
        Err(Error::Missing {
            what,
            path: path.into(),
            hint,
        })
    }
}

/// The kernel parameter that names the image a node booted (`GET /api/node` shows it as
/// `image`; `drove update` waits for every node to come back with the new one).
pub const IMAGE_PARAM: &str = "drove.image=";

/// `cmdline` plus `drove.image=<16 hex>`: a digest of the kernel (path, size, modification time)
/// and of every initramfs segment's cache name, which carries the fingerprint of its content.
/// Cheap (no file is read) and deterministic: the same inputs give the same id, a changed
/// overlay, agent or kernel a new one. An `drove.image=` already in the config is replaced.
fn with_image_id(cmdline: &str, image: &Path, initrds: &[Initrd]) -> Result<String, Error> {
    let meta = std::fs::metadata(image).map_err(|source| kernel::Error::Read {
        path: image.to_owned(),
        source,
    })?;
    let mtime = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos());
    let mut h = Sha256::new();
    h.update(format!(
        "drove-image-v1\n{}\n{}\n{mtime}\n",
        image.display(),
        meta.len()
    ));
    for i in initrds {
        let cached = i.path.file_name().map(|n| n.to_string_lossy().into_owned());
        h.update(format!("{}\n{}\n", i.name, cached.unwrap_or_default()));
    }
    let kept: Vec<&str> = cmdline
        .split_whitespace()
        .filter(|w| !w.starts_with(IMAGE_PARAM))
        .collect();
    h.update(kept.join(" "));
    let id = hex::encode(&h.finalize()[..8]);
    Ok(format!("{} {IMAGE_PARAM}{id}", kept.join(" "))
        .trim_start()
        .to_owned())
}

fn file_len(p: &Path) -> Result<u64, Error> {
    Ok(std::fs::metadata(p)
        .map_err(|source| kernel::Error::Read {
            path: p.into(),
            source,
        })?
        .len())
}

/// An artifact path as the files it stands for (a directory such as `pxe/` lists its files).
fn files_of(out: &Path, rel: &Path) -> Result<Vec<PathBuf>, Error> {
    let full = out.join(rel);
    if !full.is_dir() {
        return Ok(vec![rel.into()]);
    }
    let mut files = Vec::new();
    for e in walkdir::WalkDir::new(&full).sort_by_file_name() {
        let e = e.map_err(|e| Error::Write {
            path: full.clone(),
            source: e.into(),
        })?;
        if e.file_type().is_file() {
            files.push(rel.join(e.path().strip_prefix(&full).unwrap_or(e.path())));
        }
    }
    Ok(files)
}

fn prepare_out_dir(out: &Path) -> Result<(), Error> {
    let err = |source| Error::OutDir {
        path: out.into(),
        source,
    };
    std::fs::create_dir_all(out).map_err(err)?;
    // Probe with a real file: permissions, read-only mounts and full disks all show up here.
    let probe = tempfile::Builder::new()
        .prefix(".probe-")
        .tempfile_in(out)
        .map_err(err)?;
    std::io::Write::write_all(&mut probe.as_file(), &[0u8; 4096]).map_err(err)?;
    probe.as_file().sync_all().map_err(err)?;
    Ok(())
}

/// Removes cached segments this build did not use, so `.cache` does not grow without bound.
fn prune_cache(cache: &Path, payload: Option<&BootPayload>) {
    let Some(payload) = payload else { return };
    let keep: Vec<&Path> = payload.initrds.iter().map(|i| i.path.as_path()).collect();
    if let Ok(entries) = std::fs::read_dir(cache) {
        for e in entries.flatten() {
            if !keep.contains(&e.path().as_path()) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}

/// `SOURCE_DATE_EPOCH` from the environment, else drove's fixed default (reproducible by default).
pub fn source_date_epoch() -> u64 {
    std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(config::DEFAULT_EPOCH)
}

#[cfg(test)]
mod image_id_tests {
    use super::*;

    fn initrd(name: &str, cached: &str) -> Initrd {
        Initrd {
            name: name.into(),
            path: PathBuf::from(format!("/x/.cache/{cached}")),
        }
    }

    #[test]
    fn image_id_follows_the_segments_and_replaces_an_old_one() {
        let d = tempfile::tempdir().unwrap();
        let k = d.path().join("vmlinuz");
        std::fs::write(&k, b"kernel").unwrap();
        let base = initrd("initramfs.img", "initramfs-0123456789abcdef.img");
        let ov1 = initrd("overlay-x.img", "aaaaaaaaaaaaaaaa-overlay-x.img");
        let ov2 = initrd("overlay-x.img", "bbbbbbbbbbbbbbbb-overlay-x.img");
        let one = with_image_id("console=ttyS0 quiet", &k, &[base.clone(), ov1.clone()]).unwrap();
        let again = with_image_id("console=ttyS0 quiet", &k, &[base.clone(), ov1]).unwrap();
        let other = with_image_id("console=ttyS0 quiet", &k, &[base.clone(), ov2]).unwrap();
        assert_eq!(one, again);
        assert_ne!(one, other);
        let re = regex_like(&one);
        assert!(one.starts_with("console=ttyS0 quiet drove.image="), "{one}");
        assert_eq!(re.len(), 16, "{one}");
        // An id already on the command line (a config copied from a manifest) is replaced.
        let replaced =
            with_image_id(&format!("{one} panic=30"), &k, std::slice::from_ref(&base)).unwrap();
        assert_eq!(replaced.matches(IMAGE_PARAM).count(), 1, "{replaced}");
        assert!(replaced.contains("panic=30"), "{replaced}");
    }

    fn regex_like(cmdline: &str) -> String {
        cmdline
            .split_whitespace()
            .find_map(|w| w.strip_prefix(IMAGE_PARAM))
            .unwrap_or_default()
            .to_owned()
    }
}
