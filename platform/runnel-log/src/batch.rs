//! Kafka record batches (magic v2), exactly as they travel on the wire and lie on disk.
//!
//! ```text
//! offset  size  field
//!      0     8  base offset            stamped by the log on append
//!      8     4  batch length           bytes after this field
//!     12     4  partition leader epoch stamped by the log on append
//!     16     1  magic                  always 2
//!     17     4  crc                    CRC-32C of bytes 21.. (attributes to the end)
//!     21     2  attributes             bits 0-2 compression, 3 timestamp type,
//!                                      4 transactional, 5 control
//!     23     4  last offset delta
//!     27     8  base timestamp
//!     35     8  max timestamp
//!     43     8  producer id
//!     51     2  producer epoch
//!     53     4  base sequence
//!     57     4  records count
//!     61     …  records (compressed as a whole when attributes say so)
//! ```
//!
//! Each record is `length varint, attributes i8, timestamp delta varlong, offset delta
//! varint, key length varint, key, value length varint, value, header count varint,
//! headers`, with zig-zag varints and `-1` lengths for null.
//!
//! The base offset and leader epoch lie outside the CRC, so the log stamps them without
//! recomputing it. Every parser here checks lengths before it slices or allocates: the bytes
//! come from the network or from disk and may be anything.

use bytes::{BufMut, BytesMut};

use crate::compression::{self, Compression};

/// Bytes before the batch length field's coverage starts: base offset and batch length.
pub const LOG_OVERHEAD: usize = 12;
/// The fixed part of a v2 batch, up to and including the records count.
pub const BATCH_HEADER_LEN: usize = 61;
/// Where the bytes covered by the CRC start.
const CRC_START: usize = 21;

const ATTR_COMPRESSION_MASK: i16 = 0x07;
const ATTR_TIMESTAMP_TYPE: i16 = 0x08;
const ATTR_TRANSACTIONAL: i16 = 0x10;
const ATTR_CONTROL: i16 = 0x20;

/// A record batch that cannot be accepted, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    #[error("batch of {len} bytes is shorter than the {BATCH_HEADER_LEN}-byte v2 header")]
    TooShort { len: usize },
    #[error("batch length field says {declared} bytes but {actual} are present")]
    LengthMismatch { declared: i64, actual: usize },
    #[error("unsupported record batch magic {magic}, only v2 is supported")]
    UnsupportedMagic { magic: i8 },
    #[error("crc mismatch: batch says {stored:#010x}, contents give {computed:#010x}")]
    CrcMismatch { stored: u32, computed: u32 },
    #[error("inconsistent batch: {0}")]
    Inconsistent(String),
    #[error("malformed record: {0}")]
    MalformedRecord(String),
    #[error("{0}")]
    Compression(String),
    #[error("a compacted topic needs a key on every record")]
    MissingKey,
}

/// The fixed header of a v2 record batch, decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchHeader {
    pub base_offset: i64,
    pub batch_length: i32,
    pub partition_leader_epoch: i32,
    pub magic: i8,
    pub crc: u32,
    pub attributes: i16,
    pub last_offset_delta: i32,
    pub base_timestamp: i64,
    pub max_timestamp: i64,
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub base_sequence: i32,
    pub records_count: i32,
}

fn be_i16(bytes: &[u8], at: usize) -> i16 {
    i16::from_be_bytes([bytes[at], bytes[at + 1]])
}
fn be_i32(bytes: &[u8], at: usize) -> i32 {
    i32::from_be_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}
fn be_i64(bytes: &[u8], at: usize) -> i64 {
    let mut raw = [0u8; 8];
    raw.copy_from_slice(&bytes[at..at + 8]);
    i64::from_be_bytes(raw)
}

impl BatchHeader {
    /// Decodes the fixed header from the first [`BATCH_HEADER_LEN`] bytes of `bytes`.
    /// Checks only that the header is there and the magic is 2.
    pub fn parse(bytes: &[u8]) -> Result<BatchHeader, BatchError> {
        if bytes.len() < BATCH_HEADER_LEN {
            return Err(BatchError::TooShort { len: bytes.len() });
        }
        let magic = bytes[16] as i8;
        if magic != 2 {
            return Err(BatchError::UnsupportedMagic { magic });
        }
        Ok(BatchHeader {
            base_offset: be_i64(bytes, 0),
            batch_length: be_i32(bytes, 8),
            partition_leader_epoch: be_i32(bytes, 12),
            magic,
            crc: be_i32(bytes, 17) as u32,
            attributes: be_i16(bytes, 21),
            last_offset_delta: be_i32(bytes, 23),
            base_timestamp: be_i64(bytes, 27),
            max_timestamp: be_i64(bytes, 35),
            producer_id: be_i64(bytes, 43),
            producer_epoch: be_i16(bytes, 51),
            base_sequence: be_i32(bytes, 53),
            records_count: be_i32(bytes, 57),
        })
    }

    /// The whole batch's size in bytes, as its length field declares it. Negative or
    /// too-small lengths give a value below [`BATCH_HEADER_LEN`], which callers reject.
    pub fn total_len(&self) -> u64 {
        (self.batch_length.max(0) as u64) + LOG_OVERHEAD as u64
    }

    /// Saturates rather than overflows: the base offset may come from a damaged file.
    pub fn last_offset(&self) -> i64 {
        self.base_offset
            .saturating_add(i64::from(self.last_offset_delta))
    }

    pub fn compression(&self) -> Result<Compression, BatchError> {
        Compression::from_attribute(self.attributes & ATTR_COMPRESSION_MASK)
    }

    pub fn is_log_append_time(&self) -> bool {
        self.attributes & ATTR_TIMESTAMP_TYPE != 0
    }

