//! The agent's CRIU self-check: once per daemon start, `criu check` (and a few `criu check
//! --feature` probes) says whether this kernel and image can checkpoint and restore jobs at all.
//! A node whose kernel lacks something CRIU needs (a distro kernel without soft-dirty, a compiled
//! kernel whose config lost an option) would otherwise only find out at its first migration.
//!
//! It runs in a thread of the cluster daemon, after the daemon listens (so the ready line never
//! waits for it), at a lower CPU priority, through the job engine's child registry (the engine's
//! reaper would otherwise steal CRIU's exit status). The result goes to the console as one line,
//! `drove: criu check ok` or `drove: criu check failed: <first error>`, and to `/api/node` as
//! `criu` ([`status_json`]).

use crate::children::{shell_line, Children, Exit};
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

/// `criu check` probes the kernel (kerndat) and forks helpers; minutes only when something hangs.
const TIMEOUT: Duration = Duration::from_secs(120);
/// Nice value of the check (and CRIU, which inherits it): boot work and jobs come first.
const NICE: i32 = 10;
/// Features recorded beside the basic check: what drove's migration path can use.
/// `mem_dirty_track`: soft-dirty tracking, needed by pre-copy (`criu pre-dump --track-mem`).
pub const FEATURES: &[&str] = &["mem_dirty_track"];

/// Where the check stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Not run yet, or running.
    Pending,
    /// `criu check` passed (maybe with warnings about optional features).
    Ok,
    /// `criu check` failed: this node cannot dump or restore jobs.
    Failed,
}

/// What `/api/node` shows as `criu`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    pub state: State,
    /// The first error CRIU reported (for `failed`).
    pub error: Option<String>,
    /// CRIU's warnings about missing optional features (for `ok`).
    pub warnings: Vec<String>,
    /// `criu check --feature NAME` → supported.
    pub features: BTreeMap<String, bool>,
    /// `criu --version`'s version, e.g. `3.17.1`.
    pub version: Option<String>,
    /// How long the check took (wall).
    pub seconds: Option<f64>,
}

impl Default for Report {
    fn default() -> Self {
        Report {
            state: State::Pending,
            error: None,
            warnings: Vec::new(),
            features: BTreeMap::new(),
            version: None,
            seconds: None,
        }
    }
}

/// The verdict read from one `criu check` run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Ok { warnings: Vec<String> },
    Failed { error: String },
}

/// Reads `criu check`'s exit and its merged output (CRIU prints errors as
/// `Error (criu/file.c:LINE): message` and success as `Looks good.`, or `Looks good but some
/// kernel features are missing ...` when optional features are absent).
pub fn parse_check(exit: Exit, output: &str) -> Verdict {
    let errors = error_lines(output);
    let looks_good = output
        .lines()
        .any(|l| l.trim_start().starts_with("Looks good"));
    if exit.success() && looks_good {
        let mut warnings: Vec<String> = output
            .lines()
            .filter_map(|l| {
                let l = l.trim();
                l.strip_prefix("Warn ")
                    .or_else(|| l.strip_prefix("Warning"))
                    .map(|_| strip_location(l))
            })
            .collect();
        warnings.extend(errors.iter().map(|e| e.to_string()));
        if output.contains("some kernel features are missing") {
            warnings.push("some kernel features are missing (criu check says dump or restore may fail, depending on the job)".into());
        }
        return Verdict::Ok { warnings };
    }
    let error = first_error(&errors).unwrap_or_else(|| {
        let last = output
            .lines()
            .map(str::trim)
            .rfind(|l| !l.is_empty())
            .unwrap_or("no output");
        format!("{exit}: {last}")
    });
    Verdict::Failed { error }
}

/// The `Error (...)` lines of CRIU's output, without the `Error (file:line): ` prefix but with
/// the location kept at the end.
fn error_lines(output: &str) -> Vec<String> {
    output
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("Error"))
        .map(strip_location)
        .collect()
}

