//! What model calls cost: the price table of `[[llm.prices]]` and the arithmetic on it.
//!
//! There are no built-in prices: a price list compiled into the binary would go stale without
//! anyone noticing. A model without an entry has an unknown cost (`null`), no money budget is
//! enforced for it, and the first call to it warns once.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use super::config::LlmConfig;
pub use super::config::Price;
use super::usage::{Cost, Usage, to_nanos};

/// Output tokens assumed for a call that no `max_tokens` caps, when checking whether it fits a
/// money budget: a call's output has no bound then, so the check assumes a long answer.
pub const DEFAULT_OUTPUT_ALLOWANCE: u64 = 4096;

/// Nano-units of cost per token at a price of 1 per million tokens (1e9 / 1e6).
const NANOS_PER_TOKEN_AT_ONE_PER_MTOK: f64 = 1_000.0;

impl Price {
    fn cached_per_mtok(&self) -> f64 {
        self.cached_input_per_mtok.unwrap_or(self.input_per_mtok)
    }

    /// What a call that used `usage` cost.
    pub fn cost(&self, usage: &Usage) -> Cost {
        let cached = usage.cached_input_tokens.min(usage.input_tokens);
        let amount = per_token(self.input_per_mtok) * (usage.input_tokens - cached) as f64
            + per_token(self.cached_per_mtok()) * cached as f64
            + per_token(self.output_per_mtok) * usage.output_tokens as f64;
        Cost::from_nanos(amount.round() as u64)
    }

    /// The most a call can cost that sends about `input_tokens` and may write `max_output_tokens`:
    /// every input token at the dearer of the input and cached-input prices.
    pub fn most(&self, input_tokens: u64, max_output_tokens: u64) -> Cost {
        let input_price = self.input_per_mtok.max(self.cached_per_mtok());
        let amount = per_token(input_price) * input_tokens as f64
            + per_token(self.output_per_mtok) * max_output_tokens as f64;
        Cost::from_nanos(amount.round() as u64)
    }
}

/// Nano-units per token at `per_mtok` per million tokens.
fn per_token(per_mtok: f64) -> f64 {
    per_mtok * NANOS_PER_TOKEN_AT_ONE_PER_MTOK
}

/// A `[[llm.prices]]` entry that cannot be used; `key` names it (`llm.prices[2].input_per_mtok`).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{key}: {message}")]
pub struct PriceError {
    /// The offending key.
    pub key: String,
    /// What is wrong with it.
    pub message: String,
}

/// The prices of every configured model, and which unpriced models have been warned about.
#[derive(Debug)]
pub struct PriceTable {
    currency: String,
    prices: HashMap<(String, String), Price>,
    default_max_output: Option<u64>,
    warned: Mutex<HashSet<(String, String)>>,
}

/// No prices, in USD: every cost unknown.
impl Default for PriceTable {
    fn default() -> Self {
        Self {
            currency: "USD".into(),
            prices: HashMap::new(),
            default_max_output: None,
            warned: Mutex::default(),
        }
    }
}

impl PriceTable {
    /// A table in `currency` from `[[llm.prices]]` entries; `default_max_output` is `[llm]
    /// max_tokens`, the output cap of calls that set none themselves.
    pub fn new(
        currency: &str,
        entries: &[Price],
        default_max_output: Option<u32>,
    ) -> Result<Self, PriceError> {
        validate(currency, entries)?;
        let prices =
            entries.iter().map(|p| ((p.provider.name().to_owned(), p.model.clone()), p.clone())).collect();
        Ok(Self {
            currency: currency.to_owned(),
            prices,
            default_max_output: default_max_output.map(u64::from),
            warned: Mutex::default(),
        })
    }

    /// The currency every cost is in.
    pub fn currency(&self) -> &str {
        &self.currency
    }

    /// The price of `provider`'s `model`, if configured.
    pub fn get(&self, provider: &str, model: &str) -> Option<&Price> {
        self.prices.get(&(provider.to_owned(), model.to_owned()))
    }

    /// What a call to `provider`'s `model` that used `usage` cost: unknown without a price (and
    /// then the first time for that model, a warning).
    pub fn cost(&self, provider: &str, model: &str, usage: &Usage) -> Cost {
        match self.get(provider, model) {
            Some(price) => price.cost(usage),
            None => {
                self.warn_unpriced(provider, model);
                Cost::UNKNOWN
            }
        }
    }

