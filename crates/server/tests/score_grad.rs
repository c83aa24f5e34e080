//! ScoreGrad end to end over loopback (the bundled model): the float path against Score, the
//! caller's layouts and dtypes, gradient ascent, batch invariance, bad items, and message
//! limits kept apart from Score's.

mod common;

use common::*;
use rewarddance_proto::v1;
use tonic::Code;

/// A smooth deterministic `w x h` RGB image as bytes.
fn pixels(w: u32, h: u32, seed: u32) -> Vec<u8> {
    (0..h)
        .flat_map(|y| {
            (0..w).flat_map(move |x| {
                [
                    (40 + (x * 7 + seed * 13) % 170) as u8,
                    (60 + (y * 5 + seed * 3) % 150) as u8,
                    (90 + ((x + y + seed) % 23) * 6) as u8,
                ]
            })
        })
        .collect()
}

fn float_image(w: u32, h: u32, hwc01: &[f32]) -> v1::Image {
    v1::Image {
        source: Some(v1::image::Source::Float(v1::FloatImage {
            width: w,
            height: h,
            layout: v1::PixelLayout::Hwc as i32,
            dtype: v1::PixelDtype::F32 as i32,
            range: v1::PixelRange::Unit as i32,
            data: hwc01.iter().flat_map(|v| v.to_le_bytes()).collect(),
        })),
    }
}

fn grad_item(id: &str, image: v1::Image) -> v1::ScoreItem {
    v1::ScoreItem {
        id: id.into(),
        prompt: "a red fox in the snow".into(),
        candidate: Some(v1::score_item::Candidate::Image(image)),
        ..Default::default()
    }
}

fn grad_request(items: Vec<v1::ScoreItem>) -> v1::ScoreGradRequest {
    v1::ScoreGradRequest {
        items,
        objective: v1::Objective::PYes as i32,
        f32_gradients: false,
    }
}

fn f32s(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect()
}

