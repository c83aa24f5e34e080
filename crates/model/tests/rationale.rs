//! Rationale decoding: greedy tokens equal transformers' (full recomputation), KV-cache decoding
//! equals recomputing the whole sequence, the score is unchanged, and callers can stop it.

mod common;

use common::{load_model, Reference};
use rewarddance_model::{PreparedItem, RationaleOptions, StopReason};

fn greedy(max_tokens: usize) -> Option<RationaleOptions> {
    Some(RationaleOptions {
        max_tokens,
        ..RationaleOptions::default()
    })
}

#[test]
fn greedy_rationales_match_transformers_in_one_batch() {
    for name in ["tiny-internvl-hf", "tiny-internvl-ogv"] {
        let model = load_model(name);
        let reference = Reference::load(name);
        let items = reference.prepared(&model);
        let refs: Vec<&PreparedItem> = items.iter().collect();
        let plain = model.score_prepared(&refs).unwrap();
        let options: Vec<_> = items.iter().map(|_| greedy(8)).collect();
        let out = model
            .score_with_rationales(&refs, &options, &mut |_, _| true)
            .unwrap();
        for ((item, (score, rationale)), plain) in reference.items().iter().zip(&out).zip(&plain) {
            let id = item["id"].as_str().unwrap();
            assert_eq!(
                score, plain,
                "{name}/{id}: decoding must not change the score"
            );
            let want: Vec<u32> =
                serde_json::from_value(item["expected"]["greedy_ids"].clone()).unwrap();
            let r = rationale.as_ref().expect("rationale");
            assert_eq!(r.token_ids, want, "{name}/{id}");
            let stop = item["expected"]["greedy_stop"].as_str().unwrap();
            assert_eq!(
                r.stop,
                if stop == "max_tokens" {
                    StopReason::MaxTokens
                } else {
                    StopReason::EndOfTurn
                }
            );
        }
    }
}

#[test]
fn kv_cache_decoding_equals_full_recomputation() {
    let model = load_model("tiny-internvl-ogv");
    let reference = Reference::load("tiny-internvl-ogv");
    let items = reference.prepared(&model);
    let first = &items[0];
    let cached = model
        .score_with_rationales(&[first], &[greedy(6)], &mut |_, _| true)
        .unwrap();
    let tokens = cached[0].1.as_ref().unwrap().token_ids.clone();
    assert_eq!(tokens.len(), 6);
    for k in 0..tokens.len() {
        // Feed the prompt plus the first k generated tokens as a fresh prefill.
        let mut longer = first.clone();
        longer.input_ids.extend_from_slice(&tokens[..k]);
        let next = model
            .score_with_rationales(&[&longer], &[greedy(1)], &mut |_, _| true)
            .unwrap();
        assert_eq!(
            next[0].1.as_ref().unwrap().token_ids,
            vec![tokens[k]],
            "step {k}"
        );
    }
}

#[test]
fn only_items_that_ask_are_decoded_and_callers_can_stop() {
    let model = load_model("tiny-internvl-ogv");
    let reference = Reference::load("tiny-internvl-ogv");
    let items = reference.prepared(&model);
    let refs: Vec<&PreparedItem> = items.iter().take(3).collect();
    let mut seen = Vec::new();
    let out = model
        .score_with_rationales(&refs, &[None, greedy(8), greedy(8)], &mut |item, text| {
            seen.push((item, text.to_string()));
            // Item 2's caller goes away after its second piece of text.
            !(item == 2 && seen.iter().filter(|(i, _)| *i == 2).count() >= 2)
        })
        .unwrap();
    assert!(out[0].1.is_none());
    assert_eq!(out[1].1.as_ref().unwrap().stop, StopReason::MaxTokens);
    let stopped = out[2].1.as_ref().unwrap();
    assert_eq!(stopped.stop, StopReason::Stopped);
    assert!(stopped.token_ids.len() < 8);
    let streamed: String = seen
        .iter()
        .filter(|(i, _)| *i == 1)
        .map(|(_, t)| t.as_str())
        .collect();
    assert_eq!(
        streamed,
        out[1].1.as_ref().unwrap().text,
        "streamed pieces add up to the text"
    );
}

#[test]
fn seeded_sampling_is_reproducible() {
    let model = load_model("tiny-internvl-ogv");
    let reference = Reference::load("tiny-internvl-ogv");
    let items = reference.prepared(&model);
    let hot = |seed| {
        Some(RationaleOptions {
            max_tokens: 6,
            temperature: 1.0,
            top_p: 0.9,
            seed,
            ..RationaleOptions::default()
        })
    };
    let run = |seed| {
        model
            .score_with_rationales(&[&items[0]], &[hot(seed)], &mut |_, _| true)
            .unwrap()[0]
            .1
            .clone()
            .unwrap()
    };
    assert_eq!(run(42), run(42));
}

