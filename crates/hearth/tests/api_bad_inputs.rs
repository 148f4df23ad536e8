//! `hearth serve` refuses bad input with a 4xx and a JSON error naming the problem.

mod api_support;
mod common;

use api_support::*;
use serde_json::Value;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;

#[test]
fn bad_inputs_get_a_json_error_naming_the_problem() {
    let daemon = Daemon::start(None, 1);
    // Token: missing, wrong, wrong scheme.
    for headers in [
        vec![],
        vec![("Authorization", "Bearer nope")],
        vec![("Authorization", "Basic abc")],
    ] {
        let (status, out) = request(&daemon.addr, "GET", "/v1/tasks", &headers, None);
        assert_eq!(status, 401);
        let value: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(value["error"]["type"], "unauthorized");
    }
    let bad_token = request(
        &daemon.addr,
        "POST",
        "/v1/tasks",
        &[("Authorization", "Bearer x")],
        Some(b"{}"),
    );
    assert_eq!(bad_token.0, 401, "the token is checked before the body");

    let post = |body: &[u8], status, kind, mentions| {
        assert_error(
            &daemon,
            "POST",
            "/v1/tasks",
            Some(body),
            status,
            kind,
            mentions,
        )
    };
    post(b"{\"prompt\": ", 400, "malformed_json", "EOF");
    post(b"not json", 400, "malformed_json", "expected");
    post(
        br#"{"prompt": "x", "max_stepz": 3}"#,
        422,
        "invalid_request",
        "max_stepz",
    );
    post(
        br#"{"prompt": "x", "max_steps": "ten"}"#,
        422,
        "invalid_request",
        "invalid type",
    );
    post(br#"{"model": "m"}"#, 422, "invalid_request", "prompt");
    post(br#"{"prompt": "   "}"#, 422, "invalid_request", "prompt");
    post(
        br#"{"prompt": "x", "workspace": "/no/such/dir"}"#,
        422,
        "invalid_request",
        "workspace",
    );
    post(
        br#"{"prompt": "x", "workspace": "relative"}"#,
        422,
        "invalid_request",
        "workspace",
    );
    post(
        br#"{"prompt": "x", "timeout_s": 0}"#,
        422,
        "invalid_request",
        "timeout_s",
    );
    let big = format!("{{\"prompt\": \"{}\"}}", "x".repeat(2 << 20));
    post(big.as_bytes(), 413, "too_large", "limit");

    assert_error(
        &daemon,
        "GET",
        "/v1/tasks/Bad_Id",
        None,
        422,
        "invalid_request",
        "Bad_Id",
    );
    assert_error(
        &daemon,
        "GET",
        "/v1/tasks/t-000000000000",
        None,
        404,
        "not_found",
        "t-000000000000",
    );
    assert_error(
        &daemon,
        "GET",
        "/v1/tasks/t-000000000000/events",
        None,
        404,
        "not_found",
        "t-000000000000",
    );
    assert_error(
        &daemon,
        "POST",
        "/v1/tasks/t-000000000000/cancel",
        None,
        404,
        "not_found",
        "t-000000000000",
    );
    assert_error(
        &daemon,
        "GET",
        "/v1/nothing",
        None,
        404,
        "not_found",
        "/v1/nothing",
    );
    assert_error(
        &daemon,
        "DELETE",
        "/v1/tasks",
        None,
        405,
        "method_not_allowed",
        "DELETE",
    );
    assert_error(
        &daemon,
        "GET",
        "/v1/sandboxes/sb-nope00000000",
        None,
        404,
        "not_found",
        "sb-nope00000000",
    );
    assert_error(
        &daemon,
        "POST",
        "/v1/sandboxes",
        Some(br#"{"memory": "lots"}"#),
        422,
        "invalid_request",
        "memory",
    );
    assert_error(
        &daemon,
        "POST",
        "/v1/sandboxes/sb-nope00000000/exec",
        Some(br#"{"argv": []}"#),
        422,
        "invalid_request",
        "argv",
    );
    assert_error(
        &daemon,
        "GET",
        "/v1/sandboxes/sb-nope00000000/files",
        None,
        422,
        "invalid_request",
        "path",
    );

    // The Unix socket serves the same API, with the same token, and only root may connect.
    let mode = std::fs::metadata(&daemon.socket)
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
    let auth = format!("Bearer {}", daemon.token);
    let mut unix = UnixStream::connect(&daemon.socket).unwrap();
    write_request(
        &mut unix,
        "GET",
        "/v1/tasks/Bad_Id",
        &[("Authorization", &auth)],
        None,
    );
    let (status, _) = read_response(unix);
    assert_eq!(status, 422, "a bad id is bad input, as on the CLI");
    let mut unix = UnixStream::connect(&daemon.socket).unwrap();
    write_request(&mut unix, "GET", "/v1/tasks", &[], None);
    assert_eq!(read_response(unix).0, 401);
}

/// The API and the CLI build a sandbox's network policy with one set of rules, so they refuse
/// the same requests: an allow rule needs the allowlist mode, IPv6 can't be allowed, a
/// destination must parse. Nothing is created either way.
#[test]
fn the_api_and_the_cli_refuse_the_same_network_requests() {
    let daemon = Daemon::start(None, 1);
    let id = "rq-net-bad";
    for (mode, allow) in [
        (Some("gateway"), "10.0.0.0/8"),
        (Some("none"), "10.0.0.0/8:443"),
        (None, "2001:db8::/32"),
        (None, "not a destination"),
    ] {
        let mut body = serde_json::json!({"id": id, "allow": [allow]});
        let mut flags = vec!["sandbox", "create", "--id", id, "--allow", allow];
        if let Some(mode) = mode {
            body["net"] = mode.into();
            flags.extend(["--net", mode]);
        }
        let body = body.to_string();
        assert_error(
            &daemon,
            "POST",
            "/v1/sandboxes",
            Some(body.as_bytes()),
            422,
            "invalid_request",
            "allow",
        );
        let out = common::run(&flags);
        let err = common::stderr(&out);
        assert_eq!(out.status.code(), Some(3), "{flags:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.contains("--allow"), "{err}");
    }
    let (status, list) = daemon.json("GET", "/v1/sandboxes", None);
    assert_eq!(status, 200);
    assert!(!list.to_string().contains(id), "{list}");
}
