//! Checks on the container of untrusted image bytes that the pixel count cannot catch, run before
//! any decoder sees them.
//!
//! - **PNG ancillary chunks**: a compressed ICC profile or text chunk (`iCCP`, `zTXt`, compressed
//!   `iTXt`) may inflate to at most [`MAX_TEXT_CHUNK`] bytes, and all text chunks together to
//!   [`MAX_TEXT_MEMORY`], as Pillow bounds them (`PIL/PngImagePlugin.py`: `MAX_TEXT_CHUNK =
//!   ImageFile.SAFEBLOCK`, `MAX_TEXT_MEMORY = 64 * MAX_TEXT_CHUNK`, `_safe_zlib_decompress`).
//!   Inflation stops one byte past the bound, so a 1 MiB chunk that inflates to 1 GiB costs
//!   1 MiB of work, not 1 GiB of memory.
//! - **JPEG completeness**: the marker segments are walked from `SOI` to `EOI`; data that ends
//!   before `EOI` is truncated and refused, as Pillow refuses it ("image file is truncated").

use std::io::Read;

use crate::{Error, Result};

/// Most bytes one compressed PNG text or ICC chunk may inflate to (Pillow's `MAX_TEXT_CHUNK`).
pub const MAX_TEXT_CHUNK: u64 = 1024 * 1024;
/// Most bytes all PNG text chunks together may hold (Pillow's `MAX_TEXT_MEMORY`).
pub const MAX_TEXT_MEMORY: u64 = 64 * MAX_TEXT_CHUNK;

/// Refuses a PNG whose `iCCP`, `zTXt`, `iTXt` or `tEXt` chunks exceed Pillow's bounds. Chunks
/// are walked up to `IEND` or the end of the data (a truncated file is left to the decoder).
pub fn check_png_chunks(bytes: &[u8]) -> Result<()> {
    let mut pos = 8; // after the signature
    let mut text_total = 0u64;
    while let Some(head) = bytes.get(pos..pos + 8) {
        let len = u32::from_be_bytes([head[0], head[1], head[2], head[3]]) as usize;
        let kind = &head[4..8];
        let Some(data) = bytes.get(pos + 8..(pos + 8).saturating_add(len)) else {
            return Ok(());
        };
        let text = match kind {
            b"IEND" => return Ok(()),
            b"iCCP" => {
                compressed_after_name(data)
                    .map(|z| inflated_len(z, "iCCP"))
                    .transpose()?;
                None
            }
            b"zTXt" => compressed_after_name(data)
                .map(|z| inflated_len(z, "zTXt"))
                .transpose()?,
            b"iTXt" => itxt_len(data)?,
            b"tEXt" => Some(len as u64),
            _ => None,
        };
        if let Some(n) = text {
            text_total += n;
            if text_total > MAX_TEXT_MEMORY {
                return Err(bomb(&format!(
                    "its text chunks hold more than {MAX_TEXT_MEMORY} bytes"
                )));
            }
        }
        pos += 12 + len;
    }
    Ok(())
}

/// The zlib stream of a chunk laid out as `name \0 method data` (`iCCP`, `zTXt`).
fn compressed_after_name(data: &[u8]) -> Option<&[u8]> {
    let nul = data.iter().position(|&b| b == 0)?;
    data.get(nul + 2..)
}

/// The text length of an `iTXt` chunk: `keyword \0 flag method lang \0 translated \0 text`.
fn itxt_len(data: &[u8]) -> Result<Option<u64>> {
    let Some(nul) = data.iter().position(|&b| b == 0) else {
        return Ok(None);
    };
    let compressed = data.get(nul + 1) == Some(&1);
    let rest = data.get(nul + 3..).unwrap_or_default();
    let mut fields = rest.splitn(3, |&b| b == 0);
    let (_lang, _translated) = (fields.next(), fields.next());
    let text = fields.next().unwrap_or_default();
    if compressed {
        inflated_len(text, "iTXt").map(Some)
    } else {
        Ok(Some(text.len() as u64))
    }
}

