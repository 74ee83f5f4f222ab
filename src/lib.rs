//! swiftgate: an OpenStack Swift v1.0 auth gateway in front of Swift stores behind Keystone v3,
//! Swift v1, a fixed token or HubiC's OAuth2, with a faithful emulator for tests and demos.
//!
//! The way a request travels: [`server`] accepts and terminates TLS, [`gateway`] routes,
//! [`front`] authenticates Swift clients, [`tokens`] hands out upstream credentials obtained by a
//! [`provider`] from grants kept in a [`store`]; [`register`] creates those grants. The
//! `emulator` stands in for HubiC (and Keystone and Swift v1 auth) and is never used by the
//! gateway itself: it is the `emulator` feature, on by default, with `demo`.

#![deny(missing_docs)]

pub mod body;
pub mod clock;
pub mod config;
#[cfg(feature = "emulator")]
pub mod demo;
#[cfg(feature = "emulator")]
pub mod emulator;
pub mod front;
pub mod gateway;
pub mod logging;
pub mod metrics;
pub mod ops;
pub mod provider;
pub mod proxy;
pub mod register;
#[cfg(feature = "emulator")]
pub mod scratch;
pub mod secret;
pub mod server;
pub mod store;
pub mod target;
pub mod tokens;
