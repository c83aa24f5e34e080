//! Proto messages to engine items and engine results to proto messages. Validation that needs
//! no model (shapes, required fields) happens here, so malformed items never enter the queue.

use std::time::Duration;

use rewarddance_engine::{FailureKind, ItemError, ItemResult, RationaleEnd, Task, Timing, Work};
use rewarddance_model::image::FloatFormat;
use rewarddance_model::{Candidate, ImageInput, Mode, RationaleOptions, Score, ScoreItem};
use rewarddance_proto::v1;

use crate::limits::{ItemLimits, Limits, RationaleLimits, RewardLimits};
use crate::status;

pub fn invalid(message: impl Into<String>) -> ItemError {
    ItemError::new(FailureKind::InvalidArgument, message)
}

/// One request item as admission takes it: the engine's unit of work, or why there is none.
#[derive(Debug)]
pub struct Item {
    /// The caller's id, echoed in the result.
    pub id: String,
    /// The item and its task, or its error (answered at once; it never enters the queue).
    pub work: Result<Work, ItemError>,
    /// The caller wants the rationale's text streamed as it is decoded.
    pub stream_text: bool,
    /// The reward names the caller gave (`ScoreItem.rewards`), for the per-reward results.
    pub names: Vec<String>,
}

/// Converts a request's items, each on its own (a bad item is that item's error), or refuses
/// the request as a whole (with the reason) when it has no items or too many.
pub fn request(request: v1::ScoreRequest, limits: &Limits) -> Result<Vec<Item>, String> {
    check_count(request.items.len(), limits)?;
    Ok(request
        .items
        .into_iter()
        .map(|item| request_item(item, limits))
        .collect())
}

/// Refuses a request with no items or more than `max_items_per_request` (the reason).
pub fn check_count(n: usize, limits: &Limits) -> Result<(), String> {
    if n == 0 {
        return Err("the request has no items".into());
    }
    if n > limits.max_items_per_request {
        return Err(format!(
            "{n} items exceed the limit of {} per request",
            limits.max_items_per_request
        ));
    }
    Ok(())
}

/// One request item: the item's own errors first, then its rewards', then its rationale
/// options'.
fn request_item(proto: v1::ScoreItem, limits: &Limits) -> Item {
    let id = proto.id.clone();
    let names = proto.rewards.clone();
    let options = rationale(proto.rationale, limits.rationale);
    let rewards = reward_indices(&proto.rewards, &limits.rewards);
    let mode_unset = proto.mode == v1::Mode::Unspecified as i32;
    let converted = item(proto, &limits.item).and_then(|item| Ok((item, rewards?, options?)));
    let (work, stream_text) = match converted {
        Ok((mut item, rewards, options)) => {
            // A reward's declared mode applies to items that leave theirs unspecified.
            if let Some(mode) = rewards
                .first()
                .and_then(|&r| limits.rewards.get(r))
                .and_then(|r| r.mode)
                .filter(|_| mode_unset)
            {
                item.mode = mode;
            }
            let (task, stream) = match options {
                Some((options, stream)) => (Task::Rationale(options), stream),
                None => (Task::Score, false),
            };
            (
                Ok(Work {
                    item,
                    task,
                    rewards,
                }),
                stream,
            )
        }
        Err(e) => (Err(e), false),
    };
    Item {
        id,
        work,
        stream_text,
        names,
    }
}

/// The indices of the reward `names` (empty: none named, the first reward). An unknown or
/// repeated name is the item's error.
pub fn reward_indices(names: &[String], rewards: &[RewardLimits]) -> Result<Vec<usize>, ItemError> {
    let declared: Vec<&str> = rewards.iter().map(|r| r.name.as_str()).collect();
    rewarddance_model::pipeline::rewards::reward_indices(names, &declared).map_err(unknown_reward)
}

fn unknown_reward(message: String) -> ItemError {
    ItemError {
        reason: "unknown_reward",
        ..invalid(message)
    }
}

/// One reward's outcome for an item, on the wire.
pub fn reward_outcome(name: &str, outcome: &Result<Score, ItemError>) -> v1::RewardOutcome {
    v1::RewardOutcome {
        reward: name.to_string(),
        outcome: Some(match outcome {
            Ok(s) => v1::reward_outcome::Outcome::Score(score(s)),
            Err(e) => v1::reward_outcome::Outcome::Error(status::item_error(e)),
        }),
    }
}

/// A score on the wire.
fn score(s: &Score) -> v1::Score {
    v1::Score {
        p_yes: s.p_yes,
        p_yes_vocab: s.p_yes_vocab,
        logit_yes: s.logit_yes,
        logit_no: s.logit_no,
    }
}

