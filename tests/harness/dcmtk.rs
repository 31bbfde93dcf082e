//! The dcmtk peers: a builder for the SCUs against a daemon,
//!
//! ```ignore
//! storescu(d.port).required_only().calling("PACS").files(&paths).run()
//! echoscu(d.port).tls_anonymous(&ca).run()
//! ```
//!
//! the `storescp` PACS (`storescp(port, dir).opts(&["--refuse"]).start()`), and [`run`] for any
//! other tool (`dcmodify`, or an SCU call too unusual for the builder).

use super::{require_tool, wait_port, Guard};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// Runs a program with TCP_NODELAY=1 (dcmtk) and returns its output.
pub fn run(prog: &str, args: &[&str]) -> Output {
    require_tool(prog);
    Command::new(prog)
        .args(args)
        .env("TCP_NODELAY", "1")
        .output()
        .unwrap_or_else(|e| panic!("cannot run {prog}: {e}"))
}

/// A dcmtk SCU call: `PROG [OPTIONS] -aet CALLING -aec PROXYSEG 127.0.0.1 PORT [FILES]`.
#[derive(Clone, Debug)]
pub struct Scu {
    prog: &'static str,
    opts: Vec<String>,
    calling: String,
    port: u16,
    files: Vec<String>,
}

/// `storescu` to the daemon on loopback `port`, as AE STORESCU (every test daemon's peer).
pub fn storescu(port: u16) -> Scu {
    Scu::new("storescu", "STORESCU", port)
}

/// `echoscu` to the daemon on loopback `port`, as AE ECHOSCU.
pub fn echoscu(port: u16) -> Scu {
    Scu::new("echoscu", "ECHOSCU", port)
}

impl Scu {
    fn new(prog: &'static str, calling: &str, port: u16) -> Scu {
        Scu {
            prog,
            opts: Vec::new(),
            calling: calling.into(),
            port,
            files: Vec::new(),
        }
    }

    /// The calling AE title (`-aet`).
    pub fn calling(mut self, ae: &str) -> Scu {
        self.calling = ae.into();
        self
    }

    /// `-R`: propose only the presentation contexts the files need (storescu).
    pub fn required_only(self) -> Scu {
        self.opts(&["-R"])
    }

    /// Options, in order, before the AE titles (e.g. `["-xi"]`, `["-pdu", "4096"]`).
    pub fn opts(mut self, opts: &[&str]) -> Scu {
        self.opts.extend(opts.iter().map(|o| o.to_string()));
        self
    }

    /// `+tla +cf CA`: TLS without a client certificate, trusting `ca`.
    pub fn tls_anonymous(self, ca: &str) -> Scu {
        self.opts(&["+tla", "+cf", ca])
    }

    /// `+tls KEY CERT +cf CA`: TLS with a client certificate, trusting `ca`.
    pub fn tls(self, key: &str, cert: &str, ca: &str) -> Scu {
        self.opts(&["+tls", key, cert, "+cf", ca])
    }

    /// One file to send, after the earlier ones.
    pub fn file(mut self, f: impl AsRef<Path>) -> Scu {
        self.files.push(f.as_ref().display().to_string());
        self
    }

    /// Files to send, after the earlier ones.
    pub fn files<P: AsRef<Path>>(mut self, files: impl IntoIterator<Item = P>) -> Scu {
        self.files
            .extend(files.into_iter().map(|f| f.as_ref().display().to_string()));
        self
    }

    /// The argument list.
    pub fn args(&self) -> Vec<String> {
        let mut a = self.opts.clone();
        a.extend(["-aet", &self.calling, "-aec", "PROXYSEG", "127.0.0.1"].map(String::from));
        a.push(self.port.to_string());
        a.extend(self.files.iter().cloned());
        a
    }

    /// Runs it (TCP_NODELAY=1) and returns its output.
    pub fn run(&self) -> Output {
        let args = self.args();
        run(
            self.prog,
            &args.iter().map(String::as_str).collect::<Vec<_>>(),
        )
    }
}

/// dcmtk `storescp`, a real receiving PACS on loopback `port`, storing what it receives into
/// `dir` (created).
#[derive(Clone, Debug)]
pub struct Storescp {
    port: u16,
    dir: PathBuf,
    opts: Vec<String>,
}

/// `storescp` on `port` into `dir`; [`Storescp::start`] starts it.
pub fn storescp(port: u16, dir: &Path) -> Storescp {
    Storescp {
        port,
        dir: dir.to_owned(),
        opts: Vec::new(),
    }
}

impl Storescp {
    /// Options, in order (e.g. `["--refuse"]`).
    pub fn opts(mut self, opts: &[&str]) -> Storescp {
        self.opts.extend(opts.iter().map(|o| o.to_string()));
        self
    }

    /// `+tls KEY CERT +cf CA`: TLS only, with this certificate, trusting `ca`.
    pub fn tls(self, key: &str, cert: &str, ca: &str) -> Storescp {
        self.opts(&["+tls", key, cert, "+cf", ca])
    }

    /// Starts it and returns once it listens; killed when the guard drops.
    pub fn start(self) -> Guard {
        require_tool("storescp");
        std::fs::create_dir_all(&self.dir).unwrap();
        let c = Command::new("storescp")
            .args(&self.opts)
            .arg("-od")
            .arg(&self.dir)
            .arg(self.port.to_string())
            .env("TCP_NODELAY", "1")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let g = Guard(c);
        wait_port(self.port, "storescp");
        g
    }
}
