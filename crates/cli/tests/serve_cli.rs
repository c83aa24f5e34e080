//! `rewarddance serve` as a process: config file, health, and SIGTERM during load (every
//! accepted item is answered, new calls are refused, the process exits 0).

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use rewarddance_proto::v1;
use rewarddance_proto::v1::reward_service_client::RewardServiceClient;
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};

/// The server process; killed on drop if a test fails half-way.
struct Server {
    child: Child,
    addr: String,
    lines: mpsc::Receiver<serde_json::Value>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(extra: &[&str]) -> Server {
    let mut child = Command::new(env!("CARGO_BIN_EXE_rewarddance"))
        .args([
            "serve",
            "--addr",
            "127.0.0.1:0",
            "--metrics-addr",
            "127.0.0.1:0",
        ])
        .args(["--log-format", "json"])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn rewarddance serve");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
                let _ = tx.send(v);
            }
        }
    });
    let mut server = Server {
        child,
        addr: String::new(),
        lines,
    };
    let line = wait_for(&server, "listening", Duration::from_secs(60));
    server.addr = line["addr"].as_str().expect("addr").to_string();
    server
}

fn wait_for(server: &Server, message: &str, timeout: Duration) -> serde_json::Value {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match server.lines.recv_timeout(left) {
            Ok(v) if v["message"] == message => return v,
            Ok(_) => {}
            Err(_) => panic!("no {message:?} log line within {timeout:?}"),
        }
    }
}

async fn wait_serving(url: &str) {
    let channel = tonic::transport::Channel::from_shared(url.to_string())
        .expect("url")
        .connect()
        .await
        .expect("connect");
    let mut health = HealthClient::new(channel);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let status = health
            .check(HealthCheckRequest {
                service: rewarddance_proto::SERVICE_NAME.into(),
            })
            .await
            .expect("health")
            .into_inner()
            .status;
        if status == ServingStatus::Serving as i32 {
            return;
        }
        assert!(Instant::now() < deadline, "never SERVING");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn item(id: String, seed: u32) -> v1::ScoreItem {
    let (w, h) = (40 + seed % 17, 30 + seed % 11);
    v1::ScoreItem {
        id,
        prompt: "a lighthouse at dusk".into(),
        candidate: Some(v1::score_item::Candidate::Image(v1::Image {
            source: Some(v1::image::Source::Rgb8(v1::RawImage {
                width: w,
                height: h,
                data: (0..w * h * 3).map(|i| (i * seed) as u8).collect(),
            })),
        })),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_load_answers_every_accepted_item_and_exits_cleanly() {
    let dir = std::env::temp_dir().join(format!("rd-serve-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("tmp dir");
    let config = dir.join("serve.toml");
    std::fs::write(&config, "max-batch-items = 8\nmax-batch-delay-ms = 1\n").expect("config");
    let server = start(&["--config", config.to_str().expect("utf-8 path")]);
    let url = format!("http://{}", server.addr);
    wait_serving(&url).await;

    let mut client = RewardServiceClient::connect(url.clone())
        .await
        .expect("connect");
    let info = client
        .info(v1::InfoRequest {})
        .await
        .expect("info")
        .into_inner();
    assert_eq!(
        info.limits.expect("limits").max_batch_items,
        8,
        "config file applied"
    );

    let signalled = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for c in 0..16u32 {
        let (url, signalled) = (url.clone(), signalled.clone());
        clients.push(tokio::spawn(async move {
            let mut client = RewardServiceClient::connect(url).await.expect("connect");
            let (mut answered_after_signal, mut scored) = (0usize, 0usize);
            for r in 0u32.. {
                let sent_after_signal = signalled.load(Ordering::SeqCst);
                let items = vec![
                    item(format!("{c}-{r}-0"), c + r),
                    item(format!("{c}-{r}-1"), c * r + 1),
                ];
                match client.score(v1::ScoreRequest { items }).await {
                    Ok(response) => {
                        for res in &response.get_ref().results {
                            match &res.outcome {
                                Some(v1::item_result::Outcome::Score(_)) => scored += 1,
                                other => panic!("accepted item {} not scored: {other:?}", res.id),
                            }
                        }
                        if signalled.load(Ordering::SeqCst) && !sent_after_signal {
                            answered_after_signal += 1;
                        }
                    }
                    Err(status) => {
                        // Refused (draining, or the listener is gone): never a lost item.
                        assert!(
                            signalled.load(Ordering::SeqCst),
                            "call failed before SIGTERM: {status:?}"
                        );
                        // A call sent as the server stops accepting is refused by gRPC
                        // (UNAVAILABLE) or by the transport: the GOAWAY races the new stream and
                        // hyper reports it as CANCELLED "connection closed". Neither was admitted:
                        // that nothing admitted was lost is checked below (`unanswered == 0`,
                        // and every OK response has every item scored).
                        assert!(
                            matches!(
                                status.code(),
                                Code::Unavailable | Code::Unknown | Code::Cancelled
                            ),
                            "unexpected refusal {status:?}"
                        );
                        return (scored, answered_after_signal);
                    }
                }
            }
            unreachable!()
        }));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    signalled.store(true, Ordering::SeqCst);
    let pid = server.child.id().to_string();
    let killed = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    assert!(killed.success());

    let (mut scored, mut in_flight_at_signal) = (0, 0);
    for c in clients {
        let (s, a) = tokio::time::timeout(Duration::from_secs(60), c)
            .await
            .expect("clients finish")
            .expect("client ok");
        scored += s;
        in_flight_at_signal += a;
    }
    assert!(scored > 0, "load reached the server");
    assert!(
        in_flight_at_signal > 0,
        "no call was in flight at SIGTERM: the test proved nothing"
    );
    let stopped = wait_for(&server, "server stopped", Duration::from_secs(60));
    assert_eq!(stopped["unanswered"], 0, "{stopped}");
    let mut server = server;
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = server.child.try_wait().expect("wait") {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "server did not exit after draining"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "exit status {status}");
    let _ = std::fs::remove_dir_all(dir);
}
