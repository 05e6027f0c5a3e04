//! Kernel input: the bzImage, its release string, and the `modules.dep` closure of the drivers
//! the image needs.
//!
//! The default is the newest distro kernel in `/boot` with its `/lib/modules/<release>` tree; a
//! compiled kernel plugs in through the same [`KernelInput`] (image + optional modules tree).

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("no kernel found: {dir} has no vmlinuz-* (install one with `apt-get install linux-image-amd64`, or set [kernel] image in the config)")]
    NoKernel { dir: PathBuf },
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not a bzImage (no \"HdrS\" setup header); give a bzImage/vmlinuz")]
    NotBzImage { path: PathBuf },
    #[error("{path}: the modules tree for kernel {release} is missing (expected {expected}); install the matching linux-image package or set [kernel] modules")]
    NoModules {
        path: PathBuf,
        release: String,
        expected: PathBuf,
    },
    #[error("{path}:{line}: malformed modules.dep line {text:?}")]
    DepSyntax {
        path: PathBuf,
        line: usize,
        text: String,
    },
    #[error("module {name:?} is neither in {dep} nor built into kernel {release}")]
    UnknownModule {
        name: String,
        dep: PathBuf,
        release: String,
    },
}

/// The kernel the image boots.
#[derive(Debug, Clone)]
pub struct Kernel {
    pub image: PathBuf,
    pub release: String,
    /// `/lib/modules/<release>`, or `None` for a kernel that needs no modules.
    pub modules_dir: Option<PathBuf>,
}

/// Finds the newest `vmlinuz-*` in `boot_dir` (by version order, not mtime).
pub fn newest_in(boot_dir: &Path) -> Result<PathBuf, Error> {
    let entries = std::fs::read_dir(boot_dir).map_err(|source| Error::Read {
        path: boot_dir.into(),
        source,
    })?;
    let mut found: Vec<(Vec<VersionPart>, PathBuf)> = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| Error::Read {
            path: boot_dir.into(),
            source,
        })?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(version) = name.strip_prefix("vmlinuz-") {
            found.push((version_key(version), entry.path()));
        }
    }
    found.sort();
    found.pop().map(|(_, p)| p).ok_or_else(|| Error::NoKernel {
        dir: boot_dir.into(),
    })
}

#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
enum VersionPart {
    Text(String),
    Num(u64),
}

/// Splits `6.1.0-56-amd64` into numbers and words so `6.10` sorts after `6.9`.
fn version_key(v: &str) -> Vec<VersionPart> {
    let mut parts = Vec::new();
    let mut cur = String::new();
    let flush = |cur: &mut String, parts: &mut Vec<VersionPart>| {
        if !cur.is_empty() {
            parts.push(match cur.parse() {
                Ok(n) => VersionPart::Num(n),
                Err(_) => VersionPart::Text(cur.clone()),
            });
            cur.clear();
        }
    };
    for c in v.chars() {
        if c.is_ascii_digit() != cur.chars().next().is_some_and(|p| p.is_ascii_digit()) {
            flush(&mut cur, &mut parts);
        }
        if c == '.' || c == '-' || c == '+' || c == '~' {
            flush(&mut cur, &mut parts);
        } else {
            cur.push(c);
        }
    }
    flush(&mut cur, &mut parts);
    parts
}

/// Reads the release string from a bzImage's setup header (the `kernel_version` field, the same
/// string `file(1)` prints), so a kernel given by path needs no separate version setting.
pub fn release_of(image: &Path) -> Result<String, Error> {
    let mut head = vec![0u8; 0x10000];
    let mut file = std::fs::File::open(image).map_err(|source| Error::Read {
        path: image.into(),
        source,
    })?;
    let n = read_up_to(&mut file, &mut head).map_err(|source| Error::Read {
        path: image.into(),
        source,
    })?;
    head.truncate(n);
    let not_bz = || Error::NotBzImage { path: image.into() };
    if head.get(0x202..0x206) != Some(b"HdrS") {
        return Err(not_bz());
    }
    let ptr = u16::from_le_bytes([head[0x20e], head[0x20f]]) as usize + 0x200;
    let tail = head.get(ptr..).ok_or_else(not_bz)?;
    let end = tail
        .iter()
        .position(|&b| b == 0 || b == b' ')
        .ok_or_else(not_bz)?;
    let release = std::str::from_utf8(&tail[..end]).map_err(|_| not_bz())?;
    if release.is_empty() {
        return Err(not_bz());
    }
    Ok(release.to_string())
}

fn read_up_to(file: &mut std::fs::File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut total = 0;
    while total < buf.len() {
        match file.read(&mut buf[total..])? {
            0 => break,
            n => total += n,
        }
    }
    Ok(total)
}

