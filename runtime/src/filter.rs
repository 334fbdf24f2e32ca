//! Subscription filters, evaluated exactly as Event Grid evaluates them.
//!
//! This module owns the `filter` section of an event subscription: its serde
//! shape (the ARM-template / REST shape, so a filter copied from a real
//! subscription works unchanged in gridfn's config), the checks Event Grid
//! applies when the subscription is created ([`Filter::problems`]), and the
//! decision whether one event is delivered ([`Filter::evaluate`]).
//!
//! gridfn must deliver exactly the events Azure would deliver, or a handler
//! tested locally behaves differently in production. So the semantics follow
//! `articles/event-grid/event-filtering.md` and the shared test vectors
//! (`tests/vectors/filters/cases.json`) rather than intuition:
//!
//! * `includedEventTypes`, `subjectBeginsWith`, `subjectEndsWith` and every
//!   advanced filter must all pass (AND); the values of one advanced filter
//!   are alternatives (OR).
//! * String comparisons ignore case (the subject ones unless
//!   `isSubjectCaseSensitive`). Numbers are compared as exact decimals, never
//!   through `f64` arithmetic.
//! * A missing key fails every operator except `NumberNotIn` and
//!   `StringNotIn`; `IsNullOrUndefined` accepts missing or `null`.
//! * A value of the wrong type fails every typed operator, negated ones too.
//! * Arrays are looked into only with `enableAdvancedFilteringOnArrays`: then a
//!   positive operator needs one element to pass and a negated one needs no
//!   element to hit; elements of another type are ignored.
//!
//! Evaluation never panics and never rejects an event: a filter that
//! [`Filter::problems`] would refuse for its shape simply never matches, and
//! the [`Verdict`] says why.
//!
//! Shapes are accepted as Event Grid's management API accepts them (REST
//! `EventSubscriptionFilter` and its `AdvancedFilter` subtypes), so a filter
//! copied from `az eventgrid event-subscription show` or an ARM template
//! loads unchanged:
//!
//! * every field may be `null` (Azure prints `null` for unset ones), which
//!   means the same as absent: no condition, or `false`;
//! * field names may also be PascalCase (`Key`, `Values`, `OperatorType`, as
//!   .NET and PowerShell print them) and `operatorType` ignores case;
//! * an operand the operator does not read (`value` on `IsNotNull`, `values`
//!   on `NumberLessThan`, `value` on `StringIn`) is not part of that
//!   operator's REST type, so Event Grid drops it: so does gridfn, and
//!   [`Filter::warnings`] says so (logged by [`Filter::problems`]);
//! * keys may nest to any depth (the 2018 two-level limit is gone from the
//!   docs); the limits checked are the documented ones: 25 advanced filters
//!   and 25 values across them, 512 characters per string value.

use std::cmp::Ordering;
use std::fmt;

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Number, Value};

/// Event Grid's limit on advanced filters per subscription.
pub const MAX_ADVANCED_FILTERS: usize = 25;
/// Event Grid's limit on filter values, counted across all advanced filters.
pub const MAX_ADVANCED_FILTER_VALUES: usize = 25;
/// Event Grid's limit on the length, in characters, of one string value.
pub const MAX_STRING_VALUE_CHARS: usize = 512;

/// Longest rendering of an event value quoted in a [`Verdict`] before it is cut.
const MAX_SHOWN_CHARS: usize = 160;

/// The keys an Event Grid schema event can be filtered on (`data` nests).
const EVENT_GRID_KEYS: [&str; 6] = ["id", "topic", "subject", "eventType", "dataVersion", "data"];

// ---------------------------------------------------------------------------
// Public types
// ---------------------------------------------------------------------------

pub use crate::event::Schema;

/// The `filter` section of an event subscription.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Filter {
    /// Event types to deliver (case-insensitive); absent, null, empty or
    /// containing `All` means every type.
    #[serde(default, alias = "IncludedEventTypes", skip_serializing_if = "Option::is_none")]
    pub included_event_types: Option<Vec<String>>,
    /// Prefix the subject must have; absent, null or empty means no condition.
    #[serde(default, alias = "SubjectBeginsWith", skip_serializing_if = "Option::is_none")]
    pub subject_begins_with: Option<String>,
    /// Suffix the subject must have; absent, null or empty means no condition.
    #[serde(default, alias = "SubjectEndsWith", skip_serializing_if = "Option::is_none")]
    pub subject_ends_with: Option<String>,
    /// Compare the subject prefix/suffix exactly instead of ignoring case
    /// (default false, also when null).
    #[serde(default, alias = "IsSubjectCaseSensitive", deserialize_with = "null_as_default")]
    pub is_subject_case_sensitive: bool,
    /// Look into array values element by element instead of failing them
    /// (default false, also when null).
    #[serde(default, alias = "EnableAdvancedFilteringOnArrays", deserialize_with = "null_as_default")]
    pub enable_advanced_filtering_on_arrays: bool,
    /// Conditions on individual keys; all must pass. Absent or null: none.
    #[serde(default, alias = "AdvancedFilters", deserialize_with = "null_as_default")]
    pub advanced_filters: Vec<AdvancedFilter>,
}

/// Reads `null` as the field's default: Event Grid's API treats a null field
/// as an unset one, and prints unset fields as null.
fn null_as_default<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

/// One advanced filter: `{operatorType, key, value | values}`.
///
/// `value` and `values` are kept as raw JSON values so that any serde format
/// (JSON, TOML) can carry them and so that a wrong shape is reported by
/// [`Filter::problems`] with a path instead of failing deserialisation. Each
/// operator reads one of them (or neither); the other is ignored, as Event
/// Grid ignores it, with a [`Filter::warnings`] entry.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AdvancedFilter {
    /// The comparison to apply.
    #[serde(alias = "OperatorType")]
    pub operator_type: Operator,
    /// Dotted path of the event field, e.g. `data.appEventTypeDetail.action`.
    #[serde(alias = "Key")]
    pub key: String,
    /// The single operand of `NumberLessThan`…`NumberGreaterThanOrEquals` and
    /// `BoolEquals`. `null` is the same as absent.
    #[serde(default, alias = "Value", skip_serializing_if = "Option::is_none")]
    pub value: Option<Value>,
    /// The operand list of every other operator (ranges are `[low, high]`).
    /// `null` is the same as absent.
    #[serde(default, alias = "Values", skip_serializing_if = "Option::is_none")]
    pub values: Option<Value>,
}

/// Advanced filter operators. Names are read ignoring case; an unknown name
/// fails deserialisation with a message listing these.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum Operator {
    NumberIn,
    NumberNotIn,
    NumberLessThan,
    NumberGreaterThan,
    NumberLessThanOrEquals,
    NumberGreaterThanOrEquals,
    NumberInRange,
    NumberNotInRange,
    BoolEquals,
    StringContains,
    StringNotContains,
    StringBeginsWith,
    StringNotBeginsWith,
    StringEndsWith,
    StringNotEndsWith,
    StringIn,
    StringNotIn,
    IsNullOrUndefined,
    IsNotNull,
}

/// Something Event Grid would refuse when the subscription is created.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FilterProblem {
    /// Where, relative to the filter, e.g. `advancedFilters[3].values[0]`.
    pub path: String,
    /// What is wrong, in a sentence fragment.
    pub message: String,
}

/// Whether an event passes a filter and, if not, why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "verdict", rename_all = "camelCase")]
pub enum Verdict {
    /// Every condition passed: the event is delivered.
    Match,
    /// The first condition that failed, e.g. `advancedFilters[1]
    /// NumberGreaterThan data.confidence`, and the event's side of it, e.g.
    /// `0.42 is not > 0.8`.
    Miss { condition: String, detail: String },
}

// ---------------------------------------------------------------------------
// Filter
// ---------------------------------------------------------------------------

impl Filter {
    /// Problems that Event Grid would refuse at subscription time: limits,
    /// a missing or malformed operand, operand types, ranges with
    /// low > high, malformed keys. Empty means the filter is acceptable.
    ///
    /// This is the check every manifest load runs, so it also logs each of
    /// [`Filter::warnings`] with `tracing::warn!`.
    pub fn problems(&self) -> Vec<FilterProblem> {
        for warning in self.warnings() {
            tracing::warn!("filter {warning} (Event Grid ignores it too)");
        }
        let mut problems = self.event_type_problems();
        problems.extend(self.limit_problems());
        for (index, filter) in self.advanced_filters.iter().enumerate() {
            problems.extend(filter.problems(index));
        }
        problems
    }

    /// Operands that the filter carries but its operator does not read, which
    /// Event Grid (and gridfn) ignore: `value`/`values` on `IsNullOrUndefined`
    /// and `IsNotNull`, `values` on a single-operand operator, `value` on a
    /// list operator. Not problems, but rarely what the author meant.
    pub fn warnings(&self) -> Vec<FilterProblem> {
        let mut warnings = Vec::new();
        for (index, filter) in self.advanced_filters.iter().enumerate() {
            let mut sink = ProblemSink::new(index);
            filter.ignored_operand_warnings(&mut sink);
            warnings.extend(sink.problems);
        }
        warnings
    }

    /// Evaluate against one event in its structured JSON form (an Event Grid
    /// schema object, or a CloudEvents structured-mode object). Conditions
    /// are checked in order (event types, subject prefix, subject suffix,
    /// advanced filters) and the first failure is reported.
    pub fn evaluate(&self, event: &Value, schema: Schema) -> Verdict {
        let outcome = self
            .check_event_type(event, schema)
            .and_then(|()| self.check_subject(event))
            .and_then(|()| self.check_advanced_filters(event, schema));
        match outcome {
            Ok(()) => Verdict::Match,
            Err(miss) => miss,
        }
    }

    /// Whether the event would be delivered.
    pub fn matches(&self, event: &Value, schema: Schema) -> bool {
        self.evaluate(event, schema).is_match()
    }

    fn event_type_problems(&self) -> Vec<FilterProblem> {
        let types = self.included_event_types.as_deref().unwrap_or_default();
        types
            .iter()
            .enumerate()
            .filter(|(_, event_type)| event_type.is_empty())
            .map(|(index, _)| FilterProblem {
                path: format!("includedEventTypes[{index}]"),
                message: "event type must not be empty".to_owned(),
            })
            .collect()
    }

    fn limit_problems(&self) -> Vec<FilterProblem> {
        let mut problems = Vec::new();
        let filter_count = self.advanced_filters.len();
        if filter_count > MAX_ADVANCED_FILTERS {
            problems.push(FilterProblem {
                path: "advancedFilters".to_owned(),
                message: format!("at most {MAX_ADVANCED_FILTERS} advanced filters are allowed; found {filter_count}"),
            });
        }
        let value_count: usize = self.advanced_filters.iter().map(AdvancedFilter::value_count).sum();
        if value_count > MAX_ADVANCED_FILTER_VALUES {
            problems.push(FilterProblem {
                path: "advancedFilters".to_owned(),
                message: format!(
                    "at most {MAX_ADVANCED_FILTER_VALUES} filter values are allowed across all advanced filters; found {value_count}"
                ),
            });
        }
        problems
    }