#[test]
fn generations_from_different_prefills_share_decode_steps() {
    // A server keeps decoding while new batches are prefilled: a generation that joins late
    // must decode exactly as it would alone.
    let model = load_model("tiny-internvl-ogv");
    let reference = Reference::load("tiny-internvl-ogv");
    let items = reference.prepared(&model);
    let alone = |i: usize| {
        model
            .score_with_rationales(&[&items[i]], &[greedy(6)], &mut |_, _| true)
            .unwrap()[0]
            .1
            .clone()
            .unwrap()
    };
    let start = |i: usize| {
        let (_, mut g) = model
            .prefill_for_rationales(&[&items[i]], &[greedy(6)])
            .unwrap();
        g[0].take().expect("a generation")
    };
    let mut early = start(0);
    let mut texts = [String::new(), String::new()];
    // Two steps alone, then the second item joins and both step together.
    for _ in 0..2 {
        let t = model.next_token(&mut early).unwrap();
        assert!(t.stop.is_none());
        texts[0] += &t.text;
        model.decode_forward(&mut [&mut early]).unwrap();
    }
    let mut late = start(1);
    let mut running = vec![(0usize, early), (1usize, late)];
    let mut finished = Vec::new();
    while !running.is_empty() {
        let mut next = Vec::new();
        for (k, mut g) in running {
            let t = model.next_token(&mut g).unwrap();
            texts[k] += &t.text;
            match t.stop {
                Some(stop) => finished.push((k, g.finish(stop))),
                None => next.push((k, g)),
            }
        }
        let mut refs: Vec<_> = next.iter_mut().map(|(_, g)| g).collect();
        model.decode_forward(&mut refs).unwrap();
        running = next;
    }
    finished.sort_by_key(|(k, _)| *k);
    for (k, r) in finished {
        assert_eq!(r, alone(k), "item {k}");
        assert_eq!(texts[k], r.text, "item {k}: increments add up to the text");
    }
    late = start(1);
    model.next_token(&mut late).unwrap();
    assert!(
        model.next_token(&mut late).is_err(),
        "a second pick without a decode step is refused"
    );
}

/// What the streamed pieces were before detokenisation became incremental: the whole sequence
/// decoded after each token, and whatever extends the text already emitted (held back while it
/// ends in an incomplete character), the rest of the final text at the end.
fn pieces_by_whole_sequence(model: &rewarddance_model::RewardModel, ids: &[u32]) -> Vec<String> {
    let decode = |ids: &[u32]| model.prompt_builder().decode(ids).unwrap();
    let mut emitted = String::new();
    let mut pieces = Vec::new();
    for k in 1..=ids.len() {
        let text = decode(&ids[..k]);
        if k < ids.len() && text.ends_with('\u{FFFD}') {
            continue;
        }
        if let Some(fresh) = text.strip_prefix(emitted.as_str()) {
            if !fresh.is_empty() {
                pieces.push(fresh.to_string());
                emitted = text.clone();
            }
        }
    }
    pieces
}

#[test]
fn streamed_text_is_what_decoding_the_whole_sequence_gives_on_every_fixture() {
    // Hot sampling over random fixture weights draws arbitrary tokens (byte pieces that split
    // characters, SentencePiece word starts): the incremental detokeniser must stream exactly
    // what decoding the whole sequence after every token streamed, on both tokenizer kinds.
    for name in rewarddance_model::testing::fixtures::MODELS {
        let model = load_model(name);
        let items = Reference::load(name).prepared(&model);
        for seed in [1, 2, 3] {
            let hot = RationaleOptions {
                max_tokens: 48,
                temperature: 2.0,
                seed,
                ignore_end: true,
                ..RationaleOptions::default()
            };
            let mut streamed = Vec::new();
            let out = model
                .score_with_rationales(&[&items[0]], &[Some(hot)], &mut |_, text| {
                    streamed.push(text.to_string());
                    true
                })
                .unwrap();
            let rationale = out[0].1.clone().unwrap();
            assert_eq!(rationale.token_ids.len(), 48, "{name} seed {seed}");
            assert_eq!(
                rationale.text,
                model.prompt_builder().decode(&rationale.token_ids).unwrap(),
                "{name} seed {seed}: the text is the whole sequence decoded"
            );
            assert_eq!(
                streamed,
                pieces_by_whole_sequence(&model, &rationale.token_ids),
                "{name} seed {seed}: the same pieces as whole-sequence decoding"
            );
        }
    }
}
