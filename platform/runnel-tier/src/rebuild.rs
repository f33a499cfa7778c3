//! Record batches rebuilt from a segment file's row group, read straight from its column
//! pages.
//!
//! The cold-read path: a fetch below the local log start needs whole Kafka batches, not an
//! Arrow table, so the columns are read with Parquet's column readers (which hand out
//! keys, values and header bytes as slices of the decompressed pages) and each record is
//! written once, into the output buffer. Going through Arrow arrays first copied every
//! value one more time and allocated a fresh array per thousand rows.
//!
//! The layout read is the one [`crate::columnar`] writes (`schemas/parquet/README.md`);
//! columns are found by name, and the timestamp column, kept for table readers, is not
//! read (a batch rebuilds from its base timestamp and the records' deltas).
//!
//! # Failure behaviour
//! A file that does not hold what the layout says — a missing or mistyped column, counts
//! of values, levels or rows that disagree, an offset outside its batch, a header key that
//! is not UTF-8 — fails with [`TierError::Format`]; nothing read from a file is indexed
//! without a bound check, so a damaged or hostile file cannot panic the reader. A batch
//! rebuilt with the CRC the file keeps for it (`batch_crc`) is not checked against it: a
//! damaged value that still decodes gives a batch whose CRC does not match, which
//! consumers refuse as corrupt rather than take.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use parquet::arrow::arrow_reader::{ArrowReaderMetadata, ArrowReaderOptions};
use parquet::column::page::PageReader;
use parquet::column::reader::{ColumnReaderImpl, get_column_reader};
use parquet::data_type::{ByteArray, ByteArrayType, DataType, Int32Type, Int64Type};
use parquet::file::metadata::{ParquetMetaData, RowGroupMetaData};
use parquet::file::reader::ChunkReader;
use parquet::file::serialized_reader::SerializedPageReader;
use parquet::file::statistics::Statistics;
use runnel_log::BatchAppender;
use runnel_log::batch::{BatchHeader, HeaderEntry, batch_positions};

use crate::TierError;

/// Rows read from every column at a time: enough to amortize each call, few enough that
/// the decompressed pages a chunk copies from are still in the CPU's caches when its
/// records are written, and each batch is still there when its CRC is computed.
const CHUNK_ROWS: usize = 256;

/// Rebuilds the record batches of row group `group` of the file `reader` reads (with its
/// footer `metadata`), appending them to `buffer`. Rows of one batch must be contiguous;
/// each batch is rebuilt uncompressed with its stored header fields.
pub fn rebuild_row_group<R: ChunkReader + 'static>(
    reader: &Arc<R>,
    metadata: &ParquetMetaData,
    group: usize,
    buffer: BytesMut,
) -> Result<BytesMut, TierError> {
    if group >= metadata.num_row_groups() {
        return Err(TierError::Format(format!(
            "row group {group} of a file of {}",
            metadata.num_row_groups()
        )));
    }
    let group = metadata.row_group(group);
    let rows = usize::try_from(group.num_rows())
        .map_err(|_| TierError::Format(format!("a row group of {} rows", group.num_rows())))?;
    let mut columns = GroupColumns::open(&Columns {
        reader,
        group,
        rows,
    })?;
    let mut out = buffer;
    let mut open = None;
    let mut left = rows;
    while left > 0 {
        let chunk = left.min(CHUNK_ROWS);
        columns.read(chunk)?;
        columns.write(chunk, &mut out, &mut open)?;
        left -= chunk;
    }
    if let Some(batch) = open.take() {
        batch.finish(&mut out)?;
    }
    Ok(out)
}

