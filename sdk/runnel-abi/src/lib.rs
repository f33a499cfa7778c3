//! The two encodings that cross the WebAssembly boundary of Runnel functions
//! (`schemas/wit/README.md`): a batch of input records, host to guest, and the output
//! records, guest to host. Each is one buffer, read in place: [`Batch::parse`] and
//! [`Outputs::parse`] check a whole buffer once, after which reading its records cannot
//! fail and copies nothing. [`BatchWriter`] and [`OutputWriter`] build them.
//!
//! No dependencies and no `unsafe`, so the host and the guest SDK share it as it is.

use std::fmt;

/// The version both encodings start with.
pub const VERSION: u32 = 1;

/// A `bytes32` length meaning null.
const NULL: i32 = -1;

/// An output's `partition` letting the host choose (by key, else round robin).
pub const ANY_PARTITION: i32 = -1;

/// An output's `timestamp` meaning "when the host writes it".
pub const WRITE_TIME: i64 = i64::MIN;

/// Why a buffer does not decode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AbiError {
    /// Where in the buffer, in bytes.
    pub position: usize,
    pub reason: &'static str,
}

impl fmt::Display for AbiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "at byte {}: {}", self.position, self.reason)
    }
}

impl std::error::Error for AbiError {}

/// Reads fields off a buffer, each checked.
#[derive(Clone, Copy)]
struct Reader<'a> {
    bytes: &'a [u8],
    position: usize,
}

impl fmt::Debug for Reader<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "at byte {} of {}", self.position, self.bytes.len())
    }
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8]) -> Reader<'a> {
        Reader { bytes, position: 0 }
    }

    fn fail(&self, reason: &'static str) -> AbiError {
        AbiError {
            position: self.position,
            reason,
        }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], AbiError> {
        let end = self
            .position
            .checked_add(n)
            .filter(|end| *end <= self.bytes.len())
            .ok_or_else(|| self.fail("a length runs past the end of the buffer"))?;
        let taken = &self.bytes[self.position..end];
        self.position = end;
        Ok(taken)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], AbiError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn u16(&mut self) -> Result<u16, AbiError> {
        Ok(u16::from_le_bytes(self.array()?))
    }

    fn u32(&mut self) -> Result<u32, AbiError> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    fn i32(&mut self) -> Result<i32, AbiError> {
        Ok(i32::from_le_bytes(self.array()?))
    }

    fn i64(&mut self) -> Result<i64, AbiError> {
        Ok(i64::from_le_bytes(self.array()?))
    }

    fn str16(&mut self) -> Result<&'a str, AbiError> {
        let length = self.u16()? as usize;
        let start = self.position;
        let bytes = self.take(length)?;
        std::str::from_utf8(bytes).map_err(|_| AbiError {
            position: start,
            reason: "a name is not UTF-8",
        })
    }

    fn bytes32(&mut self) -> Result<Option<&'a [u8]>, AbiError> {
        match self.i32()? {
            NULL => Ok(None),
            length if length < 0 => Err(self.fail("a negative length other than -1")),
            length => Ok(Some(self.take(length as usize)?)),
        }
    }

    fn version(&mut self) -> Result<(), AbiError> {
        if self.u32()? != VERSION {
            return Err(AbiError {
                position: 0,
                reason: "an unknown encoding version",
            });
        }
        Ok(())
    }

    fn finished(&self) -> Result<(), AbiError> {
        if self.position != self.bytes.len() {
            return Err(self.fail("bytes left over after the last record"));
        }
        Ok(())
    }
}

/// A record's headers: (key, value) pairs in order; keys may repeat, as in Kafka.
#[derive(Clone, Copy)]
pub struct Headers<'a> {
    /// The encoded headers, count first; checked when the buffer was parsed.
    encoded: Reader<'a>,
}

impl<'a> Headers<'a> {
    fn skip(reader: &mut Reader<'a>) -> Result<Headers<'a>, AbiError> {
        let start = *reader;
        let count = reader.u32()?;
        for _ in 0..count {
            reader.str16()?;
            reader.bytes32()?;
        }
        Ok(Headers { encoded: start })
    }

    pub fn len(&self) -> usize {
        let mut reader = self.encoded;
        reader.u32().unwrap_or(0) as usize
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The first value under `key`.
    pub fn get(&self, key: &str) -> Option<Option<&'a [u8]>> {
        self.iter().find(|(k, _)| *k == key).map(|(_, v)| v)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&'a str, Option<&'a [u8]>)> + use<'a> {
        let mut reader = self.encoded;
        let count = reader.u32().unwrap_or(0);
        (0..count).map_while(move |_| Some((reader.str16().ok()?, reader.bytes32().ok()?)))
    }
}

