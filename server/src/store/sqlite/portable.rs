//! The portable tables ([`crate::store::portable`]) read from and written to SQLite.

use rusqlite::types::{ToSqlOutput, Value as SqlValue};
use rusqlite::{Connection, params_from_iter};
use tokio::sync::mpsc;

use crate::store::Error;
use crate::store::portable::{self, BATCH_ROWS, Batch, Cell, Column, Kind, TABLES, Table};

/// Sends every row of `tables`, read in one transaction (one snapshot of the file).
pub(super) fn export(conn: &Connection, tables: &[&'static Table], into: &mpsc::Sender<Batch>) -> Result<(), Error> {
    let tx = conn.unchecked_transaction()?;
    for &table in tables {
        let columns = table.columns.iter().map(select).collect::<Vec<_>>().join(", ");
        let mut statement = tx.prepare(&format!("SELECT {columns} FROM {}", table.name))?;
        let mut rows = statement.query([])?;
        let mut batch = Vec::with_capacity(BATCH_ROWS);
        while let Some(row) = rows.next()? {
            let cells = (0..table.columns.len())
                .map(|at| cell(&table.columns[at], row.get::<_, SqlValue>(at)?))
                .collect::<Result<Vec<_>, Error>>()?;
            batch.push(cells);
            if batch.len() == BATCH_ROWS {
                send(into, table, std::mem::take(&mut batch))?;
            }
        }
        if !batch.is_empty() {
            send(into, table, batch)?;
        }
    }
    Ok(())
}

/// Inserts the rows from `from` in one transaction, into a database whose tables (other
/// than the merged keys) are empty; commits only on [`Batch::Done`]. How many rows each
/// table gained, in [`TABLES`] order.
pub(super) fn import(conn: &Connection, mut from: mpsc::Receiver<Batch>) -> Result<Vec<(&'static str, u64)>, Error> {
    let tx = conn.unchecked_transaction()?;
    for table in TABLES.iter().filter(|table| !table.merge) {
        let held: bool =
            tx.query_row(&format!("SELECT EXISTS (SELECT 1 FROM {})", table.name), [], |row| row.get(0))?;
        if held {
            return Err(portable::not_empty(table));
        }
    }
    let mut counts: Vec<(&'static str, u64)> = TABLES.iter().map(|table| (table.name, 0)).collect();
    loop {
        match from.blocking_recv() {
            None => return Err(portable::cut_short()),
            Some(Batch::Done) => break,
            Some(Batch::Rows(table, rows)) => {
                let names = table.columns.iter().map(|column| column.name).collect::<Vec<_>>().join(", ");
                let values = (1..=table.columns.len())
                    .map(|at| match table.columns[at - 1].kind {
                        Kind::Document => format!("jsonb(?{at})"),
                        _ => format!("?{at}"),
                    })
                    .collect::<Vec<_>>()
                    .join(", ");
                let conflict = if table.merge { " ON CONFLICT DO NOTHING" } else { "" };
                let sql = format!("INSERT INTO {} ({names}) VALUES ({values}){conflict}", table.name);
                let mut statement = tx.prepare_cached(&sql)?;
                let mut added = 0;
                for row in &rows {
                    added +=
                        statement.execute(params_from_iter(row.iter().map(bind))).map_err(|e| refused(table, e))?;
                }
                if let Some(count) = counts.iter_mut().find(|(name, _)| *name == table.name) {
                    count.1 += added as u64;
                }
            }
        }
    }
    tx.commit()?;
    Ok(counts)
}

fn select(column: &Column) -> String {
    match column.kind {
        Kind::Document => format!("json({})", column.name),
        _ => column.name.to_owned(),
    }
}

fn cell(column: &Column, value: SqlValue) -> Result<Cell, Error> {
    Ok(match (column.kind, value) {
        (_, SqlValue::Null) => Cell::Null,
        (Kind::Bool, SqlValue::Integer(number)) => Cell::Bool(number != 0),
        (_, SqlValue::Integer(number)) => Cell::Int(number),
        (_, SqlValue::Text(text)) => Cell::Text(text),
        (_, SqlValue::Blob(bytes)) => Cell::Bytes(bytes),
        (_, SqlValue::Real(_)) => return Err(Error::Internal(format!("{}: a real number stored", column.name))),
    })
}

fn bind(cell: &Cell) -> ToSqlOutput<'_> {
    use rusqlite::types::ValueRef;
    ToSqlOutput::Borrowed(match cell {
        Cell::Null => ValueRef::Null,
        Cell::Int(number) => ValueRef::Integer(*number),
        Cell::Bool(flag) => ValueRef::Integer(i64::from(*flag)),
        Cell::Text(text) => ValueRef::Text(text.as_bytes()),
        Cell::Bytes(bytes) => ValueRef::Blob(bytes),
    })
}

fn send(into: &mpsc::Sender<Batch>, table: &'static Table, rows: Vec<Vec<Cell>>) -> Result<(), Error> {
    into.blocking_send(Batch::Rows(table, rows)).map_err(|_| Error::Unavailable("the export was stopped".into()))
}

/// A row the database refuses (a duplicate key, a session of no user) is the file's fault.
fn refused(table: &Table, error: rusqlite::Error) -> Error {
    match &error {
        rusqlite::Error::SqliteFailure(failure, _) if failure.code == rusqlite::ErrorCode::ConstraintViolation => {
            Error::InvalidArgument(format!("{}: a row the database refuses ({error})", table.name))
        }
        _ => error.into(),
    }
}