/// Rebuilds the record batches of a whole segment file from offset `from` on: whole
/// batches (the first may start before `from`), stopping once about `max_bytes` are
/// rebuilt (at least one batch if there is any), concatenated.
pub fn decode(parquet: Bytes, from: u64, max_bytes: usize) -> Result<BytesMut, TierError> {
    let footer = ArrowReaderMetadata::load(&parquet, ArrowReaderOptions::new())?;
    crate::columnar::check_schema(footer.schema())?;
    let metadata = footer.metadata();
    let reader = Arc::new(parquet);
    let mut out = BytesMut::new();
    for group in 0..metadata.num_row_groups() {
        // A group whose offsets all lie before `from` (by its statistics) is skipped.
        let newest = match metadata.row_group(group).column(0).statistics() {
            Some(Statistics::Int64(stats)) => stats.max_opt().copied(),
            _ => None,
        };
        if newest.is_some_and(|newest| newest < from as i64) {
            continue;
        }
        let rebuilt = rebuild_row_group(&reader, metadata, group, BytesMut::new())?;
        for (position, header) in batch_positions(&rebuilt) {
            if header.last_offset() < from as i64 {
                continue;
            }
            if !out.is_empty() && out.len() >= max_bytes {
                return Ok(out);
            }
            let end = position + header.total_len() as usize;
            out.extend_from_slice(&rebuilt[position..end]);
        }
    }
    Ok(out)
}

/// The open batch of a rebuild: its header fields, where it began, and the CRC it is known
/// to have (`batch_crc`), if any.
struct OpenBatch {
    header: BatchHeader,
    appender: BatchAppender,
    crc: Option<u32>,
}

impl OpenBatch {
    fn finish(self, out: &mut BytesMut) -> Result<(), TierError> {
        match self.crc {
            Some(crc) => self.appender.finish_with_crc(out, &self.header, crc)?,
            None => self.appender.finish(out, &self.header)?,
        }
        Ok(())
    }
}

/// The columns of one row group that batches are rebuilt from, each holding the values of
/// the chunk of rows read last.
struct GroupColumns {
    offset: Required<Int64Type>,
    key: Nullable<ByteArrayType>,
    value: Nullable<ByteArrayType>,
    headers: Headers,
    timestamp_delta: Required<Int64Type>,
    base_offset: Required<Int64Type>,
    last_offset_delta: Required<Int32Type>,
    base_timestamp: Required<Int64Type>,
    max_timestamp: Required<Int64Type>,
    leader_epoch: Required<Int32Type>,
    attributes: Required<Int32Type>,
    producer_id: Required<Int64Type>,
    producer_epoch: Required<Int32Type>,
    base_sequence: Required<Int32Type>,
    crc: KnownCrcs,
}

/// Opens the columns of one row group by name.
struct Columns<'a, R> {
    reader: &'a Arc<R>,
    group: &'a RowGroupMetaData,
    rows: usize,
}

impl<R: ChunkReader + 'static> Columns<'_, R> {
    fn has(&self, name: &str) -> bool {
        self.group
            .columns()
            .iter()
            .any(|c| c.column_path().string() == name)
    }

    /// The typed reader of column `name`, refused unless it has `T`'s physical type and
    /// the given nesting.
    fn open<T: DataType>(
        &self,
        name: &str,
        max_definition: i16,
        max_repetition: i16,
    ) -> Result<ColumnReaderImpl<T>, TierError> {
        let column = self
            .group
            .columns()
            .iter()
            .find(|c| c.column_path().string() == name)
            .ok_or_else(|| TierError::Format(format!("the column `{name}` is missing")))?;
        let descriptor = column.column_descr_ptr();
        if descriptor.max_def_level() != max_definition
            || descriptor.max_rep_level() != max_repetition
        {
            return Err(TierError::Format(format!(
                "the column `{name}` is nested other than the layout says"
            )));
        }
        let pages: Box<dyn PageReader> = Box::new(SerializedPageReader::new(
            self.reader.clone(),
            column,
            self.rows,
            None,
        )?);
        T::get_column_reader(get_column_reader(descriptor, pages))
            .ok_or_else(|| TierError::Format(format!("the column `{name}` is mistyped")))
    }
}

