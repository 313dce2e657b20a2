//! Running `edge-kd serve` and a real mosquitto in tests: free ports, readiness, a small
//! HTTP client, signals, and an MQTT subscriber that survives broker restarts.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::ort_library;

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

pub fn wait_until(what: &str, timeout: Duration, mut ok: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ok() {
        assert!(start.elapsed() < timeout, "timed out after {timeout:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub struct Response {
    pub status: u16,
    pub body: String,
}

impl Response {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

/// One HTTP/1.1 request with `Connection: close`; `None` when nothing listens.
pub fn http(port: u16, method: &str, path: &str, token: Option<&str>, body: &[u8]) -> Option<Response> {
    http_with(port, method, path, token, &[], body)
}

/// [`http`] with extra headers (`("Content-Type", "multipart/form-data; boundary=x")`).
pub fn http_with(
    port: u16,
    method: &str,
    path: &str,
    token: Option<&str>,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Option<Response> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(30))).ok()?;
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    let extra: String = headers.iter().map(|(k, v)| format!("{k}: {v}\r\n")).collect();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}{extra}Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).ok()?;
    // The server may answer (413) before reading a large body and close: ignore that.
    let _ = stream.write_all(body);
    let mut raw = Vec::new();
    let _ = stream.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text.split(' ').nth(1)?.parse().ok()?;
    let (headers, body) = text.split_once("\r\n\r\n")?;
    let body = if headers.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        unchunk(body)
    } else {
        body.into()
    };
    Some(Response { status, body })
}

fn unchunk(body: &str) -> String {
    let mut out = String::new();
    let mut rest = body;
    while let Some((size, tail)) = rest.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        out.push_str(&tail[..n]);
        rest = &tail[n + 2..];
    }
    out
}

/// The value of one metric (its name with labels, exactly), scraped from `/metrics`.
pub fn metric(port: u16, token: Option<&str>, name: &str) -> Option<f64> {
    let text = http(port, "GET", "/metrics", token, b"")?.body;
    text.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

pub struct Daemon {
    pub child: Child,
    pub port: u16,
    pub log: PathBuf,
}

impl Daemon {
    /// Starts `edge-kd serve --config CONFIG` and waits until `/healthz` answers.
    pub fn start(config: &Path, port: u16) -> Daemon {
        Self::start_under(&[], config, port)
    }

    /// As [`Daemon::start`], run by a wrapper that execs it (`["prlimit", "--nofile=256", "--"]`),
    /// so that the child's pid is still the daemon's.
    pub fn start_under(wrapper: &[&str], config: &Path, port: u16) -> Daemon {
        let log = unique(config);
        let binary = env!("CARGO_BIN_EXE_edge-kd");
        let mut command = match wrapper.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(binary);
                c
            }
            None => Command::new(binary),
        };
        let child = command
            .args(["serve", "--config"])
            .arg(config)
            .env("ORT_DYLIB_PATH", ort_library())
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {command:?}: {e}"));
        let mut daemon = Daemon { child, port, log };
        let start = Instant::now();
        loop {
            if http(port, "GET", "/healthz", None, b"").is_some_and(|r| r.status == 200) {
                return daemon;
            }
            if let Ok(Some(status)) = daemon.child.try_wait() {
                panic!("daemon exited with {status} before it was ready:\n{}", daemon.log_text());
            }
            assert!(start.elapsed() < Duration::from_secs(60), "daemon not up:\n{}", daemon.log_text());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, signal) };
    }

    /// SIGTERM, then the exit code.
    pub fn stop(mut self) -> i32 {
        self.signal(libc::SIGTERM);
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code().unwrap_or(-1);
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "daemon ignores SIGTERM:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `CONFIG.N.log`, a new N for each daemon started on the same config.
fn unique(config: &Path) -> PathBuf {
    let mut n = 0;
    loop {
        let candidate = config.with_extension(format!("{n}.log"));
        if !candidate.exists() {
            return candidate;
        }
        n += 1;
    }
}

/// A real mosquitto on a free loopback port, persisting sessions so that a subscriber's
/// queued messages survive the broker's own restart.
pub struct Broker {
    child: Option<Child>,
    pub port: u16,
    config: PathBuf,
}

fn mosquitto() -> PathBuf {
    ["/usr/sbin/mosquitto", "/usr/bin/mosquitto"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .expect("mosquitto is missing: run `bash .ci/setup` (installs Debian's mosquitto)")
}

impl Broker {
    pub fn start(dir: &Path) -> Broker {
        let port = free_port();
        let config = dir.join("mosquitto.conf");
        let store = dir.join("mosquitto-db");
        std::fs::create_dir_all(&store).unwrap();
        std::fs::write(
            &config,
            format!(
                // `user root` only matters when the tests run as root: mosquitto would
                // otherwise drop to its own user, which cannot write into our temp folder.
                "user root\nlistener {port} 127.0.0.1\nallow_anonymous true\npersistence true\npersistence_location {}/\n",
                store.display()
            ),
        )
        .unwrap();
        let mut broker = Broker { child: None, port, config };
        broker.restart();
        broker
    }

    pub fn restart(&mut self) {
        let child = Command::new(mosquitto())
            .arg("-c")
            .arg(&self.config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
        let port = self.port;
        wait_until("mosquitto to listen", Duration::from_secs(10), || {
            TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
    }

    /// SIGTERM: mosquitto saves its sessions and exits.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: kill(2) on our own child's pid.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let _ = child.wait();
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A persistent-session QoS 1 subscriber that keeps reconnecting; collects payloads.
pub struct Subscriber {
    pub messages: Arc<Mutex<Vec<(String, String)>>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Subscriber {
    pub fn start(port: u16, client_id: &str, topic: &str) -> Subscriber {
        use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
        let messages = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let subscribed = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (m, s, sub, topic, id) =
            (messages.clone(), stop.clone(), subscribed.clone(), topic.to_string(), client_id.to_string());
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async move {
                let mut options = MqttOptions::new(id, "127.0.0.1", port);
                options.set_clean_session(false);
                options.set_max_packet_size(1 << 20, 1 << 20);
                let (client, mut events) = AsyncClient::new(options, 100);
                client.subscribe(topic, QoS::AtLeastOnce).await.unwrap();
                while !s.load(std::sync::atomic::Ordering::Relaxed) {
                    match tokio::time::timeout(Duration::from_millis(100), events.poll()).await {
                        Ok(Ok(Event::Incoming(Packet::SubAck(_)))) => {
                            sub.store(true, std::sync::atomic::Ordering::Relaxed)
                        }
                        Ok(Ok(Event::Incoming(Packet::Publish(p)))) => {
                            m.lock()
                                .unwrap()
                                .push((p.topic.clone(), String::from_utf8_lossy(&p.payload).into_owned()));
                        }
                        Ok(Ok(_)) | Err(_) => {}
                        Ok(Err(_)) => tokio::time::sleep(Duration::from_millis(100)).await,
                    }
                }
            });
        });
        wait_until("the subscription", Duration::from_secs(10), || {
            subscribed.load(std::sync::atomic::Ordering::Relaxed)
        });
        Subscriber { messages, stop, thread: Some(thread) }
    }

    pub fn payloads(&self) -> Vec<serde_json::Value> {
        self.messages.lock().unwrap().iter().map(|(_, p)| serde_json::from_str(p).unwrap()).collect()
    }

    pub fn topics(&self) -> Vec<String> {
        self.messages.lock().unwrap().iter().map(|(t, _)| t.clone()).collect()
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Every line of a JSONL results file, each parsed (a line that is not JSON fails the test).
pub fn result_lines(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}
