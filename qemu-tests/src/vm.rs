//! One QEMU machine: [`VmBuilder`] says what to boot and with what, [`Vm`] is the running process
//! with its serial console on a pipe.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::console::{Console, LinePattern};
use crate::process::{command_line, describe, kill_group, spawn_tied};
use crate::{accel, Accel, Error, Nic, EXIT_TIMEOUT, POWER_DOWN, READY};

/// Console lines shown when a VM fails.
const TAIL_LINES: usize = 60;

/// Console lines that end a wait at once instead of at its deadline.
const DEFAULT_FATAL: &[&str] = &["Kernel panic - not syncing"];

/// The firmware the machine starts.
#[derive(Debug, Clone)]
pub enum Firmware {
    /// QEMU's default BIOS.
    SeaBios,
    /// UEFI from pflash: `code` read-only, and a per-VM copy of the `vars` template.
    Ovmf { code: PathBuf, vars: PathBuf },
}

impl Firmware {
    /// Debian's OVMF (package `ovmf`), 4 MiB flash, without Secure Boot.
    pub fn ovmf() -> Self {
        Firmware::Ovmf {
            code: "/usr/share/OVMF/OVMF_CODE_4M.fd".into(),
            vars: "/usr/share/OVMF/OVMF_VARS_4M.fd".into(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Machine {
    /// i440FX (`pc`): the default with SeaBIOS.
    Pc,
    /// Q35: the default with OVMF.
    Q35,
}

/// A disk drive. The file is never written: `snapshot` (the default) sends writes to a temporary
/// overlay QEMU throws away.
#[derive(Debug, Clone)]
pub struct Drive {
    pub path: PathBuf,
    pub format: String,
    /// `ide`, `virtio`, `floppy`, …; QEMU's default for the machine when `None`.
    pub interface: Option<String>,
    pub snapshot: bool,
}

impl Drive {
    pub fn raw(path: impl Into<PathBuf>) -> Self {
        Drive {
            path: path.into(),
            format: "raw".into(),
            interface: None,
            snapshot: true,
        }
    }

    pub fn interface(mut self, interface: impl Into<String>) -> Self {
        self.interface = Some(interface.into());
        self
    }

    /// Writes go to the file itself (only for files the test owns).
    pub fn writable(mut self) -> Self {
        self.snapshot = false;
        self
    }

    fn arg(&self) -> String {
        let mut s = format!("file={},format={}", qemu_escape(&self.path), self.format);
        if let Some(interface) = &self.interface {
            s.push_str(&format!(",if={interface}"));
        }
        if self.snapshot {
            s.push_str(",snapshot=on");
        }
        s
    }
}

/// QEMU option values escape a comma by doubling it.
fn qemu_escape(path: &Path) -> String {
    path.display().to_string().replace(',', ",,")
}

/// A per-VM directory for the console log, QEMU's stderr, firmware variables and anything the
/// test wants to put beside them. Removed when dropped, unless the test failed (then kept and its
/// path printed) or `DROVE_KEEP_VM_DIRS` is set.
#[derive(Debug)]
pub struct WorkDir {
    dir: Option<tempfile::TempDir>,
    path: PathBuf,
    keep: AtomicBool,
}

impl WorkDir {
    /// A new directory under `$DROVE_TEST_TMPDIR` (default: the system temp dir), named after `name`.
    pub fn new(name: &str) -> Result<Self, Error> {
        let base = std::env::var_os("DROVE_TEST_TMPDIR")
            .filter(|d| !d.is_empty())
            .map_or_else(std::env::temp_dir, PathBuf::from);
        std::fs::create_dir_all(&base).map_err(|source| Error::Io {
            what: "cannot create",
            path: base.clone(),
            source,
        })?;
        let dir = tempfile::Builder::new()
            .prefix(&format!("drove-vm-{name}-"))
            .tempdir_in(&base)
            .map_err(|source| Error::Io {
                what: "cannot create a directory in",
                path: base.clone(),
                source,
            })?;
        let path = dir.path().to_owned();
        let keep = std::env::var_os("DROVE_KEEP_VM_DIRS").is_some();
        Ok(WorkDir {
            dir: Some(dir),
            path,
            keep: AtomicBool::new(keep),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether to keep the directory after the test (failures set this).
    pub fn keep(&self, keep: bool) {
        self.keep.store(keep, Ordering::SeqCst);
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        if let Some(dir) = self.dir.take() {
            if self.keep.load(Ordering::SeqCst) || std::thread::panicking() {
                let path = dir.keep();
                eprintln!("drove-qemu-tests: kept {}", path.display());
            }
        }
    }
}

/// What to boot and how; [`VmBuilder::spawn`] starts it.
#[derive(Debug)]
pub struct VmBuilder {
    name: String,
    work: WorkDir,
    memory_mib: u32,
    cpus: u32,
    machine: Option<Machine>,
    firmware: Firmware,
    accel: Option<Accel>,
    kernel: Option<(PathBuf, Option<PathBuf>, String)>,
    drives: Vec<Drive>,
    floppy: Option<PathBuf>,
    boot_order: Option<String>,
    nics: Vec<Nic>,
    extra: Vec<OsString>,
    fatal: Vec<String>,
    /// A guest reboot resets the machine instead of ending QEMU (`-no-reboot` left out).
    reboot: bool,
}

impl VmBuilder {
    /// A 1 GiB, 1-CPU SeaBIOS machine with no disks and no NICs; creates its work directory now so
    /// the test can prepare files in it ([`VmBuilder::dir`]).
    pub fn new(name: &str) -> Result<Self, Error> {
        Ok(VmBuilder {
            name: name.to_owned(),
            work: WorkDir::new(name)?,
            memory_mib: 1024,
            cpus: 1,
            machine: None,
            firmware: Firmware::SeaBios,
            accel: None,
            kernel: None,
            drives: Vec::new(),
            floppy: None,
            boot_order: None,
            nics: Vec::new(),
            extra: Vec::new(),
            fatal: DEFAULT_FATAL.iter().map(|s| (*s).to_owned()).collect(),
            reboot: false,
        })
    }

    /// Lets a guest reboot reset the machine (firmware, boot medium, network boot again), as a
    /// PC does; by default QEMU exits on a reboot so that a test sees it.
    pub fn allow_reboot(mut self) -> Self {
        self.reboot = true;
        self
    }

    /// The VM's work directory (exists already; kept when the test fails).
    pub fn dir(&self) -> &Path {
        self.work.path()
    }

    pub fn memory_mib(mut self, mib: u32) -> Self {
        self.memory_mib = mib;
        self
    }

    pub fn cpus(mut self, cpus: u32) -> Self {
        self.cpus = cpus;
        self
    }

    /// Overrides the machine type (default: `q35` with OVMF, `pc` otherwise).
    pub fn machine(mut self, machine: Machine) -> Self {
        self.machine = Some(machine);
        self
    }

    pub fn firmware(mut self, firmware: Firmware) -> Self {
        self.firmware = firmware;
        self
    }

    /// Overrides [`accel()`] for this VM.
    pub fn accel(mut self, accel: Accel) -> Self {
        self.accel = Some(accel);
        self
    }

    /// Direct kernel boot: `-kernel`, `-initrd` (one file), `-append`.
    pub fn kernel(
        mut self,
        kernel: impl Into<PathBuf>,
        initrd: Option<PathBuf>,
        append: impl Into<String>,
    ) -> Self {
        self.kernel = Some((kernel.into(), initrd, append.into()));
        self
    }

    pub fn drive(mut self, drive: Drive) -> Self {
        self.drives.push(drive);
        self
    }

    /// A raw floppy image in drive A: (never written: snapshot), and boot from it.
    pub fn floppy(mut self, image: impl Into<PathBuf>) -> Self {
        self.floppy = Some(image.into());
        self.boot_order = Some("a".into());
        self
    }

    /// QEMU `-boot order=…` (`a` floppy, `c` disk, `n` network).
    pub fn boot_order(mut self, order: impl Into<String>) -> Self {
        self.boot_order = Some(order.into());
        self
    }

    pub fn nic(mut self, nic: Nic) -> Self {
        self.nics.push(nic);
        self
    }

    /// Extra QEMU arguments, appended last.
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.extra
            .extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    /// A console substring that fails any wait at once (default: kernel panics).
    pub fn fatal_line(mut self, substring: impl Into<String>) -> Self {
        self.fatal.push(substring.into());
        self
    }

    fn command(&self) -> Result<Command, Error> {
        let dir = self.work.path();
        let accel = self.accel.unwrap_or_else(accel);
        let machine = self.machine.unwrap_or(match self.firmware {
            Firmware::Ovmf { .. } => Machine::Q35,
            Firmware::SeaBios => Machine::Pc,
        });
        let mut cmd = Command::new("qemu-system-x86_64");
        // debug-threads: vCPU threads are named `CPU n/TCG` (benchmarks read their CPU time).
        cmd.args(["-name", &format!("{},debug-threads=on", self.name)])
            .args([
                "-machine",
                if machine == Machine::Q35 { "q35" } else { "pc" },
            ])
            .args(accel.args())
            .args([
                "-m",
                &self.memory_mib.to_string(),
                "-smp",
                &self.cpus.to_string(),
            ])
            .args(["-display", "none", "-serial", "stdio", "-monitor", "none"]);
        if !self.reboot {
            cmd.arg("-no-reboot");
        }
        if let Firmware::Ovmf { code, vars } = &self.firmware {
            let vars_copy = dir.join("OVMF_VARS.fd");
            std::fs::copy(vars, &vars_copy).map_err(|source| Error::Io {
                what: "cannot copy",
                path: vars.clone(),
                source,
            })?;
            cmd.args([
                "-drive",
                &format!(
                    "if=pflash,format=raw,unit=0,readonly=on,file={}",
                    qemu_escape(code)
                ),
            ]);
            cmd.args([
                "-drive",
                &format!(
                    "if=pflash,format=raw,unit=1,file={}",
                    qemu_escape(&vars_copy)
                ),
            ]);
        }
        if let Some((kernel, initrd, append)) = &self.kernel {
            cmd.arg("-kernel").arg(kernel);
            if let Some(initrd) = initrd {
                cmd.arg("-initrd").arg(initrd);
            }
            cmd.args(["-append", append]);
        }
        for drive in &self.drives {
            cmd.args(["-drive", &drive.arg()]);
        }
        if let Some(floppy) = &self.floppy {
            cmd.args(["-drive", &Drive::raw(floppy).interface("floppy").arg()]);
        }
        if let Some(order) = &self.boot_order {
            cmd.args(["-boot", &format!("order={order}")]);
        }
        if self.nics.is_empty() {
            cmd.args(["-nic", "none"]);
        }
        for (i, nic) in self.nics.iter().enumerate() {
            cmd.args(nic.args(i));
            if let crate::Netdev::TapFd { fd } = nic.netdev {
                // SAFETY: between fork and exec; fcntl is async-signal-safe. Only the child's
                // copy of the descriptor loses close-on-exec, so QEMU inherits it.
                unsafe {
                    std::os::unix::process::CommandExt::pre_exec(&mut cmd, move || {
                        if libc::fcntl(fd, libc::F_SETFD, 0) != 0 {
                            return Err(std::io::Error::last_os_error());
                        }
                        Ok(())
                    });
                }
            }
        }
        cmd.args(&self.extra);
        Ok(cmd)
    }

    /// Starts QEMU. Its command line is saved as `qemu.cmd`, its stderr as `qemu.stderr` and the
    /// serial console as `console.log` in the work directory.
    pub fn spawn(self) -> Result<Vm, Error> {
        let mut cmd = self.command()?;
        let dir = self.work.path().to_owned();
        let line = command_line(&cmd);
        let io_err = |what, path: &Path| {
            let path = path.to_owned();
            move |source| Error::Io { what, path, source }
        };
        let cmd_path = dir.join("qemu.cmd");
        std::fs::write(&cmd_path, format!("{line}\n"))
            .map_err(io_err("cannot write", &cmd_path))?;
        let stderr_path = dir.join("qemu.stderr");
        let stderr = File::create(&stderr_path).map_err(io_err("cannot create", &stderr_path))?;
        let log_path = dir.join("console.log");
        let log = File::create(&log_path).map_err(io_err("cannot create", &log_path))?;
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(stderr);

        let started = Instant::now();
        let mut child = spawn_tied(cmd).map_err(|source| Error::Spawn {
            line: line.clone(),
            source,
        })?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take();
        let console = Arc::new(Console::default());
        let reader = stdout.map(|stdout| {
            let console = Arc::clone(&console);
            std::thread::Builder::new()
                .name(format!("console-{}", self.name))
                .spawn(move || console.pump(stdout, log))
        });
        let reader = match reader.transpose() {
            Ok(reader) => reader,
            Err(source) => {
                kill_group(&mut child, Duration::from_secs(5));
                return Err(Error::Spawn { line, source });
            }
        };
        eprintln!(
            "drove-qemu-tests: vm {} started; console log {}",
            self.name,
            log_path.display()
        );
        Ok(Vm {
            name: self.name,
            work: self.work,
            line,
            log_path,
            stderr_path,
            started,
            child: Mutex::new(child),
            stdin: Mutex::new(stdin),
            console,
            cursor: Mutex::new(0),
            reader,
            fatal: self.fatal,
            reported: AtomicBool::new(false),
        })
    }
}

/// A running QEMU. Dropping it kills the QEMU process group; when the test is failing (panicking)
/// it prints the console log's path and last lines first, and keeps the work directory.
pub struct Vm {
    name: String,
    work: WorkDir,
    line: String,
    log_path: PathBuf,
    stderr_path: PathBuf,
    started: Instant,
    child: Mutex<Child>,
    stdin: Mutex<Option<ChildStdin>>,
    console: Arc<Console>,
    /// Index of the first console line not yet consumed by a wait.
    cursor: Mutex<usize>,
    reader: Option<JoinHandle<()>>,
    fatal: Vec<String>,
    /// A failure report (log path + tail) has been produced.
    reported: AtomicBool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Vm {
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn dir(&self) -> &Path {
        self.work.path()
    }

    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// The QEMU command line, copy-pasteable.
    pub fn command_line(&self) -> &str {
        &self.line
    }

    pub fn pid(&self) -> u32 {
        lock(&self.child).id()
    }

    /// Time since QEMU was started.
    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// Every console line so far (cleaned of escapes).
    pub fn console_lines(&self) -> Vec<String> {
        self.console
            .lock()
            .lines
            .iter()
            .map(|(_, l)| l.clone())
            .collect()
    }

    /// Waits for a console line matching `pattern` that comes after the line the previous wait
    /// matched, and returns it. Fails at the deadline, when QEMU exits, or on a fatal line (kernel
    /// panic); the error carries the log path and the last lines. Matches complete lines only.
    pub fn wait_for_line<P: LinePattern>(
        &self,
        pattern: P,
        timeout: Duration,
    ) -> Result<String, Error> {
        let deadline = Instant::now() + timeout;
        let mut cursor = lock(&self.cursor);
        let mut state = self.console.lock();
        loop {
            while *cursor < state.lines.len() {
                let line = &state.lines[*cursor].1;
                *cursor += 1;
                if pattern.is_match(line) {
                    return Ok(line.clone());
                }
                if self.fatal.iter().any(|f| line.contains(f.as_str())) {
                    let line = line.clone();
                    drop(state);
                    return Err(Error::Fatal {
                        vm: self.name.clone(),
                        what: pattern.describe(),
                        line,
                        report: self.report(),
                    });
                }
            }
            if state.eof {
                drop(state);
                let status =
                    crate::process::wait_timeout(&mut lock(&self.child), Duration::from_secs(5))
                        .map_or_else(|| "status unknown".to_owned(), describe);
                return Err(Error::Exited {
                    vm: self.name.clone(),
                    what: pattern.describe(),
                    status,
                    report: self.report(),
                });
            }
            let now = Instant::now();
            if now >= deadline {
                drop(state);
                return Err(Error::Timeout {
                    vm: self.name.clone(),
                    what: pattern.describe(),
                    timeout,
                    report: self.report(),
                });
            }
            state = self
                .console
                .changed
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    /// [`Vm::wait_for_line`] for the agent's `drove: ready node=` line.
    pub fn wait_ready(&self, timeout: Duration) -> Result<String, Error> {
        self.wait_for_line(READY, timeout)
    }

    /// Types `line` and Enter (a carriage return, as a terminal sends it; the tty turns it into a
    /// newline for line-reading programs) on the serial console.
    pub fn send_line(&self, line: &str) -> Result<(), Error> {
        let mut stdin = lock(&self.stdin);
        let err = |source| Error::Console {
            vm: self.name.clone(),
            source,
        };
        let stdin = stdin
            .as_mut()
            .ok_or_else(|| err(std::io::ErrorKind::BrokenPipe.into()))?;
        stdin
            .write_all(format!("{line}\r").as_bytes())
            .and_then(|()| stdin.flush())
            .map_err(err)
    }

    /// Waits until QEMU exits and returns its status (QEMU exits 0 when the guest powers off,
    /// or, with `-no-reboot`, reboots).
    pub fn wait_exit(&self, timeout: Duration) -> Result<ExitStatus, Error> {
        match crate::process::wait_timeout(&mut lock(&self.child), timeout) {
            Some(status) => Ok(status),
            None => Err(Error::Timeout {
                vm: self.name.clone(),
                what: "QEMU exit".into(),
                timeout,
                report: self.report(),
            }),
        }
    }

    /// Types `poweroff`, waits for the kernel's power-down line and for QEMU to exit with status 0.
    pub fn poweroff(&self, timeout: Duration) -> Result<(), Error> {
        let deadline = Instant::now() + timeout;
        self.send_line("poweroff")?;
        self.wait_for_line(POWER_DOWN, timeout)?;
        let status = self.wait_exit(
            deadline
                .saturating_duration_since(Instant::now())
                .max(Duration::from_secs(1)),
        )?;
        if status.success() {
            Ok(())
        } else {
            Err(Error::Unclean {
                vm: self.name.clone(),
                status: describe(status),
                report: self.report(),
            })
        }
    }

    /// Kills QEMU now (a node failure, for cluster tests). The console stays readable.
    pub fn kill(&self) -> Option<ExitStatus> {
        kill_group(&mut lock(&self.child), EXIT_TIMEOUT)
    }

    /// Keep the work directory after the test or not. Any failure report sets it; a test that
    /// provoked an error on purpose can clear it.
    pub fn keep_dir(&self, keep: bool) {
        self.work.keep(keep);
    }

    /// Where the logs are and the last console lines; marks the work directory to be kept.
    pub fn report(&self) -> String {
        self.reported.store(true, Ordering::SeqCst);
        self.work.keep(true);
        let mut s = format!(
            "  console log: {}\n  qemu stderr: {}\n  qemu command: {}\n",
            self.log_path.display(),
            self.stderr_path.display(),
            self.line
        );
        let stderr = std::fs::read_to_string(&self.stderr_path).unwrap_or_default();
        if !stderr.trim().is_empty() {
            s.push_str(&format!("--- qemu stderr ---\n{}\n", stderr.trim_end()));
        }
        s.push_str(&format!("--- last {TAIL_LINES} console lines ---\n"));
        for line in self.console.tail(TAIL_LINES) {
            s.push_str(&line);
            s.push('\n');
        }
        s.push_str("--- end of console ---");
        s
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        if std::thread::panicking() && !self.reported.load(Ordering::SeqCst) {
            eprintln!(
                "drove-qemu-tests: vm {} failed\n{}",
                self.name,
                self.report()
            );
        }
        drop(lock(&self.stdin).take());
        let reaped = kill_group(&mut lock(&self.child), Duration::from_secs(10)).is_some();
        // The reader ends at EOF, which comes once QEMU is gone; don't hang on a QEMU that
        // SIGKILL could not take down yet.
        if reaped {
            if let Some(reader) = self.reader.take() {
                let _ = reader.join();
            }
        } else {
            eprintln!(
                "drove-qemu-tests: vm {}: QEMU (pid {}) did not die",
                self.name,
                lock(&self.child).id()
            );
        }
    }
}

impl std::fmt::Debug for Vm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vm")
            .field("name", &self.name)
            .field("dir", &self.work.path())
            .finish_non_exhaustive()
    }
}