/// A required, flat column: exactly one value a row.
struct Required<T: DataType> {
    name: &'static str,
    reader: ColumnReaderImpl<T>,
    values: Vec<T::T>,
}

impl<T: DataType> Required<T> {
    fn open<R: ChunkReader + 'static>(
        columns: &Columns<'_, R>,
        name: &'static str,
    ) -> Result<Self, TierError> {
        Ok(Required {
            name,
            reader: columns.open::<T>(name, 0, 0)?,
            values: Vec::with_capacity(CHUNK_ROWS),
        })
    }

    fn read(&mut self, rows: usize) -> Result<(), TierError> {
        self.values.clear();
        let (records, _, _) = self
            .reader
            .read_records(rows, None, None, &mut self.values)?;
        if records != rows || self.values.len() != rows {
            return Err(TierError::Format(format!(
                "the column `{}` ran out: {} values where {rows} rows were left",
                self.name,
                self.values.len()
            )));
        }
        Ok(())
    }
}

/// An optional, flat column: a definition level per row (1 where the value is present),
/// the present values in order.
struct Nullable<T: DataType> {
    name: &'static str,
    reader: ColumnReaderImpl<T>,
    levels: Vec<i16>,
    values: Vec<T::T>,
}

impl<T: DataType> Nullable<T> {
    fn open<R: ChunkReader + 'static>(
        columns: &Columns<'_, R>,
        name: &'static str,
    ) -> Result<Self, TierError> {
        Ok(Nullable {
            name,
            reader: columns.open::<T>(name, 1, 0)?,
            levels: Vec::with_capacity(CHUNK_ROWS),
            values: Vec::with_capacity(CHUNK_ROWS),
        })
    }

    fn read(&mut self, rows: usize) -> Result<(), TierError> {
        self.levels.clear();
        self.values.clear();
        let (records, _, _) =
            self.reader
                .read_records(rows, Some(&mut self.levels), None, &mut self.values)?;
        let present = self.levels.iter().filter(|&&level| level == 1).count();
        if records != rows || self.levels.len() != rows || present != self.values.len() {
            return Err(TierError::Format(format!(
                "the column `{}` holds {} levels and {} values for {rows} rows",
                self.name,
                self.levels.len(),
                self.values.len()
            )));
        }
        Ok(())
    }

    /// Row `row`'s value: the next present one, or `None` where the row's is null.
    fn next<'a>(
        &self,
        row: usize,
        present: &mut std::slice::Iter<'a, T::T>,
    ) -> Result<Option<&'a T::T>, TierError> {
        if self.levels.get(row) != Some(&1) {
            return Ok(None);
        }
        present
            .next()
            .map(Some)
            .ok_or_else(|| TierError::Format(format!("row {row}'s `{}` is missing", self.name)))
    }
}

/// `batch_crc`, per row: the CRC the row's batch is known to have once rebuilt, `None`
/// where the column is null (the rebuild computes it) or missing (a file written before
/// the column was).
struct KnownCrcs {
    column: Option<Nullable<Int64Type>>,
    crcs: Vec<Option<u32>>,
}

impl KnownCrcs {
    fn open<R: ChunkReader + 'static>(columns: &Columns<'_, R>) -> Result<Self, TierError> {
        let column = if columns.has("batch_crc") {
            Some(Nullable::open(columns, "batch_crc")?)
        } else {
            None
        };
        Ok(KnownCrcs {
            column,
            crcs: Vec::with_capacity(CHUNK_ROWS),
        })
    }

    fn read(&mut self, rows: usize) -> Result<(), TierError> {
        self.crcs.clear();
        let Some(column) = self.column.as_mut() else {
            self.crcs.resize(rows, None);
            return Ok(());
        };
        column.read(rows)?;
        let mut present = column.values.iter();
        for row in 0..rows {
            let crc = column
                .next(row, &mut present)?
                .map(|&crc| {
                    u32::try_from(crc).map_err(|_| {
                        TierError::Format(format!("`batch_crc` holds {crc}, not a CRC"))
                    })
                })
                .transpose()?;
            self.crcs.push(crc);
        }
        Ok(())
    }
}