    pub fn is_transactional(&self) -> bool {
        self.attributes & ATTR_TRANSACTIONAL != 0
    }

    pub fn is_control(&self) -> bool {
        self.attributes & ATTR_CONTROL != 0
    }
}

/// Checks a whole batch: header, exact length, CRC and offset bookkeeping.
/// `bytes` must hold exactly one batch.
pub fn validate(bytes: &[u8]) -> Result<BatchHeader, BatchError> {
    let header = BatchHeader::parse(bytes)?;
    let declared = i64::from(header.batch_length) + LOG_OVERHEAD as i64;
    if declared != bytes.len() as i64 {
        return Err(BatchError::LengthMismatch {
            declared,
            actual: bytes.len(),
        });
    }
    let computed = crc32c::crc32c(&bytes[CRC_START..]);
    if computed != header.crc {
        return Err(BatchError::CrcMismatch {
            stored: header.crc,
            computed,
        });
    }
    if header.last_offset_delta < 0 {
        return Err(BatchError::Inconsistent(format!(
            "negative last offset delta {}",
            header.last_offset_delta
        )));
    }
    if header.records_count < 0 || header.records_count > header.last_offset_delta.saturating_add(1)
    {
        return Err(BatchError::Inconsistent(format!(
            "{} records in a batch spanning {} offsets",
            header.records_count,
            i64::from(header.last_offset_delta) + 1
        )));
    }
    header.compression()?;
    Ok(header)
}

/// Checks a batch a producer sent, down to its records, so nothing malformed reaches the
/// log: on top of [`validate`], it must hold at least one record and one per offset it spans
/// (only compaction leaves gaps), its records (decompressed, at most `max_decompressed`
/// bytes) must decode with offset deltas 0, 1, 2, … and nothing after the last, and with
/// `require_keys` (compacted topics) every record needs a key. The header returned carries
/// the records' true max timestamp (see [`set_max_timestamp`]).
pub fn validate_produced(
    bytes: &[u8],
    max_decompressed: usize,
    require_keys: bool,
) -> Result<BatchHeader, BatchError> {
    let header = validate(bytes)?;
    if header.records_count == 0
        || i64::from(header.records_count) != i64::from(header.last_offset_delta) + 1
    {
        return Err(BatchError::Inconsistent(format!(
            "{} records but last offset delta {}",
            header.records_count, header.last_offset_delta
        )));
    }
    if header.is_control() {
        return Err(BatchError::Inconsistent(
            "producers cannot send control batches".to_string(),
        ));
    }
    let section = records_section(bytes, max_decompressed)?;
    let mut records = Records::new(&section, header.records_count);
    let mut max_timestamp = i64::MIN;
    for expected_delta in 0..header.records_count {
        let record = records
            .next()
            .ok_or_else(|| BatchError::MalformedRecord("fewer records than counted".into()))??;
        max_timestamp =
            max_timestamp.max(header.base_timestamp.saturating_add(record.timestamp_delta));
        if record.offset_delta != expected_delta {
            return Err(BatchError::MalformedRecord(format!(
                "record {expected_delta} has offset delta {}",
                record.offset_delta
            )));
        }
        if require_keys && record.key.is_none() {
            return Err(BatchError::MissingKey);
        }
    }
    if !records.finished_cleanly() {
        return Err(BatchError::MalformedRecord(
            "bytes left after the last record".into(),
        ));
    }
    let mut header = header;
    if !header.is_log_append_time() {
        header.max_timestamp = max_timestamp;
    }
    Ok(header)
}

/// Sets a batch's max timestamp and recomputes its CRC. Some producers (kafkajs) leave
/// records' own timestamps out of it; like Kafka, the log stores the true maximum, which
/// timestamp lookups and time-based retention rely on.
pub fn set_max_timestamp(batch: &mut [u8], max_timestamp: i64) {
    batch[35..43].copy_from_slice(&max_timestamp.to_be_bytes());
    let crc = crc32c::crc32c(&batch[CRC_START..]);
    batch[17..21].copy_from_slice(&crc.to_be_bytes());
}

/// Stamps the offsets of an appended batch; both fields lie outside the CRC.
pub fn stamp_offsets(batch: &mut [u8], base_offset: i64, leader_epoch: i32) {
    batch[0..8].copy_from_slice(&base_offset.to_be_bytes());
    batch[12..16].copy_from_slice(&leader_epoch.to_be_bytes());
}

/// Marks a batch as LogAppendTime with `now_ms` as its max timestamp and recomputes the CRC.
pub fn stamp_log_append_time(batch: &mut [u8], now_ms: i64) {
    let attributes = be_i16(batch, 21) | ATTR_TIMESTAMP_TYPE;
    batch[21..23].copy_from_slice(&attributes.to_be_bytes());
    batch[35..43].copy_from_slice(&now_ms.to_be_bytes());
    let crc = crc32c::crc32c(&batch[CRC_START..]);
    batch[17..21].copy_from_slice(&crc.to_be_bytes());
}

/// One record inside a batch, borrowed from the (decompressed) records section.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record<'a> {
    pub offset_delta: i32,
    pub timestamp_delta: i64,
    pub key: Option<&'a [u8]>,
    pub value: Option<&'a [u8]>,
    /// The encoded headers (count and entries) as they lie in the record.
    pub headers: &'a [u8],
    /// The whole record including its length prefix, to copy it unchanged.
    pub encoded: &'a [u8],
}

/// A cursor over zig-zag varints and length-prefixed byte strings.
struct Reader<'a> {
    bytes: &'a [u8],
    position: usize,
}

