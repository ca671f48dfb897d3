//! deploy/examples/flask: Flask-Session's Redis backend, unchanged, keeps its sessions in a
//! Tandem agent; the session outlives the app process.

mod support;

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};

use support::{Agent, capability, has_python_modules, wait_for_port};

struct FlaskApp {
    child: Child,
    addr: SocketAddr,
}

impl FlaskApp {
    async fn start(redis: SocketAddr) -> FlaskApp {
        let addr = support::free_tcp_addr();
        let app = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/examples/flask/app.py");
        let child = Command::new("python3")
            .arg(app)
            .env("TANDEM_REDIS_URL", format!("redis://{redis}"))
            .env("HOST", "127.0.0.1")
            .env("PORT", addr.port().to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        wait_for_port(addr).await;
        FlaskApp { child, addr }
    }
}

impl Drop for FlaskApp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// POST or GET with the session cookie; returns the JSON and any new cookie.
async fn call(
    method: reqwest::Method,
    url: String,
    cookie: Option<&str>,
) -> (serde_json::Value, Option<String>) {
    let mut request = reqwest::Client::new().request(method, url);
    if let Some(cookie) = cookie {
        request = request.header("cookie", cookie);
    }
    let response = request.send().await.unwrap();
    assert!(response.status().is_success(), "{}", response.status());
    let cookie = response
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(str::to_string);
    (response.json().await.unwrap(), cookie)
}

async fn resp(agent: SocketAddr, args: &[&str]) -> String {
    let output = tokio::process::Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &agent.port().to_string()])
        .args(args)
        .output()
        .await
        .unwrap();
    String::from_utf8(output.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flask_session_keeps_sessions_in_the_agent() {
    let python = has_python_modules(&["flask", "flask_session", "redis"]);
    if !capability("python3 with flask, flask-session and redis", python)
        || !capability("redis-cli", support::has_program("redis-cli"))
    {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::start(dir.path(), "flask-host", &[]);
    wait_for_port(agent.resp).await;

    let app = FlaskApp::start(agent.resp).await;
    let base = format!("http://{}", app.addr);
    let (first, cookie) = call(reqwest::Method::POST, format!("{base}/visit"), None).await;
    let cookie = cookie.expect("Flask-Session sets a cookie");
    assert_eq!(first["visits"], 1);
    call(
        reqwest::Method::POST,
        format!("{base}/visit"),
        Some(&cookie),
    )
    .await;
    let (state, _) = call(
        reqwest::Method::POST,
        format!("{base}/cart/book"),
        Some(&cookie),
    )
    .await;
    assert_eq!(
        (state["visits"].as_i64(), state["cart"].clone()),
        (Some(2), serde_json::json!(["book"]))
    );
    let first_pid = state["pid"].clone();

    // The session is a key in the agent, with the app's lifetime as its TTL.
    let keys = resp(agent.resp, &["KEYS", "session:*"]).await;
    assert_eq!(keys.lines().count(), 1, "{keys}");
    let key = keys.trim().to_string();
    let ttl: i64 = resp(agent.resp, &["TTL", &key])
        .await
        .trim()
        .parse()
        .unwrap();
    assert!((1700..=1800).contains(&ttl), "ttl {ttl}");

    // A new app process finds the session in the agent.
    drop(app);
    let app = FlaskApp::start(agent.resp).await;
    let (state, _) = call(
        reqwest::Method::GET,
        format!("http://{}/", app.addr),
        Some(&cookie),
    )
    .await;
    assert_ne!(state["pid"], first_pid, "a new process served it");
    assert_eq!(state["visits"], 2);
    assert_eq!(state["cart"], serde_json::json!(["book"]));

    // Logging out clears the session's data in the agent.
    call(
        reqwest::Method::POST,
        format!("http://{}/logout", app.addr),
        Some(&cookie),
    )
    .await;
    let (state, _) = call(
        reqwest::Method::GET,
        format!("http://{}/", app.addr),
        Some(&cookie),
    )
    .await;
    assert_eq!(state["visits"], 0);
}
