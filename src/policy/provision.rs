//! What the state directory must contain for a policy (the PKI plan), completed with
//! what this machine knows about itself (its `.local` name and LAN addresses).

use std::path::Path;

use super::Policy;

/// What the state directory must contain for `policy`: the server certificate's
/// names and addresses (plus this machine's `.local` name and its current LAN
/// addresses), the RSA server key if a role needs one, and one client bundle per
/// `certificate: true` device. `serve` (at start and on reload) and `firstboot` both
/// provision from this, so a certificate follows the address people type even when
/// DHCP gave the appliance one nobody wrote into the manifest (re-issued with the
/// same key, so a pinned fingerprint stays valid).
pub fn provision_plan(policy: &Policy) -> crate::pki::ProvisionPlan {
    let machine = crate::machine::Machine::detect(Path::new("/proc"));
    let mut addresses = policy.addresses.clone();
    for address in machine.addresses {
        if !addresses.contains(&address) {
            addresses.push(address);
        }
    }
    crate::pki::ProvisionPlan {
        hostnames: policy.hostnames.clone(),
        machine_name: machine.name,
        addresses,
        rsa_server_key: policy.needs_rsa_server_key(),
        certificate_devices: policy
            .certificate_devices()
            .into_iter()
            .map(str::to_owned)
            .collect(),
    }
}