/// Resolves the kernel from an explicit image (and modules tree) or the newest one in `boot_dir`.
pub fn resolve(
    image: Option<&Path>,
    modules: Option<&Path>,
    boot_dir: &Path,
    modules_root: &Path,
) -> Result<Kernel, Error> {
    let image = match image {
        Some(p) => p.to_path_buf(),
        None => newest_in(boot_dir)?,
    };
    let release = release_of(&image)?;
    let modules_dir = match modules {
        Some(dir) => dir.to_path_buf(),
        None => modules_root.join(&release),
    };
    if !modules_dir.join("modules.dep").is_file() {
        return Err(Error::NoModules {
            path: image,
            release,
            expected: modules_dir.join("modules.dep"),
        });
    }
    Ok(Kernel {
        image,
        release,
        modules_dir: Some(modules_dir),
    })
}

/// Module names are compared with `-` and `_` folded, as modprobe does.
pub fn normalize(name: &str) -> String {
    name.replace('-', "_")
}

/// The name a module file is known by: `kernel/net/ne2k-pci.ko.xz` → `ne2k_pci`.
fn module_name(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    let stem = file.split(".ko").next().unwrap_or(file);
    normalize(stem)
}

/// A parsed `modules.dep`: module name → (relative path, direct dependencies' paths).
#[derive(Debug, Default)]
pub struct ModulesDep {
    pub modules: BTreeMap<String, (String, Vec<String>)>,
    pub builtin: BTreeSet<String>,
}

impl ModulesDep {
    pub fn load(dir: &Path) -> Result<Self, Error> {
        let dep_path = dir.join("modules.dep");
        let text = std::fs::read_to_string(&dep_path).map_err(|source| Error::Read {
            path: dep_path.clone(),
            source,
        })?;
        let mut dep = Self::parse(&text, &dep_path)?;
        // modules.builtin is optional: a kernel with no built-in modules may lack it.
        if let Ok(text) = std::fs::read_to_string(dir.join("modules.builtin")) {
            dep.builtin = text
                .lines()
                .filter(|l| !l.is_empty())
                .map(module_name)
                .collect();
        }
        Ok(dep)
    }

    pub fn parse(text: &str, path: &Path) -> Result<Self, Error> {
        let mut modules = BTreeMap::new();
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let (module, deps) = line.split_once(':').ok_or_else(|| Error::DepSyntax {
                path: path.into(),
                line: i + 1,
                text: line.into(),
            })?;
            let module = module.trim();
            if module.is_empty() || !module.contains(".ko") {
                return Err(Error::DepSyntax {
                    path: path.into(),
                    line: i + 1,
                    text: line.into(),
                });
            }
            let deps = deps.split_whitespace().map(String::from).collect();
            modules.insert(module_name(module), (module.to_string(), deps));
        }
        Ok(ModulesDep {
            modules,
            builtin: BTreeSet::new(),
        })
    }

    /// The closure of `wanted`: every module file needed, dependencies included, sorted by path.
    /// Built-in modules are satisfied without a file.
    pub fn closure(
        &self,
        wanted: &[String],
        dep_path: &Path,
        release: &str,
    ) -> Result<Closure, Error> {
        let mut files = BTreeSet::new();
        let mut builtin = BTreeSet::new();
        let by_path: BTreeMap<&str, &Vec<String>> = self
            .modules
            .values()
            .map(|(p, d)| (p.as_str(), d))
            .collect();
        for name in wanted {
            let key = normalize(name);
            match self.modules.get(&key) {
                Some((path, _)) => {
                    let mut stack = vec![path.clone()];
                    while let Some(p) = stack.pop() {
                        if files.insert(p.clone()) {
                            if let Some(deps) = by_path.get(p.as_str()) {
                                stack.extend(deps.iter().cloned());
                            }
                        }
                    }
                }
                None if self.builtin.contains(&key) => {
                    builtin.insert(key);
                }
                None => {
                    return Err(Error::UnknownModule {
                        name: name.clone(),
                        dep: dep_path.into(),
                        release: release.into(),
                    })
                }
            }
        }
        let dep_lines = files
            .iter()
            .map(|p| {
                let deps = by_path
                    .get(p.as_str())
                    .map(|d| d.iter().map(|d| uncompressed(d)).collect::<Vec<_>>());
                format!(
                    "{}: {}",
                    uncompressed(p),
                    deps.unwrap_or_default().join(" ")
                )
                .trim_end()
                .to_string()
            })
            .collect::<Vec<_>>()
            .join("\n");
        Ok(Closure {
            files: files.into_iter().collect(),
            builtin: builtin.into_iter().collect(),
            modules_dep: dep_lines + "\n",
        })
    }
}

/// A module path as it is stored in the image: compressed modules are unpacked at build time, so
/// the agent's plain `finit_module` works whatever the kernel's MODULE_DECOMPRESS setting.
pub fn uncompressed(path: &str) -> String {
    for ext in [".xz", ".zst", ".gz"] {
        if let Some(stripped) = path.strip_suffix(ext) {
            return stripped.to_string();
        }
    }
    path.to_string()
}

