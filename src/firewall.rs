//! firewall: placeholder, owned by its issue.