/// Checks a caller's text field against the byte limit.
pub fn text(what: &str, value: &str, limits: &ItemLimits) -> Result<(), ItemError> {
    if value.len() > limits.max_text_bytes {
        return Err(ItemError {
            kind: FailureKind::InvalidArgument,
            reason: "too_many_tokens",
            message: format!(
                "{what} is {} bytes, over the limit of {} bytes (--max-text-bytes)",
                value.len(),
                limits.max_text_bytes
            ),
        });
    }
    Ok(())
}

/// Converts one proto item, checking what can be checked without the model.
pub fn item(item: v1::ScoreItem, limits: &ItemLimits) -> Result<ScoreItem, ItemError> {
    let max_image_pixels = limits.max_image_pixels;
    text("prompt", &item.prompt, limits)?;
    if let Some(instruction) = &item.instruction {
        text("instruction", instruction, limits)?;
    }
    if item.prompt.trim().is_empty() {
        return Err(invalid("prompt is empty"));
    }
    let reference = item
        .reference
        .map(|r| image(r, "reference", max_image_pixels))
        .transpose()?;
    let candidate = match item.candidate {
        Some(v1::score_item::Candidate::Image(img)) => {
            Candidate::Image(image(img, "image", max_image_pixels)?)
        }
        Some(v1::score_item::Candidate::Video(video)) => {
            if video.frames.is_empty() {
                return Err(invalid("video has no frames"));
            }
            let frames = video
                .frames
                .into_iter()
                .enumerate()
                .map(|(i, f)| image(f, &format!("video frame {i}"), max_image_pixels))
                .collect::<Result<Vec<_>, _>>()?;
            Candidate::Video(frames)
        }
        None => return Err(invalid("no candidate: set `image` or `video`")),
    };
    let mode = match v1::Mode::try_from(item.mode) {
        Ok(v1::Mode::Pointwise) => Mode::Pointwise,
        Ok(v1::Mode::Pairwise) => Mode::Pairwise,
        Ok(v1::Mode::Unspecified) if reference.is_some() => Mode::Pairwise,
        Ok(v1::Mode::Unspecified) => Mode::Pointwise,
        Err(_) => return Err(invalid(format!("unknown mode {}", item.mode))),
    };
    Ok(ScoreItem {
        prompt: item.prompt,
        candidate,
        reference,
        instruction: item.instruction,
        mode,
    })
}

/// Converts an item's rationale options (absent: no decoding). Returns the model's options
/// and whether the text should be streamed.
pub fn rationale(
    options: Option<v1::RationaleOptions>,
    limits: RationaleLimits,
) -> Result<Option<(RationaleOptions, bool)>, ItemError> {
    let Some(o) = options else {
        return Ok(None);
    };
    let max_tokens = match o.max_tokens {
        0 => limits.default_tokens.min(limits.max_tokens),
        n if n > limits.max_tokens => {
            return Err(invalid(format!(
                "rationale.max_tokens {n} exceeds the limit of {}",
                limits.max_tokens
            )))
        }
        n => n,
    };
    if !o.temperature.is_finite() || o.temperature < 0.0 {
        return Err(invalid(format!(
            "rationale.temperature must be finite and >= 0, got {}",
            o.temperature
        )));
    }
    let top_p = match o.top_p {
        0.0 => 1.0,
        p if p > 0.0 && p <= 1.0 => p,
        p => {
            return Err(invalid(format!(
                "rationale.top_p must be in (0, 1] (0 means 1), got {p}"
            )))
        }
    };
    Ok(Some((
        RationaleOptions {
            max_tokens: max_tokens.max(1) as usize,
            temperature: o.temperature,
            top_p,
            seed: o.seed,
            ignore_end: false,
        },
        o.stream,
    )))
}

/// Converts one image; raw pixels are checked for shape and the pixel limit here (encoded
/// images are checked from their header by the model before decoding).
pub fn image(img: v1::Image, what: &str, max_image_pixels: u64) -> Result<ImageInput, ItemError> {
    match img.source {
        Some(v1::image::Source::Encoded(bytes)) => {
            if bytes.is_empty() {
                return Err(invalid(format!("{what}: encoded image is empty")));
            }
            Ok(ImageInput::Encoded(bytes))
        }
        Some(v1::image::Source::Rgb8(raw)) => {
            let (w, h) = (raw.width as u64, raw.height as u64);
            if w == 0 || h == 0 {
                return Err(invalid(format!("{what}: raw image has zero size {w}x{h}")));
            }
            check_pixels(w, h, max_image_pixels, what)?;
            if raw.data.len() as u64 != w * h * 3 {
                return Err(invalid(format!(
                    "{what}: raw RGB8 image {w}x{h} needs {} bytes, got {}",
                    w * h * 3,
                    raw.data.len()
                )));
            }
            Ok(ImageInput::Rgb8 {
                width: raw.width,
                height: raw.height,
                data: raw.data,
            })
        }
        Some(v1::image::Source::Float(f)) => {
            let (w, h) = (u64::from(f.width), u64::from(f.height));
            check_pixels(w, h, max_image_pixels, what)?;
            let format = float_format(&f, what)?;
            let img = format
                .decode(f.width, f.height, &f.data)
                .map_err(|e| invalid(format!("{what}: {e}")))?;
            Ok(ImageInput::Float(img.into()))
        }
        None => Err(invalid(format!(
            "{what}: no image data: set `encoded`, `rgb8` or `float`"
        ))),
    }
}

