//! Running `make` for the kernel: every run appends to one build log; the compile shows files
//! compiled against an estimate while it runs; a failure shows the first error in the log.

use std::io::{IsTerminal, Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::cmd::Cmd;

use super::Error;

/// `sh -c 'exec "$@" >>"$DROVE_KERNEL_LOG" 2>&1' sh CMD…`: the command with its output appended
/// to `log`, still one copy-pasteable line (`-v`) and still run through [`Cmd`].
pub fn logged(log: &Path, program: &str, args: &[String]) -> Cmd {
    Cmd::new("sh")
        .env("DROVE_KERNEL_LOG", log)
        .arg("-c")
        .arg("exec \"$@\" >>\"$DROVE_KERNEL_LOG\" 2>&1")
        .arg("sh")
        .arg(program)
        .args(args)
}

/// Is this make output line one compiled file (`  CC      kernel/fork.o`, `  AS      …`)?
pub fn is_compile_line(line: &str) -> bool {
    let mut words = line.split_whitespace();
    matches!(words.next(), Some("CC" | "AS"))
        && words
            .last()
            .is_some_and(|w| w.ends_with(".o") || w.ends_with(".s"))
}

/// Runs `cmd` (whose output goes to `log`, see [`logged`]) while counting compiled files in the
/// log; shows `compiled N/~TOTAL` as an updating line on a terminal, or a line every 30 s
/// otherwise; nothing when `quiet`. Returns the number of files compiled.
pub fn run_with_progress(
    cmd: &Cmd,
    log: &Path,
    estimate: Option<usize>,
    quiet: bool,
) -> Result<usize, Error> {
    let done = AtomicBool::new(false);
    let started = Instant::now();
    let tty = std::io::stderr().is_terminal();
    let (result, count) = std::thread::scope(|s| {
        let worker = s.spawn(|| {
            let r = cmd.run();
            done.store(true, Ordering::SeqCst);
            r
        });
        let mut counter = LogCounter::open(log);
        let mut last_print = Instant::now();
        while !done.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(250));
            let n = counter.poll();
            if quiet {
                continue;
            }
            if tty {
                eprint!(
                    "\r\x1b[Kdrove: compiling bzImage: {}",
                    progress_text(n, estimate, started.elapsed())
                );
                let _ = std::io::stderr().flush();
            } else if last_print.elapsed() >= Duration::from_secs(30) {
                eprintln!(
                    "drove: compiling bzImage: {}",
                    progress_text(n, estimate, started.elapsed())
                );
                last_print = Instant::now();
            }
        }
        if tty && !quiet {
            eprint!("\r\x1b[K");
        }
        let result = worker
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        (result, counter.poll())
    });
    match result {
        Ok(()) => Ok(count),
        Err(source) => Err(compile_failure(log, source)),
    }
}

fn compile_failure(log: &Path, source: crate::cmd::Error) -> Error {
    let text = std::fs::read(log)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    Error::Compile {
        log: log.into(),
        first_error: first_error(&text).unwrap_or_else(|| source.to_string()),
    }
}

/// `812/~1450 files (56%), 2m03s`; without an estimate just the count.
pub fn progress_text(n: usize, estimate: Option<usize>, elapsed: Duration) -> String {
    let secs = elapsed.as_secs();
    let time = format!("{}m{:02}s", secs / 60, secs % 60);
    match estimate {
        Some(total) if total > 0 => {
            let pct = (n * 100 / total).min(99);
            format!("{n}/~{total} files ({pct}%), {time}")
        }
        _ => format!("{n} files, {time}"),
    }
}

/// Counts compile lines appended to a log since the last poll.
struct LogCounter {
    file: Option<std::fs::File>,
    path: std::path::PathBuf,
    offset: u64,
    partial: String,
    count: usize,
}

impl LogCounter {
    fn open(path: &Path) -> Self {
        let mut file = std::fs::File::open(path).ok();
        let offset = file
            .as_mut()
            .and_then(|f| f.seek(SeekFrom::End(0)).ok())
            .unwrap_or(0);
        LogCounter {
            file,
            path: path.into(),
            offset,
            partial: String::new(),
            count: 0,
        }
    }

    fn poll(&mut self) -> usize {
        if self.file.is_none() {
            self.file = std::fs::File::open(&self.path).ok();
        }
        let Some(file) = self.file.as_mut() else {
            return self.count;
        };
        let mut buf = Vec::new();
        if file.seek(SeekFrom::Start(self.offset)).is_err() || file.read_to_end(&mut buf).is_err() {
            return self.count;
        }
        self.offset += buf.len() as u64;
        self.partial.push_str(&String::from_utf8_lossy(&buf));
        let complete = self.partial.rfind('\n').map_or(0, |i| i + 1);
        self.count += self.partial[..complete]
            .lines()
            .filter(|l| is_compile_line(l))
            .count();
        self.partial.drain(..complete);
        self.count
    }
}

