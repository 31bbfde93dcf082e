//! The real daemon binary on a temp data dir: [`Opts`], [`Daemon`] (started, restarted, killed,
//! its log, index and metrics), free loopback ports.

use super::{echoscu, storescu};
use std::io::Read;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// A free TCP port on loopback.
///
/// Ports come from 20000-31999, below Linux's default ephemeral range (32768-60999), so the
/// source port of some client connection made meanwhile cannot take the port between this
/// check and the daemon's bind (what `bind(0)` handed out could). Each test process walks the
/// range from its own pid-derived start and never hands a port out twice.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const LOW: u32 = 20000;
    const SPAN: u32 = 12000;
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    let start = std::process::id().wrapping_mul(7919) % SPAN;
    let _ = NEXT.compare_exchange(u32::MAX, start, Ordering::SeqCst, Ordering::SeqCst);
    for _ in 0..SPAN {
        let port = (LOW + NEXT.fetch_add(1, Ordering::SeqCst) % SPAN) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Options for a test daemon.
#[derive(Clone)]
pub struct Opts {
    /// Seconds of peer silence before abort.
    pub read_timeout_s: u64,
    /// Association limit.
    pub max_associations: usize,
    /// Free disk reserve in MiB.
    pub min_free_disk_mb: u64,
    /// Require known peers.
    pub require_known_peers: bool,
    /// Host configured for every peer.
    pub peer_host: String,
    /// Max PDU.
    pub max_pdu: u32,
    /// Extra TOML appended verbatim (whole tables only, e.g. `[dicom.tls]`).
    pub extra: String,
    /// Stable age.
    pub stable_age_s: f64,
    /// Extra keys for the `[dicom]` table, verbatim (e.g. `"max_object_mb = 64\n"`).
    pub dicom_extra: String,
    /// Extra keys for the `[pipeline]` table, verbatim.
    pub pipeline_extra: String,
    /// Address-space limit (RLIMIT_AS) of the daemon in MiB: a test that provokes large
    /// allocations makes them fail inside the daemon instead of exhausting the test machine.
    pub address_space_mb: Option<u64>,
    /// File-mode creation mask the daemon starts with (`umask 000` in the spawning shell is
    /// `Some(0)`); `None` inherits the test's.
    pub umask: Option<u32>,
    /// Puts the data dir on a private tmpfs of this many MiB, mounted in a mount namespace of
    /// the daemon's own (so free space is exact and small). Needs root; the tmpfs, and with it
    /// the data, lives only as long as the daemon process. The test sees the data dir only
    /// through the daemon (DICOM, logs), not through `data_dir()`.
    pub data_tmpfs_mb: Option<u64>,
    /// Environment variables set for the daemon process (for example systemd's
    /// `NOTIFY_SOCKET`).
    pub env: Vec<(String, String)>,
}

impl Default for Opts {
    fn default() -> Self {
        Opts {
            read_timeout_s: 10,
            max_associations: 32,
            min_free_disk_mb: 1,
            require_known_peers: true,
            peer_host: "127.0.0.1".into(),
            max_pdu: 65536,
            extra: String::new(),
            stable_age_s: 1.0,
            dicom_extra: String::new(),
            pipeline_extra: String::new(),
            address_space_mb: None,
            umask: None,
            data_tmpfs_mb: None,
            env: Vec::new(),
        }
    }
}

/// A running daemon on a temp data dir; killed on drop.
pub struct Daemon {
    pub dir: tempfile::TempDir,
    pub port: u16,
    /// Port of the Prometheus endpoint.
    pub metrics_port: u16,
    pub config: PathBuf,
    child: Option<Child>,
    address_space_mb: Option<u64>,
    umask: Option<u32>,
    data_tmpfs_mb: Option<u64>,
    env: Vec<(String, String)>,
}

/// AE titles every test daemon knows as peers.
pub const PEERS: &[&str] = &["STORESCU", "ECHOSCU", "PYNETDICOM", "DCMSEND", "SENDER"];

/// The daemon's log line once every part is up (`proxyseg::daemon::STARTED`): DICOM is served
/// earlier ("accepting associations"), the engine, admin API and metrics from this line on.
const READY_LINE: &str = proxyseg::daemon::STARTED;
/// The daemon's log line once its DICOM listeners are served.
const ACCEPTING_LINE: &str = "accepting associations";

impl Daemon {
    /// Starts a daemon with `opts` and waits until every part is up.
    pub fn start(opts: Opts) -> Daemon {
        let mut d = Daemon::configure(opts);
        d.spawn();
        d
    }

    /// Starts a daemon with `opts` and waits only until it serves DICOM associations, which
    /// it does before its engine has loaded.
    pub fn start_accepting(opts: Opts) -> Daemon {
        let mut d = Daemon::configure(opts);
        d.spawn_process();
        d.wait_listening(&format!("127.0.0.1:{}", d.port));
        d.wait_for(Duration::from_secs(120), "serve associations", |d| {
            d.log().contains(ACCEPTING_LINE)
        });
        d
    }

    /// The daemon's config written for `opts`, its process not started.
    fn configure(opts: Opts) -> Daemon {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let metrics_port = free_port();
        let mut toml = format!(
            "[dicom]\nlisten = \"127.0.0.1:{port}\"\nread_timeout_s = {}\nmax_associations = {}\nmin_free_disk_mb = {}\nrequire_known_peers = {}\nmax_pdu = {}\n",
            opts.read_timeout_s, opts.max_associations, opts.min_free_disk_mb, opts.require_known_peers, opts.max_pdu
        );
        toml += &opts.dicom_extra;
        for (i, ae) in PEERS.iter().enumerate() {
            toml += &format!(
                "[[dicom.peers]]\nae_title = \"{ae}\"\nhost = \"{}\"\nport = {}\n",
                opts.peer_host,
                40000 + i
            );
        }
        toml += &format!(
            "[storage]\ndata_dir = \"{}\"\n[pipeline]\nstable_age_s = {}\nscan_interval_ms = 100\n{}[log]\nfilter = \"debug,dicom_ul=info\"\n[metrics]\nlisten = \"127.0.0.1:{metrics_port}\"\n{}\n",
            dir.path().join("var").display(),
            opts.stable_age_s,
            opts.pipeline_extra,
            opts.extra
        );
        let config = dir.path().join("proxyseg.toml");
        std::fs::write(&config, toml).unwrap();
        Daemon {
            dir,
            metrics_port,
            port,
            config,
            child: None,
            address_space_mb: opts.address_space_mb,
            umask: opts.umask,
            data_tmpfs_mb: opts.data_tmpfs_mb,
            env: opts.env,
        }
    }

    /// The data dir.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("var")
    }

    /// Starts the daemon process (again, after it exited) on the same data dir and port.
    /// Starts the daemon process without waiting for a listener (for a configuration
    /// without the plain one).
    pub fn spawn_process(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("daemon.log"))
            .unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_proxyseg"));
        cmd.args(["serve", "--config"])
            .arg(&self.config)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(log);
        if let Some(mb) = self.address_space_mb {
            use std::os::unix::process::CommandExt;
            let bytes = mb * 1024 * 1024;
            // SAFETY: only setrlimit, which is async-signal-safe, runs between fork and exec.
            unsafe {
                cmd.pre_exec(move || {
                    let lim = libc::rlimit {
                        rlim_cur: bytes,
                        rlim_max: bytes,
                    };
                    if libc::setrlimit(libc::RLIMIT_AS, &lim) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        if let Some(mask) = self.umask {
            use std::os::unix::process::CommandExt;
            // SAFETY: only umask, which is async-signal-safe, runs between fork and exec.
            unsafe {
                cmd.pre_exec(move || {
                    libc::umask(mask as libc::mode_t);
                    Ok(())
                });
            }
        }
        if let Some(mb) = self.data_tmpfs_mb {
            use std::os::unix::ffi::OsStrExt;
            use std::os::unix::process::CommandExt;
            let dir = self.data_dir();
            std::fs::create_dir_all(&dir).unwrap();
            let target = std::ffi::CString::new(dir.as_os_str().as_bytes()).unwrap();
            let data = std::ffi::CString::new(format!("size={mb}m,mode=0700")).unwrap();
            // SAFETY: only unshare and mount, which are async-signal-safe, run between fork and
            // exec, on C strings made before the fork.
            unsafe {
                cmd.pre_exec(move || {
                    let fail = || Err(std::io::Error::last_os_error());
                    if libc::unshare(libc::CLONE_NEWNS) != 0 {
                        return fail();
                    }
                    let flags = libc::MS_REC | libc::MS_PRIVATE;
                    let none = c"none".as_ptr();
                    if libc::mount(
                        none,
                        c"/".as_ptr(),
                        std::ptr::null(),
                        flags,
                        std::ptr::null(),
                    ) != 0
                    {
                        return fail();
                    }
                    let tmpfs = c"tmpfs".as_ptr();
                    if libc::mount(tmpfs, target.as_ptr(), tmpfs, 0, data.as_ptr().cast()) != 0 {
                        return fail();
                    }
                    Ok(())
                });
            }
        }
        let child = cmd.spawn().unwrap_or_else(|e| {
            panic!(
                "start proxyseg: {e}{}",
                if self.data_tmpfs_mb.is_some() {
                    " (a tmpfs data dir needs root: unshare(CLONE_NEWNS) and mount(2))"
                } else {
                    ""
                }
            )
        });
        self.child = Some(child);
    }

    /// Starts the daemon process and waits until every part is up: its DICOM port is served
    /// before the engine has loaded, the admin API and metrics only after (on 2 busy cores
    /// that can take longer than a peer's timeout).
    pub fn spawn(&mut self) {
        let before = self.log().matches(READY_LINE).count();
        self.spawn_process();
        self.wait_listening(&format!("127.0.0.1:{}", self.port));
        self.wait_started(before);
    }

    /// Waits until `addr` accepts TCP connections.
    pub fn wait_listening(&mut self, addr: &str) {
        self.wait_for(
            Duration::from_secs(20),
            &format!("listen on {addr}"),
            |_| TcpStream::connect(addr).is_ok(),
        );
    }

    /// Waits until the log has more than `before` start-up lines (`READY_LINE`); 0 for a
    /// daemon started once with [`Daemon::start_accepting`].
    pub fn wait_started(&mut self, before: usize) {
        self.wait_for(Duration::from_secs(120), "start every part", |d| {
            d.log().matches(READY_LINE).count() > before
        });
    }

    /// Polls `done` every 50 ms for at most `limit`; panics with the log when the daemon exits
    /// first or the time runs out (`what` it did not do).
    fn wait_for(&mut self, limit: Duration, what: &str, done: impl Fn(&Daemon) -> bool) {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if done(self) {
                return;
            }
            if let Some(st) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("proxyseg exited early ({st}); log:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("proxyseg did not {what}; log:\n{}", self.log());
    }

    /// The daemon's log so far.
    pub fn log(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = std::fs::File::open(self.dir.path().join("daemon.log")) {
            let _ = f.read_to_string(&mut s);
        }
        s
    }

    /// SIGKILL.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait; returns the exit status success.
    pub fn terminate(&mut self) -> bool {
        if let Some(mut c) = self.child.take() {
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(40);
            while Instant::now() < deadline {
                if let Ok(Some(st)) = c.try_wait() {
                    return st.success();
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        false
    }

    /// Pid of the running daemon.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// The daemon's exit status if it has exited (crashed, aborted, OOM-killed); `None`
    /// while it runs.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// A `Vm*` field of the daemon's /proc/<pid>/status in KiB (`"VmHWM"`: peak resident set
    /// since start; `"VmRSS"`: resident now).
    pub fn vm_kib(&self, field: &str) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).ok()?;
        status.lines().find_map(|l| {
            let rest = l.strip_prefix(field)?.strip_prefix(':')?;
            rest.trim().trim_end_matches("kB").trim().parse().ok()
        })
    }

    /// The Prometheus text served at `GET /metrics`.
    pub fn metrics(&self) -> String {
        use std::io::Write;
        let mut s = TcpStream::connect(("127.0.0.1", self.metrics_port)).expect("metrics endpoint");
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        assert!(out.starts_with("HTTP/1.1 200"), "{out}");
        out
    }

    /// The Prometheus text once it satisfies `ready`, polled for up to `secs` seconds (then the
    /// last scrape, for the caller's assertion to show). A counter is bumped after the state
    /// change it counts has been committed, so a scrape taken the instant a job's row changes
    /// may not show it yet.
    pub fn metrics_once(&self, secs: u64, ready: impl Fn(&str) -> bool) -> String {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
        loop {
            let m = self.metrics();
            if ready(&m) || std::time::Instant::now() >= deadline {
                return m;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    /// Peak resident set size of the daemon so far, in MiB.
    pub fn peak_rss_mib(&self) -> u64 {
        self.vm_kib("VmHWM")
            .unwrap_or_else(|| panic!("cannot read VmHWM of pid {}", self.pid()))
            / 1024
    }

    /// Starts it again on the same data dir and port.
    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }

    /// Opens the index read-only.
    pub fn db(&self) -> rusqlite::Connection {
        rusqlite::Connection::open_with_flags(
            self.data_dir().join("proxyseg.sqlite"),
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .unwrap()
    }

    /// Number of indexed instances.
    pub fn instance_count(&self) -> i64 {
        self.db()
            .query_row("SELECT COUNT(*) FROM instances", [], |r| r.get(0))
            .unwrap()
    }

    /// Files in spool/.tmp.
    pub fn temp_files(&self) -> usize {
        std::fs::read_dir(self.data_dir().join("spool/.tmp"))
            .map(|d| d.count())
            .unwrap_or(0)
    }

    /// Runs `echoscu` (AE ECHOSCU) against the daemon; true on success.
    pub fn echo(&self) -> bool {
        echoscu(self.port).run().status.success()
    }

    /// Runs `storescu -R` (AE STORESCU -> PROXYSEG) with `file` against the daemon.
    pub fn store(&self, file: &Path) -> Output {
        storescu(self.port).required_only().file(file).run()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Path of a spool file for an instance, from the index.
pub fn stored_path(d: &Daemon, sop: &str) -> Option<PathBuf> {
    d.db()
        .query_row(
            "SELECT path FROM instances WHERE sop_instance_uid = ?1",
            [sop],
            |r| r.get::<_, String>(0),
        )
        .ok()
        .map(PathBuf::from)
}

/// Config tables for a daemon that segments with the repository's bundles and delivers to the
/// PACS peer (AE "PACS") listening on `pacs_port`, retrying quickly.
pub fn pacs_delivery_tables(pacs_port: u16) -> String {
    format!(
        "[[dicom.peers]]\nae_title = \"PACS\"\nhost = \"127.0.0.1\"\nport = {pacs_port}\n[engine]\nmodels_dir = \"{}\"\n[delivery]\nbackoff_initial_s = 0.5\npoll_interval_ms = 100\n",
        super::root().join("models").display()
    )
}
