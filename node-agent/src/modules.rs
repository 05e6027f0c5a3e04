//! Kernel modules: parse `/lib/modules/<release>/modules.dep`, order the wanted modules after
//! their dependencies, and load them with `finit_module`.

use crate::sys::Sys;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}:{line}: expected `path.ko: dependency.ko ...`")]
    Syntax { path: PathBuf, line: usize },
    #[error("module {name}: cannot load {path}")]
    Load {
        name: String,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("module {name}: not in {dep_file}")]
    Unknown { name: String, dep_file: PathBuf },
    #[error("module {name}: dependency cycle in modules.dep")]
    Cycle { name: String },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Path relative to the modules directory, as written in modules.dep.
    pub path: PathBuf,
    pub deps: Vec<String>,
}

/// A parsed modules.dep, keyed by normalised module name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ModulesDep {
    pub entries: BTreeMap<String, Entry>,
    paths: BTreeMap<String, PathBuf>,
}

/// The module name for a `.ko` path: file name without `.ko[.xz|.gz|.zst]`, `-` as `_`
/// (the kernel treats both the same).
pub fn module_name(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    let stem = [".ko.xz", ".ko.gz", ".ko.zst", ".ko"]
        .iter()
        .find_map(|ext| file.strip_suffix(ext))
        .unwrap_or(file);
    normalise(stem)
}

pub fn normalise(name: &str) -> String {
    name.trim().replace('-', "_")
}

impl ModulesDep {
    pub fn parse(text: &str, file: &Path) -> Result<Self, Error> {
        let mut dep = ModulesDep::default();
        for (idx, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let Some((path, deps)) = line.split_once(':') else {
                return Err(Error::Syntax {
                    path: file.into(),
                    line: idx + 1,
                });
            };
            let path = path.trim();
            if path.is_empty() {
                return Err(Error::Syntax {
                    path: file.into(),
                    line: idx + 1,
                });
            }
            let name = module_name(path);
            let deps: Vec<&str> = deps.split_whitespace().collect();
            for d in &deps {
                dep.paths
                    .entry(module_name(d))
                    .or_insert_with(|| PathBuf::from(d));
            }
            dep.paths.insert(name.clone(), PathBuf::from(path));
            dep.entries.insert(
                name,
                Entry {
                    path: PathBuf::from(path),
                    deps: deps.iter().map(|d| module_name(d)).collect(),
                },
            );
        }
        Ok(dep)
    }

    pub fn load(file: &Path) -> Result<Self, Error> {
        let text = std::fs::read_to_string(file).map_err(|source| Error::Read {
            path: file.into(),
            source,
        })?;
        Self::parse(&text, file)
    }

    /// The modules to load for `wanted`, dependencies first, each once, as (name, relative path);
    /// plus the names that could not be placed. `dep_file` names modules.dep in errors.
    pub fn load_order(
        &self,
        wanted: &[String],
        dep_file: &Path,
    ) -> (Vec<(String, PathBuf)>, Vec<Error>) {
        let mut order = Vec::new();
        let mut problems = Vec::new();
        let mut done = BTreeSet::new();
        for name in wanted {
            let name = normalise(name);
            if name.is_empty() {
                continue;
            }
            if !self.paths.contains_key(&name) {
                problems.push(Error::Unknown {
                    name,
                    dep_file: dep_file.into(),
                });
                continue;
            }
            let mut visiting = BTreeSet::new();
            self.visit(&name, &mut visiting, &mut done, &mut order, &mut problems);
        }
        (order, problems)
    }

    fn visit(
        &self,
        name: &str,
        visiting: &mut BTreeSet<String>,
        done: &mut BTreeSet<String>,
        order: &mut Vec<(String, PathBuf)>,
        problems: &mut Vec<Error>,
    ) {
        if done.contains(name) {
            return;
        }
        if !visiting.insert(name.to_string()) {
            problems.push(Error::Cycle {
                name: name.to_string(),
            });
            return;
        }
        if let Some(entry) = self.entries.get(name) {
            // modprobe loads the listed dependencies last-first; each one's own line comes first.
            for dep in entry.deps.iter().rev() {
                self.visit(dep, visiting, done, order, problems);
            }
        }
        visiting.remove(name);
        if done.insert(name.to_string()) {
            if let Some(path) = self.paths.get(name) {
                order.push((name.to_string(), path.clone()));
            }
        }
    }
}

/// What happened to each module.
#[derive(Debug, Default)]
pub struct Report {
    pub loaded: Vec<String>,
    pub already: Vec<String>,
    pub failed: Vec<Error>,
}