    fn check_event_type(&self, event: &Value, schema: Schema) -> Result<(), Verdict> {
        let wanted = self.included_event_types.as_deref().unwrap_or_default();
        if wanted.is_empty() || wanted.iter().any(|t| fold_case(t) == "all") {
            return Ok(());
        }
        let miss = |detail: String| Verdict::miss("includedEventTypes", detail);
        match member(event, schema.event_type_attribute()) {
            Some(Value::String(actual)) if wanted.iter().any(|t| equal_ignoring_case(t, actual)) => Ok(()),
            Some(Value::String(actual)) => Err(miss(format!(
                "event type {} is not one of [{}]",
                truncate(actual.clone()),
                truncate(wanted.join(", "))
            ))),
            Some(other) => Err(miss(format!("event type is {}, not a string", describe(other)))),
            None => Err(miss("event type is missing".to_owned())),
        }
    }

    fn check_subject(&self, event: &Value) -> Result<(), Verdict> {
        let prefix = non_empty(self.subject_begins_with.as_deref());
        let suffix = non_empty(self.subject_ends_with.as_deref());
        if let Some(prefix) = prefix {
            let subject = subject_of(event).map_err(|detail| Verdict::miss("subjectBeginsWith", detail))?;
            if !self.subject_test(subject, prefix, |s, p| s.starts_with(p)) {
                return Err(self.subject_miss("subjectBeginsWith", subject, "begin with", prefix));
            }
        }
        if let Some(suffix) = suffix {
            let subject = subject_of(event).map_err(|detail| Verdict::miss("subjectEndsWith", detail))?;
            if !self.subject_test(subject, suffix, |s, p| s.ends_with(p)) {
                return Err(self.subject_miss("subjectEndsWith", subject, "end with", suffix));
            }
        }
        Ok(())
    }

    fn subject_test(&self, subject: &str, pattern: &str, test: fn(&str, &str) -> bool) -> bool {
        if self.is_subject_case_sensitive {
            test(subject, pattern)
        } else {
            test(&fold_case(subject), &fold_case(pattern))
        }
    }

    fn subject_miss(&self, condition: &str, subject: &str, relation: &str, pattern: &str) -> Verdict {
        let case_note = if self.is_subject_case_sensitive { " (case-sensitive)" } else { "" };
        let detail = format!("subject {} does not {relation} {}{case_note}", quote(subject), quote(pattern));
        Verdict::miss(condition, detail)
    }

    fn check_advanced_filters(&self, event: &Value, schema: Schema) -> Result<(), Verdict> {
        for (index, filter) in self.advanced_filters.iter().enumerate() {
            filter
                .check(event, schema, self.enable_advanced_filtering_on_arrays)
                .map_err(|detail| Verdict::miss(filter.condition_name(index), detail))?;
        }
        Ok(())
    }
}

fn non_empty(text: Option<&str>) -> Option<&str> {
    text.filter(|t| !t.is_empty())
}

/// The event's subject, or why there is none to compare.
fn subject_of(event: &Value) -> Result<&str, String> {
    match member(event, "subject") {
        Some(Value::String(subject)) => Ok(subject),
        Some(Value::Null) => Err("subject is null".to_owned()),
        Some(other) => Err(format!("subject is {}, not a string", describe(other))),
        None => Err("subject is missing".to_owned()),
    }
}

impl Schema {
    fn event_type_attribute(self) -> &'static str {
        match self {
            Schema::EventGrid => "eventType",
            Schema::CloudEvents => "type",
        }
    }
}

// ---------------------------------------------------------------------------
// Verdict and FilterProblem
// ---------------------------------------------------------------------------

impl Verdict {
    fn miss(condition: impl Into<String>, detail: impl Into<String>) -> Verdict {
        Verdict::Miss { condition: condition.into(), detail: detail.into() }
    }

    /// Whether the event passed.
    pub fn is_match(&self) -> bool {
        matches!(self, Verdict::Match)
    }

    /// The failed condition, for a miss.
    pub fn condition(&self) -> Option<&str> {
        match self {
            Verdict::Match => None,
            Verdict::Miss { condition, .. } => Some(condition),
        }
    }

    /// The event's side of the failed condition, for a miss.
    pub fn detail(&self) -> Option<&str> {
        match self {
            Verdict::Match => None,
            Verdict::Miss { detail, .. } => Some(detail),
        }
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Verdict::Match => f.write_str("match"),
            Verdict::Miss { condition, detail } => write!(f, "miss: {condition}: {detail}"),
        }
    }
}

impl fmt::Display for FilterProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

impl std::error::Error for FilterProblem {}

// ---------------------------------------------------------------------------
// Operator
// ---------------------------------------------------------------------------

/// What an operator takes as operands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OperandShape {
    /// `IsNullOrUndefined`, `IsNotNull`: nothing.
    Nothing,
    /// `value`: one number or boolean.
    Single,
    /// `values`: a list of numbers or strings.
    List,
    /// `values`: a list of `[low, high]` number pairs.
    Ranges,
}

/// The JSON type an operator compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Number,
    String,
    Boolean,
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::Number => "number",
            Kind::String => "string",
            Kind::Boolean => "boolean",
        })
    }
}

impl Operator {
    /// Every operator, in the order the docs list them.
    pub const ALL: [Operator; 19] = [
        Operator::NumberIn,
        Operator::NumberNotIn,
        Operator::NumberLessThan,
        Operator::NumberGreaterThan,
        Operator::NumberLessThanOrEquals,
        Operator::NumberGreaterThanOrEquals,
        Operator::NumberInRange,
        Operator::NumberNotInRange,
        Operator::BoolEquals,
        Operator::StringContains,
        Operator::StringNotContains,
        Operator::StringBeginsWith,
        Operator::StringNotBeginsWith,
        Operator::StringEndsWith,
        Operator::StringNotEndsWith,
        Operator::StringIn,
        Operator::StringNotIn,
        Operator::IsNullOrUndefined,
        Operator::IsNotNull,
    ];

    /// The name used in filters, e.g. `NumberIn`.
    pub const fn name(self) -> &'static str {
        match self {
            Operator::NumberIn => "NumberIn",
            Operator::NumberNotIn => "NumberNotIn",
            Operator::NumberLessThan => "NumberLessThan",
            Operator::NumberGreaterThan => "NumberGreaterThan",
            Operator::NumberLessThanOrEquals => "NumberLessThanOrEquals",
            Operator::NumberGreaterThanOrEquals => "NumberGreaterThanOrEquals",
            Operator::NumberInRange => "NumberInRange",
            Operator::NumberNotInRange => "NumberNotInRange",
            Operator::BoolEquals => "BoolEquals",
            Operator::StringContains => "StringContains",
            Operator::StringNotContains => "StringNotContains",
            Operator::StringBeginsWith => "StringBeginsWith",
            Operator::StringNotBeginsWith => "StringNotBeginsWith",
            Operator::StringEndsWith => "StringEndsWith",
            Operator::StringNotEndsWith => "StringNotEndsWith",
            Operator::StringIn => "StringIn",
            Operator::StringNotIn => "StringNotIn",
            Operator::IsNullOrUndefined => "IsNullOrUndefined",
            Operator::IsNotNull => "IsNotNull",
        }
    }

    /// Negated operators pass when no operand hits (`NumberNotIn`,
    /// `StringNotContains`, …); they are the complement of their positive twin.
    pub fn is_negated(self) -> bool {
        matches!(
            self,
            Operator::NumberNotIn
                | Operator::NumberNotInRange
                | Operator::StringNotContains
                | Operator::StringNotBeginsWith
                | Operator::StringNotEndsWith
                | Operator::StringNotIn
        )
    }

    /// The docs' list of operators that pass when the key is absent.
    fn matches_missing_key(self) -> bool {
        matches!(self, Operator::NumberNotIn | Operator::StringNotIn)
    }

    fn operand_shape(self) -> OperandShape {
        match self {
            Operator::IsNullOrUndefined | Operator::IsNotNull => OperandShape::Nothing,
            Operator::NumberLessThan
            | Operator::NumberGreaterThan
            | Operator::NumberLessThanOrEquals
            | Operator::NumberGreaterThanOrEquals
            | Operator::BoolEquals => OperandShape::Single,
            Operator::NumberInRange | Operator::NumberNotInRange => OperandShape::Ranges,
            Operator::NumberIn
            | Operator::NumberNotIn
            | Operator::StringContains
            | Operator::StringNotContains
            | Operator::StringBeginsWith
            | Operator::StringNotBeginsWith
            | Operator::StringEndsWith
            | Operator::StringNotEndsWith
            | Operator::StringIn
            | Operator::StringNotIn => OperandShape::List,
        }
    }

    fn operand_kind(self) -> Option<Kind> {
        match self {
            Operator::IsNullOrUndefined | Operator::IsNotNull => None,
            Operator::BoolEquals => Some(Kind::Boolean),
            Operator::StringContains
            | Operator::StringNotContains
            | Operator::StringBeginsWith
            | Operator::StringNotBeginsWith
            | Operator::StringEndsWith
            | Operator::StringNotEndsWith
            | Operator::StringIn
            | Operator::StringNotIn => Some(Kind::String),
            Operator::NumberIn
            | Operator::NumberNotIn
            | Operator::NumberLessThan
            | Operator::NumberGreaterThan
            | Operator::NumberLessThanOrEquals
            | Operator::NumberGreaterThanOrEquals
            | Operator::NumberInRange
            | Operator::NumberNotInRange => Some(Kind::Number),
        }
    }
}

impl fmt::Display for Operator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// [`Operator::ALL`]'s names, for the unknown-operator message.
const OPERATOR_NAMES: [&str; 19] = {
    let mut names = [""; 19];
    let mut index = 0;
    while index < names.len() {
        names[index] = Operator::ALL[index].name();
        index += 1;
    }
    names
};

impl<'de> Deserialize<'de> for Operator {
    /// Read ignoring case, as ARM resource providers read enum values: a
    /// template's `stringin` is `StringIn`, not an error.
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = String::deserialize(deserializer)?;
        Operator::ALL
            .into_iter()
            .find(|operator| operator.name().eq_ignore_ascii_case(&name))
            .ok_or_else(|| serde::de::Error::unknown_variant(&name, &OPERATOR_NAMES))
    }
}

// ---------------------------------------------------------------------------
// AdvancedFilter: construction, validation, evaluation
// ---------------------------------------------------------------------------

impl AdvancedFilter {
    /// A filter with a `values` list (every operator but the single-operand
    /// and null-check ones).
    pub fn with_values(operator_type: Operator, key: impl Into<String>, values: Vec<Value>) -> Self {
        AdvancedFilter { operator_type, key: key.into(), value: None, values: Some(Value::Array(values)) }
    }

    /// A filter with a single `value` (`NumberLessThan`…, `BoolEquals`).
    pub fn with_value(operator_type: Operator, key: impl Into<String>, value: Value) -> Self {
        AdvancedFilter { operator_type, key: key.into(), value: Some(value), values: None }
    }

    /// A filter without operands (`IsNullOrUndefined`, `IsNotNull`).
    pub fn without_operands(operator_type: Operator, key: impl Into<String>) -> Self {
        AdvancedFilter { operator_type, key: key.into(), value: None, values: None }
    }

