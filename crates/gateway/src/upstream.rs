//! Upstream services and their instances; which instance takes a request.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::retry::RetryBudget;

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
    pub fn instance(&self) -> &Arc<Instance> {
        &self.0
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.outstanding.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A service's instances and the retries it may spend.
#[derive(Debug)]
pub struct Service {
    pub name: String,
    pub instances: Vec<Arc<Instance>>,
    pub budget: RetryBudget,
}

impl Service {
    pub fn new(name: &str, instances: Vec<Arc<Instance>>) -> Self {
        Self {
            name: name.into(),
            instances,
            budget: RetryBudget::default(),
        }
    }

    /// Power of two choices on least outstanding requests: two instances at
    /// random, the less busy one wins. None when there is no instance.
    pub fn pick(&self) -> Option<InFlight> {
        self.pick_except(&[])
    }

    /// As [`Service::pick`], among the instances not in `tried` (a retry
    /// goes elsewhere). None when none is left.
    pub fn pick_except(&self, tried: &[Arc<Instance>]) -> Option<InFlight> {
        let left: Vec<&Arc<Instance>> = self
            .instances
            .iter()
            .filter(|i| !tried.iter().any(|t| Arc::ptr_eq(t, i)))
            .collect();
        let chosen = match left.len() {
            0 => return None,
            1 => left[0],
            n => {
                let a = fastrand::usize(..n);
                let b = (a + 1 + fastrand::usize(..n - 1)) % n;
                let (a, b) = (left[a], left[b]);
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
        let service = Service::new(
            "s",
            vec![
                Arc::new(Instance::new("http://a/")),
                Arc::new(Instance::new("http://b")),
            ],
        );
        assert_eq!(service.instances[0].base, "http://a");
        let busy = service.pick().unwrap();
        // With two instances both are always compared: the idle one wins.
        for _ in 0..20 {
            let next = service.pick().unwrap();
            assert!(!Arc::ptr_eq(next.instance(), busy.instance()));
        }
        drop(busy);
        assert!(service.instances.iter().all(|i| i.outstanding() == 0));
    }

    #[test]
    fn a_retry_goes_to_an_instance_not_yet_tried() {
        let service = Service::new(
            "s",
            vec![
                Arc::new(Instance::new("http://a")),
                Arc::new(Instance::new("http://b")),
            ],
        );
        let first = service.pick().unwrap();
        let other = service.pick_except(&[first.instance().clone()]).unwrap();
        assert!(!Arc::ptr_eq(other.instance(), first.instance()));
        let both = [first.instance().clone(), other.instance().clone()];
        assert!(service.pick_except(&both).is_none());
        assert!(Service::new("e", vec![]).pick().is_none());
    }
}
