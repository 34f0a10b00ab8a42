//! Consul services found by tag (filled in below).
