//! Upstream services and their instances; which instance takes a request.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// One instance of a service: where it listens and how many requests it
/// has in flight from this gateway.
#[derive(Debug)]
pub struct Instance {
    /// `scheme://host:port`, no path.
    pub base: String,
    outstanding: AtomicUsize,
}

impl Instance {
    pub fn new(base: &str) -> Self {
        Self {
            base: base.trim_end_matches('/').to_owned(),
            outstanding: AtomicUsize::new(0),
        }
    }

    pub fn outstanding(&self) -> usize {
        self.outstanding.load(Ordering::Relaxed)
    }
}

/// A request in flight on an instance; dropping it ends it.
pub struct InFlight(Arc<Instance>);

impl InFlight {
    pub fn instance(&self) -> &Instance {
        &self.0
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.outstanding.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A service's instances.
#[derive(Debug)]
pub struct Service {
    pub name: String,
    pub instances: Vec<Arc<Instance>>,
}

impl Service {
    /// Power of two choices on least outstanding requests: two instances at
    /// random, the less busy one wins. None when there is no instance.
    pub fn pick(&self) -> Option<InFlight> {
        let chosen = match self.instances.len() {
            0 => return None,
            1 => &self.instances[0],
            n => {
                let a = fastrand::usize(..n);
                let b = (a + 1 + fastrand::usize(..n - 1)) % n;
                let (a, b) = (&self.instances[a], &self.instances[b]);
                if b.outstanding() < a.outstanding() {
                    b
                } else {
                    a
                }
            }
        };
        chosen.outstanding.fetch_add(1, Ordering::Relaxed);
        Some(InFlight(chosen.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_less_busy_of_two_wins_and_release_counts_down() {
        let service = Service {
            name: "s".into(),
            instances: vec![
                Arc::new(Instance::new("http://a/")),
                Arc::new(Instance::new("http://b")),
            ],
        };
        assert_eq!(service.instances[0].base, "http://a");
        let busy = service.pick().unwrap();
        let busy_base = busy.instance().base.clone();
        // With two instances both are always compared: the idle one wins.
        for _ in 0..20 {
            let next = service.pick().unwrap();
            assert_ne!(next.instance().base, busy_base);
        }
        drop(busy);
        assert!(service.instances.iter().all(|i| i.outstanding() == 0));
        assert!(
            Service {
                name: "e".into(),
                instances: vec![]
            }
            .pick()
            .is_none()
        );
    }
}
