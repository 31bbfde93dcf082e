//! Routing: which rule, and so which support set and destination, a study gets.
//!
//! Pure (no SQL, no I/O): the header fields routing looks at ([`StudyHeader`]), the rules
//! ([`Rule`], [`RuleSet`]), the one body-part synonym table ([`Synonyms`], from
//! `[admin] body_part_synonyms` or [`crate::config::default_synonyms`]) and the one routing function
//! ([`route`] per series, [`route_study`] and [`route_series`] per study). Both catalogs the
//! pipeline can route through (the admin store's rules and the bundled support-set folders)
//! route with it, so a study routes the same whether the admin API is on or off.
//!
//! Rules are tried by ascending `priority`, then `id`; the first enabled rule whose every
//! non-empty criterion matches wins. Modality and Body Part Examined compare case-insensitively,
//! body parts through the synonym groups (e.g. `EYE = ["RETINA", "FUNDUS", "OPHTHALMIC"]`).
//! Routing never fails: a study that no rule claims gets a decision without a rule (the job
//! becomes `unmatched`), with the reason.

use regex::Regex;
use std::collections::HashMap;

/// A routing rule row.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Rule {
    /// Row id (0 before insertion).
    pub id: i64,
    /// Lower is tried first.
    pub priority: i32,
    /// Modality to match (empty = any).
    pub modality: String,
    /// Body Part Examined to match (empty = any).
    pub body_part: String,
    /// SOP Class UID to match (empty = any).
    pub sop_class_uid: String,
    /// Regex searched in the Series Description (empty = any).
    pub series_description_regex: String,
    /// Calling AE to match (empty = any).
    pub calling_ae: String,
    /// Support set to use.
    pub support_set: String,
    /// Destination AE (empty = back to the sender).
    pub destination_ae: String,
    /// Stable age override in seconds.
    pub stable_age_s: Option<f64>,
    /// Disabled rules are skipped.
    pub enabled: bool,
    /// Do not match localizers / scouts.
    pub skip_localizers: bool,
    /// Free text.
    pub description: String,
    /// How a matched study's sequences are segmented (None: the support set's, else the
    /// config's; see [`crate::sequence_mode::choose`]).
    pub sequence_mode: Option<crate::config::SequenceMode>,
    /// Creation time.
    pub created_at: f64,
    /// Last change.
    pub updated_at: f64,
}

/// Priority of the rule a bundled support-set folder's `[match]` table gives.
pub const BUNDLED_PRIORITY: i32 = 100;

impl Rule {
    /// The rule a bundled support-set folder routes by (and the admin store seeds from it):
    /// its `[match]` modality and body part to `support_set`, at [`BUNDLED_PRIORITY`],
    /// enabled, skipping localizers, back to the sender.
    pub fn bundled(support_set: &str, modality: &str, body_part: &str) -> Rule {
        Rule {
            priority: BUNDLED_PRIORITY,
            modality: modality.trim().to_uppercase(),
            body_part: body_part.trim().to_uppercase(),
            support_set: support_set.to_string(),
            enabled: true,
            skip_localizers: true,
            ..Default::default()
        }
    }
}

/// The header fields routing looks at (from the study's first instance, or per series).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StudyHeader {
    /// Modality.
    pub modality: String,
    /// Body Part Examined.
    pub body_part: String,
    /// SOP Class UID.
    pub sop_class_uid: String,
    /// Series Description.
    pub series_description: String,
    /// Calling AE title of the sender.
    pub calling_ae: String,
    /// Image Type values.
    pub image_type: Vec<String>,
}

impl StudyHeader {
    /// True for localizer / scout images: ImageType holds LOCALIZER, or the Series Description
    /// says scout, localizer, topogram or surview.
    pub fn is_localizer(&self) -> bool {
        let d = self.series_description.to_lowercase();
        self.image_type
            .iter()
            .any(|t| t.trim().eq_ignore_ascii_case("LOCALIZER"))
            || ["scout", "localizer", "localiser", "topogram", "surview"]
                .iter()
                .any(|w| d.contains(w))
    }
}

/// Body-part synonym groups: every alias maps to its group's canonical name. The default is
/// [`crate::config::default_synonyms`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Synonyms {
    canonical: HashMap<String, String>,
}

