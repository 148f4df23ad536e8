//! The data plane's front door: which sandbox a request is for, whether it may talk to it, and
//! envd's two REST routes, `/health` and `/files`.
//!
//! The sandbox comes from the `E2b-Sandbox-Id` header (what the SDKs send with
//! `E2B_SANDBOX_URL`), or from a host name `49983-<id>.<domain>` (what they build from
//! `E2B_DOMAIN`). The request must carry that sandbox's envd access token (`X-Access-Token`),
//! compared in constant time; hearth always issues one.

use axum::body::Body;
use axum::extract::{Multipart, RawQuery, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::Bytes;
use hearth_sandbox::guest_client::{GuestClient, GuestClientError, MAX_FILE_BYTES};
use hearth_sandbox::SandboxId;
use serde_json::json;
use subtle::ConstantTimeEq;

use super::connect::{Code, ConnectError};
use super::E2bState;
use crate::store::E2bSandbox;

/// The sandbox's home: relative paths and `~` resolve here, commands start here.
pub const HOME: &str = "/workspace";

/// Why the data plane refused a request, before any RPC or file semantics.
#[derive(Debug)]
pub struct Refusal(pub ConnectError);

impl Refusal {
    fn new(code: Code, message: impl Into<String>) -> Self {
        Self(ConnectError::new(code, message))
    }
}

/// A sandbox the caller may use, with its guest.
#[derive(Debug, Clone)]
pub struct Target {
    pub row: E2bSandbox,
    pub guest: GuestClient,
}

fn sandbox_id(headers: &HeaderMap) -> Option<String> {
    if let Some(id) = headers.get("e2b-sandbox-id").and_then(|v| v.to_str().ok()) {
        return Some(id.trim().to_owned());
    }
    // `49983-<id>.<domain>[:port]`
    let host = headers.get(header::HOST)?.to_str().ok()?;
    let first = host.split('.').next()?;
    let (port, id) = first.split_once('-')?;
    (port.parse::<u16>().is_ok() && !id.is_empty()).then(|| id.to_owned())
}

/// Resolves and authorizes the request's sandbox. A sandbox that is not (or no longer) there
/// answers like E2B's proxy does ("... was not found", which the SDKs take as not running).
pub async fn target(state: &E2bState, headers: &HeaderMap) -> Result<Target, Refusal> {
    let raw = sandbox_id(headers).ok_or_else(|| {
        Refusal::new(
            Code::InvalidArgument,
            "no sandbox named: send the E2b-Sandbox-Id header (set E2B_SANDBOX_URL)",
        )
    })?;
    let not_found = || {
        Refusal::new(
            Code::Unavailable,
            format!("The sandbox {raw} was not found"),
        )
    };
    let id = SandboxId::parse(&raw).map_err(|_| not_found())?;
    let row = state
        .manager
        .store
        .get_e2b(&id)
        .await
        .map_err(|err| Refusal::new(Code::Internal, err.to_string()))?
        .ok_or_else(not_found)?;
    let given = headers
        .get("x-access-token")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !bool::from(given.as_bytes().ct_eq(row.access_token.as_bytes())) {
        return Err(Refusal::new(
            Code::Unauthenticated,
            format!("missing or wrong X-Access-Token for sandbox {raw}"),
        ));
    }
    if row.paused {
        return Err(Refusal::new(
            Code::Unavailable,
            format!("sandbox {raw} is paused; connect to it to resume it"),
        ));
    }
    let guest = state.manager.guest(&id).await.map_err(|_| not_found())?;
    Ok(Target { row, guest })
}

/// The user a call runs as. A sandbox has one user: root of its own user namespace, an
/// unprivileged id on the host. E2B's `user` and `root` both mean it; other names are refused.
pub fn check_user(name: Option<&str>) -> Result<(), ConnectError> {
    match name {
        None | Some("" | "user" | "root") => Ok(()),
        Some(other) => Err(ConnectError::new(
            Code::InvalidArgument,
            format!(
                "user {other:?} is not supported by hearth: a sandbox has one user (root in its \
                 own user namespace); use \"user\" or \"root\""
            ),
        )),
    }
}

/// The user named by an RPC's `Authorization: Basic base64(user:)`.
pub fn rpc_user(headers: &HeaderMap) -> Result<(), ConnectError> {
    use base64::Engine as _;
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Ok(());
    };
    let user = value
        .to_str()
        .ok()
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b| {
            base64::engine::general_purpose::STANDARD
                .decode(b.trim())
                .ok()
        })
        .and_then(|raw| String::from_utf8(raw).ok())
        .map(|pair| pair.split(':').next().unwrap_or("").to_owned())
        .ok_or_else(|| {
            ConnectError::new(Code::Unauthenticated, "Authorization is not Basic <user:>")
        })?;
    check_user(Some(&user))
}

