//! Shared by the `net_*` tests: unique ids, a shared manager, test hosts in namespaces the test
//! makes, and clients that run inside a sandbox's namespace. Everything is removed by drop guards,
//! also when a test panics.
//!
//! Traffic rule: the sandbox's traffic only ever reaches namespaces made here. Each sandbox's
//! veth gets a policy-routing rule (`ip rule iif <veth> lookup <table>`) whose table sends
//! everything into an "upstream" test namespace, so even a destination the firewall wrongly let
//! through would land in that namespace, never on a real network. The host's own routing table is
//! not touched.

#![allow(dead_code)]

pub mod test_dns;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::Duration;

use hearth_id::SandboxId;
use hearth_net::{
    netns, AddressPool, FirewallConfig, FirewallManager, MemorySlotStore, NetError, NetPolicy,
    SandboxNetwork,
};

/// The test pool, apart from the default one other code on this machine may use.
pub const TEST_POOL: &str = "10.239.0.0/16";
pub const GATEWAY_PORT: u16 = 14180;
pub const DNS_PORT: u16 = 10053;

static NEXT: AtomicU32 = AtomicU32::new(0);

fn next() -> u32 {
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// The id prefix of this test process: reconciliation in tests is scoped to it.
pub fn scope() -> String {
    format!("t{}-", std::process::id())
}

pub fn unique_id(tag: &str) -> SandboxId {
    SandboxId::parse(&format!("{}{tag}-{}", scope(), next())).expect("valid test id")
}

/// A reconciliation scope: objects of this process's sandboxes whose tag starts with `tag`, so a
/// test reconciling does not touch the sandboxes of tests running beside it.
pub fn in_scope(tag: &str) -> impl Fn(Option<&SandboxId>) -> bool {
    let prefix = format!("{}{tag}", scope());
    move |owner| owner.is_some_and(|id| id.as_str().starts_with(&prefix))
}

pub fn test_config() -> FirewallConfig {
    FirewallConfig {
        pool: AddressPool::new(TEST_POOL.parse().unwrap(), 30).unwrap(),
        gateway_ports: vec![GATEWAY_PORT],
        dns_port: DNS_PORT,
        ..FirewallConfig::default()
    }
}

/// One manager per test process, as in the daemon: one slot store, no slot handed out twice.
pub fn manager() -> &'static FirewallManager {
    static MANAGER: OnceLock<FirewallManager> = OnceLock::new();
    MANAGER.get_or_init(|| {
        FirewallManager::new(test_config(), Arc::new(MemorySlotStore::new())).expect("manager")
    })
}

/// A sandbox's network, torn down on drop.
pub struct Sandbox {
    pub id: SandboxId,
    pub net: SandboxNetwork,
    mgr: &'static FirewallManager,
}

impl Sandbox {
    pub fn new(tag: &str, policy: &NetPolicy) -> Self {
        let id = unique_id(tag);
        let net = manager().setup(&id, policy).expect("setup");
        Self {
            id,
            net,
            mgr: manager(),
        }
    }

    pub fn host_addr(&self) -> Ipv4Addr {
        self.net.link.as_ref().expect("link").host_addr
    }

    pub fn addr(&self) -> Ipv4Addr {
        self.net.link.as_ref().expect("link").sandbox_addr
    }

    pub fn veth(&self) -> String {
        self.id.names().veth_host
    }

    /// A TCP connection from inside the sandbox: the first bytes the peer sends, or the error.
    pub fn connect(&self, to: SocketAddr) -> Result<String, std::io::Error> {
        tcp_from(&self.net.netns, to)
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        if let Err(err) = self.mgr.teardown(&self.id) {
            eprintln!("teardown of {} failed: {err}", self.id);
        }
    }
}

/// An error of work done inside a namespace: entering it, or the work itself.
#[derive(Debug)]
pub enum InNs {
    Net(NetError),
    Io(std::io::Error),
}

impl From<NetError> for InNs {
    fn from(err: NetError) -> Self {
        Self::Net(err)
    }
}

impl From<std::io::Error> for InNs {
    fn from(err: std::io::Error) -> Self {
        Self::Io(err)
    }
}

