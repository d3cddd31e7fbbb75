//! Statements the Postgres door answers itself, before datafusion-postgres:
//!
//! - `DEALLOCATE ALL`, which drivers send to forget their prepared statements
//!   (psycopg does on every rollback once it has prepared one). The protocol
//!   crate reads it as deallocating a statement named `all` and fails; here it
//!   succeeds, as in PostgreSQL. Statements prepared again later replace the
//!   stored ones of the same name.
//! - `CREATE [OR REPLACE] TABLE events …`: the connection's own events (it
//!   replaces the served ones for that connection only); `sessions` and
//!   `session_events` follow, as `use_events_table` does for programs.
//! - `SET sessionql.…` and `SET datafusion.…`: run as sessionql runs them
//!   everywhere else, so a bad value or a missing channel file is an error
//!   naming the problem (the protocol crate would ignore the error and answer
//!   `SET`).

use async_trait::async_trait;
use datafusion::common::ParamValues;
use datafusion::logical_expr::LogicalPlan;
use datafusion::prelude::SessionContext;
use datafusion::sql::sqlparser::ast::Set;
use datafusion::sql::sqlparser::ast::Statement;
use datafusion_postgres::QueryHook;
use datafusion_postgres::hooks::HookClient;
use datafusion_postgres::pgwire::api::ClientInfo;
use datafusion_postgres::pgwire::api::results::{Response, Tag};
use datafusion_postgres::pgwire::error::{ErrorInfo, PgWireError, PgWireResult};

use crate::engine::{run_statements, use_events_table};

/// Answers `DEALLOCATE [PREPARE] ALL` with success.
#[derive(Debug)]
pub struct DeallocateAllHook;

fn is_deallocate_all(statement: &Statement) -> bool {
    matches!(statement, Statement::Deallocate { name, .. } if name.value.eq_ignore_ascii_case("all"))
}

#[async_trait]
impl QueryHook for DeallocateAllHook {
    async fn handle_simple_query(
        &self,
        statement: &Statement,
        _session_context: &SessionContext,
        _client: &mut dyn HookClient,
    ) -> Option<PgWireResult<Response>> {
        is_deallocate_all(statement).then(|| Ok(Response::Execution(Tag::new("DEALLOCATE ALL"))))
    }

    async fn handle_extended_parse_query(
        &self,
        _statement: &Statement,
        _session_context: &SessionContext,
        _client: &(dyn ClientInfo + Send + Sync),
    ) -> Option<PgWireResult<LogicalPlan>> {
        None
    }

    async fn handle_extended_query(
        &self,
        statement: &Statement,
        _logical_plan: &LogicalPlan,
        _params: &ParamValues,
        _session_context: &SessionContext,
        _client: &mut dyn HookClient,
    ) -> Option<PgWireResult<Response>> {
        is_deallocate_all(statement).then(|| Ok(Response::Execution(Tag::new("DEALLOCATE ALL"))))
    }
}

/// Runs `SET sessionql.…` / `SET datafusion.…` through sessionql, errors included.
#[derive(Debug)]
pub struct SettingsHook;

/// The text of a `SET` of a sessionql or DataFusion setting, if `statement` is one.
fn engine_setting(statement: &Statement) -> Option<String> {
    let Statement::Set(Set::SingleAssignment { variable, .. }) = statement else {
        return None;
    };
    let name = variable.to_string().to_ascii_lowercase();
    (name.starts_with("sessionql.") || name.starts_with("datafusion."))
        .then(|| statement.to_string())
}

/// An `ErrorResponse` with `sqlstate` and sessionql's message.
fn user_error(sqlstate: &str, message: String) -> PgWireError {
    PgWireError::UserError(Box::new(ErrorInfo::new(
        "ERROR".to_string(),
        sqlstate.to_string(),
        message,
    )))
}

async fn apply_setting(sql: &str, context: &SessionContext) -> PgWireResult<Response> {
    match run_statements(context, sql).await {
        Ok(_) => Ok(Response::Execution(Tag::new("SET"))),
        // 22023: invalid_parameter_value.
        Err(error) => Err(user_error("22023", error.to_string())),
    }
}

#[async_trait]
impl QueryHook for SettingsHook {
    async fn handle_simple_query(
        &self,
        statement: &Statement,
        session_context: &SessionContext,
        _client: &mut dyn HookClient,
    ) -> Option<PgWireResult<Response>> {
        let sql = engine_setting(statement)?;
        Some(apply_setting(&sql, session_context).await)
    }

    async fn handle_extended_parse_query(
        &self,
        _statement: &Statement,
        _session_context: &SessionContext,
        _client: &(dyn ClientInfo + Send + Sync),
    ) -> Option<PgWireResult<LogicalPlan>> {
        None
    }

    async fn handle_extended_query(
        &self,
        statement: &Statement,
        _logical_plan: &LogicalPlan,
        _params: &ParamValues,
        session_context: &SessionContext,
        _client: &mut dyn HookClient,
    ) -> Option<PgWireResult<Response>> {
        let sql = engine_setting(statement)?;
        Some(apply_setting(&sql, session_context).await)
    }
}

/// Makes a connection's `CREATE TABLE events …` its own events table.
#[derive(Debug)]
pub struct EventsTableHook;

async fn create_events_table(
    statement: &Statement,
    if_not_exists: bool,
    context: &SessionContext,
) -> PgWireResult<Response> {
    if !if_not_exists {
        context
            .deregister_table("events")
            .map_err(|error| user_error("XX000", error.to_string()))?;
    }
    // 42601: syntax_error or access rule violation; the message names it.
    run_statements(context, &statement.to_string())
        .await
        .map_err(|error| user_error("42601", error.to_string()))?;
    let table = context
        .table_provider("events")
        .await
        .map_err(|error| user_error("XX000", error.to_string()))?;
    use_events_table(context, table)
        .await
        .map_err(|error| user_error("42703", error.to_string()))?;
    Ok(Response::Execution(Tag::new("CREATE TABLE")))
}

/// `Some(if_not_exists)` when `statement` creates the `events` table.
fn creates_events(statement: &Statement) -> Option<bool> {
    match statement {
        Statement::CreateTable(create)
            if create.name.to_string().eq_ignore_ascii_case("events") =>
        {
            Some(create.if_not_exists)
        }
        _ => None,
    }
}

#[async_trait]
impl QueryHook for EventsTableHook {
    async fn handle_simple_query(
        &self,
        statement: &Statement,
        session_context: &SessionContext,
        _client: &mut dyn HookClient,
    ) -> Option<PgWireResult<Response>> {
        let if_not_exists = creates_events(statement)?;
        Some(create_events_table(statement, if_not_exists, session_context).await)
    }

    async fn handle_extended_parse_query(
        &self,
        _statement: &Statement,
        _session_context: &SessionContext,
        _client: &(dyn ClientInfo + Send + Sync),
    ) -> Option<PgWireResult<LogicalPlan>> {
        None
    }

    async fn handle_extended_query(
        &self,
        statement: &Statement,
        _logical_plan: &LogicalPlan,
        _params: &ParamValues,
        session_context: &SessionContext,
        _client: &mut dyn HookClient,
    ) -> Option<PgWireResult<Response>> {
        let if_not_exists = creates_events(statement)?;
        Some(create_events_table(statement, if_not_exists, session_context).await)
    }
}