    /// The most a call to `provider`'s `model` can cost that sends about `input_tokens` and whose
    /// output is capped at `max_tokens` (else `[llm] max_tokens`, else
    /// [`DEFAULT_OUTPUT_ALLOWANCE`]); unknown without a price.
    pub fn most(&self, provider: &str, model: &str, input_tokens: u64, max_tokens: Option<u32>) -> Cost {
        let output =
            max_tokens.map(u64::from).or(self.default_max_output).unwrap_or(DEFAULT_OUTPUT_ALLOWANCE);
        self.get(provider, model).map_or(Cost::UNKNOWN, |p| p.most(input_tokens, output))
    }

    /// Warns that `provider`'s `model` has no price, the first time only; true when it warned.
    pub fn warn_unpriced(&self, provider: &str, model: &str) -> bool {
        let mut warned = self.warned.lock().unwrap_or_else(|p| p.into_inner());
        let first = warned.insert((provider.to_owned(), model.to_owned()));
        if first {
            tracing::warn!(
                provider,
                model,
                "no [[llm.prices]] entry for this model: its calls have an unknown cost and no max_cost budget applies to them"
            );
        }
        first
    }
}

/// Checks the currency and every entry: prices finite and ≥ 0, a model name, no entry twice.
pub fn validate(currency: &str, entries: &[Price]) -> Result<(), PriceError> {
    let err = |key: String, message: String| Err(PriceError { key, message });
    if currency.trim().is_empty() {
        return err("llm.price_currency".into(), "must not be empty".into());
    }
    let mut seen = HashSet::new();
    for (i, p) in entries.iter().enumerate() {
        let at = |field: &str| format!("llm.prices[{i}].{field}");
        if p.model.trim().is_empty() {
            return err(at("model"), "must name a model".into());
        }
        let prices =
            [("input_per_mtok", Some(p.input_per_mtok)), ("output_per_mtok", Some(p.output_per_mtok))];
        let cached = [("cached_input_per_mtok", p.cached_input_per_mtok)];
        for (field, value) in prices.into_iter().chain(cached) {
            if let Some(v) = value
                && !(v.is_finite() && v >= 0.0)
            {
                return err(at(field), format!("must be a number ≥ 0, got {v}"));
            }
        }
        let name = format!("{}/{}", p.provider.name(), p.model);
        if !seen.insert(name.clone()) {
            return err(at("model"), format!("{name} is priced twice; keep one entry"));
        }
    }
    Ok(())
}

/// About how many tokens `chars` characters of prompt are (four characters a token, rounded up):
/// the input side of the most a call can cost.
pub fn estimate_tokens(chars: usize) -> u64 {
    (chars as u64).div_ceil(4)
}

/// About how many tokens `request` sends: its messages, tool calls, tool schemas and output
/// schema, at four characters a token.
pub fn estimate_input_tokens(request: &super::ChatRequest) -> u64 {
    let messages: usize = (request.messages.iter())
        .map(|m| {
            m.content.len()
                + m.tool_calls.iter().map(|c| c.name.len() + c.arguments.to_string().len()).sum::<usize>()
        })
        .sum();
    let tools: usize = request
        .tools
        .iter()
        .map(|t| t.name.len() + t.description.len() + t.parameters.to_string().len())
        .sum();
    let schema = request.structured.as_ref().map_or(0, |s| s.schema.to_string().len());
    estimate_tokens(messages + tools + schema)
}

/// `amount` in nano-units; for callers comparing a decimal cap with a [`Cost`].
pub fn cap_nanos(amount: f64) -> u64 {
    to_nanos(amount)
}