    fn condition_name(&self, index: usize) -> String {
        format!("advancedFilters[{index}] {} {}", self.operator_type, self.key)
    }

    /// How many values this filter spends of the subscription-wide budget.
    fn value_count(&self) -> usize {
        match self.operator_type.operand_shape() {
            OperandShape::Nothing => 0,
            OperandShape::Single => usize::from(self.value.is_some()),
            OperandShape::List | OperandShape::Ranges => match &self.values {
                Some(Value::Array(items)) => items.len(),
                Some(_) => 1,
                None => 0,
            },
        }
    }

    fn problems(&self, index: usize) -> Vec<FilterProblem> {
        let mut sink = ProblemSink::new(index);
        self.key_problems(&mut sink);
        if self.operator_type.operand_shape() != OperandShape::Nothing
            && let Err(problems) = self.compile(index)
        {
            sink.problems.extend(problems);
        }
        self.string_length_problems(&mut sink);
        sink.problems
    }

    /// Event Grid has no escape for `.` in keys and no depth limit (the
    /// 2018 docs' two levels are gone), so only empty segments are refused.
    fn key_problems(&self, sink: &mut ProblemSink) {
        if self.key.is_empty() {
            sink.push(".key", "key must not be empty".to_owned());
        } else if self.key.split('.').any(str::is_empty) {
            sink.push(".key", format!("key {} has an empty segment", quote(&self.key)));
        }
    }

    /// The operand field(s) this operator does not read, if present.
    fn ignored_operand_warnings(&self, sink: &mut ProblemSink) {
        let operator = self.operator_type;
        let (reads_value, reads_values) = match operator.operand_shape() {
            OperandShape::Nothing => (false, false),
            OperandShape::Single => (true, false),
            OperandShape::List | OperandShape::Ranges => (false, true),
        };
        if self.value.is_some() && !reads_value {
            sink.push(".value", format!("ignored: {operator} does not read `value`"));
        }
        if self.values.is_some() && !reads_values {
            sink.push(".values", format!("ignored: {operator} does not read `values`"));
        }
    }

    fn string_length_problems(&self, sink: &mut ProblemSink) {
        if self.operator_type.operand_kind() != Some(Kind::String) {
            return; // other operators already report string operands as wrong types
        }
        let Some(Value::Array(items)) = &self.values else {
            return;
        };
        for (index, item) in items.iter().enumerate() {
            let Value::String(text) = item else { continue };
            let length = text.chars().count();
            if length > MAX_STRING_VALUE_CHARS {
                sink.push(
                    &format!(".values[{index}]"),
                    format!("string value is {length} characters; at most {MAX_STRING_VALUE_CHARS} are allowed"),
                );
            }
        }
    }

    /// Evaluate this filter alone; `Err` carries the miss detail.
    fn check(&self, event: &Value, schema: Schema, arrays_enabled: bool) -> Result<(), String> {
        let lookup = resolve_key(event, &self.key, schema);
        match self.operator_type {
            Operator::IsNullOrUndefined => return self.check_null_or_undefined(&lookup),
            Operator::IsNotNull => return self.check_not_null(&lookup),
            _ => {}
        }
        let predicate = self.compile(0).map_err(|problems| invalid_filter_detail(&problems))?;
        let value = match lookup {
            Lookup::Found(value) => value,
            Lookup::Missing { .. } if self.operator_type.matches_missing_key() => return Ok(()),
            Lookup::Missing { note } => return Err(self.missing_detail(note)),
        };
        let negated = self.operator_type.is_negated();
        match value {
            Value::Array(items) if arrays_enabled => predicate.check_elements(value, items, negated),
            Value::Array(_) => Err(format!(
                "{} is an array {}; set enableAdvancedFilteringOnArrays to filter on its elements",
                self.key,
                show(value)
            )),
            scalar => match Candidate::of_kind(scalar, predicate.kind()) {
                Some(candidate) => predicate.check_scalar(&candidate, negated),
                None => Err(format!("{} is {}, not a {}", self.key, describe(scalar), predicate.kind())),
            },
        }
    }

    fn check_null_or_undefined(&self, lookup: &Lookup<'_>) -> Result<(), String> {
        match lookup {
            Lookup::Missing { .. } | Lookup::Found(Value::Null) => Ok(()),
            Lookup::Found(value) => Err(format!("{} is {}", self.key, show(value))),
        }
    }

    fn check_not_null(&self, lookup: &Lookup<'_>) -> Result<(), String> {
        match lookup {
            Lookup::Missing { note } => Err(self.missing_detail(*note)),
            Lookup::Found(Value::Null) => Err(format!("{} is null", self.key)),
            Lookup::Found(_) => Ok(()),
        }
    }

    fn missing_detail(&self, note: Option<&str>) -> String {
        match note {
            Some(note) => format!("{} is missing ({note})", self.key),
            None => format!("{} is missing", self.key),
        }
    }

    /// Turn the operands into a typed predicate, or list what is wrong with
    /// them. `index` only prefixes the problem paths.
    fn compile(&self, index: usize) -> Result<Predicate<'_>, Vec<FilterProblem>> {
        let mut sink = ProblemSink::new(index);
        let test = self.compile_test(&mut sink);
        match test {
            Some(test) if sink.problems.is_empty() => Ok(Predicate { test }),
            _ => Err(sink.problems),
        }
    }

    fn compile_test(&self, sink: &mut ProblemSink) -> Option<Test<'_>> {
        let test = match self.operator_type {
            Operator::NumberIn | Operator::NumberNotIn => Test::NumberIn(self.number_list(sink)?),
            Operator::NumberLessThan => self.comparison(Comparison::Less, sink)?,
            Operator::NumberLessThanOrEquals => self.comparison(Comparison::LessOrEqual, sink)?,
            Operator::NumberGreaterThan => self.comparison(Comparison::Greater, sink)?,
            Operator::NumberGreaterThanOrEquals => self.comparison(Comparison::GreaterOrEqual, sink)?,
            Operator::NumberInRange | Operator::NumberNotInRange => Test::InRange(self.range_list(sink)?),
            Operator::BoolEquals => Test::BoolEquals(self.single_bool(sink)?),
            Operator::StringContains | Operator::StringNotContains => {
                Test::Text(TextRelation::Contains, self.string_list(sink)?)
            }
            Operator::StringBeginsWith | Operator::StringNotBeginsWith => {
                Test::Text(TextRelation::BeginsWith, self.string_list(sink)?)
            }
            Operator::StringEndsWith | Operator::StringNotEndsWith => {
                Test::Text(TextRelation::EndsWith, self.string_list(sink)?)
            }
            Operator::StringIn | Operator::StringNotIn => Test::Text(TextRelation::Equals, self.string_list(sink)?),
            Operator::IsNullOrUndefined | Operator::IsNotNull => return None,
        };
        Some(test)
    }

    fn comparison(&self, comparison: Comparison, sink: &mut ProblemSink) -> Option<Test<'_>> {
        let (number, source) = self.single_number(sink)?;
        Some(Test::Compare(comparison, number, source))
    }

    /// The `value` of a single-operand operator (`values` is not read).
    fn single_operand(&self, sink: &mut ProblemSink) -> Option<&Value> {
        let operator = self.operator_type;
        if self.value.is_none() {
            let hint = if self.values.is_some() { " (a single operand, not a `values` list)" } else { "" };
            sink.push(".value", format!("{operator} needs a `value`{hint}"));
        }
        self.value.as_ref()
    }

    /// The `values` list of a list or range operator (`value` is not read).
    fn operand_list(&self, sink: &mut ProblemSink) -> Option<&[Value]> {
        let operator = self.operator_type;
        match &self.values {
            None => {
                let hint = if self.value.is_some() { " (a list, not a single `value`)" } else { "" };
                sink.push(".values", format!("{operator} needs `values`{hint}"));
                None
            }
            Some(Value::Array(items)) if items.is_empty() => {
                sink.push(".values", format!("{operator} needs at least one value"));
                None
            }
            Some(Value::Array(items)) => Some(items),
            Some(other) => {
                sink.push(".values", format!("{operator} needs `values` to be a list; found {}", describe(other)));
                None
            }
        }
    }

    fn single_number(&self, sink: &mut ProblemSink) -> Option<(Decimal, &Value)> {
        let operand = self.single_operand(sink)?;
        let number = Decimal::from_value(operand);
        if number.is_none() {
            sink.push(".value", format!("{} needs a number; found {}", self.operator_type, describe(operand)));
        }
        Some((number?, operand))
    }

    fn single_bool(&self, sink: &mut ProblemSink) -> Option<bool> {
        let operand = self.single_operand(sink)?;
        let flag = operand.as_bool();
        if flag.is_none() {
            sink.push(".value", format!("{} needs true or false; found {}", self.operator_type, describe(operand)));
        }
        flag
    }

    fn number_list(&self, sink: &mut ProblemSink) -> Option<Vec<(Decimal, &Value)>> {
        let items = self.operand_list(sink)?;
        let mut numbers = Vec::with_capacity(items.len());
        for (index, item) in items.iter().enumerate() {
            match Decimal::from_value(item) {
                Some(number) => numbers.push((number, item)),
                None => sink.push(
                    &format!(".values[{index}]"),
                    format!("{} needs numbers; found {}", self.operator_type, describe(item)),
                ),
            }
        }
        Some(numbers)
    }

    fn string_list(&self, sink: &mut ProblemSink) -> Option<Vec<(String, &Value)>> {
        let items = self.operand_list(sink)?;
        let mut strings = Vec::with_capacity(items.len());
        for (index, item) in items.iter().enumerate() {
            match item {
                Value::String(text) => strings.push((fold_case(text), item)),
                other => sink.push(
                    &format!(".values[{index}]"),
                    format!("{} needs strings; found {}", self.operator_type, describe(other)),
                ),
            }
        }
        Some(strings)
    }

    fn range_list(&self, sink: &mut ProblemSink) -> Option<Vec<NumberRange<'_>>> {
        let items = self.operand_list(sink)?;
        let mut ranges = Vec::with_capacity(items.len());
        for (index, item) in items.iter().enumerate() {
            match NumberRange::parse(item) {
                Ok(range) => ranges.push(range),
                Err(message) => sink.push(&format!(".values[{index}]"), message),
            }
        }
        Some(ranges)
    }
}

fn invalid_filter_detail(problems: &[FilterProblem]) -> String {
    match problems.first() {
        Some(problem) => format!("the filter is invalid ({})", problem.message),
        None => "the filter is invalid".to_owned(),
    }
}

/// Collects problems under the path `advancedFilters[i]`.
struct ProblemSink {
    prefix: String,
    problems: Vec<FilterProblem>,
}

impl ProblemSink {
    fn new(filter_index: usize) -> Self {
        ProblemSink { prefix: format!("advancedFilters[{filter_index}]"), problems: Vec::new() }
    }

    fn push(&mut self, suffix: &str, message: String) {
        self.problems.push(FilterProblem { path: format!("{}{suffix}", self.prefix), message });
    }
}

