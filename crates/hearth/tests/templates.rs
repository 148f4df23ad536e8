//! Templates end to end with real components: images made by umoci (busybox-static as their
//! only binary), copied by skopeo into a real registry (Debian's docker-registry on loopback,
//! one open and one behind htpasswd), pulled and imported by `hearth template build`, and run
//! as OCI sandboxes under real runc.

mod common;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::OnceLock;

use common::{env, ok, run, stderr, Sandbox};

const TOOLS: [&str; 5] = ["umoci", "skopeo", "docker-registry", "busybox", "htpasswd"];

fn missing_tool() -> Option<&'static str> {
    TOOLS.into_iter().find(|tool| {
        !Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .is_ok_and(|o| o.status.success())
    })
}

macro_rules! require_tools {
    () => {
        if let Some(tool) = missing_tool() {
            eprintln!("SKIP: {tool} is not installed (scripts/setup-host.sh installs it)");
            return;
        }
    };
}

fn sh(script: &str, dir: &Path) {
    let out = Command::new("sh")
        .args(["-ec", script])
        .current_dir(dir)
        .output()
        .expect("sh");
    assert!(
        out.status.success(),
        "{script}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The images and registries every test shares (made once per test binary).
struct Fixture {
    dir: PathBuf,
    open_registry: String,
    auth_registry: String,
}

/// The registries' pids: the fixture is a static (never dropped), so they are killed when the
/// test binary exits.
static REGISTRIES: std::sync::Mutex<Vec<Child>> = std::sync::Mutex::new(Vec::new());

extern "C" fn kill_registries() {
    if let Ok(mut children) = REGISTRIES.lock() {
        for child in children.iter_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

static FIXTURE: OnceLock<Fixture> = OnceLock::new();

fn fixture() -> &'static Fixture {
    FIXTURE.get_or_init(|| {
        let dir = env().state_dir.parent().unwrap().join("images");
        std::fs::create_dir_all(&dir).unwrap();
        // v1: busybox, a tool found only in the image, a user, env and working dir.
        // v2 on top: the tool deleted (a whiteout) and /opt/data made opaque.
        sh(
            r#"
            umoci init --layout img
            umoci new --image img:v1
            umoci unpack --image img:v1 b >/dev/null
            r=b/rootfs
            mkdir -p $r/bin $r/usr/local/bin $r/etc $r/srv $r/opt/data
            cp "$(command -v busybox)" $r/bin/busybox
            for t in sh ls cat id env pwd echo touch rm test; do ln -s busybox $r/bin/$t; done
            printf '#!/bin/sh\necho only-in-image "$@"\n' > $r/usr/local/bin/only-in-image
            chmod 755 $r/usr/local/bin/only-in-image
            echo old > $r/opt/data/old
            printf 'root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/srv:/bin/sh\n' > $r/etc/passwd
            printf 'root:x:0:\napp:x:1000:\n' > $r/etc/group
            chown 1000:1000 $r/srv
            umoci repack --image img:v1 b >/dev/null
            umoci config --image img:v1 --config.env IMAGE_VAR=from-image --config.workingdir /srv --config.user app
            rm -rf b
            umoci config --image img:v1 --config.user 0:0 --tag v1root
            umoci tag --image img:v1 v2
            umoci unpack --image img:v2 b >/dev/null
            rm b/rootfs/usr/local/bin/only-in-image
            rm -rf b/rootfs/opt/data && mkdir b/rootfs/opt/data && echo new > b/rootfs/opt/data/new
            umoci repack --image img:v2 b >/dev/null
            rm -rf b
            skopeo copy -q oci:img:v1 docker-archive:v1-docker.tar:demo:v1
            skopeo copy -q oci:img:v1 oci-archive:v1-oci.tar
            htpasswd -Bbn tester s3cret > htpasswd
            "#,
            &dir,
        );
        // SAFETY: atexit only stores a pointer to an `extern "C" fn` that lives for the whole
        // program.
        assert_eq!(unsafe { libc::atexit(kill_registries) }, 0);
        let mut addrs = Vec::new();
        for (name, auth) in [("open", false), ("auth", true)] {
            let port = free_port();
            let root = dir.join(format!("registry-{name}"));
            std::fs::create_dir_all(&root).unwrap();
            let mut config = format!(
                "version: 0.1\nlog: {{level: error}}\nstorage: {{filesystem: {{rootdirectory: {}}}}}\nhttp: {{addr: 127.0.0.1:{port}}}\n",
                root.display()
            );
            if auth {
                config.push_str(&format!(
                    "auth: {{htpasswd: {{realm: hearth-test, path: {}}}}}\n",
                    dir.join("htpasswd").display()
                ));
            }
            let config_path = dir.join(format!("{name}.yml"));
            std::fs::write(&config_path, config).unwrap();
            let child = Command::new("docker-registry")
                .arg("serve")
                .arg(&config_path)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .expect("docker-registry");
            REGISTRIES.lock().unwrap().push(child);
            let addr = format!("127.0.0.1:{port}");
            for _ in 0..100 {
                if std::net::TcpStream::connect(&addr).is_ok() {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            addrs.push(addr);
        }
        sh(
            &format!(
                "skopeo copy -q oci:img:v1 docker://{}/demo:1 --dest-tls-verify=false\n\
                 skopeo copy -q oci:img:v2 docker://{}/demo:2 --dest-tls-verify=false\n\
                 skopeo copy -q oci:img:v1 docker://{}/demo:1 --dest-tls-verify=false --dest-creds tester:s3cret",
                addrs[0], addrs[0], addrs[1]
            ),
            &dir,
        );
        Fixture {
            dir,
            open_registry: addrs[0].clone(),
            auth_registry: addrs[1].clone(),
        }
    })
}

/// Builds template `name` from `from`, asserting success.
fn build(name: &str, from: &str, extra: &[&str]) {
    let mut args = vec!["template", "build", name, "--from", from];
    args.extend_from_slice(extra);
    ok(&args);
}

#[test]
fn a_pulled_template_runs_the_images_tool_env_workdir_and_user() {
    require_tools!();
    let fx = fixture();
    build(
        "pulled",
        &format!("{}/demo:1", fx.open_registry),
        &["--plain-http"],
    );
    let sb = Sandbox::create("tpl-pulled", &["--template", "pulled"]);
    let out = sb.sh_ok("only-in-image hi; id -u; id -g; pwd; echo $IMAGE_VAR");
    assert_eq!(out, "only-in-image hi\n1000\n1000\n/srv\nfrom-image\n");
    // The host's tools are not there: the root is the image's.
    let out = sb.sh("test -e /usr/bin/python3 || test -e /usr/bin/apt-get");
    assert!(!out.status.success(), "the host's /usr leaked in");
    // The image's user owns its home and /workspace; the image's root-owned dirs stay closed.
    sb.sh_ok("touch /srv/mine /workspace/mine");
    assert!(!sb.sh("touch /etc/not-mine").status.success());
}

#[test]
fn a_registry_behind_auth_needs_the_right_password() {
    require_tools!();
    let fx = fixture();
    let from = format!("{}/demo:1", fx.auth_registry);
    let out = run(&[
        "template",
        "build",
        "authed",
        "--from",
        &from,
        "--plain-http",
    ]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("refused the credentials"),
        "{}",
        stderr(&out)
    );
    for (password, works) in [("wrong\n", false), ("s3cret\n", true)] {
        let mut child = common::hearth()
            .args([
                "template",
                "build",
                "authed",
                "--from",
                &from,
                "--plain-http",
            ])
            .args(["--username", "tester", "--password-stdin"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(password.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert_eq!(out.status.success(), works, "{}", stderr(&out));
        // The password is never printed back.
        assert!(!String::from_utf8_lossy(&out.stderr).contains(password.trim()));
    }
    // Plain HTTP is for loopback only.
    let out = run(&[
        "template",
        "build",
        "x",
        "--from",
        "registry.example.com/demo:1",
        "--plain-http",
    ]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
}

#[test]
fn layouts_and_archives_import_and_a_wrong_digest_is_refused() {
    require_tools!();
    let fx = fixture();
    build(
        "layout",
        &format!("oci:{}:v1", fx.dir.join("img").display()),
        &[],
    );
    build(
        "docker-archive",
        &format!("docker-archive:{}", fx.dir.join("v1-docker.tar").display()),
        &[],
    );
    build(
        "oci-archive",
        &format!("oci-archive:{}", fx.dir.join("v1-oci.tar").display()),
        &[],
    );
    let shown: serde_json::Value =
        serde_json::from_str(&ok(&["template", "show", "docker-archive", "--json"])).unwrap();
    assert_eq!(shown["working_dir"], "/srv");
    assert_eq!(shown["uid"], 1000);

    // A copy of the layout with one byte of its layer blob changed.
    let bad = fx.dir.join("img-corrupt");
    sh(
        &format!(
            "rm -rf {bad} && cp -a {src} {bad}",
            bad = bad.display(),
            src = fx.dir.join("img").display()
        ),
        &fx.dir,
    );
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(bad.join("index.json")).unwrap()).unwrap();
    let v1 = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == "v1")
        .unwrap();
    let manifest_hex = v1["digest"].as_str().unwrap().trim_start_matches("sha256:");
    let manifest: serde_json::Value = serde_json::from_slice(
        &std::fs::read(bad.join("blobs/sha256").join(manifest_hex)).unwrap(),
    )
    .unwrap();
    let layer_hex = manifest["layers"][0]["digest"]
        .as_str()
        .unwrap()
        .trim_start_matches("sha256:");
    // Flip a byte of the blob; build into a state dir of its own, whose layer store has
    // nothing cached (the shared one has this layer from the other tests).
    let blob = bad.join("blobs/sha256").join(layer_hex);
    let mut bytes = std::fs::read(&blob).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&blob, bytes).unwrap();
    let own_state = fx.dir.join("state-corrupt");
    let out = common::hearth()
        .env("HEARTH_STATE_DIR", &own_state)
        .args(["template", "build", "corrupt", "--from"])
        .arg(format!("oci:{}:v1", bad.display()))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(stderr(&out).contains("is sha256:"), "{}", stderr(&out));
    let layers =
        std::fs::read_dir(own_state.join("templates/layers")).map_or(0, |entries| entries.count());
    assert_eq!(layers, 0, "nothing half-written in the layer store");
    let tmp = std::fs::read_dir(own_state.join("templates/tmp")).map_or(0, |e| e.count());
    assert_eq!(tmp, 0, "no partial download or layer left behind");
    assert!(!run(&["template", "show", "corrupt"]).status.success());
}

#[test]
fn whiteouts_and_opaque_dirs_of_upper_layers_are_honoured() {
    require_tools!();
    let fx = fixture();
    build(
        "whiteouts",
        &format!("{}/demo:2", fx.open_registry),
        &["--plain-http"],
    );
    let sb = Sandbox::create("tpl-whiteouts", &["--template", "whiteouts"]);
    let out = sb.sh_ok("test ! -e /usr/local/bin/only-in-image && ls /opt/data");
    assert_eq!(out, "new\n");
}

#[test]
fn two_sandboxes_share_layers_not_writes_and_removal_waits_for_them() {
    require_tools!();
    let fx = fixture();
    build(
        "shared",
        &format!("oci:{}:v1", fx.dir.join("img").display()),
        &[],
    );
    let a = Sandbox::create("tpl-share-a", &["--template", "shared"]);
    let b = Sandbox::create("tpl-share-b", &["--template", "shared"]);
    a.sh_ok("echo a > /srv/note && echo a > /workspace/note");
    let out = b.sh("cat /srv/note");
    assert!(!out.status.success(), "b saw a's write to the root");
    assert!(!b.sh("cat /workspace/note").status.success());
    // The layer in the store is untouched by a's write.
    let shown: serde_json::Value =
        serde_json::from_str(&ok(&["template", "show", "shared", "--json"])).unwrap();
    let layer = shown["layers"][0]["diff_id"]
        .as_str()
        .unwrap()
        .trim_start_matches("sha256:")
        .to_owned();
    let layer_dir = env().state_dir.join("templates/layers").join(&layer);
    assert!(!layer_dir.join("srv/note").exists());

    let out = run(&["template", "rm", "shared"]);
    assert_eq!(out.status.code(), Some(9), "{}", stderr(&out));
    assert!(stderr(&out).contains("in use by"), "{}", stderr(&out));
    drop(a);
    drop(b);
    ok(&["template", "rm", "shared"]);
    assert!(!run(&["template", "show", "shared"]).status.success());
    for id in ["tpl-share-a", "tpl-share-b"] {
        assert!(
            common::leftovers(id).is_empty(),
            "{:?}",
            common::leftovers(id)
        );
    }
}

#[test]
fn a_qemu_sandbox_boots_the_same_template() {
    require_tools!();
    if !common::static_guest().is_file() || !Path::new("/usr/bin/qemu-system-x86_64").exists() {
        eprintln!("SKIP: needs qemu-system-x86 and the static hearth-guest (scripts/test.sh)");
        return;
    }
    let fx = fixture();
    common::build_vm_image();
    let layout = fx.dir.join("img");
    // The image's user is not root: a VM runs template commands as root, so it says no.
    build("vm-user", &format!("oci:{}:v1", layout.display()), &[]);
    let out = run(&[
        "sandbox",
        "create",
        "--id",
        "tpl-vm-user",
        "--backend",
        "qemu",
        "--template",
        "vm-user",
    ]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(stderr(&out).contains("--backend oci"), "{}", stderr(&out));

    build("vm-root", &format!("oci:{}:v1root", layout.display()), &[]);
    let sb = Sandbox::create(
        "tpl-vm",
        &[
            "--backend",
            "qemu",
            "--memory",
            "512M",
            "--template",
            "vm-root",
        ],
    );
    let out = sb.sh_ok("only-in-image vm; echo $IMAGE_VAR; pwd; cat /proc/1/comm");
    assert_eq!(out, "only-in-image vm\nfrom-image\n/srv\ninit\n");
    drop(sb);
    assert!(common::leftovers("tpl-vm").is_empty());
}

/// `hearth template build --file` with `extra` args, from `dir`'s Hearthfile.
fn build_file(name: &str, dir: &Path) -> std::process::Output {
    run(&[
        "template",
        "build",
        name,
        "--file",
        dir.join("Hearthfile").to_str().unwrap(),
    ])
}

#[test]
fn a_hearthfile_builds_its_steps_in_sandboxes_and_caches_them() {
    require_tools!();
    let fx = fixture();
    let ctx = fx.dir.join("hf-context");
    std::fs::create_dir_all(ctx.join("conf")).unwrap();
    std::fs::write(ctx.join("app.txt"), "from-context\n").unwrap();
    std::fs::write(ctx.join("conf/a.conf"), "conf\n").unwrap();
    std::fs::write(
        ctx.join("Hearthfile"),
        "# built by the test\n\
         FROM oci:../img:v1root\n\
         ENV STAGE=built\n\
         RUN echo $STAGE > /opt/built.txt && rm /usr/local/bin/only-in-image \\\n\
         \x20 && rm -rf /opt/data && mkdir /opt/data && echo fresh > /opt/data/f\n\
         COPY app.txt conf /srv/\n\
         WORKDIR /srv\n\
         USER app\n\
         RUN id -u > /srv/whoami\n",
    )
    .unwrap();
    let out = build_file("from-file", &ctx);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!stderr(&out).contains("/6: cached"), "{}", stderr(&out));

    let sb = Sandbox::create("tpl-file", &["--template", "from-file"]);
    let out = sb.sh_ok(
        "cat /opt/built.txt; test ! -e /usr/local/bin/only-in-image && ls /opt/data; \
         cat /srv/app.txt /srv/a.conf /srv/whoami; pwd; id -u; echo $STAGE",
    );
    assert_eq!(
        out,
        "built\nf\nfrom-context\nconf\n1000\n/srv\n1000\nbuilt\n"
    );
    drop(sb);

    // Unchanged: both RUN steps come from the cache.
    let out = build_file("from-file", &ctx);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        stderr(&out).matches("/6: cached").count(),
        2,
        "{}",
        stderr(&out)
    );
    // A changed COPY source reruns the RUN after it, not the one before.
    std::fs::write(ctx.join("app.txt"), "changed\n").unwrap();
    let out = build_file("from-file", &ctx);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        stderr(&out).matches("/6: cached").count(),
        1,
        "{}",
        stderr(&out)
    );

    // A failing RUN fails the build with its exit code and leaves no sandbox behind.
    let bad = fx.dir.join("hf-bad");
    std::fs::create_dir_all(&bad).unwrap();
    std::fs::write(
        bad.join("Hearthfile"),
        "FROM oci:../img:v1root\nRUN echo doomed; exit 3\n",
    )
    .unwrap();
    let out = build_file("hf-bad", &bad);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(stderr(&out).contains("exit code 3"), "{}", stderr(&out));
    assert!(stderr(&out).contains("doomed"), "{}", stderr(&out));
    assert!(!run(&["template", "show", "hf-bad"]).status.success());
    let listed: serde_json::Value =
        serde_json::from_str(&ok(&["sandbox", "ls", "--json"])).unwrap();
    assert!(
        !listed
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["spec"]["template"]["name"] == "hf-bad"),
        "{listed}"
    );
    // A COPY that leaves the context is refused.
    std::fs::write(
        bad.join("Hearthfile"),
        "FROM oci:../img:v1root\nCOPY ../img/index.json /x\n",
    )
    .unwrap();
    let out = build_file("hf-bad", &bad);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(stderr(&out).contains("build context"), "{}", stderr(&out));
}

#[test]
fn a_task_on_a_template_without_python3_says_so() {
    require_tools!();
    let fx = fixture();
    build(
        "no-python",
        &format!("oci:{}:v1", fx.dir.join("img").display()),
        &[],
    );
    let out = common::hearth()
        .env_remove("OPENAI_BASE_URL")
        .env_remove("OPENAI_API_KEY")
        .env_remove("HEARTH_SCRIPTED_FIXTURE")
        .args(["run", "Say hello.", "--template", "no-python"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("no-python has no python3"),
        "{}",
        stderr(&out)
    );
}