impl Synonyms {
    /// From `canonical -> aliases` (case-insensitive).
    pub fn new<'a>(groups: impl IntoIterator<Item = (&'a String, &'a Vec<String>)>) -> Synonyms {
        let mut canonical = HashMap::new();
        for (name, aliases) in groups {
            let c = name.trim().to_uppercase();
            for a in aliases {
                canonical.insert(a.trim().to_uppercase(), c.clone());
            }
            canonical.insert(c.clone(), c);
        }
        Synonyms { canonical }
    }

    /// The canonical upper-case name of a body part.
    pub fn canonical(&self, body_part: &str) -> String {
        let u = body_part.trim().to_uppercase();
        self.canonical.get(&u).cloned().unwrap_or(u)
    }

    /// Whether a rule's body part (empty: any) matches the one seen in a header: equal
    /// case-insensitively, or in the same synonym group.
    pub fn matches(&self, rule: &str, seen: &str) -> bool {
        rule.trim().is_empty() || self.canonical(rule) == self.canonical(seen)
    }
}

/// Enabled and disabled rules in routing order, with compiled regexes and the synonyms.
#[derive(Debug, Clone, Default)]
pub struct RuleSet {
    rules: Vec<(Rule, Option<Regex>)>,
    synonyms: Synonyms,
}

impl RuleSet {
    /// Builds a rule set; rules are sorted by (priority, id). A rule whose regex does not
    /// compile (only possible if the table was edited by hand) never matches.
    pub fn new(mut rules: Vec<Rule>, synonyms: Synonyms) -> RuleSet {
        rules.sort_by_key(|r| (r.priority, r.id));
        let rules = rules
            .into_iter()
            .map(|r| {
                let re = (!r.series_description_regex.is_empty())
                    .then(|| Regex::new(&r.series_description_regex).ok())
                    .flatten();
                (r, re)
            })
            .collect();
        RuleSet { rules, synonyms }
    }

    /// The rules in routing order.
    pub fn rules(&self) -> impl Iterator<Item = &Rule> {
        self.rules.iter().map(|(r, _)| r)
    }
}

/// One rule's verdict in a routing decision.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    /// The rule.
    pub rule_id: i64,
    /// Whether it matched.
    pub matched: bool,
    /// Why (first failing criterion, or "all criteria match").
    pub reason: String,
}

/// The outcome of routing one study.
#[derive(Debug, Clone, PartialEq)]
pub struct RouteDecision {
    /// The winning rule, or None: the study is `unmatched`.
    pub rule: Option<i64>,
    /// Support set to use.
    pub support_set: Option<String>,
    /// Destination AE (the rule's, or the calling AE when the rule names none).
    pub destination: Option<String>,
    /// Stable age override of the winning rule.
    pub stable_age_s: Option<f64>,
    /// Why: the rule and its criteria, or why nothing matched.
    pub reason: String,
    /// Every rule considered, in order (rules after the winner are not listed).
    pub considered: Vec<Verdict>,
}

