//! Admission control at accept time: is the source in an allowed network, and are
//! the total and per-source-IP connection caps respected? A connection that fails is
//! closed before the TLS handshake. Slots are released when the guard drops.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;

use crate::policy::Networks;

/// The settings admission needs; swapped on reload.
pub struct AdmissionSettings {
    pub networks: Networks,
    pub max_connections: usize,
    pub max_connections_per_ip: usize,
}

/// Why a connection was refused at accept time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    NetworkNotAllowed,
    TooManyConnections,
    TooManyFromAddress,
}

#[derive(Default)]
struct Counts {
    total: usize,
    per_ip: HashMap<IpAddr, usize>,
}

pub struct Admission {
    settings: ArcSwap<AdmissionSettings>,
    counts: Mutex<Counts>,
}

/// Holds one connection slot; dropping it frees the slot.
pub struct Slot {
    admission: Arc<Admission>,
    ip: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut counts = self.admission.lock();
        counts.total = counts.total.saturating_sub(1);
        if let Some(n) = counts.per_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                counts.per_ip.remove(&self.ip);
            }
        }
    }
}

/// IPv4-mapped IPv6 addresses (from dual-stack sockets) are judged as IPv4.
pub fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

impl Admission {
    pub fn new(settings: AdmissionSettings) -> Arc<Admission> {
        Arc::new(Admission {
            settings: ArcSwap::from_pointee(settings),
            counts: Mutex::new(Counts::default()),
        })
    }

    pub fn update(&self, settings: AdmissionSettings) {
        self.settings.store(Arc::new(settings));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Counts> {
        self.counts.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Admits a connection from `ip`, or says why not.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Slot, Refusal> {
        let ip = canonical_ip(ip);
        let settings = self.settings.load();
        if !settings.networks.allows(ip) {
            return Err(Refusal::NetworkNotAllowed);
        }
        let mut counts = self.lock();
        if counts.total >= settings.max_connections {
            return Err(Refusal::TooManyConnections);
        }
        let from_ip = counts.per_ip.entry(ip).or_insert(0);
        if *from_ip >= settings.max_connections_per_ip {
            return Err(Refusal::TooManyFromAddress);
        }
        *from_ip += 1;
        counts.total += 1;
        Ok(Slot {
            admission: Arc::clone(self),
            ip,
        })
    }

    pub fn open_connections(&self) -> usize {
        self.lock().total
    }
}
