//! Running nftables batches: libnftables in-process when it can be loaded, else the `nft` command.
//!
//! Both take the same libnftables JSON (built with the `nftables` crate's schema) and apply each
//! payload as one transaction, so a batch lands whole or not at all. The library is loaded with
//! `dlopen` rather than linked: it is the library `nft` itself uses, so wherever `nft` is installed
//! it is too, and hearth still builds and runs (on the command) where it is not. In-process saves
//! the ~15 ms that starting `nft` costs per batch here.

use std::ffi::{c_char, c_int, c_uint, c_void, CStr, CString};
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Mutex, OnceLock};

/// Which way to run nft batches.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum NftBackend {
    /// libnftables if it loads, else the `nft` command from `PATH`.
    #[default]
    Auto,
    /// libnftables only.
    Library,
    /// This `nft` executable, one process per batch.
    Command(PathBuf),
}

/// Why an nft batch or query failed.
#[derive(Debug, thiserror::Error)]
pub enum NftError {
    #[error("cannot load {library}: {reason} (is the nftables package installed?)")]
    Load {
        library: &'static str,
        reason: String,
    },
    #[error("{library} has no symbol {symbol}")]
    Symbol {
        library: &'static str,
        symbol: &'static str,
    },
    #[error("libnftables could not create a context")]
    Context,
    #[error("the nft payload for {what} contains a NUL byte")]
    Nul { what: String },
    #[error("cannot run {program} (is the nftables package installed?): {source}")]
    Spawn {
        program: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot talk to {program} for {what}: {source}")]
    Pipe {
        program: PathBuf,
        what: String,
        source: std::io::Error,
    },
    #[error("nftables refused {what}: {message}")]
    Failed { what: String, message: String },
    #[error("cannot read nftables' JSON answer for {what}: {source}")]
    Json {
        what: String,
        source: serde_json::Error,
    },
}

/// Runs nft payloads, one at a time.
#[derive(Debug)]
pub struct Nft {
    inner: Mutex<Inner>,
}

#[derive(Debug)]
enum Inner {
    Library(LibContext),
    Command(PathBuf),
}

impl Nft {
    pub fn new(backend: &NftBackend) -> Result<Self, NftError> {
        let inner = match backend {
            NftBackend::Library => Inner::Library(LibContext::new()?),
            NftBackend::Command(path) => Inner::Command(path.clone()),
            NftBackend::Auto => match LibContext::new() {
                Ok(ctx) => Inner::Library(ctx),
                Err(err) => {
                    tracing::debug!(error = %err, "libnftables unavailable; running the nft command");
                    Inner::Command(PathBuf::from("nft"))
                }
            },
        };
        Ok(Self {
            inner: Mutex::new(inner),
        })
    }

    /// Whether batches run in-process.
    pub fn is_library(&self) -> bool {
        matches!(*self.lock(), Inner::Library(_))
    }

    /// Applies `batch` as one transaction. `what` names it in errors ("install table x").
    pub fn apply(
        &self,
        batch: &nftables::schema::Nftables<'_>,
        what: &str,
    ) -> Result<(), NftError> {
        let payload = serde_json::to_string(batch).map_err(|source| NftError::Json {
            what: what.to_owned(),
            source,
        })?;
        self.run(&payload, what).map(drop)
    }

    /// Runs a command (JSON or nft syntax) and parses its JSON output.
    pub fn query(&self, command: &str, what: &str) -> Result<serde_json::Value, NftError> {
        let out = self.run(command, what)?;
        serde_json::from_str(&out).map_err(|source| NftError::Json {
            what: what.to_owned(),
            source,
        })
    }

    /// Names of all tables of `family` ("inet", "ip", ...).
    pub fn tables(&self, family: &str) -> Result<Vec<String>, NftError> {
        let listing = self.query(&format!("list tables {family}"), "listing tables")?;
        Ok(objects(&listing, "table")
            .filter_map(|t| t["name"].as_str().map(str::to_owned))
            .collect())
    }