/// The headers list: its required keys (defined at level 1 where a row has an entry, 0
/// for a row without headers) and optional values (2 where the value is present); each
/// row's entries as a range of `keys` and `values`.
struct Headers {
    key_reader: ColumnReaderImpl<ByteArrayType>,
    value_reader: ColumnReaderImpl<ByteArrayType>,
    key_levels: Vec<i16>,
    key_repetitions: Vec<i16>,
    value_levels: Vec<i16>,
    value_repetitions: Vec<i16>,
    present_values: Vec<ByteArray>,
    /// `rows + 1` bounds into `keys` and `values`.
    bounds: Vec<usize>,
    keys: Vec<ByteArray>,
    /// Per entry: the value, `None` for a null one.
    values: Vec<Option<ByteArray>>,
}

impl Headers {
    fn open<R: ChunkReader + 'static>(columns: &Columns<'_, R>) -> Result<Self, TierError> {
        Ok(Headers {
            key_reader: columns.open::<ByteArrayType>("headers.list.item.key", 1, 1)?,
            value_reader: columns.open::<ByteArrayType>("headers.list.item.value", 2, 1)?,
            key_levels: Vec::with_capacity(CHUNK_ROWS),
            key_repetitions: Vec::with_capacity(CHUNK_ROWS),
            value_levels: Vec::with_capacity(CHUNK_ROWS),
            value_repetitions: Vec::with_capacity(CHUNK_ROWS),
            present_values: Vec::new(),
            bounds: Vec::with_capacity(CHUNK_ROWS + 1),
            keys: Vec::new(),
            values: Vec::new(),
        })
    }

    fn read(&mut self, rows: usize) -> Result<(), TierError> {
        for levels in [
            &mut self.key_levels,
            &mut self.key_repetitions,
            &mut self.value_levels,
            &mut self.value_repetitions,
        ] {
            levels.clear();
        }
        self.keys.clear();
        self.present_values.clear();
        self.bounds.clear();
        self.values.clear();
        let (key_rows, _, _) = self.key_reader.read_records(
            rows,
            Some(&mut self.key_levels),
            Some(&mut self.key_repetitions),
            &mut self.keys,
        )?;
        let (value_rows, _, _) = self.value_reader.read_records(
            rows,
            Some(&mut self.value_levels),
            Some(&mut self.value_repetitions),
            &mut self.present_values,
        )?;
        if key_rows != rows
            || value_rows != rows
            || self.key_levels.len() != self.key_repetitions.len()
            || self.key_repetitions != self.value_repetitions
            || self.value_levels.len() != self.key_levels.len()
        {
            return Err(TierError::Format(
                "the header keys and values do not line up with the rows".into(),
            ));
        }
        let mut present_values = self.present_values.drain(..);
        for (index, (&repetition, &level)) in self
            .key_repetitions
            .iter()
            .zip(&self.key_levels)
            .enumerate()
        {
            if repetition == 0 {
                self.bounds.push(self.values.len());
            }
            let value_level = self.value_levels.get(index).copied().unwrap_or(0);
            match (level, value_level) {
                // A row without headers.
                (0, 0) => {}
                (1, 1) => self.values.push(None),
                (1, 2) => {
                    let value = present_values
                        .next()
                        .ok_or_else(|| TierError::Format("the header values run out".into()))?;
                    self.values.push(Some(value));
                }
                _ => {
                    return Err(TierError::Format(format!(
                        "header levels {level} and {value_level} do not make an entry"
                    )));
                }
            }
        }
        let values_left = present_values.next().is_some();
        drop(present_values);
        self.bounds.push(self.values.len());
        if self.bounds.len() != rows + 1 || self.values.len() != self.keys.len() || values_left {
            return Err(TierError::Format(format!(
                "the headers hold {} entries for {} keys over {} rows",
                self.values.len(),
                self.keys.len(),
                self.bounds.len().saturating_sub(1)
            )));
        }
        Ok(())
    }

    /// The entries of the chunk, keys checked to be UTF-8.
    fn entries(&self) -> Result<Vec<HeaderEntry<'_>>, TierError> {
        self.keys
            .iter()
            .zip(&self.values)
            .map(|(key, value)| {
                let key = std::str::from_utf8(key.data())
                    .map_err(|_| TierError::Format("a header key is not UTF-8".into()))?;
                Ok((key, value.as_ref().map(ByteArray::data)))
            })
            .collect()
    }
}

