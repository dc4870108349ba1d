//! Where bytes come from and are kept: the content-addressed cache and the
//! HTTP client for package repositories (system trust store, proxies,
//! `file://`, retries, conditional requests).

pub mod cache;
mod error;
pub mod growing;
pub mod http;

pub use cache::{remove_stale_temps, remove_stale_temps_beside, temp_prefix, Cache, CacheBucket};
pub use error::StoreError;
pub use growing::{Growing, GrowingReader};
pub use http::Http;
