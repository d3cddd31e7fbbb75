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
use datafusion::sql::sqlparser::ast::{Set, Statement};
use datafusion_postgres::QueryHook;
use datafusion_postgres::hooks::HookClient;
use datafusion_postgres::pgwire::api::ClientInfo;
use datafusion_postgres::pgwire::api::results::{Response, Tag};
use datafusion_postgres::pgwire::error::{ErrorInfo, PgWireError, PgWireResult};

use crate::engine::{run_statements, use_events_table};

/// The statements sessionql answers itself, in either query protocol.
#[derive(Debug)]
pub struct SessionqlStatements;

/// What a statement is, for this hook.
enum Answered {
    DeallocateAll,
    EngineSetting,
    CreateEvents { if_not_exists: bool },
}

fn classify(statement: &Statement) -> Option<Answered> {
    match statement {
        Statement::Deallocate { name, .. } if name.value.eq_ignore_ascii_case("all") => {
            Some(Answered::DeallocateAll)
        }
        Statement::Set(Set::SingleAssignment { variable, .. }) => {
            let name = variable.to_string().to_ascii_lowercase();
            (name.starts_with("sessionql.") || name.starts_with("datafusion."))
                .then_some(Answered::EngineSetting)
        }
        Statement::CreateTable(create)
            if create.name.to_string().eq_ignore_ascii_case("events") =>
        {
            Some(Answered::CreateEvents {
                if_not_exists: create.if_not_exists,
            })
        }
        _ => None,
    }
}

/// An `ErrorResponse` with `sqlstate` and sessionql's message.
fn user_error(sqlstate: &str, message: String) -> PgWireError {
    PgWireError::UserError(Box::new(ErrorInfo::new(
        "ERROR".to_string(),
        sqlstate.to_string(),
        message,
    )))
}

async fn answer(
    answered: Answered,
    statement: &Statement,
    context: &SessionContext,
) -> PgWireResult<Response> {
    let sql = statement.to_string();
    match answered {
        Answered::DeallocateAll => Ok(Response::Execution(Tag::new("DEALLOCATE ALL"))),
        Answered::EngineSetting => match run_statements(context, &sql).await {
            Ok(_) => Ok(Response::Execution(Tag::new("SET"))),
            // 22023: invalid_parameter_value.
            Err(error) => Err(user_error("22023", error.to_string())),
        },
        Answered::CreateEvents { if_not_exists } => {
            if !if_not_exists {
                context
                    .deregister_table("events")
                    .map_err(|error| user_error("XX000", error.to_string()))?;
            }
            run_statements(context, &sql)
                .await
                .map_err(|error| user_error("42601", error.to_string()))?;
            let table = context
                .table_provider("events")
                .await
                .map_err(|error| user_error("XX000", error.to_string()))?;
            // 42703: undefined_column (a required events column is missing).
            use_events_table(context, table)
                .await
                .map_err(|error| user_error("42703", error.to_string()))?;
            Ok(Response::Execution(Tag::new("CREATE TABLE")))
        }
    }
}

#[async_trait]
impl QueryHook for SessionqlStatements {
    async fn handle_simple_query(
        &self,
        statement: &Statement,
        session_context: &SessionContext,
        _client: &mut dyn HookClient,
    ) -> Option<PgWireResult<Response>> {
        let answered = classify(statement)?;
        Some(answer(answered, statement, session_context).await)
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
        let answered = classify(statement)?;
        Some(answer(answered, statement, session_context).await)
    }
}
