//! store: placeholder, owned by its issue.
