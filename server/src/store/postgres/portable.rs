//! The portable tables ([`crate::store::portable`]) read from and written to PostgreSQL.

use futures::TryStreamExt;
use sqlx::postgres::{PgPool, PgRow};
use sqlx::{AssertSqlSafe, Row};
use tokio::sync::mpsc;

use super::pg_error;
use crate::store::Error;
use crate::store::portable::{self, BATCH_ROWS, Batch, Cell, Column, Kind, TABLES, Table};

/// Sends every row of `tables`, read in one repeatable-read transaction (one snapshot,
/// while the nodes go on writing), with no statement timeout: a large table takes as
/// long as the file it is written to.
pub(super) async fn export(pool: &PgPool, tables: &[&'static Table], into: &mpsc::Sender<Batch>) -> Result<(), Error> {
    let mut tx = pool.begin().await.map_err(pg_error)?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .execute(&mut *tx)
        .await
        .map_err(pg_error)?;
    sqlx::query("SET LOCAL statement_timeout = 0").execute(&mut *tx).await.map_err(pg_error)?;
    for &table in tables {
        let columns = table.columns.iter().map(select).collect::<Vec<_>>().join(", ");
        let sql = format!("SELECT {columns} FROM {}", table.name);
        let mut rows = sqlx::query(AssertSqlSafe(sql)).fetch(&mut *tx);
        let mut batch = Vec::with_capacity(BATCH_ROWS);
        while let Some(row) = rows.try_next().await.map_err(pg_error)? {
            batch.push(cells(table, &row)?);
            if batch.len() == BATCH_ROWS {
                send(into, table, std::mem::take(&mut batch)).await?;
            }
        }
        if !batch.is_empty() {
            send(into, table, batch).await?;
        }
    }
    tx.rollback().await.map_err(pg_error)
}

/// Inserts the rows from `from` in one transaction, a batch per statement, into a
/// database whose tables (other than the merged keys) are empty; commits only on
/// [`Batch::Done`]. How many rows each table gained, in [`TABLES`] order.
pub(super) async fn import(pool: &PgPool, mut from: mpsc::Receiver<Batch>) -> Result<Vec<(&'static str, u64)>, Error> {
    let mut tx = pool.begin().await.map_err(pg_error)?;
    sqlx::query("SET LOCAL statement_timeout = 0").execute(&mut *tx).await.map_err(pg_error)?;
    // The file is read between statements: an idle transaction is no fault here.
    sqlx::query("SET LOCAL idle_in_transaction_session_timeout = 0").execute(&mut *tx).await.map_err(pg_error)?;
    for table in TABLES.iter().filter(|table| !table.merge) {
        let sql = format!("SELECT EXISTS (SELECT 1 FROM {})", table.name);
        let held: bool = sqlx::query_scalar(AssertSqlSafe(sql)).fetch_one(&mut *tx).await.map_err(pg_error)?;
        if held {
            return Err(portable::not_empty(table));
        }
    }
    let mut counts: Vec<(&'static str, u64)> = TABLES.iter().map(|table| (table.name, 0)).collect();
    loop {
        match from.recv().await {
            None => return Err(portable::cut_short()),
            Some(Batch::Done) => break,
            Some(Batch::Rows(table, rows)) => {
                let added = insert(&mut tx, table, &rows).await?;
                if let Some(count) = counts.iter_mut().find(|(name, _)| *name == table.name) {
                    count.1 += added;
                }
            }
        }
    }
    tx.commit().await.map_err(pg_error)?;
    Ok(counts)
}

/// One statement for a batch: an array per column, unnested into rows.
async fn insert(tx: &mut sqlx::PgConnection, table: &'static Table, rows: &[Vec<Cell>]) -> Result<u64, Error> {
    let names = table.columns.iter().map(|column| column.name).collect::<Vec<_>>().join(", ");
    let arrays = (1..=table.columns.len())
        .map(|at| match table.columns[at - 1].kind {
            Kind::Text | Kind::Json => format!("${at}::text[]"),
            Kind::Document => format!("${at}::text[]::jsonb[]"),
            Kind::Int => format!("${at}::bigint[]"),
            Kind::Bool => format!("${at}::boolean[]"),
            Kind::Bytes => format!("${at}::bytea[]"),
        })
        .collect::<Vec<_>>()
        .join(", ");
    let conflict = if table.merge { " ON CONFLICT DO NOTHING" } else { "" };
    let sql = format!("INSERT INTO {} ({names}) SELECT * FROM UNNEST({arrays}){conflict}", table.name);
    let mut query = sqlx::query(AssertSqlSafe(sql));
    for (at, column) in table.columns.iter().enumerate() {
        let cells = rows.iter().map(|row| &row[at]);
        query =
            match column.kind {
                Kind::Text | Kind::Json | Kind::Document => query.bind(
                    cells
                        .map(|cell| if let Cell::Text(text) = cell { Some(text.clone()) } else { None })
                        .collect::<Vec<_>>(),
                ),
                Kind::Int => query
                    .bind(cells.map(|cell| if let Cell::Int(n) = cell { Some(*n) } else { None }).collect::<Vec<_>>()),
                Kind::Bool => query
                    .bind(cells.map(|cell| if let Cell::Bool(b) = cell { Some(*b) } else { None }).collect::<Vec<_>>()),
                Kind::Bytes => query.bind(
                    cells
                        .map(|cell| if let Cell::Bytes(bytes) = cell { Some(bytes.clone()) } else { None })
                        .collect::<Vec<_>>(),
                ),
            };
    }
    let done = query.execute(&mut *tx).await.map_err(|error| refused(table, error))?;
    Ok(done.rows_affected())
}

fn select(column: &Column) -> String {
    match column.kind {
        Kind::Document => format!("{}::text", column.name),
        _ => column.name.to_owned(),
    }
}

fn cells(table: &Table, row: &PgRow) -> Result<Vec<Cell>, Error> {
    table
        .columns
        .iter()
        .enumerate()
        .map(|(at, column)| {
            let cell = match column.kind {
                Kind::Text | Kind::Json | Kind::Document => {
                    row.try_get::<Option<String>, _>(at).map(|v| v.map(Cell::Text))
                }
                Kind::Int => row.try_get::<Option<i64>, _>(at).map(|v| v.map(Cell::Int)),
                Kind::Bool => row.try_get::<Option<bool>, _>(at).map(|v| v.map(Cell::Bool)),
                Kind::Bytes => row.try_get::<Option<Vec<u8>>, _>(at).map(|v| v.map(Cell::Bytes)),
            };
            Ok(cell.map_err(pg_error)?.unwrap_or(Cell::Null))
        })
        .collect()
}

async fn send(into: &mpsc::Sender<Batch>, table: &'static Table, rows: Vec<Vec<Cell>>) -> Result<(), Error> {
    into.send(Batch::Rows(table, rows)).await.map_err(|_| Error::Unavailable("the export was stopped".into()))
}

/// A row the database refuses (class 23: a duplicate key, a session of no user; class
/// 22: a value it cannot hold) is the file's fault.
fn refused(table: &Table, error: sqlx::Error) -> Error {
    match &error {
        sqlx::Error::Database(db) if db.code().is_some_and(|code| code.starts_with("23") || code.starts_with("22")) => {
            Error::InvalidArgument(format!("{}: a row the database refuses ({})", table.name, db.message()))
        }
        _ => pg_error(error),
    }
}
