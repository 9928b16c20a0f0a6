//! Hermetic end-to-end tests: the real mirror on loopback against in-process
//! fake upstream registries (with fault knobs). One test binary, to keep
//! link time down.

#![allow(unreachable_pub, missing_docs)]
mod support;

mod access;
mod bundle;
mod cache;
mod cluster;
mod coalesce;
mod crash;
mod disk;
mod errors;
mod faults;
mod hosted;
mod hostile;
mod load;
mod offline;
mod ops;
mod pull;
mod reload;
mod routing;
mod s3;
mod spec_errors;
mod status;
mod tags;
mod tls;
mod warm;