impl<'a> Reader<'a> {
    fn varlong(&mut self) -> Result<i64, BatchError> {
        let mut value: u64 = 0;
        for shift in (0..64).step_by(7) {
            let byte = *self
                .bytes
                .get(self.position)
                .ok_or_else(|| BatchError::MalformedRecord("truncated varint".into()))?;
            self.position += 1;
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(((value >> 1) as i64) ^ -((value & 1) as i64));
            }
        }
        Err(BatchError::MalformedRecord(
            "varint longer than 10 bytes".into(),
        ))
    }

    fn varint(&mut self) -> Result<i32, BatchError> {
        let value = self.varlong()?;
        i32::try_from(value)
            .map_err(|_| BatchError::MalformedRecord("varint out of i32 range".into()))
    }

    fn i8(&mut self) -> Result<i8, BatchError> {
        let byte = *self
            .bytes
            .get(self.position)
            .ok_or_else(|| BatchError::MalformedRecord("truncated record".into()))?;
        self.position += 1;
        Ok(byte as i8)
    }

    fn bytes(&mut self, len: usize) -> Result<&'a [u8], BatchError> {
        let end = self
            .position
            .checked_add(len)
            .filter(|end| *end <= self.bytes.len())
            .ok_or_else(|| {
                BatchError::MalformedRecord(format!("field of {len} bytes runs past the record"))
            })?;
        let slice = &self.bytes[self.position..end];
        self.position = end;
        Ok(slice)
    }

    /// A varint length then that many bytes; `-1` is null.
    fn nullable_bytes(&mut self) -> Result<Option<&'a [u8]>, BatchError> {
        let len = self.varint()?;
        if len < 0 {
            if len != -1 {
                return Err(BatchError::MalformedRecord(format!(
                    "negative length {len}"
                )));
            }
            return Ok(None);
        }
        self.bytes(len as usize).map(Some)
    }
}

/// A record header: its key and its value (`None` for null).
pub type HeaderEntry<'a> = (&'a str, Option<&'a [u8]>);

impl<'a> Record<'a> {
    /// The record's headers: (key, value), a null value as `None`. A key that is not UTF-8
    /// is an error, as in Kafka.
    pub fn header_entries(&self) -> Result<Vec<HeaderEntry<'a>>, BatchError> {
        let mut reader = Reader {
            bytes: self.headers,
            position: 0,
        };
        let count = reader.varint()?;
        // Each header takes at least two bytes: a count beyond that is a lie.
        if count < 0 || count as usize > self.headers.len() / 2 {
            return Err(BatchError::MalformedRecord(format!(
                "header count {count} for {} bytes",
                self.headers.len()
            )));
        }
        let mut entries = Vec::with_capacity(count as usize);
        for _ in 0..count {
            let key = reader
                .nullable_bytes()?
                .ok_or_else(|| BatchError::MalformedRecord("null header key".into()))?;
            let key = std::str::from_utf8(key)
                .map_err(|_| BatchError::MalformedRecord("header key is not UTF-8".into()))?;
            entries.push((key, reader.nullable_bytes()?));
        }
        Ok(entries)
    }
}

/// Iterates the records of an uncompressed records section (the bytes after the header).
pub struct Records<'a> {
    reader: Reader<'a>,
    remaining: i32,
}

impl<'a> Records<'a> {
    pub fn new(records_section: &'a [u8], count: i32) -> Records<'a> {
        Records {
            reader: Reader {
                bytes: records_section,
                position: 0,
            },
            remaining: count.max(0),
        }
    }

    fn next_record(&mut self) -> Result<Record<'a>, BatchError> {
        let start = self.reader.position;
        let len = self.reader.varint()?;
        if len < 0 {
            return Err(BatchError::MalformedRecord(format!(
                "negative record length {len}"
            )));
        }
        let body = self.reader.bytes(len as usize)?;
        let encoded = &self.reader.bytes[start..self.reader.position];
        let mut body = Reader {
            bytes: body,
            position: 0,
        };
        let _attributes = body.i8()?;
        let timestamp_delta = body.varlong()?;
        let offset_delta = body.varint()?;
        let key = body.nullable_bytes()?;
        let value = body.nullable_bytes()?;
        let headers = &body.bytes[body.position..];
        let header_count = body.varint()?;
        for _ in 0..header_count.max(0) {
            let key_len = body.varint()?;
            body.bytes(key_len.max(0) as usize)?;
            body.nullable_bytes()?;
        }
        if body.position != body.bytes.len() {
            return Err(BatchError::MalformedRecord(
                "trailing bytes after headers".into(),
            ));
        }
        Ok(Record {
            offset_delta,
            timestamp_delta,
            key,
            value,
            headers,
            encoded,
        })
    }

    /// Whether every record was consumed and no bytes are left over.
    pub fn finished_cleanly(&self) -> bool {
        self.remaining == 0 && self.reader.position == self.reader.bytes.len()
    }
}

impl<'a> Iterator for Records<'a> {
    type Item = Result<Record<'a>, BatchError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.remaining == 0 {
            return None;
        }
        self.remaining -= 1;
        let record = self.next_record();
        if record.is_err() {
            self.remaining = 0;
        }
        Some(record)
    }
}

/// The records section of a batch, decompressed if needed. `max_size` bounds the
/// decompressed size so a small hostile batch cannot exhaust memory.
pub fn records_section(
    batch: &[u8],
    max_size: usize,
) -> Result<std::borrow::Cow<'_, [u8]>, BatchError> {
    let header = BatchHeader::parse(batch)?;
    let section = &batch[BATCH_HEADER_LEN..];
    match header.compression()? {
        Compression::None => Ok(std::borrow::Cow::Borrowed(section)),
        codec => compression::decompress(codec, section, max_size).map(std::borrow::Cow::Owned),
    }
}

/// A record to encode with [`BatchBuilder`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NewRecord {
    pub timestamp: i64,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub headers: Vec<(String, Option<Vec<u8>>)>,
}

