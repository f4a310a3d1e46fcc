//! Writing and reading a topology's rollup rows (see `docs/topologies.md` for the layout):
//! `window_name String, window_start DateTime, dimension String, value String`, one column per
//! stored component (`Topology::columns`), `is_final UInt8, version UInt64`.
//!
//! The columns depend on the topology, so rows are encoded here in ClickHouse's `RowBinary`
//! (strings as LEB128 length + bytes, integers and floats little-endian, `DateTime` as `UInt32`
//! seconds) and sent with an explicit column list, which works on 18.16 and current releases
//! alike and does not depend on the server's column order.

use bytes::Bytes;
use clickhouse::Client;
use tally_core::{Column, RollupRow, Value};

use crate::SinkError;

/// The key columns every rollup table starts with.
pub const KEY_COLUMNS: [&str; 4] = ["window_name", "window_start", "dimension", "value"];

/// `INSERT INTO {table} (…) FORMAT RowBinary` for rows with `columns`.
pub fn insert_sql(table: &str, columns: &[Column]) -> String {
    let names: Vec<&str> = KEY_COLUMNS
        .iter()
        .copied()
        .chain(columns.iter().map(|c| c.name.as_str()))
        .chain(["is_final", "version"])
        .collect();
    format!(
        "INSERT INTO {table} ({}) FORMAT RowBinary",
        names.join(", ")
    )
}

fn put_string(buf: &mut Vec<u8>, s: &str) {
    let mut n = s.len() as u64;
    loop {
        let byte = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            buf.push(byte);
            break;
        }
        buf.push(byte | 0x80);
    }
    buf.extend_from_slice(s.as_bytes());
}

/// Appends one row in `RowBinary`, values in the order of `columns` (a row with fewer values
/// is padded with zeros of the column's type; extra values are ignored), with `version`.
pub fn encode_row(buf: &mut Vec<u8>, row: &RollupRow, columns: &[Column], version: u64) {
    put_string(buf, &row.window);
    let start_s = u32::try_from(row.start_ms / 1000).unwrap_or(u32::MAX);
    buf.extend_from_slice(&start_s.to_le_bytes());
    put_string(buf, &row.dimension);
    put_string(buf, &row.value);
    for (i, column) in columns.iter().enumerate() {
        let v = row.values.get(i).copied();
        match column.kind {
            tally_core::ColumnKind::UInt64 => {
                let n = match v {
                    Some(Value::U64(n)) => n,
                    Some(Value::F64(f)) => f.max(0.0) as u64,
                    None => 0,
                };
                buf.extend_from_slice(&n.to_le_bytes());
            }
            tally_core::ColumnKind::Float64 => {
                let f = v.map_or(0.0, Value::as_f64);
                buf.extend_from_slice(&f.to_le_bytes());
            }
        }
    }
    buf.push(u8::from(row.is_final));
    buf.extend_from_slice(&version.to_le_bytes());
}

/// Inserts `rows` (each with its version) into `table`, one `INSERT` (all-or-nothing).
///
/// Errors: [`SinkError::ClickHouse`] (classified by its code: retry, or fatal such as a
/// missing column when `tally migrate` was not run after a topology changed).
pub async fn insert_rows(
    client: &Client,
    table: &str,
    columns: &[Column],
    rows: &[(RollupRow, u64)],
) -> Result<(), SinkError> {
    if rows.is_empty() {
        return Ok(());
    }
    let mut buf = Vec::with_capacity(rows.len() * (48 + 8 * columns.len()));
    for (row, version) in rows {
        encode_row(&mut buf, row, columns, *version);
    }
    let ctx = |e| SinkError::clickhouse(format!("insert into {table}"), e);
    let mut insert = client.insert_formatted_with(insert_sql(table, columns));
    insert.send(Bytes::from(buf)).await.map_err(ctx)?;
    insert.end().await.map_err(ctx)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use tally_core::{Component, RowTable};

    use super::*;

    #[test]
    fn rowbinary_layout_by_hand() {
        let columns = vec![
            Component::Events.column(),
            Component::SessionDurationMs.column(),
        ];
        let mut cols = columns.clone();
        cols[1].kind = tally_core::ColumnKind::Float64;
        let row = RollupRow {
            topology: Arc::from("t"),
            table: RowTable::Windows,
            window: Arc::from("1h"),
            start_ms: 3_600_000,
            dimension: Arc::from(""),
            value: "é".to_owned(),
            values: vec![Value::U64(300), Value::F64(0.5)],
            is_final: true,
        };
        let mut buf = Vec::new();
        encode_row(&mut buf, &row, &cols, 7);
        let mut want = vec![2, b'1', b'h'];
        want.extend_from_slice(&3_600u32.to_le_bytes());
        want.push(0); // empty dimension
        want.extend_from_slice(&[2, 0xc3, 0xa9]); // "é" is two UTF-8 bytes
        want.extend_from_slice(&300u64.to_le_bytes());
        want.extend_from_slice(&0.5f64.to_le_bytes());
        want.push(1);
        want.extend_from_slice(&7u64.to_le_bytes());
        assert_eq!(buf, want);
        assert_eq!(
            insert_sql("db.t", &columns),
            "INSERT INTO db.t (window_name, window_start, dimension, value, events, \
             session_duration_ms, is_final, version) FORMAT RowBinary"
        );
        // A 200-byte string has a two-byte length: 200 = 0xc8 -> 0xc8 0x01.
        let mut long = Vec::new();
        put_string(&mut long, &"x".repeat(200));
        assert_eq!(&long[..2], &[0xc8, 0x01]);
    }
}