fn p_yes(r: &v1::GradResult) -> f64 {
    match r.outcome.as_ref() {
        Some(v1::grad_result::Outcome::Score(s)) => s.p_yes,
        other => panic!("item {} was not scored: {other:?}", r.id),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_float_path_scores_as_score_does_and_gradients_come_back_in_the_callers_format() {
    let server = TestServer::start(TestBackend::new(Default::default()), args()).await;
    let mut client = server.client().await;
    let side = client
        .info(v1::InfoRequest {})
        .await
        .unwrap()
        .into_inner()
        .tile_size;
    let bytes = pixels(side, side, 1);
    let hwc: Vec<f32> = bytes.iter().map(|&v| f32::from(v) / 255.0).collect();
    let scored = client
        .score(request(vec![v1::ScoreItem {
            candidate: Some(v1::score_item::Candidate::Image(v1::Image {
                source: Some(v1::image::Source::Rgb8(v1::RawImage {
                    width: side,
                    height: side,
                    data: bytes.clone(),
                })),
            })),
            ..grad_item("u8", float_image(side, side, &hwc))
        }]))
        .await
        .unwrap()
        .into_inner();
    let grad = client
        .score_grad(grad_request(vec![grad_item(
            "f",
            float_image(side, side, &hwc),
        )]))
        .await
        .unwrap()
        .into_inner();
    let r = &grad.results[0];
    // No resize at the tile size: the float tiles are the 8-bit ones.
    assert!((p_yes(r) - score_of(&scored.results[0]).p_yes).abs() < 1e-4);
    assert!(
        (r.objective - p_yes(r)).abs() < 1e-9,
        "objective P_YES is p_yes"
    );
    let g = &r.gradients[0];
    assert_eq!(
        (g.width, g.height, g.layout, g.dtype),
        (
            side,
            side,
            v1::PixelLayout::Hwc as i32,
            v1::PixelDtype::F32 as i32
        )
    );
    let g_hwc = f32s(&g.data);
    assert_eq!(g_hwc.len(), hwc.len());
    assert!(g_hwc.iter().any(|v| *v != 0.0));

    // The same image as a torch-style CHW tensor in [-1, 1], in bf16: the gradient comes back
    // CHW, bf16, and half as large (d/dx of (x + 1) / 2).
    let chw: Vec<f32> = (0..3)
        .flat_map(|c| (0..hwc.len() / 3).map(move |i| (c, i)))
        .map(|(c, i)| hwc[i * 3 + c] * 2.0 - 1.0)
        .collect();
    let bf16 = |v: &[f32]| -> Vec<u8> {
        v.iter()
            .flat_map(|x| half::bf16::from_f32(*x).to_le_bytes())
            .collect()
    };
    let signed = v1::Image {
        source: Some(v1::image::Source::Float(v1::FloatImage {
            width: side,
            height: side,
            layout: v1::PixelLayout::Chw as i32,
            dtype: v1::PixelDtype::Bf16 as i32,
            range: v1::PixelRange::Signed as i32,
            data: bf16(&chw),
        })),
    };
    let out = client
        .score_grad(grad_request(vec![grad_item("s", signed)]))
        .await
        .unwrap()
        .into_inner();
    let g = &out.results[0].gradients[0];
    assert_eq!(
        (g.layout, g.dtype, g.range),
        (
            v1::PixelLayout::Chw as i32,
            v1::PixelDtype::Bf16 as i32,
            v1::PixelRange::Signed as i32
        )
    );
    let got: Vec<f32> = g
        .data
        .chunks_exact(2)
        .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
        .collect();
    let top = g_hwc.iter().fold(0f32, |m, v| m.max(v.abs()));
    let plane = hwc.len() / 3;
    let worst = (0..got.len())
        .map(|k| (got[k] - 0.5 * g_hwc[(k % plane) * 3 + k / plane]).abs())
        .fold(0f32, f32::max);
    // bf16 input rounding moves the point a little; the gradient is the same map.
    assert!(worst <= 0.05 * top, "worst {worst} vs max {top}");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_steps_of_gradient_ascent_raise_p_yes() {
    let server = TestServer::start(TestBackend::new(Default::default()), args()).await;
    let mut client = server.client().await;
    let (w, h) = (40u32, 30u32);
    let mut x: Vec<f32> = pixels(w, h, 2)
        .iter()
        .map(|&v| f32::from(v) / 255.0)
        .collect();
    let mut first = None;
    let mut last = 0.0;
    for _ in 0..20 {
        let out = client
            .score_grad(v1::ScoreGradRequest {
                objective: v1::Objective::LogitMargin as i32,
                ..grad_request(vec![grad_item("x", float_image(w, h, &x))])
            })
            .await
            .unwrap()
            .into_inner();
        let r = &out.results[0];
        first.get_or_insert(p_yes(r));
        last = p_yes(r);
        let g = f32s(&r.gradients[0].data);
        let norm = g.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
        for (xi, gi) in x.iter_mut().zip(&g) {
            *xi = (*xi + 2.0 * gi / norm).clamp(0.0, 1.0);
        }
    }
    let first = first.unwrap();
    println!("p_yes {first:.4} -> {last:.4}");
    assert!(last > first + 0.01, "p_yes {first} -> {last}");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_items_gradient_does_not_depend_on_its_neighbours() {
    let server = TestServer::start(TestBackend::new(Default::default()), args()).await;
    let mut client = server.client().await;
    let image = |seed, w, h| {
        let x: Vec<f32> = pixels(w, h, seed)
            .iter()
            .map(|&v| f32::from(v) / 255.0)
            .collect();
        float_image(w, h, &x)
    };
    let alone = client
        .score_grad(grad_request(vec![grad_item("a", image(3, 50, 40))]))
        .await
        .unwrap()
        .into_inner();
    let mut pairwise = grad_item("p", image(5, 30, 30));
    pairwise.reference = Some(png_image(30, 30, 9));
    let mixed = client
        .score_grad(grad_request(vec![
            grad_item("b", image(4, 70, 20)),
            grad_item("a", image(3, 50, 40)),
            pairwise,
            grad_item("c", image(6, 16, 16)),
        ]))
        .await
        .unwrap()
        .into_inner();
    let (g0, g1) = (
        f32s(&alone.results[0].gradients[0].data),
        f32s(&mixed.results[1].gradients[0].data),
    );
    let top = g0.iter().fold(0f32, |m, v| m.max(v.abs()));
    let worst = g0
        .iter()
        .zip(&g1)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(worst <= 1e-5 * top, "{worst} vs {top}");
    assert_eq!(mixed.results.len(), 4);
    assert!(mixed.results.iter().all(|r| r.gradients.len() == 1));
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_items_get_their_own_errors_and_bad_calls_are_refused() {
    let server = TestServer::start(TestBackend::new(Default::default()), args()).await;
    let mut client = server.client().await;
    let x: Vec<f32> = pixels(20, 20, 1)
        .iter()
        .map(|&v| f32::from(v) / 255.0)
        .collect();
    let mut with_rationale = grad_item("r", float_image(20, 20, &x));
    with_rationale.rationale = Some(v1::RationaleOptions::default());
    let mut unlaid = float_image(20, 20, &x);
    if let Some(v1::image::Source::Float(f)) = &mut unlaid.source {
        f.layout = v1::PixelLayout::Unspecified as i32;
    }
    let mut nan = x.clone();
    nan[7] = f32::NAN;
    let out = client
        .score_grad(grad_request(vec![
            grad_item("png", png_image(20, 20, 1)),
            with_rationale,
            grad_item("layout", unlaid),
            grad_item("nan", float_image(20, 20, &nan)),
            grad_item("short", float_image(21, 20, &x)),
            grad_item("ok", float_image(20, 20, &x)),
        ]))
        .await
        .unwrap()
        .into_inner();
    for (r, needle) in out.results.iter().zip([
        "not a float image",
        "rationale",
        "layout",
        "not finite",
        "needs",
    ]) {
        match r.outcome.as_ref() {
            Some(v1::grad_result::Outcome::Error(e)) => {
                assert_eq!(e.code, Code::InvalidArgument as i32, "{}", r.id);
                assert!(e.message.contains(needle), "{}: {}", r.id, e.message);
                assert!(r.gradients.is_empty());
            }
            other => panic!("{} was not refused: {other:?}", r.id),
        }
    }
    assert!(p_yes(&out.results[5]) > 0.0);
    let err = client
        .score_grad(v1::ScoreGradRequest {
            objective: 99,
            ..grad_request(vec![grad_item("ok", float_image(20, 20, &x))])
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let err = client.score_grad(grad_request(vec![])).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scoregrad_has_its_own_message_limit_and_score_keeps_its_own() {
    let limits = rewarddance_server::ServerArgs {
        max_message_bytes: 64 * 1024,
        max_grad_message_bytes: 1 << 20,
        ..args()
    };
    let server = TestServer::start(TestBackend::new(Default::default()), limits).await;
    let mut client = server.client().await;
    // A 128x128 f32 image is 196 KB: over Score's limit, under ScoreGrad's.
    let x = vec![0.5f32; 128 * 128 * 3];
    let big = grad_item("big", float_image(128, 128, &x));
    let ok = client
        .score_grad(grad_request(vec![big.clone()]))
        .await
        .unwrap()
        .into_inner();
    assert!(p_yes(&ok.results[0]) > 0.0);
    let err = client.score(request(vec![big])).await.unwrap_err();
    assert_eq!(err.code(), Code::OutOfRange, "{err:?}");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gradient_item_with_more_tiles_than_the_gradient_budget_is_refused_alone() {
    // The start-up memory check sizes gradients for --max-gradient-tiles: an item that needs
    // more tiles would not fit what was checked, so it is refused, and its neighbour runs.
    let limits = rewarddance_server::ServerArgs {
        max_gradient_tiles: 2,
        ..args()
    };
    let server = TestServer::start(TestBackend::new(Default::default()), limits).await;
    let mut client = server.client().await;
    let wide: Vec<f32> = pixels(200, 50, 1)
        .iter()
        .map(|&v| f32::from(v) / 255.0)
        .collect();
    let small: Vec<f32> = pixels(20, 20, 2)
        .iter()
        .map(|&v| f32::from(v) / 255.0)
        .collect();
    let out = client
        .score_grad(grad_request(vec![
            grad_item("wide", float_image(200, 50, &wide)),
            grad_item("small", float_image(20, 20, &small)),
        ]))
        .await
        .unwrap()
        .into_inner();
    match out.results[0].outcome.as_ref() {
        Some(v1::grad_result::Outcome::Error(e)) => {
            assert_eq!(e.code, Code::InvalidArgument as i32);
            assert_eq!(e.reason, "too_many_tiles", "{}", e.message);
        }
        other => panic!("the wide item was not refused: {other:?}"),
    }
    assert!(p_yes(&out.results[1]) > 0.0);
    // Score takes the same wide image: the limit is the gradient budget's only.
    let scored = client
        .score(request(vec![grad_item(
            "wide",
            float_image(200, 50, &wide),
        )]))
        .await
        .unwrap()
        .into_inner();
    assert!(score_of(&scored.results[0]).p_yes > 0.0);
    server.shutdown().await;
}
