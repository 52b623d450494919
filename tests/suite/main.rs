//! The one integration-test binary: every test talks to real PostgreSQL on 127.0.0.1:5432, and
//! to real PgBouncer, promtool and throwaway clusters where it says so.

mod cli;
mod docs;
mod exactness;
mod faults;
mod hardening;
mod harness;
mod helpers;
mod rollout;
mod web;