/// A path as envd resolves it: `~` and relative paths under the home, `.` and `..` folded.
pub fn resolve(path: &str) -> Result<String, ConnectError> {
    if path.contains('\0') {
        return Err(ConnectError::new(
            Code::InvalidArgument,
            "a path contains a NUL byte",
        ));
    }
    let joined = if path == "~" || path.is_empty() {
        HOME.to_owned()
    } else if let Some(rest) = path.strip_prefix("~/") {
        format!("{HOME}/{rest}")
    } else if path.starts_with('~') {
        return Err(ConnectError::new(
            Code::InvalidArgument,
            format!("path {path:?}: only the sandbox's own user's ~ is known"),
        ));
    } else if path.starts_with('/') {
        path.to_owned()
    } else {
        format!("{HOME}/{path}")
    };
    let mut parts: Vec<&str> = Vec::new();
    for part in joined.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            other => parts.push(other),
        }
    }
    Ok(format!("/{}", parts.join("/")))
}

/// A guest failure as the Connect code envd would give.
pub fn guest_error(err: &GuestClientError) -> ConnectError {
    use hearth_proto::ErrorKind as K;
    let code = match err.guest_kind() {
        Some(K::NotFound) => Code::NotFound,
        Some(K::AlreadyExists) => Code::AlreadyExists,
        Some(K::PermissionDenied) => Code::PermissionDenied,
        Some(K::NotADirectory | K::IsADirectory | K::BadRequest) => Code::InvalidArgument,
        Some(K::TooLarge | K::NoSpace) => Code::ResourceExhausted,
        Some(_) => Code::Internal,
        None => match err {
            GuestClientError::TooLarge { .. } => Code::ResourceExhausted,
            // The guest's socket is gone or does not answer: the sandbox is not running.
            _ => Code::Unavailable,
        },
    };
    ConnectError::new(code, err.to_string())
}

/// envd's REST errors: `{"code": status, "message": ..}` with the status the SDK maps.
fn rest_error(err: &ConnectError) -> Response {
    let status = match err.code {
        Code::InvalidArgument => StatusCode::BAD_REQUEST,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists => StatusCode::CONFLICT,
        Code::ResourceExhausted => StatusCode::PAYLOAD_TOO_LARGE,
        Code::Unavailable => StatusCode::BAD_GATEWAY,
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    (
        status,
        Json(json!({"code": status.as_u16(), "message": err.message})),
    )
        .into_response()
}

/// `GET /health`: 204 while the sandbox's guest answers, 502 otherwise (as E2B's proxy).
pub async fn health(State(state): State<E2bState>, headers: HeaderMap) -> Response {
    let target = match target(&state, &headers).await {
        Ok(target) => target,
        Err(Refusal(err)) => return rest_error(&err),
    };
    match target.guest.health().await {
        Ok(_) => StatusCode::NO_CONTENT.into_response(),
        Err(err) => rest_error(&ConnectError::new(
            Code::Unavailable,
            format!("The sandbox {} was not found: {err}", target.row.id),
        )),
    }
}

fn query_param(query: Option<&str>, name: &str) -> Result<Option<String>, ConnectError> {
    let pairs = hearth_proto::query::parse(query.unwrap_or(""))
        .map_err(|err| ConnectError::new(Code::InvalidArgument, format!("query: {err}")))?;
    Ok(pairs.into_iter().find(|(k, _)| k == name).map(|(_, v)| v))
}

/// `GET /files?path=..[&username=..]`: the file's bytes.
pub async fn download(
    State(state): State<E2bState>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    let result = async {
        let target = target(&state, &headers).await.map_err(|r| r.0)?;
        check_user(query_param(query.as_deref(), "username")?.as_deref())?;
        let path = query_param(query.as_deref(), "path")?
            .ok_or_else(|| ConnectError::new(Code::InvalidArgument, "missing ?path="))?;
        let path = resolve(&path)?;
        let data = target
            .guest
            .read_file(&path)
            .await
            .map_err(|err| guest_error(&err))?;
        Ok::<_, ConnectError>(data)
    }
    .await;
    match result {
        Ok(data) => (
            [(header::CONTENT_TYPE, "application/octet-stream")],
            Body::from(data),
        )
            .into_response(),
        Err(err) => rest_error(&err),
    }
}

/// Largest upload body: one file at the guest's limit, plus multipart framing.
// 64 MiB fits a usize on every target hearth builds for.
#[allow(clippy::cast_possible_truncation)]
pub const MAX_UPLOAD: usize = (MAX_FILE_BYTES as usize) + (1 << 20);

/// `POST /files`: multipart (one part per file, its filename the target path, `?path=` for a
/// single file) or a raw `application/octet-stream` body for `?path=`. Parents are made as
/// envd makes them.
pub async fn upload(
    State(state): State<E2bState>,
    RawQuery(query): RawQuery,
    request: Request,
) -> Response {
    let result = async {
        let target = target(&state, request.headers()).await.map_err(|r| r.0)?;
        check_user(query_param(query.as_deref(), "username")?.as_deref())?;
        let headers = request.headers();
        if headers
            .get(header::CONTENT_ENCODING)
            .is_some_and(|v| v.as_bytes() != b"identity")
        {
            return Err(ConnectError::new(
                Code::InvalidArgument,
                "Content-Encoding (gzip=True) is not supported by hearth: send files uncompressed",
            ));
        }
        if let Some(name) = headers
            .keys()
            .find(|name| name.as_str().starts_with("x-metadata-"))
        {
            return Err(ConnectError::new(
                Code::InvalidArgument,
                format!("file metadata ({name}) is not supported by hearth"),
            ));
        }
        let query_path = query_param(query.as_deref(), "path")?;
        let is_multipart = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("multipart/form-data"));
        let mut files: Vec<(String, Bytes)> = Vec::new();
        if is_multipart {
            let mut form = multipart_limited(request).await?;
            while let Some(field) = form.next_field().await.map_err(multipart_error)? {
                let path = field
                    .file_name()
                    .map(str::to_owned)
                    .or_else(|| query_path.clone())
                    .ok_or_else(|| {
                        ConnectError::new(Code::InvalidArgument, "a file part has no filename")
                    })?;
                let data = field.bytes().await.map_err(multipart_error)?;
                files.push((path, data));
            }
            // With ?path= and one part, the query names the target (envd's rule).
            if let (Some(path), [only]) = (&query_path, files.as_mut_slice()) {
                only.0.clone_from(path);
            }
        } else {
            let path = query_path.ok_or_else(|| {
                ConnectError::new(Code::InvalidArgument, "a raw upload needs ?path=")
            })?;
            let data = http_body_util::BodyExt::collect(http_body_util::Limited::new(
                request.into_body(),
                MAX_UPLOAD,
            ))
            .await
            .map_err(|err| ConnectError::new(Code::ResourceExhausted, err.to_string()))?
            .to_bytes();
            files.push((path, data));
        }
        if files.is_empty() {
            return Err(ConnectError::new(
                Code::InvalidArgument,
                "no file in the upload",
            ));
        }
        let mut written = Vec::new();
        for (raw_path, data) in files {
            let path = resolve(&raw_path)?;
            if let Some((parent, _)) = path.rsplit_once('/') {
                if !parent.is_empty() {
                    target
                        .guest
                        .mkdir(parent)
                        .await
                        .map_err(|err| guest_error(&err))?;
                }
            }
            target
                .guest
                .write_file(&path, data, 0o644)
                .await
                .map_err(|err| guest_error(&err))?;
            let name = path.rsplit('/').next().unwrap_or("").to_owned();
            written.push(json!({"name": name, "path": path, "type": "file"}));
        }
        Ok(written)
    }
    .await;
    match result {
        Ok(written) => Json(written).into_response(),
        Err(err) => rest_error(&err),
    }
}

