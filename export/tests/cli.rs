//! The `lmn` command on the conformance fixtures.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

fn lmn(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_lmn")).args(args).output().expect("lmn runs")
}

#[test]
fn inspect_names_the_format_version_and_the_cost_of_a_run() {
    let out = lmn(&["inspect", fixture("resnet.lmn").to_str().unwrap()]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("format 2.0,"), "{text}");
    assert!(text.contains("run, ideal") && text.contains("multiply-adds"), "{text}");
}

#[test]
fn a_reader_that_closes_the_pipe_early_is_no_error() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_lmn"))
        .args(["inspect", fixture("resnet.lmn").to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take()); // as `| head -0` would, before lmn writes
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{:?}: {}", out.status, String::from_utf8_lossy(&out.stderr));
    assert!(out.stderr.is_empty(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn the_caps_are_the_callers_to_set() {
    let file = fixture("resnet.lmn");
    let out = lmn(&["inspect", file.to_str().unwrap(), "--max-memory", "1000"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("over the limits") && err.contains("past the cap of 1000 bytes (max_memory_bytes)"), "{err}");
    let out = lmn(&["inspect", file.to_str().unwrap(), "--max-work", "10"]);
    assert!(String::from_utf8(out.stderr).unwrap().contains("past the cap of 10 (max_work)"));
}