impl fmt::Debug for Headers<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

/// One input record, borrowed from its batch.
#[derive(Clone, Copy, Debug)]
pub struct Record<'a> {
    pub offset: i64,
    pub timestamp: i64,
    pub key: Option<&'a [u8]>,
    pub value: Option<&'a [u8]>,
    pub headers: Headers<'a>,
}

impl<'a> Record<'a> {
    fn read(reader: &mut Reader<'a>) -> Result<Record<'a>, AbiError> {
        Ok(Record {
            offset: reader.i64()?,
            timestamp: reader.i64()?,
            key: reader.bytes32()?,
            value: reader.bytes32()?,
            headers: Headers::skip(reader)?,
        })
    }
}

/// A batch of input records of one partition, checked whole by [`Batch::parse`].
#[derive(Clone, Copy, Debug)]
pub struct Batch<'a> {
    pub topic: &'a str,
    pub partition: i32,
    count: u32,
    /// The first record's position.
    records: Reader<'a>,
}

impl<'a> Batch<'a> {
    pub fn parse(bytes: &'a [u8]) -> Result<Batch<'a>, AbiError> {
        let mut reader = Reader::new(bytes);
        reader.version()?;
        let topic = reader.str16()?;
        let partition = reader.i32()?;
        let count = reader.u32()?;
        let records = reader;
        for _ in 0..count {
            Record::read(&mut reader)?;
        }
        reader.finished()?;
        Ok(Batch {
            topic,
            partition,
            count,
            records,
        })
    }

    pub fn len(&self) -> usize {
        self.count as usize
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    pub fn records(&self) -> impl Iterator<Item = Record<'a>> + use<'a> {
        let mut reader = self.records;
        (0..self.count).map_while(move |_| Record::read(&mut reader).ok())
    }
}

/// One output record. Borrowed when read from an output buffer; what a guest builds.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Output<'a> {
    /// `None`: the function's first declared output topic.
    pub topic: Option<&'a str>,
    /// `None`: chosen by the host (by key, else round robin).
    pub partition: Option<i32>,
    /// `None`: when the host writes it.
    pub timestamp: Option<i64>,
    pub key: Option<&'a [u8]>,
    pub value: Option<&'a [u8]>,
    pub headers: Vec<(&'a str, Option<&'a [u8]>)>,
}

/// Output records as a guest returned them, checked whole by [`Outputs::parse`].
#[derive(Clone, Copy, Debug)]
pub struct Outputs<'a> {
    count: u32,
    records: Reader<'a>,
}

impl<'a> Outputs<'a> {
    pub fn parse(bytes: &'a [u8]) -> Result<Outputs<'a>, AbiError> {
        let mut reader = Reader::new(bytes);
        reader.version()?;
        let count = reader.u32()?;
        let records = reader;
        for _ in 0..count {
            Self::read(&mut reader)?;
        }
        reader.finished()?;
        Ok(Outputs { count, records })
    }

    fn read(reader: &mut Reader<'a>) -> Result<Output<'a>, AbiError> {
        let topic = reader.str16()?;
        let partition = reader.i32()?;
        if partition < ANY_PARTITION {
            return Err(reader.fail("a negative partition other than -1"));
        }
        let timestamp = reader.i64()?;
        let key = reader.bytes32()?;
        let value = reader.bytes32()?;
        let headers = Headers::skip(reader)?.iter().collect();
        Ok(Output {
            topic: (!topic.is_empty()).then_some(topic),
            partition: (partition != ANY_PARTITION).then_some(partition),
            timestamp: (timestamp != WRITE_TIME).then_some(timestamp),
            key,
            value,
            headers,
        })
    }

    pub fn len(&self) -> usize {
        self.count as usize
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    pub fn iter(&self) -> impl Iterator<Item = Output<'a>> + use<'a> {
        let mut reader = self.records;
        (0..self.count).map_while(move |_| Self::read(&mut reader).ok())
    }
}

/// Why a value cannot be encoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EncodeError {
    /// A topic or header name longer than 65535 bytes.
    NameTooLong(usize),
    /// A key or value of 2 GiB or more.
    BytesTooLong(usize),
    /// More than 4294967295 records or headers.
    TooMany,
}

impl fmt::Display for EncodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EncodeError::NameTooLong(n) => write!(f, "a name of {n} bytes (at most 65535)"),
            EncodeError::BytesTooLong(n) => write!(f, "a key or value of {n} bytes (under 2 GiB)"),
            EncodeError::TooMany => write!(f, "more than 4294967295 records or headers"),
        }
    }
}

