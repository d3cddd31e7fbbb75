//! Helpers shared by the end-to-end tests: installing what a test needs
//! (Debian packages, Python packages in a virtualenv) so the suite runs on a
//! clean Debian machine with only the Rust toolchain.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;
use std::process::{Command, Stdio};

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
