//! End-to-end tests: each starts the real `hearth` binary on a random loopback port with
//! a fresh project dir and talks to it over HTTP.

mod auth;
mod backups;
mod bad_input;
mod documents;
mod embedded;
mod export;
mod functions;
mod oauth;
mod public;
mod realtime;
mod rules;
mod sdk;
mod security;
mod server;
mod support;