    fn run(&self, payload: &str, what: &str) -> Result<String, NftError> {
        match &mut *self.lock() {
            Inner::Library(ctx) => ctx.run(payload, what),
            Inner::Command(program) => run_command(program, payload, what),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic mid-run leaves nothing half-done here: each run is self-contained.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The objects of `kind` ("table", "rule", ...) in an `nft -j` listing.
pub fn objects<'a>(
    listing: &'a serde_json::Value,
    kind: &'a str,
) -> impl Iterator<Item = &'a serde_json::Value> + 'a {
    listing["nftables"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(move |obj| obj.get(kind))
}

fn run_command(program: &PathBuf, payload: &str, what: &str) -> Result<String, NftError> {
    let pipe_err = |source| NftError::Pipe {
        program: program.clone(),
        what: what.to_owned(),
        source,
    };
    let mut child = Command::new(program)
        .args(["-j", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| NftError::Spawn {
            program: program.clone(),
            source,
        })?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(payload.as_bytes()).map_err(pipe_err)?;
    }
    let out = child.wait_with_output().map_err(pipe_err)?;
    if !out.status.success() {
        let message = String::from_utf8_lossy(&out.stderr).trim().to_owned();
        return Err(NftError::Failed {
            what: what.to_owned(),
            message: format!("{message} ({})", out.status),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

const LIBRARY: &str = "libnftables.so.1";

/// `nft_ctx_output_set_flags` flag that makes libnftables print JSON and, in 1.0.x, also parse
/// its input as JSON first (NFT_CTX_OUTPUT_JSON in libnftables.h).
const NFT_CTX_OUTPUT_JSON: c_uint = 1 << 4;

type CtxNew = unsafe extern "C" fn(c_uint) -> *mut c_void;
type CtxFree = unsafe extern "C" fn(*mut c_void);
type CtxSetFlags = unsafe extern "C" fn(*mut c_void, c_uint);
type CtxBuffer = unsafe extern "C" fn(*mut c_void) -> c_int;
type CtxGetBuffer = unsafe extern "C" fn(*mut c_void) -> *const c_char;
type RunCmd = unsafe extern "C" fn(*mut c_void, *const c_char) -> c_int;

/// The libnftables entry points hearth uses, resolved once per process.
#[derive(Debug, Clone, Copy)]
struct LibFns {
    ctx_new: CtxNew,
    ctx_free: CtxFree,
    set_output_flags: CtxSetFlags,
    buffer_output: CtxBuffer,
    buffer_error: CtxBuffer,
    output_buffer: CtxGetBuffer,
    error_buffer: CtxGetBuffer,
    run_cmd: RunCmd,
}

fn lib_fns() -> Result<LibFns, NftError> {
    static FNS: OnceLock<Result<LibFns, String>> = OnceLock::new();
    FNS.get_or_init(load_lib)
        .clone()
        .map_err(|reason| NftError::Load {
            library: LIBRARY,
            reason,
        })
}

fn load_lib() -> Result<LibFns, String> {
    let name = CString::new(LIBRARY).map_err(|e| e.to_string())?;
    // SAFETY: `name` is a valid NUL-terminated string. The handle is never closed, so symbols
    // resolved from it stay valid for the life of the process.
    let handle = unsafe { libc::dlopen(name.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
    if handle.is_null() {
        return Err(dl_error());
    }
    // In each call below the fn type is the C signature of that symbol in libnftables.h (the
    // stable ABI of soname .1).
    // SAFETY: `struct nft_ctx *nft_ctx_new(uint32_t flags)`.
    let ctx_new = unsafe { sym::<CtxNew>(handle, "nft_ctx_new") }?;
    // SAFETY: `void nft_ctx_free(struct nft_ctx *ctx)`.
    let ctx_free = unsafe { sym::<CtxFree>(handle, "nft_ctx_free") }?;
    // SAFETY: `void nft_ctx_output_set_flags(struct nft_ctx *ctx, unsigned int flags)`.
    let set_output_flags = unsafe { sym::<CtxSetFlags>(handle, "nft_ctx_output_set_flags") }?;
    // SAFETY: `int nft_ctx_buffer_output(struct nft_ctx *ctx)`.
    let buffer_output = unsafe { sym::<CtxBuffer>(handle, "nft_ctx_buffer_output") }?;
    // SAFETY: `int nft_ctx_buffer_error(struct nft_ctx *ctx)`.
    let buffer_error = unsafe { sym::<CtxBuffer>(handle, "nft_ctx_buffer_error") }?;
    // SAFETY: `const char *nft_ctx_get_output_buffer(struct nft_ctx *ctx)`.
    let output_buffer = unsafe { sym::<CtxGetBuffer>(handle, "nft_ctx_get_output_buffer") }?;
    // SAFETY: `const char *nft_ctx_get_error_buffer(struct nft_ctx *ctx)`.
    let error_buffer = unsafe { sym::<CtxGetBuffer>(handle, "nft_ctx_get_error_buffer") }?;
    // SAFETY: `int nft_run_cmd_from_buffer(struct nft_ctx *nft, const char *buf)`.
    let run_cmd = unsafe { sym::<RunCmd>(handle, "nft_run_cmd_from_buffer") }?;
    Ok(LibFns {
        ctx_new,
        ctx_free,
        set_output_flags,
        buffer_output,
        buffer_error,
        output_buffer,
        error_buffer,
        run_cmd,
    })
}

/// Resolves `symbol` in the library at `handle` as a function pointer of type `F`.
///
/// # Safety
/// `handle` must be a live dlopen handle and `F` an `extern "C"` fn pointer type matching the
/// symbol's C signature.
unsafe fn sym<F: Copy>(handle: *mut c_void, symbol: &str) -> Result<F, String> {
    const { assert!(std::mem::size_of::<F>() == std::mem::size_of::<*mut c_void>()) };
    let name = CString::new(symbol).map_err(|e| e.to_string())?;
    // SAFETY: `handle` is live (caller's contract) and `name` is a valid NUL-terminated string.
    let ptr = unsafe { libc::dlsym(handle, name.as_ptr()) };
    if ptr.is_null() {
        return Err(format!("no symbol {symbol}"));
    }
    // SAFETY: `ptr` is the non-NULL address of `symbol`, and `F` is a fn pointer type of the
    // same size matching its signature (caller's contract).
    Ok(unsafe { std::mem::transmute_copy::<*mut c_void, F>(&ptr) })
}

fn dl_error() -> String {
    // SAFETY: dlerror takes no arguments; it returns NULL or a thread-local message string.
    let msg = unsafe { libc::dlerror() };
    if msg.is_null() {
        return "unknown dlopen error".to_owned();
    }
    // SAFETY: a non-NULL dlerror result is a NUL-terminated string valid until the next dl* call
    // on this thread; it is copied at once.
    unsafe { CStr::from_ptr(msg) }
        .to_string_lossy()
        .into_owned()
}

/// One libnftables context with buffered output and errors. Not thread-safe in C: [`Nft`] keeps
/// it behind a mutex.
#[derive(Debug)]
struct LibContext {
    fns: LibFns,
    ctx: *mut c_void,
}

// SAFETY: the context is a heap object owned solely by this value; libnftables keeps no
// thread-local state for it, and every use goes through `&mut self` (under `Nft`'s mutex).
unsafe impl Send for LibContext {}

impl LibContext {
    fn new() -> Result<Self, NftError> {
        let fns = lib_fns()?;
        // SAFETY: nft_ctx_new takes a flags word (0 = defaults) and returns an owned context.
        let ctx = unsafe { (fns.ctx_new)(0) };
        if ctx.is_null() {
            return Err(NftError::Context);
        }
        let this = Self { fns, ctx };
        // SAFETY: `ctx` is the live context created above.
        unsafe { (fns.set_output_flags)(ctx, NFT_CTX_OUTPUT_JSON) };
        // SAFETY: as above; buffering makes output readable with nft_ctx_get_output_buffer.
        let out_rc = unsafe { (fns.buffer_output)(ctx) };
        // SAFETY: as above, for error messages.
        let err_rc = unsafe { (fns.buffer_error)(ctx) };
        if out_rc != 0 || err_rc != 0 {
            return Err(NftError::Context);
        }
        Ok(this)
    }

    fn run(&mut self, payload: &str, what: &str) -> Result<String, NftError> {
        let command = CString::new(payload).map_err(|_| NftError::Nul {
            what: what.to_owned(),
        })?;
        // SAFETY: `ctx` is live and exclusively borrowed; `command` is NUL-terminated and outlives
        // the call, which copies it.
        let rc = unsafe { (self.fns.run_cmd)(self.ctx, command.as_ptr()) };
        let output = self.take(self.fns.output_buffer);
        let errors = self.take(self.fns.error_buffer);
        if rc != 0 {
            let message = errors.trim().replace("\n\n", "\n");
            return Err(NftError::Failed {
                what: what.to_owned(),
                message,
            });
        }
        Ok(output)
    }

    /// Copies out (and so resets) one of the context's buffers.
    fn take(&mut self, getter: CtxGetBuffer) -> String {
        // SAFETY: `ctx` is live; the getter returns its internal buffer (or NULL), valid until the
        // next call on the context.
        let ptr = unsafe { getter(self.ctx) };
        if ptr.is_null() {
            return String::new();
        }
        // SAFETY: a non-NULL buffer is a NUL-terminated string owned by the context; it is copied
        // before anything else touches the context.
        unsafe { CStr::from_ptr(ptr) }
            .to_string_lossy()
            .into_owned()
    }
}

impl Drop for LibContext {
    fn drop(&mut self) {
        // SAFETY: `ctx` was created by nft_ctx_new, is freed exactly once, here.
        unsafe { (self.fns.ctx_free)(self.ctx) };
    }
}
