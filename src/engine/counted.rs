//! Lists with multiplicities, by key: how the driver's indexes ([`super::ports`],
//! [`super::derived`], the rows of clusters no slice serves) hold what the graphs were fed,
//! as multisets, the way a collection does.

use std::hash::Hash;

use foldhash::HashMap;

/// Adds `diff` copies of `item` to the list of `key` (removes them if negative), forgetting
/// an item that counts none and a key that has none left. A list is searched in full: each
/// holds a handful of items.
pub fn add<K: Hash + Eq + Clone, T: PartialEq>(lists: &mut HashMap<K, Vec<(T, isize)>>, key: K, item: T, diff: isize) {
    let list = lists.entry(key.clone()).or_default();
    match list.iter().position(|(t, _)| *t == item) {
        Some(i) => {
            list[i].1 += diff;
            if list[i].1 == 0 {
                list.swap_remove(i);
            }
        }
        None => list.push((item, diff)),
    }
    if list.is_empty() {
        lists.remove(&key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_item_counts_until_its_copies_are_removed_and_an_empty_key_is_forgotten() {
        let mut lists: HashMap<&str, Vec<(char, isize)>> = HashMap::default();
        add(&mut lists, "a", 'x', 1);
        add(&mut lists, "a", 'y', 2);
        add(&mut lists, "a", 'x', 1);
        assert_eq!(lists["a"], vec![('x', 2), ('y', 2)]);
        add(&mut lists, "a", 'x', -2);
        assert_eq!(lists["a"], vec![('y', 2)]);
        // (Retracted before it was added, as a multiset allows: it counts -1 until then.)
        add(&mut lists, "b", 'z', -1);
        assert_eq!(lists["b"], vec![('z', -1)]);
        add(&mut lists, "b", 'z', 1);
        add(&mut lists, "a", 'y', -2);
        assert!(lists.is_empty(), "{lists:?}");
    }
}
