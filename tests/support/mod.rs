//! Helpers shared by the end-to-end tests: installing what a test needs
//! (Debian packages, Python packages in a virtualenv) so the suite runs on a
//! clean Debian machine with only the Rust toolchain.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};

/// The `sessionql` binary under test, run from the repository.
pub fn sessionql() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_sessionql"));
    command.current_dir(env!("CARGO_MANIFEST_DIR"));
    command
}

/// The first line a server started with piped stdout prints: `sessionql …
/// server listening on ADDRESS`, as `sessionql::listen::announce` writes it.
pub fn announcement(child: &mut Child) -> String {
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout is piped"))
        .read_line(&mut line)
        .expect("the server announces its address");
    line.trim().to_string()
}

/// The address at the end of an [`announcement`].
pub fn announced_address(line: &str) -> String {
    line.rsplit(' ').next().unwrap_or_default().to_string()
}

/// Starts a server process whose first stdout line announces its address
/// (stderr to `log`); returns it with that address, which must be on loopback.
pub fn start_announcing(mut command: Command, log: &std::path::Path) -> (Child, String) {
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(log).expect("create the log file"))
        .spawn()
        .expect("the server starts");
    let line = announcement(&mut child);
    let address = announced_address(&line);
    assert!(
        address.starts_with("127.0.0.1:"),
        "no address announced: {line:?}; log: {}",
        std::fs::read_to_string(log).unwrap_or_default()
    );
    (child, address)
}

/// Runs the binary with `args` and waits for it.
pub fn run(args: &[&str]) -> Output {
    sessionql().args(args).output().expect("the binary runs")
}

/// A command's standard output as text.
pub fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// A command's standard error as text.
pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Writes a test input file and returns its path.
pub fn write_file(directory: &std::path::Path, name: &str, text: &str) -> PathBuf {
    let path = directory.join(name);
    std::fs::write(&path, text).expect("write test file");
    path
}

/// Installs Debian `packages` when `probe` (a command) does not run.
pub fn ensure_debian_package(probe: &[&str], packages: &[&str]) {
    let works = Command::new(probe[0])
        .args(&probe[1..])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success());
    if works {
        return;
    }
    let updated = Command::new("apt-get").args(["update", "-qq"]).status();
    let installed = Command::new("apt-get")
        .args(["install", "-y", "-qq"])
        .args(packages)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status();
    assert!(
        updated.is_ok_and(|status| status.success())
            && installed.is_ok_and(|status| status.success()),
        "{probe:?} does not run and apt-get could not install {packages:?}"
    );
}

/// A Python virtualenv `name` in the build directory in which `imports`
/// work, made (pip from the package registry) the first time.
pub fn python_venv(name: &str, imports: &str, packages: &[&str]) -> PathBuf {
    let venv = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    let python = venv.join("bin/python");
    let ready = Command::new(&python)
        .args(["-c", &format!("import {imports}")])
        .status()
        .is_ok_and(|status| status.success());
    if !ready {
        ensure_debian_package(
            &["python3", "-c", "import venv, ensurepip"],
            &["python3", "python3-venv"],
        );
        let created = Command::new("python3")
            .args(["-m", "venv"])
            .arg(&venv)
            .status()
            .unwrap();
        assert!(created.success(), "python3 -m venv failed");
        let installed = Command::new(venv.join("bin/pip"))
            .args(["install", "--quiet"])
            .args(packages)
            .status()
            .unwrap();
        assert!(installed.success(), "pip install {packages:?} failed");
    }
    python
}

/// A test CA's certificate, and a server certificate and key it signed for
/// `localhost` and 127.0.0.1 (rustls refuses a self-signed CA certificate
/// used as the server's own).
pub struct TestCertificates {
    /// The CA certificate clients trust.
    pub ca: PathBuf,
    /// The server's certificate (PEM).
    pub certificate: PathBuf,
    /// The server's private key (PEM).
    pub key: PathBuf,
}

/// Makes [`TestCertificates`] in `directory` with openssl.
pub fn test_certificates(directory: &std::path::Path) -> TestCertificates {
    let path = |name: &str| directory.join(name).to_str().unwrap().to_string();
    let (ca_key, ca, key, request, certificate, extensions) = (
        path("ca.key"),
        path("ca.pem"),
        path("key.pem"),
        path("server.csr"),
        path("cert.pem"),
        path("ext.cnf"),
    );
    std::fs::write(
        &extensions,
        "basicConstraints=CA:FALSE\nsubjectAltName=DNS:localhost,IP:127.0.0.1\n",
    )
    .unwrap();
    ensure_debian_package(&["openssl", "version"], &["openssl"]);
    let openssl = |args: &[&str]| {
        let status = Command::new("openssl")
            .args(args)
            .stderr(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "openssl {args:?} failed");
    };
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "1",
        "-subj",
        "/CN=sessionql test CA",
        "-keyout",
        &ca_key,
        "-out",
        &ca,
    ]);
    openssl(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=localhost",
        "-keyout",
        &key,
        "-out",
        &request,
    ]);
    openssl(&[
        "x509",
        "-req",
        "-in",
        &request,
        "-CA",
        &ca,
        "-CAkey",
        &ca_key,
        "-CAcreateserial",
        "-days",
        "1",
        "-extfile",
        &extensions,
        "-out",
        &certificate,
    ]);
    TestCertificates {
        ca: PathBuf::from(ca),
        certificate: PathBuf::from(certificate),
        key: PathBuf::from(key),
    }
}
