//! broker: placeholder, owned by its issue.
