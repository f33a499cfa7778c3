//! The test harness shared by the integration tests: real `runnel` processes on temporary
//! data directories, with listeners on free ports read off the banner.
#![allow(dead_code)] // each test binary uses part of it

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{OnceLock, mpsc};
use std::time::{Duration, Instant};

/// How long a node may take to print its banner (debug build, busy machine).
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a node may take to stop after SIGTERM/SIGINT.
pub const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

/// Runs `command` with `stdin` written to its standard input; its output.
pub fn run_with_stdin(mut command: Command, stdin: &str) -> Output {
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the command");
    if let Some(mut input) = child.stdin.take() {
        input.write_all(stdin.as_bytes()).expect("write stdin");
    }
    child.wait_with_output().expect("wait for the command")
}

/// The binary with a predictable environment: no `RUNNEL_*` variables from the caller, log
/// level `info`, working directory `cwd`.
pub fn runnel(cwd: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_runnel"));
    for (name, _) in std::env::vars_os() {
        if name
            .to_string_lossy()
            .to_ascii_uppercase()
            .starts_with("RUNNEL_")
        {
            command.env_remove(name);
        }
    }
    command.env("RUST_LOG", "info").current_dir(cwd);
    command
}

/// Where the installer put the clients.
pub struct Clients {
    pub python: PathBuf,
    pub node_modules: PathBuf,
    pub kcat: PathBuf,
}

pub fn repository() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Installs the clients once per test binary (quick when they are already there).
pub fn clients() -> &'static Clients {
    static CLIENTS: OnceLock<Clients> = OnceLock::new();
    CLIENTS.get_or_init(|| {
        let output = Command::new(repository().join("scripts/install-test-clients"))
            .output()
            .expect("run scripts/install-test-clients");
        assert!(
            output.status.success(),
            "scripts/install-test-clients failed:\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let stdout = String::from_utf8_lossy(&output.stdout);
        let path = |name: &str| {
            stdout
                .lines()
                .find_map(|line| line.strip_prefix(&format!("{name}=")))
                .map(PathBuf::from)
                .unwrap_or_else(|| panic!("the installer printed no {name}= line:\n{stdout}"))
        };
        Clients {
            python: path("python"),
            node_modules: path("node_modules"),
            kcat: path("kcat"),
        }
    })
}

/// A client script of `tests/clients`, run by the test venv's Python.
pub fn python_client(script: &str) -> Command {
    let mut command = Command::new(&clients().python);
    command
        .arg(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/clients")
                .join(script),
        )
        .env_remove("LD_LIBRARY_PATH");
    command
}

/// confluent-kafka producing records `first..last` to `topic` (see `produce_keyed.py`).
pub fn produce_keyed(kafka: SocketAddr, topic: &str, first: usize, last: usize) -> Child {
    python_client("produce_keyed.py")
        .args([first.to_string(), last.to_string()])
        .env("RUNNEL_BOOTSTRAP", kafka.to_string())
        .env("RUNNEL_TOPIC", topic)
        .spawn()
        .expect("run produce_keyed.py")
}

/// Waits for a producer started by [`produce_keyed`]; it must have succeeded.
pub fn finish(child: Child) {
    let output = child.wait_with_output().expect("wait for the producer");
    assert!(output.status.success(), "the producer failed");
}

/// kcat's view of a topic: (partition, offset, key, value, headers as k=v,…) per record.
pub fn kcat_read(kafka: SocketAddr, topic: &str) -> Vec<(i32, i64, String, String, String)> {
    let output = Command::new(&clients().kcat)
        .env_remove("LD_LIBRARY_PATH")
        .args([
            "-b",
            &kafka.to_string(),
            "-C",
            "-t",
            topic,
            "-o",
            "beginning",
            "-e",
        ])
        .args(["-f", "%p|%o|%k|%s|%h\\n"])
        .output()
        .expect("run kcat");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let mut records: Vec<_> = String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(|line| {
            let fields: Vec<&str> = line.split('|').collect();
            assert_eq!(fields.len(), 5, "{line}");
            (
                fields[0].parse().unwrap(),
                fields[1].parse().unwrap(),
                fields[2].to_string(),
                fields[3].to_string(),
                fields[4].to_string(),
            )
        })
        .collect();
    records.sort();
    records
}