/// Loads `wanted` and their dependencies from `dir` (`/lib/modules/<release>`). Failures are
/// collected, never fatal: a missing driver must not stop the rest of the boot.
pub fn load_all(sys: &dyn Sys, dir: &Path, wanted: &[String]) -> Report {
    let mut report = Report::default();
    if wanted.is_empty() {
        return report;
    }
    let dep_file = dir.join("modules.dep");
    let dep = match ModulesDep::load(&dep_file) {
        Ok(dep) => dep,
        Err(e) => {
            report.failed.push(e);
            return report;
        }
    };
    let (order, problems) = dep.load_order(wanted, &dep_file);
    report.failed.extend(problems);
    for (name, rel) in order {
        let path = dir.join(&rel);
        match sys.load_module(&path) {
            Ok(()) => report.loaded.push(name),
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => report.already.push(name),
            Err(source) => report.failed.push(Error::Load { name, path, source }),
        }
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::fake::FakeSys;

    const DEP: &str = "\
kernel/drivers/net/virtio_net.ko: kernel/drivers/net/net_failover.ko kernel/net/core/failover.ko kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/net/net_failover.ko: kernel/net/core/failover.ko
kernel/net/core/failover.ko:
kernel/drivers/virtio/virtio.ko: kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio_ring.ko:
kernel/net/netfilter/nf_tables.ko: kernel/net/netfilter/nfnetlink.ko kernel/lib/libcrc32c.ko
kernel/net/netfilter/nfnetlink.ko:
kernel/lib/libcrc32c.ko:
kernel/crypto/crc32c_generic.ko:
kernel/net/ipv4/tcp_diag.ko: kernel/net/ipv4/inet_diag.ko
kernel/net/ipv4/inet_diag.ko:
";

    fn names(order: &[(String, PathBuf)]) -> Vec<&str> {
        order.iter().map(|(n, _)| n.as_str()).collect()
    }

    #[test]
    fn dependencies_come_first_and_once() {
        let dep = ModulesDep::parse(DEP, Path::new("modules.dep")).unwrap();
        let wanted: Vec<String> = [
            "virtio_net",
            "crc32c-generic",
            "nf_tables",
            "tcp_diag",
            "virtio",
        ]
        .map(String::from)
        .into();
        let (order, problems) = dep.load_order(&wanted, Path::new("modules.dep"));
        assert!(problems.is_empty());
        assert_eq!(
            names(&order),
            vec![
                "virtio_ring",
                "virtio",
                "failover",
                "net_failover",
                "virtio_net",
                "crc32c_generic",
                "libcrc32c",
                "nfnetlink",
                "nf_tables",
                "inet_diag",
                "tcp_diag"
            ]
        );
        assert_eq!(
            order[4].1,
            PathBuf::from("kernel/drivers/net/virtio_net.ko")
        );
    }

    #[test]
    fn unknown_modules_and_cycles_are_reported() {
        let text = "a.ko: b.ko\nb.ko: a.ko\n";
        let dep = ModulesDep::parse(text, Path::new("m")).unwrap();
        let (order, problems) = dep.load_order(&["a".into(), "e1000".into()], Path::new("m"));
        assert_eq!(names(&order), vec!["b", "a"]);
        let msgs: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
        assert_eq!(
            msgs,
            vec![
                "module a: dependency cycle in modules.dep",
                "module e1000: not in m"
            ]
        );
    }

    #[test]
    fn malformed_lines_name_file_and_line() {
        let err = ModulesDep::parse("a.ko:\nnonsense\n", Path::new("/lib/modules/x/modules.dep"))
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "/lib/modules/x/modules.dep:2: expected `path.ko: dependency.ko ...`"
        );
    }

    #[test]
    fn load_all_tolerates_eexist_and_goes_on_after_failures() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("modules.dep"), DEP).unwrap();
        let sys = FakeSys::default();
        sys.module_errors.lock().unwrap().push((
            dir.path().join("kernel/drivers/virtio/virtio_ring.ko"),
            libc::EEXIST,
        ));
        sys.module_errors
            .lock()
            .unwrap()
            .push((dir.path().join("kernel/lib/libcrc32c.ko"), libc::ENOEXEC));
        let report = load_all(
            &sys,
            dir.path(),
            &["virtio_net".into(), "nf_tables".into(), "bogus".into()],
        );
        assert_eq!(report.already, vec!["virtio_ring"]);
        assert_eq!(
            report.loaded,
            vec![
                "virtio",
                "failover",
                "net_failover",
                "virtio_net",
                "nfnetlink",
                "nf_tables"
            ]
        );
        let msgs: Vec<String> = report
            .failed
            .iter()
            .map(|e| crate::console::chain(e))
            .collect();
        assert_eq!(msgs.len(), 2);
        assert!(msgs[0].starts_with("module bogus: not in "), "{msgs:?}");
        assert!(
            msgs[1].starts_with("module libcrc32c: cannot load ")
                && msgs[1].contains("libcrc32c.ko: "),
            "{msgs:?}"
        );
    }

    #[test]
    fn missing_modules_dep_is_reported_with_its_path() {
        let sys = FakeSys::default();
        let report = load_all(&sys, Path::new("/nonexistent/6.1"), &["e1000".into()]);
        assert_eq!(
            report.failed[0].to_string(),
            "cannot read /nonexistent/6.1/modules.dep"
        );
    }
}