/// The module files to ship and the `modules.dep` that describes exactly them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Closure {
    /// Paths relative to the modules dir, as in `modules.dep` (possibly compressed).
    pub files: Vec<String>,
    /// Requested modules that are built into the kernel.
    pub builtin: Vec<String>,
    pub modules_dep: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEP: &str = "kernel/drivers/net/ethernet/realtek/8139too.ko: kernel/drivers/net/mii.ko\n\
kernel/drivers/net/mii.ko:\n\
kernel/drivers/net/ethernet/8390/ne2k-pci.ko.xz: kernel/drivers/net/ethernet/8390/8390.ko.xz\n\
kernel/drivers/net/ethernet/8390/8390.ko.xz:\n\
kernel/net/netfilter/nf_tables.ko: kernel/net/netfilter/nfnetlink.ko kernel/lib/libcrc32c.ko\n\
kernel/net/netfilter/nfnetlink.ko:\n\
kernel/lib/libcrc32c.ko:\n";

    fn dep() -> ModulesDep {
        let mut d = ModulesDep::parse(DEP, Path::new("modules.dep")).unwrap();
        d.builtin.insert("af_packet".into());
        d
    }

    #[test]
    fn closure_follows_dependencies() {
        let c = dep()
            .closure(&["nf_tables".into(), "8139too".into()], Path::new("m"), "r")
            .unwrap();
        assert_eq!(
            c.files,
            [
                "kernel/drivers/net/ethernet/realtek/8139too.ko",
                "kernel/drivers/net/mii.ko",
                "kernel/lib/libcrc32c.ko",
                "kernel/net/netfilter/nf_tables.ko",
                "kernel/net/netfilter/nfnetlink.ko",
            ]
        );
        assert!(c.modules_dep.contains("kernel/net/netfilter/nf_tables.ko: kernel/net/netfilter/nfnetlink.ko kernel/lib/libcrc32c.ko\n"));
        assert!(c.modules_dep.contains("kernel/drivers/net/mii.ko:\n"));
    }

    #[test]
    fn dashes_and_compression_are_folded() {
        let c = dep()
            .closure(&["ne2k-pci".into()], Path::new("m"), "r")
            .unwrap();
        assert_eq!(c.files.len(), 2);
        assert!(
            c.modules_dep
                .starts_with("kernel/drivers/net/ethernet/8390/8390.ko:\n"),
            "{}",
            c.modules_dep
        );
        assert!(c
            .modules_dep
            .contains("ne2k-pci.ko: kernel/drivers/net/ethernet/8390/8390.ko\n"));
    }

    #[test]
    fn builtin_and_unknown_modules() {
        let c = dep()
            .closure(&["af-packet".into()], Path::new("m"), "r")
            .unwrap();
        assert!(c.files.is_empty());
        assert_eq!(c.builtin, ["af_packet"]);
        let err = dep()
            .closure(
                &["nosuch".into()],
                Path::new("/lib/modules/r/modules.dep"),
                "r",
            )
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "module \"nosuch\" is neither in /lib/modules/r/modules.dep nor built into kernel r"
        );
    }

    #[test]
    fn bad_dep_line_names_line() {
        let err = ModulesDep::parse("a.ko:\nbogus line\n", Path::new("x/modules.dep")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "x/modules.dep:2: malformed modules.dep line \"bogus line\""
        );
    }

    #[test]
    fn newest_kernel_by_version() {
        let dir = tempfile::tempdir().unwrap();
        for v in ["6.1.0-9-amd64", "6.1.0-10-amd64", "5.10.0-30-amd64"] {
            std::fs::write(dir.path().join(format!("vmlinuz-{v}")), b"").unwrap();
        }
        std::fs::write(dir.path().join("config-9.9"), b"").unwrap();
        assert!(newest_in(dir.path())
            .unwrap()
            .ends_with("vmlinuz-6.1.0-10-amd64"));
        let empty = tempfile::tempdir().unwrap();
        assert!(matches!(
            newest_in(empty.path()),
            Err(Error::NoKernel { .. })
        ));
    }

    #[test]
    fn release_from_bzimage_header() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("vmlinuz");
        let mut img = vec![0u8; 0x1000];
        img[0x202..0x206].copy_from_slice(b"HdrS");
        img[0x20e..0x210].copy_from_slice(&0x300u16.to_le_bytes());
        let s = b"6.1.0-56-amd64 (debian-kernel@lists.debian.org) #1 SMP\0";
        img[0x500..0x500 + s.len()].copy_from_slice(s);
        std::fs::write(&p, &img).unwrap();
        assert_eq!(release_of(&p).unwrap(), "6.1.0-56-amd64");
        std::fs::write(&p, b"not a kernel").unwrap();
        assert!(matches!(release_of(&p), Err(Error::NotBzImage { .. })));
    }

    #[test]
    fn real_distro_kernel_if_present() {
        // The Makefile installs linux-image-amd64; on such a host check the real header and tree.
        let Ok(image) = newest_in(Path::new("/boot")) else {
            return;
        };
        let k = resolve(
            Some(&image),
            None,
            Path::new("/boot"),
            Path::new("/lib/modules"),
        )
        .unwrap();
        assert!(
            image.to_string_lossy().ends_with(&k.release),
            "{} vs {}",
            image.display(),
            k.release
        );
    }
}