/// Runs the `runnel` CLI against `node`'s gRPC API with `stdin`; its stdout.
pub fn runnel_cli(node: &Node, dir: &Path, args: &[&str], stdin: &str) -> String {
    let mut command = runnel(dir);
    command
        .args(args)
        .env("RUNNEL_SERVER", node.grpc.expect("a grpc line").to_string());
    let output = run_with_stdin(command, stdin);
    assert!(
        output.status.success(),
        "runnel {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// Runs the `runnel` CLI against `node` and returns its output, whatever its exit code.
pub fn runnel_cli_output(node: &Node, dir: &Path, args: &[&str]) -> Output {
    let mut command = runnel(dir);
    command
        .args(args)
        .env("RUNNEL_SERVER", node.grpc.expect("a grpc line").to_string());
    run_with_stdin(command, "")
}

/// Waits up to `timeout` for `condition`.
pub fn wait_for(timeout: Duration, what: &str, condition: impl Fn() -> bool) {
    let deadline = Instant::now() + timeout;
    while !condition() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting: {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Builds a guest crate of the repository (`dir`, relative to it) for wasm32-wasip2 in
/// release; the component's path.
pub fn build_guest(dir: &str, name: &str) -> PathBuf {
    let host_target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repository().join("target"));
    let target = host_target.join("wasm-guests");
    let output = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string()))
        .args(["build", "--quiet", "--locked", "--release"])
        .args(["--target", "wasm32-wasip2", "--manifest-path"])
        .arg(repository().join(dir).join("Cargo.toml"))
        .arg("--target-dir")
        .arg(&target)
        .output()
        .expect("run cargo");
    assert!(
        output.status.success(),
        "building {dir}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    target.join(format!("wasm32-wasip2/release/{name}.wasm"))
}

/// A running node. Dropping it kills the process, so a failing test leaves nothing behind;
/// the node's log (stderr) is printed then, to explain the failure.
pub struct Node {
    pub child: Child,
    pub stdout_lines: mpsc::Receiver<String>,
    pub stderr_path: PathBuf,
    pub banner: Vec<String>,
    pub http: SocketAddr,
    /// The Kafka listener, from the banner's `kafka:` line.
    pub kafka: Option<SocketAddr>,
    /// The gRPC API, from the banner's `grpc:` line.
    pub grpc: Option<SocketAddr>,
}

impl Node {
    /// Starts `runnel <args>` and waits for the banner to end (`ready in N ms`).
    pub fn start(dir: &Path, args: &[&str]) -> Node {
        let mut node = Node::spawn(dir, args);
        node.read_banner();
        node
    }

    /// Like [`Node::start`], with more environment variables.
    pub fn start_with_env(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Node {
        let mut node = Node::spawn_with_env(dir, args, env);
        node.read_banner();
        node
    }

    /// Starts `runnel <args>` in `dir` without waiting for it to be ready.
    pub fn spawn(dir: &Path, args: &[&str]) -> Node {
        Node::spawn_with_env(dir, args, &[])
    }

    fn spawn_with_env(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Node {
        let stderr_path = dir.join("runnel.stderr");
        let stderr = std::fs::File::create(&stderr_path).expect("create the stderr file");
        let mut child = runnel(dir)
            .args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("spawn runnel");
        let stdout = child.stdout.take().expect("piped stdout");
        let (sender, stdout_lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if sender.send(line).is_err() {
                    return;
                }
            }
        });
        Node {
            child,
            stdout_lines,
            stderr_path,
            banner: Vec::new(),
            http: SocketAddr::from(([0, 0, 0, 0], 0)),
            kafka: None,
            grpc: None,
        }
    }

    pub fn read_banner(&mut self) {
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        let mut http = None;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = match self.stdout_lines.recv_timeout(left) {
                Ok(line) => line,
                Err(error) => panic!(
                    "no complete banner within {STARTUP_TIMEOUT:?} ({error}); got {:?}",
                    self.banner
                ),
            };
            // The stable banner line: exactly `http: http://<bound address>`.
            if let Some(address) = line.strip_prefix("http: http://") {
                http = Some(
                    address
                        .parse()
                        .expect("the http line holds a socket address"),
                );
            }
            if let Some(address) = line.strip_prefix("kafka: ") {
                self.kafka = address.parse().ok();
            }
            if let Some(address) = line.strip_prefix("grpc: ") {
                self.grpc = address.parse().ok();
            }
            let done = line.starts_with("ready in ");
            self.banner.push(line);
            if done {
                break;
            }
        }
        self.http = http.expect("the banner has an http line");
    }

    pub fn banner_line(&self, prefix: &str) -> &str {
        self.banner
            .iter()
            .find(|line| line.starts_with(prefix))
            .unwrap_or_else(|| panic!("no banner line starting {prefix:?} in {:?}", self.banner))
    }

    pub fn request(&self, method: &str, path: &str, body: Option<&str>) -> HttpResponse {
        http_request(self.http, method, path, body)
    }

    pub fn get(&self, path: &str) -> HttpResponse {
        http_get(self.http, path)
    }

    pub fn signal(&self, signal: libc::c_int) {
        let pid = libc::pid_t::try_from(self.child.id()).expect("pid fits pid_t");
        // SAFETY: kill(2) only sends a signal; the pid is our own child, not yet reaped
        // (it is reaped only by `wait_for_exit` or on drop).
        let result = unsafe { libc::kill(pid, signal) };
        assert_eq!(result, 0, "kill({pid}, {signal}) failed");
    }

    /// Waits for the process to exit, failing the test after [`SHUTDOWN_TIMEOUT`].
    pub fn wait_for_exit(&mut self) -> ExitStatus {
        let deadline = Instant::now() + SHUTDOWN_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "runnel did not exit within {SHUTDOWN_TIMEOUT:?} of the signal"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits up to `timeout` for the node to abort at the crash point it was started
    /// with (`RUNNEL_CRASH_AT`), failing the test if it exits any other way.
    pub fn wait_for_crash(&mut self, timeout: Duration) {
        use std::os::unix::process::ExitStatusExt as _;
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "runnel did not reach its crash point within {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        let stderr = self.stderr();
        assert_eq!(status.signal(), Some(libc::SIGABRT), "{status}: {stderr}");
        assert!(stderr.contains("RUNNEL_CRASH_AT: aborting at"), "{stderr}");
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            eprintln!("--- runnel banner ---\n{}", self.banner.join("\n"));
            eprintln!("--- runnel stderr ---\n{}", self.stderr());
        }
    }
}

pub struct HttpResponse {
    pub status: u16,
    pub headers: String,
    pub body: String,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.lines().find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.eq_ignore_ascii_case(name).then(|| value.trim())
        })
    }
}