fn to_i16(value: i32, name: &str) -> Result<i16, TierError> {
    i16::try_from(value)
        .map_err(|_| TierError::Format(format!("`{name}` holds {value}, beyond 16 bits")))
}

impl GroupColumns {
    fn open<R: ChunkReader + 'static>(columns: &Columns<'_, R>) -> Result<Self, TierError> {
        Ok(GroupColumns {
            offset: Required::open(columns, "offset")?,
            key: Nullable::open(columns, "key")?,
            value: Nullable::open(columns, "value")?,
            headers: Headers::open(columns)?,
            timestamp_delta: Required::open(columns, "timestamp_delta")?,
            base_offset: Required::open(columns, "batch_base_offset")?,
            last_offset_delta: Required::open(columns, "batch_last_offset_delta")?,
            base_timestamp: Required::open(columns, "batch_base_timestamp")?,
            max_timestamp: Required::open(columns, "batch_max_timestamp")?,
            leader_epoch: Required::open(columns, "batch_leader_epoch")?,
            attributes: Required::open(columns, "batch_attributes")?,
            producer_id: Required::open(columns, "producer_id")?,
            producer_epoch: Required::open(columns, "producer_epoch")?,
            base_sequence: Required::open(columns, "base_sequence")?,
            crc: KnownCrcs::open(columns)?,
        })
    }

    /// Reads the next `rows` rows of every column.
    fn read(&mut self, rows: usize) -> Result<(), TierError> {
        self.offset.read(rows)?;
        self.key.read(rows)?;
        self.value.read(rows)?;
        self.headers.read(rows)?;
        self.timestamp_delta.read(rows)?;
        self.base_offset.read(rows)?;
        self.last_offset_delta.read(rows)?;
        self.base_timestamp.read(rows)?;
        self.max_timestamp.read(rows)?;
        self.leader_epoch.read(rows)?;
        self.attributes.read(rows)?;
        self.producer_id.read(rows)?;
        self.producer_epoch.read(rows)?;
        self.base_sequence.read(rows)?;
        self.crc.read(rows)
    }

    /// Writes the `rows` rows read last to the end of `out`, into the `open` batch while
    /// their batch base offset is its own, else into a new one (closing the open one).
    fn write(
        &self,
        rows: usize,
        out: &mut BytesMut,
        open: &mut Option<OpenBatch>,
    ) -> Result<(), TierError> {
        let entries = self.headers.entries()?;
        let mut keys = self.key.values.iter();
        let mut values = self.value.values.iter();
        // Every column was checked to hold `rows` values (the headers `rows + 1` bounds),
        // so indexing by row stays in bounds.
        for row in 0..rows {
            let base_offset = self.base_offset.values[row];
            if open
                .as_ref()
                .is_none_or(|batch| batch.header.base_offset != base_offset)
            {
                if let Some(batch) = open.take() {
                    batch.finish(out)?;
                }
                let header = BatchHeader {
                    base_offset,
                    batch_length: 0,
                    partition_leader_epoch: self.leader_epoch.values[row],
                    magic: 2,
                    crc: 0,
                    attributes: to_i16(self.attributes.values[row], "batch_attributes")?,
                    last_offset_delta: self.last_offset_delta.values[row],
                    base_timestamp: self.base_timestamp.values[row],
                    max_timestamp: self.max_timestamp.values[row],
                    producer_id: self.producer_id.values[row],
                    producer_epoch: to_i16(self.producer_epoch.values[row], "producer_epoch")?,
                    base_sequence: self.base_sequence.values[row],
                    records_count: 0,
                };
                *open = Some(OpenBatch {
                    header,
                    appender: BatchAppender::begin(out),
                    crc: self.crc.crcs[row],
                });
            }
            let Some(OpenBatch { appender, .. }) = open.as_mut() else {
                continue;
            };
            let offset = self.offset.values[row];
            let delta = offset
                .checked_sub(base_offset)
                .and_then(|delta| i32::try_from(delta).ok())
                .ok_or_else(|| {
                    TierError::Format(format!(
                        "offset {offset} lies outside its batch at {base_offset}"
                    ))
                })?;
            let key = self.key.next(row, &mut keys)?.map(ByteArray::data);
            let value = self.value.next(row, &mut values)?.map(ByteArray::data);
            let (start, end) = (self.headers.bounds[row], self.headers.bounds[row + 1]);
            let row_entries = entries.get(start..end).ok_or_else(|| {
                TierError::Format(format!("row {row} has headers {start}..{end}"))
            })?;
            appender.push_encoded(
                out,
                delta,
                self.timestamp_delta.values[row],
                key,
                value,
                row_entries.iter().copied(),
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::{ArrayRef, Int64Array, RecordBatch};
    use arrow_schema::{DataType as ArrowType, Field, Schema};
    use parquet::arrow::ArrowWriter;

    /// A Parquet file claiming the segment layout's version but holding only `columns`
    /// (each an Int64 column of three rows).
    fn file_with(columns: &[&str]) -> Bytes {
        let metadata = std::collections::HashMap::from([(
            crate::columnar::SCHEMA_VERSION_KEY.to_string(),
            crate::columnar::SCHEMA_VERSION.to_string(),
        )]);
        let fields: Vec<Field> = columns
            .iter()
            .map(|name| Field::new(*name, ArrowType::Int64, false))
            .collect();
        let schema = Arc::new(Schema::new(fields).with_metadata(metadata));
        let arrays: Vec<ArrayRef> = columns
            .iter()
            .map(|_| Arc::new(Int64Array::from(vec![0, 1, 2])) as ArrayRef)
            .collect();
        let batch = RecordBatch::try_new(schema.clone(), arrays).unwrap();
        let mut writer = ArrowWriter::try_new(Vec::new(), schema, None).unwrap();
        writer.write(&batch).unwrap();
        Bytes::from(writer.into_inner().unwrap())
    }

    #[test]
    fn a_file_missing_a_column_is_refused_by_name() {
        let error = decode(file_with(&["offset"]), 0, usize::MAX).unwrap_err();
        assert!(error.to_string().contains("`key` is missing"), "{error}");
    }

    #[test]
    fn a_column_of_another_type_or_nesting_is_refused() {
        // `key` as a required Int64: neither binary nor optional.
        let error = decode(file_with(&["offset", "key"]), 0, usize::MAX).unwrap_err();
        assert!(error.to_string().contains("`key`"), "{error}");
    }

    #[test]
    fn a_row_group_past_the_last_is_refused() {
        let parquet = file_with(&["offset"]);
        let footer = ArrowReaderMetadata::load(&parquet, ArrowReaderOptions::new()).unwrap();
        let error = rebuild_row_group(&Arc::new(parquet), footer.metadata(), 7, BytesMut::new())
            .unwrap_err();
        assert!(error.to_string().contains("row group 7"), "{error}");
    }
}
