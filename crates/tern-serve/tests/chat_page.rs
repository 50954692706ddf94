//! The chat page at `/`: served as HTML with the elements the page's script uses, open even
//! when the API needs a key; and driven in headless Chromium (tests/chat_page.py, selenium
//! through Debian's `/usr/bin/chromedriver`) against a real server with the bundled model.
//!
//! The browser test needs `chromium` and `chromium-driver` (Debian packages) and a Python
//! interpreter with selenium in `TERN_BROWSER_PYTHON`; `scripts/test.sh` installs them. Without
//! them it skips (and fails under CI).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;
use std::time::Instant;
use tern_serve::{Config, Server};

const KEY: &str = "sekrit";

/// One server for both tests: the bundled model, an API key.
fn server() -> SocketAddr {
    static S: OnceLock<Server> = OnceLock::new();
    S.get_or_init(|| {
        tern_serve::start(&Config {
            port: 0,
            api_key: Some(KEY.into()),
            ..Config::default()
        })
        .expect("server starts")
    })
    .addr
}

/// `GET path` over HTTP/1.0: the status line and headers, and the body.
fn get(addr: SocketAddr, path: &str) -> (String, String) {
    let mut s = TcpStream::connect(addr).expect("connect");
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").expect("send");
    let mut reply = String::new();
    s.read_to_string(&mut reply).expect("read");
    let (head, body) = reply.split_once("\r\n\r\n").expect("a head and a body");
    (head.to_string(), body.to_string())
}

#[test]
fn page_is_served() {
    let addr = server();
    let (head, body) = get(addr, "/");
    assert!(head.starts_with("HTTP/1.0 200"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: text/html; charset=utf-8"),
        "{head}"
    );
    for id in [
        "model",
        "api-key",
        "max-tokens",
        "temperature",
        "messages",
        "input",
        "send",
        "stop",
    ] {
        assert!(
            body.contains(&format!("id=\"{id}\"")),
            "no #{id} in the page"
        );
    }
    assert_eq!(body, tern_serve::routes::CHAT_PAGE);
    // Nothing from elsewhere: no CDN scripts, styles or fonts.
    for outside in ["http://", "https://", "src=", "@import"] {
        assert!(!body.contains(outside), "the page loads `{outside}`");
    }
    // The page is open; the API behind it still wants the key.
    let (head, _) = get(addr, "/v1/models");
    assert!(head.starts_with("HTTP/1.0 401"), "{head}");
}

#[test]
fn chat_in_headless_chromium() {
    let Ok(py) = std::env::var("TERN_BROWSER_PYTHON") else {
        tern_testutil::skip("TERN_BROWSER_PYTHON is not set (scripts/test.sh sets it)");
        return;
    };
    for tool in ["/usr/bin/chromium", "/usr/bin/chromedriver"] {
        if !Path::new(tool).exists() {
            tern_testutil::skip(&format!(
                "no {tool} (apt-get install chromium chromium-driver; scripts/test.sh does)"
            ));
            return;
        }
    }
    let has_selenium = Command::new(&py)
        .args(["-c", "import selenium"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_selenium {
        tern_testutil::skip(&format!(
            "{py} has no `selenium` package (scripts/test.sh installs it)"
        ));
        return;
    }
    let addr = server();
    let work = tern_testutil::TempDir::new("chat-page");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/chat_page.py");
    let t = Instant::now();
    let out = Command::new(&py)
        .arg(script)
        .arg(format!("http://{addr}"))
        .arg(KEY)
        .arg(work.path())
        .env("SE_OFFLINE", "true")
        .output()
        .expect("python runs");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stdout}\n{stderr}");
    eprintln!("{}in {:.1?}", stdout, t.elapsed());
}