fn multipart_error(err: axum::extract::multipart::MultipartError) -> ConnectError {
    let code = if err.status() == StatusCode::PAYLOAD_TOO_LARGE {
        Code::ResourceExhausted
    } else {
        Code::InvalidArgument
    };
    ConnectError::new(code, format!("multipart upload: {}", err.body_text()))
}

/// The multipart reader with the body limited to one file's worth.
async fn multipart_limited(request: Request) -> Result<Multipart, ConnectError> {
    use axum::extract::FromRequest;
    let (parts, body) = request.into_parts();
    let limited = Body::new(http_body_util::Limited::new(body, MAX_UPLOAD));
    let request = Request::from_parts(parts, limited);
    Multipart::from_request(request, &())
        .await
        .map_err(|err| ConnectError::new(Code::InvalidArgument, err.body_text()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_resolve_as_envd_does() {
        assert_eq!(resolve("~").unwrap(), "/workspace");
        assert_eq!(resolve("a/b").unwrap(), "/workspace/a/b");
        assert_eq!(resolve("~/x/../y").unwrap(), "/workspace/y");
        assert_eq!(resolve("/etc/../tmp/./f").unwrap(), "/tmp/f");
        assert_eq!(resolve("/../../x").unwrap(), "/x");
        assert!(resolve("~bob/x").is_err());
        assert!(resolve("a\0b").is_err());
    }

    #[test]
    fn the_sandbox_comes_from_the_header_or_the_host_name() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::HOST,
            "49983-sb-abc.e2b.example:443".parse().unwrap(),
        );
        assert_eq!(sandbox_id(&headers).as_deref(), Some("sb-abc"));
        headers.insert("e2b-sandbox-id", "sb-xyz".parse().unwrap());
        assert_eq!(sandbox_id(&headers).as_deref(), Some("sb-xyz"));
        let mut plain = HeaderMap::new();
        plain.insert(header::HOST, "127.0.0.1:49982".parse().unwrap());
        assert_eq!(sandbox_id(&plain), None);
    }

    #[test]
    fn users_other_than_the_sandboxs_own_are_refused_by_name() {
        assert!(check_user(Some("user")).is_ok() && check_user(Some("root")).is_ok());
        let err = check_user(Some("bob")).unwrap_err();
        assert!(err.message.contains("\"bob\""));
        let mut headers = HeaderMap::new();
        headers.insert(header::AUTHORIZATION, "Basic Ym9iOg==".parse().unwrap());
        assert!(rpc_user(&headers).is_err());
        headers.insert(header::AUTHORIZATION, "Basic cm9vdDo=".parse().unwrap());
        assert!(rpc_user(&headers).is_ok());
    }
}
