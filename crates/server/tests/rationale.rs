//! Rationales over gRPC: returned by Score, streamed on ScoreStream (progress before the final
//! message, deltas adding up to the text), checked options, and deadlines / cancellation that
//! stop decoding without losing the score.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;
use rewarddance_model::{Candidate, Mode, RationaleOptions, ScoreItem};
use rewarddance_proto::v1;
use tonic::Code;

fn with_rationale(mut item: v1::ScoreItem, options: v1::RationaleOptions) -> v1::ScoreItem {
    item.rationale = Some(options);
    item
}

fn greedy(max_tokens: u32, stream: bool) -> v1::RationaleOptions {
    v1::RationaleOptions {
        max_tokens,
        stream,
        ..Default::default()
    }
}

/// Sampling at temperature 1 over the random model's vocabulary practically never ends the
/// turn: the rationale runs to `max_tokens`, or until stopped.
fn long(stream: bool) -> v1::RationaleOptions {
    v1::RationaleOptions {
        max_tokens: 1024,
        temperature: 1.0,
        seed: 7,
        stream,
        ..Default::default()
    }
}

fn rationale_of(r: &v1::ItemResult) -> &v1::Rationale {
    r.rationale
        .as_ref()
        .unwrap_or_else(|| panic!("item {} has no rationale", r.id))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn score_returns_rationales_equal_to_in_process_decoding() {
    let backend = TestBackend::new(Duration::ZERO);
    let server = TestServer::start(backend.clone(), args()).await;
    let asked = with_rationale(item("asked", "a red fox", 1), greedy(8, false));
    let items = vec![
        asked.clone(),
        item("plain", "a red fox", 2),
        with_rationale(
            item("bad", "a red fox", 3),
            v1::RationaleOptions {
                top_p: 2.0,
                ..Default::default()
            },
        ),
        with_rationale(item("too-long", "a red fox", 4), greedy(100_000, false)),
    ];
    let response = server
        .client()
        .await
        .score(request(items))
        .await
        .expect("score")
        .into_inner();
    let r = &response.results;
    let got = rationale_of(&r[0]);
    let prepared = backend
        .model
        .prepare(&ScoreItem {
            prompt: "a red fox".into(),
            candidate: Candidate::Image(to_model_image(match &asked.candidate {
                Some(v1::score_item::Candidate::Image(i)) => i,
                _ => unreachable!(),
            })),
            reference: None,
            instruction: None,
            mode: Mode::Pointwise,
        })
        .unwrap();
    let options = RationaleOptions {
        max_tokens: 8,
        ..RationaleOptions::default()
    };
    let want = backend
        .model
        .score_with_rationales(&[&prepared], &[Some(options)], &mut |_, _| true)
        .unwrap()
        .remove(0);
    let want_r = want.1.expect("rationale");
    assert_eq!(got.token_ids, want_r.token_ids);
    assert_eq!(got.text, want_r.text);
    assert!((score_of(&r[0]).p_yes - want.0.p_yes).abs() < 1e-5);
    let stop = v1::RationaleStop::try_from(got.stop).unwrap();
    assert!(matches!(
        stop,
        v1::RationaleStop::EndOfTurn | v1::RationaleStop::MaxTokens
    ));
    assert!(r[0].timing.as_ref().unwrap().decode_ms > 0.0);
    assert!(r[1].rationale.is_none(), "no decoding unless asked");
    score_of(&r[1]);
    for bad in &r[2..] {
        let e = error_of(bad);
        assert_eq!(e.code, Code::InvalidArgument as i32, "{}", bad.id);
        assert!(e.message.contains("rationale"), "{}", e.message);
        assert!(bad.rationale.is_none());
    }
    let info = server
        .client()
        .await
        .info(v1::InfoRequest {})
        .await
        .unwrap()
        .into_inner();
    let limits = info.limits.unwrap();
    assert_eq!(
        (limits.max_rationale_tokens, limits.default_rationale_tokens),
        (1024, 256)
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn score_stream_sends_text_as_it_is_decoded_before_each_final_message() {
    let backend = TestBackend::with_step_delay(Duration::ZERO, Duration::from_millis(1));
    let server = TestServer::start(backend, args()).await;
    let mut limited = long(true);
    limited.max_tokens = 40;
    let requests = vec![
        request(vec![
            with_rationale(item("a", "a cat", 1), limited),
            item("b", "a cat", 2),
            with_rationale(item("c", "a cat", 3), greedy(6, false)),
        ]),
        request(vec![with_rationale(item("d", "a dog", 4), limited)]),
    ];
    let mut stream = server
        .client()
        .await
        .score_stream(tokio_stream::iter(requests))
        .await
        .expect("stream")
        .into_inner();
    let mut texts: HashMap<(u64, u32), String> = HashMap::new();
    let mut finals = Vec::new();
    let mut progress_messages = 0;
    while let Some(message) = stream.message().await.expect("message") {
        if message.results.is_empty() {
            progress_messages += 1;
            for d in message.rationale_deltas {
                assert!(
                    d.request as usize >= finals.len(),
                    "a delta of request {} after its final message",
                    d.request
                );
                let want_id = ["a", "b", "c"][d.index as usize];
                assert_eq!(d.id, if d.request == 0 { want_id } else { "d" });
                texts
                    .entry((d.request, d.index))
                    .or_default()
                    .push_str(&d.text);
            }
        } else {
            assert!(message.rationale_deltas.is_empty());
            finals.push(message);
        }
    }
    assert_eq!(finals.len(), 2, "one final message per request");
    assert!(progress_messages > 0);
    let first = &finals[0].results;
    assert_eq!(
        texts.get(&(0, 0)).map(String::as_str),
        Some(rationale_of(&first[0]).text.as_str())
    );
    assert_eq!(rationale_of(&first[0]).token_ids.len(), 40);
    assert!(first[1].rationale.is_none());
    assert!(
        !texts.contains_key(&(0, 2)),
        "no deltas for an item that did not ask to stream"
    );
    assert!(!rationale_of(&first[2]).token_ids.is_empty());
    assert_eq!(
        texts.get(&(1, 0)).map(String::as_str),
        Some(rationale_of(&finals[1].results[0]).text.as_str())
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deadline_mid_rationale_keeps_the_score_and_the_text_so_far() {
    let backend = TestBackend::with_step_delay(Duration::ZERO, Duration::from_millis(5));
    let server = TestServer::start(backend, args()).await;
    let mut call = tonic::Request::new(request(vec![with_rationale(
        item("slow", "a cat", 1),
        long(false),
    )]));
    call.set_timeout(Duration::from_millis(600));
    let response = server
        .client()
        .await
        .score(call)
        .await
        .expect("answered before the deadline")
        .into_inner();
    let r = &response.results[0];
    score_of(r);
    let rationale = rationale_of(r);
    assert_eq!(rationale.stop, v1::RationaleStop::Deadline as i32);
    assert!(!rationale.token_ids.is_empty() && rationale.token_ids.len() < 1024);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_stream_stops_decoding() {
    let backend = TestBackend::with_step_delay(Duration::ZERO, Duration::from_millis(5));
    let server = TestServer::start(backend.clone(), args()).await;
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tx.send(request(vec![with_rationale(
        item("x", "a cat", 1),
        long(true),
    )]))
    .await
    .unwrap();
    let mut stream = server
        .client()
        .await
        .score_stream(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .expect("stream")
        .into_inner();
    for _ in 0..3 {
        let m = stream.message().await.expect("message").expect("progress");
        assert!(m.results.is_empty(), "still decoding");
    }
    drop(stream);
    drop(tx);
    tokio::time::timeout(Duration::from_secs(10), server.engine.drained())
        .await
        .expect("the cancelled item leaves the engine");
    // The slot is released when the server drops the ticket; the decoder drops the sequence
    // at its next step, so at most the step under way and the next one run (5 ms each),
    // where an uncancelled sequence would run ~60 in 300 ms.
    let steps = backend.decode_steps();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after = backend.decode_steps() - steps;
    assert!(after <= 3, "{after} decode steps after cancel");
    assert!(steps < 1000, "stopped mid-way");
    server.shutdown().await;
}
