//! Hardening: faults injected into real processes, properties of the tally and the exposition,
//! TLS to PostgreSQL, and access control.
