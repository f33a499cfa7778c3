//! The compression codecs of Kafka record batches: gzip, snappy, lz4 and zstd.
//!
//! Batches are stored and served as the producer compressed them; the log decompresses only
//! to look inside (compaction, timestamp lookups). Snappy comes in two framings: raw blocks
//! (librdkafka) and xerial's stream format (the Java client); both decode, and the xerial
//! framing is written. LZ4 is the LZ4 frame format. Every decoder stops once the output
//! would exceed the caller's limit, so a small hostile batch cannot exhaust memory.

use std::io::{Read, Write};

use crate::batch::BatchError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Compression {
    None,
    Gzip,
    Snappy,
    Lz4,
    Zstd,
}

impl Compression {
    pub fn from_attribute(bits: i16) -> Result<Compression, BatchError> {
        match bits {
            0 => Ok(Compression::None),
            1 => Ok(Compression::Gzip),
            2 => Ok(Compression::Snappy),
            3 => Ok(Compression::Lz4),
            4 => Ok(Compression::Zstd),
            other => Err(BatchError::Compression(format!(
                "unknown compression codec {other}"
            ))),
        }
    }

    pub fn attribute(self) -> i16 {
        match self {
            Compression::None => 0,
            Compression::Gzip => 1,
            Compression::Snappy => 2,
            Compression::Lz4 => 3,
            Compression::Zstd => 4,
        }
    }
}

const XERIAL_MAGIC: &[u8] = b"\x82SNAPPY\x00";
const XERIAL_HEADER_LEN: usize = 16;
const XERIAL_BLOCK: usize = 32 * 1024;

fn codec_error(codec: Compression, error: impl std::fmt::Display) -> BatchError {
    BatchError::Compression(format!("{codec:?} decompression failed: {error}"))
}

fn read_limited(
    codec: Compression,
    reader: impl Read,
    limit: usize,
) -> Result<Vec<u8>, BatchError> {
    let mut out = Vec::new();
    reader
        .take(limit as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| codec_error(codec, e))?;
    if out.len() > limit {
        return Err(BatchError::Compression(format!(
            "{codec:?} batch decompresses to more than {limit} bytes"
        )));
    }
    Ok(out)
}

/// Decompresses a records section, refusing output larger than `limit` bytes.
pub fn decompress(codec: Compression, data: &[u8], limit: usize) -> Result<Vec<u8>, BatchError> {
    match codec {
        Compression::None => Ok(data.to_vec()),
        Compression::Gzip => read_limited(codec, flate2::read::MultiGzDecoder::new(data), limit),
        Compression::Lz4 => read_limited(codec, lz4_flex::frame::FrameDecoder::new(data), limit),
        Compression::Zstd => {
            let decoder =
                zstd::stream::read::Decoder::new(data).map_err(|e| codec_error(codec, e))?;
            read_limited(codec, decoder, limit)
        }
        Compression::Snappy => {
            if data.starts_with(XERIAL_MAGIC) {
                decompress_xerial(data, limit)
            } else {
                snappy_block(data, limit)
            }
        }
    }
}

fn snappy_block(block: &[u8], limit: usize) -> Result<Vec<u8>, BatchError> {
    let len = snap::raw::decompress_len(block).map_err(|e| codec_error(Compression::Snappy, e))?;
    if len > limit {
        return Err(BatchError::Compression(format!(
            "snappy batch decompresses to more than {limit} bytes"
        )));
    }
    snap::raw::Decoder::new()
        .decompress_vec(block)
        .map_err(|e| codec_error(Compression::Snappy, e))
}

fn decompress_xerial(data: &[u8], limit: usize) -> Result<Vec<u8>, BatchError> {
    let mut out = Vec::new();
    let mut rest = data.get(XERIAL_HEADER_LEN..).unwrap_or_default();
    while !rest.is_empty() {
        let Some((len_bytes, after)) = rest.split_first_chunk::<4>() else {
            return Err(codec_error(
                Compression::Snappy,
                "truncated xerial block length",
            ));
        };
        let len = u32::from_be_bytes(*len_bytes) as usize;
        let block = after
            .get(..len)
            .ok_or_else(|| codec_error(Compression::Snappy, "truncated xerial block"))?;
        out.extend(snappy_block(block, limit.saturating_sub(out.len()))?);
        rest = &after[len..];
    }
    Ok(out)
}

/// Compresses a records section with `codec`.
pub fn compress(codec: Compression, data: &[u8]) -> Result<Vec<u8>, BatchError> {
    let failed =
        |e: std::io::Error| BatchError::Compression(format!("{codec:?} compression failed: {e}"));
    match codec {
        Compression::None => Ok(data.to_vec()),
        Compression::Gzip => {
            let mut encoder =
                flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            encoder.write_all(data).map_err(failed)?;
            encoder.finish().map_err(failed)
        }
        Compression::Lz4 => {
            let mut encoder = lz4_flex::frame::FrameEncoder::new(Vec::new());
            encoder.write_all(data).map_err(failed)?;
            encoder
                .finish()
                .map_err(|e| BatchError::Compression(format!("lz4 compression failed: {e}")))
        }
        Compression::Zstd => zstd::stream::encode_all(data, 3).map_err(failed),
        Compression::Snappy => {
            let mut out = Vec::with_capacity(data.len() / 2 + XERIAL_HEADER_LEN);
            out.extend_from_slice(XERIAL_MAGIC);
            out.extend_from_slice(&1i32.to_be_bytes());
            out.extend_from_slice(&1i32.to_be_bytes());
            let mut encoder = snap::raw::Encoder::new();
            for chunk in data.chunks(XERIAL_BLOCK) {
                let block = encoder.compress_vec(chunk).map_err(|e| {
                    BatchError::Compression(format!("snappy compression failed: {e}"))
                })?;
                out.extend_from_slice(&(block.len() as u32).to_be_bytes());
                out.extend_from_slice(&block);
            }
            Ok(out)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_codec_round_trips_and_respects_the_limit() {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        for codec in [
            Compression::Gzip,
            Compression::Snappy,
            Compression::Lz4,
            Compression::Zstd,
        ] {
            let packed = compress(codec, &data).unwrap();
            assert_eq!(
                decompress(codec, &packed, data.len()).unwrap(),
                data,
                "{codec:?}"
            );
            assert!(
                decompress(codec, &packed, data.len() - 1).is_err(),
                "{codec:?} limit"
            );
            for cut in [0, 1, packed.len() / 2] {
                let _ = decompress(codec, &packed[..cut], data.len());
            }
        }
    }

    #[test]
    fn raw_snappy_blocks_decode_too() {
        let data = b"hello hello hello hello".repeat(10);
        let raw = snap::raw::Encoder::new().compress_vec(&data).unwrap();
        assert_eq!(
            decompress(Compression::Snappy, &raw, 1 << 20).unwrap(),
            data
        );
    }
}
