//! What model and tool work spent: one [`Usage`] type for a call, a step and a run, and its
//! [`Cost`] in money.
//!
//! A provider's answer carries the tokens of its one call (`llm_calls` 0, cost unknown); the
//! traced model wrapper prices it; whoever folds it counts the call ([`Usage::add_call`]). Steps
//! and runs are sums (`+`, `+=`).
//!
//! Events and results written before a field existed still read: every field defaults, and a
//! missing `cost` reads as unknown (those runs had no price table), never as a known zero.

use std::fmt;
use std::ops::{Add, AddAssign};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Nano-units (billionths) per unit of the price table's currency.
const NANOS_PER_UNIT: f64 = 1e9;

/// Money spent, in the price table's currency (`[llm] price_currency`), or unknown because a
/// call had no price. Kept in integer nano-units so that sums over many calls do not drift;
/// serialised as a decimal number, or `null` when unknown. Unknown absorbs: known + unknown is
/// unknown, since a total that leaves out some calls would understate the spend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cost(Option<u64>);

impl Cost {
    /// A known zero: nothing spent yet.
    pub const ZERO: Cost = Cost(Some(0));
    /// Unknown: some call had no price.
    pub const UNKNOWN: Cost = Cost(None);

    /// A known cost of `nanos` billionths of the currency unit.
    pub fn from_nanos(nanos: u64) -> Self {
        Cost(Some(nanos))
    }

    /// A known cost from a decimal amount (rounded to the nearest nano-unit; negatives are 0).
    pub fn from_amount(amount: f64) -> Self {
        Cost(Some(to_nanos(amount)))
    }

    /// The amount in nano-units, if known.
    pub fn nanos(self) -> Option<u64> {
        self.0
    }

    /// The amount as a decimal, if known.
    pub fn amount(self) -> Option<f64> {
        self.0.map(|n| n as f64 / NANOS_PER_UNIT)
    }

    /// Whether the cost is known.
    pub fn is_known(self) -> bool {
        self.0.is_some()
    }
}

/// `amount` in nano-units, rounded; negative or NaN amounts are 0, huge ones saturate.
pub(crate) fn to_nanos(amount: f64) -> u64 {
    if amount.is_nan() || amount <= 0.0 { 0 } else { (amount * NANOS_PER_UNIT).round() as u64 }
}

impl Default for Cost {
    fn default() -> Self {
        Cost::ZERO
    }
}

impl Add for Cost {
    type Output = Cost;
    fn add(self, o: Cost) -> Cost {
        Cost(self.0.zip(o.0).map(|(a, b)| a.saturating_add(b)))
    }
}

impl AddAssign for Cost {
    fn add_assign(&mut self, o: Cost) {
        *self = *self + o;
    }
}

/// `0.000123` (up to nine decimals, trailing zeros trimmed), or `unknown`.
impl fmt::Display for Cost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            None => f.write_str("unknown"),
            Some(n) => {
                let s = format!("{}.{:09}", n / 1_000_000_000, n % 1_000_000_000);
                f.write_str(s.trim_end_matches('0').trim_end_matches('.'))
            }
        }
    }
}

impl Serialize for Cost {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.amount().serialize(s)
    }
}

impl<'de> Deserialize<'de> for Cost {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match Option::<f64>::deserialize(d)? {
            None => Ok(Cost::UNKNOWN),
            Some(a) if a.is_finite() && a >= 0.0 => Ok(Cost::from_amount(a)),
            Some(a) => Err(serde::de::Error::custom(format!("cost must be a number ≥ 0 or null, got {a}"))),
        }
    }
}

impl schemars::JsonSchema for Cost {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Cost".into()
    }

    fn json_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        let mut schema = <Option<f64>>::json_schema(generator);
        schema.insert(
            "description".into(),
            "Money spent, in the price table's currency; null when some call had no price".into(),
        );
        schema
    }
}

fn unknown_cost() -> Cost {
    Cost::UNKNOWN
}

/// Model and tool usage: of one call (as a provider reports it), of a step, or of a run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Usage {
    /// Model calls.
    #[serde(default)]
    pub llm_calls: u64,
    /// Prompt tokens, cached ones included.
    #[serde(default)]
    pub input_tokens: u64,
    /// Completion tokens.
    #[serde(default)]
    pub output_tokens: u64,
    /// The part of `input_tokens` the provider read from its prompt cache (priced apart).
    #[serde(default)]
    pub cached_input_tokens: u64,
    /// Tool calls.
    #[serde(default)]
    pub tool_calls: u64,
    /// What the model calls cost; unknown (`null`) when any of them had no price.
    #[serde(default = "unknown_cost")]
    pub cost: Cost,
}

