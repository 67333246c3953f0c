//! Checks the module map in `lib.rs`: every `crate::<module>` path in a
//! module's files (tests aside) names a module in a lower layer, or one of its
//! own layer that the map lists after its `→`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Layer of each module, and the same-layer modules it may use, read from
/// the `//! N. ...` lines of `lib.rs`.
fn map(lib: &str) -> (BTreeMap<String, usize>, BTreeMap<String, BTreeSet<String>>) {
    let mut layer = BTreeMap::new();
    let mut allowed: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut current: Option<usize> = None;
    let mut text = String::new();
    let mut entries: Vec<(usize, String)> = Vec::new();
    for line in lib.lines() {
        let Some(doc) = line.strip_prefix("//!") else {
            break;
        };
        let doc = doc.trim();
        let starts = doc
            .split_once(". ")
            .and_then(|(n, rest)| n.parse::<usize>().ok().map(|n| (n, rest)));
        match starts {
            Some((n, rest)) => {
                if let Some(c) = current {
                    entries.push((c, std::mem::take(&mut text)));
                }
                current = Some(n);
                text = rest.to_string();
            }
            None if current.is_some() && !doc.is_empty() && !doc.starts_with('#') => {
                text.push(' ');
                text.push_str(doc);
            }
            None => {
                if let Some(c) = current.take() {
                    entries.push((c, std::mem::take(&mut text)));
                }
            }
        }
    }
    if let Some(c) = current {
        entries.push((c, text));
    }
    for (n, text) in entries {
        // "[`a`], [`b`] → [`c`]: ..." : a and b are in layer n; a module
        // followed by "→" may use the ones named after the arrow.
        let head = text.split(':').next().unwrap_or("");
        for part in head.split(", ") {
            let names: Vec<String> = part
                .split("[`")
                .skip(1)
                .filter_map(|s| s.split('`').next())
                .map(str::to_string)
                .collect();
            let Some(first) = names.first() else { continue };
            layer.entry(first.clone()).or_insert(n);
            if part.contains('→') {
                let (_, after) = part.split_once('→').unwrap();
                for used in after
                    .split("[`")
                    .skip(1)
                    .filter_map(|s| s.split('`').next())
                {
                    allowed
                        .entry(first.clone())
                        .or_default()
                        .insert(used.to_string());
                }
            }
        }
    }
    (layer, allowed)
}

fn sources(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            sources(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

#[test]
fn every_module_imports_only_from_the_layers_below_it() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let (layer, allowed) = map(&std::fs::read_to_string(root.join("lib.rs")).unwrap());
    assert!(layer.len() >= 15, "the map names every module: {layer:?}");
    let mut files = Vec::new();
    sources(&root, &mut files);
    let mut wrong = Vec::new();
    for f in files {
        let rel = f.strip_prefix(&root).unwrap().to_string_lossy().to_string();
        let top = rel
            .split('/')
            .next()
            .unwrap()
            .trim_end_matches(".rs")
            .to_string();
        if matches!(top.as_str(), "lib" | "main" | "layering_test" | "cmd") {
            continue;
        }
        let is_test = rel.contains("test") || rel.contains("/tests/");
        if is_test {
            continue;
        }
        let own = *layer
            .get(&top)
            .unwrap_or_else(|| panic!("module `{top}` is missing from the map in lib.rs"));
        let text = std::fs::read_to_string(&f).unwrap();
        let text = text.split("#[cfg(test)]\nmod tests {").next().unwrap();
        for line in text.lines() {
            let code = line.split("//").next().unwrap();
            for (i, _) in code.match_indices("crate::") {
                let rest = &code[i + "crate::".len()..];
                let mut used: Vec<&str> = Vec::new();
                if let Some(group) = rest.strip_prefix('{') {
                    let group = group.split('}').next().unwrap_or("");
                    used.extend(
                        group
                            .split(',')
                            .map(|s| s.trim().split("::").next().unwrap_or("")),
                    );
                } else {
                    used.push(
                        rest.split(|c: char| !c.is_alphanumeric() && c != '_')
                            .next()
                            .unwrap(),
                    );
                }
                for u in used {
                    if u.is_empty() || u == top {
                        continue;
                    }
                    let Some(&theirs) = layer.get(u) else {
                        continue;
                    };
                    let ok = theirs < own || allowed.get(&top).is_some_and(|a| a.contains(u));
                    if !ok {
                        wrong.push(format!(
                            "{rel}: `{top}` (layer {own}) uses `{u}` (layer {theirs})"
                        ));
                    }
                }
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "imports against the module map:\n{}",
        wrong.join("\n")
    );
}
