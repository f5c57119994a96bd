//! policy: placeholder, owned by its issue.