fn put_varlong(out: &mut impl BufMut, value: i64) {
    let mut zigzag = ((value << 1) ^ (value >> 63)) as u64;
    while zigzag >= 0x80 {
        out.put_u8((zigzag as u8) | 0x80);
        zigzag >>= 7;
    }
    out.put_u8(zigzag as u8);
}

/// The bytes `put_varlong` writes for `value`.
fn varlong_len(value: i64) -> usize {
    let zigzag = ((value << 1) ^ (value >> 63)) as u64;
    (64 - (zigzag | 1).leading_zeros() as usize).div_ceil(7)
}

/// The bytes `put_nullable` writes for `bytes`.
fn nullable_len(bytes: Option<&[u8]>) -> usize {
    bytes.map_or(1, |b| varlong_len(b.len() as i64) + b.len())
}

fn put_nullable(out: &mut impl BufMut, bytes: Option<&[u8]>) {
    match bytes {
        None => put_varlong(out, -1),
        Some(bytes) => {
            put_varlong(out, bytes.len() as i64);
            out.put_slice(bytes);
        }
    }
}

/// Writes one record (its length first) with the given deltas. The length is counted
/// before anything is written, so each field is copied once.
fn put_record<'a>(
    out: &mut impl BufMut,
    offset_delta: i32,
    timestamp_delta: i64,
    key: Option<&[u8]>,
    value: Option<&[u8]>,
    headers: impl ExactSizeIterator<Item = (&'a str, Option<&'a [u8]>)> + Clone,
) {
    let header_count = headers.len() as i64;
    let len = 1
        + varlong_len(timestamp_delta)
        + varlong_len(i64::from(offset_delta))
        + nullable_len(key)
        + nullable_len(value)
        + varlong_len(header_count)
        + headers
            .clone()
            .map(|(key, value)| nullable_len(Some(key.as_bytes())) + nullable_len(value))
            .sum::<usize>();
    put_varlong(out, len as i64);
    out.put_u8(0); // attributes
    put_varlong(out, timestamp_delta);
    put_varlong(out, i64::from(offset_delta));
    put_nullable(out, key);
    put_nullable(out, value);
    put_varlong(out, header_count);
    for (key, value) in headers {
        put_nullable(out, Some(key.as_bytes()));
        put_nullable(out, value);
    }
}

/// Writes the batch header of `fields` with `batch_length` and a zero CRC.
fn put_header(out: &mut impl BufMut, fields: &BatchHeader, batch_length: i32) {
    out.put_i64(fields.base_offset);
    out.put_i32(batch_length);
    out.put_i32(fields.partition_leader_epoch);
    out.put_i8(2);
    out.put_u32(0); // crc, filled in once the batch is whole
    out.put_i16(fields.attributes);
    out.put_i32(fields.last_offset_delta);
    out.put_i64(fields.base_timestamp);
    out.put_i64(fields.max_timestamp);
    out.put_i64(fields.producer_id);
    out.put_i16(fields.producer_epoch);
    out.put_i32(fields.base_sequence);
    out.put_i32(fields.records_count);
}

/// Fills in the CRC of the whole batch `batch`.
fn seal_crc(batch: &mut [u8]) {
    let crc = crc32c::crc32c(&batch[CRC_START..]);
    batch[17..21].copy_from_slice(&crc.to_be_bytes());
}

/// Writes one uncompressed v2 batch straight into the end of a buffer, a record at a time,
/// with header fields given at the end: rebuilding stored batches without copying each
/// record into a batch of its own first.
#[derive(Debug)]
pub struct BatchAppender {
    start: usize,
    count: usize,
}

impl BatchAppender {
    /// Starts a batch at the end of `out`.
    pub fn begin(out: &mut BytesMut) -> BatchAppender {
        let start = out.len();
        out.put_bytes(0, BATCH_HEADER_LEN);
        BatchAppender { start, count: 0 }
    }

    /// Appends a record with the given deltas (as [`BatchEncoder::push_encoded`]).
    pub fn push_encoded<'a>(
        &mut self,
        out: &mut BytesMut,
        offset_delta: i32,
        timestamp_delta: i64,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        headers: impl ExactSizeIterator<Item = (&'a str, Option<&'a [u8]>)> + Clone,
    ) {
        put_record(out, offset_delta, timestamp_delta, key, value, headers);
        self.count += 1;
    }

    /// Ends the batch with the header fields of `fields` (uncompressed whatever its
    /// attributes say; record count, length and CRC computed). At least one record must
    /// have been pushed.
    pub fn finish(self, out: &mut BytesMut, fields: &BatchHeader) -> Result<(), BatchError> {
        let start = self.start;
        self.close(out, fields)?;
        seal_crc(&mut out[start..]);
        Ok(())
    }

    /// Ends the batch as [`finish`](Self::finish) does, but with `crc` as its CRC rather
    /// than computing it: for a batch known to be, byte for byte, one whose CRC is `crc`
    /// (see [`rebuilds_identically`]). A wrong `crc` makes a batch that consumers refuse.
    pub fn finish_with_crc(
        self,
        out: &mut BytesMut,
        fields: &BatchHeader,
        crc: u32,
    ) -> Result<(), BatchError> {
        let start = self.start;
        self.close(out, fields)?;
        out[start + 17..start + 21].copy_from_slice(&crc.to_be_bytes());
        Ok(())
    }

    /// Writes the header of the batch, with a zero CRC.
    fn close(self, out: &mut BytesMut, fields: &BatchHeader) -> Result<(), BatchError> {
        if self.count == 0 {
            return Err(BatchError::Inconsistent(
                "a batch needs at least one record".to_string(),
            ));
        }
        let total = out.len() - self.start;
        let batch_length = i32::try_from(total - LOG_OVERHEAD).map_err(|_| {
            BatchError::Inconsistent(format!("batch of {total} bytes is too large"))
        })?;
        let mut fields = *fields;
        fields.attributes &= !ATTR_COMPRESSION_MASK;
        fields.records_count = self.count as i32;
        let batch = &mut out[self.start..];
        put_header(&mut &mut batch[..BATCH_HEADER_LEN], &fields, batch_length);
        Ok(())
    }
}