impl From<InNs> for std::io::Error {
    fn from(err: InNs) -> Self {
        match err {
            InNs::Io(err) => err,
            InNs::Net(err) => std::io::Error::other(err),
        }
    }
}

/// Connects from the namespace at `ns` (a thread inside it makes the socket), sends a request
/// and returns what comes back.
pub fn tcp_from(ns: &Path, to: SocketAddr) -> Result<String, std::io::Error> {
    let mut stream = netns::in_netns(ns, |_| {
        Ok::<_, InNs>(TcpStream::connect_timeout(&to, Duration::from_millis(700))?)
    })?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    stream.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
    let mut reply = String::new();
    stream.read_to_string(&mut reply)?;
    Ok(reply)
}

/// A UDP round trip from inside the namespace at `ns`.
pub fn udp_from(ns: &Path, to: SocketAddr) -> Result<String, std::io::Error> {
    let sock = netns::in_netns(ns, |_| Ok::<_, InNs>(UdpSocket::bind("0.0.0.0:0")?))?;
    sock.set_read_timeout(Some(Duration::from_millis(700)))?;
    sock.send_to(b"ping", to)?;
    let mut buf = [0u8; 64];
    let (n, _) = sock.recv_from(&mut buf)?;
    Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
}

/// A tiny server answering every TCP connection with `reply` (or a UDP echo), stopped on drop.
pub struct TestServer {
    pub addr: SocketAddr,
    pub hits: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl TestServer {
    /// Listens on `addr` inside the namespace at `ns` (or in the host's, with `None`).
    pub fn tcp(ns: Option<&Path>, addr: SocketAddr, reply: &'static str) -> Self {
        let bind = |_: &Path| Ok::<_, InNs>(TcpListener::bind(addr)?);
        let listener = match ns {
            Some(ns) => netns::in_netns(ns, bind).expect("bind test server"),
            None => bind(Path::new("host")).expect("bind test server"),
        };
        listener.set_nonblocking(true).unwrap();
        Self::spawn(addr, move |hits, stop| {
            while !stop.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut conn, _)) => {
                        hits.fetch_add(1, Ordering::Relaxed);
                        let _ = conn.set_nonblocking(false);
                        let _ = conn.set_read_timeout(Some(Duration::from_millis(500)));
                        let mut buf = [0u8; 512];
                        let _ = conn.read(&mut buf);
                        let _ =
                            conn.write_all(format!("HTTP/1.0 200 OK\r\n\r\n{reply}").as_bytes());
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        })
    }

    /// Echoes UDP datagrams on `addr` in the host's namespace.
    pub fn udp_echo(addr: SocketAddr) -> Self {
        let sock = UdpSocket::bind(addr).expect("bind udp test server");
        sock.set_read_timeout(Some(Duration::from_millis(20)))
            .unwrap();
        Self::spawn(addr, move |hits, stop| {
            let mut buf = [0u8; 512];
            while !stop.load(Ordering::Relaxed) {
                if let Ok((n, from)) = sock.recv_from(&mut buf) {
                    hits.fetch_add(1, Ordering::Relaxed);
                    let _ = sock.send_to(&buf[..n], from);
                }
            }
        })
    }

    fn spawn(
        addr: SocketAddr,
        serve: impl FnOnce(Arc<AtomicUsize>, Arc<AtomicBool>) + Send + 'static,
    ) -> Self {
        let hits = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (h, s) = (hits.clone(), stop.clone());
        let thread = std::thread::spawn(move || serve(h, s));
        Self {
            addr,
            hits,
            stop,
            thread: Some(thread),
        }
    }

    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::Relaxed)
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The "outside world" of one sandbox: a namespace holding test hosts, reachable from the host
/// through its own veth, and a policy route sending all of the sandbox's forwarded traffic there.
pub struct Upstream {
    pub ns: String,
    pub path: PathBuf,
    link: String,
    table: u32,
    rules: Vec<String>,
}

