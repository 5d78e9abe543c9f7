//! A real `mlflow server` for the tests (PyPI `mlflow[auth]==3.17.2` in target/mlflow-env, made by
//! tests/python/setup.sh): plain HTTP, or HTTPS with a certificate of a test CA and MLflow's
//! basic-auth app. SQLite store and artifacts in a temporary directory, on 127.0.0.1; the whole
//! process group is stopped when the `Server` is dropped.

use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use super::common::repo_root;

/// The `mlflow` of target/mlflow-env (tests/python/setup.sh) or $KILN_MLFLOW; required in CI.
pub fn mlflow_bin() -> Option<PathBuf> {
    let bin = std::env::var_os("KILN_MLFLOW")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target/mlflow-env/bin/mlflow"));
    if bin.exists() {
        return Some(bin);
    }
    assert!(
        std::env::var_os("KILN_REQUIRE_PYTHON_TESTS").is_none(),
        "no MLflow at {}; run bash tests/python/setup.sh",
        bin.display()
    );
    eprintln!(
        "SKIPPED: no MLflow at {} (run bash tests/python/setup.sh)",
        bin.display()
    );
    None
}

/// The Python beside `mlflow` (its environment has the MLflow client).
pub fn mlflow_python(bin: &Path) -> PathBuf {
    bin.with_file_name("python")
}

/// A port nothing listens on now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The admin of the basic-auth server.
pub const ADMIN: (&str, &str) = ("admin", "kiln-test-password");

/// A running `mlflow server`.
pub struct Server {
    child: Child,
    /// `http://127.0.0.1:PORT` or `https://...`.
    pub uri: String,
    /// The test CA's certificate (PEM) for an HTTPS server.
    pub ca: Option<PathBuf>,
    /// Its stdout and stderr.
    log: PathBuf,
}

impl Server {
    /// A plain HTTP server without authentication.
    pub fn start(bin: &Path, dir: &Path, port: u16) -> Server {
        let server = Server::spawn(bin, dir, port, None, &[]);
        let began = Instant::now();
        while ureq::get(&format!("{}/health", server.uri)).call().is_err() {
            assert!(
                began.elapsed() < Duration::from_secs(180),
                "mlflow server not up after 180 s"
            );
            std::thread::sleep(Duration::from_millis(250));
        }
        server
    }

    /// An HTTPS server (a certificate for 127.0.0.1 signed by a CA made here with openssl) with
    /// MLflow's basic-auth app, its admin [`ADMIN`].
    pub fn start_secure(bin: &Path, dir: &Path, port: u16) -> Server {
        let ca = make_certificates(dir);
        let ini = dir.join("basic_auth.ini");
        std::fs::write(
            &ini,
            format!(
                "[mlflow]\ndefault_permission = READ\ndatabase_uri = sqlite:///{}\nadmin_username = {}\nadmin_password = {}\nauthorization_function = mlflow.server.auth:authenticate_request_basic_auth\n",
                dir.join("basic_auth.db").display(),
                ADMIN.0,
                ADMIN.1
            ),
        )
        .unwrap();
        let tls = format!(
            "--ssl-keyfile {} --ssl-certfile {}",
            dir.join("server.key").display(),
            dir.join("server.pem").display()
        );
        let server = Server::spawn(
            bin,
            dir,
            port,
            Some(&ca),
            &[
                "--app-name".into(),
                "basic-auth".into(),
                "--uvicorn-opts".into(),
                tls,
            ],
        );
        // Ready when its health route answers over TLS with the CA's certificate.
        let out = Command::new(mlflow_python(bin))
            .args(["tests/python/check_mlflow.py", "wait", &server.uri])
            .arg(&ca)
            .current_dir(repo_root())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "the HTTPS mlflow server did not come up: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        server
    }

    fn spawn(bin: &Path, dir: &Path, port: u16, ca: Option<&Path>, extra: &[String]) -> Server {
        let log_path = dir.join("mlflow-server.log");
        let log = std::fs::File::create(&log_path).unwrap();
        let mut command = Command::new(bin);
        if ca.is_some() {
            // The basic-auth app's users. Only for it: a plain server reads this file too (its
            // runs/search imports the auth module when mlflow[auth] is installed).
            command
                .env("MLFLOW_AUTH_CONFIG_PATH", dir.join("basic_auth.ini"))
                .env("MLFLOW_FLASK_SERVER_SECRET_KEY", "kiln-test");
        }
        let child = command
            .args([
                "server",
                "--host",
                "127.0.0.1",
                "--port",
                &port.to_string(),
                "--workers",
                "1",
            ])
            .arg("--backend-store-uri")
            .arg(format!("sqlite:///{}", dir.join("mlflow.db").display()))
            .arg("--artifacts-destination")
            .arg(dir.join("artifacts"))
            .args(extra)
            .current_dir(dir)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .process_group(0)
            .spawn()
            .expect("mlflow server starts");
        let scheme = if ca.is_some() { "https" } else { "http" };
        Server {
            child,
            uri: format!("{scheme}://127.0.0.1:{port}"),
            ca: ca.map(Path::to_path_buf),
            log: log_path,
        }
    }

    /// Every run of an experiment, as MLflow's REST API returns them (`runs/search`), on a plain
    /// HTTP server.
    pub fn runs_of(&self, experiment: &str) -> Vec<serde_json::Value> {
        let uri = &self.uri;
        let got = ureq::get(&format!(
            "{uri}/api/2.0/mlflow/experiments/get-by-name?experiment_name={experiment}"
        ))
        .call()
        .unwrap_or_else(|e| panic!("experiment {experiment}: {e}"));
        let got: serde_json::Value = got.into_json().unwrap();
        let id = &got["experiment"]["experiment_id"];
        let found = ureq::post(&format!("{uri}/api/2.0/mlflow/runs/search"))
            .send_json(serde_json::json!({ "experiment_ids": [id], "max_results": 1000 }));
        let found: serde_json::Value = match found {
            Ok(r) => r.into_json().unwrap(),
            Err(ureq::Error::Status(code, r)) => {
                let log = std::fs::read_to_string(&self.log).unwrap_or_default();
                let tail = &log[log.len().saturating_sub(4000)..];
                panic!(
                    "runs/search: HTTP {code} ({}); the server's log ends:\n{tail}",
                    r.status_text()
                )
            }
            Err(e) => panic!("runs/search: {e}"),
        };
        found["runs"].as_array().cloned().unwrap_or_default()
    }

    /// Stops the server (SIGTERM to its process group) and waits for it.
    pub fn stop(&mut self) {
        if self.child.try_wait().is_ok_and(|s| s.is_some()) {
            return;
        }
        let _ = Command::new("kill")
            .args(["-TERM", "--", &format!("-{}", self.child.id())])
            .status();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A test CA (`ca.pem`) and, signed by it, `server.pem`/`server.key` for 127.0.0.1.
fn make_certificates(dir: &Path) -> PathBuf {
    let openssl = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl (Debian package openssl) runs");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName = IP:127.0.0.1\nbasicConstraints = CA:FALSE\n",
    )
    .unwrap();
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=Kiln test CA",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
    ]);
    openssl(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=127.0.0.1",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
    ]);
    openssl(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "server.ext",
        "-out",
        "server.pem",
    ]);
    dir.join("ca.pem")
}