impl std::error::Error for EncodeError {}

fn put_str16(out: &mut Vec<u8>, text: &str) -> Result<(), EncodeError> {
    let length = u16::try_from(text.len()).map_err(|_| EncodeError::NameTooLong(text.len()))?;
    out.extend_from_slice(&length.to_le_bytes());
    out.extend_from_slice(text.as_bytes());
    Ok(())
}

fn put_bytes32(out: &mut Vec<u8>, bytes: Option<&[u8]>) -> Result<(), EncodeError> {
    match bytes {
        None => out.extend_from_slice(&NULL.to_le_bytes()),
        Some(bytes) => {
            let length =
                i32::try_from(bytes.len()).map_err(|_| EncodeError::BytesTooLong(bytes.len()))?;
            out.extend_from_slice(&length.to_le_bytes());
            out.extend_from_slice(bytes);
        }
    }
    Ok(())
}

fn put_headers<'h>(
    out: &mut Vec<u8>,
    headers: impl ExactSizeIterator<Item = (&'h str, Option<&'h [u8]>)>,
) -> Result<(), EncodeError> {
    let count = u32::try_from(headers.len()).map_err(|_| EncodeError::TooMany)?;
    out.extend_from_slice(&count.to_le_bytes());
    for (key, value) in headers {
        put_str16(out, key)?;
        put_bytes32(out, value)?;
    }
    Ok(())
}

/// Where the record count sits in both encodings' headers is patched at the end.
fn patch_count(out: &mut [u8], at: usize, count: u32) {
    out[at..at + 4].copy_from_slice(&count.to_le_bytes());
}

/// Builds a batch (the host's side).
pub struct BatchWriter {
    out: Vec<u8>,
    count_at: usize,
    count: u32,
}

impl BatchWriter {
    pub fn new(topic: &str, partition: i32, capacity: usize) -> Result<BatchWriter, EncodeError> {
        let mut out = Vec::with_capacity(capacity.max(16 + topic.len()));
        out.extend_from_slice(&VERSION.to_le_bytes());
        put_str16(&mut out, topic)?;
        out.extend_from_slice(&partition.to_le_bytes());
        let count_at = out.len();
        out.extend_from_slice(&0u32.to_le_bytes());
        Ok(BatchWriter {
            out,
            count_at,
            count: 0,
        })
    }

    pub fn push<'h>(
        &mut self,
        offset: i64,
        timestamp: i64,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        headers: impl ExactSizeIterator<Item = (&'h str, Option<&'h [u8]>)>,
    ) -> Result<(), EncodeError> {
        self.count = self.count.checked_add(1).ok_or(EncodeError::TooMany)?;
        self.out.extend_from_slice(&offset.to_le_bytes());
        self.out.extend_from_slice(&timestamp.to_le_bytes());
        put_bytes32(&mut self.out, key)?;
        put_bytes32(&mut self.out, value)?;
        put_headers(&mut self.out, headers)
    }

    pub fn len(&self) -> usize {
        self.count as usize
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Bytes so far.
    pub fn size(&self) -> usize {
        self.out.len()
    }

    pub fn finish(mut self) -> Vec<u8> {
        patch_count(&mut self.out, self.count_at, self.count);
        self.out
    }
}

/// Builds output records (the guest's side).
pub struct OutputWriter {
    out: Vec<u8>,
    count: u32,
}

impl Default for OutputWriter {
    fn default() -> Self {
        OutputWriter::new()
    }
}

