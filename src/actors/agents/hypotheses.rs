//! Candidate value drivers for an industry the shipped catalogue does not
//! cover, derived from the drivers of the tenant's existing models in
//! similar industries.
//!
//! Industry names are compared by [`similarity`]; peers that score below
//! [`MIN_SIMILARITY`] are not used. Drivers are matched across peers by their
//! trimmed, lowercased name and summarised by medians, so one outlying model
//! does not set the figures. Everything is kept in ordered maps so that the
//! answer does not depend on hash order.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet};

/// Peers whose industry is less similar than this are not used.
pub const MIN_SIMILARITY: f64 = 0.3;

/// One token set contained in the other scores at least this much.
const SUBSET_FLOOR: f64 = 0.6;

/// Weight of the character-trigram score against the token score.
const TRIGRAM_WEIGHT: f64 = 0.8;

/// Words that say nothing about an industry.
const STOP_WORDS: &[&str] = &[
    "a", "an", "and", "&", "for", "in", "of", "on", "or", "the", "to",
];

/// One existing model of the tenant, as the derivation needs it.
#[derive(Debug, Clone, Copy)]
pub struct Peer<'a> {
    pub model_id: &'a str,
    pub industry: &'a str,
    pub drivers: &'a [PeerDriver],
}

/// One driver of a peer model.
#[derive(Debug, Clone, PartialEq)]
pub struct PeerDriver {
    pub name: String,
    /// `revenue`, `cost`, `productivity` or `risk`.
    pub category: String,
    pub unit_value: f64,
    /// Mean monthly quantity.
    pub mean_quantity: f64,
    pub ramp_months: u32,
}

/// A candidate driver derived from peer models.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Derived {
    /// The most common spelling among the peers (ties: lexicographically smallest).
    pub name: String,
    /// The most common category among the peers (ties: lexicographically smallest).
    pub category: String,
    /// Median over the peers that have it.
    pub unit_value: f64,
    /// Median over the peers that have it.
    pub mean_quantity: f64,
    /// Median over the peers that have it, rounded.
    pub ramp_months: u32,
    /// `unit_value * mean_quantity * 12`.
    pub expected_annual_value: f64,
    /// How many peer models have it.
    pub models: usize,
    /// The peer industries it came from (lowercased, trimmed), sorted, deduped.
    pub from_industries: Vec<String>,
    /// Best similarity of an industry it came from, 0 to 1.
    pub similarity: f64,
    /// Why it is proposed, e.g. "seen in 3 of your models in `retail banking`,
    /// `banking` (similarity 0.67)".
    pub rationale: String,
}

/// Lowercases, splits on non-alphanumerics, drops stop words and stems
/// lightly (a trailing "s" on words longer than 3, then an "ing" ending on
/// words longer than 5). Keeps the order of the words.
fn normalise(name: &str) -> Vec<String> {
    name.to_lowercase()
        .split(|c: char| !c.is_alphanumeric())
        .filter(|word| !word.is_empty() && !STOP_WORDS.contains(word))
        .map(|word| {
            let mut word = word.to_string();
            if word.chars().count() > 3 && word.ends_with('s') {
                word.pop();
            }
            if word.chars().count() > 5 && word.ends_with("ing") {
                word.truncate(word.len() - "ing".len());
            }
            word
        })
        .collect()
}

fn jaccard<T: Ord>(a: &BTreeSet<T>, b: &BTreeSet<T>) -> f64 {
    let union = a.union(b).count();
    if union == 0 {
        return 0.0;
    }
    a.intersection(b).count() as f64 / union as f64
}

/// Character trigrams of a string; a string shorter than three characters is
/// its own single "trigram".
fn trigrams(text: &str) -> BTreeSet<String> {
    let chars: Vec<char> = text.chars().collect();
    if chars.is_empty() {
        return BTreeSet::new();
    }
    if chars.len() < 3 {
        return BTreeSet::from([text.to_string()]);
    }
    chars.windows(3).map(|w| w.iter().collect()).collect()
}

