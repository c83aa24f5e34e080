//! TLS: a self-signed certificate on the server, a client that trusts it, and a plaintext
//! client that gets nowhere.

mod common;

use std::time::Duration;

use common::*;
use rewarddance_proto::v1;
use rewarddance_proto::v1::reward_service_client::RewardServiceClient;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_serves_trusting_clients_only() {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).expect("cert");
    let dir = std::env::temp_dir().join(format!("rd-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert_path, cert.cert.pem()).expect("write cert");
    std::fs::write(&key_path, cert.key_pair.serialize_pem()).expect("write key");
    let tls = rewarddance_server::ServerArgs {
        tls_cert: Some(cert_path),
        tls_key: Some(key_path),
        ..args()
    };
    let server = TestServer::start(TestBackend::new(Duration::ZERO), tls).await;
    let port = server.addr.port();

    let channel = Endpoint::from_shared(format!("https://localhost:{port}"))
        .expect("url")
        .tls_config(
            ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(cert.cert.pem()))
                .domain_name("localhost"),
        )
        .expect("client tls")
        .connect()
        .await
        .expect("TLS connect");
    let mut client = RewardServiceClient::new(channel);
    let r = client
        .score(request(vec![item("a", "p", 1)]))
        .await
        .expect("score over TLS")
        .into_inner();
    score_of(&r.results[0]);

    // Plaintext gets nowhere: either the HTTP/2 handshake or the call fails.
    let plain = tokio::time::timeout(Duration::from_secs(10), async {
        let mut client = RewardServiceClient::connect(format!("http://127.0.0.1:{port}")).await?;
        client.info(v1::InfoRequest {}).await?;
        Ok::<_, Box<dyn std::error::Error>>(())
    })
    .await
    .expect("fails promptly");
    assert!(plain.is_err(), "plaintext call must fail on a TLS port");
    server.shutdown().await;
    let _ = std::fs::remove_dir_all(dir);
}
