//! Running the kernel build: resolve and fetch `linux-source`, unpack, configure, `make`.

use std::fs::DirBuilder;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::{
    cache_key, check_tools, current_kernel, dropped_options, merge_config, read_base_config,
    KernelError, BUILD_TOOLS, CONFIG_FILE, CURRENT_FILE, HEARTH_OPTIONS, SOURCE_PACKAGE,
    VMLINUX_FILE,
};
use crate::apt;

/// The build's log, kept beside the kernels (replaced by each build) so a failure can be read.
pub const BUILD_LOG: &str = "build.log";
/// How often a running `make` reports its last line.
const PROGRESS_EVERY: Duration = Duration::from_secs(15);

/// A step of the build, for progress lines (and `--json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "stage", rename_all = "snake_case")]
pub enum KernelProgress {
    Resolving,
    Resolved { source: String, key: String },
    Cached { key: String },
    Downloading { source: String },
    Unpacking,
    Configuring,
    Compiling { jobs: usize, log: PathBuf },
    Building { elapsed_s: u64, last_line: String },
    Done { key: String, elapsed_s: u64 },
}

impl std::fmt::Display for KernelProgress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Resolving => write!(f, "resolving {SOURCE_PACKAGE}"),
            Self::Resolved { source, key } => write!(f, "{source}; kernel {}", &key[..12]),
            Self::Cached { key } => write!(f, "kernel {} is up to date", &key[..12]),
            Self::Downloading { source } => write!(f, "fetching {source}"),
            Self::Unpacking => write!(f, "unpacking the kernel source"),
            Self::Configuring => write!(f, "merging the config (make olddefconfig)"),
            Self::Compiling { jobs, log } => {
                write!(f, "make -j{jobs} vmlinux (log: {})", log.display())
            }
            Self::Building {
                elapsed_s,
                last_line,
            } => write!(f, "  {elapsed_s:>5}s  {last_line}"),
            Self::Done { key, elapsed_s } => {
                write!(f, "built kernel {} in {elapsed_s}s", &key[..12])
            }
        }
    }
}

/// What a build did.
#[derive(Debug, Clone)]
pub struct KernelOutcome {
    pub vmlinux: PathBuf,
    pub key: String,
    /// False when a kernel with the same inputs already existed.
    pub built: bool,
}

/// Builds the Firecracker kernel into a kernels dir.
#[derive(Debug, Clone)]
pub struct KernelBuilder {
    kernels_dir: PathBuf,
    deb_cache: PathBuf,
    base_config: PathBuf,
    jobs: usize,
    force: bool,
}

impl KernelBuilder {
    /// `deb_cache` is where fetched `.deb` files are kept (the image builder's cache).
    pub fn new(kernels_dir: PathBuf, deb_cache: PathBuf, base_config: PathBuf) -> Self {
        let jobs = std::thread::available_parallelism().map_or(1, usize::from);
        Self {
            kernels_dir,
            deb_cache,
            base_config,
            jobs,
            force: false,
        }
    }

    pub fn force(mut self, force: bool) -> Self {
        self.force = force;
        self
    }

    /// Builds (or finds) the kernel and makes it current.
    pub fn build(
        &self,
        progress: &mut dyn FnMut(KernelProgress),
    ) -> Result<KernelOutcome, KernelError> {
        let started = Instant::now();
        check_tools(BUILD_TOOLS, tool_found)?;
        let base = read_base_config(&self.base_config)?;
        for dir in [&self.kernels_dir, &self.deb_cache] {
            mkdir_private(dir)?;
        }
        let scratch = tempfile::Builder::new()
            .prefix(".build-")
            .tempdir_in(&self.kernels_dir)
            .map_err(io_err("create a build dir in", &self.kernels_dir))?;
        progress(KernelProgress::Resolving);
        let source = apt::resolve(&[SOURCE_PACKAGE], scratch.path())?
            .into_iter()
            .find(|p| p.name == SOURCE_PACKAGE)
            .ok_or_else(|| apt::AptError::Missing(SOURCE_PACKAGE.to_owned()))?;
        let key = cache_key(&source, &base, HEARTH_OPTIONS);
        progress(KernelProgress::Resolved {
            source: source.to_string(),
            key: key.clone(),
        });
        let dir = self.kernels_dir.join(&key);
        if !self.force && dir.join(VMLINUX_FILE).is_file() {
            self.set_current(&key)?;
            progress(KernelProgress::Cached { key: key.clone() });
            return Ok(KernelOutcome {
                vmlinux: dir.join(VMLINUX_FILE),
                key,
                built: false,
            });
        }
        progress(KernelProgress::Downloading {
            source: source.to_string(),
        });
        let deb = apt::download(
            std::slice::from_ref(&source),
            &self.deb_cache,
            scratch.path(),
        )?
        .remove(0);
        progress(KernelProgress::Unpacking);
        let tree = unpack(&deb, scratch.path())?;
        progress(KernelProgress::Configuring);
        let log = self.kernels_dir.join(BUILD_LOG);
        let _ = std::fs::remove_file(&log);
        let merged = merge_config(&String::from_utf8_lossy(&base), HEARTH_OPTIONS);
        let dot_config = tree.join(".config");
        write_private(&dot_config, merged.as_bytes())?;
        make(&tree, &["olddefconfig"], &log, &mut |_| {})?;
        let settled = std::fs::read_to_string(&dot_config).map_err(io_err("read", &dot_config))?;
        let dropped = dropped_options(&settled, HEARTH_OPTIONS);
        if !dropped.is_empty() {
            return Err(KernelError::OptionsDropped(dropped));
        }
        progress(KernelProgress::Compiling {
            jobs: self.jobs,
            log: log.clone(),
        });
        let jobs = format!("-j{}", self.jobs);
        make(&tree, &[&jobs, "vmlinux"], &log, &mut |line| {
            progress(KernelProgress::Building {
                elapsed_s: started.elapsed().as_secs(),
                last_line: line,
            });
        })?;
        self.install(&key, &tree, scratch.path())?;
        progress(KernelProgress::Done {
            key: key.clone(),
            elapsed_s: started.elapsed().as_secs(),
        });
        Ok(KernelOutcome {
            vmlinux: current_kernel(&self.kernels_dir)?,
            key,
            built: true,
        })
    }

