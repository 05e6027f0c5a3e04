//! The root-only system calls PID 1 makes, behind one small trait so the boot and shutdown
//! logic can be tested with [`fake::FakeSys`] (no root, no VM).

use crate::children::{Children, Exit};
use crate::power::PowerAction;
use nix::mount::{MntFlags, MsFlags};
use nix::sys::signal::Signal;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// What PID 1 asks of the kernel. Every method maps to one syscall (or one external command).
pub trait Sys: Send + Sync {
    fn mount(
        &self,
        source: &str,
        target: &Path,
        fstype: &str,
        flags: MsFlags,
        data: Option<&str>,
    ) -> io::Result<()>;
    /// Detaches the mount at `target` (lazy unmount: it goes once the last user is gone).
    fn umount(&self, target: &Path) -> io::Result<()>;
    /// Current mount points, in mount order; empty when `/proc` is not mounted.
    fn mount_points(&self) -> Vec<PathBuf>;
    fn create_dir_all(&self, path: &Path) -> io::Result<()>;
    /// `finit_module` of the `.ko` file at `path` (no parameters).
    fn load_module(&self, path: &Path) -> io::Result<()>;
    /// `reboot(RB_ENABLE_CAD / RB_DISABLE_CAD)`: disabled, Ctrl-Alt-Del sends SIGINT to PID 1.
    fn set_ctrl_alt_del(&self, enabled: bool) -> io::Result<()>;
    /// `reboot(2)`: returns only when it failed.
    fn reboot(&self, action: PowerAction) -> io::Error;
    fn set_hostname(&self, name: &str) -> io::Result<()>;
    /// `kill(-1, sig)`: every process but PID 1 (kernel threads ignore it).
    fn kill_all(&self, sig: Signal) -> io::Result<()>;
    /// User-space processes other than this one, as (pid, command name); zombies included.
    /// (`kill(-1, 0)` cannot tell: kernel threads always count.)
    fn processes(&self) -> Vec<(i32, String)>;
    fn sync(&self);
    /// `klogctl(SYSLOG_ACTION_CONSOLE_LEVEL)`: kernel messages above `level` stay off the console.
    fn set_console_loglevel(&self, level: i32) -> io::Result<()>;
    /// Runs an external command to completion: its status and merged output.
    fn run(&self, program: &str, args: &[&str]) -> Result<(Exit, String), crate::children::Error>;
    fn sleep(&self, d: Duration);
}

/// The real thing.
pub struct RealSys {
    pub children: Arc<Children>,
}

impl RealSys {
    pub fn new(children: Arc<Children>) -> Self {
        RealSys { children }
    }
}

const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

impl Sys for RealSys {
    fn mount(
        &self,
        source: &str,
        target: &Path,
        fstype: &str,
        flags: MsFlags,
        data: Option<&str>,
    ) -> io::Result<()> {
        nix::mount::mount(Some(source), target, Some(fstype), flags, data).map_err(io::Error::from)
    }

    fn umount(&self, target: &Path) -> io::Result<()> {
        nix::mount::umount2(target, MntFlags::MNT_DETACH).map_err(io::Error::from)
    }