// ---------------------------------------------------------------------------
// Predicates: typed operands and how an event value is tested against them
// ---------------------------------------------------------------------------

/// The positive form of an advanced filter with typed operands; negated
/// operators use the same predicate and invert the outcome.
struct Predicate<'f> {
    test: Test<'f>,
}

enum Test<'f> {
    NumberIn(Vec<(Decimal, &'f Value)>),
    Compare(Comparison, Decimal, &'f Value),
    InRange(Vec<NumberRange<'f>>),
    BoolEquals(bool),
    /// Case-folded operands with their original values for messages.
    Text(TextRelation, Vec<(String, &'f Value)>),
}

#[derive(Debug, Clone, Copy)]
enum Comparison {
    Less,
    LessOrEqual,
    Greater,
    GreaterOrEqual,
}

#[derive(Debug, Clone, Copy)]
enum TextRelation {
    Contains,
    BeginsWith,
    EndsWith,
    Equals,
}

/// An inclusive `[low, high]` range.
struct NumberRange<'f> {
    low: Decimal,
    high: Decimal,
    source: &'f Value,
}

impl<'f> NumberRange<'f> {
    fn parse(item: &'f Value) -> Result<Self, String> {
        let bounds = match item {
            Value::Array(bounds) if bounds.len() == 2 => bounds,
            other => {
                return Err(format!("a range must be [low, high]; found {}", describe(other)));
            }
        };
        let (Some(low), Some(high)) = (Decimal::from_value(&bounds[0]), Decimal::from_value(&bounds[1])) else {
            return Err(format!("range bounds must be numbers; found {}", show(item)));
        };
        if low > high {
            return Err(format!("range {} has low > high", show(item)));
        }
        Ok(NumberRange { low, high, source: item })
    }

    fn contains(&self, number: &Decimal) -> bool {
        *number >= self.low && *number <= self.high
    }
}

impl Comparison {
    fn holds(self, ordering: Ordering) -> bool {
        match self {
            Comparison::Less => ordering == Ordering::Less,
            Comparison::LessOrEqual => ordering != Ordering::Greater,
            Comparison::Greater => ordering == Ordering::Greater,
            Comparison::GreaterOrEqual => ordering != Ordering::Less,
        }
    }

    fn symbol(self) -> &'static str {
        match self {
            Comparison::Less => "<",
            Comparison::LessOrEqual => "<=",
            Comparison::Greater => ">",
            Comparison::GreaterOrEqual => ">=",
        }
    }
}

impl TextRelation {
    fn holds(self, folded_value: &str, folded_operand: &str) -> bool {
        match self {
            TextRelation::Contains => folded_value.contains(folded_operand),
            TextRelation::BeginsWith => folded_value.starts_with(folded_operand),
            TextRelation::EndsWith => folded_value.ends_with(folded_operand),
            TextRelation::Equals => folded_value == folded_operand,
        }
    }

    fn verb(self) -> &'static str {
        match self {
            TextRelation::Contains => "contains",
            TextRelation::BeginsWith => "begins with",
            TextRelation::EndsWith => "ends with",
            TextRelation::Equals => "equals",
        }
    }
}

impl Predicate<'_> {
    fn kind(&self) -> Kind {
        match self.test {
            Test::NumberIn(_) | Test::Compare(..) | Test::InRange(_) => Kind::Number,
            Test::BoolEquals(_) => Kind::Boolean,
            Test::Text(..) => Kind::String,
        }
    }

    /// The index of the first operand the candidate satisfies, if any.
    fn first_hit(&self, candidate: &Candidate<'_>) -> Option<usize> {
        match (&self.test, &candidate.form) {
            (Test::NumberIn(operands), Form::Number(number)) => {
                operands.iter().position(|(operand, _)| operand == number)
            }
            (Test::Compare(comparison, operand, _), Form::Number(number)) => {
                comparison.holds(number.cmp(operand)).then_some(0)
            }
            (Test::InRange(ranges), Form::Number(number)) => ranges.iter().position(|range| range.contains(number)),
            (Test::BoolEquals(operand), Form::Bool(flag)) => (operand == flag).then_some(0),
            (Test::Text(relation, operands), Form::Text(text)) => {
                operands.iter().position(|(operand, _)| relation.holds(text, operand))
            }
            _ => None,
        }
    }

    fn check_scalar(&self, candidate: &Candidate<'_>, negated: bool) -> Result<(), String> {
        let shown = show(candidate.source);
        match (negated, self.first_hit(candidate)) {
            (false, Some(_)) | (true, None) => Ok(()),
            (false, None) => Err(format!("{shown} {}", self.describe_failure())),
            (true, Some(hit)) => Err(format!("{shown} {}", self.describe_hit(hit))),
        }
    }

    /// Array semantics (with enableAdvancedFilteringOnArrays): elements of
    /// another type are ignored; positive operators need one element to hit,
    /// negated operators need none to.
    fn check_elements(&self, array: &Value, items: &[Value], negated: bool) -> Result<(), String> {
        let kind = self.kind();
        let hit = items
            .iter()
            .filter_map(|item| Candidate::of_kind(item, kind))
            .find_map(|candidate| self.first_hit(&candidate).map(|hit| (candidate, hit)));
        match (negated, hit) {
            (false, Some(_)) | (true, None) => Ok(()),
            (false, None) => Err(format!("no {kind} element of {} {}", show(array), self.describe_success())),
            (true, Some((candidate, hit))) => {
                Err(format!("element {} of {} {}", show(candidate.source), show(array), self.describe_hit(hit)))
            }
        }
    }

    /// What a value that passes the positive operator satisfies.
    fn describe_success(&self) -> String {
        match &self.test {
            Test::NumberIn(operands) => {
                format!("is one of {}", show_operands(operands.iter().map(|o| o.1)))
            }
            Test::Compare(comparison, _, source) => {
                format!("is {} {}", comparison.symbol(), show(source))
            }
            Test::InRange(ranges) => format!("is in one of {}", show_operands(ranges.iter().map(|r| r.source))),
            Test::BoolEquals(operand) => format!("is {operand}"),
            Test::Text(TextRelation::Equals, operands) => {
                format!("is one of {}", show_operands(operands.iter().map(|o| o.1)))
            }
            Test::Text(relation, operands) => {
                format!("{} one of {}", relation.verb(), show_operands(operands.iter().map(|o| o.1)))
            }
        }
    }

    /// Why a value fails the positive operator.
    fn describe_failure(&self) -> String {
        match &self.test {
            Test::NumberIn(operands) => format!("is not one of {}", show_operands(operands.iter().map(|o| o.1))),
            Test::Compare(comparison, _, source) => {
                format!("is not {} {}", comparison.symbol(), show(source))
            }
            Test::InRange(ranges) => format!("is not in any of {}", show_operands(ranges.iter().map(|r| r.source))),
            Test::BoolEquals(operand) => format!("is not {operand}"),
            Test::Text(TextRelation::Equals, operands) => {
                format!("is not one of {}", show_operands(operands.iter().map(|o| o.1)))
            }
            Test::Text(relation, operands) => {
                format!("{} none of {}", relation.verb(), show_operands(operands.iter().map(|o| o.1)))
            }
        }
    }

    /// Which operand a value hit (why a negated operator fails).
    fn describe_hit(&self, hit: usize) -> String {
        match &self.test {
            Test::NumberIn(operands) => match operands.get(hit) {
                Some((_, source)) => format!("equals {}", show(source)),
                None => self.describe_success(),
            },
            Test::InRange(ranges) => match ranges.get(hit) {
                Some(range) => format!("is in {}", show(range.source)),
                None => self.describe_success(),
            },
            Test::Text(relation, operands) => match operands.get(hit) {
                Some((_, source)) => format!("{} {}", relation.verb(), show(source)),
                None => self.describe_success(),
            },
            Test::Compare(..) | Test::BoolEquals(_) => self.describe_success(),
        }
    }
}

/// An event value of the type an operator compares, ready for comparison.
struct Candidate<'e> {
    source: &'e Value,
    form: Form,
}

enum Form {
    Number(Decimal),
    Text(String),
    Bool(bool),
}

impl<'e> Candidate<'e> {
    /// `None` when the value is not of `kind` (it is then ignored or fails).
    fn of_kind(value: &'e Value, kind: Kind) -> Option<Self> {
        let form = match (kind, value) {
            (Kind::Number, Value::Number(_)) => Form::Number(Decimal::from_value(value)?),
            (Kind::String, Value::String(text)) => Form::Text(fold_case(text)),
            (Kind::Boolean, Value::Bool(flag)) => Form::Bool(*flag),
            _ => return None,
        };
        Some(Candidate { source: value, form })
    }
}

// ---------------------------------------------------------------------------
// Key resolution
// ---------------------------------------------------------------------------

/// The outcome of looking a filter key up in an event. `Found(Null)` is a key
/// present with a `null` value, which is not the same as missing.
enum Lookup<'e> {
    Found(&'e Value),
    Missing { note: Option<&'static str> },
}

/// Resolve a dotted key (`data.a.b`, `Subject`, `comexampleextension1`).
///
/// The first segment names an envelope attribute (Event Grid schema: only the
/// documented keys; CloudEvents: any top-level attribute); the rest walk
/// nested objects. Every segment matches a member exactly if one exists, and
/// otherwise ignoring case, because the docs spell keys both ways (`Subject`,
/// `data.key1`).
fn resolve_key<'e>(event: &'e Value, key: &str, schema: Schema) -> Lookup<'e> {
    let mut segments = key.split('.');
    let first = segments.next().unwrap_or_default();
    let attribute = match schema {
        Schema::EventGrid => match EVENT_GRID_KEYS.iter().find(|name| name.eq_ignore_ascii_case(first)) {
            Some(name) => *name,
            None => {
                return Lookup::Missing {
                    note: Some("Event Grid schema keys are id, topic, subject, eventType, dataVersion and data.…"),
                };
            }
        },
        Schema::CloudEvents => first,
    };
    let mut current = member(event, attribute);
    for segment in segments {
        current = current.and_then(|value| member(value, segment));
    }
    match current {
        Some(value) => Lookup::Found(value),
        None => Lookup::Missing { note: None },
    }
}

/// An object member by exact name, else by name ignoring case.
fn member<'e>(value: &'e Value, name: &str) -> Option<&'e Value> {
    let object = value.as_object()?;
    object
        .get(name)
        .or_else(|| object.iter().find(|(candidate, _)| equal_ignoring_case(candidate, name)).map(|(_, value)| value))
}

// ---------------------------------------------------------------------------
// Case folding
// ---------------------------------------------------------------------------

/// Case-fold for comparison: upper-case then lower-case each character, so
/// that characters with several lower-case forms (`σ`/`ς`) compare equal.
fn fold_case(text: &str) -> String {
    text.chars().flat_map(char::to_uppercase).flat_map(char::to_lowercase).collect()
}

fn equal_ignoring_case(left: &str, right: &str) -> bool {
    left == right || fold_case(left) == fold_case(right)
}

// ---------------------------------------------------------------------------
// Exact decimal numbers
// ---------------------------------------------------------------------------

