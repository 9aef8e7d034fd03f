//! A set of names (tables, event types) as subscriptions and scopes hold them.

/// A set of table or type names, sorted, without repeats. A subscription's
/// sets are looked up for every event on every connection: a hash each time
/// (SipHash at first, then foldhash) was 4% of the server's CPU in a 10k-client
/// fan-out, where a subscription names one or a few tables and a binary search
/// is one or two comparisons of short strings.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
#[serde(transparent)]
pub struct Names(Vec<String>);

impl Names {
    pub fn contains(&self, name: &str) -> bool {
        self.0.binary_search_by(|n| n.as_str().cmp(name)).is_ok()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn iter(&self) -> std::slice::Iter<'_, String> {
        self.0.iter()
    }

    pub fn retain(&mut self, keep: impl FnMut(&String) -> bool) {
        self.0.retain(keep);
    }

    /// Replaces `from` with `to`, if `from` is one of the names. True when it was.
    pub fn rename(&mut self, from: &str, to: &str) -> bool {
        if !self.contains(from) {
            return false;
        }
        self.retain(|name| name != from);
        self.extend([to.to_string()]);
        true
    }
}

impl FromIterator<String> for Names {
    fn from_iter<I: IntoIterator<Item = String>>(names: I) -> Names {
        let mut names: Vec<String> = names.into_iter().collect();
        names.sort_unstable();
        names.dedup();
        Names(names)
    }
}

impl Extend<String> for Names {
    fn extend<I: IntoIterator<Item = String>>(&mut self, more: I) {
        self.0.extend(more);
        self.0.sort_unstable();
        self.0.dedup();
    }
}

impl IntoIterator for Names {
    type Item = String;
    type IntoIter = std::vec::IntoIter<String>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

impl<'a> IntoIterator for &'a Names {
    type Item = &'a String;
    type IntoIter = std::slice::Iter<'a, String>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

impl<'de> serde::Deserialize<'de> for Names {
    fn deserialize<D: serde::Deserializer<'de>>(from: D) -> Result<Names, D::Error> {
        Vec::<String>::deserialize(from).map(Names::from_iter)
    }
}

#[cfg(test)]
mod tests {
    use super::Names;

    #[test]
    fn names_are_a_set_whatever_order_they_come_in() {
        let mut names: Names = ["tracker", "study", "tracker", "comment"]
            .map(String::from)
            .into_iter()
            .collect();
        assert_eq!(names.len(), 3);
        assert!(names.contains("study") && names.contains("tracker") && names.contains("comment"));
        assert!(!names.contains("release") && !names.contains("") && !names.contains("studyx"));

        names.extend(["release", "study"].map(String::from));
        assert_eq!(
            names.iter().map(String::as_str).collect::<Vec<_>>(),
            ["comment", "release", "study", "tracker"]
        );

        let parsed: Names = serde_json::from_str(r#"["b","a","b"]"#).unwrap();
        assert_eq!(parsed, ["a", "b"].map(String::from).into_iter().collect());
        assert_eq!(serde_json::to_string(&parsed).unwrap(), r#"["a","b"]"#);

        names.retain(|n| n != "study");
        assert!(!names.contains("study") && names.contains("tracker"));
    }
}
