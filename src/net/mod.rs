//! net: placeholder, owned by its issue.