/// How alike two industry names are, 0 to 1.
///
/// Both names are normalised (lowercase, split on non-alphanumerics, stop
/// words dropped, light stemming). Equal token sets score 1; otherwise the
/// score is the Jaccard index of the token sets, raised to 0.6 when one set
/// contains the other, or 0.8 times the Jaccard index of the character
/// trigrams of the joined names, whichever is higher. Names with no words
/// score 0.
pub fn similarity(a: &str, b: &str) -> f64 {
    let words_a = normalise(a);
    let words_b = normalise(b);
    let set_a: BTreeSet<&str> = words_a.iter().map(String::as_str).collect();
    let set_b: BTreeSet<&str> = words_b.iter().map(String::as_str).collect();
    if set_a.is_empty() || set_b.is_empty() {
        return 0.0;
    }
    if set_a == set_b {
        return 1.0;
    }
    let mut token = jaccard(&set_a, &set_b);
    if set_a.is_subset(&set_b) || set_b.is_subset(&set_a) {
        token = token.max(SUBSET_FLOOR);
    }
    let trigram = jaccard(&trigrams(&words_a.join(" ")), &trigrams(&words_b.join(" ")));
    token.max(TRIGRAM_WEIGHT * trigram).clamp(0.0, 1.0)
}

/// Median of finite values; `None` when there are none.
fn median(values: &mut [f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    Some(if values.len() % 2 == 1 {
        values[mid]
    } else {
        (values[mid - 1] + values[mid]) / 2.0
    })
}

/// The most frequent key, ties broken by the smallest key.
fn most_common(counts: &BTreeMap<String, usize>) -> String {
    counts
        .iter()
        // `max_by` keeps the last of equal elements; iterating in reverse
        // makes that the smallest key.
        .rev()
        .max_by_key(|(_, count)| **count)
        .map(|(key, _)| key.clone())
        .unwrap_or_default()
}

/// What the peers say about one driver, while collecting.
#[derive(Default)]
struct Tally<'a> {
    spellings: BTreeMap<String, usize>,
    categories: BTreeMap<String, usize>,
    unit_values: Vec<f64>,
    quantities: Vec<f64>,
    ramps: Vec<f64>,
    models: BTreeSet<&'a str>,
    /// Industry (lowercased, trimmed) to its similarity.
    industries: BTreeMap<String, f64>,
}

fn key(name: &str) -> String {
    name.trim().to_lowercase()
}

fn usable(driver: &PeerDriver) -> bool {
    let ok = |x: f64| x.is_finite() && x >= 0.0;
    ok(driver.unit_value) && ok(driver.mean_quantity) && !key(&driver.name).is_empty()
}

fn rationale(models: usize, industries: &BTreeMap<String, f64>, best: f64) -> String {
    // Most similar industry first, then by name.
    let mut listed: Vec<(&String, f64)> = industries.iter().map(|(i, s)| (i, *s)).collect();
    listed.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(b.0)));
    let names: Vec<String> = listed.iter().map(|(i, _)| format!("`{i}`")).collect();
    format!(
        "seen in {models} of your models in {} (similarity {best:.2})",
        names.join(", ")
    )
}

/// Candidate drivers for `industry`, best first, at most `limit`, leaving out
/// names in `exclude` (the model's own drivers, case-insensitive).
///
/// Only peers whose industry has a [`similarity`] of at least
/// [`MIN_SIMILARITY`] are used; drivers with a non-finite or negative unit
/// value or quantity are skipped, and a model that lists a driver twice
/// counts once (its first usable entry). The order is by the best similarity
/// of a source industry, then the number of models, then the expected annual
/// value (all descending), then the name (case-insensitive). Empty when no peer is similar
/// enough.
pub fn derive(industry: &str, peers: &[Peer], exclude: &[&str], limit: usize) -> Vec<Derived> {
    let excluded: BTreeSet<String> = exclude.iter().map(|name| key(name)).collect();
    let mut tallies: BTreeMap<String, Tally> = BTreeMap::new();
    for peer in peers {
        let score = similarity(industry, peer.industry);
        if score < MIN_SIMILARITY {
            continue;
        }
        for driver in peer.drivers.iter().filter(|d| usable(d)) {
            let name_key = key(&driver.name);
            if excluded.contains(&name_key) {
                continue;
            }
            let tally = tallies.entry(name_key).or_default();
            if !tally.models.insert(peer.model_id) {
                continue;
            }
            *tally
                .spellings
                .entry(driver.name.trim().to_string())
                .or_default() += 1;
            *tally
                .categories
                .entry(driver.category.trim().to_lowercase())
                .or_default() += 1;
            tally.unit_values.push(driver.unit_value);
            tally.quantities.push(driver.mean_quantity);
            tally.ramps.push(f64::from(driver.ramp_months));
            let best = tally.industries.entry(key(peer.industry)).or_insert(score);
            *best = best.max(score);
        }
    }

    let mut derived: Vec<Derived> = tallies
        .into_values()
        .filter_map(|mut tally| {
            let unit_value = median(&mut tally.unit_values)?;
            let mean_quantity = median(&mut tally.quantities)?;
            let ramp_months = median(&mut tally.ramps)?.round() as u32;
            let similarity = tally.industries.values().copied().fold(0.0, f64::max);
            let models = tally.models.len();
            Some(Derived {
                name: most_common(&tally.spellings),
                category: most_common(&tally.categories),
                unit_value,
                mean_quantity,
                ramp_months,
                expected_annual_value: unit_value * mean_quantity * 12.0,
                models,
                rationale: rationale(models, &tally.industries, similarity),
                from_industries: tally.industries.into_keys().collect(),
                similarity,
            })
        })
        .collect();
    derived.sort_by(rank);
    derived.truncate(limit);
    derived
}