    fn mount_points(&self) -> Vec<PathBuf> {
        std::fs::read_to_string("/proc/self/mounts")
            .map(|t| parse_mounts(&t))
            .unwrap_or_default()
    }

    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        std::fs::create_dir_all(path)
    }

    fn load_module(&self, path: &Path) -> io::Result<()> {
        let file = std::fs::File::open(path)?;
        nix::kmod::finit_module(&file, c"", nix::kmod::ModuleInitFlags::empty())
            .map_err(io::Error::from)
    }

    fn set_ctrl_alt_del(&self, enabled: bool) -> io::Result<()> {
        nix::sys::reboot::set_cad_enabled(enabled).map_err(io::Error::from)
    }

    fn reboot(&self, action: PowerAction) -> io::Error {
        match nix::sys::reboot::reboot(action.mode()) {
            Ok(never) => match never {},
            Err(e) => io::Error::from(e),
        }
    }

    fn set_hostname(&self, name: &str) -> io::Result<()> {
        nix::unistd::sethostname(name).map_err(io::Error::from)
    }

    fn kill_all(&self, sig: Signal) -> io::Result<()> {
        match nix::sys::signal::kill(nix::unistd::Pid::from_raw(-1), sig) {
            Ok(()) | Err(nix::errno::Errno::ESRCH) => Ok(()),
            Err(e) => Err(io::Error::from(e)),
        }
    }

    fn processes(&self) -> Vec<(i32, String)> {
        let me = std::process::id() as i32;
        let Ok(dir) = std::fs::read_dir("/proc") else {
            return Vec::new();
        };
        let mut found: Vec<(i32, String)> = dir
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
            .filter(|pid| *pid != me)
            .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/stat")).ok())
            .filter_map(|text| parse_stat(&text))
            .filter(|p| !p.kernel_thread)
            .map(|p| (p.pid, p.comm))
            .collect();
        found.sort();
        found
    }

    fn sync(&self) {
        nix::unistd::sync();
    }

    fn set_console_loglevel(&self, level: i32) -> io::Result<()> {
        const SYSLOG_ACTION_CONSOLE_LEVEL: libc::c_int = 8;
        // SAFETY: klogctl with CONSOLE_LEVEL reads no buffer (null, length = the level); it only
        // changes the kernel's console log level.
        let rc = unsafe { libc::klogctl(SYSLOG_ACTION_CONSOLE_LEVEL, std::ptr::null_mut(), level) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    fn run(&self, program: &str, args: &[&str]) -> Result<(Exit, String), crate::children::Error> {
        self.children.run(program, args, COMMAND_TIMEOUT)
    }

    fn sleep(&self, d: Duration) {
        std::thread::sleep(d);
    }
}

/// What `/proc/<pid>/stat` says about a process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcStat {
    pub pid: i32,
    pub comm: String,
    pub ppid: i32,
    pub kernel_thread: bool,
}

const PF_KTHREAD: u64 = 0x0020_0000;

/// Parses `/proc/<pid>/stat` (`pid (comm) state ppid pgrp session tty tpgid flags ...`); the
/// command name may itself contain spaces and parentheses, so fields are counted from the last `)`.
pub fn parse_stat(text: &str) -> Option<ProcStat> {
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let pid = text.get(..open)?.trim().parse().ok()?;
    let comm = text.get(open + 1..close)?.to_string();
    let rest: Vec<&str> = text.get(close + 1..)?.split_whitespace().collect();
    let ppid: i32 = rest.get(1)?.parse().ok()?;
    let flags: u64 = rest.get(6)?.parse().ok()?;
    Some(ProcStat {
        pid,
        comm,
        ppid,
        kernel_thread: flags & PF_KTHREAD != 0 || pid == 2 || ppid == 2,
    })
}

/// Mount points from `/proc/self/mounts` text (second field, octal escapes decoded).
pub fn parse_mounts(text: &str) -> Vec<PathBuf> {
    text.lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .map(|p| PathBuf::from(unescape_octal(p)))
        .collect()
}