impl OutputWriter {
    pub fn new() -> OutputWriter {
        let mut out = Vec::with_capacity(4096);
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes());
        OutputWriter { out, count: 0 }
    }

    pub fn push(&mut self, output: &Output<'_>) -> Result<(), EncodeError> {
        self.count = self.count.checked_add(1).ok_or(EncodeError::TooMany)?;
        put_str16(&mut self.out, output.topic.unwrap_or(""))?;
        let partition = output.partition.unwrap_or(ANY_PARTITION);
        self.out.extend_from_slice(&partition.to_le_bytes());
        let timestamp = output.timestamp.unwrap_or(WRITE_TIME);
        self.out.extend_from_slice(&timestamp.to_le_bytes());
        put_bytes32(&mut self.out, output.key)?;
        put_bytes32(&mut self.out, output.value)?;
        put_headers(&mut self.out, output.headers.iter().copied())
    }

    pub fn len(&self) -> usize {
        self.count as usize
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    pub fn finish(mut self) -> Vec<u8> {
        patch_count(&mut self.out, 4, self.count);
        self.out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        let mut writer = BatchWriter::new("orders", 3, 0).unwrap();
        writer
            .push(
                10,
                1_700_000_000_000,
                Some(b"k1"),
                Some(b"hello"),
                [("source", Some(&b"web"[..])), ("trace", None)].into_iter(),
            )
            .unwrap();
        writer
            .push(11, 1_700_000_000_001, None, None, std::iter::empty())
            .unwrap();
        writer
            .push(12, -5, Some(b""), Some(b"x"), std::iter::empty())
            .unwrap();
        writer.finish()
    }

    #[test]
    fn a_batch_reads_back_as_written() {
        let bytes = sample();
        let batch = Batch::parse(&bytes).unwrap();
        assert_eq!(
            (batch.topic, batch.partition, batch.len()),
            ("orders", 3, 3)
        );
        let records: Vec<Record<'_>> = batch.records().collect();
        assert_eq!(records.len(), 3);
        assert_eq!(
            (records[0].offset, records[0].key, records[0].value),
            (10, Some(&b"k1"[..]), Some(&b"hello"[..]))
        );
        let headers: Vec<_> = records[0].headers.iter().collect();
        assert_eq!(
            headers,
            vec![("source", Some(&b"web"[..])), ("trace", None)]
        );
        assert_eq!(records[0].headers.get("source"), Some(Some(&b"web"[..])));
        assert_eq!(records[0].headers.get("nope"), None);
        assert_eq!((records[1].key, records[1].value), (None, None));
        assert!(records[1].headers.is_empty());
        assert_eq!((records[2].timestamp, records[2].key), (-5, Some(&b""[..])));
    }

    #[test]
    fn outputs_read_back_as_written() {
        let mut writer = OutputWriter::new();
        let first = Output {
            value: Some(b"HELLO"),
            key: Some(b"k1"),
            headers: vec![("h", Some(b"v"))],
            ..Output::default()
        };
        let second = Output {
            topic: Some("audit"),
            partition: Some(2),
            timestamp: Some(42),
            ..Output::default()
        };
        writer.push(&first).unwrap();
        writer.push(&second).unwrap();
        assert_eq!(writer.len(), 2);
        let bytes = writer.finish();
        let outputs = Outputs::parse(&bytes).unwrap();
        assert_eq!(outputs.iter().collect::<Vec<_>>(), vec![first, second]);
        let empty = OutputWriter::new().finish();
        assert!(Outputs::parse(&empty).unwrap().is_empty());
    }

    #[test]
    fn every_truncation_and_every_extra_byte_is_refused() {
        let bytes = sample();
        for end in 0..bytes.len() {
            assert!(Batch::parse(&bytes[..end]).is_err(), "truncated at {end}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(
            Batch::parse(&longer).unwrap_err().reason,
            "bytes left over after the last record"
        );
    }

    #[test]
    fn hostile_lengths_and_fields_are_refused_without_panicking() {
        let mut bytes = sample();
        // The first record's key length (after version, topic, partition, count, offset,
        // timestamp) set to a huge value, then to -7.
        let key_at = 4 + 2 + 6 + 4 + 4 + 8 + 8;
        bytes[key_at..key_at + 4].copy_from_slice(&i32::MAX.to_le_bytes());
        assert!(Batch::parse(&bytes).is_err());
        bytes[key_at..key_at + 4].copy_from_slice(&(-7i32).to_le_bytes());
        assert!(Batch::parse(&bytes).is_err());
        // A record count far beyond the buffer.
        let mut bytes = sample();
        bytes[16..20].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(Batch::parse(&bytes).is_err());
        // Another version; a topic that is not UTF-8.
        let mut bytes = sample();
        bytes[0] = 9;
        assert_eq!(
            Batch::parse(&bytes).unwrap_err().reason,
            "an unknown encoding version"
        );
        let mut bytes = sample();
        bytes[6] = 0xff;
        assert_eq!(
            Batch::parse(&bytes).unwrap_err().reason,
            "a name is not UTF-8"
        );
        // An output with partition -2.
        let mut writer = OutputWriter::new();
        writer
            .push(&Output {
                partition: Some(-2),
                ..Output::default()
            })
            .unwrap();
        assert!(Outputs::parse(&writer.finish()).is_err());
    }

    #[test]
    fn names_and_values_beyond_the_encoding_are_refused() {
        let long = "x".repeat(70_000);
        assert_eq!(
            BatchWriter::new(&long, 0, 0).err(),
            Some(EncodeError::NameTooLong(70_000))
        );
        let mut writer = OutputWriter::new();
        assert_eq!(
            writer.push(&Output {
                headers: vec![(&long, None)],
                ..Output::default()
            }),
            Err(EncodeError::NameTooLong(70_000))
        );
    }
}