fn rank(a: &Derived, b: &Derived) -> Ordering {
    b.similarity
        .total_cmp(&a.similarity)
        .then_with(|| b.models.cmp(&a.models))
        .then_with(|| b.expected_annual_value.total_cmp(&a.expected_annual_value))
        // Equal names up to case are one driver, so this is a total order.
        .then_with(|| a.name.to_lowercase().cmp(&b.name.to_lowercase()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const EPS: f64 = 1e-9;

    fn driver(name: &str, unit_value: f64, mean_quantity: f64, ramp_months: u32) -> PeerDriver {
        PeerDriver {
            name: name.to_string(),
            category: "revenue".to_string(),
            unit_value,
            mean_quantity,
            ramp_months,
        }
    }

    fn peer<'a>(model_id: &'a str, industry: &'a str, drivers: &'a [PeerDriver]) -> Peer<'a> {
        Peer {
            model_id,
            industry,
            drivers,
        }
    }

    fn names(derived: &[Derived]) -> Vec<&str> {
        derived.iter().map(|d| d.name.as_str()).collect()
    }

    #[test]
    fn subset_scores_at_least_point_six() {
        // Tokens {retail, bank} and {bank}: Jaccard 1/2, raised to 0.6 by the
        // subset rule; trigrams give only 0.8 * 2/9.
        let s = similarity("Retail Banking", "banking");
        assert!(s >= 0.6, "{s}");
        assert!((s - 0.6).abs() < EPS, "{s}");
        assert!((similarity("banking", "Retail Banking") - s).abs() < EPS);
    }

    #[test]
    fn same_words_after_normalisation_are_identical() {
        assert_eq!(similarity("retail banking", "Retail-Banking"), 1.0);
        assert_eq!(similarity("Oil and Gas", "oil & gas"), 1.0);
        assert_eq!(similarity("The Banks", "bank"), 1.0);
        // "ing" goes from words longer than 5 only.
        assert_eq!(similarity("Banking", "bank"), 1.0);
        assert!(similarity("king", "k") < 1.0);
    }

    #[test]
    fn unrelated_industries_score_low() {
        assert_eq!(similarity("healthcare", "mining"), 0.0);
        assert!(similarity("healthcare", "mining") < MIN_SIMILARITY);
        assert_eq!(similarity("healthcare", "healthcare"), 1.0);
    }

    #[test]
    fn stemmed_subset() {
        // "logistics" -> "logistic", "services" -> "service": {logistic} is a
        // subset of {logistic, service}. Without stemming the score would be
        // 0.8 * 6/16 = 0.3.
        let s = similarity("logistics", "logistic services");
        assert!((s - 0.6).abs() < EPS, "{s}");
    }

    #[test]
    fn trigrams_catch_split_words() {
        // No common token; trigrams of "healthcare" (8) and "health care" (9)
        // share hea, eal, alt, lth, car, are: 6 of 11.
        let s = similarity("healthcare", "health care");
        assert!((s - 0.8 * 6.0 / 11.0).abs() < EPS, "{s}");
    }

    #[test]
    fn empty_names_score_zero() {
        assert_eq!(similarity("", "banking"), 0.0);
        assert_eq!(similarity("the & of", "the and of"), 0.0);
    }

    fn three_peers() -> (Vec<PeerDriver>, Vec<PeerDriver>, Vec<PeerDriver>) {
        let retail = vec![
            driver("Churn Reduction", 100.0, 10.0, 3),
            driver("branch visits saved", 5.0, 400.0, 6),
        ];
        let banking = vec![
            driver("churn reduction", 300.0, 20.0, 6),
            driver("fraud losses avoided", 1000.0, 2.0, 12),
        ];
        let mining = vec![
            driver("churn reduction", 1e6, 1e3, 24),
            driver("drill uptime", 50.0, 100.0, 4),
        ];
        (retail, banking, mining)
    }

    #[test]
    fn derives_medians_from_similar_peers_only() {
        let (retail, banking, mining) = three_peers();
        let peers = [
            peer("m1", "Retail Banking", &retail),
            peer("m2", "banking", &banking),
            peer("m3", "mining", &mining),
        ];
        let derived = derive("retail banking", &peers, &[], 10);
        assert!(!names(&derived).contains(&"drill uptime"));
        let churn = derived
            .iter()
            .find(|d| d.name.eq_ignore_ascii_case("churn reduction"))
            .unwrap();
        assert_eq!(churn.models, 2);
        assert_eq!(churn.unit_value, 200.0);
        assert_eq!(churn.mean_quantity, 15.0);
        // Median of 3 and 6 is 4.5, rounded to 5.
        assert_eq!(churn.ramp_months, 5);
        assert_eq!(churn.expected_annual_value, 200.0 * 15.0 * 12.0);
        assert_eq!(churn.from_industries, vec!["banking", "retail banking"]);
        assert_eq!(churn.similarity, 1.0);
        assert_eq!(churn.category, "revenue");
        // Only from the banking peer: its similarity.
        let fraud = derived
            .iter()
            .find(|d| d.name == "fraud losses avoided")
            .unwrap();
        assert!((fraud.similarity - 0.6).abs() < EPS);
        assert_eq!(fraud.from_industries, vec!["banking"]);
        assert_eq!(fraud.models, 1);
    }

    #[test]
    fn median_of_odd_count_is_the_middle_value() {
        let a = [driver("x", 1.0, 1.0, 1)];
        let b = [driver("x", 2.0, 3.0, 2)];
        let c = [driver("x", 10.0, 100.0, 12)];
        let peers = [
            peer("a", "banking", &a),
            peer("b", "banking", &b),
            peer("c", "banking", &c),
        ];
        let derived = derive("banking", &peers, &[], 10);
        assert_eq!(derived.len(), 1);
        assert_eq!(derived[0].unit_value, 2.0);
        assert_eq!(derived[0].mean_quantity, 3.0);
        assert_eq!(derived[0].ramp_months, 2);
        assert_eq!(derived[0].models, 3);
    }

    #[test]
    fn excludes_the_models_own_drivers() {
        let (retail, banking, mining) = three_peers();
        let peers = [
            peer("m1", "Retail Banking", &retail),
            peer("m2", "banking", &banking),
            peer("m3", "mining", &mining),
        ];
        let all = derive("retail banking", &peers, &[], 10);
        assert!(names(&all).contains(&"Churn Reduction"));
        let derived = derive("retail banking", &peers, &["  CHURN reduction "], 10);
        assert_eq!(
            names(&derived),
            vec!["branch visits saved", "fraud losses avoided"]
        );
    }

    #[test]
    fn limit_keeps_the_best() {
        let (retail, banking, mining) = three_peers();
        let peers = [
            peer("m1", "Retail Banking", &retail),
            peer("m2", "banking", &banking),
            peer("m3", "mining", &mining),
        ];
        assert_eq!(derive("retail banking", &peers, &[], 10).len(), 3);
        let derived = derive("retail banking", &peers, &[], 1);
        assert_eq!(names(&derived), vec!["Churn Reduction"]);
        assert!(derive("retail banking", &peers, &[], 0).is_empty());
    }

    #[test]
    fn ranks_by_similarity_models_value_then_name() {
        let close = [
            driver("shared", 1.0, 1.0, 1),
            driver("small", 1.0, 1.0, 1),
            driver("big", 10.0, 10.0, 1),
            driver("Tie B", 2.0, 2.0, 1),
            driver("tie a", 2.0, 2.0, 1),
        ];
        let close_too = [driver("shared", 1.0, 1.0, 1)];
        let far = [driver("huge", 1e9, 1e9, 1), driver("shared", 1.0, 1.0, 1)];
        let peers = [
            peer("m1", "retail banking", &close),
            peer("m2", "retail-banking", &close_too),
            peer("m3", "banking", &far),
        ];
        let derived = derive("retail banking", &peers, &[], 10);
        assert_eq!(
            names(&derived),
            vec!["shared", "big", "tie a", "Tie B", "small", "huge"]
        );
        assert_eq!(derived[0].models, 3);
        assert_eq!(derived[0].similarity, 1.0);
    }

    #[test]
    fn rationale_names_the_industries() {
        let (retail, banking, mining) = three_peers();
        let peers = [
            peer("m1", "Retail Banking", &retail),
            peer("m2", "banking", &banking),
            peer("m3", "mining", &mining),
        ];
        let derived = derive("retail banking", &peers, &[], 10);
        assert_eq!(
            derived[0].rationale,
            "seen in 2 of your models in `retail banking`, `banking` (similarity 1.00)"
        );
        let fraud = derived
            .iter()
            .find(|d| d.name == "fraud losses avoided")
            .unwrap();
        assert_eq!(
            fraud.rationale,
            "seen in 1 of your models in `banking` (similarity 0.60)"
        );
        assert!(!derived[0].rationale.contains("mining"));
    }

    #[test]
    fn skips_unusable_driver_figures() {
        let a = [
            driver("churn", f64::NAN, 1.0, 1),
            driver("only nan", 1.0, f64::NAN, 1),
            driver("negative", -1.0, 1.0, 1),
            driver("infinite", f64::INFINITY, 1.0, 1),
        ];
        let b = [driver("churn", 40.0, 2.0, 6)];
        let peers = [peer("a", "banking", &a), peer("b", "banking", &b)];
        let derived = derive("banking", &peers, &[], 10);
        assert_eq!(names(&derived), vec!["churn"]);
        assert_eq!(derived[0].models, 1);
        assert_eq!(derived[0].unit_value, 40.0);
        assert!(derived[0].expected_annual_value.is_finite());
    }

    #[test]
    fn nothing_similar_gives_nothing() {
        let (retail, banking, mining) = three_peers();
        let peers = [
            peer("m1", "Retail Banking", &retail),
            peer("m2", "banking", &banking),
            peer("m3", "mining", &mining),
        ];
        assert!(derive("healthcare", &peers, &[], 10).is_empty());
        assert!(!derive("mining", &peers, &[], 10).is_empty());
        assert!(derive("healthcare", &[], &[], 10).is_empty());
    }

    #[test]
    fn most_common_spelling_wins_ties_to_smallest() {
        let a = [driver("Churn Reduction", 1.0, 1.0, 1)];
        let b = [driver(" Churn Reduction ", 1.0, 1.0, 1)];
        let c = [driver("churn reduction", 1.0, 1.0, 1)];
        let peers = [
            peer("c", "banking", &c),
            peer("a", "banking", &a),
            peer("b", "banking", &b),
        ];
        assert_eq!(derive("banking", &peers, &[], 1)[0].name, "Churn Reduction");
        let tie = [peer("c", "banking", &c), peer("a", "banking", &a)];
        assert_eq!(derive("banking", &tie, &[], 1)[0].name, "Churn Reduction");
        let tie = [peer("a", "banking", &a), peer("c", "banking", &c)];
        assert_eq!(derive("banking", &tie, &[], 1)[0].name, "Churn Reduction");
    }

    #[test]
    fn a_model_counts_once_per_driver() {
        let a = [driver("churn", 1.0, 1.0, 1), driver("CHURN", 100.0, 1.0, 1)];
        let b = [driver("churn", 3.0, 1.0, 1)];
        let peers = [peer("a", "banking", &a), peer("b", "banking", &b)];
        let derived = derive("banking", &peers, &[], 10);
        assert_eq!(derived[0].models, 2);
        assert_eq!(derived[0].unit_value, 2.0);
    }

    #[test]
    fn order_of_peers_does_not_matter() {
        let (retail, banking, mining) = three_peers();
        let mut peers = vec![
            peer("m1", "Retail Banking", &retail),
            peer("m2", "banking", &banking),
            peer("m3", "mining", &mining),
        ];
        let forward = derive("retail banking", &peers, &[], 10);
        peers.reverse();
        assert_eq!(derive("retail banking", &peers, &[], 10), forward);
    }

    #[test]
    fn serialises_every_field() {
        let (retail, _, _) = three_peers();
        let peers = [peer("m1", "retail banking", &retail)];
        let value = serde_json::to_value(&derive("retail banking", &peers, &[], 1)[0]).unwrap();
        for field in [
            "name",
            "category",
            "unit_value",
            "mean_quantity",
            "ramp_months",
            "expected_annual_value",
            "models",
            "from_industries",
            "similarity",
            "rationale",
        ] {
            assert!(value.get(field).is_some(), "{field}");
        }
    }
}