    /// Moves the kernel and its config into `<key>/` (whole, by rename) and makes it current.
    fn install(&self, key: &str, tree: &Path, scratch: &Path) -> Result<(), KernelError> {
        let out = scratch.join("out");
        mkdir_private(&out)?;
        for (from, to) in [(VMLINUX_FILE, VMLINUX_FILE), (".config", CONFIG_FILE)] {
            std::fs::copy(tree.join(from), out.join(to))
                .map_err(io_err("copy", &tree.join(from)))?;
        }
        let dir = self.kernels_dir.join(key);
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(io_err("remove", &dir))?;
        }
        std::fs::rename(&out, &dir).map_err(io_err("rename into", &dir))?;
        self.set_current(key)
    }

    fn set_current(&self, key: &str) -> Result<(), KernelError> {
        let tmp = self
            .kernels_dir
            .join(format!(".{CURRENT_FILE}.{}", std::process::id()));
        let _ = std::fs::remove_file(&tmp);
        write_private(&tmp, key.as_bytes())?;
        let current = self.kernels_dir.join(CURRENT_FILE);
        std::fs::rename(&tmp, &current).map_err(io_err("rename into", &current))
    }
}

/// Extracts the package, then the source tarball it ships; returns the source tree.
fn unpack(deb: &Path, scratch: &Path) -> Result<PathBuf, KernelError> {
    let pkg = scratch.join("pkg");
    apt::extract(deb, &pkg)?;
    let usr_src = pkg.join("usr/src");
    let tarball = std::fs::read_dir(&usr_src)
        .map_err(io_err("read", &usr_src))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("linux-source-") && n.contains(".tar"))
        })
        .ok_or(KernelError::NoTarball { path: usr_src })?;
    let src = scratch.join("src");
    mkdir_private(&src)?;
    run_logged(
        Command::new("tar")
            .arg("-xf")
            .arg(&tarball)
            .arg("-C")
            .arg(&src),
        "tar -xf",
        &scratch.join("tar.log"),
    )?;
    // The tarball holds one directory, `linux-source-6.1`; the package itself is no longer needed.
    let _ = std::fs::remove_dir_all(&pkg);
    std::fs::read_dir(&src)
        .map_err(io_err("read", &src))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.is_dir())
        .ok_or(KernelError::NoTarball { path: tarball })
}

/// Runs `make ARGS` in `tree`, appending its output to `log`; calls `tick` with the log's last
/// line every [`PROGRESS_EVERY`] while it runs.
fn make(
    tree: &Path,
    args: &[&str],
    log: &Path,
    tick: &mut dyn FnMut(String),
) -> Result<(), KernelError> {
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(io_err("open", log))?;
    let err = out.try_clone().map_err(io_err("open", log))?;
    let what = format!("make {}", args.join(" "));
    let mut child = Command::new("make")
        .args(args)
        .current_dir(tree)
        .env("LC_ALL", "C")
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .map_err(io_err("run make in", tree))?;
    let mut last = Instant::now();
    let status = loop {
        match child.try_wait().map_err(io_err("wait for make in", tree))? {
            Some(status) => break status,
            None => std::thread::sleep(Duration::from_millis(500)),
        }
        if last.elapsed() >= PROGRESS_EVERY {
            last = Instant::now();
            tick(tail(log, 1));
        }
    };
    if status.success() {
        Ok(())
    } else {
        Err(KernelError::Make {
            what,
            status: status.to_string(),
            log: log.to_owned(),
            tail: tail(log, 5),
        })
    }
}

fn run_logged(cmd: &mut Command, what: &str, log: &Path) -> Result<(), KernelError> {
    let file = std::fs::File::create(log).map_err(io_err("create", log))?;
    let status = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(file)
        .status()
        .map_err(io_err("run", Path::new(what)))?;
    if status.success() {
        Ok(())
    } else {
        Err(KernelError::Make {
            what: what.to_owned(),
            status: status.to_string(),
            log: log.to_owned(),
            tail: tail(log, 3),
        })
    }
}

/// The last `n` non-empty lines of a log, joined by ` | `.
fn tail(log: &Path, n: usize) -> String {
    let text = std::fs::read(log).unwrap_or_default();
    let start = text.len().saturating_sub(16 * 1024);
    let text = String::from_utf8_lossy(&text[start..]);
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..].join(" | ")
}

/// A tool name on PATH, or an absolute path (a header) that exists.
fn tool_found(tool: &str) -> bool {
    if tool.starts_with('/') {
        Path::new(tool).exists()
    } else {
        hearth_sandbox::host_tools::find_in_path(tool).is_some()
    }
}

fn mkdir_private(path: &Path) -> Result<(), KernelError> {
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .map_err(io_err("create", path))
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<(), KernelError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut f| f.write_all(bytes))
        .map_err(io_err("write", path))
}

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> KernelError {
    let path = path.to_owned();
    move |source| KernelError::Io { op, path, source }
}