fn check_rule(
    rule: &Rule,
    re: Option<&Regex>,
    h: &StudyHeader,
    syn: &Synonyms,
) -> Result<String, String> {
    if !rule.enabled {
        return Err("disabled".into());
    }
    let mut why = Vec::new();
    if !rule.modality.is_empty() {
        if !rule.modality.trim().eq_ignore_ascii_case(h.modality.trim()) {
            return Err(format!(
                "modality {:?} is not {:?}",
                h.modality.trim(),
                rule.modality
            ));
        }
        why.push(format!("modality {}", rule.modality));
    }
    if !rule.body_part.is_empty() {
        if !syn.matches(&rule.body_part, &h.body_part) {
            return Err(format!(
                "body part {:?} is not {:?} (or a synonym)",
                h.body_part.trim(),
                rule.body_part
            ));
        }
        why.push(format!(
            "body part {} ~ {}",
            h.body_part.trim(),
            rule.body_part
        ));
    }
    if !rule.sop_class_uid.is_empty() {
        if crate::sop::trim_uid(&h.sop_class_uid) != rule.sop_class_uid.trim() {
            return Err(format!(
                "SOP class {} is not {}",
                crate::sop::trim_uid(&h.sop_class_uid),
                rule.sop_class_uid
            ));
        }
        why.push("SOP class".into());
    }
    if !rule.series_description_regex.is_empty() {
        match re {
            Some(re) if re.is_match(&h.series_description) => why.push(format!(
                "series description ~ /{}/",
                rule.series_description_regex
            )),
            Some(_) => {
                return Err(format!(
                    "series description {:?} does not match /{}/",
                    h.series_description, rule.series_description_regex
                ))
            }
            None => return Err("its series description regex does not compile".into()),
        }
    }
    if !rule.calling_ae.is_empty() {
        if rule.calling_ae.trim() != h.calling_ae.trim() {
            return Err(format!(
                "calling AE {:?} is not {:?}",
                h.calling_ae.trim(),
                rule.calling_ae
            ));
        }
        why.push(format!("calling AE {}", rule.calling_ae));
    }
    if rule.skip_localizers && h.is_localizer() {
        return Err("the image is a localizer / scout and the rule skips them".into());
    }
    if why.is_empty() {
        why.push("matches everything".into());
    }
    Ok(why.join(", "))
}

/// Routes one study: the first matching rule, or an unmatched decision with the reason.
pub fn route(rules: &RuleSet, header: &StudyHeader) -> RouteDecision {
    let mut considered = Vec::new();
    for (rule, re) in &rules.rules {
        match check_rule(rule, re.as_ref(), header, &rules.synonyms) {
            Ok(why) => {
                considered.push(Verdict {
                    rule_id: rule.id,
                    matched: true,
                    reason: why.clone(),
                });
                let destination = if rule.destination_ae.trim().is_empty() {
                    header.calling_ae.trim().to_string()
                } else {
                    rule.destination_ae.trim().to_string()
                };
                return RouteDecision {
                    rule: Some(rule.id),
                    support_set: Some(rule.support_set.clone()),
                    destination: Some(destination),
                    stable_age_s: rule.stable_age_s,
                    reason: format!("rule {} (priority {}): {why}", rule.id, rule.priority),
                    considered,
                };
            }
            Err(why) => considered.push(Verdict {
                rule_id: rule.id,
                matched: false,
                reason: why,
            }),
        }
    }
    let reason = if considered.is_empty() {
        "no routing rules are defined".to_string()
    } else {
        format!(
            "no rule matched ({})",
            considered
                .iter()
                .map(|v| format!("rule {}: {}", v.rule_id, v.reason))
                .collect::<Vec<_>>()
                .join("; ")
        )
    };
    RouteDecision {
        rule: None,
        support_set: None,
        destination: None,
        stable_age_s: None,
        reason,
        considered,
    }
}

/// Routes a study from the headers of its series (one per series, in series order): the
/// series whose winning rule comes first in routing order decides. SEG series (our own results
/// coming back, or anyone's) are never routed. Unmatched when no series matches.
pub fn route_study(rules: &RuleSet, series: &[StudyHeader]) -> RouteDecision {
    let order: HashMap<i64, usize> = rules.rules().enumerate().map(|(i, r)| (r.id, i)).collect();
    let mut best: Option<RouteDecision> = None;
    let mut why = Vec::new();
    for h in series {
        if crate::sop::trim_uid(&h.sop_class_uid)
            == dicom_dictionary_std::uids::SEGMENTATION_STORAGE
        {
            why.push("a SEG series is never segmented".to_string());
            continue;
        }
        let d = route(rules, h);
        match d.rule {
            Some(id) => {
                let better = best
                    .as_ref()
                    .and_then(|b| b.rule)
                    .is_none_or(|b| order.get(&id) < order.get(&b));
                if better {
                    best = Some(d);
                }
            }
            None => why.push(d.reason),
        }
    }
    best.unwrap_or_else(|| RouteDecision {
        rule: None,
        support_set: None,
        destination: None,
        stable_age_s: None,
        reason: if why.is_empty() {
            "the study has no series".into()
        } else {
            why.dedup();
            why.join(" | ")
        },
        considered: Vec::new(),
    })
}