fn unescape_octal(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && bytes[i + 1..i + 4]
                .iter()
                .all(|b| (b'0'..=b'7').contains(b))
        {
            let v = (bytes[i + 1] - b'0') as u32 * 64
                + (bytes[i + 2] - b'0') as u32 * 8
                + (bytes[i + 3] - b'0') as u32;
            out.push(v as u8);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A recording test double.
#[cfg(test)]
pub mod fake {
    use super::*;
    use std::sync::Mutex;

    /// Records every call as a readable string; the mount table and failures are scripted.
    #[derive(Default)]
    pub struct FakeSys {
        pub calls: Mutex<Vec<String>>,
        pub mounted: Mutex<Vec<PathBuf>>,
        /// Paths whose `load_module` fails with this errno.
        pub module_errors: Mutex<Vec<(PathBuf, i32)>>,
        /// How many `kill_all` probes still find processes.
        pub processes_left: Mutex<u32>,
        /// Exit code and output of every `run`.
        pub run_result: Mutex<Option<(Exit, String)>>,
    }

    impl FakeSys {
        pub fn calls(&self) -> Vec<String> {
            self.calls.lock().map(|c| c.clone()).unwrap_or_default()
        }
        fn record(&self, s: String) {
            if let Ok(mut c) = self.calls.lock() {
                c.push(s);
            }
        }
    }

    impl Sys for FakeSys {
        fn mount(
            &self,
            source: &str,
            target: &Path,
            fstype: &str,
            _flags: MsFlags,
            data: Option<&str>,
        ) -> io::Result<()> {
            self.record(format!(
                "mount {source} {} {fstype} {}",
                target.display(),
                data.unwrap_or("-")
            ));
            let mut m = self
                .mounted
                .lock()
                .map_err(|_| io::Error::other("poisoned"))?;
            if m.iter().any(|p| p == target) {
                return Err(io::Error::from_raw_os_error(libc::EBUSY));
            }
            m.push(target.to_path_buf());
            Ok(())
        }
        fn umount(&self, target: &Path) -> io::Result<()> {
            self.record(format!("umount {}", target.display()));
            Ok(())
        }
        fn mount_points(&self) -> Vec<PathBuf> {
            self.mounted.lock().map(|m| m.clone()).unwrap_or_default()
        }
        fn create_dir_all(&self, path: &Path) -> io::Result<()> {
            self.record(format!("mkdir {}", path.display()));
            Ok(())
        }
        fn load_module(&self, path: &Path) -> io::Result<()> {
            self.record(format!("insmod {}", path.display()));
            let errs = self
                .module_errors
                .lock()
                .map(|e| e.clone())
                .unwrap_or_default();
            match errs.iter().find(|(p, _)| p == path) {
                Some((_, errno)) => Err(io::Error::from_raw_os_error(*errno)),
                None => Ok(()),
            }
        }
        fn set_ctrl_alt_del(&self, enabled: bool) -> io::Result<()> {
            self.record(format!("cad {enabled}"));
            Ok(())
        }
        fn reboot(&self, action: PowerAction) -> io::Error {
            self.record(format!("reboot {action:?}"));
            io::Error::other("fake reboot")
        }
        fn set_hostname(&self, name: &str) -> io::Result<()> {
            self.record(format!("hostname {name}"));
            Ok(())
        }
        fn kill_all(&self, sig: Signal) -> io::Result<()> {
            self.record(format!("kill -1 {sig}"));
            Ok(())
        }
        fn processes(&self) -> Vec<(i32, String)> {
            let Ok(mut left) = self.processes_left.lock() else {
                return Vec::new();
            };
            if *left == 0 {
                return Vec::new();
            }
            *left -= 1;
            vec![(42, "udhcpc".into())]
        }
        fn sync(&self) {
            self.record("sync".into());
        }
        fn set_console_loglevel(&self, level: i32) -> io::Result<()> {
            self.record(format!("loglevel {level}"));
            Ok(())
        }
        fn run(
            &self,
            program: &str,
            args: &[&str],
        ) -> Result<(Exit, String), crate::children::Error> {
            self.record(crate::children::shell_line(program, args));
            Ok(self
                .run_result
                .lock()
                .ok()
                .and_then(|r| r.clone())
                .unwrap_or((Exit::Code(0), String::new())))
        }
        fn sleep(&self, d: Duration) {
            self.record(format!("sleep {}ms", d.as_millis()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_parse_and_spot_kernel_threads() {
        let user = "412 (udhcpc) S 1 412 412 0 -1 4194560 160 0 0 0 0 0 0 0 20 0 1 0 290 2404352 1 18446744073709551615";
        assert_eq!(
            parse_stat(user),
            Some(ProcStat {
                pid: 412,
                comm: "udhcpc".into(),
                ppid: 1,
                kernel_thread: false
            })
        );
        let kthread = "15 (ksoftirqd/1) S 2 0 0 0 -1 69238848 0 0 0 0 0 0 0 0 20 0 1 0 2 0 0";
        assert!(parse_stat(kthread).unwrap().kernel_thread);
        let odd = "77 (a) (b) R 1 77 77 0 -1 4194304 0";
        assert_eq!(parse_stat(odd).unwrap().comm, "a) (b");
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn mounts_are_parsed_with_escapes() {
        let text = "proc /proc proc rw 0 0\ntmpfs /mnt/a\\040b tmpfs rw 0 0\n";
        assert_eq!(
            parse_mounts(text),
            vec![PathBuf::from("/proc"), PathBuf::from("/mnt/a b")]
        );
    }
}