// Here rather than in `config` so that the config module need not know about pricing.
impl LlmConfig {
    /// The price table of `[[llm.prices]]`, with `max_tokens` as the output cap of calls that
    /// set none.
    pub fn price_table(&self) -> Result<PriceTable, PriceError> {
        PriceTable::new(&self.price_currency, &self.prices, self.max_tokens)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::llm::config::ProviderKind;

    fn price(model: &str, input: f64, output: f64, cached: Option<f64>) -> Price {
        Price {
            provider: ProviderKind::Openai,
            model: model.into(),
            input_per_mtok: input,
            output_per_mtok: output,
            cached_input_per_mtok: cached,
        }
    }

    #[test]
    fn a_call_costs_its_tokens_at_their_prices_with_cached_input_apart() {
        let p = price("gpt-4.1-mini", 0.4, 1.6, Some(0.1));
        // 1000 fresh input at 0.4/M, 500 cached at 0.1/M, 200 output at 1.6/M.
        let usage = Usage::of_tokens(1500, 200).with_cached_input(500);
        assert_eq!(p.cost(&usage), Cost::from_amount(0.0004 + 0.00005 + 0.00032));
        let no_cache_price = price("m", 0.4, 1.6, None);
        assert_eq!(no_cache_price.cost(&usage), Cost::from_amount(0.0006 + 0.00032));
        assert_eq!(p.most(1000, 100), Cost::from_amount(0.0004 + 0.00016));
    }

    #[test]
    fn an_unpriced_model_costs_unknown_and_warns_once() {
        let table = PriceTable::new("USD", &[price("known", 1.0, 2.0, None)], None).unwrap();
        let u = Usage::of_tokens(1_000_000, 0);
        assert_eq!(table.cost("openai", "known", &u), Cost::from_amount(1.0));
        assert_eq!(table.cost("anthropic", "known", &u), Cost::UNKNOWN, "a price is per provider");
        assert_eq!(table.most("openai", "other", 10, None), Cost::UNKNOWN);
        assert!(table.warn_unpriced("openai", "other"));
        assert!(!table.warn_unpriced("openai", "other"), "once per model");
        assert!(!table.warn_unpriced("anthropic", "known"), "cost() already warned for it");
    }

    #[test]
    fn the_most_a_call_costs_uses_the_request_cap_then_the_config_cap_then_the_allowance() {
        let table = PriceTable::new("EUR", &[price("m", 0.0, 1.0, None)], Some(100)).unwrap();
        assert_eq!(table.most("openai", "m", 5, Some(10)), Cost::from_amount(10.0 / 1e6));
        assert_eq!(table.most("openai", "m", 5, None), Cost::from_amount(100.0 / 1e6));
        let uncapped = PriceTable::new("EUR", &[price("m", 0.0, 1.0, None)], None).unwrap();
        assert_eq!(uncapped.most("openai", "m", 5, None), Cost::from_nanos(DEFAULT_OUTPUT_ALLOWANCE * 1_000));
        assert_eq!(uncapped.currency(), "EUR");
    }

    #[test]
    fn bad_entries_are_refused_naming_the_key() {
        let bad = |entries: &[Price]| PriceTable::new("USD", entries, None).unwrap_err().to_string();
        assert_eq!(
            bad(&[price("a", 1.0, 1.0, None), price("b", -1.0, 1.0, None)]),
            "llm.prices[1].input_per_mtok: must be a number ≥ 0, got -1"
        );
        assert_eq!(
            bad(&[price("a", 1.0, 1.0, Some(f64::NAN))]),
            "llm.prices[0].cached_input_per_mtok: must be a number ≥ 0, got NaN"
        );
        assert_eq!(
            bad(&[price("a", 1.0, 1.0, None), price("a", 2.0, 1.0, None)]),
            "llm.prices[1].model: openai/a is priced twice; keep one entry"
        );
        assert_eq!(bad(&[price(" ", 1.0, 1.0, None)]), "llm.prices[0].model: must name a model");
        let currency = PriceTable::new("", &[], None).unwrap_err();
        assert_eq!(currency.key, "llm.price_currency");
    }

    #[test]
    fn unknown_keys_in_an_entry_are_refused() {
        let e = toml::from_str::<Price>(
            "provider = \"openai\"\nmodel = \"m\"\ninput_per_mtok = 1\noutput_per_mtok = 1\ninput_price = 2\n",
        )
        .unwrap_err();
        assert!(e.to_string().contains("unknown field `input_price`"), "{e}");
    }

    #[test]
    fn prompts_are_estimated_at_four_characters_a_token() {
        assert_eq!((estimate_tokens(0), estimate_tokens(4), estimate_tokens(5)), (0, 1, 2));
    }

    #[test]
    fn a_request_is_estimated_from_its_messages_tools_and_schema() {
        use crate::llm::{CallContext, ChatRequest, Message, StructuredOutput, ToolCall, ToolSpec};
        use std::sync::Arc;
        let mut request = ChatRequest {
            context: CallContext {
                run_id: "r".into(),
                role: crate::llm::AgentRole::Executor,
                step: None,
                attempt: 1,
                trace: Default::default(),
            },
            messages: vec![Message::system("12345678"), Message::user("1234")],
            tools: vec![],
            structured: None,
            max_tokens: None,
        };
        assert_eq!(estimate_input_tokens(&request), 3);
        let call = ToolCall { id: "c".into(), name: "ab".into(), arguments: serde_json::json!({}) };
        request.messages.push(Message::assistant("", vec![call]));
        request.tools.push(ToolSpec {
            name: "ab".into(),
            description: "cd".into(),
            parameters: Arc::new(serde_json::json!({})),
        });
        request.structured =
            Some(StructuredOutput { name: "plan".into(), schema: Arc::new(serde_json::json!([])) });
        // 12 message chars + 4 of the call + 6 of the tool + 2 of the schema.
        assert_eq!(estimate_input_tokens(&request), 6);
    }
}
