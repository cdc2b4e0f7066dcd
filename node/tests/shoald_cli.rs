//! The `shoald` binary's start-up contract: a bad configuration stops it with one error naming the
//! key and exit status 2; a good one starts, reports its addresses and stops cleanly.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn shoald() -> Command {
    Command::new(env!("CARGO_BIN_EXE_shoald"))
}

fn run_to_exit(command: &mut Command) -> (i32, String) {
    let output = command.stdin(Stdio::null()).output().expect("shoald runs");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn bad_configuration_exits_2_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("shoal.toml");
    std::fs::write(&config, "listen = \"127.0.0.1:0\"\nmax_disk_byte = 5\n").unwrap();
    let (code, stderr) = run_to_exit(shoald().arg("--config").arg(&config));
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("max_disk_byte"), "{stderr}");

    std::fs::write(&config, "[chunking]\nmin = 1\navg = 2\nmax = 3\n").unwrap();
    let (code, stderr) = run_to_exit(shoald().arg("--config").arg(&config));
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("chunking.min"), "{stderr}");

    let (code, stderr) = run_to_exit(shoald().args(["--listen", "nowhere"]));
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("`listen`"), "{stderr}");

    let (code, stderr) = run_to_exit(shoald().args(["--upstream", "ftp=ftp://example.invalid"]));
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("--upstream"), "{stderr}");

    let (code, stderr) = run_to_exit(
        shoald()
            .arg("--config")
            .arg(dir.path().join("missing.toml")),
    );
    assert_eq!(code, 2, "{stderr}");
}

#[test]
fn starts_reports_its_addresses_and_stops_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let ready = dir.path().join("ready.json");
    let mut child = shoald()
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
        .args(["--upstream", "origin.invalid=http://127.0.0.1:9"])
        .arg("--ready-file")
        .arg(&ready)
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("shoald starts");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !ready.exists() {
        assert!(Instant::now() < deadline, "no ready file");
        assert!(child.try_wait().unwrap().is_none(), "shoald exited early");
        std::thread::sleep(Duration::from_millis(20));
    }
    let addresses: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&ready).unwrap()).unwrap();
    let admin = addresses["admin"].as_str().unwrap();
    assert!(admin.starts_with("127.0.0.1:"), "{addresses}");
    assert!(addresses["registry"]
        .as_str()
        .unwrap()
        .starts_with("127.0.0.1:"));
    // SIGTERM: drain and close the store cleanly.
    let status = Command::new("kill")
        .arg(child.id().to_string())
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(30);
    let code = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status.code();
        }
        assert!(Instant::now() < deadline, "shoald did not stop");
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.contains("store closed cleanly"), "{stderr}");
}
