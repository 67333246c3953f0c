//! Replication rules (pure): which destinations a version goes to, with the
//! semantics of S3 replication rules.
//!
//! - A rule matches a key when its prefix is a prefix of the key AND every one of
//!   its tags is on the object with the same value.
//! - Several rules may name one destination: the matching rule with the highest
//!   priority decides for that destination (priorities are unique per
//!   destination, so the choice is never ambiguous).
//! - Delete markers go only where the deciding rule says `delete_markers`; as in
//!   S3, a rule with a tag filter never replicates delete markers (a marker has
//!   no tags).
//! - Replicas (objects carrying `regionfs-source-version`) are never replicated
//!   again: two one-way rule sets make two-way replication without loops.

use std::collections::BTreeMap;

use crate::config::{Config, RuleConfig};
use crate::store::SOURCE_VERSION_META;

/// What is being replicated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// A new object version (upload, copy, metadata change).
    Version,
    /// A delete marker.
    DeleteMarker,
}

/// Where one version goes, and by which rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub destination: String,
    pub rule_id: String,
    pub storage_class: Option<String>,
}

#[derive(Debug, Clone, Default)]
pub struct Rules {
    rules: Vec<RuleConfig>,
}

impl Rules {
    pub fn from_config(c: &Config) -> Rules {
        Rules {
            rules: c.rules.clone(),
        }
    }

    pub fn new(rules: Vec<RuleConfig>) -> Rules {
        Rules { rules }
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The destinations a change of `key` goes to. `metadata` is the object's
    /// user metadata (a replica's marks it as one), `tags` its tags.
    pub fn targets(
        &self,
        key: &str,
        tags: &BTreeMap<String, String>,
        metadata: &BTreeMap<String, String>,
        change: Change,
    ) -> Vec<Target> {
        if metadata.contains_key(SOURCE_VERSION_META) {
            return Vec::new();
        }
        let mut best: BTreeMap<&str, &RuleConfig> = BTreeMap::new();
        for r in &self.rules {
            let matches = key.starts_with(&r.prefix)
                && r.tags.iter().all(|(k, v)| tags.get(k) == Some(v))
                && (change == Change::Version || r.tags.is_empty());
            if !matches {
                continue;
            }
            match best.get(r.destination.as_str()) {
                Some(b) if b.priority >= r.priority => {}
                _ => {
                    best.insert(&r.destination, r);
                }
            }
        }
        best.into_values()
            .filter(|r| change == Change::Version || r.delete_markers)
            .map(|r| Target {
                destination: r.destination.clone(),
                rule_id: r.id.clone(),
                storage_class: r.storage_class.clone(),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(
        id: &str,
        prio: i64,
        prefix: &str,
        tags: &[(&str, &str)],
        dest: &str,
        dm: bool,
    ) -> RuleConfig {
        RuleConfig {
            id: id.into(),
            priority: prio,
            prefix: prefix.into(),
            tags: tags
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            destination: dest.into(),
            delete_markers: dm,
            storage_class: None,
            owner_override: None,
        }
    }

    fn tags(t: &[(&str, &str)]) -> BTreeMap<String, String> {
        t.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn dests(r: &Rules, key: &str, t: &[(&str, &str)], c: Change) -> Vec<(String, String)> {
        r.targets(key, &tags(t), &BTreeMap::new(), c)
            .into_iter()
            .map(|t| (t.destination, t.rule_id))
            .collect()
    }

    #[test]
    fn prefix_and_tags_must_both_match() {
        let r = Rules::new(vec![rule(
            "logs",
            0,
            "logs/",
            &[("class", "critical")],
            "eu",
            false,
        )]);
        assert_eq!(
            dests(&r, "logs/a", &[("class", "critical")], Change::Version).len(),
            1
        );
        assert!(dests(&r, "logs/a", &[("class", "other")], Change::Version).is_empty());
        assert!(dests(&r, "data/a", &[("class", "critical")], Change::Version).is_empty());
        assert!(dests(&r, "logs/a", &[], Change::Version).is_empty());
    }

    #[test]
    fn the_highest_priority_rule_decides_per_destination() {
        let r = Rules::new(vec![
            rule("all", 0, "", &[], "eu", true),
            rule("tmp", 5, "tmp/", &[], "eu", false),
            rule("ap", 0, "", &[], "ap", false),
        ]);
        assert_eq!(
            dests(&r, "tmp/x", &[], Change::Version),
            vec![("ap".into(), "ap".into()), ("eu".into(), "tmp".into())]
        );
        // The deciding rule for eu says no delete markers; ap's says no too.
        assert!(dests(&r, "tmp/x", &[], Change::DeleteMarker).is_empty());
        assert_eq!(
            dests(&r, "other", &[], Change::DeleteMarker),
            vec![("eu".into(), "all".into())]
        );
    }

    #[test]
    fn tag_filtered_rules_never_replicate_delete_markers() {
        let r = Rules::new(vec![rule("t", 0, "", &[("k", "v")], "eu", true)]);
        assert!(dests(&r, "a", &[("k", "v")], Change::DeleteMarker).is_empty());
    }

    #[test]
    fn replicas_are_never_replicated_again() {
        let r = Rules::new(vec![rule("all", 0, "", &[], "eu", true)]);
        let mut md = BTreeMap::new();
        md.insert(SOURCE_VERSION_META.to_string(), "v1".to_string());
        assert!(r
            .targets("a", &BTreeMap::new(), &md, Change::Version)
            .is_empty());
    }

    proptest::proptest! {
        /// Each destination gets at most one target, from a rule that matches,
        /// and no matching rule for it has a higher priority.
        #[test]
        fn every_target_comes_from_the_best_matching_rule(
            specs in proptest::collection::vec((0i64..4, 0usize..3, 0usize..2, proptest::bool::ANY, proptest::bool::ANY), 1..8),
            key_pick in 0usize..4,
            tagged in proptest::bool::ANY,
            marker in proptest::bool::ANY,
        ) {
            let prefixes = ["", "a/", "a/b/"];
            let dest_names = ["eu", "ap"];
            let mut seen = std::collections::HashSet::new();
            // Keep priorities unique per destination, as config validation does.
            let rules: Vec<RuleConfig> = specs
                .iter()
                .enumerate()
                .filter(|(_, (p, _, d, _, _))| seen.insert((*d, *p)))
                .map(|(i, (p, pre, d, t, dm))| rule(&format!("r{i}"), *p, prefixes[*pre], if *t { &[("k", "v")] } else { &[] }, dest_names[*d], *dm))
                .collect();
            let r = Rules::new(rules.clone());
            let key = ["a/b/c", "a/x", "z", "a/b/"][key_pick];
            let t = if tagged { tags(&[("k", "v")]) } else { BTreeMap::new() };
            let change = if marker { Change::DeleteMarker } else { Change::Version };
            let out = r.targets(key, &t, &BTreeMap::new(), change);
            let mut dests_seen = std::collections::HashSet::new();
            for target in &out {
                proptest::prop_assert!(dests_seen.insert(target.destination.clone()));
                let chosen = rules.iter().find(|x| x.id == target.rule_id).unwrap();
                proptest::prop_assert!(key.starts_with(&chosen.prefix));
                for other in rules.iter().filter(|x| x.destination == target.destination && key.starts_with(&x.prefix)
                    && x.tags.iter().all(|(k, v)| t.get(k) == Some(v))
                    && (change == Change::Version || x.tags.is_empty())) {
                    proptest::prop_assert!(other.priority <= chosen.priority);
                }
            }
        }
    }
}
