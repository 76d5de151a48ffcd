//! The timeline: events appended as they happen and read back filtered, newest window
//! first but in time order, which is how the CLI and the dashboard show them.

use crate::{Store, StoreError};
use rusqlite::types::Type;
use rusqlite::{Row, ToSql, params};
use tandem_api::{Event, EventKind};

/// Which events [`Store::events`] returns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventFilter {
    pub env: String,
    /// Only events at or after this time (milliseconds since the Unix epoch).
    pub since_ms: Option<i64>,
    /// Only events of this service.
    pub service: Option<String>,
    /// Only events of these kinds; empty means every kind.
    pub kinds: Vec<EventKind>,
    /// At most this many events: the newest that match.
    pub limit: usize,
}

impl EventFilter {
    /// Every kind of event of `env`, the newest [`EventFilter::DEFAULT_LIMIT`].
    pub fn new(env: impl Into<String>) -> EventFilter {
        EventFilter {
            env: env.into(),
            since_ms: None,
            service: None,
            kinds: Vec::new(),
            limit: Self::DEFAULT_LIMIT,
        }
    }

    pub const DEFAULT_LIMIT: usize = 1000;
}

impl Store {
    /// Appends `event` to the timeline.
    pub fn add_event(&self, event: &Event) -> Result<(), StoreError> {
        self.write(|conn| {
            conn.prepare_cached(
                "INSERT INTO events (time_ms, env, kind, service, instance, revision, who, message) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )
            .and_then(|mut statement| {
                statement.execute(params![
                    event.time_ms,
                    event.env,
                    event.kind.as_str(),
                    event.service,
                    event.instance,
                    event.revision,
                    event.who,
                    event.message,
                ])
            })
            .map_err(|e| self.sqlite_error(e))?;
            Ok(())
        })
    }

    /// The newest `filter.limit` events matching `filter`, oldest first. Events with the
    /// same time come back in the order they were added.
    pub fn events(&self, filter: &EventFilter) -> Result<Vec<Event>, StoreError> {
        let mut sql = String::from(
            "SELECT time_ms, env, kind, service, instance, revision, who, message \
             FROM events WHERE env = ?",
        );
        let mut values: Vec<&dyn ToSql> = vec![&filter.env];
        if let Some(since_ms) = &filter.since_ms {
            sql.push_str(" AND time_ms >= ?");
            values.push(since_ms);
        }
        if let Some(service) = &filter.service {
            sql.push_str(" AND service = ?");
            values.push(service);
        }
        let kinds: Vec<&'static str> = filter.kinds.iter().map(|k| k.as_str()).collect();
        if !kinds.is_empty() {
            sql.push_str(" AND kind IN (");
            sql.push_str(&vec!["?"; kinds.len()].join(", "));
            sql.push(')');
            values.extend(kinds.iter().map(|k| k as &dyn ToSql));
        }
        let limit = i64::try_from(filter.limit).unwrap_or(i64::MAX);
        sql.push_str(" ORDER BY time_ms DESC, id DESC LIMIT ?");
        values.push(&limit);

        self.read(|conn| {
            let mut statement = conn
                .prepare_cached(&sql)
                .map_err(|e| self.sqlite_error(e))?;
            let rows = statement
                .query_map(values.as_slice(), |row| {
                    Ok(Event {
                        time_ms: row.get(0)?,
                        env: row.get(1)?,
                        kind: kind_column(row, 2)?,
                        service: row.get(3)?,
                        instance: row.get(4)?,
                        revision: row.get(5)?,
                        who: row.get(6)?,
                        message: row.get(7)?,
                    })
                })
                .map_err(|e| self.sqlite_error(e))?;
            let mut events = rows
                .collect::<rusqlite::Result<Vec<Event>>>()
                .map_err(|e| self.sqlite_error(e))?;
            events.reverse();
            Ok(events)
        })
    }
}

fn kind_column(row: &Row<'_>, index: usize) -> rusqlite::Result<EventKind> {
    let text = row.get_ref(index)?.as_str()?;
    EventKind::parse(text).ok_or_else(|| {
        rusqlite::Error::FromSqlConversionFailure(
            index,
            Type::Text,
            format!("unknown event kind '{text}'").into(),
        )
    })
}
