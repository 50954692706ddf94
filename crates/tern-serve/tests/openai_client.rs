//! The official `openai` Python client (tests/openai_client.py) against a real server. The
//! interpreter is `TERN_OPENAI_PYTHON` (scripts/test.sh installs `openai` into a cached
//! virtualenv and sets it), else `python3`; without the package the test skips (and fails
//! under CI).

use std::process::Command;
use tern_serve::Config;

#[test]
fn official_openai_client() {
    let py = std::env::var("TERN_OPENAI_PYTHON").unwrap_or_else(|_| "python3".into());
    let has = Command::new(&py)
        .args(["-c", "import openai"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !has {
        tern_testutil::skip(&format!(
            "{py} has no `openai` package (scripts/test.sh installs it)"
        ));
        return;
    }
    let server = tern_serve::start(&Config {
        port: 0,
        api_key: Some("sekrit".into()),
        ..Config::default()
    })
    .expect("server starts");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/openai_client.py");
    let out = Command::new(&py)
        .arg(script)
        .arg(format!("http://{}/v1", server.addr))
        .output()
        .expect("python runs");
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