/// Inflates at most `MAX_TEXT_CHUNK + 1` bytes of a zlib stream; more is a bomb. A stream that
/// does not inflate is left to the decoder (Pillow skips such chunks too).
fn inflated_len(zlib: &[u8], kind: &str) -> Result<u64> {
    let mut out = Vec::new();
    let read = flate2::read::ZlibDecoder::new(zlib)
        .take(MAX_TEXT_CHUNK + 1)
        .read_to_end(&mut out);
    match read {
        Ok(n) if n as u64 > MAX_TEXT_CHUNK => Err(bomb(&format!(
            "its {kind} chunk inflates past {MAX_TEXT_CHUNK} bytes"
        ))),
        Ok(n) => Ok(n as u64),
        Err(_) => Ok(0),
    }
}

fn bomb(why: &str) -> Error {
    Error::InvalidImage(format!(
        "PNG: {why} (Pillow's MAX_TEXT_CHUNK / MAX_TEXT_MEMORY): refused as a decompression bomb"
    ))
}

/// Refuses a JPEG whose data ends before its `EOI` marker (truncated), walking the marker
/// segments so that markers inside metadata (an EXIF thumbnail's own `EOI`) do not count.
pub fn check_jpeg_complete(bytes: &[u8]) -> Result<()> {
    let truncated = || Error::InvalidImage("JPEG: truncated image data (no EOI marker)".into());
    if bytes.get(..2) != Some(&[0xFF, 0xD8]) {
        return Ok(()); // not a JPEG stream start: the decoder reports what it is
    }
    let mut pos = 2;
    loop {
        // Markers may be padded with 0xFF fill bytes.
        while bytes.get(pos) == Some(&0xFF) && bytes.get(pos + 1) == Some(&0xFF) {
            pos += 1;
        }
        let (Some(&0xFF), Some(&marker)) = (bytes.get(pos), bytes.get(pos + 1)) else {
            return Err(truncated());
        };
        pos += 2;
        match marker {
            0xD9 => return Ok(()),          // EOI
            0x01 | 0xD0..=0xD7 => continue, // TEM, RSTn: no length
            _ => {}
        }
        let len = match bytes.get(pos..pos + 2) {
            Some(l) => usize::from(u16::from_be_bytes([l[0], l[1]])),
            None => return Err(truncated()),
        };
        if len < 2 || pos + len > bytes.len() {
            return Err(truncated());
        }
        pos += len;
        if marker == 0xDA {
            // Entropy-coded data runs to the next marker that is not a stuffed 0xFF00 or RSTn.
            loop {
                match (bytes.get(pos), bytes.get(pos + 1)) {
                    (Some(0xFF), Some(0x00 | 0xD0..=0xD7)) => pos += 2,
                    (Some(0xFF), Some(_)) => break,
                    (Some(_), _) => pos += 1,
                    (None, _) => return Err(truncated()),
                }
            }
        }
    }
}

/// Width and height a WebP file's first chunk declares, if `bytes` starts like a WebP (RIFF
/// `WEBP`): the canvas of an extended file (`VP8X`: 24-bit width - 1 and height - 1), or the
/// frame size of a simple lossless (`VP8L`: 14 bits each, minus one) or lossy (`VP8 `: 14
/// bits each after the key-frame start code) file. Layouts from the WebP container and
/// bitstream specifications (RFC 9649). Needs at most 30 bytes, so a bare header claiming a
/// huge image is refused before a decoder is built.
pub fn webp_header(bytes: &[u8]) -> Option<(u32, u32)> {
    if bytes.get(..4)? != b"RIFF" || bytes.get(8..12)? != b"WEBP" {
        return None;
    }
    let le24 = |b: &[u8]| u32::from(b[0]) | u32::from(b[1]) << 8 | u32::from(b[2]) << 16;
    match bytes.get(12..16)? {
        b"VP8X" => {
            let canvas = bytes.get(24..30)?;
            Some((le24(&canvas[..3]) + 1, le24(&canvas[3..]) + 1))
        }
        b"VP8L" => {
            let head = bytes.get(20..25)?;
            if head[0] != 0x2f {
                return None;
            }
            let bits = u32::from_le_bytes([head[1], head[2], head[3], head[4]]);
            Some(((bits & 0x3fff) + 1, ((bits >> 14) & 0x3fff) + 1))
        }
        b"VP8 " => {
            let frame = bytes.get(20..30)?;
            if frame[3..6] != [0x9d, 0x01, 0x2a] {
                return None;
            }
            let w = u32::from(u16::from_le_bytes([frame[6], frame[7]]) & 0x3fff);
            let h = u32::from(u16::from_le_bytes([frame[8], frame[9]]) & 0x3fff);
            Some((w, h))
        }
        _ => None,
    }
}
