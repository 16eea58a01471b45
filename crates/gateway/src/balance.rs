//! How one of a service's instances is chosen, among those that take
//! traffic: least outstanding requests of two at random (the default),
//! round robin, or a hash of a header or cookie so that one key keeps
//! going to one instance.

use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicUsize, Ordering};

use http::{HeaderMap, HeaderName, header};

/// Points on the hash ring per instance: enough that keys spread evenly
/// and an instance leaving moves only its own share.
pub const RING_POINTS_PER_INSTANCE: usize = 64;

/// Where a hashed request's key comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashKey {
    Header(HeaderName),
    Cookie(String),
}

impl HashKey {
    /// `header:NAME` or `cookie:NAME`.
    pub fn parse(spec: &str) -> Result<Self, String> {
        match spec.split_once(':') {
            Some(("header", name)) => HeaderName::from_bytes(name.as_bytes())
                .map(Self::Header)
                .map_err(|_| format!("{name:?} is not a header name")),
            Some(("cookie", name)) if !name.is_empty() => Ok(Self::Cookie(name.into())),
            _ => Err(format!(
                "hash_key {spec:?}: expected header:NAME or cookie:NAME"
            )),
        }
    }

    /// The request's key, if it carries one.
    fn of<'a>(&self, headers: &'a HeaderMap) -> Option<&'a str> {
        match self {
            Self::Header(name) => headers.get(name)?.to_str().ok(),
            Self::Cookie(name) => headers
                .get_all(header::COOKIE)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(';'))
                .filter_map(|pair| pair.trim().split_once('='))
                .find(|(k, _)| k == name)
                .map(|(_, v)| v),
        }
    }
}

fn hash(value: &str) -> u64 {
    let mut hasher = std::hash::DefaultHasher::new();
    value.hash(&mut hasher);
    hasher.finish()
}

/// Points on a hash ring, each naming an instance by its index; sorted by
/// point. Empty unless the policy is [`Balance::Hash`].
pub type Ring = Vec<(u64, usize)>;

#[derive(Debug)]
pub enum Balance {
    LeastOutstanding,
    RoundRobin(AtomicUsize),
    Hash(HashKey),
}

impl Balance {
    /// From the service's settings: `least_outstanding`, `round_robin`, or
    /// `hash` with a `hash_key`.
    pub fn parse(name: &str, hash_key: Option<&str>) -> Result<Self, String> {
        match (name, hash_key) {
            ("least_outstanding", None) => Ok(Self::LeastOutstanding),
            ("round_robin", None) => Ok(Self::RoundRobin(AtomicUsize::new(0))),
            ("hash", Some(key)) => Ok(Self::Hash(HashKey::parse(key)?)),
            ("hash", None) => Err("balance = \"hash\" needs a hash_key".into()),
            (_, Some(_)) => Err("hash_key goes with balance = \"hash\"".into()),
            (other, None) => Err(format!(
                "balance {other:?}: expected least_outstanding, round_robin or hash"
            )),
        }
    }

    /// The ring of `instances` (their base URLs, in index order), built
    /// when they change: a point depends only on its instance's URL, so an
    /// instance coming or going moves only its own keys.
    pub fn ring<'a>(&self, instances: impl Iterator<Item = &'a str>) -> Ring {
        if !matches!(self, Self::Hash(_)) {
            return Ring::new();
        }
        let mut ring: Ring = instances
            .enumerate()
            .flat_map(|(i, base)| {
                (0..RING_POINTS_PER_INSTANCE).map(move |p| (hash(&format!("{base}#{p}")), i))
            })
            .collect();
        ring.sort_unstable();
        ring
    }

    /// The instance (an index) for a request, among `count` instances
    /// (whose ring is `ring`) of which `candidate` says which may take it;
    /// `None` leaves the choice to least outstanding.
    pub fn choose(
        &self,
        headers: &HeaderMap,
        ring: &[(u64, usize)],
        count: usize,
        candidate: impl Fn(usize) -> bool,
    ) -> Option<usize> {
        match self {
            Self::LeastOutstanding => None,
            Self::RoundRobin(next) => {
                let start = next.fetch_add(1, Ordering::Relaxed);
                (0..count)
                    .map(|i| (start + i) % count)
                    .find(|&i| candidate(i))
            }
            Self::Hash(key) => {
                let point = hash(key.of(headers)?);
                let start = ring.partition_point(|(p, _)| *p < point);
                (0..ring.len())
                    .map(|i| ring[(start + i) % ring.len()].1)
                    .find(|&i| candidate(i))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring(balance: &Balance, n: usize) -> Ring {
        let bases: Vec<String> = (0..n).map(|i| format!("http://10.0.0.{i}:80")).collect();
        balance.ring(bases.iter().map(String::as_str))
    }

    fn with_user(user: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert("x-user", user.parse().unwrap());
        headers.insert(
            header::COOKIE,
            format!("a=1; session={user}").parse().unwrap(),
        );
        headers
    }

    #[test]
    fn round_robin_takes_each_in_turn_skipping_those_out() {
        let balance = Balance::parse("round_robin", None).unwrap();
        let none = HeaderMap::new();
        let picks: Vec<_> = (0..6)
            .map(|_| balance.choose(&none, &[], 3, |_| true).unwrap())
            .collect();
        assert_eq!(picks, vec![0, 1, 2, 0, 1, 2]);
        let picks: Vec<_> = (0..4)
            .map(|_| balance.choose(&none, &[], 3, |i| i != 1).unwrap())
            .collect();
        assert!(!picks.contains(&1));
    }

    #[test]
    fn a_key_sticks_to_an_instance_and_a_leaving_one_moves_only_its_keys() {
        for key in ["header:x-user", "cookie:session"] {
            let balance = Balance::parse("hash", Some(key)).unwrap();
            let ring = ring(&balance, 4);
            let users: Vec<String> = (0..400).map(|u| format!("user-{u}")).collect();
            let before: Vec<usize> = users
                .iter()
                .map(|u| balance.choose(&with_user(u), &ring, 4, |_| true).unwrap())
                .collect();
            for (u, &i) in users.iter().zip(&before) {
                let again = balance.choose(&with_user(u), &ring, 4, |_| true);
                assert_eq!(again, Some(i), "{key}");
            }
            let per_instance: Vec<usize> = (0..4)
                .map(|i| before.iter().filter(|&&b| b == i).count())
                .collect();
            assert!(
                per_instance.iter().all(|&n| n > 50),
                "{key}: {per_instance:?}"
            );
            let after: Vec<usize> = users
                .iter()
                .map(|u| balance.choose(&with_user(u), &ring, 4, |i| i != 2).unwrap())
                .collect();
            for (b, a) in before.iter().zip(&after) {
                if *b != 2 {
                    assert_eq!(a, b, "{key}: only instance 2's keys move");
                }
            }
        }
        let balance = Balance::parse("hash", Some("header:x-user")).unwrap();
        assert_eq!(
            balance.choose(&HeaderMap::new(), &ring(&balance, 2), 2, |_| true),
            None,
            "no key: least outstanding"
        );
    }

    #[test]
    fn bad_settings_are_refused() {
        for (name, key) in [
            ("hash", None),
            ("round_robin", Some("header:x")),
            ("random", None),
            ("hash", Some("query:x")),
            ("hash", Some("header:bad name")),
        ] {
            assert!(Balance::parse(name, key).is_err(), "{name} {key:?}");
        }
    }
}