/// The first error in a build log with a little context: the compiler's `In file included from` /
/// `In function` lines before it and the caret lines after it. Falls back to the first
/// `make: *** …` line. `None` when the log has neither.
pub fn first_error(log: &str) -> Option<String> {
    let lines: Vec<&str> = log.lines().collect();
    let is_error = |l: &str| {
        l.contains("error:")
            || l.contains("undefined reference to")
            || l.contains("Error: ")
            || l.contains("No rule to make target")
    };
    let idx = lines
        .iter()
        .position(|l| is_error(l))
        .or_else(|| lines.iter().position(|l| l.contains("*** ")))?;
    let mut start = idx;
    while start > 0 && start + 4 > idx {
        let prev = lines[start - 1];
        let context = prev.contains("In file included from")
            || prev.trim_start().starts_with("from ")
            || prev.contains(": In function")
            || prev.contains(": in function")
            || prev.contains(": At top level");
        if !context {
            break;
        }
        start -= 1;
    }
    let mut end = idx + 1;
    // Caret/source lines and notes that belong to the error, until make or the next file speaks.
    while end < lines.len() && end < idx + 8 {
        let l = lines[end];
        let belongs = l.starts_with(' ')
            && !l.trim_start().starts_with("CC ")
            && !l.trim_start().starts_with("AS ")
            || l.contains("note:")
            || l.starts_with('|');
        if !belongs {
            break;
        }
        end += 1;
    }
    Some(lines[start..end].join("\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOG: &str = "  CC      init/main.o
  CC      kernel/fork.o
In file included from kernel/fork.c:12:
kernel/fork.c: In function 'copy_process':
kernel/fork.c:2100:9: error: 'foo' undeclared (first use in this function)
 2100 |         foo = 1;
      |         ^~~
  CC      kernel/exit.o
kernel/exit.c:10:1: error: second error
make[2]: *** [scripts/Makefile.build:250: kernel/fork.o] Error 1
make[1]: *** [Makefile:1992: .] Error 2
";

    #[test]
    fn first_compiler_error_with_its_context() {
        let e = first_error(LOG).unwrap();
        assert_eq!(
            e,
            "In file included from kernel/fork.c:12:\nkernel/fork.c: In function 'copy_process':\n\
             kernel/fork.c:2100:9: error: 'foo' undeclared (first use in this function)\n 2100 |         foo = 1;\n      |         ^~~"
        );
        assert!(!e.contains("second error"));
    }

    #[test]
    fn make_failure_without_compiler_error() {
        let log = "  CC      a.o\nmake[1]: *** [Makefile:10: a] Killed\nmake: *** [Makefile:2: all] Error 2\n";
        assert_eq!(
            first_error(log).unwrap(),
            "make[1]: *** [Makefile:10: a] Killed"
        );
        assert_eq!(first_error("  CC      a.o\n"), None);
        let ld = "  LD      vmlinux.o\nld: kernel/fork.o: in function `x':\nfork.c:(.text+0x1): undefined reference to `y'\n";
        assert_eq!(
            first_error(ld).unwrap(),
            "ld: kernel/fork.o: in function `x':\nfork.c:(.text+0x1): undefined reference to `y'"
        );
    }

    #[test]
    fn counts_compiled_files() {
        assert!(is_compile_line("  CC      kernel/fork.o"));
        assert!(is_compile_line("  AS      arch/x86/entry/entry_64.o"));
        assert!(!is_compile_line("  LD      vmlinux.o"));
        assert!(!is_compile_line("  CC      scripts/mod/empty.c"));
        assert_eq!(LOG.lines().filter(|l| is_compile_line(l)).count(), 3);
        assert_eq!(
            progress_text(50, Some(200), Duration::from_secs(75)),
            "50/~200 files (25%), 1m15s"
        );
        assert_eq!(
            progress_text(250, Some(200), Duration::from_secs(5)),
            "250/~200 files (99%), 0m05s"
        );
        assert_eq!(
            progress_text(3, None, Duration::from_secs(0)),
            "3 files, 0m00s"
        );
    }

    #[test]
    fn logged_command_appends_to_the_log_and_counts() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("build.log");
        std::fs::write(&log, "  CC      before/start.o\n").unwrap();
        let script = "for i in 1 2 3; do echo \"  CC      f$i.o\"; done; echo warn >&2";
        let n = run_with_progress(
            &logged(&log, "sh", &["-c".into(), script.into()]),
            &log,
            Some(3),
            true,
        )
        .unwrap();
        assert_eq!(n, 3, "only lines written by this run count");
        let text = std::fs::read_to_string(&log).unwrap();
        assert!(
            text.starts_with("  CC      before/start.o\n")
                && text.contains("f3.o")
                && text.contains("warn")
        );
        let failing = "echo '  CC      x.o'; echo 'x.c:1:1: error: boom'; exit 2";
        let err = run_with_progress(
            &logged(&log, "sh", &["-c".into(), failing.into()]),
            &log,
            None,
            true,
        )
        .unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("x.c:1:1: error: boom") && msg.contains(&log.display().to_string()),
            "{msg}"
        );
    }
}