/// A JSON number as an exact decimal: `±0.d₁d₂…dₙ × 10^exponent`.
///
/// Built from the number's decimal text (what `serde_json` prints), so
/// `0.1`, `0.10` and `1e-1` are equal, `0.30000000000000004` differs from
/// `0.3`, and integers beyond 2⁵³ keep every digit.
///
/// Invariant: `digits` has no leading or trailing zeros; zero is
/// `{negative: false, digits: [], exponent: 0}`. The derived equality is
/// therefore numeric equality.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Decimal {
    negative: bool,
    digits: Vec<u8>,
    exponent: i64,
}

impl Decimal {
    fn from_value(value: &Value) -> Option<Decimal> {
        match value {
            Value::Number(number) => Decimal::from_number(number),
            _ => None,
        }
    }

    fn from_number(number: &Number) -> Option<Decimal> {
        Decimal::parse(&number.to_string())
    }

    /// Parse JSON number syntax (also accepting a leading `+` and a bare
    /// `.5`-style mantissa). `None` for anything else or an absurd exponent.
    fn parse(text: &str) -> Option<Decimal> {
        let (negative, unsigned) = match text.as_bytes().first()? {
            b'-' => (true, &text[1..]),
            b'+' => (false, &text[1..]),
            _ => (false, text),
        };
        let (mantissa, exponent_text) = match unsigned.find(['e', 'E']) {
            Some(at) => (&unsigned[..at], Some(&unsigned[at + 1..])),
            None => (unsigned, None),
        };
        let (integer, fraction) = mantissa.split_once('.').unwrap_or((mantissa, ""));
        let all_digits = |part: &str| part.bytes().all(|b| b.is_ascii_digit());
        if integer.len() + fraction.len() == 0 || !all_digits(integer) || !all_digits(fraction) {
            return None;
        }
        let exponent = match exponent_text {
            Some(exponent) => parse_exponent(exponent)?,
            None => 0,
        };
        let digits: Vec<u8> = integer.bytes().chain(fraction.bytes()).map(|b| b - b'0').collect();
        let point = i64::try_from(integer.len()).ok()?.checked_add(exponent)?;
        Decimal::normalised(negative, digits, point)
    }

    /// Strip leading zeros (moving the point) and trailing zeros.
    fn normalised(negative: bool, mut digits: Vec<u8>, point: i64) -> Option<Decimal> {
        let leading_zeros = digits.iter().take_while(|&&d| d == 0).count();
        if leading_zeros == digits.len() {
            return Some(Decimal { negative: false, digits: Vec::new(), exponent: 0 });
        }
        let trailing_zeros = digits.iter().rev().take_while(|&&d| d == 0).count();
        digits.truncate(digits.len() - trailing_zeros);
        digits.drain(..leading_zeros);
        let exponent = point.checked_sub(i64::try_from(leading_zeros).ok()?)?;
        Some(Decimal { negative, digits, exponent })
    }

    fn is_zero(&self) -> bool {
        self.digits.is_empty()
    }

    fn signum(&self) -> i8 {
        match (self.is_zero(), self.negative) {
            (true, _) => 0,
            (false, true) => -1,
            (false, false) => 1,
        }
    }

    fn cmp_magnitude(&self, other: &Decimal) -> Ordering {
        self.exponent.cmp(&other.exponent).then_with(|| self.digits.cmp(&other.digits))
    }
}

