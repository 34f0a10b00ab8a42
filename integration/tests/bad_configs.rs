//! The corpus of bad configurations (`integration/bad-configs/`): each file is checked with the
//! real binary, as a user would (`myelin check -c FILE`), and must fail with exit status 2,
//! print exactly the errors in its `.expect` file (text, line and column; one error per line),
//! and never panic. `MYELIN_BLESS=1` writes the `.expect` files from what the binary prints
//! (review the diff before committing it).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, ensure, Context, Result};
use myelin_integration::myelin_bin;

fn corpus() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("bad-configs")
}

/// `myelin check -c <name>` in `dir`: the exit status and the errors it printed.
fn check(dir: &Path, name: &str) -> Result<(Option<i32>, Vec<String>, String)> {
    let out = Command::new(myelin_bin())
        .args(["check", "--log-format", "text", "-c", name])
        .current_dir(dir)
        .env_remove("MYELIN_CONFIG")
        .env_remove("MYELIN_TEST_UNSET_PORT")
        .env("MYELIN_LOG", "warn")
        .output()
        .context("run myelin check")?;
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    ensure!(!stderr.contains("panicked"), "{name}: myelin panicked:\n{stderr}");
    let Some(at) = stderr.find("error: ") else { bail!("{name}: no error printed:\n{stderr}") };
    let mut lines: Vec<String> = stderr[at + "error: ".len()..].lines().map(str::to_owned).collect();
    let trailer = lines.pop().unwrap_or_default();
    let n = lines.len();
    ensure!(trailer == format!("{n} error{} in the configuration", if n == 1 { "" } else { "s" }), "{name}: unexpected end of output: {trailer:?}\n{stderr}");
    Ok((out.status.code(), lines, stderr))
}

#[test]
fn every_bad_config_fails_with_its_exact_errors() -> Result<()> {
    let dir = corpus();
    let mut names: Vec<String> = std::fs::read_dir(&dir)?
        .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect::<std::io::Result<_>>()?;
    names.retain(|n| n.ends_with(".yaml") || n.ends_with(".json"));
    names.sort();
    assert!(names.len() >= 40, "the corpus has {} configs", names.len());
    let bless = std::env::var_os("MYELIN_BLESS").is_some();
    let mut failures = Vec::new();
    for name in &names {
        let expect_file = dir.join(format!("{}.expect", name.rsplit_once('.').unwrap().0));
        let (status, got, stderr) = check(&dir, name)?;
        if bless {
            std::fs::write(&expect_file, got.iter().map(|l| format!("{l}\n")).collect::<String>())?;
            continue;
        }
        let expected: Vec<String> = std::fs::read_to_string(&expect_file).with_context(|| format!("{} is missing", expect_file.display()))?.lines().map(str::to_owned).collect();
        if status != Some(2) {
            failures.push(format!("{name}: exit status {status:?}, not 2\n{stderr}"));
        }
        if got != expected {
            failures.push(format!("{name}:\n  expected: {expected:#?}\n  got:      {got:#?}"));
        }
    }
    assert!(failures.is_empty(), "{} of {} bad configs:\n{}", failures.len(), names.len(), failures.join("\n"));
    Ok(())
}

/// Too large to keep in the repository: a config of 16 MiB and one byte, and a path that never
/// ends. At most 16 MiB is read.
#[test]
fn oversized_configs_fail_at_once() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let mut text = "haproxy: {do_reloads: false}\n#".to_owned();
    text.push_str(&"x".repeat(16 * 1024 * 1024 + 1 - text.len()));
    std::fs::write(tmp.path().join("big.yaml"), &text)?;
    let (status, got, _) = check(tmp.path(), "big.yaml")?;
    assert_eq!((status, got), (Some(2), vec!["big.yaml: larger than 16 MiB: not a configuration file".to_owned()]));
    let started = std::time::Instant::now();
    let (status, got, _) = check(tmp.path(), "/dev/zero")?;
    assert_eq!((status, got), (Some(2), vec!["/dev/zero: larger than 16 MiB: not a configuration file".to_owned()]));
    assert!(started.elapsed() < std::time::Duration::from_secs(10), "{:?}", started.elapsed());
    Ok(())
}