/// Refuses a raw image over `max_image_pixels` before its pixels are read.
fn check_pixels(w: u64, h: u64, max_image_pixels: u64, what: &str) -> Result<(), ItemError> {
    if w * h > max_image_pixels {
        return Err(ItemError {
            kind: FailureKind::InvalidArgument,
            reason: "image_too_large",
            message: format!(
                "{what}: image too large: {w}x{h} = {} pixels exceeds the limit of \
                 {max_image_pixels} pixels",
                w * h
            ),
        });
    }
    Ok(())
}

/// The layout, dtype and range of a float image on the wire (the layout must be set: a
/// square image's layout cannot be guessed).
pub fn float_format(f: &v1::FloatImage, what: &str) -> Result<FloatFormat, ItemError> {
    let planar = match v1::PixelLayout::try_from(f.layout) {
        Ok(v1::PixelLayout::Chw) => true,
        Ok(v1::PixelLayout::Hwc) => false,
        Ok(v1::PixelLayout::Unspecified) => {
            return Err(invalid(format!(
                "{what}: float image layout is not set (CHW or HWC)"
            )))
        }
        Err(_) => {
            return Err(invalid(format!(
                "{what}: unknown pixel layout {}",
                f.layout
            )))
        }
    };
    let bf16 = match v1::PixelDtype::try_from(f.dtype) {
        Ok(v1::PixelDtype::Unspecified | v1::PixelDtype::F32) => false,
        Ok(v1::PixelDtype::Bf16) => true,
        Err(_) => return Err(invalid(format!("{what}: unknown pixel dtype {}", f.dtype))),
    };
    let signed = match v1::PixelRange::try_from(f.range) {
        Ok(v1::PixelRange::Unspecified | v1::PixelRange::Unit) => false,
        Ok(v1::PixelRange::Signed) => true,
        Err(_) => return Err(invalid(format!("{what}: unknown pixel range {}", f.range))),
    };
    Ok(FloatFormat {
        planar,
        bf16,
        signed,
    })
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Engine timing on the wire.
pub fn timing(t: &Timing) -> v1::Timing {
    v1::Timing {
        queue_ms: ms(t.queue),
        preprocess_ms: ms(t.preprocess),
        inference_ms: ms(t.inference),
        total_ms: ms(t.total),
        batch_items: t.batch_items as u32,
        batch_tokens: t.batch_tokens as u32,
        decode_ms: ms(t.decode),
    }
}

/// One item's result on the wire.
pub fn result(id: String, index: usize, r: &ItemResult) -> v1::ItemResult {
    let outcome = match &r.outcome {
        Ok(s) => v1::item_result::Outcome::Score(score(s)),
        Err(e) => v1::item_result::Outcome::Error(status::item_error(e)),
    };
    let rationale = r.rationale.as_ref().map(|x| v1::Rationale {
        text: x.text.clone(),
        token_ids: x.token_ids.clone(),
        stop: stop(x.end) as i32,
    });
    v1::ItemResult {
        id,
        index: index as u32,
        outcome: Some(outcome),
        timing: Some(timing(&r.timing)),
        rationale,
        rewards: Vec::new(),
    }
}

/// Why a rationale ended, on the wire (the one place the engine's reasons meet the proto's).
pub fn stop(end: RationaleEnd) -> v1::RationaleStop {
    match end {
        RationaleEnd::EndOfTurn => v1::RationaleStop::EndOfTurn,
        RationaleEnd::MaxTokens => v1::RationaleStop::MaxTokens,
        RationaleEnd::Deadline => v1::RationaleStop::Deadline,
        RationaleEnd::Failed => v1::RationaleStop::Failed,
    }
}

/// Request-level timing: per phase, the slowest item's.
pub fn request_timing(items: &[v1::ItemResult]) -> v1::Timing {
    request_timing_of(items.iter().map(|r| r.timing.as_ref()))
}

/// Request-level timing from its items' timings: each phase is the slowest item's.
pub fn request_timing_of<'a>(items: impl Iterator<Item = Option<&'a v1::Timing>>) -> v1::Timing {
    let mut t = v1::Timing::default();
    for it in items.flatten() {
        t.queue_ms = t.queue_ms.max(it.queue_ms);
        t.preprocess_ms = t.preprocess_ms.max(it.preprocess_ms);
        t.inference_ms = t.inference_ms.max(it.inference_ms);
        t.total_ms = t.total_ms.max(it.total_ms);
        t.batch_items = t.batch_items.max(it.batch_items);
        t.batch_tokens = t.batch_tokens.max(it.batch_tokens);
        t.decode_ms = t.decode_ms.max(it.decode_ms);
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(w: u32, h: u32, len: usize) -> v1::Image {
        v1::Image {
            source: Some(v1::image::Source::Rgb8(v1::RawImage {
                width: w,
                height: h,
                data: vec![0; len],
            })),
        }
    }

    const LIMITS: ItemLimits = ItemLimits {
        max_image_pixels: 100,
        max_text_bytes: 64,
    };

    #[test]
    fn text_over_the_byte_limit_is_refused_before_tokenising() {
        let mut it = proto_item(raw(2, 2, 12));
        it.prompt = "x".repeat(65);
        let e = item(it.clone(), &LIMITS).expect_err("long prompt");
        assert_eq!(
            (e.kind, e.reason),
            (FailureKind::InvalidArgument, "too_many_tokens")
        );
        assert!(e.message.contains("65 bytes"), "{e}");
        it.prompt = "x".repeat(64);
        assert!(item(it.clone(), &LIMITS).is_ok());
        it.instruction = Some("{prompt}".repeat(9));
        assert!(item(it, &LIMITS).is_err(), "instruction of 72 bytes");
    }

    fn proto_item(img: v1::Image) -> v1::ScoreItem {
        v1::ScoreItem {
            prompt: "a cat".into(),
            candidate: Some(v1::score_item::Candidate::Image(img)),
            ..Default::default()
        }
    }

    #[test]
    fn raw_images_are_checked_before_the_queue() {
        assert!(item(proto_item(raw(2, 2, 12)), &LIMITS).is_ok());
        let e = item(proto_item(raw(2, 2, 11)), &LIMITS).expect_err("short");
        assert!(e.message.contains("needs 12 bytes"), "{e}");
        let e = item(proto_item(raw(20, 20, 1200)), &LIMITS).expect_err("big");
        assert_eq!(e.reason, "image_too_large");
        assert_eq!(
            item(proto_item(raw(0, 2, 0)), &LIMITS).unwrap_err().kind,
            FailureKind::InvalidArgument
        );
    }

    #[test]
    fn mode_defaults_follow_the_reference() {
        let mut it = proto_item(raw(2, 2, 12));
        assert_eq!(item(it.clone(), &LIMITS).expect("ok").mode, Mode::Pointwise);
        it.reference = Some(raw(2, 2, 12));
        assert_eq!(item(it.clone(), &LIMITS).expect("ok").mode, Mode::Pairwise);
        it.mode = 9;
        assert!(item(it, &LIMITS).is_err());
    }

    #[test]
    fn rationale_options_are_checked_and_defaulted() {
        let limits = RationaleLimits {
            max_tokens: 100,
            default_tokens: 32,
        };
        assert_eq!(rationale(None, limits).unwrap(), None);
        let (o, stream) = rationale(Some(v1::RationaleOptions::default()), limits)
            .unwrap()
            .expect("options");
        assert_eq!(
            (o.max_tokens, o.temperature, o.top_p, stream),
            (32, 0.0, 1.0, false)
        );
        let ask = |f: fn(&mut v1::RationaleOptions)| {
            let mut o = v1::RationaleOptions::default();
            f(&mut o);
            rationale(Some(o), limits)
        };
        assert_eq!(
            ask(|o| o.max_tokens = 100).unwrap().unwrap().0.max_tokens,
            100
        );
        assert!(ask(|o| o.max_tokens = 101)
            .unwrap_err()
            .message
            .contains("limit of 100"));
        assert!(ask(|o| o.temperature = -1.0).is_err());
        assert!(ask(|o| o.temperature = f32::NAN).is_err());
        assert!(ask(|o| o.top_p = 1.5).is_err());
        assert!(ask(|o| o.top_p = -0.1).is_err());
        assert_eq!(ask(|o| o.top_p = 0.5).unwrap().unwrap().0.top_p, 0.5);
    }

    #[test]
    fn missing_parts_are_item_errors() {
        let mut it = proto_item(raw(2, 2, 12));
        it.prompt = " ".into();
        assert!(item(it, &LIMITS).is_err());
        let none = v1::ScoreItem {
            prompt: "p".into(),
            ..Default::default()
        };
        assert!(item(none, &LIMITS)
            .unwrap_err()
            .message
            .contains("no candidate"));
        let video = v1::ScoreItem {
            prompt: "p".into(),
            candidate: Some(v1::score_item::Candidate::Video(v1::Video {
                frames: vec![],
            })),
            ..Default::default()
        };
        assert!(item(video, &LIMITS).is_err());
    }
}