/// A study's routing decision with the series it covers.
#[derive(Debug, Clone, PartialEq)]
pub struct StudyRoute {
    /// The decision ([`route_study`]).
    pub decision: RouteDecision,
    /// Indexes (into the headers given) of the series whose own first matching rule is the
    /// winner: the series to segment. Empty when unmatched.
    pub series: Vec<usize>,
}

/// Routes a study ([`route_study`]) and names the series the winning rule covers.
pub fn route_series(rules: &RuleSet, series: &[StudyHeader]) -> StudyRoute {
    let decision = route_study(rules, series);
    let covered = match decision.rule {
        Some(id) => series
            .iter()
            .enumerate()
            .filter(|(_, h)| route(rules, h).rule == Some(id))
            .map(|(i, _)| i)
            .collect(),
        None => Vec::new(),
    };
    StudyRoute {
        decision,
        series: covered,
    }
}

impl Default for Synonyms {
    /// The config's default groups ([`crate::config::default_synonyms`]).
    fn default() -> Synonyms {
        Synonyms::new(crate::config::default_synonyms().iter())
    }
}

impl Synonyms {
    /// The table a daemon routes with: `[admin] body_part_synonyms`, or the defaults. Both
    /// the pipeline and the admin API (dry runs) route with it.
    pub fn of(cfg: &crate::config::Config) -> Synonyms {
        match &cfg.admin {
            Some(a) => Synonyms::new(a.body_part_synonyms.iter()),
            None => Synonyms::default(),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// An enabled rule that skips localizers (shared with the store's rule tests).
    pub(crate) fn rule(id: i64, priority: i32, modality: &str, body: &str, set: &str) -> Rule {
        Rule {
            id,
            priority,
            modality: modality.into(),
            body_part: body.into(),
            support_set: set.into(),
            enabled: true,
            skip_localizers: true,
            ..Default::default()
        }
    }

    fn header(modality: &str, body: &str) -> StudyHeader {
        StudyHeader {
            modality: modality.into(),
            body_part: body.into(),
            calling_ae: "PACS".into(),
            ..Default::default()
        }
    }

    fn eye_synonyms() -> Synonyms {
        let mut m = std::collections::BTreeMap::new();
        m.insert(
            "EYE".to_string(),
            vec!["RETINA".to_string(), "fundus".to_string()],
        );
        Synonyms::new(m.iter())
    }

    /// A daemon routes with the config's groups: `[admin] body_part_synonyms` or the defaults.
    #[test]
    fn the_config_gives_the_table() {
        let c = crate::config::Config::parse("[admin]\n").unwrap();
        assert_eq!(Synonyms::of(&c).canonical("retina"), "EYE");
        let c = crate::config::Config::parse("[admin.body_part_synonyms]\nHEAD = [\"SKULL\"]\n")
            .unwrap();
        assert_eq!(Synonyms::of(&c).canonical("skull"), "HEAD");
        assert_eq!(Synonyms::of(&c).canonical("retina"), "RETINA");
        let c = crate::config::Config::parse("").unwrap();
        assert_eq!(Synonyms::of(&c).canonical("fundus"), "EYE");
    }

    /// One table: the groups both catalogs used to keep apart are all in the default.
    #[test]
    fn default_synonyms_hold_every_group() {
        let s = Synonyms::default();
        assert!(s.matches("eye", "EYE"));
        assert!(s.matches("EYE", "retina"));
        assert!(s.matches("EYE", "OPHTHALMIC"));
        assert!(s.matches("PROSTATE", "pelvis_prostate"));
        assert!(s.matches("PELVIS", "FETUS"));
        assert!(s.matches("CHEST", "THORAX"));
        assert!(!s.matches("EYE", "CHEST"));
        assert!(!s.matches("PELVIS", "PROSTATE"));
        assert!(s.matches("", "ANYTHING"));
    }

    #[test]
    fn series_the_winner_covers() {
        let rs = RuleSet::new(
            vec![rule(1, 1, "MR", "PROSTATE", "p"), rule(2, 2, "", "", "any")],
            Synonyms::default(),
        );
        let r = route_series(
            &rs,
            &[
                header("CT", "CHEST"),
                header("MR", "PELVIS_PROSTATE"),
                header("MR", "PROSTATE"),
            ],
        );
        assert_eq!(r.decision.rule, Some(1));
        assert_eq!(r.series, [1, 2]);
        let none = RuleSet::new(vec![], Synonyms::default());
        assert!(route_series(&none, &[header("MR", "")]).series.is_empty());
    }

    #[test]
    fn priority_then_id_and_synonyms() {
        let rs = RuleSet::new(
            vec![
                rule(3, 10, "OP", "eye", "fundus"),
                rule(1, 20, "", "", "catch-all"),
                rule(2, 10, "ct", "chest", "lungs"),
            ],
            eye_synonyms(),
        );
        let d = route(&rs, &header("OP", "Retina"));
        assert_eq!(d.rule, Some(3));
        assert_eq!(d.support_set.as_deref(), Some("fundus"));
        assert_eq!(d.destination.as_deref(), Some("PACS"));
        assert_eq!(
            d.considered.len(),
            2,
            "rule 2 (same priority, lower id) was tried first"
        );
        let d = route(&rs, &header("CT", "CHEST"));
        assert_eq!(d.rule, Some(2));
        assert_eq!(d.considered[0].rule_id, 2, "equal priority: lower id first");
        let d = route(&rs, &header("MR", "KNEE"));
        assert_eq!(d.rule, Some(1));
    }

    #[test]
    fn unmatched_is_a_decision_with_reasons() {
        let mut r = rule(1, 1, "CT", "", "x");
        r.series_description_regex = "(?i)abdomen".into();
        r.calling_ae = "PACS".into();
        let mut disabled = rule(2, 2, "", "", "y");
        disabled.enabled = false;
        let rs = RuleSet::new(vec![r, disabled], Synonyms::default());
        let mut h = header("CT", "");
        h.series_description = "Thorax 1mm".into();
        let d = route(&rs, &h);
        assert_eq!(d.rule, None);
        assert!(
            d.reason.contains("does not match /(?i)abdomen/"),
            "{}",
            d.reason
        );
        assert!(d.reason.contains("rule 2: disabled"), "{}", d.reason);
        h.series_description = "ABDOMEN venous".into();
        assert_eq!(route(&rs, &h).rule, Some(1));
        h.calling_ae = "OTHER".into();
        assert_eq!(route(&rs, &h).rule, None);
        assert_eq!(
            route(&RuleSet::default(), &h).reason,
            "no routing rules are defined"
        );
    }

    #[test]
    fn localizers_are_skipped_on_request() {
        let mut keep = rule(1, 1, "CT", "", "x");
        keep.skip_localizers = true;
        let rs = RuleSet::new(vec![keep], Synonyms::default());
        let mut h = header("CT", "");
        h.image_type = vec!["ORIGINAL".into(), "PRIMARY".into(), "LOCALIZER".into()];
        assert_eq!(route(&rs, &h).rule, None);
        h.image_type.clear();
        h.series_description = "Topogram 0.6".into();
        assert_eq!(route(&rs, &h).rule, None);
        h.series_description = "Abdomen".into();
        assert_eq!(route(&rs, &h).rule, Some(1));
    }

    #[test]
    fn studies_route_by_their_best_series_and_never_route_seg() {
        let rs = RuleSet::new(
            vec![rule(1, 1, "CT", "", "ct"), rule(2, 5, "MR", "", "mr")],
            Synonyms::default(),
        );
        let mut scout = header("CT", "");
        scout.series_description = "Scout".into();
        let mr = header("MR", "");
        let d = route_study(&rs, &[scout.clone(), mr.clone()]);
        assert_eq!(
            d.rule,
            Some(2),
            "the CT scout is skipped, the MR series matches"
        );
        let ct = header("CT", "");
        assert_eq!(route_study(&rs, &[mr.clone(), ct]).rule, Some(1));
        let mut seg = header("SEG", "");
        seg.sop_class_uid = "1.2.840.10008.5.1.4.1.1.66.4".into();
        let d = route_study(&rs, &[seg]);
        assert_eq!(d.rule, None);
        assert!(d.reason.contains("SEG series"), "{}", d.reason);
        assert_eq!(route_study(&rs, &[]).reason, "the study has no series");
    }
}
