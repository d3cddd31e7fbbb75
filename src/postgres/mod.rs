//! The PostgreSQL wire protocol door: psql, drivers and BI tools connect as
//! to PostgreSQL. The protocol (simple and extended query, prepared
//! statements with `$1` parameters), the `pg_catalog` tables tools list
//! tables with, Postgres type OIDs and SQLSTATE errors come from the
//! `datafusion-postgres` crate (with `pgwire` under it); this module gives
//! each connection its own sessionql session, and adds authentication and TLS.

pub mod auth;
pub mod statement_hooks;

use std::sync::Arc;

use datafusion::prelude::SessionContext;
use datafusion_postgres::datafusion_pg_catalog::setup_pg_catalog;
use datafusion_postgres::hooks::cursor::CursorStatementHook;
use datafusion_postgres::hooks::set_show::SetShowHook;
use datafusion_postgres::hooks::transactions::TransactionStatementHook;
use datafusion_postgres::pgwire::api::auth::DefaultServerParameterProvider;
use datafusion_postgres::pgwire::api::auth::StartupHandler;
use datafusion_postgres::pgwire::api::auth::cleartext::CleartextPasswordAuthStartupHandler;
use datafusion_postgres::pgwire::api::auth::sasl::SASLAuthStartupHandler;
use datafusion_postgres::pgwire::api::auth::sasl::scram::ScramAuth;
use datafusion_postgres::pgwire::api::cancel::DefaultCancelHandler;
use datafusion_postgres::pgwire::api::query::{ExtendedQueryHandler, SimpleQueryHandler};
use datafusion_postgres::pgwire::api::{ConnectionManager, PgWireServerHandlers};
use datafusion_postgres::pgwire::tokio::{TlsAcceptor, process_socket, tokio_rustls};
use datafusion_postgres::{DfSessionService, QueryHook, auth::AuthManager};

use crate::engine::isolated_session;
use crate::error::{Result, SessionqlError};
use crate::flight::TlsFiles;
use auth::{NoPassword, PasswordMethod, PgUsers, ScramUsers};
use statement_hooks::SessionqlStatements;

/// How the Postgres door is served.
#[derive(Debug, Clone, Default)]
pub struct PgServeOptions {
    /// Who may connect; empty means anyone (loopback by default).
    pub users: PgUsers,
    /// Cleartext or SCRAM-SHA-256, when users are configured.
    pub password_method: PasswordMethod,
    /// Serve over TLS (clients may still connect without, as PostgreSQL allows).
    pub tls: Option<TlsFiles>,
}

/// Everything a connection is served with: its own session, the startup
/// (authentication) handler of the configured kind, and the shared
/// connection manager that lets a client cancel its running query.
struct ConnectionHandlers<S> {
    session: Arc<DfSessionService>,
    startup: Arc<S>,
    cancel: Arc<DefaultCancelHandler>,
}

impl<S: StartupHandler + 'static> PgWireServerHandlers for ConnectionHandlers<S> {
    fn simple_query_handler(&self) -> Arc<impl SimpleQueryHandler> {
        Arc::clone(&self.session)
    }

    fn extended_query_handler(&self) -> Arc<impl ExtendedQueryHandler> {
        Arc::clone(&self.session)
    }

    fn startup_handler(&self) -> Arc<impl StartupHandler> {
        Arc::clone(&self.startup)
    }

    fn cancel_handler(&self) -> Arc<impl datafusion_postgres::pgwire::api::cancel::CancelHandler> {
        Arc::clone(&self.cancel)
    }
}

/// The statement hooks of each connection: sessionql's (`DEALLOCATE ALL`,
/// engine settings, the connection's own events) before datafusion-postgres's own (cursors, `SET`/`SHOW`
/// of client parameters, transactions).
fn query_hooks() -> Vec<Arc<dyn QueryHook>> {
    vec![
        Arc::new(SessionqlStatements),
        Arc::new(CursorStatementHook),
        Arc::new(SetShowHook),
        Arc::new(TransactionStatementHook),
    ]
}

