//! A `kiln serve` process for the tests: started on a free port of 127.0.0.1, waited for (its
//! ready line, bounded), talked to over real HTTP, and stopped by SIGTERM or when dropped.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::repo_root;

/// A running server.
pub struct Server {
    child: Option<Child>,
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    stderr: std::sync::Arc<std::sync::Mutex<String>>,
}

/// An HTTP answer: status and JSON body.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub body: Value,
}

impl Server {
    /// `kiln serve EXPORTS... --port 0 ARGS` on flex, once it printed its ready line (60 s at
    /// most).
    pub fn start(exports: &[&Path], args: &[&str]) -> Server {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_kiln"));
        cmd.arg("serve")
            .args(exports)
            .args(["--port", "0", "--backend", "flex"])
            .args(args)
            .current_dir(repo_root())
            .env("KILN_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("kiln serve starts");
        let stdout = child.stdout.take().unwrap();
        let stderr = child.stderr.take().unwrap();
        let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let mut s = sink.lock().unwrap();
                s.push_str(&line);
                s.push('\n');
            }
        });
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let line = rx
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| {
                let _ = child.kill();
                panic!("no ready line within 60 s:\n{}", log.lock().unwrap())
            });
        let ready: Value = serde_json::from_str(&line).expect("the ready line is JSON");
        assert_eq!(ready["event"], "ready", "{line}");
        Server {
            url: format!("http://{}", ready["address"].as_str().unwrap()),
            child: Some(child),
            stderr: log,
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// What the server logged so far.
    pub fn log(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// The resident memory of the server, in bytes (Linux: /proc/PID/status).
    pub fn rss(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
        let kb: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
        kb * 1024
    }

    /// Sends SIGTERM and waits (30 s at most) for the exit.
    pub fn terminate(mut self) -> ExitStatus {
        let mut child = self.child.take().unwrap();
        let ok = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
        let started = Instant::now();
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            if started.elapsed() > Duration::from_secs(30) {
                let _ = child.kill();
                panic!("kiln serve did not exit within 30 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `GET path`.
    pub fn get(&self, path: &str) -> Answer {
        answer(ureq::get(&format!("{}{path}", self.url)).call())
    }

    /// `GET path` as text (`/metrics`).
    pub fn text(&self, path: &str) -> String {
        ureq::get(&format!("{}{path}", self.url))
            .call()
            .unwrap()
            .into_string()
            .unwrap()
    }

    /// `POST path` with `body`.
    pub fn post(&self, path: &str, body: &str) -> Answer {
        post(&agent(), &format!("{}{path}", self.url), body)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A client with its own keep-alive connections (one per test thread).
pub fn agent() -> ureq::Agent {
    ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(60))
        .build()
}

/// `POST url` with `body` through `agent`.
pub fn post(agent: &ureq::Agent, url: &str, body: &str) -> Answer {
    answer(
        agent
            .post(url)
            .set("Content-Type", "application/json")
            .send_string(body),
    )
}

fn answer(result: Result<ureq::Response, ureq::Error>) -> Answer {
    let response = match result {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("HTTP request failed: {e}"),
    };
    let status = response.status();
    let text = response.into_string().unwrap();
    let body = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("status {status}: the body is not JSON ({e}): {text}"));
    Answer { status, body }
}