impl Upstream {
    /// Makes the namespace with `hosts` as addresses on its `lo`, and routes everything the
    /// sandboxes behind `veths` send past the host into it.
    pub fn new(hosts: &[Ipv4Addr], veths: &[String]) -> Self {
        let n = next();
        let pid = std::process::id();
        let ns = format!("htest-up-{pid}-{n}");
        let link = format!("hts{:x}{}", pid & 0xffff, n % 100);
        let table = 20000 + (pid % 500) * 64 + n % 64;
        let path = netns::create(&ns).expect("upstream namespace");
        let mut up = Self {
            ns: ns.clone(),
            path,
            link: link.clone(),
            table,
            rules: Vec::new(),
        };
        // A /30 of 198.18.0.0/15 (benchmarking space) unique to this process and call.
        let base = u32::from(Ipv4Addr::new(198, 18, 0, 0)) + ((pid % 256) * 64 + n % 64) * 4;
        let (host_ip, peer_ip) = (
            Ipv4Addr::from(base + 1).to_string(),
            Ipv4Addr::from(base + 2).to_string(),
        );
        sh(&[
            "ip", "link", "add", &link, "type", "veth", "peer", "name", "up0", "netns", &ns,
        ]);
        sh(&["ip", "addr", "add", &format!("{host_ip}/30"), "dev", &link]);
        // Loose reverse-path filtering: replies from the test hosts arrive on this link while
        // the main table would route their addresses elsewhere.
        let _ = std::fs::write(format!("/proc/sys/net/ipv4/conf/{link}/rp_filter"), "2");
        sh(&["ip", "link", "set", &link, "up"]);
        sh(&[
            "ip",
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{peer_ip}/30"),
            "dev",
            "up0",
        ]);
        sh(&["ip", "-n", &ns, "link", "set", "up0", "up"]);
        for host in hosts {
            sh(&[
                "ip",
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{host}/32"),
                "dev",
                "lo",
            ]);
        }
        sh(&[
            "ip",
            "route",
            "add",
            "default",
            "via",
            &peer_ip,
            "dev",
            &link,
            "table",
            &table.to_string(),
        ]);
        for veth in veths {
            sh(&[
                "ip",
                "rule",
                "add",
                "iif",
                veth,
                "lookup",
                &table.to_string(),
                "priority",
                "1000",
            ]);
            up.rules.push(veth.clone());
        }
        up
    }

    pub fn serve(&self, addr: SocketAddr, reply: &'static str) -> TestServer {
        TestServer::tcp(Some(&self.path), addr, reply)
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        let table = self.table.to_string();
        for veth in &self.rules {
            let _ = Command::new("ip")
                .args(["rule", "del", "iif", veth, "lookup", &table])
                .status();
        }
        let _ = Command::new("ip")
            .args(["route", "flush", "table", &table])
            .status();
        let _ = Command::new("ip")
            .args(["link", "del", &self.link])
            .status();
        let _ = netns::remove(&self.ns);
    }
}

/// Runs a command that must succeed; returns its stdout.
pub fn sh(args: &[&str]) -> String {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .expect("run command");
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Whether `ip netns`, `ip link` and `nft list tables` show any object of `id`.
pub fn leftovers(id: &SandboxId) -> Vec<String> {
    let names = id.names();
    let mut found = Vec::new();
    if sh(&["ip", "netns", "list"])
        .lines()
        .any(|l| l.split_whitespace().next() == Some(names.netns.as_str()))
    {
        found.push(format!("netns {}", names.netns));
    }
    let links = sh(&["ip", "-o", "link"]);
    for link in [&names.veth_host, &names.veth_peer] {
        if links.contains(&format!(": {link}:")) || links.contains(&format!(": {link}@")) {
            found.push(format!("link {link}"));
        }
    }
    if sh(&["nft", "list", "tables"])
        .lines()
        .any(|l| l.trim() == format!("table inet {}", names.nft_table))
    {
        found.push(format!("table {}", names.nft_table));
    }
    found
}

/// Waits (up to 5 s) until `id` has no objects left and returns what is left then. A torn-down
/// sandbox's veth pair goes with its namespace, which the kernel reaps in the background.
pub fn leftovers_after_reap(id: &SandboxId) -> Vec<String> {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let left = leftovers(id);
        if left.is_empty() || std::time::Instant::now() > deadline {
            return left;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn sock(ip: Ipv4Addr, port: u16) -> SocketAddr {
    SocketAddr::from((ip, port))
}