/// A minimal HTTP/1.1 GET: one request per connection, `Connection: close`, read to the end.
pub fn http_get(address: SocketAddr, path: &str) -> HttpResponse {
    http_request(address, "GET", path, None)
}

/// One HTTP/1.1 request with an optional JSON body, over a fresh connection.
pub fn http_request(
    address: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> HttpResponse {
    let mut stream =
        TcpStream::connect_timeout(&address, Duration::from_secs(5)).expect("connect to http");
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("set read timeout");
    let body = body.unwrap_or("");
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .expect("send the request");
    let mut response = Vec::new();
    stream
        .read_to_end(&mut response)
        .expect("read the response");
    let response = String::from_utf8(response).expect("a UTF-8 response");
    let (head, body) = response
        .split_once("\r\n\r\n")
        .expect("a response with headers");
    let (status_line, headers) = head.split_once("\r\n").unwrap_or((head, ""));
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    HttpResponse {
        status,
        headers: headers.to_string(),
        body: body.to_string(),
    }
}

/// Runs the binary to completion (for commands that exit on their own).
pub fn run_to_exit(cwd: &Path, args: &[&str]) -> Output {
    runnel(cwd)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run runnel")
}

pub fn dev_args(data_dir: &Path) -> Vec<String> {
    vec![
        "dev".to_string(),
        "--data-dir".to_string(),
        data_dir.display().to_string(),
        "--set".to_string(),
        "http.listen=127.0.0.1:0".to_string(),
        "--set".to_string(),
        "kafka.listen=127.0.0.1:0".to_string(),
        "--set".to_string(),
        "grpc.listen=127.0.0.1:0".to_string(),
    ]
}

pub fn as_strs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

pub fn wait_until(condition: impl Fn() -> bool, what: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !condition() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting: {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A free port on 127.0.0.1 (bound, then released for the node to take).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A cluster of real `runnel start` processes on 127.0.0.1.
pub struct Cluster {
    root: tempfile::TempDir,
    voters: String,
    ports: Vec<u16>,
    nodes: Vec<Option<Node>>,
    /// More TOML for every node's config file.
    extra: String,
}

impl Cluster {
    /// `nodes` nodes, of which the first `voters` are the controller quorum and the rest
    /// broker-only learners.
    pub fn new(nodes: usize, voters: usize) -> Cluster {
        let ports: Vec<u16> = (0..nodes).map(|_| free_port()).collect();
        let voters = ports
            .iter()
            .take(voters)
            .enumerate()
            .map(|(i, port)| format!("{}@127.0.0.1:{port}", i + 1))
            .collect::<Vec<_>>()
            .join(",");
        Cluster {
            root: tempfile::tempdir().unwrap(),
            voters,
            ports,
            nodes: (0..nodes).map(|_| None).collect(),
            extra: String::new(),
        }
    }

    /// Adds `toml` (whole sections) to every node's config file.
    pub fn with_config(mut self, toml: &str) -> Cluster {
        self.extra = toml.to_string();
        self
    }

    pub fn dir(&self, id: usize) -> PathBuf {
        self.root.path().join(format!("node-{id}"))
    }

    /// Starts node `id` (1-based) from its config file, without waiting.
    pub fn spawn(&mut self, id: usize) {
        let dir = self.dir(id);
        std::fs::create_dir_all(&dir).unwrap();
        let config = format!(
            "[node]\nid = {id}\ndata_dir = \"{data}\"\n\
             [kafka]\nlisten = \"127.0.0.1:0\"\n[grpc]\nlisten = \"127.0.0.1:0\"\n\
             [http]\nlisten = \"127.0.0.1:0\"\n\
             [cluster]\nlisten = \"127.0.0.1:{port}\"\n\
             [controller]\nvoters = \"{voters}\"\n{extra}",
            data = dir.join("data").display(),
            port = self.ports[id - 1],
            voters = self.voters,
            extra = self.extra,
        );
        let file = dir.join("runnel.toml");
        std::fs::write(&file, config).unwrap();
        let file = file.display().to_string();
        self.nodes[id - 1] = Some(Node::spawn(&dir, &["start", "--config", &file]));
    }

    /// Waits until node `id` (a learner) is registered and alive as node 1 sees it.
    pub fn wait_alive(&self, id: usize) {
        wait_until(
            || {
                self.node_info(1, id)
                    .is_some_and(|n| n["alive"] == serde_json::Value::Bool(true))
            },
            &format!("node {id} registered and alive"),
        );
    }

    pub fn node(&self, id: usize) -> &Node {
        self.nodes[id - 1].as_ref().expect("node running")
    }

    pub fn kill(&mut self, id: usize) {
        let mut node = self.nodes[id - 1].take().expect("node running");
        node.signal(libc::SIGKILL);
        node.wait_for_exit();
    }

    /// Waits for the banners of the given nodes (they become ready together).
    pub fn read_banners(&mut self, ids: &[usize]) {
        for id in ids {
            self.nodes[id - 1]
                .as_mut()
                .expect("node running")
                .read_banner();
        }
    }

    /// Stops node `id` with SIGTERM; it must exit 0 (within the 5 s `wait_for_exit` allows).
    pub fn stop(&mut self, id: usize) {
        let mut node = self.nodes[id - 1].take().expect("node running");
        node.signal(libc::SIGTERM);
        let status = node.wait_for_exit();
        assert_eq!(status.code(), Some(0), "node {id}: {}", node.stderr());
    }

    /// Stops every running node with SIGTERM; each must exit 0.
    pub fn stop_all(&mut self) {
        for (index, slot) in self.nodes.iter_mut().enumerate() {
            if let Some(node) = slot.as_mut() {
                node.signal(libc::SIGTERM);
                let status = node.wait_for_exit();
                assert_eq!(
                    status.code(),
                    Some(0),
                    "node {}: {}",
                    index + 1,
                    node.stderr()
                );
            }
        }
    }

    /// Node `id` as node `asking` lists it in `/v1/cluster`.
    pub fn node_info(&self, asking: usize, id: usize) -> Option<serde_json::Value> {
        let body: serde_json::Value =
            serde_json::from_str(&self.node(asking).get("/v1/cluster").body).unwrap();
        body["nodes"]
            .as_array()?
            .iter()
            .find(|n| n["id"] == id as u64)
            .cloned()
    }

    pub fn leader(&self, asking: usize) -> usize {
        let cluster = self.node(asking).get("/v1/cluster").body;
        let value: serde_json::Value = serde_json::from_str(&cluster).expect("cluster json");
        value["controller"]["leader"].as_u64().expect("a leader") as usize
    }

    /// Creates a topic through node `via` (the only topic so far) and waits until every
    /// node lists it and holds `partition` on disk.
    pub fn create_and_see_everywhere(&self, via: usize, body: &str, partition: &str) {
        let created = self.node(via).request("POST", "/v1/topics", Some(body));
        assert_eq!(created.status, 201, "{}", created.body);
        let name: serde_json::Value = serde_json::from_str(body).unwrap();
        let name = name["name"].as_str().unwrap().to_string();
        for id in 1..=self.nodes.len() {
            wait_until(
                || topic_names(&self.topics(id)) == [name.clone()],
                &format!("{name} on node {id}"),
            );
            let directory = self.dir(id).join("data/partitions").join(partition);
            wait_until(|| directory.is_dir(), &format!("{partition} on node {id}"));
        }
    }

    pub fn topics(&self, id: usize) -> serde_json::Value {
        serde_json::from_str(&self.node(id).get("/v1/topics").body).expect("topics json")
    }
}

/// The names of the user topics (not internal ones such as `__consumer_offsets`).
pub fn topic_names(topics: &serde_json::Value) -> Vec<String> {
    topics
        .as_array()
        .expect("a list")
        .iter()
        .map(|t| t["name"].as_str().unwrap().to_string())
        .filter(|name| !name.starts_with("__"))
        .collect()
}

/// Two brokers, node 1 the controller and node 2 a broker-only learner, with a topic whose
/// `partitions` (replication factor 1) are placed on both; returns the cluster and each
/// partition's leader, once every leader has opened its partition.
pub fn two_brokers_with_topic(topic: &str, partitions: u32) -> (Cluster, Vec<u64>) {
    let mut cluster = Cluster::new(2, 1);
    cluster.spawn(1);
    cluster.spawn(2);
    cluster.read_banners(&[1, 2]);
    cluster.wait_alive(2);
    let body = format!(r#"{{"name": "{topic}", "partitions": {partitions}}}"#);
    let created = cluster.node(1).request("POST", "/v1/topics", Some(&body));
    assert_eq!(created.status, 201, "{}", created.body);
    let created: serde_json::Value = serde_json::from_str(&created.body).unwrap();
    let leaders: Vec<u64> = created["partitions"]
        .as_array()
        .expect("partitions")
        .iter()
        .map(|p| p["leader"].as_u64().expect("a leader"))
        .collect();
    assert!(
        leaders.contains(&1) && leaders.contains(&2),
        "leaders {leaders:?}"
    );
    for (partition, leader) in leaders.iter().enumerate() {
        let directory = cluster
            .dir(*leader as usize)
            .join("data/partitions")
            .join(format!("{topic}-{partition}"));
        wait_until(|| directory.is_dir(), "the leader opened its partition");
    }
    (cluster, leaders)
}

/// moto's S3 server behind the fault-injecting proxy of `s3_server.py`, with the bucket
/// `runnel`; killed when dropped.
pub struct S3Server {
    child: std::process::Child,
    pub address: std::net::SocketAddr,
}

impl S3Server {
    /// The `[tier]` section that makes a node keep its objects (components, tiered
    /// segments) in this server's bucket `runnel`, under `functions/`.
    pub fn tier_config(&self) -> String {
        format!(
            "[tier]\nurl = \"s3://runnel/functions\"\nendpoint = \"http://{}\"\n\
             allow_http = true\naccess_key_id = \"test\"\nsecret_access_key = \"test\"\n\
             region = \"us-east-1\"\n",
            self.address
        )
    }

    pub fn start() -> S3Server {
        use std::io::BufRead as _;
        let mut child = python_client("s3_server.py")
            .arg("runnel")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit())
            .spawn()
            .expect("run s3_server.py");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut line = String::new();
        std::io::BufReader::new(stdout)
            .read_line(&mut line)
            .expect("read the s3 server's ready line");
        let port: u16 = line
            .trim()
            .strip_prefix("ready ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("s3_server.py said {line:?}"));
        S3Server {
            child,
            address: std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        }
    }

    /// Sets the proxy's fault (`ok`, `error`, `drop`, `truncate`, `stall`).
    pub fn fault(&self, name: &str) {
        let answer = http_request(self.address, "PUT", &format!("/__fault/{name}"), None);
        assert_eq!(answer.status, 200, "set fault {name}");
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
