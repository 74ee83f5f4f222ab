//! swiftgate: an OpenStack Swift v1.0 auth gateway for Swift storage kept behind OAuth2
//! (HubiC), with a faithful HubiC emulator for tests and demos.
//!
//! The way a request travels: [`server`] accepts and terminates TLS, [`gateway`] routes,
//! [`front`] authenticates Swift clients, [`tokens`] hands out upstream credentials obtained by a
//! [`provider`] from grants kept in a [`store`]; [`register`] creates those grants. The
//! [`emulator`] stands in for HubiC and is never used by the gateway itself.

#![deny(missing_docs)]

pub mod body;
pub mod clock;
pub mod config;
pub mod demo;
pub mod emulator;
pub mod front;
pub mod gateway;
pub mod ops;
pub mod provider;
pub mod proxy;
pub mod register;
pub mod scratch;
pub mod secret;
pub mod server;
pub mod store;
pub mod target;
pub mod tokens;
