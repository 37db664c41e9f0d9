//! The postgres loader: the platform's own permission tables, read with a parameterised query.
//!
//! The queries are prepared once per connection (`prepare_cached`) and always bound, never
//! interpolated: `$1` is the tenant id and `$2` the user id (or role name), both sent as
//! `text` (cast in SQL for other column types: `tenant_id = $1::uuid`). The first column of
//! every row is a permission code; `NULL`s are skipped. The pool holds at most `pool_size`
//! connections; waiting for one counts against the loader's timeout.

use std::str::FromStr;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio_postgres::NoTls;

use super::settings::PostgresSettings;
use super::{field, FieldError, LoadError, PerSubject, Subject};

pub(super) struct PostgresSource {
    pool: Pool,
    queries: PerSubject<String>,
}

/// `$1` and `$2` must both appear, and no higher parameter.
fn check_query(q: &str, name: &str) -> Result<(), FieldError> {
    let has = |n: u32| {
        let p = format!("${n}");
        q.match_indices(&p).any(|(i, _)| {
            !q[i + p.len()..]
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_digit())
        })
    };
    if !has(1) || !has(2) {
        return Err(field(
            format!("postgres.{name}"),
            "must use $1 (tenant id) and $2 as parameters",
        ));
    }
    if (3..=9).any(has) {
        return Err(field(
            format!("postgres.{name}"),
            "may only use the parameters $1 and $2",
        ));
    }
    Ok(())
}

impl PostgresSource {
    /// Builds the pool; no connection is made until the first load.
    pub(super) fn new(s: &PostgresSettings, timeout: Duration) -> Result<Self, FieldError> {
        if let Some(q) = &s.user_query {
            check_query(q, "user_query")?;
        }
        if let Some(q) = &s.role_query {
            check_query(q, "role_query")?;
        }
        if s.user_query.is_none() && s.role_query.is_none() {
            return Err(field("postgres", "set user_query, role_query or both"));
        }
        if s.pool_size == 0 {
            return Err(field("postgres.pool_size", "must be at least 1"));
        }
        // The URL may carry a password: report the kind of problem, not the URL.
        let mut pg = tokio_postgres::Config::from_str(&s.url).map_err(|_| {
            field(
                "postgres.url",
                "is not a valid PostgreSQL connection string",
            )
        })?;
        if matches!(pg.get_ssl_mode(), tokio_postgres::config::SslMode::Require) {
            return Err(field(
                "postgres.url",
                "asks for sslmode=require, which this loader does not speak; connect over loopback or a unix socket",
            ));
        }
        pg.connect_timeout(timeout);
        pg.application_name("realmgate-grant-loader");
        let manager = Manager::from_config(
            pg,
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(s.pool_size)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(timeout))
            .create_timeout(Some(timeout))
            .recycle_timeout(Some(timeout))
            .build()
            .map_err(|e| field("postgres", format!("cannot build the pool ({e})")))?;
        Ok(Self {
            pool,
            queries: PerSubject {
                user: s.user_query.clone(),
                role: s.role_query.clone(),
            },
        })
    }

    pub(super) fn loads(&self, subject: &Subject<'_>) -> bool {
        self.queries.loads(subject)
    }

    pub(super) async fn fetch(
        &self,
        tenant: &str,
        subject: &Subject<'_>,
    ) -> Result<Vec<String>, LoadError> {
        let Some((query, value)) = self.queries.get(subject) else {
            return Ok(Vec::new());
        };
        let client = self.pool.get().await.map_err(|e| match e {
            deadpool_postgres::PoolError::Timeout(_) => LoadError::Timeout,
            other => LoadError::Transport(other.to_string()),
        })?;
        let stmt = client
            .prepare_cached(query)
            .await
            .map_err(|e| LoadError::Query(e.to_string()))?;
        let rows = client
            .query(&stmt, &[&tenant, &value])
            .await
            .map_err(|e| LoadError::Query(e.to_string()))?;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            match row.try_get::<_, Option<String>>(0) {
                Ok(Some(code)) => out.push(code),
                Ok(None) => {}
                Err(e) => return Err(LoadError::Query(e.to_string())),
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::check_query;

    #[test]
    fn queries_must_bind_both_parameters() {
        assert!(check_query("SELECT code FROM p WHERE t = $1 AND u = $2", "q").is_ok());
        assert!(check_query("SELECT code FROM p WHERE u = $2 AND t = $1::uuid", "q").is_ok());
        assert!(check_query("SELECT code FROM p WHERE t = $1", "q").is_err());
        assert!(check_query("SELECT code FROM p WHERE t = $1 AND u = $12", "q").is_err());
        assert!(check_query("SELECT code FROM p WHERE t = $1 AND u = $2 AND x = $3", "q").is_err());
    }
}