/// `Error (criu/vdso.c:381): vdso: Unexpected` → `vdso: Unexpected (criu/vdso.c:381)`.
fn strip_location(line: &str) -> String {
    let line = line.trim();
    if let Some(open) = line.find(" (") {
        if let Some(close) = line[open..].find("): ") {
            let loc = &line[open + 2..open + close];
            let msg = &line[open + close + 3..];
            return format!("{} ({loc})", msg.trim());
        }
    }
    line.to_string()
}

/// The first error worth a person's attention: CRIU logs every helper it ran that exited
/// non-zero (`exited, status=1`) before the error that explains the failure, so those come
/// last in line.
fn first_error(errors: &[String]) -> Option<String> {
    errors
        .iter()
        .find(|e| !e.starts_with("exited, status="))
        .or_else(|| errors.first())
        .cloned()
}

/// `criu check --feature NAME`: supported when CRIU says `NAME is supported` and exits 0.
pub fn parse_feature(name: &str, exit: Exit, output: &str) -> bool {
    exit.success()
        && output
            .lines()
            .any(|l| l.trim() == format!("{name} is supported"))
}

/// `criu --version`'s first line `Version: 3.17.1` → `3.17.1`.
pub fn parse_version(output: &str) -> Option<String> {
    output
        .lines()
        .find_map(|l| l.trim().strip_prefix("Version:"))
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
}

/// The console line for a finished check.
pub fn console_line(verdict: &Verdict) -> String {
    match verdict {
        Verdict::Ok { warnings } if warnings.is_empty() => "drove: criu check ok".into(),
        Verdict::Ok { warnings } => format!(
            "drove: criu check ok ({} warning{}: {})",
            warnings.len(),
            if warnings.len() == 1 { "" } else { "s" },
            warnings[0]
        ),
        Verdict::Failed { error } => format!("drove: criu check failed: {error}"),
    }
}

fn report() -> MutexGuard<'static, Report> {
    static REPORT: OnceLock<Mutex<Report>> = OnceLock::new();
    REPORT
        .get_or_init(|| Mutex::new(Report::default()))
        .lock()
        .unwrap_or_else(|p| p.into_inner())
}

/// The check's state as `/api/node` shows it under `criu`.
pub fn status_json() -> serde_json::Value {
    serde_json::to_value(&*report()).unwrap_or_default()
}

/// Runs the check in a thread of its own, through the job engine's child registry.
pub fn start(engine: std::sync::Arc<crate::jobs::engine::Engine>) {
    let spawned = std::thread::Builder::new()
        .name("criu-check".into())
        .spawn(move || run(engine.children()));
    if let Err(e) = spawned {
        crate::error!("criu check: cannot start its thread: {e}");
    }
}