/// Whether `batch` (whole, as the log stores it) is byte for byte what [`BatchAppender`]
/// writes for its header fields and records, with a CRC that is right: uncompressed,
/// every record's attributes 0 and every varint as short as it can be, as clients write
/// them. A batch rebuilt from its fields and records then has the same CRC, and
/// [`BatchAppender::finish_with_crc`] may reuse it rather than compute it.
pub fn rebuilds_identically(batch: &[u8]) -> Result<bool, BatchError> {
    let header = BatchHeader::parse(batch)?;
    let total = header.total_len() as usize;
    if header.attributes & ATTR_COMPRESSION_MASK != 0
        || total < BATCH_HEADER_LEN
        || batch.len() < total
    {
        return Ok(false);
    }
    let batch = &batch[..total];
    if crc32c::crc32c(&batch[CRC_START..]) != header.crc {
        return Ok(false);
    }
    let section = &batch[BATCH_HEADER_LEN..];
    let mut rebuilt = BytesMut::with_capacity(total);
    let mut appender = BatchAppender::begin(&mut rebuilt);
    for record in Records::new(section, header.records_count) {
        let record = record?;
        let entries = record.header_entries()?;
        appender.push_encoded(
            &mut rebuilt,
            record.offset_delta,
            record.timestamp_delta,
            record.key,
            record.value,
            entries.iter().copied(),
        );
    }
    Ok(rebuilt[BATCH_HEADER_LEN..] == *section)
}

/// Builds v2 record batches: what producers send, used by tests, benchmarks and the
/// compactor.
#[derive(Debug, Clone)]
pub struct BatchBuilder {
    pub compression: Compression,
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub base_sequence: i32,
}

impl Default for BatchBuilder {
    fn default() -> Self {
        BatchBuilder {
            compression: Compression::None,
            producer_id: -1,
            producer_epoch: -1,
            base_sequence: -1,
        }
    }
}

impl BatchBuilder {
    /// Encodes `records` with consecutive offset deltas from 0. Base offset is 0 (the log
    /// stamps the real one). `records` must not be empty.
    pub fn build(&self, records: &[NewRecord]) -> Result<BytesMut, BatchError> {
        let mut encoder = BatchEncoder::new(self.clone());
        for new in records {
            encoder.push(
                new.timestamp,
                new.key.as_deref(),
                new.value.as_deref(),
                new.headers.iter().map(|(k, v)| (k.as_str(), v.as_deref())),
            );
        }
        encoder.finish()
    }
}

/// Builds one v2 record batch a record at a time from borrowed fields, for writers that
/// hold records in buffers of their own (no [`NewRecord`] per record).
#[derive(Debug, Clone)]
pub struct BatchEncoder {
    builder: BatchBuilder,
    section: Vec<u8>,
    count: usize,
    base_timestamp: i64,
    max_timestamp: i64,
}

impl BatchEncoder {
    pub fn new(builder: BatchBuilder) -> BatchEncoder {
        BatchEncoder {
            builder,
            section: Vec::new(),
            count: 0,
            base_timestamp: 0,
            max_timestamp: i64::MIN,
        }
    }

    /// Appends a record; its offset delta is the number of records before it.
    pub fn push<'a>(
        &mut self,
        timestamp: i64,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        headers: impl ExactSizeIterator<Item = (&'a str, Option<&'a [u8]>)> + Clone,
    ) {
        if self.count == 0 {
            self.base_timestamp = timestamp;
        }
        self.max_timestamp = self.max_timestamp.max(timestamp);
        let timestamp_delta = timestamp.wrapping_sub(self.base_timestamp);
        self.push_encoded(self.count as i32, timestamp_delta, key, value, headers);
    }

    /// Appends a record with the given deltas, for rebuilding a stored batch (offset
    /// deltas may have gaps after compaction); finish it with [`BatchEncoder::finish_as`].
    pub fn push_encoded<'a>(
        &mut self,
        offset_delta: i32,
        timestamp_delta: i64,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        headers: impl ExactSizeIterator<Item = (&'a str, Option<&'a [u8]>)> + Clone,
    ) {
        put_record(
            &mut self.section,
            offset_delta,
            timestamp_delta,
            key,
            value,
            headers,
        );
        self.count += 1;
    }

    /// Records pushed so far.
    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The header fields the next [`BatchEncoder::finish`] writes: producer, sequence,
    /// compression.
    pub fn builder_mut(&mut self) -> &mut BatchBuilder {
        &mut self.builder
    }

    /// The uncompressed size of the records pushed so far.
    pub fn section_len(&self) -> usize {
        self.section.len()
    }

    /// The batch. At least one record must have been pushed.
    pub fn finish(&self) -> Result<BytesMut, BatchError> {
        if self.count == 0 {
            return Err(BatchError::Inconsistent(
                "a batch needs at least one record".to_string(),
            ));
        }
        let fields = BatchHeader {
            base_offset: 0,
            batch_length: 0,
            partition_leader_epoch: -1,
            magic: 2,
            crc: 0,
            attributes: self.builder.compression.attribute(),
            last_offset_delta: self.count.saturating_sub(1) as i32,
            base_timestamp: self.base_timestamp,
            max_timestamp: self.max_timestamp,
            producer_id: self.builder.producer_id,
            producer_epoch: self.builder.producer_epoch,
            base_sequence: self.builder.base_sequence,
            records_count: self.count as i32,
        };
        assemble(&fields, &self.section)
    }

    /// The batch with the header fields of `fields` (offsets, timestamps, producer,
    /// attributes and record count as given; length and CRC computed), uncompressed
    /// whatever its attributes said.
    pub fn finish_as(&self, fields: &BatchHeader) -> Result<BytesMut, BatchError> {
        let mut fields = *fields;
        fields.attributes &= !ATTR_COMPRESSION_MASK;
        fields.records_count = self.count as i32;
        assemble(&fields, &self.section)
    }

    /// Starts a new batch, keeping the buffers.
    pub fn clear(&mut self) {
        self.section.clear();
        self.count = 0;
        self.max_timestamp = i64::MIN;
    }
}

