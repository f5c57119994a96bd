# The standard private and local address ranges, in systemd's `IPAddressAllow=`
# syntax: the default of services.moat.allowedAddresses, and what
# tests/systemd_units.rs gives the broker unit.
[
  "localhost"
  "link-local"
  "10.0.0.0/8"
  "172.16.0.0/12"
  "192.168.0.0/16"
  "fc00::/7"
]