fn run(children: &Children) {
    // Per thread on Linux, and inherited by the processes this thread forks.
    // SAFETY: setpriority takes integers only; who = 0 is the calling thread.
    unsafe {
        libc::setpriority(libc::PRIO_PROCESS, 0, NICE);
    }
    let t0 = Instant::now();
    let criu = crate::jobs::criu::CRIU;
    let run = |args: &[&str]| -> Result<(Exit, String), String> {
        crate::debug!("criu check: run {}", shell_line(criu, args));
        children
            .run(criu, args, TIMEOUT)
            .map_err(|e| crate::console::chain(&e))
    };
    let version = run(&["--version"])
        .ok()
        .and_then(|(_, out)| parse_version(&out));
    let verdict = match run(&["check"]) {
        Ok((exit, out)) => parse_check(exit, &out),
        Err(e) => Verdict::Failed { error: e },
    };
    let mut features = BTreeMap::new();
    if matches!(verdict, Verdict::Ok { .. }) {
        for name in FEATURES {
            let ok = run(&["check", "--feature", name])
                .map(|(exit, out)| parse_feature(name, exit, &out))
                .unwrap_or(false);
            features.insert(name.to_string(), ok);
        }
    }
    crate::console::line(&console_line(&verdict));
    let mut r = report();
    r.version = version;
    r.features = features;
    r.seconds = Some((t0.elapsed().as_secs_f64() * 10.0).round() / 10.0);
    match verdict {
        Verdict::Ok { warnings } => {
            r.state = State::Ok;
            r.warnings = warnings;
            r.error = None;
        }
        Verdict::Failed { error } => {
            r.state = State::Failed;
            r.error = Some(error);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What Debian's criu 3.17.1 printed on a host whose vDSO it could not parse.
    const HOST_FAILURE: &str = "Error (criu/util.c:642): exited, status=1\n\
        Error (criu/util.c:642): exited, status=1\n\
        Error (criu/vdso.c:381): vdso: Unexpected rt vDSO area bounds\n\
        Error (criu/vdso.c:613): vdso: Failed to fill self vdso symtable\n\
        Error (criu/kerndat.c:1615): kerndat_vdso_fill_symtable failed when initializing kerndat.\n\
        Error (criu/crtools.c:260): Could not initialize kernel features detection.\n";

    #[test]
    fn a_clean_check_is_ok() {
        let v = parse_check(Exit::Code(0), "Looks good.\n");
        assert_eq!(v, Verdict::Ok { warnings: vec![] });
        assert_eq!(console_line(&v), "drove: criu check ok");
    }

    #[test]
    fn the_first_real_error_is_reported() {
        let v = parse_check(Exit::Code(1), HOST_FAILURE);
        assert_eq!(
            v,
            Verdict::Failed {
                error: "vdso: Unexpected rt vDSO area bounds (criu/vdso.c:381)".into()
            }
        );
        assert_eq!(
            console_line(&v),
            "drove: criu check failed: vdso: Unexpected rt vDSO area bounds (criu/vdso.c:381)"
        );
        // Only helper exits: the first of them is still better than nothing.
        let v = parse_check(Exit::Code(1), "Error (criu/util.c:642): exited, status=3\n");
        assert_eq!(
            v,
            Verdict::Failed {
                error: "exited, status=3 (criu/util.c:642)".into()
            }
        );
    }

    #[test]
    fn a_failure_without_error_lines_names_the_exit() {
        let v = parse_check(Exit::Code(127), "criu: not found\n\n");
        assert_eq!(
            v,
            Verdict::Failed {
                error: "exit status 127 (command not found): criu: not found".into()
            }
        );
        // "Looks good" with a failing exit is still a failure.
        assert!(matches!(
            parse_check(Exit::Code(1), "Looks good.\n"),
            Verdict::Failed { .. }
        ));
        assert!(matches!(
            parse_check(Exit::Code(0), ""),
            Verdict::Failed { .. }
        ));
    }

    #[test]
    fn missing_optional_features_are_warnings() {
        let out =
            "Warn  (criu/cr-check.c:1296): Dirty tracking is OFF. Memory snapshot will not work.\n\
            Looks good but some kernel features are missing\n\
            which, depending on your process tree, may cause\n\
            dump or restore failure.\n";
        let v = parse_check(Exit::Code(0), out);
        let Verdict::Ok { warnings } = &v else {
            panic!("{v:?}")
        };
        assert_eq!(
            warnings[0],
            "Dirty tracking is OFF. Memory snapshot will not work. (criu/cr-check.c:1296)"
        );
        assert_eq!(warnings.len(), 2, "{warnings:?}");
        assert!(console_line(&v).starts_with("drove: criu check ok (2 warnings: Dirty tracking"));
    }

    #[test]
    fn features_and_version() {
        assert!(parse_feature(
            "mem_dirty_track",
            Exit::Code(0),
            "mem_dirty_track is supported\n"
        ));
        assert!(!parse_feature(
            "mem_dirty_track",
            Exit::Code(1),
            "Warn  (criu/cr-check.c:1545): Dirty tracking is OFF.\n"
        ));
        assert!(!parse_feature(
            "uffd",
            Exit::Code(0),
            "uffd-noncoop is supported\n"
        ));
        assert_eq!(
            parse_version("Version: 3.17.1\n").as_deref(),
            Some("3.17.1")
        );
        assert_eq!(parse_version("criu: oops\n"), None);
    }

    #[test]
    fn the_report_starts_pending() {
        let v = serde_json::to_value(Report::default()).unwrap();
        assert_eq!(v["state"], "pending");
        assert_eq!(v["error"], serde_json::Value::Null);
    }
}
