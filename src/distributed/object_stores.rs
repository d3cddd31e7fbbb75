//! Where a cluster's nodes read events from: the local file system (a path
//! every node sees the same way, such as a shared mount) and S3-compatible
//! object stores, named by URL (`--events s3://bucket/events/`).
//!
//! S3 stores are made on first use of a bucket, from the standard AWS
//! environment variables of each process (`AWS_ACCESS_KEY_ID`,
//! `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`, `AWS_ENDPOINT` for an
//! S3-compatible server, `AWS_ALLOW_HTTP=true` for one without TLS), so the
//! client, the scheduler and every executor reach the same bucket without
//! credentials travelling in query plans.

use std::sync::Arc;

use datafusion::common::{DataFusionError, Result};
use datafusion::execution::object_store::{DefaultObjectStoreRegistry, ObjectStoreRegistry};
use object_store::ObjectStore;
use object_store::aws::AmazonS3Builder;
use url::Url;

/// DataFusion's registry (local files, and any store registered by hand)
/// that also opens `s3://` buckets on demand.
#[derive(Debug, Default)]
pub struct SessionqlObjectStores {
    registered: DefaultObjectStoreRegistry,
}

impl ObjectStoreRegistry for SessionqlObjectStores {
    fn register_store(
        &self,
        url: &Url,
        store: Arc<dyn ObjectStore>,
    ) -> Option<Arc<dyn ObjectStore>> {
        self.registered.register_store(url, store)
    }

    fn deregister_store(&self, url: &Url) -> Result<Arc<dyn ObjectStore>> {
        self.registered.deregister_store(url)
    }

    fn get_store(&self, url: &Url) -> Result<Arc<dyn ObjectStore>> {
        match self.registered.get_store(url) {
            Ok(store) => return Ok(store),
            // DataFusion's own error names the URL and the missing store.
            Err(error) if url.scheme() != "s3" => return Err(error),
            Err(_) => {}
        }
        let bucket = url.host_str().ok_or_else(|| {
            DataFusionError::Configuration(format!("{url}: an s3:// URL needs a bucket name"))
        })?;
        let store: Arc<dyn ObjectStore> = Arc::new(
            AmazonS3Builder::from_env()
                .with_bucket_name(bucket)
                .build()
                .map_err(|error| {
                    DataFusionError::Configuration(format!(
                        "cannot open bucket '{bucket}' (from the AWS_* environment): {error}"
                    ))
                })?,
        );
        self.registered.register_store(url, Arc::clone(&store));
        Ok(store)
    }
}