fn parse_exponent(text: &str) -> Option<i64> {
    let (negative, digits) = match text.as_bytes().first()? {
        b'-' => (true, &text[1..]),
        b'+' => (false, &text[1..]),
        _ => (false, text),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let magnitude: i64 = digits.parse().ok()?;
    Some(if negative { -magnitude } else { magnitude })
}

impl Ord for Decimal {
    fn cmp(&self, other: &Self) -> Ordering {
        let by_sign = self.signum().cmp(&other.signum());
        if by_sign != Ordering::Equal || self.is_zero() {
            return by_sign;
        }
        let by_magnitude = self.cmp_magnitude(other);
        if self.negative { by_magnitude.reverse() } else { by_magnitude }
    }
}

impl PartialOrd for Decimal {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

// ---------------------------------------------------------------------------
// Rendering values for messages
// ---------------------------------------------------------------------------

/// Compact JSON with `", "` between array items, cut to a readable length.
fn show(value: &Value) -> String {
    let mut rendered = String::new();
    render(value, &mut rendered);
    truncate(rendered)
}

fn render(value: &Value, out: &mut String) {
    match value {
        Value::Array(items) => {
            out.push('[');
            for (index, item) in items.iter().enumerate() {
                if index > 0 {
                    out.push_str(", ");
                }
                render(item, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

fn show_operands<'a>(operands: impl Iterator<Item = &'a Value>) -> String {
    let items: Vec<String> = operands.map(show).collect();
    truncate(format!("[{}]", items.join(", ")))
}

fn truncate(text: String) -> String {
    match text.char_indices().nth(MAX_SHOWN_CHARS) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text,
    }
}

/// A JSON-quoted string, e.g. `"/a/b.txt"`.
fn quote(text: &str) -> String {
    show(&Value::String(text.to_owned()))
}

/// A value with its type, e.g. `a string "5"`, `null`.
fn describe(value: &Value) -> String {
    let article = match value {
        Value::Null => return "null".to_owned(),
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    };
    format!("{article} {}", show(value))
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    const CASES_PATH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/vectors/filters/cases.json");

    #[derive(Deserialize)]
    struct Case {
        name: String,
        schema: Schema,
        event: Value,
        filter: Value,
        expected: bool,
    }

    fn load_cases() -> Vec<Case> {
        let text =
            std::fs::read_to_string(CASES_PATH).unwrap_or_else(|error| panic!("cannot read {CASES_PATH}: {error}"));
        serde_json::from_str(&text).unwrap_or_else(|error| panic!("cannot parse {CASES_PATH}: {error}"))
    }

    // ---- shared vectors ----------------------------------------------------

    #[test]
    fn every_shared_vector_case_passes() {
        let cases = load_cases();
        assert_eq!(cases.len(), 76, "cases.json changed size; update this count deliberately");
        let mut failures = Vec::new();
        for case in &cases {
            let filter: Filter = match serde_json::from_value(case.filter.clone()) {
                Ok(filter) => filter,
                Err(error) => {
                    failures.push(format!("{}: filter does not deserialise: {error}", case.name));
                    continue;
                }
            };
            let verdict = filter.evaluate(&case.event, case.schema);
            if verdict.is_match() != case.expected {
                failures.push(format!("{}: expected {}, got {verdict}", case.name, case.expected));
            }
        }
        assert!(failures.is_empty(), "{} of {} cases failed:\n{}", failures.len(), cases.len(), failures.join("\n"));
    }

    #[test]
    fn every_shared_vector_filter_is_acceptable() {
        let mut failures = Vec::new();
        for case in load_cases() {
            let Ok(filter) = serde_json::from_value::<Filter>(case.filter) else {
                continue;
            };
            for problem in filter.problems() {
                failures.push(format!("{}: {problem}", case.name));
            }
        }
        assert!(failures.is_empty(), "problems:\n{}", failures.join("\n"));
    }

    // ---- helpers -------------------------------------------------------------

    fn event_with_data(data: Value) -> Value {
        json!({
            "id": "1",
            "topic": "/subscriptions/x",
            "subject": "/a/b.txt",
            "eventType": "Microsoft.Storage.BlobDeleted",
            "eventTime": "2024-01-01T00:00:00Z",
            "dataVersion": "1.0",
            "data": data,
        })
    }

    fn advanced(filters: Vec<AdvancedFilter>) -> Filter {
        Filter { advanced_filters: filters, ..Filter::default() }
    }

    fn matches_one(filter: AdvancedFilter, data: Value) -> bool {
        advanced(vec![filter]).matches(&event_with_data(data), Schema::EventGrid)
    }

    fn paths(problems: &[FilterProblem]) -> Vec<&str> {
        problems.iter().map(|p| p.path.as_str()).collect()
    }

    // ---- explanations ----------------------------------------------------------

    #[test]
    fn miss_names_failed_advanced_filter_and_actual_value() {
        let filter = advanced(vec![
            AdvancedFilter::with_values(Operator::StringIn, "data.kind", vec![json!("face")]),
            AdvancedFilter::with_value(Operator::NumberGreaterThan, "data.confidence", json!(0.8)),
        ]);
        let verdict = filter.evaluate(&event_with_data(json!({"kind": "face", "confidence": 0.42})), Schema::EventGrid);
        assert_eq!(verdict, Verdict::miss("advancedFilters[1] NumberGreaterThan data.confidence", "0.42 is not > 0.8"));
        assert_eq!(
            verdict.to_string(),
            "miss: advancedFilters[1] NumberGreaterThan data.confidence: 0.42 is not > 0.8"
        );
    }

    #[test]
    fn miss_explains_event_type_subject_and_missing_key() {
        let event = event_with_data(json!({}));
        let types =
            Filter { included_event_types: Some(vec!["Microsoft.Storage.BlobCreated".into()]), ..Filter::default() };
        assert_eq!(
            types.evaluate(&event, Schema::EventGrid),
            Verdict::miss(
                "includedEventTypes",
                "event type Microsoft.Storage.BlobDeleted is not one of [Microsoft.Storage.BlobCreated]"
            )
        );
        let suffix = Filter { subject_ends_with: Some(".md".into()), ..Filter::default() };
        assert_eq!(
            suffix.evaluate(&event, Schema::EventGrid),
            Verdict::miss("subjectEndsWith", r#"subject "/a/b.txt" does not end with ".md""#)
        );
        let missing = advanced(vec![AdvancedFilter::with_values(Operator::StringContains, "data.x", vec![json!("a")])]);
        assert_eq!(
            missing.evaluate(&event, Schema::EventGrid),
            Verdict::miss("advancedFilters[0] StringContains data.x", "data.x is missing")
        );
    }

    #[test]
    fn miss_explains_negated_hits_arrays_and_types() {
        let detail = |filter: AdvancedFilter, arrays: bool, data: Value| {
            let filter = Filter { enable_advanced_filtering_on_arrays: arrays, ..advanced(vec![filter]) };
            filter.evaluate(&event_with_data(data), Schema::EventGrid).detail().map(str::to_owned)
        };
        let not_contains = AdvancedFilter::with_values(Operator::StringNotContains, "data.k", vec![json!("DATA")]);
        assert_eq!(
            detail(not_contains, false, json!({"k": "Azure Data Factory"})).as_deref(),
            Some(r#""Azure Data Factory" contains "DATA""#)
        );
        let not_in = AdvancedFilter::with_values(Operator::NumberNotIn, "data.n", vec![json!(3500)]);
        assert_eq!(
            detail(not_in, true, json!({"n": [1, "x", 3500]})).as_deref(),
            Some(r#"element 3500 of [1, "x", 3500] equals 3500"#)
        );
        let number_in = AdvancedFilter::with_values(Operator::NumberIn, "data.n", vec![json!(2)]);
        assert_eq!(
            detail(number_in.clone(), true, json!({"n": [1, 50]})).as_deref(),
            Some("no number element of [1, 50] is one of [2]")
        );
        assert_eq!(
            detail(number_in.clone(), false, json!({"n": [1, 50]})).as_deref(),
            Some("data.n is an array [1, 50]; set enableAdvancedFilteringOnArrays to filter on its elements")
        );
        assert_eq!(
            detail(number_in, false, json!({"n": "2"})).as_deref(),
            Some(r#"data.n is a string "2", not a number"#)
        );
    }

    #[test]
    fn verdict_serialises_with_a_tag() {
        assert_eq!(serde_json::to_value(Verdict::Match).ok(), Some(json!({"verdict": "match"})));
        assert_eq!(
            serde_json::to_value(Verdict::miss("subjectEndsWith", "d")).ok(),
            Some(json!({"verdict": "miss", "condition": "subjectEndsWith", "detail": "d"}))
        );
    }

    // ---- exact numbers, keys, schemas -------------------------------------------

    #[test]
    fn numbers_compare_exactly() {
        let is_in = |value: Value, operand: Value| {
            matches_one(AdvancedFilter::with_values(Operator::NumberIn, "data.n", vec![operand]), json!({"n": value}))
        };
        assert!(!is_in(json!(0.1 + 0.2), json!(0.3)));
        assert!(is_in(json!(5), json!(5.0)));
        assert!(is_in(serde_json::from_str("0.30").unwrap_or_default(), json!(0.3)));
        assert!(!is_in(json!(9_007_199_254_740_993_u64), json!(9_007_199_254_740_992_u64)));
        assert!(is_in(json!(-0.0), json!(0)));
        let greater = AdvancedFilter::with_value(Operator::NumberGreaterThan, "data.n", json!(-1e300));
        assert!(matches_one(greater, json!({"n": -1e299})));
    }

    #[test]
    fn decimal_parsing_handles_json_number_text() {
        let parse = |text: &str| Decimal::parse(text);
        assert_eq!(parse("1e2"), parse("100"));
        assert_eq!(parse("0.0100"), parse("1E-2"));
        assert_eq!(parse("-0"), parse("0"));
        assert!(parse("1e999999999999999999999").is_none());
        assert!(parse("abc").is_none() && parse("").is_none() && parse("-").is_none() && parse(".").is_none());
        assert!(parse("12.5") < parse("12.50001") && parse("-3") < parse("-2.9"));
    }

    #[test]
    fn event_grid_keys_ignore_case_and_other_envelope_fields_are_missing() {
        let event = event_with_data(json!({"Key1": "v"}));
        let filter = |operator, key: &str| advanced(vec![AdvancedFilter::with_values(operator, key, vec![json!("v")])]);
        assert!(filter(Operator::StringIn, "DATA.key1").matches(&event, Schema::EventGrid));
        assert!(filter(Operator::StringNotIn, "eventTime").matches(&event, Schema::EventGrid));
        assert_eq!(
            filter(Operator::StringIn, "eventTime").evaluate(&event, Schema::EventGrid).detail(),
            Some(
                "eventTime is missing (Event Grid schema keys are id, topic, subject, eventType, dataVersion and data.…)"
            )
        );
    }

    #[test]
    fn cloudevents_uses_type_for_included_event_types() {
        let event = json!({"specversion": "1.0", "type": "com.example.a", "source": "/s", "id": "1"});
        let filter = Filter { included_event_types: Some(vec!["COM.EXAMPLE.A".into()]), ..Filter::default() };
        assert!(filter.matches(&event, Schema::CloudEvents));
        assert!(!filter.matches(&event, Schema::EventGrid));
    }

    #[test]
    fn subject_case_sensitivity_is_honoured() {
        let event = event_with_data(json!({}));
        let mut filter = Filter { subject_begins_with: Some("/A/".into()), ..Filter::default() };
        assert!(filter.matches(&event, Schema::EventGrid));
        filter.is_subject_case_sensitive = true;
        assert_eq!(
            filter.evaluate(&event, Schema::EventGrid).detail(),
            Some(r#"subject "/a/b.txt" does not begin with "/A/" (case-sensitive)"#)
        );
    }

    #[test]
    fn non_object_events_and_invalid_filters_never_panic() {
        let filter = advanced(vec![AdvancedFilter::with_values(Operator::NumberIn, "data.n", vec![json!("x")])]);
        let verdict = filter.evaluate(&event_with_data(json!({"n": 1})), Schema::EventGrid);
        assert_eq!(verdict.detail(), Some(r#"the filter is invalid (NumberIn needs numbers; found a string "x")"#));
        for event in [json!(null), json!([1, 2]), json!("text"), json!({"data": 3})] {
            assert!(!filter.matches(&event, Schema::CloudEvents));
            assert!(Filter::default().matches(&event, Schema::EventGrid));
        }
    }

    // ---- problems() -------------------------------------------------------------

    #[test]
    fn problems_accepts_a_well_formed_filter() {
        let filter = advanced(vec![
            AdvancedFilter::with_values(Operator::NumberInRange, "data.n", vec![json!([1, 2]), json!([3, 3])]),
            AdvancedFilter::with_value(Operator::BoolEquals, "data.b", json!(true)),
            AdvancedFilter::without_operands(Operator::IsNotNull, "data.c"),
        ]);
        assert_eq!(filter.problems(), Vec::new());
    }

    #[test]
    fn problems_reports_limits() {
        let many_filters = advanced(
            (0..26).map(|i| AdvancedFilter::without_operands(Operator::IsNotNull, format!("data.k{i}"))).collect(),
        );
        let problems = many_filters.problems();
        assert_eq!(paths(&problems), ["advancedFilters"]);
        assert_eq!(problems[0].message, "at most 25 advanced filters are allowed; found 26");

        let many_values = advanced(vec![
            AdvancedFilter::with_values(Operator::NumberIn, "data.a", (0..20).map(|i| json!(i)).collect()),
            AdvancedFilter::with_values(Operator::StringIn, "data.b", (0..5).map(|i| json!(i.to_string())).collect()),
            AdvancedFilter::with_value(Operator::NumberLessThan, "data.c", json!(1)),
        ]);
        let problems = many_values.problems();
        assert_eq!(paths(&problems), ["advancedFilters"]);
        assert_eq!(problems[0].message, "at most 25 filter values are allowed across all advanced filters; found 26");

        let long = "x".repeat(MAX_STRING_VALUE_CHARS + 1);
        let long_value = advanced(vec![AdvancedFilter::with_values(
            Operator::StringContains,
            "data.s",
            vec![json!("ok"), json!(long)],
        )]);
        assert_eq!(
            long_value.problems(),
            [FilterProblem {
                path: "advancedFilters[0].values[1]".into(),
                message: "string value is 513 characters; at most 512 are allowed".into(),
            }]
        );
    }

    #[test]
    fn problems_reports_wrong_shapes() {
        let filter = advanced(vec![
            AdvancedFilter::with_value(Operator::NumberIn, "data.a", json!(5)),
            AdvancedFilter::with_values(Operator::NumberGreaterThan, "data.b", vec![json!(5)]),
            AdvancedFilter::with_values(
                Operator::NumberInRange,
                "data.c",
                vec![json!([5, 1]), json!([1]), json!(["1", 2])],
            ),
            AdvancedFilter::with_values(Operator::NumberNotIn, "data.d", vec![json!(1), json!("2")]),
            AdvancedFilter::with_value(Operator::BoolEquals, "data.e", json!("true")),
            AdvancedFilter::with_values(Operator::StringIn, "", vec![]),
            AdvancedFilter::with_value(Operator::IsNullOrUndefined, "data..f", json!(1)),
            AdvancedFilter {
                values: Some(json!("a")),
                ..AdvancedFilter::without_operands(Operator::StringIn, "data.g")
            },
        ]);
        let problems = filter.problems();
        let rendered: Vec<String> = problems.iter().map(ToString::to_string).collect();
        assert_eq!(
            rendered,
            [
                "advancedFilters[0].values: NumberIn needs `values` (a list, not a single `value`)",
                "advancedFilters[1].value: NumberGreaterThan needs a `value` (a single operand, not a `values` list)",
                "advancedFilters[2].values[0]: range [5, 1] has low > high",
                "advancedFilters[2].values[1]: a range must be [low, high]; found an array [1]",
                r#"advancedFilters[2].values[2]: range bounds must be numbers; found ["1", 2]"#,
                r#"advancedFilters[3].values[1]: NumberNotIn needs numbers; found a string "2""#,
                r#"advancedFilters[4].value: BoolEquals needs true or false; found a string "true""#,
                "advancedFilters[5].key: key must not be empty",
                "advancedFilters[5].values: StringIn needs at least one value",
                r#"advancedFilters[6].key: key "data..f" has an empty segment"#,
                r#"advancedFilters[7].values: StringIn needs `values` to be a list; found a string "a""#,
            ]
        );
    }

    // ---- accepted and refused shapes (Event Grid's REST `EventSubscriptionFilter`) --------

    /// What loading a filter gives: refused by serde, refused by `problems()`,
    /// or accepted with these warnings.
    #[derive(Debug, PartialEq)]
    enum Outcome {
        Unreadable(String),
        Refused(Vec<String>),
        Accepted(Vec<String>),
    }

    fn outcome(json: Value) -> Outcome {
        let filter = match serde_json::from_value::<Filter>(json) {
            Ok(filter) => filter,
            Err(error) => return Outcome::Unreadable(error.to_string()),
        };
        let render = |problems: Vec<FilterProblem>| problems.iter().map(ToString::to_string).collect();
        match filter.problems() {
            problems if problems.is_empty() => Outcome::Accepted(render(filter.warnings())),
            problems => Outcome::Refused(render(problems)),
        }
    }

    fn accepted(warnings: &[&str]) -> Outcome {
        Outcome::Accepted(warnings.iter().map(|w| w.to_string()).collect())
    }

    fn refused(problems: &[&str]) -> Outcome {
        Outcome::Refused(problems.iter().map(|p| p.to_string()).collect())
    }

    fn one(filter: Value) -> Value {
        json!({ "advancedFilters": [filter] })
    }

    #[test]
    fn shapes_event_grid_accepts_are_accepted() {
        let long = "x".repeat(MAX_STRING_VALUE_CHARS);
        let twenty_five: Vec<Value> =
            (0..25).map(|i| json!({"operatorType": "NumberIn", "key": format!("data.k{i}"), "values": [i]})).collect();
        let cases = [
            // What `az eventgrid event-subscription show` prints for an unset filter.
            json!({"advancedFilters": null, "enableAdvancedFilteringOnArrays": null, "includedEventTypes": null,
                   "isSubjectCaseSensitive": null, "subjectBeginsWith": null, "subjectEndsWith": null}),
            json!({"includedEventTypes": [], "advancedFilters": [], "subjectBeginsWith": "", "subjectEndsWith": ""}),
            json!({"IncludedEventTypes": ["All"], "IsSubjectCaseSensitive": true,
                   "AdvancedFilters": [{"OperatorType": "StringIn", "Key": "data.k", "Values": ["a"]}]}),
            one(json!({"operatorType": "stringin", "key": "data.k", "values": ["a"]})),
            one(json!({"operatorType": "NUMBERGREATERTHAN", "key": "data.k", "value": -0.5})),
            one(json!({"operatorType": "IsNotNull", "key": "data.k", "value": null, "values": null})),
            one(json!({"operatorType": "StringContains", "key": "data.a.b.c.d.e", "values": [long]})),
            one(json!({"operatorType": "NumberInRange", "key": "data.k", "values": [[-1.5, -1.5], [0, 1e3]]})),
            json!({ "advancedFilters": twenty_five }),
        ];
        for case in cases {
            assert_eq!(outcome(case.clone()), accepted(&[]), "{case}");
        }
    }

    #[test]
    fn operands_an_operator_does_not_read_are_accepted_with_a_warning() {
        let cases = [
            (
                one(json!({"operatorType": "IsNotNull", "key": "data.k", "value": 5})),
                "advancedFilters[0].value: ignored: IsNotNull does not read `value`",
            ),
            (
                one(json!({"operatorType": "IsNullOrUndefined", "key": "data.k", "values": ["a"]})),
                "advancedFilters[0].values: ignored: IsNullOrUndefined does not read `values`",
            ),
            (
                one(json!({"operatorType": "NumberLessThan", "key": "data.k", "value": 5, "values": [1, 2]})),
                "advancedFilters[0].values: ignored: NumberLessThan does not read `values`",
            ),
            (
                one(json!({"operatorType": "StringIn", "key": "data.k", "values": ["a"], "value": "b"})),
                "advancedFilters[0].value: ignored: StringIn does not read `value`",
            ),
        ];
        for (case, warning) in cases {
            assert_eq!(outcome(case.clone()), accepted(&[warning]), "{case}");
        }
        // Ignored means ignored: the operand changes no decision.
        let filter: Filter = serde_json::from_value(one(
            json!({"operatorType": "NumberLessThan", "key": "data.k", "value": 5, "values": ["not", "numbers"]}),
        ))
        .unwrap_or_default();
        assert!(filter.matches(&event_with_data(json!({"k": 4})), Schema::EventGrid));
        assert!(!filter.matches(&event_with_data(json!({"k": 5})), Schema::EventGrid));
    }

    #[test]
    fn shapes_event_grid_refuses_are_refused_naming_the_key() {
        let cases = [
            (json!({"includedEventTypes": [""]}), vec!["includedEventTypes[0]: event type must not be empty"]),
            (
                one(json!({"operatorType": "StringIn", "key": "data.k", "values": null})),
                vec!["advancedFilters[0].values: StringIn needs `values`"],
            ),
            (
                one(json!({"operatorType": "StringIn", "key": "data.k", "value": "a"})),
                vec!["advancedFilters[0].values: StringIn needs `values` (a list, not a single `value`)"],
            ),
            (
                one(json!({"operatorType": "NumberGreaterThan", "key": "data.k", "value": null})),
                vec!["advancedFilters[0].value: NumberGreaterThan needs a `value`"],
            ),
            (
                one(json!({"operatorType": "NumberIn", "key": "data.k", "values": []})),
                vec!["advancedFilters[0].values: NumberIn needs at least one value"],
            ),
            (
                one(json!({"operatorType": "StringIn", "key": "data.k", "values": [5]})),
                vec!["advancedFilters[0].values[0]: StringIn needs strings; found a number 5"],
            ),
            (
                one(json!({"operatorType": "NumberInRange", "key": "data.k", "values": [[1, 2, 3]]})),
                vec!["advancedFilters[0].values[0]: a range must be [low, high]; found an array [1, 2, 3]"],
            ),
            (
                one(json!({"operatorType": "IsNotNull", "key": ".data"})),
                vec![r#"advancedFilters[0].key: key ".data" has an empty segment"#],
            ),
        ];
        for (case, problems) in cases {
            assert_eq!(outcome(case.clone()), refused(&problems), "{case}");
        }
    }

    #[test]
    fn unreadable_shapes_say_which_field() {
        let cases = [
            (
                one(json!({"operatorType": "NumberEquals", "key": "data.k", "value": 1})),
                "unknown variant `NumberEquals`",
            ),
            (json!({"subjectStartsWith": "/a"}), "unknown field `subjectStartsWith`"),
            (one(json!({"operatorType": "NumberIn", "key": "data.k", "valuez": [1]})), "unknown field `valuez`"),
            (json!({"isSubjectCaseSensitive": "yes"}), "invalid type: string \"yes\", expected a boolean"),
            (json!({"advancedFilters": {}}), "invalid type: map, expected a sequence"),
            (one(json!({"operatorType": "StringIn", "values": ["a"]})), "missing field `key`"),
        ];
        for (case, message) in cases {
            match outcome(case.clone()) {
                Outcome::Unreadable(error) => assert!(error.contains(message), "{case}: {error}"),
                other => panic!("{case}: expected unreadable, got {other:?}"),
            }
        }
    }

    // ---- deserialisation ----------------------------------------------------------

    #[test]
    fn filter_deserialises_from_arm_template_json() {
        let arm = json!({
            "includedEventTypes": ["Microsoft.Storage.BlobCreated", "Microsoft.Storage.BlobDeleted"],
            "subjectBeginsWith": "/blobServices/default/containers/mycontainer/blobs/log",
            "subjectEndsWith": ".jpg",
            "isSubjectCaseSensitive": false,
            "enableAdvancedFilteringOnArrays": true,
            "advancedFilters": [
                {"operatorType": "NumberInRange", "key": "data.key1", "values": [[2.5, 999.95], [3000, 4000]]},
                {"operatorType": "BoolEquals", "key": "data.isEnabled", "value": true},
                {"operatorType": "IsNullOrUndefined", "key": "data.key2"}
            ]
        });
        let filter: Filter = serde_json::from_value(arm).unwrap_or_else(|error| panic!("{error}"));
        assert_eq!(filter.included_event_types.as_ref().map(Vec::len), Some(2));
        assert!(filter.enable_advanced_filtering_on_arrays);
        assert_eq!(
            filter.advanced_filters[1],
            AdvancedFilter::with_value(Operator::BoolEquals, "data.isEnabled", json!(true))
        );
        assert_eq!(filter.problems(), Vec::new());
        let round_trip: Filter =
            serde_json::to_value(&filter).and_then(serde_json::from_value).unwrap_or_else(|error| panic!("{error}"));
        assert_eq!(round_trip, filter);
    }

    #[test]
    fn filter_deserialises_from_toml() {
        let text = r#"
            includedEventTypes = ["All"]
            subjectEndsWith = ".jpg"

            [[advancedFilters]]
            operatorType = "NumberInRange"
            key = "data.size"
            values = [[0, 1024.5]]

            [[advancedFilters]]
            operatorType = "NumberLessThan"
            key = "data.count"
            value = 3
        "#;
        let filter: Filter = toml::from_str(text).unwrap_or_else(|error| panic!("{error}"));
        assert_eq!(filter.problems(), Vec::new());
        let event = json!({"subject": "/x.JPG", "eventType": "A", "data": {"size": 1024.5, "count": 2}});
        assert_eq!(filter.evaluate(&event, Schema::EventGrid), Verdict::Match);
    }

    #[test]
    fn unknown_operator_is_an_error_naming_the_valid_ones() {
        let error = serde_json::from_value::<Filter>(json!({
            "advancedFilters": [{"operatorType": "NumberEquals", "key": "data.a", "value": 1}]
        }))
        .err()
        .map(|error| error.to_string())
        .unwrap_or_default();
        assert!(error.contains("unknown variant `NumberEquals`"), "{error}");
        for operator in Operator::ALL {
            assert!(error.contains(&format!("`{operator}`")), "{error} does not name {operator}");
        }
    }

    // ---- properties: every operator against its definition ---------------------------
    //
    // The oracle restates event-filtering.md's definitions (and the rules in
    // this module's opening doc) directly and shares no code with the
    // evaluator: numbers are compared as integers counting thousandths (the
    // generators make at most three decimals), and "not case-sensitive" as
    // equality after `str::to_uppercase`. The generated strings use only
    // letters whose upper case is a single letter (`σ` and `ς` both give `Σ`),
    // where every reading of "not case-sensitive" agrees.

    use Operator::{
        BoolEquals, IsNotNull, IsNullOrUndefined, NumberGreaterThan, NumberGreaterThanOrEquals, NumberIn,
        NumberInRange, NumberLessThan, NumberLessThanOrEquals, NumberNotIn, NumberNotInRange, StringBeginsWith,
        StringContains, StringEndsWith, StringIn, StringNotBeginsWith, StringNotContains, StringNotEndsWith,
        StringNotIn,
    };

    /// Operators that take one `value`; the others but the null checks take `values`.
    const SINGLE_OPERAND: [Operator; 5] =
        [NumberLessThan, NumberGreaterThan, NumberLessThanOrEquals, NumberGreaterThanOrEquals, BoolEquals];

    /// The docs' "FAIL_MATCH" operators: an operand hit makes them fail.
    const NEGATED: [Operator; 6] =
        [NumberNotIn, NumberNotInRange, StringNotContains, StringNotBeginsWith, StringNotEndsWith, StringNotIn];

    /// The docs' note: with the key absent these match, every other typed one fails.
    const MATCH_MISSING_KEY: [Operator; 2] = [NumberNotIn, StringNotIn];

    /// The exact value of a generated JSON number, in thousandths.
    fn thousandths(value: &Value) -> Option<i128> {
        let Value::Number(number) = value else { return None };
        let text = number.to_string();
        let (negative, digits) = match text.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, text.as_str()),
        };
        let (whole, fraction) = digits.split_once('.').unwrap_or((digits, ""));
        assert!(fraction.len() <= 3 && !digits.contains(['e', 'E']), "not a generated number: {text}");
        let magnitude: i128 = format!("{whole}{fraction:0<3}").parse().ok()?;
        Some(if negative { -magnitude } else { magnitude })
    }

    fn upper(text: &Value) -> Option<String> {
        text.as_str().map(str::to_uppercase)
    }

    /// Whether `value` hits one of the operands: `None` when `value` is not of
    /// the operator's type.
    fn hit(operator: Operator, operands: &[Value], value: &Value) -> Option<bool> {
        let number = || thousandths(value);
        let single = || thousandths(&operands[0]).unwrap_or_default();
        let text = |relation: fn(&str, &str) -> bool| {
            let value = upper(value)?;
            Some(operands.iter().any(|operand| relation(&value, &upper(operand).unwrap_or_default())))
        };
        match operator {
            NumberIn | NumberNotIn => {
                let value = number()?;
                Some(operands.iter().any(|operand| thousandths(operand) == Some(value)))
            }
            NumberLessThan => Some(number()? < single()),
            NumberGreaterThan => Some(number()? > single()),
            NumberLessThanOrEquals => Some(number()? <= single()),
            NumberGreaterThanOrEquals => Some(number()? >= single()),
            NumberInRange | NumberNotInRange => {
                let value = number()?;
                Some(operands.iter().any(|range| {
                    let (low, high) = (thousandths(&range[0]), thousandths(&range[1]));
                    low <= Some(value) && Some(value) <= high
                }))
            }
            BoolEquals => Some(value.as_bool()? == operands[0].as_bool()?),
            StringContains | StringNotContains => text(|value, operand| value.contains(operand)),
            StringBeginsWith | StringNotBeginsWith => text(|value, operand| value.starts_with(operand)),
            StringEndsWith | StringNotEndsWith => text(|value, operand| value.ends_with(operand)),
            StringIn | StringNotIn => text(|value, operand| value == operand),
            IsNullOrUndefined | IsNotNull => None,
        }
    }

    /// The definition of one advanced filter; `value` is `None` when the key is absent.
    fn expected(operator: Operator, operands: &[Value], value: Option<&Value>, arrays: bool) -> bool {
        let is_null_or_undefined = matches!(value, None | Some(Value::Null));
        let negated = NEGATED.contains(&operator);
        match (operator, value) {
            (IsNullOrUndefined, _) => is_null_or_undefined,
            (IsNotNull, _) => !is_null_or_undefined,
            (_, None) => MATCH_MISSING_KEY.contains(&operator),
            // Any element hits (positive) or none does (negated); other types are ignored.
            (_, Some(Value::Array(items))) if arrays => {
                items.iter().any(|item| hit(operator, operands, item) == Some(true)) != negated
            }
            (_, Some(Value::Array(_))) => false,
            // A value of another type fails, negated operators included.
            (_, Some(scalar)) => hit(operator, operands, scalar).is_some_and(|hit| hit != negated),
        }
    }

    /// What an operator compares, to generate operands and values of that type.
    #[derive(Debug, Clone, Copy)]
    enum Compared {
        Number,
        Range,
        Bool,
        Text,
        Nothing,
    }

    fn compared(operator: Operator) -> Compared {
        match operator {
            NumberInRange | NumberNotInRange => Compared::Range,
            BoolEquals => Compared::Bool,
            IsNullOrUndefined | IsNotNull => Compared::Nothing,
            _ if operator.name().starts_with("Number") => Compared::Number,
            _ => Compared::Text,
        }
    }

    /// A JSON number parsed from text with up to three decimals (so `5`,
    /// `5.0` and `5.00` all occur), now and then an integer beyond 2⁵³.
    fn number() -> impl Strategy<Value = Value> {
        let small = (-30i64..30, 0u32..4).prop_map(|(mantissa, scale)| {
            let divisor = 10i64.pow(scale);
            let sign = if mantissa < 0 { "-" } else { "" };
            let magnitude = mantissa.abs();
            let text = match scale {
                0 => format!("{sign}{magnitude}"),
                _ => format!("{sign}{}.{:0width$}", magnitude / divisor, magnitude % divisor, width = scale as usize),
            };
            serde_json::from_str(&text).unwrap_or(Value::Null)
        });
        let huge = (9_007_199_254_740_990u64..9_007_199_254_740_996).prop_map(Value::from);
        prop_oneof![9 => small, 1 => huge]
    }

    /// Letters with case variants whose upper case is one letter.
    fn text(max: usize) -> impl Strategy<Value = Value> {
        prop::string::string_regex(&format!("[aAbBéÉσΣς/]{{0,{max}}}"))
            .unwrap_or_else(|error| panic!("{error}"))
            .prop_map(Value::String)
    }

    fn range() -> impl Strategy<Value = Value> {
        (number(), number()).prop_map(
            |(a, b)| {
                if thousandths(&a) <= thousandths(&b) { json!([a, b]) } else { json!([b, a]) }
            },
        )
    }

    fn operands(operator: Operator) -> BoxedStrategy<Vec<Value>> {
        let count = if SINGLE_OPERAND.contains(&operator) { 1..2 } else { 1..4 };
        match compared(operator) {
            Compared::Number => prop::collection::vec(number(), count).boxed(),
            Compared::Range => prop::collection::vec(range(), count).boxed(),
            Compared::Bool => prop::collection::vec(any::<bool>().prop_map(Value::Bool), count).boxed(),
            Compared::Text => prop::collection::vec(text(2), count).boxed(),
            Compared::Nothing => Just(Vec::new()).boxed(),
        }
    }

    /// An event value, mostly of the compared type; `None` is an absent key.
    fn event_value(operator: Operator) -> BoxedStrategy<Option<Value>> {
        let typed = match compared(operator) {
            Compared::Number | Compared::Range => number().boxed(),
            Compared::Bool => any::<bool>().prop_map(Value::Bool).boxed(),
            Compared::Text => text(4).boxed(),
            Compared::Nothing => prop_oneof![number(), text(2)].boxed(),
        };
        let other = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            number(),
            text(2),
            Just(json!({"k": 1})),
            Just(json!([[1]])),
        ];
        let element = prop_oneof![3 => typed.clone(), 1 => other.clone()];
        prop_oneof![
            5 => typed.prop_map(Some),
            3 => prop::collection::vec(element, 0..4).prop_map(|items| Some(Value::Array(items))),
            2 => other.prop_map(Some),
            1 => Just(None),
        ]
        .boxed()
    }

    fn advanced_filter(operator: Operator, key: &str, operands: Vec<Value>) -> AdvancedFilter {
        match operands.first() {
            _ if matches!(compared(operator), Compared::Nothing) => AdvancedFilter::without_operands(operator, key),
            Some(first) if SINGLE_OPERAND.contains(&operator) => {
                AdvancedFilter::with_value(operator, key, first.clone())
            }
            _ => AdvancedFilter::with_values(operator, key, operands),
        }
    }

    /// An operator with operands of its type and an event value.
    fn operator_case() -> impl Strategy<Value = (Operator, Vec<Value>, Option<Value>)> {
        prop::sample::select(Operator::ALL.to_vec())
            .prop_flat_map(|operator| (Just(operator), operands(operator), event_value(operator)))
    }

    fn any_leaf() -> impl Strategy<Value = Value> {
        prop_oneof![Just(Value::Null), any::<bool>().prop_map(Value::Bool), number(), text(3)]
    }

    fn any_json() -> impl Strategy<Value = Value> {
        any_leaf().prop_recursive(3, 16, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::btree_map("[kK]", inner, 0..3)
                    .prop_map(|map| Value::Object(map.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn every_operator_agrees_with_its_definition(
            (operator, operands, value) in operator_case(),
            arrays in any::<bool>(),
            key in prop::sample::select(vec!["data.k", "data.K", "Data.k", "DATA.K"]),
        ) {
            let data = match &value {
                Some(value) => json!({"k": value}),
                None => json!({"other": 1}),
            };
            let filter = Filter {
                enable_advanced_filtering_on_arrays: arrays,
                ..advanced(vec![advanced_filter(operator, key, operands.clone())])
            };
            prop_assert_eq!(filter.problems(), Vec::new());
            let verdict = filter.evaluate(&event_with_data(data), Schema::EventGrid);
            let want = expected(operator, &operands, value.as_ref(), arrays);
            prop_assert_eq!(verdict.is_match(), want, "{} {:?} on {:?}: {}", operator, operands, value, verdict);
        }
    }

    proptest! {
        #[test]
        fn whole_filter_agrees_with_its_definition(
            cases in prop::collection::vec(operator_case(), 0..4),
            arrays in any::<bool>(),
            types in prop::option::of(prop::collection::vec(
                prop::sample::select(vec!["Microsoft.Storage.BlobDeleted", "microsoft.storage.BLOBDELETED", "Other", "all"]),
                0..3,
            )),
            prefix in prop::option::of("[/aAbB]{0,2}"),
            suffix in prop::option::of("[/aAbB]{0,2}"),
            case_sensitive in any::<bool>(),
            subject in "[/aAbB]{0,4}",
        ) {
            let key = |index: usize| format!("k{index}");
            let data: serde_json::Map<String, Value> = cases
                .iter()
                .enumerate()
                .filter_map(|(index, (_, _, value))| Some((key(index), value.clone()?)))
                .collect();
            let mut event = event_with_data(Value::Object(data));
            event["subject"] = json!(&subject);
            let filter = Filter {
                included_event_types: types.as_ref().map(|types| types.iter().map(|t| t.to_string()).collect()),
                subject_begins_with: prefix.clone(),
                subject_ends_with: suffix.clone(),
                is_subject_case_sensitive: case_sensitive,
                enable_advanced_filtering_on_arrays: arrays,
                advanced_filters: cases
                    .iter()
                    .enumerate()
                    .map(|(index, (operator, operands, _))| {
                        advanced_filter(*operator, &format!("data.{}", key(index)), operands.clone())
                    })
                    .collect(),
            };

            let fold = |text: &str| if case_sensitive { text.to_owned() } else { text.to_uppercase() };
            let type_ok = match &types {
                None => true,
                Some(types) => types.is_empty() || types.iter().any(|t| {
                    let t = t.to_uppercase();
                    t == "ALL" || t == "MICROSOFT.STORAGE.BLOBDELETED"
                }),
            };
            let prefix_ok = prefix.as_deref().is_none_or(|prefix| fold(&subject).starts_with(&fold(prefix)));
            let suffix_ok = suffix.as_deref().is_none_or(|suffix| fold(&subject).ends_with(&fold(suffix)));
            let advanced_ok = cases
                .iter()
                .all(|(operator, operands, value)| expected(*operator, operands, value.as_ref(), arrays));

            prop_assert_eq!(filter.matches(&event, Schema::EventGrid), type_ok && prefix_ok && suffix_ok && advanced_ok);
        }

        #[test]
        fn decimal_order_matches_exact_rational_order(
            (a, a_scale) in (-1_000_000i64..1_000_000, 0u32..6),
            (b, b_scale) in (-1_000_000i64..1_000_000, 0u32..6),
        ) {
            let text = |mantissa: i64, scale: u32| format!("{mantissa}e-{scale}");
            let exact = |mantissa: i64, scale: u32| i128::from(mantissa) * 10i128.pow(6 - scale);
            let ordering = Decimal::parse(&text(a, a_scale)).cmp(&Decimal::parse(&text(b, b_scale)));
            prop_assert_eq!(ordering, exact(a, a_scale).cmp(&exact(b, b_scale)));
        }

        /// Any event, any operand shape: evaluation neither panics nor lets a
        /// filter that Event Grid would refuse deliver anything.
        #[test]
        fn a_refused_filter_never_matches(
            event in any_json(),
            data in any_json(),
            operator in prop::sample::select(Operator::ALL.to_vec()),
            value in prop::option::of(any_json()),
            values in prop::option::of(any_json()),
            key in "(data|Data|id|type|subject)(\\.[kK]){0,2}",
            arrays in any::<bool>(),
            schema in prop::sample::select(vec![Schema::EventGrid, Schema::CloudEvents]),
        ) {
            let mut event = event;
            if let Value::Object(map) = &mut event {
                map.insert("data".to_owned(), data);
            }
            let filter = Filter {
                enable_advanced_filtering_on_arrays: arrays,
                ..advanced(vec![AdvancedFilter { operator_type: operator, key, value, values }])
            };
            let verdict = filter.evaluate(&event, schema);
            if !filter.problems().is_empty() {
                prop_assert!(!verdict.is_match(), "{:?} matched", filter);
            }
        }
    }
}