/// Assembles a batch from a header and an uncompressed records section, compressing the
/// section with the codec the attributes name. The header's length, magic and CRC are
/// ignored: they are computed.
pub(crate) fn assemble(
    fields: &BatchHeader,
    uncompressed_records: &[u8],
) -> Result<BytesMut, BatchError> {
    let codec = Compression::from_attribute(fields.attributes & ATTR_COMPRESSION_MASK)?;
    let compressed;
    let section = match codec {
        Compression::None => uncompressed_records,
        codec => {
            compressed = compression::compress(codec, uncompressed_records)?;
            &compressed
        }
    };
    let total = BATCH_HEADER_LEN + section.len();
    let batch_length = i32::try_from(total - LOG_OVERHEAD)
        .map_err(|_| BatchError::Inconsistent(format!("batch of {total} bytes is too large")))?;
    let mut out = BytesMut::with_capacity(total);
    put_header(&mut out, fields, batch_length);
    out.put_slice(section);
    seal_crc(&mut out);
    Ok(out)
}

/// What the fuzz targets and their corpus replay run on untrusted bytes: every batch the
/// bytes hold is validated as a produced batch would be (with a 1 MiB decompression
/// bound) and its records and headers walked. Returns how many batches passed. Never
/// panics, whatever the input.
pub fn fuzz_produced_batch(bytes: &[u8]) -> usize {
    let mut passed = 0;
    for (position, header) in batch_positions(bytes) {
        let Some(one) = bytes.get(position..position + header.total_len() as usize) else {
            break;
        };
        if validate_produced(one, 1 << 20, false).is_err() {
            continue;
        }
        passed += 1;
        if let Ok(section) = records_section(one, 1 << 20) {
            for record in Records::new(&section, header.records_count).flatten() {
                let _ = (record.key, record.value, record.headers.len());
            }
        }
    }
    passed
}

/// One record of stored batches, as [`visit_records`] hands it out.
#[derive(Debug, Clone)]
pub struct StoredRecord<'a> {
    pub offset: u64,
    /// The record's timestamp (the batch's, for log-append time).
    pub timestamp: i64,
    pub key: Option<&'a [u8]>,
    pub value: Option<&'a [u8]>,
    pub headers: Vec<HeaderEntry<'a>>,
}