/// Adds the `pg_catalog` schema (with `pg_class`, `pg_namespace`,
/// `pg_attribute`, `pg_type`, … and functions such as `version()` and
/// `current_schema()`) over `context`'s catalog.
pub fn add_pg_catalog(context: &SessionContext) -> Result<()> {
    let catalog = context
        .state()
        .config()
        .options()
        .catalog
        .default_catalog
        .clone();
    setup_pg_catalog(context, &catalog, Arc::new(AuthManager::new()))
        .map_err(|error| SessionqlError::Invalid(format!("pg_catalog: {error}")))
}

/// Serves the Postgres protocol on `listener` until the process ends. Each
/// connection starts from a copy of `base`'s session (settings, functions,
/// tables), so neither its `SET` nor the tables it creates change another's;
/// a failing connection is logged and the server keeps serving the others.
pub async fn serve_postgres(
    base: SessionContext,
    listener: tokio::net::TcpListener,
    options: PgServeOptions,
) -> Result<()> {
    let tls = options.tls.as_ref().map(tls_acceptor).transpose()?;
    let connections = Arc::new(ConnectionManager::new());
    let cancel = Arc::new(DefaultCancelHandler::new(Arc::clone(&connections)));
    let users = Arc::new(options.users);
    loop {
        let (socket, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::warn!(%error, "Postgres accept failed");
                continue;
            }
        };
        let base = base.clone();
        let tls = tls.clone();
        let cancel = Arc::clone(&cancel);
        let connections = Arc::clone(&connections);
        let users = Arc::clone(&users);
        let method = options.password_method;
        tokio::spawn(async move {
            let session = match connection_session(&base).await {
                Ok(session) => session,
                Err(error) => {
                    tracing::warn!(%peer, %error, "cannot start a Postgres session");
                    return;
                }
            };
            let result = if users.is_empty() {
                let startup = NoPassword::new(Arc::clone(&connections));
                serve_connection(socket, tls, session, startup, cancel).await
            } else if method == PasswordMethod::Cleartext {
                let startup = CleartextPasswordAuthStartupHandler::new(
                    users.as_ref().clone(),
                    DefaultServerParameterProvider::default(),
                )
                .with_connection_manager(connections);
                serve_connection(socket, tls, session, startup, cancel).await
            } else {
                let parameters = Arc::new(DefaultServerParameterProvider::default());
                let startup = SASLAuthStartupHandler::new(parameters)
                    .with_scram(ScramAuth::new(Arc::new(ScramUsers(users))))
                    .with_connection_manager(connections);
                serve_connection(socket, tls, session, startup, cancel).await
            };
            if let Err(error) = result {
                tracing::info!(%peer, %error, "Postgres connection ended with an error");
            }
        });
    }
}

/// A connection's own session: a copy of the server's catalog (so what it
/// creates stays its own) with `pg_catalog` over that copy.
async fn connection_session(base: &SessionContext) -> Result<Arc<DfSessionService>> {
    let context = isolated_session(base, &["pg_catalog"]).await?;
    add_pg_catalog(&context)?;
    Ok(Arc::new(DfSessionService::new_with_hooks(
        Arc::new(context),
        query_hooks(),
    )))
}

async fn serve_connection<S: StartupHandler + 'static>(
    socket: tokio::net::TcpStream,
    tls: Option<TlsAcceptor>,
    session: Arc<DfSessionService>,
    startup: S,
    cancel: Arc<DefaultCancelHandler>,
) -> std::io::Result<()> {
    let handlers = ConnectionHandlers {
        session,
        startup: Arc::new(startup),
        cancel,
    };
    process_socket(socket, tls, handlers).await
}

/// The TLS acceptor for the PEM certificate chain and key.
fn tls_acceptor(files: &TlsFiles) -> Result<TlsAcceptor> {
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let tls_error = |message: String| SessionqlError::Invalid(format!("TLS: {message}"));
    let certificates = CertificateDer::pem_file_iter(&files.certificate)
        .map_err(|error| tls_error(format!("{}: {error}", files.certificate.display())))?
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|error| tls_error(format!("{}: {error}", files.certificate.display())))?;
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .map_err(|error| tls_error(format!("{}: {error}", files.key.display())))?;
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let config = tokio_rustls::rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|error| tls_error(error.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certificates, key)
        .map_err(|error| tls_error(error.to_string()))?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}
