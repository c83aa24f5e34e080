//! `crate::image` against the Python reference (`tools/fixtures/generate.py`: Pillow 13 +
//! torch), image by image, without loading a model:
//!
//! * every grid in `fixtures/reference/grids.json` equals [`select_grid`];
//! * every fixture image decodes and tiles to the reference `pixel_values`: PNG inputs
//!   bit-exactly (the decode, alpha flattening, Pillow bicubic resize and f32 normalisation are
//!   all exact), JPEG inputs within [`JPEG_MAX_TOL`] / [`JPEG_MEAN_TOL`] (zune-jpeg vs
//!   libjpeg-turbo IDCT and chroma upsampling: a few 8-bit levels on some pixels).

use std::path::PathBuf;

use rewarddance_model::family::internvl::tiling::{
    frame_tile, select_grid, tile_image, TilingConfig,
};
use rewarddance_model::image::{decode, DecodeLimits, ImageInput, TiledImage};
use safetensors::SafeTensors;
use serde_json::Value;

/// Largest per-value difference allowed for JPEG inputs, in normalised units: 9 levels of 8
/// bits (9 / 255 / the smallest std 0.224 = 0.158). Measured: 0.087 (`photo_120x90.jpg`) and
/// 0.137 (`exif_rot6_80x40.jpg`, whose sharp 4:2:0 chroma edges decode up to 8 levels apart).
const JPEG_MAX_TOL: f32 = 0.16;
/// Largest mean absolute difference allowed for JPEG inputs, in normalised units
/// (measured: 0.0076 and 0.0047).
const JPEG_MEAN_TOL: f32 = 0.01;

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn json(rel: &str) -> Value {
    let text = std::fs::read_to_string(repo_root().join(rel)).expect("fixture json");
    serde_json::from_str(&text).expect("valid json")
}

fn pair(v: &Value) -> (u32, u32) {
    let n = |x: &Value| u32::try_from(x.as_u64().expect("integer")).expect("u32");
    (n(&v[0]), n(&v[1]))
}

fn usize_of(v: &Value) -> usize {
    usize::try_from(v.as_u64().expect("integer")).expect("usize")
}

#[test]
fn grids_match_python_find_closest_aspect_ratio() {
    let grids = json("fixtures/reference/grids.json");
    let cases = grids["cases"].as_array().expect("cases");
    assert!(cases.len() >= 200, "only {} grid cases", cases.len());
    for case in cases {
        let cfg = TilingConfig {
            image_size: u32::try_from(case["image_size"].as_u64().expect("S")).expect("u32"),
            min_tiles: usize_of(&case["min_tiles"]),
            max_tiles: usize_of(&case["max_tiles"]),
            ..TilingConfig::default()
        };
        let w = u32::try_from(case["width"].as_u64().expect("w")).expect("u32");
        let h = u32::try_from(case["height"].as_u64().expect("h")).expect("u32");
        assert_eq!(select_grid(w, h, &cfg), pair(&case["grid"]), "{case}");
    }
}

/// Little-endian f32 values of one tensor.
fn tensor_f32(st: &SafeTensors<'_>, name: &str) -> Vec<f32> {
    let view = st.tensor(name).expect("tensor");
    assert_eq!(view.dtype(), safetensors::Dtype::F32, "{name}");
    view.data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

fn tile(path: &str, cfg: &TilingConfig, frame: bool) -> TiledImage {
    let bytes = std::fs::read(repo_root().join(path)).expect("image file");
    let img = decode(&ImageInput::Encoded(bytes), &DecodeLimits::default()).expect("decode");
    if frame {
        frame_tile(&img, cfg).expect("frame_tile")
    } else {
        tile_image(&img, cfg).expect("tile_image")
    }
}

#[test]
fn fixture_images_tile_like_pillow() {
    let mut checked = (0, 0); // (png, jpeg)
    for model in ["tiny-internvl-hf", "tiny-internvl-ogv"] {
        let reference = json(&format!("fixtures/reference/{model}.json"));
        let cfg = TilingConfig {
            image_size: u32::try_from(reference["image_size"].as_u64().expect("S")).expect("u32"),
            min_tiles: usize_of(&reference["min_tiles"]),
            max_tiles: usize_of(&reference["max_tiles"]),
            use_thumbnail: reference["use_thumbnail"].as_bool().expect("thumbnail"),
            ..TilingConfig::default()
        };
        let blob = std::fs::read(repo_root().join(format!(
            "fixtures/reference/{model}.pixel_values.safetensors"
        )))
        .expect("pixel values");
        let st = SafeTensors::deserialize(&blob).expect("safetensors");
        let plane = 3 * cfg.image_size as usize * cfg.image_size as usize;

        for item in reference["items"].as_array().expect("items") {
            let id = item["id"].as_str().unwrap_or("?");
            let expected = &item["expected"];
            let frame = item["candidate"].get("video").is_some();
            let want = tensor_f32(&st, expected["pixel_values_key"].as_str().expect("key"));
            let mut offset = 0;
            for info in expected["images"].as_array().expect("images") {
                let path = info["path"].as_str().expect("path");
                let got = tile(path, &cfg, frame);
                let what = format!("{model}/{id}/{path}");
                assert_eq!(got.grid, pair(&info["grid"]), "{what}: grid");
                assert_eq!(
                    got.thumbnail,
                    info["thumbnail"].as_bool().expect("b"),
                    "{what}"
                );
                assert_eq!(got.num_tiles, usize_of(&info["num_tiles"]), "{what}");
                let reference = &want[offset..offset + got.num_tiles * plane];
                offset += got.num_tiles * plane;
                assert_eq!(got.pixels.len(), reference.len(), "{what}: length");
                let diffs: Vec<f32> = got
                    .pixels
                    .iter()
                    .zip(reference)
                    .map(|(a, b)| (a - b).abs())
                    .collect();
                let max = diffs.iter().copied().fold(0.0, f32::max);
                let mean = diffs.iter().sum::<f32>() / diffs.len() as f32;
                if path.ends_with(".png") {
                    assert!(
                        got.pixels
                            .iter()
                            .zip(reference)
                            .all(|(a, b)| a.to_bits() == b.to_bits()),
                        "{what}: PNG pixels not bit-identical (max diff {max})"
                    );
                    checked.0 += 1;
                } else {
                    eprintln!("{what}: JPEG max diff {max:.4}, mean {mean:.5}");
                    assert!(
                        max <= JPEG_MAX_TOL && mean <= JPEG_MEAN_TOL,
                        "{what}: JPEG max diff {max}, mean {mean}"
                    );
                    checked.1 += 1;
                }
            }
            assert_eq!(offset, want.len(), "{model}/{id}: leftover reference tiles");
        }
    }
    assert!(
        checked.0 >= 10 && checked.1 >= 2,
        "checked (png, jpeg) = {checked:?}"
    );
}
