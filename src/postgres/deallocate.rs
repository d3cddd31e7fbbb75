//! `DEALLOCATE ALL`, which drivers send to forget their prepared statements
//! (psycopg does on every rollback once it has prepared one). The protocol
//! crate reads it as deallocating a statement named `all` and fails; here it
//! succeeds, as in PostgreSQL. Statements prepared again later replace the
//! stored ones of the same name.

use async_trait::async_trait;
use datafusion::common::ParamValues;
use datafusion::logical_expr::LogicalPlan;
use datafusion::prelude::SessionContext;
use datafusion::sql::sqlparser::ast::Statement;
use datafusion_postgres::QueryHook;
use datafusion_postgres::hooks::HookClient;
use datafusion_postgres::pgwire::api::ClientInfo;
use datafusion_postgres::pgwire::api::results::{Response, Tag};
use datafusion_postgres::pgwire::error::PgWireResult;

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
