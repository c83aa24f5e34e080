//! `rewarddance score --grad-out FILE.npy`: the gradient of the reward with respect to one
//! image's pixels, written as a float32 `.npy` of shape `(H, W, 3)` (the pixels as `[0, 1]`
//! floats, `v / 255`), so a user can look at what the reward responds to.

use std::io::Write;
use std::path::Path;

use anyhow::{bail, Context, Result};
use rewarddance_model::image::{decode, DecodeLimits, FloatImage};
use rewarddance_model::pipeline::gradient::Objective;
use rewarddance_model::{Candidate, ImageInput, RewardModel, ScoreItem};
use serde_json::{json, Value};

/// Scores `item` (whose candidate is one encoded image) through its float values, writes the
/// gradient of `objective` to `out`, and returns the JSON line to print.
pub fn run(
    model: &RewardModel,
    item: ScoreItem,
    objective: Objective,
    out: &Path,
) -> Result<Value> {
    let Candidate::Image(image) = &item.candidate else {
        bail!("--grad-out takes one --image (not --frame)");
    };
    let limits = DecodeLimits {
        max_pixels: model.options().max_image_pixels,
    };
    let rgb = decode(image, &limits)?;
    let float = FloatImage::from_rgb8(&rgb);
    let (width, height) = (float.width(), float.height());
    let item = ScoreItem {
        candidate: Candidate::Image(ImageInput::Float(float.into())),
        ..item
    };
    let prepared = model.prepare(&item)?;
    let result = model.score_grad(&prepared, objective)?;
    let grad = result
        .images
        .last()
        .and_then(Option::as_ref)
        .map(|g| &g.values)
        .context("the candidate has no gradient")?;
    write_npy(out, &[height as usize, width as usize, 3], grad)
        .with_context(|| format!("writing {}", out.display()))?;
    let max_abs = grad.iter().fold(0f32, |m, g| m.max(g.abs()));
    let norm = grad.iter().map(|g| f64::from(g * g)).sum::<f64>().sqrt();
    let s = result.score;
    Ok(json!({
        "model": model.id(),
        "p_yes": s.p_yes,
        "p_yes_vocab": s.p_yes_vocab,
        "logit_yes": s.logit_yes,
        "logit_no": s.logit_no,
        "objective": objective.name(),
        "objective_value": result.objective,
        "grad_out": out.display().to_string(),
        "grad_shape": [height, width, 3],
        "grad_max_abs": max_abs,
        "grad_l2": norm,
    }))
}

/// NumPy's `.npy` format, version 1.0: little-endian float32, C order.
fn write_npy(path: &Path, shape: &[usize], data: &[f32]) -> std::io::Result<()> {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let mut header = format!(
        "{{'descr': '<f4', 'fortran_order': False, 'shape': ({},), }}",
        dims.join(", ")
    );
    // Magic (6) + version (2) + length (2) + header, padded with spaces to a multiple of 64
    // and ended by a newline.
    let unpadded = 10 + header.len() + 1;
    header.push_str(&" ".repeat(unpadded.next_multiple_of(64) - unpadded));
    header.push('\n');
    let mut file = std::io::BufWriter::new(std::fs::File::create(path)?);
    file.write_all(b"\x93NUMPY\x01\x00")?;
    file.write_all(&(header.len() as u16).to_le_bytes())?;
    file.write_all(header.as_bytes())?;
    for v in data {
        file.write_all(&v.to_le_bytes())?;
    }
    file.flush()
}