/// Calls `visit` on every record of `batches` (whole batches as the log stores them) at
/// or after offset `from`, in order, skipping control batches, while it returns `true`
/// (took the record). Returns the offset to read next: after the last record taken, or
/// the one `visit` refused. Sections are decompressed up to `max_section` bytes.
pub fn visit_records(
    batches: &[u8],
    from: u64,
    max_section: usize,
    mut visit: impl FnMut(StoredRecord<'_>) -> bool,
) -> Result<u64, BatchError> {
    let mut next = from;
    for (position, header) in batch_positions(batches) {
        let last = header.last_offset().max(0) as u64;
        if last < from || header.is_control() {
            next = next.max(last + 1);
            continue;
        }
        let Some(bytes) = batches.get(position..position + header.total_len() as usize) else {
            break;
        };
        let section = records_section(bytes, max_section)?;
        for record in Records::new(&section, header.records_count) {
            let record = record?;
            let offset = (header.base_offset + i64::from(record.offset_delta)) as u64;
            if offset < from {
                continue;
            }
            let timestamp = if header.is_log_append_time() {
                header.max_timestamp
            } else {
                header.base_timestamp + record.timestamp_delta
            };
            let stored = StoredRecord {
                offset,
                timestamp,
                key: record.key,
                value: record.value,
                headers: record.header_entries()?,
            };
            if !visit(stored) {
                return Ok(offset);
            }
            next = offset + 1;
        }
        next = next.max(last + 1);
    }
    Ok(next)
}

/// The first record of one batch (`bytes`, whose parsed header is `header`) with a
/// timestamp of at least `timestamp` and an offset below `upper`, as (offset, timestamp):
/// Kafka's ListOffsets by timestamp within a batch. Sections are decompressed up to
/// `max_section` bytes.
pub fn first_at_or_after(
    bytes: &[u8],
    header: &BatchHeader,
    timestamp: i64,
    upper: u64,
    max_section: usize,
) -> Result<Option<(u64, i64)>, BatchError> {
    let upper = i64::try_from(upper).unwrap_or(i64::MAX);
    if header.max_timestamp < timestamp || header.base_offset >= upper {
        return Ok(None);
    }
    if header.is_log_append_time() {
        return Ok(Some((header.base_offset as u64, header.max_timestamp)));
    }
    let section = records_section(bytes, max_section)?;
    for record in Records::new(&section, header.records_count) {
        let record = record?;
        let offset = header
            .base_offset
            .saturating_add(i64::from(record.offset_delta));
        let record_timestamp = header.base_timestamp.saturating_add(record.timestamp_delta);
        if record_timestamp >= timestamp && offset < upper {
            return Ok(Some((offset as u64, record_timestamp)));
        }
    }
    Ok(None)
}

/// Walks concatenated batches, yielding `(position, header)` for each batch that lies
/// wholly inside `bytes`; stops at the first incomplete or unparsable one.
pub fn batch_positions(bytes: &[u8]) -> impl Iterator<Item = (usize, BatchHeader)> + '_ {
    let mut position = 0usize;
    std::iter::from_fn(move || {
        let rest = bytes.get(position..)?;
        let header = BatchHeader::parse(rest).ok()?;
        let len = header.total_len() as usize;
        if len < BATCH_HEADER_LEN || len > rest.len() {
            return None;
        }
        let at = position;
        position += len;
        Some((at, header))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(n: usize) -> Vec<NewRecord> {
        (0..n)
            .map(|i| NewRecord {
                timestamp: 1_000 + i as i64,
                key: Some(format!("k{i}").into_bytes()),
                value: if i % 3 == 2 {
                    None
                } else {
                    Some(vec![i as u8; i * 7])
                },
                headers: vec![("h".into(), Some(b"v".to_vec())), ("n".into(), None)],
            })
            .collect()
    }

    #[test]
    fn built_batches_validate_and_decode_for_every_codec() {
        for codec in [
            Compression::None,
            Compression::Gzip,
            Compression::Snappy,
            Compression::Lz4,
            Compression::Zstd,
        ] {
            let records = sample(20);
            let builder = BatchBuilder {
                compression: codec,
                ..BatchBuilder::default()
            };
            let batch = builder.build(&records).unwrap();
            let header = validate_produced(&batch, 1 << 20, true).unwrap();
            assert_eq!(header.records_count, 20);
            assert_eq!(header.max_timestamp, 1_019);
            let section = records_section(&batch, 1 << 20).unwrap();
            let decoded: Vec<_> = Records::new(&section, header.records_count)
                .collect::<Result<_, _>>()
                .unwrap();
            for (i, record) in decoded.iter().enumerate() {
                assert_eq!(record.offset_delta, i as i32);
                assert_eq!(record.key, records[i].key.as_deref());
                assert_eq!(record.value, records[i].value.as_deref());
            }
        }
    }

    #[test]
    fn a_batch_appended_in_place_equals_the_encoders() {
        let fields = BatchHeader {
            base_offset: 40,
            batch_length: 0,
            partition_leader_epoch: 3,
            magic: 2,
            crc: 0,
            attributes: 4, // zstd, which an uncompressed rebuild drops
            last_offset_delta: 9,
            base_timestamp: 1_000,
            max_timestamp: 1_090,
            producer_id: 7,
            producer_epoch: 1,
            base_sequence: 12,
            records_count: 0,
        };
        let headers = [("h", Some(&b"v"[..])), ("null", None)];
        let mut encoder = BatchEncoder::new(BatchBuilder::default());
        let mut out = BytesMut::from(&b"before"[..]);
        let mut appender = BatchAppender::begin(&mut out);
        for i in 0..10 {
            let value = vec![b'x'; i * 300];
            let key = (i % 3 != 0).then_some(&b"key"[..]);
            encoder.push_encoded(
                i as i32,
                i as i64 * 10,
                key,
                Some(&value),
                headers.iter().copied(),
            );
            appender.push_encoded(
                &mut out,
                i as i32,
                i as i64 * 10,
                key,
                Some(&value),
                headers.iter().copied(),
            );
        }
        appender.finish(&mut out, &fields).unwrap();
        let expected = encoder.finish_as(&fields).unwrap();
        assert_eq!(&out[..6], b"before");
        assert_eq!(&out[6..], &expected[..]);
        validate_produced(&out[6..], 1 << 20, false).unwrap();
        let empty = BatchAppender::begin(&mut out);
        assert!(empty.finish(&mut out, &fields).is_err());
    }

    #[test]
    fn only_a_batch_a_rebuild_reproduces_byte_for_byte_keeps_its_crc() {
        let plain = BatchBuilder::default().build(&sample(9)).unwrap();
        assert!(rebuilds_identically(&plain).unwrap());

        // Rebuilt from its fields and records with the CRC it is known to have, it is
        // the same batch, and the CRC is right.
        let header = BatchHeader::parse(&plain).unwrap();
        let mut out = BytesMut::new();
        let mut appender = BatchAppender::begin(&mut out);
        for record in Records::new(&plain[BATCH_HEADER_LEN..], header.records_count) {
            let record = record.unwrap();
            let entries = record.header_entries().unwrap();
            appender.push_encoded(
                &mut out,
                record.offset_delta,
                record.timestamp_delta,
                record.key,
                record.value,
                entries.iter().copied(),
            );
        }
        appender
            .finish_with_crc(&mut out, &header, header.crc)
            .unwrap();
        assert_eq!(&out[..], &plain[..]);
        validate_produced(&out, 1 << 20, false).unwrap();

        // Compressed: the rebuild is uncompressed, so its CRC differs.
        let compressed = BatchBuilder {
            compression: Compression::Zstd,
            ..BatchBuilder::default()
        }
        .build(&sample(9))
        .unwrap();
        assert!(!rebuilds_identically(&compressed).unwrap());

        // A record's (unused) attributes set: the rebuild writes 0 there.
        let mut odd = plain.clone();
        // The first record: its length varint (one byte here), then its attributes.
        odd[BATCH_HEADER_LEN + 1] = 1;
        seal_crc(&mut odd);
        assert!(!rebuilds_identically(&odd).unwrap());

        // A length written with a longer varint than needed: 0x02 (1) as 0x82 0x00.
        let records = Records::new(&plain[BATCH_HEADER_LEN..], header.records_count)
            .map(|record| record.unwrap().encoded.to_vec())
            .collect::<Vec<_>>();
        let mut long = plain[..BATCH_HEADER_LEN].to_vec();
        let first = &records[0];
        assert!(first[0] < 0x80, "a one-byte length");
        long.extend_from_slice(&[first[0] | 0x80, 0x00]);
        long.extend_from_slice(&first[1..]);
        for record in &records[1..] {
            long.extend_from_slice(record);
        }
        let length = (long.len() - LOG_OVERHEAD) as i32;
        long[8..12].copy_from_slice(&length.to_be_bytes());
        seal_crc(&mut long);
        validate_produced(&long, 1 << 20, false).unwrap();
        assert!(!rebuilds_identically(&long).unwrap());

        // A CRC that is wrong is not passed on.
        let mut stale = plain.clone();
        stale[17] ^= 1;
        assert!(!rebuilds_identically(&stale).unwrap());

        // A length too short for the header: refused, not a panic.
        let mut short = plain.clone();
        short[8..12].copy_from_slice(&10i32.to_be_bytes());
        assert!(!rebuilds_identically(&short).unwrap());
    }

    #[test]
    fn varlong_lengths_are_what_is_written() {
        let mut values = vec![0, 1, -1, i64::MAX, i64::MIN];
        for shift in 0..63 {
            let edge = 1i64 << shift;
            values.extend([edge - 1, edge, edge + 1, -edge, -edge - 1]);
        }
        for value in values {
            let mut out = Vec::new();
            put_varlong(&mut out, value);
            assert_eq!(varlong_len(value), out.len(), "{value}");
        }
    }

    #[test]
    fn an_encoder_reused_after_clear_builds_what_the_builder_builds() {
        let records = sample(7);
        let mut encoder = BatchEncoder::new(BatchBuilder::default());
        assert!(encoder.finish().is_err(), "an empty batch is refused");
        encoder.push(5, Some(b"old"), None, std::iter::empty());
        encoder.clear();
        for new in &records {
            encoder.push(
                new.timestamp,
                new.key.as_deref(),
                new.value.as_deref(),
                new.headers.iter().map(|(k, v)| (k.as_str(), v.as_deref())),
            );
        }
        assert_eq!(encoder.len(), 7);
        assert_eq!(
            encoder.finish().unwrap(),
            BatchBuilder::default().build(&records).unwrap()
        );
    }

    #[test]
    fn produced_batches_are_checked_down_to_their_records() {
        let records = sample(3);
        let good = BatchBuilder::default().build(&records).unwrap();
        assert!(validate_produced(&good, 1 << 20, true).is_ok());
        // A record whose offset delta is wrong, with a valid CRC.
        let mut skewed = records.clone();
        skewed.truncate(2);
        let mut batch = BatchBuilder::default().build(&skewed).unwrap();
        let section_start = BATCH_HEADER_LEN;
        // The first record: length varint (1 byte here), attributes, timestamp delta (1 byte),
        // then the offset delta varint, zig-zag 0 -> 2.
        batch[section_start + 3] = 2 << 1;
        let crc = crc32c::crc32c(&batch[CRC_START..]);
        batch[17..21].copy_from_slice(&crc.to_be_bytes());
        assert!(matches!(
            validate_produced(&batch, 1 << 20, false),
            Err(BatchError::MalformedRecord(_))
        ));
        // Keyless records are refused where keys are required.
        let keyless = BatchBuilder::default()
            .build(&[NewRecord {
                value: Some(b"v".to_vec()),
                ..NewRecord::default()
            }])
            .unwrap();
        assert!(validate_produced(&keyless, 1 << 20, false).is_ok());
        assert_eq!(
            validate_produced(&keyless, 1 << 20, true),
            Err(BatchError::MissingKey)
        );
        // A batch that decompresses past the limit is refused.
        let big = BatchBuilder {
            compression: Compression::Zstd,
            ..BatchBuilder::default()
        }
        .build(&[NewRecord {
            key: Some(b"k".to_vec()),
            value: Some(vec![0; 100_000]),
            ..NewRecord::default()
        }])
        .unwrap();
        assert!(big.len() < 1_000);
        assert!(matches!(
            validate_produced(&big, 50_000, false),
            Err(BatchError::Compression(_))
        ));
    }

    #[test]
    fn stamping_offsets_keeps_the_crc_valid() {
        let mut batch = BatchBuilder::default().build(&sample(3)).unwrap();
        stamp_offsets(&mut batch, 42, 7);
        let header = validate(&batch).unwrap();
        assert_eq!((header.base_offset, header.last_offset()), (42, 44));
        stamp_log_append_time(&mut batch, 99);
        let header = validate(&batch).unwrap();
        assert!(header.is_log_append_time());
        assert_eq!(header.max_timestamp, 99);
    }

    #[test]
    fn every_single_bit_flip_is_caught() {
        let batch = BatchBuilder::default().build(&sample(4)).unwrap();
        for byte in 0..batch.len() {
            for bit in 0..8 {
                let mut flipped = batch.clone();
                flipped[byte] ^= 1 << bit;
                // base offset and leader epoch are outside the CRC by design
                if byte < 8 || (12..16).contains(&byte) {
                    continue;
                }
                assert!(
                    validate(&flipped).is_err(),
                    "flip of bit {bit} in byte {byte} accepted"
                );
            }
        }
    }

    #[test]
    fn garbage_never_panics() {
        let batch = BatchBuilder::default().build(&sample(5)).unwrap();
        for len in 0..batch.len() {
            let _ = validate(&batch[..len]);
            let _ = BatchHeader::parse(&batch[..len]);
            for record in Records::new(&batch[BATCH_HEADER_LEN.min(len)..len], 5) {
                let _ = record;
            }
        }
    }
}