impl Usage {
    /// One call's tokens as a provider reports them: not yet counted as a call, not yet priced.
    pub fn of_tokens(input_tokens: u64, output_tokens: u64) -> Self {
        Usage { input_tokens, output_tokens, cost: Cost::UNKNOWN, ..Usage::default() }
    }

    /// The same, with `cached` of the input tokens read from the provider's prompt cache.
    pub fn with_cached_input(self, cached: u64) -> Self {
        Usage { cached_input_tokens: cached.min(self.input_tokens), ..self }
    }

    /// Input plus output tokens.
    pub fn tokens(&self) -> u64 {
        self.input_tokens + self.output_tokens
    }

    /// Adds one model call's usage (as its response carries it), counting the call.
    pub fn add_call(&mut self, call: Usage) {
        *self += Usage { llm_calls: 1, ..call };
    }
}

impl Add for Usage {
    type Output = Usage;
    fn add(mut self, o: Usage) -> Usage {
        self += o;
        self
    }
}

impl AddAssign for Usage {
    fn add_assign(&mut self, o: Usage) {
        self.llm_calls += o.llm_calls;
        self.input_tokens += o.input_tokens;
        self.output_tokens += o.output_tokens;
        self.cached_input_tokens += o.cached_input_tokens;
        self.tool_calls += o.tool_calls;
        self.cost += o.cost;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_cost_absorbs_and_known_costs_add_without_drift() {
        let tenth = Cost::from_amount(0.1);
        let mut sum = Cost::ZERO;
        for _ in 0..1000 {
            sum += tenth;
        }
        assert_eq!(sum, Cost::from_amount(100.0));
        assert_eq!(sum + Cost::UNKNOWN, Cost::UNKNOWN);
        assert_eq!(Cost::UNKNOWN + sum, Cost::UNKNOWN);
        assert_eq!(Cost::from_nanos(1_500).to_string(), "0.0000015");
        assert_eq!(Cost::from_amount(2.0).to_string(), "2");
        assert_eq!(Cost::UNKNOWN.to_string(), "unknown");
    }

    #[test]
    fn cost_serialises_as_a_decimal_or_null() {
        let u = Usage { cost: Cost::from_nanos(1_250_000), ..Usage::default() };
        let v = serde_json::to_value(u).unwrap();
        assert_eq!(v["cost"], serde_json::json!(0.00125));
        assert_eq!(serde_json::from_value::<Usage>(v).unwrap(), u);
        let unknown = serde_json::to_value(Usage::of_tokens(1, 2)).unwrap();
        assert_eq!(unknown["cost"], serde_json::Value::Null);
        let bad = serde_json::from_str::<Usage>(r#"{"cost": -1}"#).unwrap_err();
        assert!(bad.to_string().contains("cost must be a number ≥ 0"), "{bad}");
    }

    #[test]
    fn usage_written_before_cost_existed_reads_with_cost_unknown() {
        let old_event: Usage =
            serde_json::from_str(r#"{"llm_calls": 2, "input_tokens": 900, "output_tokens": 120}"#).unwrap();
        assert_eq!(
            old_event,
            Usage {
                llm_calls: 2,
                input_tokens: 900,
                output_tokens: 120,
                cost: Cost::UNKNOWN,
                ..Usage::default()
            }
        );
        let old_result: Usage = serde_json::from_str(
            r#"{"llm_calls": 1, "input_tokens": 9, "output_tokens": 1, "tool_calls": 3}"#,
        )
        .unwrap();
        assert_eq!((old_result.tool_calls, old_result.cost), (3, Cost::UNKNOWN));
    }

    #[test]
    fn a_call_counts_once_and_sums_fold_every_field() {
        let mut step = Usage::default();
        assert_eq!(step.cost, Cost::ZERO, "nothing spent is a known zero");
        step.add_call(Usage { cost: Cost::from_nanos(10), ..Usage::of_tokens(5, 2).with_cached_input(3) });
        step.add_call(Usage { cost: Cost::from_nanos(7), ..Usage::of_tokens(4, 1) });
        let run = step + Usage { tool_calls: 2, ..Usage::default() };
        assert_eq!(
            run,
            Usage {
                llm_calls: 2,
                input_tokens: 9,
                output_tokens: 3,
                cached_input_tokens: 3,
                tool_calls: 2,
                cost: Cost::from_nanos(17),
            }
        );
        assert_eq!(run.tokens(), 12);
        assert_eq!(Usage::of_tokens(2, 0).with_cached_input(5).cached_input_tokens, 2);
    }
}
